# Seeing inside: per-container NFS metrics, the kernel-log watchdog and
# nsmount top. Containers c1 and c2 mount the same address 198.51.100.10
# from their own netns, each reaching a server of its own (srvA, srvB),
# with noac,hard,timeo=10,retrans=1. c1 also has /work (attributes cached:
# a task can block on its directory's lock, for the hung-task detector).
set -u
lab_netns srvA >/dev/null
lab_netns srvB >/dev/null
lab_container c1 >/dev/null
lab_container c2 >/dev/null
lab_veth srvA eth0 198.51.100.10/24 c1 eth0 198.51.100.2/24 >/dev/null
lab_veth srvB eth0 198.51.100.10/24 c2 eth0 198.51.100.2/24 >/dev/null
lab_nfsd srvA srvA >/dev/null
lab_nfsd srvB srvB >/dev/null
C1=$(lab_pid c1)
C2=$(lab_pid c2)
S=198.51.100.10
HARD=vers=4.2,noac,hard,timeo=10,retrans=1
lab_check mount-c1 nsmount mount --pid $C1 -o $HARD $S:/export /data
lab_check mount-c2 nsmount mount --pid $C2 -o $HARD $S:/export /data
lab_check mount-c1-work nsmount mount --pid $C1 --mkdir -o vers=4.2,hard,timeo=10,retrans=1,actimeo=60 $S:/export /work
N1=$(readlink /proc/$C1/ns/net | tr -dc 0-9)
N2=$(readlink /proc/$C2/ns/net | tr -dc 0-9)
D1=$(awk '$5 == "/data" {print $3}' /proc/$C1/mountinfo)
D2=$(awk '$5 == "/data" {print $3}' /proc/$C2/mountinfo)
lab_log "c1: pid $C1 netns $N1 /data $D1; c2: pid $C2 netns $N2 /data $D2"

