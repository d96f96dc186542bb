# What nsmount does on kernels newer than Debian 12's 6.1 (this runs on its
# 6.12). Container c1 reaches srvA (via eth0) and srvB (via eth1, once a /32
# route says so) at the same address.
#  - nsmount remount swaps atomically (MOVE_MOUNT_BENEATH, 6.5): a reader
#    looping over a file of the mount never misses it (on 6.1 the swap is
#    detach + attach, and watch.sh logs the misses).
#  - A stale superblock held open: flush --shutdown cuts it off through
#    /sys/fs/nfs/DEV/shutdown (6.6), which only a sysfs made in the
#    container's netns shows. The holder is not ended but gets EIO; the
#    superblock's NFS client is released at once, status says "shut down",
#    and the next mount gets its own client through the new route.
set -u
two_servers_one_address
to_b() { ip -n c1 route replace $X/32 via 198.51.100.1 dev eth1; }
misses() { cat /proc/$C1/root/tmp/misses; }
no_volumes() { test "$(tail -n +2 /proc/$C1/net/nfsfs/volumes | grep -c .)" = 0; }
lab_log "kernel $(uname -r)"

# --- remount: atomic swap ---------------------------------------------------
lab_check mount nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
lab_check write lab_exec c1 sh -c 'echo acknowledged > /data/f && sync'
DEV0=$(awk '$5 == "/data" {print $3}' /proc/$C1/mountinfo)
# The superblock's sysfs directory is network-namespaced.
lab_check_fails vm-sysfs-hides-it test -e /sys/fs/nfs/$DEV0
mkdir -p /tmp/netsys
lab_check netns-sysfs-shows-it nsenter -t $C1 -n -- unshare -m sh -c "mount -t sysfs sysfs /tmp/netsys && test -e /tmp/netsys/fs/nfs/$DEV0/shutdown"
lab_exec c1 sh -c 'i=0; m=0; while [ $i -lt 3000 ]; do [ -e /data/whoami ] || m=$((m+1)); i=$((i+1)); done; echo $m > /tmp/misses' &
READER=$!
lab_check_output remount "remounted" nsmount remount --pid $C1 /data
wait $READER
lab_log "a reader looping over /data/whoami during the remount missed it $(misses) of 3000 times (MOVE_MOUNT_BENEATH)"
lab_check remount-never-missed test "$(misses)" = 0
DEV1=$(awk '$5 == "/data" {print $3}' /proc/$C1/mountinfo)
lab_check remount-new-superblock test "$DEV0" != "$DEV1"
lab_check_output write-kept acknowledged cat /proc/$C1/root/data/f
lab_check_output one-nfs-mount 1 sh -c "grep -c ' - nfs4 ' /proc/$C1/mountinfo"
lab_check umount nsmount umount --pid $C1 /data

# --- a held stale superblock: flush --shutdown ------------------------------
lab_check mount-a2 nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
nsenter -t $C1 -n -m -r -w -- sh -c 'exec 3</data/whoami; exec sleep 1000' &
HOLD=$!
sleep 0.5
nsenter -t $C1 -m umount -l /data
to_b
DEV=$(awk 'NR > 1 { print $4 }' /proc/$C1/net/nfsfs/volumes)
lab_log "held superblock $DEV, holder pid $HOLD"
check_says status-offers-shutdown "or --shutdown to cut them off" nsmount status --pid $C1 --no-probe
check_exit flush-leaves-holder 12 nsmount flush --pid $C1
check_says flush-hint "or --shutdown to cut it off" nsmount flush --pid $C1
check_exit flush-dry-run 0 nsmount flush --pid $C1 --shutdown --dry-run
check_says flush-dry-run-plans "would do: netns" nsmount flush --pid $C1 --shutdown --dry-run
lab_check_output dry-run-changes-nothing 1 nfs_clients $C1
check_says flush-shutdown "flushed superblock $DEV" nsmount flush --pid $C1 --shutdown
lab_check holder-not-ended kill -0 $HOLD
lab_check_output holder-gets-eio "Input/output error" sh -c "cat /proc/$HOLD/fd/3 2>&1; true"
lab_check_output superblock-stays-while-held "$DEV" cat /proc/$C1/net/nfsfs/volumes
lab_check_output client-released 0 nfs_clients $C1
check_says status-shut-down "superblock $DEV v4 server $X: shut down" nsmount status --pid $C1 --no-probe
check_exit flush-again-nothing-stale 0 nsmount flush --pid $C1
# The next mount (default --stale flush) finds nothing stale and reaches
# srvB with a client of its own.
lab_check mount-b nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
lab_check_output reads-b srvB cat /proc/$C1/root/data/whoami
lab_check_output clientaddr-eth1 clientaddr=198.51.100.2 grep ' /data ' /proc/$C1/mountinfo
lab_check umount-b nsmount umount --pid $C1 /data
kill $HOLD 2>/dev/null
wait $HOLD 2>/dev/null
lab_check held-superblock-goes-with-holder wait_for 5 no_volumes
lab_check no-leaks no_leaks $C1

# --- a route change to another server at the same address: remount ---------
# The netns's NFS client for $X keeps its connection to srvA; remount resets
# it (sock_diag) and the new mount reads srvB at once instead of after the
# old connection times out.
now() { awk '{print $1}' /proc/uptime; }
ip -n c1 route del $X/32 via 198.51.100.1 dev eth1
lab_check mount-a3 nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
lab_check_output reads-a3 srvA cat /proc/$C1/root/data/whoami
to_b
T0=$(now)
lab_check_output remount-after-route-change "remounted" nsmount remount --pid $C1 /data
T1=$(now)
lab_log "route change -> remount reads srvB after $(awk -v a=$T0 -v b=$T1 'BEGIN{printf "%.2f", b - a}') s (6.12)"
lab_check_output reads-b3 srvB cat /proc/$C1/root/data/whoami
lab_check remount-within-5s awk -v a=$T0 -v b=$T1 'BEGIN{exit !(b - a < 5)}'
lab_check umount-b3 nsmount umount --pid $C1 /data
lab_check no-leaks-3 no_leaks $C1
