# nsmount-lab bench, the main run: nsmount next to nsenter + nfs-utils'
# mount.nfs, in one VM, same server, same container, sequential runs; then
# detection to recovery under nsmount watch (route change, server
# re-export); then mount and status with 100 and 200 tracked mounts, one in
# each of as many containers; watch's footprint over 1000 mount/umount
# cycles. 16 mounts at once and one after another run in VMs of their
# own (bench_1vcpu.sh, bench_smp.sh).
#
# The host prints each BENCH and NOTE line as it arrives; bench_lib.sh,
# put before this file, has the functions the bench scripts share.
set -e

bench_step "setup: NFS server, DNS server and container c1"
lab_netns srv1
lab_container c1
lab_veth srv1 eth0 198.51.100.1/24 c1 eth0 198.51.100.2/24
ip -n srv1 addr add 198.51.100.53/24 dev eth0
lab_nfsd srv1 srv1
lab_dns srv1 198.51.100.53 nfs.lab.test=198.51.100.1
PID=$(lab_pid c1)
printf 'nameserver 198.51.100.53\nsearch lab.test\n' > /proc/$PID/root/etc/resolv.conf
N=${BENCH_N:-20}
UMOUNT="nsenter -t $PID -m /bin/busybox umount /data"
# Warm up: the first mount of a boot pays for module and client set-up.
nsmount mount --pid $PID 198.51.100.1:/export /data && $UMOUNT

bench_step "route and mount in c1, 20 runs each"
nsmount-lab time -n $N --name "nsmount route (address)" -- nsmount route --pid $PID 198.51.100.1
nsmount-lab time -n $N --name "nsmount route (dns name)" -- nsmount route --pid $PID nfs
nsmount-lab time -n $N --name "nsmount mount v4.2" --after "$UMOUNT" -- nsmount mount --pid $PID -o vers=4.2 198.51.100.1:/export /data
nsmount-lab time -n $N --name "nsmount mount v4.2 (dns name)" --after "$UMOUNT" -- nsmount mount --pid $PID -o vers=4.2 nfs:/export /data
# The usual way: enter the container's namespaces and run mount.nfs. The
# VM's root is kept (--root=/) so that mount.nfs and its libraries exist;
# the mount point is the container's /data, reached through /proc.
nsmount-lab time -n $N --name "nsenter + mount.nfs v4.2" --after "$UMOUNT" -- nsenter -t $PID -n -m --root=/ --wd=/ /sbin/mount.nfs 198.51.100.1:/export /proc/$PID/root/data -o vers=4.2
# By name it cannot work that way: mount.nfs runs with the VM's root, so it
# resolves with the VM's resolv.conf and hosts, not the container's.
if out=$(nsenter -t $PID -n -m --root=/ --wd=/ /sbin/mount.nfs nfs.lab.test:/export /proc/$PID/root/data -o vers=4.2 2>&1); then
	$UMOUNT
	echo "NOTE nsenter + mount.nfs by name: worked"
else
	echo "NOTE nsenter + mount.nfs by name: fails, it resolves with the VM's files: $out"
fi


# Detection to recovery under nsmount watch: container c2 reaches srvA
# (eth0) and srvB (eth1, once a /32 route says so) at 203.0.113.10. Times
# are from the change to the mount reading the right server again. After a
# route change watch resets the netns's connections to the address before
# it remounts (the old connection would hang ~18.5 s until the RPC layer
# gives up, the same every time); one run there and back.
bench_step "recovery under nsmount watch: route change, re-export"
bench_watch_setup
bench_route_change ""
MOUNTD=$(for p in $(ip netns pids srvA); do [ "$(cat /proc/$p/comm)" = rpc.mountd ] && echo $p; done | head -n 1)
for fsid in 71 72 73; do
	nsenter -t $MOUNTD -n -m sh -c "exportfs -ua && exportfs -o rw,no_root_squash,insecure,no_subtree_check,fsid=$fsid '*:/export' && exportfs -f"
	echo "NOTE recovery, server re-export with new file handles (fsid $fsid, ESTALE): $(until_reads /data/marker x) s"
