# nsmount-lab bench, third run (Debian 12's 6.12 kernel): a route change
# to another server at the same address under nsmount watch, there and
# back, as in the main run on 6.1.
set -e
bench_step() { echo "BENCH-STEP $1"; }
bench_step "6.12: route change under nsmount watch"
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
nsmount watch --interval 1s --probe-interval 1s --timeout 2s >/tmp/bench-watch.log 2>&1 &
WATCH=$!
sleep 1.5
up() { awk '{print $1}' /proc/uptime; }
until_reads() {
	_t0=$(up)
	_i=0
	until grep -q "$2" "/proc/$C2/root$1" 2>/dev/null || [ $_i -ge 600 ]; do sleep 0.1; _i=$((_i + 1)); done
	_r=
	grep -q "$2" "/proc/$C2/root$1" 2>/dev/null || _r='not recovered within '
	awk -v a="$_t0" -v b="$(up)" -v r="$_r" 'BEGIN{printf "%s%.2f", r, b - a}'
}
bench_seconds() {
	case $2 in not*) echo "NOTE $1: $2 s"; return ;; esac
	awk -v n="$1" -v s="$2" 'BEGIN{ns = int(s * 1e9); printf "BENCH\t%s\t1\t%d\t%d\t%d\t%d\n", n, ns, ns, ns, ns}'
}
ip -n c2 route replace 203.0.113.10/32 via 198.51.100.1 dev eth1
bench_seconds "route change to another server at the same address, under watch (6.12)" "$(until_reads /data/whoami srvB)"
ip -n c2 route del 203.0.113.10/32
bench_seconds "route change back, under watch (6.12)" "$(until_reads /data/whoami srvA)"
kill $WATCH
wait $WATCH || true
nsmount umount --pid $C2 /data
