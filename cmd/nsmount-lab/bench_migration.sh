# nsmount-lab bench, fifth run (with NFS-Ganesha, 1024 MiB): a storage
# migration at node density. 200 light containers, each its own netns,
# mount NFSv4.2 from kernel nfsd at 198.51.100.1 and write a file; under
# nsmount watch (default --remount-parallel), nfsd stops and NFS-Ganesha
# starts at the same address, exporting the same directory. Every old
# mount gets errno 521 (EBADHANDLE); watch remounts each from its own
# container's network. Timed: from the switch, and from Ganesha
# answering, to the last container reading its file from before the
# switch again; remounts per second; failures. bench_lib.sh is put before
# this file. (The 50-container test with a GETATTR storm and nsmount top:
# nsmount/testdata/lab/migration.sh, TestLabMigration.)
set -e
MIG_N=${BENCH_MIGRATION_N:-200}
MS=198.51.100.1
now() { awk '{print $1}' /proc/uptime; }
bench_step "migration: 200 light containers on kernel nfsd, one NFSv4.2 mount each"
lab_netns msrv >/dev/null
ip -n msrv addr add $MS/32 dev lo
lab_nfsd msrv mig >/dev/null
mkdir -p /data
: >/tmp/mig-pids
i=0
while [ $i -lt "$MIG_N" ]; do
	lab_light_routed m$i msrv 203.0.113.$((i % 250 + 1)) $MS >/dev/null
	p=$(lab_pid m$i)
	echo "$p" >>/tmp/mig-pids
	nsmount mount --pid "$p" -o vers=4.2 $MS:/export /data >/dev/null
	nsenter -t "$p" -m sh -c "echo m$i >/data/before-m$i"
	i=$((i + 1))
	[ $((i % 50)) -ne 0 ] || bench_progress "$i containers mounted"
done
echo "NOTE migration: $MIG_N containers with one mount each; VM memory available $(awk '/^MemAvailable/ { print int($2 / 1024) }' /proc/meminfo) MiB"

bench_step "migration: kernel nfsd to NFS-Ganesha at the same address, under nsmount watch"
nsmount watch --probe-interval 1s --timeout 2s --metrics-address 127.0.0.1:9478 >/tmp/mig-watch.log 2>&1 &
MWATCH=$!
sleep 3
# probes: watch's probes so far (from its metrics).
probes() { nsmount-lab get --timeout 20s http://127.0.0.1:9478/metrics | awk '/^nsmount_watch_events_total\{kind="probe"\}/ { n = $2 } END { printf "%d", n }'; }
P0=$(probes)
T0=$(now)
lab_nfsd_stop msrv >/dev/null
lab_ganesha msrv mig >/dev/null
TG=$(now)
# back I: container mI reads its file from before the switch and writes
# one after it (each try bounded: a hard mount waits).
back() {
	_p=$(sed -n "$(($1 + 1))p" /tmp/mig-pids)
	/bin/busybox timeout -s KILL 3 nsenter -t "$_p" -m sh -c "read -r l </data/before-m$1 && [ \"\$l\" = m$1 ] && echo m$1 >/data/after-m$1" >/dev/null 2>&1
}
left=$(seq 0 $((MIG_N - 1)))
LAST=$TG
while [ -n "$left" ] && awk -v a="$T0" -v b="$(now)" 'BEGIN { exit !(b - a < 300) }'; do
	still=
	for i in $left; do
		if back "$i"; then LAST=$(now); else still="$still $i"; fi
	done
	left=$still
	bench_progress "$((MIG_N - $(echo $left | wc -w))) of $MIG_N containers reading again"
	[ -z "$left" ] || sleep 0.2
done
P1=$(probes)
sleep 1
kill $MWATCH
wait $MWATCH || true
NOTBACK=$(echo $left | wc -w)
REMOUNTS=$(grep -c 'msg=remounted ' /tmp/mig-watch.log || true)
RFAILED=$(grep -c 'msg=remount-failed ' /tmp/mig-watch.log || true)
first_last() { awk '/msg=remounted /{ t = $1; sub(/^time=/, "", t); if (f == "") f = t; l = t } END { print f, l }' /tmp/mig-watch.log; }
SPAN=$(first_last | awk 'function s(x) { split(x, p, /[T:Z]/); return p[2] * 3600 + p[3] * 60 + p[4] } { printf "%.2f", s($2) - s($1) }')
bench_seconds "migration of $MIG_N mounts: switch to the last container reading again" "$(awk -v a="$T0" -v b="$LAST" -v r="$([ "$NOTBACK" = 0 ] || echo 'not recovered within ')" 'BEGIN{printf "%s%.2f", r, b - a}')"
bench_seconds "migration of $MIG_N mounts: Ganesha answering to the last reading again" "$(awk -v a="$TG" -v b="$LAST" -v r="$([ "$NOTBACK" = 0 ] || echo 'not recovered within ')" 'BEGIN{printf "%s%.2f", r, b - a}')"
echo "NOTE migration: nfsd stopped and Ganesha answering $(awk -v a="$T0" -v b="$TG" 'BEGIN{printf "%.2f", b - a}') s after the switch began"
echo "NOTE migration: $REMOUNTS remounts in $SPAN s from the first to the last: $(awk -v n="$REMOUNTS" -v s="$SPAN" 'BEGIN { if (s > 0) printf "%.1f", n / s; else print "-" }') remounts/s"
echo "NOTE migration: remount durations (detection to new mount): $(grep 'msg=remounted ' /tmp/mig-watch.log | sed -n 's/.*elapsed=//p' | sort -n | awk '{ a[NR] = $1 } END { printf "median %.2f s, max %.2f s", a[int((NR + 1) / 2)], a[NR] }')"
echo "NOTE migration: watch's probes from the switch to the last container reading again: $((P1 - P0))"
echo "NOTE migration: failures $((RFAILED + NOTBACK)) ($RFAILED remount-failed, $NOTBACK containers not reading again)"
echo "NOTE migration: watch events: $(sed -n 's/.* msg=\([a-z-]*\) .*/\1/p' /tmp/mig-watch.log | grep -v '^probe$' | sort | uniq -c | awk '{ printf "%s %s, ", $2, $1 }')"
grep 'msg=remount-failed ' /tmp/mig-watch.log | head -n 5 | sed 's/^/NOTE migration: /'
# What holds the containers not reading again (a flake, not understood yet:
# once here, one container's remount timing out again and again;
# TestLabMigration saw something like it once in nine runs).
if [ "$NOTBACK" != 0 ]; then
	_stuck=
	for i in $left; do _stuck="$_stuck $(sed -n "$((i + 1))p" /tmp/mig-pids)"; done
	lab_nfs_stuck $_stuck | sed 's/^/NOTE migration: not back: /'
fi
test "$((RFAILED + NOTBACK))" = 0