done
kill $WATCH
wait $WATCH || true
grep -c 'msg=remounted ' /tmp/bench-watch.log | sed 's/^/NOTE watch remounts during the recovery runs: /'
nsmount umount --pid $C2 /data

# nsmount watch over 1000 mount/umount cycles of one container: its
# anonymous memory (heap, stacks and the runtime's metadata: what a leak
# grows), its whole RSS, open files and goroutines, at the start and after
# the cycles. The start is after 1000 cycles of warm-up: by then watch has
# started its probe helper (two goroutines and two descriptors for good),
# run the code of every step once, and the Go runtime's own metadata
# (mark bits, span structures, in one anonymous mapping of 3.6 MB) has
# grown to what the cycles need. Measured with smaps: after 200 cycles
# that mapping had 1.7 MB resident and 3.3 MB after 600, the heap's
# mapping 8.1 and 7.6 MB; anonymous RSS 8.5, 10.2, 11.1 and 10.6 MB after
# 200, 600, 1000 and 1400 cycles: it levels off after about 1000 (after
# 500 of warm-up the 1000 cycles that followed grew it by 0-2% in five
# runs and 24% in one, whose start read 10.3 MB). The split build runs
# from a memfd, so each page of code touched the first time adds to the
# whole RSS (shared memory, not anonymous). Here, before the many
# containers: the footprint of the cycles, not of the node.
bench_step "watch over 1000 mount/umount cycles"
CYCLES=${BENCH_CYCLES:-1000}
nsmount watch --interval 1s --probe-interval 2s --timeout 2s --metrics-address 127.0.0.1:9477 >/tmp/bench-watch2.log 2>&1 &
WATCH=$!
sleep 3
# watch_scrape: watch's metrics, once, in /tmp/bench-metrics.
watch_scrape() {
	for _try in 1 2 3; do
		nsmount-lab get --timeout 20s http://127.0.0.1:9477/metrics >/tmp/bench-metrics && return
		sleep 1
	done
	: >/tmp/bench-metrics
}
# watch_stat METRIC: the value of a metric of watch's own process in the
# last scrape.
watch_stat() { awk -v m="$1" '$1 == m { printf "%d\n", $2 }' /tmp/bench-metrics; }
# watch_anon FILE: watch's anonymous RSS in bytes: the median of the last
# five readings in FILE, taken every 100 cycles (cycles), or one reading
# now if there are none. One reading after the cycles depended on where
# the garbage collector and the scavenger (which returns freed pages to
# the system in the background) stood when they stopped: the start read
# 9.1-11.8 MB across runs for the same code; the median over the last 500
# cycles is the level the cycles keep.
watch_anon() {
	if [ -s "$1" ]; then
		tail -n 5 "$1" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
	else
		awk '$1 == "RssAnon:" { print $2 * 1024 }' /proc/$WATCH/status
	fi
}
# watch_counts WHEN FILE: watch's footprint (its anonymous RSS from the
# readings in FILE, see watch_anon).
watch_counts() {
	printf 'BENCH-COUNT\twatch anonymous RSS %s\t%s\n' "$1" "$(watch_anon "$2")"
	watch_scrape
	printf 'BENCH-COUNT\twatch heap in use %s\t%s\n' "$1" "$(watch_stat go_memstats_heap_inuse_bytes)"
	printf 'BENCH-COUNT\twatch threads %s\t%s\n' "$1" "$(watch_stat go_threads)"
	printf 'BENCH-COUNT\twatch RSS %s\t%s\n' "$1" "$(watch_stat process_resident_memory_bytes)"
	printf 'BENCH-COUNT\twatch goroutines %s\t%s\n' "$1" "$(watch_stat go_goroutines)"
	printf 'BENCH-COUNT\twatch fds %s\t%s\n' "$1" "$(watch_stat process_open_fds)"
}
# cycles N FILE: N mount/umount cycles in c1; every 100 cycles (about 10
# s) a reading of watch's anonymous RSS into FILE, then a scrape of its
# metrics, as Prometheus would make. Scraped only between the phases,
# watch kept its level within each (9.1-9.3 MB through the warm-up's last
# 600 cycles, 11.2-11.7 through the measured ones) and stepped up by 2 MB
# at the scrape between them: the scrape's cost, not the cycles'.
cycles() {
	_j=0
	: >"$2"
	while [ $_j -lt "$1" ]; do
		nsmount mount --pid $PID -o vers=4.2 198.51.100.1:/export /data >/dev/null
		nsmount umount --pid $PID /data >/dev/null
		_j=$((_j + 1))
		if [ $((_j % 100)) -eq 0 ]; then
			awk '$1 == "RssAnon:" { print $2 * 1024 }' /proc/$WATCH/status >>"$2"
			watch_scrape
		fi
		[ $((_j % 200)) -ne 0 ] || bench_progress "$_j of $1 cycles"
	done
	sleep 3
}
# The warm-up includes a scrape: the first one sets up the metrics'
# collectors for good, and one is made before each later reading.
watch_scrape
cycles 1000 /tmp/bench-rss-warmup
watch_counts "at the start" /tmp/bench-rss-warmup
cycles "$CYCLES" /tmp/bench-rss-cycles
watch_counts "after $CYCLES cycles" /tmp/bench-rss-cycles
echo "NOTE watch anonymous RSS every 100 cycles, warm-up: $(tr '\n' ' ' </tmp/bench-rss-warmup)"
echo "NOTE watch anonymous RSS every 100 cycles, measured: $(tr '\n' ' ' </tmp/bench-rss-cycles)"
kill $WATCH
wait $WATCH || true

