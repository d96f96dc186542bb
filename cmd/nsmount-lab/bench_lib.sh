# Functions of the bench scripts (bench.sh, bench_smp.sh, bench_612.sh);
# the host puts this file before each of them.

# bench_step NAME: the part of the bench that runs now (the host says which
# one a stopped run was in). The host reads the list of steps from the
# bench_step lines of the scripts, so each call takes one literal string.
bench_step() { echo "BENCH-STEP $1"; }
# bench_progress MSG: a line the host shows as progress within a step.
bench_progress() { echo "BENCH-PROGRESS $*"; }
# bench_seconds NAME SECONDS: one BENCH line of a time the script measured.
# (%.0f, not %d: the guest's busybox awk prints any %d past 2^31-1 as
# -2147483648, i.e. every time over 2.15 s.)
bench_seconds() {
	case $2 in not*) echo "NOTE $1: $2 s"; return ;; esac
	awk -v n="$1" -v s="$2" 'BEGIN{ns = s * 1e9; printf "BENCH\t%s\t1\t%.0f\t%.0f\t%.0f\t%.0f\n", n, ns, ns, ns, ns}'
}

# bench_concurrency SUFFIX: 16 light containers (k0..k15, each its own
# netns routed to srv1's 192.0.2.1) and their mounts timed one after
# another and all at once, 10 runs each, interleaved, and the kernel's own
# mount the same way, 6 runs each; SUFFIX ends the measurements' names
# (e.g. " (2 vCPUs)"). The VM's speed under TCG varies by a third within
# a minute (one after another took 0.97-1.41 s in one VM), so the medians
# need the runs.
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
	# Interleaved (seq, par, par, seq, ...): the VM's speed drifts over a
	# run (the same 16 mounts at once took 1.66 s early in one VM and
	# 1.18 s later), and three of one after three of the other took the
	# drift for a difference between them.
	nsmount-lab time -n 10 --name "16 mounts one after another$1" --after "sh /tmp/bench-umount" \
		--versus "sh /tmp/bench-par" --versus-name "16 mounts at once$1" -- sh /tmp/bench-seq
	# The floor: the kernel's own mount with no helper around it (nsenter
	# and busybox mount, the server's and the container's addresses
	# given), the same 16 one after another and at once.
	_i=0
	: >/tmp/bench-kseq
	: >/tmp/bench-kpar
	for _p in $_pids; do
		_m="nsenter -t $_p -n -m /bin/busybox mount -t nfs4 -o vers=4.2,addr=192.0.2.1,clientaddr=192.0.2.$((100 + _i)) 192.0.2.1:/export /data"
		echo "$_m || exit 1" >>/tmp/bench-kseq
		echo "$_m &" >>/tmp/bench-kpar
		_i=$((_i + 1))
	done
	echo wait >>/tmp/bench-kpar
	nsmount-lab time -n 6 --name "16 kernel mounts one after another$1" --after "sh /tmp/bench-umount" \
		--versus "sh /tmp/bench-kpar" --versus-name "16 kernel mounts at once$1" -- sh /tmp/bench-kseq | tee /tmp/bench-k
	awk -F'\t' '{ m[NR] = $6 } END { if (m[1] > 0) printf "NOTE the kernel mount alone (nsenter + busybox mount), 16 at once vs one after another%s: %.2f (medians)\n", s, m[2] / m[1] }' s="$1" /tmp/bench-k
}

# bench_watch_setup: container c2 reaches srvA (eth0) and srvB (eth1, once
# a /32 route says so) at 203.0.113.10, mounts srvA's export on /data, and
# nsmount watch runs (its pid in WATCH, its log /tmp/bench-watch.log).
bench_watch_setup() {
	lab_netns srvA
	lab_netns srvB
	lab_container c2
	lab_veth srvA eth0 203.0.113.10/24 c2 eth0 203.0.113.2/24
	lab_veth srvB eth0 198.51.100.1/24 c2 eth1 198.51.100.2/24
	ip -n srvB addr add 203.0.113.10/32 dev eth0
	lab_nfsd srvA srvA
	lab_nfsd srvB srvB
	C2=$(lab_pid c2)
	nsmount mount --pid $C2 -o vers=4.2 203.0.113.10:/export /data
	echo x > /proc/$C2/root/data/marker
	nsmount watch --interval 1s --probe-interval 1s --timeout 2s >/tmp/bench-watch.log 2>&1 &
	WATCH=$!
	sleep 1.5
}

# until_reads FILE WANT: seconds until FILE in c2 contains WANT (at most 60,
# then "not recovered within" them).
until_reads() {
	_t0=$(awk '{print $1}' /proc/uptime)
	_i=0
	until grep -q "$2" "/proc/$C2/root$1" 2>/dev/null || [ $_i -ge 600 ]; do sleep 0.1; _i=$((_i + 1)); done
	_r=
	grep -q "$2" "/proc/$C2/root$1" 2>/dev/null || _r='not recovered within '
	awk -v a="$_t0" -v b="$(awk '{print $1}' /proc/uptime)" -v r="$_r" 'BEGIN{printf "%s%.2f", r, b - a}'
}

# bench_route_change SUFFIX: c2's route to 203.0.113.10 moved to srvB and
# back under watch, each timed from the change to /data reading the other
# server; SUFFIX ends the measurements' names.
bench_route_change() {
	ip -n c2 route replace 203.0.113.10/32 via 198.51.100.1 dev eth1
	bench_seconds "route change to another server at the same address, under watch$1" "$(until_reads /data/whoami srvB)"
	ip -n c2 route del 203.0.113.10/32
	bench_seconds "route change back, under watch$1" "$(until_reads /data/whoami srvA)"
}
