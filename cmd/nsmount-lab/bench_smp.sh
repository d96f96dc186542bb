# nsmount-lab bench, second run (2 vCPUs): the concurrency figure of the
# main run, 16 mounts at once against one after another, on a guest with
# two virtual CPUs.
set -e
bench_step() { echo "BENCH-STEP $1"; }
bench_progress() { echo "BENCH-PROGRESS $*"; }

# bench_concurrency SUFFIX: 16 light containers (k0..k15, each its own
# netns routed to srv1's 192.0.2.1) and their mounts timed one after
# another and all at once, 3 runs each; SUFFIX ends the measurements'
# names (e.g. " (2 vCPUs)").
bench_concurrency() {
	ip -n srv1 addr add 192.0.2.1/32 dev lo 2>/dev/null || true
	mkdir -p /data
	_pids=
	for _k in $(seq 0 15); do
		lab_light_routed k$_k srv1 192.0.2.$((100 + _k)) 192.0.2.1 >/dev/null
		_pids="$_pids $(lab_pid k$_k)"
	done
	cat >/tmp/bench-seq <<EOS
for p in $_pids; do nsmount mount --pid \$p -o vers=4.2 192.0.2.1:/export /data >/dev/null || exit 1; done
EOS
	cat >/tmp/bench-par <<EOS
for p in $_pids; do nsmount mount --pid \$p -o vers=4.2 192.0.2.1:/export /data >/dev/null & done
wait
EOS
	cat >/tmp/bench-umount <<EOS
for p in $_pids; do nsenter -t \$p -m /bin/busybox umount /data; done
nsmount status --no-probe >/dev/null
EOS
	nsmount-lab time -n 3 --name "16 mounts one after another$1" --after "sh /tmp/bench-umount" -- sh /tmp/bench-seq
	nsmount-lab time -n 3 --name "16 mounts at once$1" --after "sh /tmp/bench-umount" -- sh /tmp/bench-par
}

bench_step "2 vCPUs: setup, NFS server"
lab_netns srv1
lab_nfsd srv1 srv1
nsmount-lab time -n 1 --name "warm-up" -- true >/dev/null
bench_step "2 vCPUs: 16 mounts at once and one after another"
bench_concurrency " (2 vCPUs)"