# nsmount status and mount with 100, then 200 tracked mounts: light
# containers (own net, mount and UTS namespaces), each with a veth to srv1
# and one NFSv4.2 mount.
# The mount alone again, right before the containers: goals 2a and 2b
# divide by this one, minutes after the first and in the same state of
# the VM as the mounts with 100 and 200 others (the VM's speed under TCG
# drifts by a third within a run).
bench_step "mount alone, before the containers"
nsmount-lab time -n 10 --name "nsmount mount v4.2, before the containers" --after "$UMOUNT" -- nsmount mount --pid $PID -o vers=4.2 198.51.100.1:/export /data

bench_step "100 light containers, one NFSv4.2 mount each"
ip -n srv1 addr add 192.0.2.1/32 dev lo 2>/dev/null || true
mkdir -p /data
i=0
# containers_to N: light containers s0..s(N-1), one mount each.
containers_to() {
	while [ $i -lt "$1" ]; do
		lab_light_routed s$i srv1 203.0.113.$((i % 250 + 1)) 192.0.2.1 >/dev/null
		nsmount mount --pid "$(lab_pid s$i)" -o vers=4.2 192.0.2.1:/export /data >/dev/null
		i=$((i + 1))
		[ $((i % 50)) -ne 0 ] || bench_progress "$i containers mounted"
	done
}
containers_to 100
echo "NOTE 100 containers with one mount each; VM memory available $(awk '/^MemAvailable/ { print int($2 / 1024) }' /proc/meminfo) MiB"
bench_step "status and mount with 100 tracked mounts"
nsmount-lab time -n 10 --name "nsmount mount v4.2, 100 other mounts" --after "$UMOUNT" -- nsmount mount --pid $PID -o vers=4.2 198.51.100.1:/export /data
nsmount-lab time -n 5 --name "nsmount status --no-probe, 100 mounts" -- nsmount status --no-probe
nsmount-lab time -n 3 --name "nsmount status, 100 mounts" -- nsmount status
bench_step "200 light containers, one NFSv4.2 mount each"
containers_to 200
bench_step "status and mount with 200 tracked mounts"
nsmount-lab time -n 10 --name "nsmount mount v4.2, 200 other mounts" --after "$UMOUNT" -- nsmount mount --pid $PID -o vers=4.2 198.51.100.1:/export /data
nsmount-lab time -n 3 --name "nsmount status --no-probe, 200 mounts" -- nsmount status --no-probe
nsmount-lab time -n 3 --name "nsmount status, 200 mounts" -- nsmount status


