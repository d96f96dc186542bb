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
#  - A client that makes no progress while its server accepts connections
#    (its connection frozen by a proxy in front of srvA's nfsd): a remount
#    through it times out and says so; remount --retire-client shuts its
#    superblocks down and the new mount gets a client of its own; watch
#    does the same by itself at its next attempt after a timed-out one.
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

# --- a client that makes no progress: remount --retire-client, and watch ----
# A proxy in srvA's netns at $P port 2050 (nfsd has every address's 2049)
# forwards to srvA's nfsd; kill -USR1 freezes the connections it carries
# then, the NFS client's among them (timeo=6000: the client does not
# reconnect by itself within the test). The server still accepts
# connections, so a remount's preflight passes, and the new superblock
# would share the frozen client. (A file read before the freeze may still
# read from the client's cache under nfsd's read delegation: the check that
# the client hangs creates a file.)
P=203.0.113.11
ip -n srvA addr add $P/24 dev eth0
PROXY=$(lab_proxy srvA $P:2050 $X:2049) || exit 1
lab_check mount-p nsmount mount --pid $C1 -o vers=4.2,port=2050,timeo=6000 $P:/export /data
lab_check_output reads-p srvA cat /proc/$C1/root/data/whoami
DEVP=$(awk '$5 == "/data" {print $3}' /proc/$C1/mountinfo)
# A superblock of the same client that nsmount did not mount (nosharecache):
# a retire must not shut it down behind its owner's back.
lab_check foreign-mount nsenter -t $C1 -n -m /bin/busybox mount -t nfs4 -o vers=4.2,port=2050,nosharecache,addr=$P,clientaddr=203.0.113.2 $P:/export /mnt
kill -USR1 $PROXY
sleep 0.2
lab_check_fails frozen-client-hangs timeout 3 touch /proc/$C1/root/data/frozen
check_exit remount-times-out 9 nsmount remount --pid $C1 --timeout 4s /data
check_says remount-names-the-client "remount --retire-client" nsmount remount --pid $C1 --timeout 4s /data
check_exit retire-refuses-foreign 12 nsmount remount --pid $C1 --retire-client /data
check_says retire-names-foreign "which nsmount did not mount: not retired" nsmount remount --pid $C1 --retire-client /data
lab_check foreign-umount nsenter -t $C1 -m umount -l /mnt
# A mount of the same server with another NFSv4 minor version has a client
# of its own (the kernel keeps one per minor version; nfsfs/volumes does not
# show which): retiring the 4.2 client must leave it alone. It is mounted
# after the freeze, through a new connection, so its client is healthy.
lab_check mount-other-minor-version nsmount mount --pid $C1 --mkdir -o vers=4.1,port=2050 $P:/export /m41
lab_log "clients in c1 with the 4.1 mount: $(tail -n +2 /proc/$C1/net/nfsfs/servers | tr '\n' ';')"
check_says remount-retires "after retiring the NFS client for $P (shut down $DEVP)" nsmount remount --pid $C1 --retire-client /data
lab_check_output reads-p-again srvA cat /proc/$C1/root/data/whoami
DEVQ=$(awk '$5 == "/data" {print $3}' /proc/$C1/mountinfo)
lab_check new-superblock test "$DEVQ" != "$DEVP"
lab_check other-minor-version-not-retired timeout 10 touch /proc/$C1/root/m41/after-retire
lab_check umount-other-minor-version nsmount umount --pid $C1 /m41
# Shut down, the old superblock fails at once and goes; its client with it.
lab_check old-client-goes wait_for 10 sh -c "test \"\$(tail -n +2 /proc/$C1/net/nfsfs/servers | grep -c .)\" = 1"

# watch: the same by itself. Its first remount times out (--remount-timeout)
# and reports the client as stuck; the next retires it.
kill -USR1 $PROXY
nsmount watch --interval 5s --probe-interval 1s --timeout 2s --remount-timeout 8s --no-kernel-log >/tmp/watch-retire.log 2>&1 &
WATCH=$!
T0=$(now)
# The proxy passes new connections, so the frozen client could also get
# going again by reconnecting (seen once in twelve runs: no retire within
# 120 s, and the mount read srvA at the end); watch then reports the
# server recovered, and there is nothing to retire.
retired() { grep -q 'msg=remounted.*retired the NFS client for' /tmp/watch-retire.log; }
settled() { retired || grep -q 'msg=recovered' /tmp/watch-retire.log; }
lab_check watch-retires-and-remounts wait_for 120 settled
T1=$(now)
lab_check watch-said-stuck grep -q 'msg=remount-failed.*may be stuck' /tmp/watch-retire.log
if retired; then
	lab_log "frozen client -> watch remounted through a client of its own after $(awk -v a=$T0 -v b=$T1 'BEGIN{printf "%.1f", b - a}') s"
	lab_check watch-said-retired grep -q 'level=WARN msg=retired .*made no progress' /tmp/watch-retire.log
else
	lab_log "frozen client -> reconnected by itself after $(awk -v a=$T0 -v b=$T1 'BEGIN{printf "%.1f", b - a}') s, before watch retired it"
fi
lab_check_output reads-p-watch srvA cat /proc/$C1/root/data/whoami
kill $WATCH
wait $WATCH 2>/dev/null
grep -E 'msg=(dead|recovered|remount-failed|retired|remounted)' /tmp/watch-retire.log | cut -c1-400
lab_check umount-p nsmount umount --pid $C1 /data
lab_check no-leaks-p wait_for 10 no_leaks $C1
kill $PROXY
