# A storage migration: N containers (light containers, each its own netns)
# with NFSv4.2 mounts of S:/export served by kernel nfsd, under nsmount
# watch. nfsd stops and NFS-Ganesha starts at the same address, exporting
# the same directory: every mount made against nfsd now fails (EBADHANDLE,
# errno 521: Ganesha rejects nfsd's file handles), and watch remounts each
# from its own container's network. Each container then reads the file it
# wrote before the switch and writes a new one. Container c0 loops stat()
# on a noac mount (a GETATTR storm) throughout: nsmount top names it first,
# before the switch and after. Printed: the time from the switch to the
# last container reading again, remounts per second, failures, and the
# unresponsive gauge and per-operation counters during the switch (watch's
# metrics, scraped every half second).
#
# Topology: netns srv has S on lo and one veth per container (a /32 route
# to the container's address); container cI has 203.0.113.(10+I) peer S.
# The run installs NFS-Ganesha (testenv.WithGanesha).
set -u
N=${N:-50}
S=198.51.100.1
PAR=${PAR:-}          # --remount-parallel, if set
DEADLINE=${DEADLINE:-120}
METRICS=127.0.0.1:9477
now() { awk '{print $1}' /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b - a}'; }
# (A scrape reads 50 mount namespaces' mountstats: 1.5 s beside the storm
# on 1 vCPU, 3.4-3.8 s during the switch.)
scrape() { nsmount-lab get --timeout 8s http://$METRICS/metrics; }
mem() { awk '/^MemAvailable/ { printf "%d MiB", $2 / 1024 }' /proc/meminfo; }

lab_netns srv >/dev/null
ip -n srv addr add $S/32 dev lo
lab_nfsd srv mig >/dev/null
mkdir -p /data
T=$(now)
i=0
FAILS=0
while [ $i -lt "$N" ]; do
	opts=vers=4.2
	[ $i -eq 0 ] && opts=vers=4.2,noac # the GETATTR storm's mount
	lab_light_routed c$i srv 203.0.113.$((10 + i)) $S >/dev/null
	pid=$(lab_pid c$i)
	echo "$pid" >>/tmp/pids
	if ! nsmount mount --pid "$pid" -o $opts $S:/export /data >/dev/null ||
		! nsenter -t "$pid" -m sh -c "echo c$i > /data/before-c$i"; then
		FAILS=$((FAILS + 1))
	fi
	i=$((i + 1))
done
lab_log "$N containers mounted and written in $(since $T) s; memory available $(mem)"
lab_check "all mounted and written before the switch" test $FAILS = 0

nsmount watch --probe-interval 1s --timeout 2s --metrics-address $METRICS ${PAR:+--remount-parallel $PAR} >/tmp/watch.log 2>&1 &
WATCH=$!
wait_for 20 nsmount-lab get --timeout 2s http://$METRICS/healthz
C0=$(lab_pid c0)
N0=$(readlink /proc/$C0/ns/net | tr -dc 0-9)
# The GETATTR storm: c0 stats its file in a loop, through the switch.
nsenter -t "$C0" -m sh -c 'echo $$ >/tmp/storm.pid; while :; do stat /data/whoami >/dev/null 2>&1; done' &
STORM=$!
sleep 2
nsmount top --interval 2s --count 1 >/tmp/top-before.txt 2>&1
cat /tmp/top-before.txt | head -n 6
lab_check "top names the storming container first (nfsd)" test "$(awk '/^pid /{print $2; exit}' /tmp/top-before.txt)" = "$C0"
lab_check_output "its GETATTRs first (nfsd)" GETATTR sh -c "awk '/^pid /{print \$7; exit}' /tmp/top-before.txt"

# --- the switch --------------------------------------------------------------
# Watch's metrics every half second: unresponsive mounts, and c0's GETATTRs
# (counted when they complete), with the time since the switch.
scrape >/tmp/scrape-before.txt
(
	while :; do
		t=$(now)
		scrape >/tmp/scrape.txt 2>/dev/null || : >/tmp/scrape.txt
		awk -v t="$t" -v d="$(since $t)" -v n="netns=\"$N0\"" '
			/^nsmount_nfs_server_unresponsive\{/ { u += $2 }
			/^nsmount_nfs_operation_requests_total\{/ && index($0, n) && /operation="GETATTR"/ { g += $2 }
			/^nsmount_nfs_operation_errors_total\{/ && index($0, n) && /operation="GETATTR"/ { e += $2 }
			/^nsmount_watch_events_total\{kind="remounted"\}/ { r = $2 }
			/^nsmount_watch_events_total\{kind="dead"\}/ { x = $2 }
			END { printf "%s %s %d %d %d %d %d %d\n", t, d, NR, u, g, e, r, x }' /tmp/scrape.txt
		sleep 0.5
	done
) >/tmp/switch-metrics.txt 2>/dev/null &
SCRAPER=$!
T0=$(now)
lab_log "the switch begins (wall clock $(date -u +%T))"
lab_nfsd_stop srv >/dev/null
lab_log "nfsd stopped $(since $T0) s after the switch began"
lab_ganesha srv mig >/dev/null
TG=$(now)
lab_log "Ganesha answers at the same address $(since $T0) s after the switch began"

# reads_again I: container cI reads its file from before the switch and
# writes one after it (each access bounded: a hard mount waits).
reads_again() {
	_p=$(sed -n "$(($1 + 1))p" /tmp/pids)
	/bin/busybox timeout -s KILL 3 nsenter -t "$_p" -m sh -c "read -r l </data/before-c$1 && [ \"\$l\" = c$1 ] && echo c$1 >/data/after-c$1" >/dev/null 2>&1
}
left=$(seq 0 $((N - 1)))
LAST=
while [ -n "$left" ] && awk -v a=$T0 -v b=$(now) -v d=$DEADLINE 'BEGIN { exit !(b - a < d) }'; do
	still=
	for i in $left; do
		if reads_again $i; then LAST=$(now); else still="$still $i"; fi
	done
	left=$still
	[ -z "$left" ] || sleep 0.2
done
kill $SCRAPER
wait $SCRAPER 2>/dev/null
NOTBACK=$(echo $left | wc -w)
scrape >/tmp/scrape-after.txt 2>/dev/null || :
probes() { awk '/^nsmount_watch_events_total\{kind="probe"\}/ { n = $2 } END { printf "%d", n }' "$1"; }
lab_log "MIGRATION: watch's probes from just before the switch to the last container back: $(($(probes /tmp/scrape-after.txt) - $(probes /tmp/scrape-before.txt)))"
if [ -n "$LAST" ]; then
	lab_log "MIGRATION: last of $((N - NOTBACK)) containers reading again $(awk -v a=$T0 -v b=$LAST 'BEGIN{printf "%.2f", b - a}') s after the switch began ($(awk -v a=$TG -v b=$LAST 'BEGIN{printf "%.2f", b - a}') s after Ganesha answered)"
fi
lab_check "every container reads its data and writes after the switch (within ${DEADLINE} s)" test "$NOTBACK" = 0
if [ "$NOTBACK" != 0 ]; then
	_stuck=
	for i in $left; do
		_stuck="$_stuck $(sed -n "$((i + 1))p" /tmp/pids)"
		echo "c$i not back"
	done
	lab_nfs_stuck $_stuck
fi
sleep 1
REMOUNTS=$(grep -c 'msg=remounted ' /tmp/watch.log)
RFAILED=$(grep -c 'msg=remount-failed ' /tmp/watch.log)
# A remount that timed out on a client left stuck by the kernel (6.12:
# "nfs4_schedule_state_manager: kthread_run: -4" when the task that asked
# for recovery had been killed, such as a probe's helper at its deadline)
# is followed by one that retires that client: not a failure of nsmount's.
STUCK=$(grep -c 'msg=remount-failed .*may be stuck' /tmp/watch.log)
RETIRED=$(grep -c 'msg=remounted .*retired the NFS client' /tmp/watch.log)
[ "$STUCK" = 0 ] || lab_log "MIGRATION: $STUCK remount(s) timed out on a stuck client, $RETIRED client(s) retired; kernel: $(dmesg | grep -c 'kthread_run: -') state manager(s) not started"
FAILURES=$((RFAILED - STUCK + NOTBACK))
# Remounts per second: from Ganesha answering to the last remount.
LASTR=$(awk '/msg=remounted /{ t = $1 } END { sub(/^time=/, "", t); print t }' /tmp/watch.log)
FIRSTR=$(awk '/msg=remounted /{ t = $1; sub(/^time=/, "", t); print t; exit }' /tmp/watch.log)
SPAN=$(awk -v a="$FIRSTR" -v b="$LASTR" 'function s(x) { split(x, p, /[T:Z]/); return p[2] * 3600 + p[3] * 60 + p[4] } BEGIN { printf "%.2f", s(b) - s(a) }')
lab_log "MIGRATION: $REMOUNTS remounts in $SPAN s from the first to the last ($(awk -v n=$REMOUNTS -v s=$SPAN 'BEGIN { if (s > 0) printf "%.1f", n / s; else print "-" }') remounts/s), failures $FAILURES ($RFAILED remount-failed, $NOTBACK containers not back)"
lab_log "MIGRATION: remount durations (detection to new mount): $(grep 'msg=remounted ' /tmp/watch.log | sed -n 's/.*elapsed=//p' | sort -n | awk '{ a[NR] = $1 } END { printf "median %.2f s, max %.2f s", a[int((NR + 1) / 2)], a[NR] }')"
lab_log "MIGRATION: watch events: $(sed -n 's/.* msg=\([a-z-]*\) .*/\1/p' /tmp/watch.log | sort | uniq -c | awk '{ printf "%s %s, ", $2, $1 }')"
lab_log "MIGRATION: watch's metrics during the switch (s after it began; scrape time; unresponsive gauge summed; c0's GETATTRs completed and failed, on its superblock of the time; watch's remounted and dead events):"
awk -v t0=$T0 '{ if ($3 == 0) printf "  %5.1f s  scrape failed after %s s\n", $1 - t0, $2; else printf "  %5.1f s  scrape %4.2f s  unresponsive %3d  GETATTR %6d  errors %4d  remounted %3d  dead %3d\n", $1 - t0, $2, $4, $5, $6, $7, $8 }' /tmp/switch-metrics.txt | awk 'NR % 2 == 1 || /failed/' | head -n 50
grep -E 'msg=(remount-failed|error) ' /tmp/watch.log | head -n 10
lab_check "no remount failed (but on a stuck client, then retired)" test "$((RFAILED - STUCK))" = 0 -a \( "$STUCK" = 0 -o "$RETIRED" -ge 1 \)
lab_check "all $N remounted" test "$REMOUNTS" -ge "$N"
lab_check "no mount stale or broken afterwards" sh -c "! nsmount status 2>&1 | grep -Eq ' (stale|broken|hung)\$'"
lab_check_output "old data on the server" c$((N - 1)) cat /srv/mig/before-c$((N - 1))
lab_check_output "new data on the server" "$N" sh -c 'ls /srv/mig | grep -c "^after-c"'
lab_check "the kernel reported 521 to the old mounts" grep -q 'msg=stale .*errno 521' /tmp/watch.log

# --- the GETATTR storm, now on Ganesha --------------------------------------
nsmount top --interval 2s --count 1 >/tmp/top-after.txt 2>&1
head -n 4 /tmp/top-after.txt
lab_check "top names the storming container first (Ganesha)" test "$(awk '/^pid /{print $2; exit}' /tmp/top-after.txt)" = "$C0"
kill "$(cat /proc/$C0/root/tmp/storm.pid)" 2>/dev/null
wait $STORM 2>/dev/null
kill $WATCH
wait $WATCH 2>/dev/null
lab_check_fails watch-no-error grep -q 'msg=error ' /tmp/watch.log

# --- cleanup ----------------------------------------------------------------
T=$(now)
UFAILS=0
while read -r pid; do
	nsmount umount --pid "$pid" /data >/dev/null 2>&1 || UFAILS=$((UFAILS + 1))
done </tmp/pids
lab_log "$N unmounts in $(since $T) s"
lab_check "all unmounted" test "$UFAILS" = 0
lab_check no-leaks no_leaks "$C0"
