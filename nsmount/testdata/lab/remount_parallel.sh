# A measurement, run by hand (README, "Storage migration"): how fast
# nsmount watch moves N mounts to a new server at the same address with
# --remount-parallel P, for N in $NS and P in $PS. Each run switches the
# server at 198.51.100.1 between kernel nfsd and NFS-Ganesha (the other
# way each time: either rejects the other's file handles, EBADHANDLE),
# and times, from the new server answering: the first and the last
# remount, and the remount durations watch reports.
#
#   nsmount-lab run --with ganesha --memory 1024 --timeout 25m nsmount/testdata/lab/remount_parallel.sh
#
# The guest does not get the host's environment: to bound the run, put the
# settings before the script, e.g.
#   { echo 'NS=50 PS="1 4"'; cat nsmount/testdata/lab/remount_parallel.sh; } | nsmount-lab run --with ganesha --memory 1024 -
set -u
NS=${NS:-50 200}
PS=${PS:-1 2 4 8 16}
S=198.51.100.1
now() { awk '{print $1}' /proc/uptime; }
lab_netns srv >/dev/null
ip -n srv addr add $S/32 dev lo
lab_nfsd srv mig >/dev/null
SERVER=nfsd
mkdir -p /data
mounted=0
# mount_to N: containers c0..c(N-1), each with one NFSv4.2 mount.
mount_to() {
	while [ $mounted -lt "$1" ]; do
		lab_light_routed c$mounted srv 203.0.113.$((mounted % 250 + 1)) $S >/dev/null
		nsmount mount --pid "$(lab_pid c$mounted)" -o vers=4.2 $S:/export /data >/dev/null || echo "mount c$mounted failed"
		mounted=$((mounted + 1))
	done
}
# switch: the other server at the same address, same directory.
switch() {
	if [ $SERVER = nfsd ]; then
		lab_nfsd_stop srv >/dev/null && lab_ganesha srv mig >/dev/null && SERVER=ganesha
	else
		lab_ganesha_stop srv >/dev/null && lab_nfsd srv mig >/dev/null && SERVER=nfsd
	fi
}
remounted() { grep -c 'msg=remounted ' /tmp/watch.log; }
for n in $NS; do
	mount_to "$n"
	lab_log "$n mounts; memory available $(awk '/^MemAvailable/ { print int($2 / 1024) }' /proc/meminfo) MiB"
	for p in $PS; do
		nsmount watch --probe-interval 1s --probe-rate 1000 --timeout 2s --remount-parallel "$p" >/tmp/watch.log 2>&1 &
		W=$!
		sleep 5
		T0=$(now)
		switch
		TUP=$(now)
		FIRST= LAST=
		while [ "$(remounted)" -lt "$n" ] && awk -v a=$TUP -v b=$(now) 'BEGIN { exit !(b - a < 300) }'; do
			[ -n "$FIRST" ] || [ "$(remounted)" -eq 0 ] || FIRST=$(now)
			sleep 0.2
		done
		LAST=$(now)
		[ -n "$FIRST" ] || FIRST=$LAST
		kill $W
		wait $W 2>/dev/null
		R=$(remounted)
		D=$(grep 'msg=remounted ' /tmp/watch.log | sed -n 's/.*elapsed=//p' | sort -n | awk '{ a[NR] = $1 } END { printf "%.2f %.2f", a[int((NR + 1) / 2)], a[NR] }')
		echo "REMOUNT-PARALLEL n=$n p=$p to=$SERVER switch_s=$(awk -v a=$T0 -v b=$TUP 'BEGIN{printf "%.1f", b - a}') remounted=$R first_s=$(awk -v a=$TUP -v b=$FIRST 'BEGIN{printf "%.1f", b - a}') last_s=$(awk -v a=$TUP -v b=$LAST 'BEGIN{printf "%.1f", b - a}') per_s=$(awk -v n=$R -v a=$FIRST -v b=$LAST 'BEGIN { if (b > a) printf "%.1f", n / (b - a); else print "-" }') median_s=${D% *} max_s=${D#* } failed=$(grep -c 'msg=remount-failed ' /tmp/watch.log) dead=$(grep -c 'msg=dead ' /tmp/watch.log)"
	done
done