now() { awk '{print $1}' /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b - a}'; }
scrape() { nsmount-lab get http://127.0.0.1:9477/metrics; }
# value METRIC NETNS [OPERATION]: the value of the series of METRIC with
# that netns (and operation) label, "none" if there is none.
value() {
	scrape | awk -v m="$1{" -v n="netns=\"$2\"" -v o="${3:+operation=\"$3\"}" '
		index($0, m) == 1 && index($0, n) && (o == "" || index($0, o)) { print $2; f = 1; exit }
		END { if (!f) print "none" }'
}
is() { test "$(value "$1" "$2" "${4:-}")" = "$3"; }
start_watch() {
	nsmount watch --interval 1s --timeout 2s --metrics-address 127.0.0.1:9477 "$@" >>/tmp/watch.log 2>&1 &
	WATCH=$!
	wait_for 20 nsmount-lab get --timeout 2s http://127.0.0.1:9477/healthz
}

# --- metrics: GETATTRs counted apart per container --------------------------
# (Probes would add GETATTRs of their own: none after the first round.)
start_watch --probe-interval 1h
lab_check_output healthz ok nsmount-lab get --timeout 2s http://127.0.0.1:9477/healthz
scrape >/tmp/scrape.txt
lab_check_output mount-info "container_id=\"\",dev=\"$D1\",export=\"/export\"" sh -c "grep '^nsmount_nfs_mount_info{' /tmp/scrape.txt | grep 'netns=\"$N1\"' | grep 'mountpoint=\"/data\"'"
lab_check_output mount-info-owner 'owner="cli",server="198.51.100.10",vers="4.2"' sh -c "grep '^nsmount_nfs_mount_info{' /tmp/scrape.txt | grep 'netns=\"$N2\"'"
sleep 2 # the first round's probes are done
G1=$(value nsmount_nfs_operation_requests_total $N1 GETATTR)
G2=$(value nsmount_nfs_operation_requests_total $N2 GETATTR)
T0=$(now)
lab_exec c2 sh -c 'i=0; while [ $i -lt 200 ]; do stat /data/whoami >/dev/null; i=$((i+1)); done'
lab_log "200 stats in c2 took $(since $T0) s"
G1B=$(value nsmount_nfs_operation_requests_total $N1 GETATTR)
G2B=$(value nsmount_nfs_operation_requests_total $N2 GETATTR)
lab_log "GETATTR c1 $G1 -> $G1B, c2 $G2 -> $G2B"
lab_check "200 stats in c2 raise c2's GETATTR count by 200 or more" test $((G2B - G2)) -ge 200
lab_check "and not c1's" test "$G1B" = "$G1"
lab_check_output rtt-counted "nsmount_nfs_operation_rtt_seconds_total{dev=\"$D2\",netns=\"$N2\",operation=\"GETATTR\"}" scrape
lab_check_output unresponsive-zero "nsmount_nfs_server_unresponsive{dev=\"$D1\",netns=\"$N1\"} 0" scrape

# --- nsmount top: the busy container first ------------------------------------
lab_exec c2 sh -c 'echo $$ >/tmp/busy.pid; while :; do stat /data/whoami >/dev/null; done' &
BUSY=$!
sleep 1
nsmount top --interval 2s --count 1 >/tmp/top.txt 2>&1
nsmount top --interval 2s --json >/tmp/top.json 2>&1
kill "$(cat /proc/$C2/root/tmp/busy.pid)"
wait $BUSY || true
cat /tmp/top.txt
lab_check "top names the busy container first" test "$(awk '/^pid /{print $2; exit}' /tmp/top.txt)" = "$C2"
lab_check_output "its GETATTRs first" GETATTR sh -c "awk '/^pid /{print \$7; exit}' /tmp/top.txt"
lab_check "top --json: the busy container first" test "$(grep -m1 -A1 '"containers"' /tmp/top.json | tail -n 1 | tr -dc 0-9)" = "$C2"
kill $WATCH
wait $WATCH || true

# --- an outage of c1's route: the watchdog, the gauge, a scrape, a hung task --
echo 5 > /proc/sys/kernel/hung_task_timeout_secs
echo 1 > /proc/sys/kernel/hung_task_check_interval_secs
start_watch --probe-interval 2s
lab_exec c1 ls /work >/dev/null # /work's attributes are cached from now on
sleep 2
T0=$(now)
lab_log "blackhole c1's route at $(date -u +%T)"
ip -n c1 route add blackhole $S/32
lab_exec c1 stat /data/whoami >/dev/null 2>&1 &
STAT=$!
# mkdir d1 waits on the server holding /work's lock; mkdir d2 waits for
# the lock, uninterruptibly: a hung task after 5 s.
lab_exec c1 mkdir /work/d1 >/dev/null 2>&1 &
MK1=$!
sleep 0.5
lab_exec c1 mkdir /work/d2 >/dev/null 2>&1 &
MK2=$!
if wait_for 30 is nsmount_nfs_server_unresponsive $N1 1; then
	lab_log "c1's unresponsive gauge is 1 after $(since $T0) s"
	echo "LAB-CHECK PASS c1-unresponsive"
else
	echo "LAB-CHECK FAIL c1-unresponsive: $(scrape | grep unresponsive | tr '\n' ' ')"
fi
lab_check "c2's gauge stays 0" is nsmount_nfs_server_unresponsive $N2 0
if wait_for 20 grep -q "msg=unresponsive mountpoint=/data .*netns=$N1 " /tmp/watch.log; then
	lab_log "the watchdog reported c1's /data unresponsive $(since $T0) s after the blackhole"
fi
T1=$(now)
scrape >/tmp/scrape.txt
lab_log "a scrape during the outage took $(since $T1) s"
lab_check "a scrape during the outage answers within 5 s" awk -v a=$T1 -v b=$(now) 'BEGIN { exit !(b - a < 5) }'
lab_check_output "and has c2's counters" "nsmount_nfs_operation_requests_total{dev=\"$D2\",netns=\"$N2\",operation=\"GETATTR\"}" cat /tmp/scrape.txt
lab_check "the watchdog attributed the kernel's line to c1" wait_for 20 grep -q "msg=kernel kmsg=not-responding server=$S attribution=attributed .*netns $N1, dev $D1" /tmp/watch.log
lab_check_fails "and not to c2" grep -q "msg=kernel kmsg=not-responding .*netns $N2" /tmp/watch.log
lab_check "c1's /data reported unresponsive by the kernel" grep -q "msg=unresponsive mountpoint=/data .*netns=$N1 .*detail=\"kernel: nfs: server $S not responding" /tmp/watch.log
if wait_for 40 grep -q "msg=kernel kmsg=hung-task .*attribution=attributed" /tmp/watch.log; then
	lab_log "hung task attributed $(since $T0) s after the blackhole"
	echo "LAB-CHECK PASS hung-task-attributed"
else
	echo "LAB-CHECK FAIL hung-task-attributed: $(grep -i 'hung\|blocked' /tmp/watch.log | tail -n 3 | tr '\n' ' ')"
fi
lab_check_output "to c1's mount namespace" "is in mount namespace $(readlink /proc/$C1/ns/mnt | tr -dc 0-9)" grep "kmsg=hung-task" /tmp/watch.log
lab_check_output "the hung-task metric" 'nsmount_kmsg_attributions_total{attribution="attributed",kind="hung-task"}' scrape
T2=$(now)
ip -n c1 route del blackhole $S/32
if wait_for 60 is nsmount_nfs_server_unresponsive $N1 0; then
	lab_log "c1's gauge back to 0 $(since $T2) s after the route came back"
	echo "LAB-CHECK PASS c1-responsive-again"
else
	echo "LAB-CHECK FAIL c1-responsive-again: $(tail -n 5 /tmp/watch.log | tr '\n' ' ')"
fi
wait_for 60 sh -c "! kill -0 $STAT $MK1 $MK2 2>/dev/null" || kill -9 $STAT $MK1 $MK2 2>/dev/null
wait $STAT $MK1 $MK2 || true
lab_check_output kmsg-counted 'nsmount_kmsg_messages_total{kind="not-responding"}' scrape
lab_check_output probes-timed nsmount_probe_duration_seconds_count scrape
kill $WATCH
wait $WATCH || true
# kmsgtime PATTERN: seconds from the blackhole to the first kernel line
# matching PATTERN.
kmsgtime() { dmesg | awk -v t0=$T0 -v p="$1" 'index($0, p) { t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t); if (t + 0 >= t0) { printf "%.2f", t - t0; exit } }'; }
lab_log "kernel lines after the blackhole: not responding $(kmsgtime 'not responding') s, hung task $(kmsgtime 'INFO: task') s, OK $(kmsgtime 'server 198.51.100.10 OK') s (route back at $(awk -v a=$T0 -v b=$T2 'BEGIN{printf "%.2f", b - a}') s)"
lab_log "watch log:"
grep -v 'msg=probe' /tmp/watch.log
lab_check_fails watch-no-error grep -q 'msg=error ' /tmp/watch.log
lab_check umount-c1 nsmount umount --pid $C1 /data
lab_check umount-c1-work nsmount umount --pid $C1 /work
lab_check umount-c2 nsmount umount --pid $C2 /data
lab_check no-leaks-c1 no_leaks $C1
lab_check no-leaks-c2 no_leaks $C2
