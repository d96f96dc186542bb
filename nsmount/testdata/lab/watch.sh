# Remount and watch. Container c1 reaches srvA (via eth0) and srvB (via
# eth1, once a /32 route says so) at the same address. nsmount remount
# replaces a mount in place; nsmount watch follows a route change to the
# new server, remounts after the server re-exports with new file handles
# (ESTALE), and reports a dead server within seconds.
set -u
two_servers_one_address
now() { awk '{print $1}' /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b - a}'; }
# wait_read FILE WANT SECONDS: poll until FILE (inside c1) contains WANT.
wait_read() {
	_i=0
	while [ $_i -lt $(($3 * 10)) ]; do
		grep -q "$2" "/proc/$C1/root$1" 2>/dev/null && return 0
		sleep 0.1
		_i=$((_i + 1))
	done
	return 1
}

lab_check mount nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
lab_check_output reads-a srvA cat /proc/$C1/root/data/whoami
lab_check write-before lab_exec c1 sh -c 'echo acknowledged > /data/f && sync'
DEV0=$(awk '$5 == "/data" {print $3}' /proc/$C1/mountinfo)

# --- nsmount remount, nothing changed: a new superblock, same server ------
lab_exec c1 sh -c 'i=0; m=0; while [ $i -lt 3000 ]; do [ -e /data/whoami ] || m=$((m+1)); i=$((i+1)); done; echo $m > /tmp/misses' &
READER=$!
lab_check_output remount "remounted" nsmount remount --pid $C1 /data
wait $READER
lab_log "a reader looping over /data/whoami during the remount missed it $(cat /proc/$C1/root/tmp/misses) of 3000 times (6.1: detach + attach)"
DEV1=$(awk '$5 == "/data" {print $3}' /proc/$C1/mountinfo)
lab_log "superblock before $DEV0, after $DEV1"
lab_check remount-new-superblock test "$DEV0" != "$DEV1"
lab_check_output write-kept acknowledged cat /proc/$C1/root/data/f
lab_check_output one-nfs-mount 1 sh -c "grep -c ' - nfs4 ' /proc/$C1/mountinfo"
lab_check_output old-superblock-gone 1 sh -c "tail -n +2 /proc/$C1/net/nfsfs/volumes | grep -c ."
check_exit remount-not-mounted 10 nsmount remount --pid $C1 /nothing

# --- nsmount watch --------------------------------------------------------
nsmount watch --interval 1s --probe-interval 1s --timeout 2s --for 60s >/tmp/watch.log 2>&1 &
WATCH=$!
sleep 1.5
T0=$(now)
ip -n c1 route replace $X/32 via 198.51.100.1 dev eth1
# The new superblock shares the netns's NFS client for $X, whose connection
# to srvA would hang for ~18 s: watch resets it (sock_diag) before the
# remount. Generous bound here; `make bench` measures the goal (1 s).
if wait_read /data/whoami srvB 5; then
	lab_log "watch: route change -> mount reads srvB after $(since $T0) s"
	echo "LAB-CHECK PASS route-change-followed within 5 s"
else
	echo "LAB-CHECK FAIL route-change-followed within 5 s: still $(cat /proc/$C1/root/data/whoami 2>&1) after 5 s: $(tail -n 5 /tmp/watch.log | tr '\n' ' ')"
fi
lab_check_output watch-saw-drift "drift" cat /tmp/watch.log
lab_check_output watch-remounted "msg=remounted mountpoint=/data" cat /tmp/watch.log

# The server re-exports with new file handles (another fsid): ESTALE.
MOUNTD=$(for p in $(ip netns pids srvB); do [ "$(cat /proc/$p/comm)" = rpc.mountd ] && echo $p; done | head -n 1)
lab_exec c1 sh -c 'echo before-reexport > /data/g'
T0=$(now)
nsenter -t $MOUNTD -n -m sh -c 'exportfs -ua && exportfs -o rw,no_root_squash,insecure,no_subtree_check,fsid=77 "*:/export" && exportfs -f'
sleep 0.5
lab_log "after re-export, the old mount reads: $(cat /proc/$C1/root/data/whoami 2>&1)"
if wait_read /data/g before-reexport 20; then
	lab_log "watch: re-export (ESTALE) -> remounted, mount reads again after $(since $T0) s"
	echo "LAB-CHECK PASS estale-remounted"
else
	echo "LAB-CHECK FAIL estale-remounted: $(cat /proc/$C1/root/data/g 2>&1) after 20 s: $(tail -n 5 /tmp/watch.log | tr '\n' ' ')"
fi
lab_check_output watch-saw-estale "ESTALE" cat /tmp/watch.log

# Mount and unmount under watch, which probes each new mount at once: an
# unmount waits for a probe in flight (the mount's lock), never EBUSY
# (each mount lives 0.1 to 0.4 s: long enough for watch to start a probe).
mkdir -p /proc/$C1/root/cyc
T0=$(now)
CYC=0
for i in $(seq 1 30); do
	nsmount mount --pid $C1 -o vers=4.2 $X:/export /cyc >/dev/null 2>>/tmp/cycles.err &&
		sleep 0.$((i % 4 + 1)) && nsmount umount --pid $C1 /cyc >/dev/null 2>>/tmp/cycles.err && CYC=$((CYC + 1))
done
lab_log "30 mount/umount cycles under watch in $(since $T0) s: $CYC whole; $(cat /tmp/cycles.err 2>/dev/null | sort | uniq -c | head -n 3)"
lab_check cycles-under-watch test "$CYC" = 30

# A dead server (its link goes down): reported within seconds.
T0=$(now)
ip -n srvB link set eth0 down
i=0
until grep -q 'msg=dead ' /tmp/watch.log || [ $i -gt 150 ]; do sleep 0.1; i=$((i + 1)); done
lab_log "watch: dead server reported after $(since $T0) s"
lab_check_output watch-saw-dead "msg=dead " cat /tmp/watch.log
ip -n srvB link set eth0 up
sleep 1
kill $WATCH
wait $WATCH
lab_log "watch log:"
cat /tmp/watch.log
lab_check_fails watch-no-error grep -q 'msg=error ' /tmp/watch.log
lab_check umount nsmount umount --pid $C1 /data
lab_check no-leaks no_leaks $C1
