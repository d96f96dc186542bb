# nsmount lab helper library (/usr/lib/nsmount-lab/lab.sh).
#
# Sourced by /init before the scenario script. Every helper prints what it
# made; on error it prints "lab: FUNCTION: reason" to stderr and returns
# non-zero (so a script using `set -e` stops there).
#
# "-" as a netns name means the VM's initial network namespace.
# State lives in /run/lab: containers' PIDs (/run/lab/ct/NAME.pid), the last
# export fsid, daemon logs (/run/lab/log/).

LAB_STATE=/run/lab
mkdir -p "$LAB_STATE/ct" "$LAB_STATE/log"

# lab_die FUNC MSG...: report an error of helper FUNC and return 1.
lab_die() {
	_f=$1
	shift
	echo "lab: $_f: $*" >&2
	return 1
}

# lab_log MSG...: print MSG prefixed with the guest uptime in seconds.
lab_log() {
	read _up _ </proc/uptime
	printf '[%8s] %s\n' "$_up" "$*"
}

# lab_ip NS ARGS...: run ip ARGS in netns NS ("-" = initial netns).
lab_ip() {
	_ns=$1
	shift
	if [ "$_ns" = - ]; then
		ip "$@"
	else
		ip -n "$_ns" "$@"
	fi
}

# lab_netns NAME: create the named network namespace NAME (ip netns add)
# with its loopback up.
lab_netns() {
	[ $# -eq 1 ] || lab_die lab_netns "usage: lab_netns NAME" || return
	ip netns add "$1" || lab_die lab_netns "ip netns add $1 failed" || return
	ip -n "$1" link set lo up || lab_die lab_netns "lo up in $1 failed" || return
	echo "lab: netns $1"
}

# lab_veth NS_A IF_A ADDR_A NS_B IF_B ADDR_B: a veth pair with end IF_A in
# NS_A and IF_B in NS_B, addresses ADDR_A/ADDR_B with prefix (IPv4 or IPv6;
# IPv6 addresses are added with nodad), both ends up. ADDR "-" adds none.
lab_veth() {
	[ $# -eq 6 ] || lab_die lab_veth "usage: lab_veth NS_A IF_A ADDR_A NS_B IF_B ADDR_B" || return
	LAB_VETH_N=$((${LAB_VETH_N:-0} + 1))
	_tmp_a=lvA$$.$LAB_VETH_N
	_tmp_b=lvB$$.$LAB_VETH_N
	ip link add "$_tmp_a" type veth peer name "$_tmp_b" || lab_die lab_veth "ip link add failed" || return
	lab_veth_end "$1" "$_tmp_a" "$2" "$3" || return
	lab_veth_end "$4" "$_tmp_b" "$5" "$6" || return
	echo "lab: veth $1/$2 $3 <-> $4/$5 $6"
}

# lab_veth_end NS TMPNAME IF ADDR: move a fresh veth end into NS, name it
# IF, address and raise it.
lab_veth_end() {
	if [ "$1" != - ]; then
		ip link set "$2" netns "$1" || lab_die lab_veth "moving $2 to netns $1 failed" || return
	fi
	lab_ip "$1" link set "$2" name "$3" || lab_die lab_veth "renaming to $3 in $1 failed" || return
	case $4 in
	-) ;;
	*:*) lab_ip "$1" addr add "$4" dev "$3" nodad || lab_die lab_veth "adding $4 to $1/$3 failed" || return ;;
	*) lab_ip "$1" addr add "$4" dev "$3" || lab_die lab_veth "adding $4 to $1/$3 failed" || return ;;
	esac
	lab_ip "$1" link set "$3" up || lab_die lab_veth "$1/$3 up failed" || return
}

# lab_route NS DEST GW: ip route add DEST via GW in netns NS.
lab_route() {
	[ $# -eq 3 ] || lab_die lab_route "usage: lab_route NS DEST GW" || return
	lab_ip "$1" route add "$2" via "$3" || lab_die lab_route "ip route add $2 via $3 in $1 failed" || return
	echo "lab: route $1: $2 via $3"
}

# lab_forward NS: enable IPv4 and IPv6 forwarding in NS (a router).
lab_forward() {
	[ $# -eq 1 ] || lab_die lab_forward "usage: lab_forward NS" || return
	lab_in_netns "$1" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward && echo 1 >/proc/sys/net/ipv6/conf/all/forwarding' ||
		lab_die lab_forward "enabling forwarding in $1 failed" || return
	echo "lab: forwarding on in $1"
}

# lab_in_netns NS CMD...: run CMD in netns NS (mount ns unchanged).
lab_in_netns() {
	_ns=$1
	shift
	if [ "$_ns" = - ]; then
		"$@"
	else
		nsenter --net="/run/netns/$_ns" -- "$@"
	fi
}

# lab_nfsd NS NAME: start a kernel NFS server (v3, v4.0, v4.1, v4.2) in
# netns NS, exporting /srv/NAME (created in the VM, containing the file
# "whoami" with NAME) as /export with
# rw,no_root_squash,insecure,no_subtree_check,fsid=N. The daemons
# (rpcbind, rpc.statd, rpc.mountd, nfsdcld) and nfsd run in a private mount
# namespace with their own /run, /var/lib/nfs, rpc_pipefs and nfsd mounts.
# Returns once nfsd threads run and rpcbind knows nfs and mountd.
# Logs: /run/lab/log/nfsd-NAME.log.
lab_nfsd() {
	[ $# -eq 2 ] || lab_die lab_nfsd "usage: lab_nfsd NS NAME" || return
	_ns=$1
	_name=$2
	[ "$_ns" != - ] || lab_die lab_nfsd "nfsd needs a named netns, not the initial one" || return
	[ -e "/run/netns/$_ns" ] || lab_die lab_nfsd "no netns $_ns" || return
	mkdir -p "/srv/$_name" || lab_die lab_nfsd "mkdir /srv/$_name failed" || return
	echo "$_name" >"/srv/$_name/whoami"
	_fsid=$(($(cat "$LAB_STATE/fsid" 2>/dev/null || echo 0) + 1))
	echo "$_fsid" >"$LAB_STATE/fsid"
	ip -n "$_ns" link set lo up || lab_die lab_nfsd "lo up in $_ns failed" || return
	_log=$LAB_STATE/log/nfsd-$_name.log
	if ! nsenter --net="/run/netns/$_ns" -- unshare -m --propagation private -- \
		sh /usr/lib/nsmount-lab/nfsd.sh "$_name" "$_fsid" >"$_log" 2>&1; then
		tail -n 5 "$_log" >&2
		lab_die lab_nfsd "starting nfsd $_name in $_ns failed (log $_log)"
		return
	fi
	echo "lab: nfsd $_name in netns $_ns exports /export (/srv/$_name, fsid=$_fsid)"
}

# lab_nfsd_stop NS: stop the kernel NFS server that lab_nfsd started in
# netns NS: nfsd's threads go to 0 in that netns (rpc.nfsd 0 in the
# server's own mount namespace: its listening sockets close and its NFSv4
# state is dropped), then its daemons (rpc.mountd, nfsdcld, rpc.statd,
# rpcbind) are ended, which releases its private mount namespace. The
# exported directory stays. Returns once nothing listens on port 2049 in
# NS.
lab_nfsd_stop() {
	[ $# -eq 1 ] || lab_die lab_nfsd_stop "usage: lab_nfsd_stop NS" || return
	_mpid=$(lab_netns_pids "$1" rpc.mountd) || return
	[ -n "$_mpid" ] || lab_die lab_nfsd_stop "no rpc.mountd (lab_nfsd) in netns $1" || return
	_mpid=${_mpid%% *}
	nsenter -t "$_mpid" -n -m -- rpc.nfsd 0 || lab_die lab_nfsd_stop "rpc.nfsd 0 in netns $1 failed" || return
	lab_stop_mntns lab_nfsd_stop "$_mpid" || return
	lab_wait_port_closed lab_nfsd_stop "$1" 2049 || return
	echo "lab: nfsd in netns $1 stopped"
}

# lab_ganesha NS NAME: start NFS-Ganesha (the run must install it:
# testenv.WithGanesha, or nsmount-lab run --with ganesha) in netns NS,
# exporting /srv/NAME as /export through FSAL VFS, NFSv3 and NFSv4.0, 4.1
# and 4.2, rw, no root squash, sec=sys. Its Export_Id (part of every file
# handle) comes from the counter lab_nfsd's fsid uses, and stays the same
# when NAME is started again: a restart keeps the clients' file handles
# valid. /srv/NAME is created with the file "whoami"
# containing NAME unless it exists: an existing directory (e.g. one that
# lab_nfsd served, stopped with lab_nfsd_stop) is exported as it is. The
# daemon runs in a private mount namespace with its own /run (config, pid
# file, rpcbind's socket) and /var/lib/nfs, with rpcbind and rpc.statd for
# NFSv3, NFSV4 { Graceless = true; } (no grace period) and a 10 s lease.
# No D-Bus: ganesha.nfsd logs that it has no system bus and serves
# without. Returns once NFS (v3 and v4) answers over TCP and MOUNT lists
# the export. Log (ganesha's, at EVENT level, and the setup's):
# /run/lab/log/ganesha-NAME.log; $LAB_GANESHA_LOG, if set, goes into the
# config's LOG block, e.g. 'COMPONENTS { CLIENTID = FULL_DEBUG; }'.
lab_ganesha() {
	[ $# -eq 2 ] || lab_die lab_ganesha "usage: lab_ganesha NS NAME" || return
	_ns=$1
	_name=$2
	command -v ganesha.nfsd >/dev/null ||
		lab_die lab_ganesha "ganesha is not installed in this run (testenv.WithGanesha, nsmount-lab run --with ganesha)" || return
	[ "$_ns" != - ] || lab_die lab_ganesha "ganesha needs a named netns, not the initial one" || return
	[ -e "/run/netns/$_ns" ] || lab_die lab_ganesha "no netns $_ns" || return
	if [ ! -d "/srv/$_name" ]; then
		mkdir -p "/srv/$_name" || lab_die lab_ganesha "mkdir /srv/$_name failed" || return
		echo "$_name" >"/srv/$_name/whoami"
	fi
	if ! _fsid=$(cat "$LAB_STATE/ganesha-$_name.id" 2>/dev/null); then
		_fsid=$(($(cat "$LAB_STATE/fsid" 2>/dev/null || echo 0) + 1))
		echo "$_fsid" >"$LAB_STATE/fsid"
		echo "$_fsid" >"$LAB_STATE/ganesha-$_name.id"
	fi
	ip -n "$_ns" link set lo up || lab_die lab_ganesha "lo up in $_ns failed" || return
	_log=$LAB_STATE/log/ganesha-$_name.log
	if ! nsenter --net="/run/netns/$_ns" -- unshare -m --propagation private -- \
		sh /usr/lib/nsmount-lab/ganesha.sh "$_name" "/srv/$_name" "$_fsid" "${LAB_GANESHA_LOG:-}" >>"$_log" 2>&1; then
		tail -n 5 "$_log" >&2
		lab_die lab_ganesha "starting ganesha $_name in $_ns failed (log $_log)"
		return
	fi
	if grep -q '^RESTARTED: ' "$_log"; then
		grep '^RESTARTED: ' "$_log" | sed 's/^/lab: lab_ganesha: /' >&2
	fi
	echo "lab: ganesha $_name in netns $_ns exports /export (/srv/$_name, Export_Id=$_fsid)"
}

# lab_ganesha_stop NS: stop the NFS-Ganesha that lab_ganesha started in
# netns NS: SIGTERM (ganesha's orderly shutdown), SIGKILL if it still runs
# after 10 s, then its rpcbind and rpc.statd, which releases its private
# mount namespace. The exported directory stays. Returns once nothing
# listens on port 2049 in NS.
lab_ganesha_stop() {
	[ $# -eq 1 ] || lab_die lab_ganesha_stop "usage: lab_ganesha_stop NS" || return
	_gpid=$(lab_netns_pids "$1" ganesha.nfsd) || return
	[ -n "$_gpid" ] || lab_die lab_ganesha_stop "no ganesha.nfsd in netns $1" || return
	lab_stop_mntns lab_ganesha_stop "${_gpid%% *}" || return
	lab_wait_port_closed lab_ganesha_stop "$1" 2049 || return
	echo "lab: ganesha in netns $1 stopped"
}

# lab_netns_pids NS COMM...: print the PIDs (space-separated, may be none)
# of the processes in named netns NS whose command name is one of COMM.
lab_netns_pids() {
	[ $# -ge 2 ] || lab_die lab_netns_pids "usage: lab_netns_pids NS COMM..." || return
	[ -e "/run/netns/$1" ] || lab_die lab_netns_pids "no netns $1" || return
	_want="net:[$(stat -L -c %i "/run/netns/$1")]"
	shift
	_pids=
	for _p in /proc/[0-9]*; do
		[ "$(readlink "$_p/ns/net" 2>/dev/null)" = "$_want" ] || continue
		read -r _comm <"$_p/comm" 2>/dev/null || continue
		for _c in "$@"; do
			[ "$_comm" = "$_c" ] && _pids="$_pids ${_p#/proc/}"
		done
	done
	echo ${_pids# }
}

# lab_stop_mntns FUNC PID: end every process in PID's mount namespace
# (a server's private one): SIGTERM, SIGKILL after 10 s; wait until gone.
lab_stop_mntns() {
	_want=$(readlink "/proc/$2/ns/mnt") || lab_die "$1" "no process $2" || return
	[ "$_want" != "$(readlink /proc/$$/ns/mnt)" ] || lab_die "$1" "pid $2 runs in the VM's mount namespace, not a server's" || return
	_pids=
	for _p in /proc/[0-9]*; do
		[ "$(readlink "$_p/ns/mnt" 2>/dev/null)" = "$_want" ] && _pids="$_pids ${_p#/proc/}"
	done
	kill -TERM $_pids 2>/dev/null
	_i=0
	while :; do
		_left=
		for _p in $_pids; do
			[ -e "/proc/$_p" ] && ! grep -q '^State:.Z' "/proc/$_p/status" 2>/dev/null && _left="$_left $_p"
		done
		[ -n "$_left" ] || break
		_i=$((_i + 1))
		if [ $_i -eq 1000 ]; then
			echo "lab: $1: still running after 10s, killing:$_left" >&2
			kill -KILL $_left 2>/dev/null
		fi
		[ $_i -lt 2000 ] || lab_die "$1" "processes$_left did not end" || return
		sleep 0.01
	done
}

# lab_wait_port_closed FUNC NS PORT: wait (10 s at most) until nothing
# listens on TCP PORT in named netns NS.
lab_wait_port_closed() {
	_hex=$(printf ':%04X ' "$3")
	_i=0
	while nsenter --net="/run/netns/$2" -- cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
		awk -v p="$_hex" 'index($2 " ", p) && $4 == "0A" { f = 1 } END { exit !f }'; do
		_i=$((_i + 1))
		[ $_i -lt 1000 ] || lab_die "$1" "port $3 in netns $2 still listening after 10s" || return
		sleep 0.01
	done
}

# lab_dns NS ADDR [FLAGS...] NAME=IP...: start a DNS server in named netns
# NS on ADDR port 53 (UDP and TCP): `nsmount-lab dns --listen ADDR:53`,
# answering A/AAAA for the given names (repeat a name for several
# addresses; NAME=OTHER-NAME is a CNAME) and NXDOMAIN for the rest. FLAGS
# (--truncate, --tcp-only, --silent, more --listen) pass through. Runs in
# the background; returns once its sockets are open. Log:
# /run/lab/log/dns-NS-ADDR.log.
lab_dns() {
	[ $# -ge 3 ] || lab_die lab_dns "usage: lab_dns NS ADDR [FLAGS...] NAME=IP..." || return
	_ns=$1
	_addr=$2
	shift 2
	[ "$_ns" = - ] || [ -e "/run/netns/$_ns" ] || lab_die lab_dns "no netns $_ns" || return
	case $_addr in
	*:*) _listen="[$_addr]:53" ;;
	*) _listen="$_addr:53" ;;
	esac
	_log=$LAB_STATE/log/dns-$_ns-$_addr.log
	lab_in_netns "$_ns" nsmount-lab dns --listen "$_listen" "$@" >"$_log" 2>&1 &
	_pid=$!
	lab_wait_ready lab_dns "$_pid" "$_log" 'dns: ready' "dns server on $_listen in $_ns" || return
	echo "lab: dns $_listen in netns $_ns pid $_pid: $*"
}

# lab_wait_ready FUNC PID LOG PREFIX WHAT: wait (at most 10 s) until a line
# of LOG starts with PREFIX, failing (as FUNC, about WHAT, the log shown)
# if process PID exits first.
lab_wait_ready() {
	_i=0
	until grep -q "^$4" "$3" 2>/dev/null; do
		if ! kill -0 "$2" 2>/dev/null; then
			cat "$3" >&2
			lab_die "$1" "$5 exited (log $3)"
			return
		fi
		_i=$((_i + 1))
		[ $_i -lt 1000 ] || lab_die "$1" "$5 not ready after 10s" || return
		sleep 0.01
	done
}

# lab_proxy NS LISTEN TO: start a TCP proxy (nsmount-lab proxy) in netns NS
# that forwards connections made to LISTEN (ADDR:PORT) to TO; prints its PID.
# kill -USR1 PID freezes the connections it carries then (they stay open and
# forward nothing; later ones are forwarded): a fault injector in front of a
# real server.
lab_proxy() {
	[ $# -eq 3 ] || lab_die lab_proxy "usage: lab_proxy NS LISTEN TO" || return
	[ -e "/run/netns/$1" ] || lab_die lab_proxy "no netns $1" || return
	_log=$LAB_STATE/log/proxy-$1-$2.log
	# A simple command, not the lab_in_netns function: dash keeps a copy of
	# a function's redirected stdout open in the function's children, and
	# $(lab_proxy ...) would then wait for the proxy to exit.
	nsenter --net="/run/netns/$1" -- nsmount-lab proxy --listen "$2" --to "$3" >"$_log" 2>&1 </dev/null &
	_pid=$!
	lab_wait_ready lab_proxy "$_pid" "$_log" 'proxy: ready' "proxy on $2 in $1" || return
	echo "$_pid"
}

# lab_container NAME [NETNS]: start a container NAME: a long-lived process
# (sleep) with its own mount ns (private propagation), UTS ns (hostname
# NAME) and net ns (a new named netns NAME, or the existing named netns
# NETNS), pivot_root'ed into a tmpfs root (/ct/NAME in the VM) holding
# busybox with applet links, /etc/{hosts,resolv.conf,hostname}, /proc, /dev,
# /data and /tmp. Prints the container PID (see lab_pid).
lab_container() {
	[ $# -eq 1 ] || [ $# -eq 2 ] || lab_die lab_container "usage: lab_container NAME [NETNS]" || return
	_name=$1
	_ns=${2:-$1}
	[ ! -e "$LAB_STATE/ct/$_name.pid" ] || lab_die lab_container "container $_name exists" || return
	if [ $# -eq 1 ]; then
		lab_netns "$_name" >/dev/null || return
	fi
	[ -e "/run/netns/$_ns" ] || lab_die lab_container "no netns $_ns" || return
	_root=/ct/$_name
	mkdir -p "$_root" && mount -t tmpfs -o mode=0755 "ct-$_name" "$_root" ||
		lab_die lab_container "mounting tmpfs on $_root failed" || return
	mkdir -p "$_root/bin" "$_root/etc" "$_root/proc" "$_root/dev" "$_root/sys" "$_root/data" \
		"$_root/tmp" "$_root/root" "$_root/mnt" "$_root/.oldroot" && chmod 1777 "$_root/tmp" &&
		cp /usr/bin/busybox "$_root/bin/busybox" &&
		"$_root/bin/busybox" --install "$_root/bin" ||
		lab_die lab_container "populating $_root failed" || return
	ln -s bin "$_root/sbin"
	printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost\n' "$_name" >"$_root/etc/hosts"
	printf 'nameserver 192.0.2.53\nsearch lab.test\n' >"$_root/etc/resolv.conf"
	echo "$_name" >"$_root/etc/hostname"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$_root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$_root/etc/group"
	_log=$LAB_STATE/log/ct-$_name.log
	nsenter --net="/run/netns/$_ns" -- unshare -m -u --propagation private -- \
		sh /usr/lib/nsmount-lab/ct.sh "$_name" "$_root" >"$_log" 2>&1 &
	_pid=$!
	# The process execs into sleep once it is set up.
	_i=0
	while :; do
		if ! kill -0 "$_pid" 2>/dev/null; then
			cat "$_log" >&2
			lab_die lab_container "container $_name exited during setup (log $_log)"
			return
		fi
		read -r _comm <"/proc/$_pid/comm" 2>/dev/null
		[ "$_comm" = sleep ] && break
		_i=$((_i + 1))
		[ $_i -lt 1000 ] || lab_die lab_container "container $_name not ready after 10s" || return
		sleep 0.01
	done
	echo "$_pid" >"$LAB_STATE/ct/$_name.pid"
	echo "lab: container $_name pid $_pid netns $_ns root $_root"
}

# lab_light_container NAME [SETUP]: start a lightweight container NAME, for
# scenarios that need many: a sleep process in a new network namespace
# (anonymous: no /run/netns entry, so it ends with its processes), a new
# mount namespace (a private copy of the VM's: the same root and files, so
# a directory made in the VM, e.g. /data, is there too; mounts made inside
# stay inside) and a new UTS namespace. Nothing is copied: it costs one
# unshare. SETUP, if given, is a shell command run inside the new
# namespaces first, by dash with -e, as the container's PID ($$); e.g.
# `ip link add eth0 type veth peer name h1 netns srv`. The container fails
# if SETUP fails. lab_pid, lab_exec and lab_stop work with it. Prints the
# PID.
lab_light_container() {
	[ $# -eq 1 ] || [ $# -eq 2 ] || lab_die lab_light_container "usage: lab_light_container NAME [SETUP]" || return
	[ ! -e "$LAB_STATE/ct/$1.pid" ] || lab_die lab_light_container "container $1 exists" || return
	_log=$LAB_STATE/log/ct-$1.log
	_fifo=$LAB_STATE/ct/$1.ready
	mkfifo "$_fifo" || lab_die lab_light_container "mkfifo $_fifo failed" || return
	# The container reports on fd 3 once set up, then becomes sleep; this
	# shell waits on the FIFO (EOF: the container exited first).
	unshare -n -m -u --propagation private -- sh -ec "${2:-:}
echo ready >&3
exec 3>&- sleep 2147483647" </dev/null >"$_log" 2>&1 3>"$_fifo" &
	_pid=$!
	_ready=
	read -r _ready <"$_fifo"
	rm -f "$_fifo"
	if [ "$_ready" != ready ]; then
		cat "$_log" >&2
		lab_die lab_light_container "container $1 exited during setup (log $_log)"
		return
	fi
	echo "$_pid" >"$LAB_STATE/ct/$1.pid"
	echo "lab: light container $1 pid $_pid"
}

# lab_light_routed NAME NS ADDR PEER: a lab_light_container NAME whose
# eth0 is a veth to named netns NS, point to point: ADDR peer PEER in the
# container (PEER is an address NS already has, e.g. on its lo), and in NS
# the end hNAME, up, with a /32 route to ADDR. IPv4. Many containers can
# share one PEER this way, without a bridge.
lab_light_routed() {
	[ $# -eq 4 ] || lab_die lab_light_routed "usage: lab_light_routed NAME NS ADDR PEER" || return
	[ -e "/run/netns/$2" ] || lab_die lab_light_routed "no netns $2" || return
	lab_light_container "$1" "ip -b - <<EOF
link set lo up
link add eth0 type veth peer name h$1 netns $2
addr add $3 peer $4 dev eth0
link set eth0 up
EOF
ip -n $2 -b - <<EOF
link set h$1 up
route add $3/32 dev h$1
EOF"
}

# lab_stop NAME: end container NAME: kill its process, wait until it is
# gone (reaping it if this shell started it) and forget it. A
# lab_container's root tmpfs (/ct/NAME) is unmounted; a named netns stays
# (ip netns del it). Other processes in its namespaces are not touched.
lab_stop() {
	[ $# -eq 1 ] || lab_die lab_stop "usage: lab_stop NAME" || return
	_pid=$(lab_pid "$1") || return
	kill -KILL "$_pid" 2>/dev/null
	wait "$_pid" 2>/dev/null || :
	# Not this shell's child (e.g. lab_stop in a subshell): wait until it
	# is gone or a zombie (its namespaces are released at exit).
	_i=0
	while [ -e "/proc/$_pid" ] && ! grep -q '^State:.Z' "/proc/$_pid/status" 2>/dev/null; do
		_i=$((_i + 1))
		[ $_i -lt 1000 ] || lab_die lab_stop "container $1 (pid $_pid) still alive after 10s" || return
		sleep 0.01
	done
	rm -f "$LAB_STATE/ct/$1.pid"
	if grep -q " /ct/$1 " /proc/self/mountinfo; then
		umount "/ct/$1" && rmdir "/ct/$1" || lab_die lab_stop "unmounting /ct/$1 failed" || return
	fi
	echo "lab: stopped container $1 (pid $_pid)"
}

# lab_containerd [CONFIG]: start containerd (the run must install it, e.g.
# with testenv.ContainerdGuestFiles) with CONFIG (a file; default: a
# version 2 config with root /var/lib/containerd, state /run/containerd,
# socket /run/containerd/containerd.sock, CRI and unneeded snapshotters
# off) and wait until its socket exists (20s at most). Needs /sys/fs/cgroup
# (cgroup2, mounted by /init). Log: /run/lab/log/containerd.log. Prints the
# daemon's PID.
lab_containerd() {
	[ $# -le 1 ] || lab_die lab_containerd "usage: lab_containerd [CONFIG]" || return
	command -v containerd >/dev/null || lab_die lab_containerd "containerd is not installed in this run" || return
	_conf=${1:-}
	if [ -z "$_conf" ]; then
		_conf=/etc/containerd/config.toml
		mkdir -p /etc/containerd /var/lib/containerd
		cat >"$_conf" <<-'EOT'
		version = 2
		root = "/var/lib/containerd"
		state = "/run/containerd"
		disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
		  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
		  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
		  "io.containerd.snapshotter.v1.overlayfs",
		  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
		[grpc]
		  address = "/run/containerd/containerd.sock"
		EOT
	fi
	_log=$LAB_STATE/log/containerd.log
	containerd --config "$_conf" >"$_log" 2>&1 </dev/null &
	_pid=$!
	_i=0
	while [ ! -S /run/containerd/containerd.sock ]; do
		if ! kill -0 "$_pid" 2>/dev/null; then
			tail -n 10 "$_log" >&2
			lab_die lab_containerd "containerd exited (log $_log)"
			return
		fi
		_i=$((_i + 1))
		[ $_i -lt 2000 ] || lab_die lab_containerd "no socket after 20s (log $_log)" || return
		sleep 0.01
	done
	echo "$_pid" >"$LAB_STATE/containerd.pid"
	echo "lab: containerd pid $_pid"
}

# lab_pid NAME: print the PID of container NAME.
lab_pid() {
	[ $# -eq 1 ] || lab_die lab_pid "usage: lab_pid NAME" || return
	cat "$LAB_STATE/ct/$1.pid" 2>/dev/null || lab_die lab_pid "no container $1" || return
}

# lab_exec NAME CMD...: run CMD in container NAME: its net, mount and UTS
# namespaces, root and working directory (/). CMD comes from the
# container's root (busybox applets).
lab_exec() {
	[ $# -ge 2 ] || lab_die lab_exec "usage: lab_exec NAME CMD..." || return
	_pid=$(lab_pid "$1") || return
	shift
	nsenter -t "$_pid" -n -m -u -r -w -- "$@"
}

# lab_mount NAME [-t TYPE] [-o OPTIONS] SOURCE TARGET: mount SOURCE on
# TARGET (a path inside container NAME) from the container's net and mount
# namespaces, using the VM's util-linux mount, so the NFS connection is made
# from the container's netns. The container's root has no mount.nfs, and
# mount.nfs cannot work from outside the container's root, so the mount is
# done by the kernel alone (mount -i): for nfs/nfs4, "addr=SERVER" is added
# to the options unless given. Example:
#   lab_mount c1 -t nfs4 -o vers=4.2 198.51.100.1:/export /mnt
lab_mount() {
	[ $# -ge 3 ] || lab_die lab_mount "usage: lab_mount NAME [-t TYPE] [-o OPTIONS] SOURCE TARGET" || return
	_pid=$(lab_pid "$1") || return
	shift
	_type=
	_opts=
	while [ $# -gt 2 ]; do
		case $1 in
		-t) _type=$2; shift 2 ;;
		-o) _opts=${_opts:+$_opts,}$2; shift 2 ;;
		*) lab_die lab_mount "unknown option $1" || return ;;
		esac
	done
	[ $# -eq 2 ] || lab_die lab_mount "need SOURCE and TARGET" || return
	_src=$1
	_tgt=$2
	case $_type in
	nfs | nfs4)
		case ,$_opts, in
		*,addr=*) ;;
		*)
			_host=${_src%:/*}
			_host=${_host#[}
			_host=${_host%]}
			_opts=${_opts:+$_opts,}addr=$_host
			;;
		esac
		;;
	esac
	# nsenter --root=/ --wd=/ keeps the VM's root (opened before setns),
	# so the VM's mount binary runs; the target is reached through the
	# container's root, and mount(2) runs in the container's mount ns.
	nsenter -t "$_pid" -n -m --root=/ --wd=/ -- mount -i --no-canonicalize \
		${_type:+-t "$_type"} ${_opts:+-o "$_opts"} "$_src" "/proc/$_pid/root/${_tgt#/}" ||
		lab_die lab_mount "mounting $_src on $_tgt in container pid $_pid failed" || return
	echo "lab: mounted $_src on $_tgt in $_pid (${_type:-auto} ${_opts})"
}

# lab_umount NAME TARGET: unmount TARGET (a container path) in container NAME.
lab_umount() {
	[ $# -eq 2 ] || lab_die lab_umount "usage: lab_umount NAME TARGET" || return
	lab_exec "$1" umount "$2" || lab_die lab_umount "umount $2 in $1 failed" || return
	echo "lab: unmounted $2 in $1"
}

# lab_check NAME CMD...: run CMD; print "LAB-CHECK PASS NAME" when it
# succeeds, else "LAB-CHECK FAIL NAME: <last output lines>". Never fails.
lab_check() {
	_cname=$1
	shift
	if _out=$("$@" 2>&1); then
		echo "LAB-CHECK PASS $_cname"
	else
		echo "LAB-CHECK FAIL $_cname: exit $?: $(lab_oneline "$_out")"
	fi
	return 0
}

# lab_check_fails NAME CMD...: like lab_check, but passes when CMD fails.
lab_check_fails() {
	_cname=$1
	shift
	if _out=$("$@" 2>&1); then
		echo "LAB-CHECK FAIL $_cname: succeeded but should fail: $(lab_oneline "$_out")"
	else
		echo "LAB-CHECK PASS $_cname"
	fi
	return 0
}

# lab_check_output NAME EXPECTED CMD...: run CMD; passes when it succeeds
# and its stdout contains EXPECTED.
lab_check_output() {
	_cname=$1
	_want=$2
	shift 2
	_err=$(mktemp)
	if _out=$("$@" 2>"$_err"); then
		case $_out in
		*"$_want"*) echo "LAB-CHECK PASS $_cname" ;;
		*) echo "LAB-CHECK FAIL $_cname: output lacks \"$_want\": $(lab_oneline "$_out")" ;;
		esac
	else
		echo "LAB-CHECK FAIL $_cname: exit $?: $(lab_oneline "$_out $(cat "$_err")")"
	fi
	rm -f "$_err"
	return 0
}

# lab_oneline TEXT: the last 3 lines of TEXT on one line.
lab_oneline() {
	printf '%s\n' "$1" | tail -n 3 | tr '\n' ' ' | sed 's/ *$//'
}

# lab_nfs_stuck PID...: what holds the NFS mounts of processes PID...: each
# one's netns NFS clients and volumes, its NFS mounts' transports
# (mountstats), the kernel's NFS messages, and the stacks of the tasks
# waiting in the kernel (uninterruptible sleep).
lab_nfs_stuck() {
	for _p in "$@"; do
		echo "pid $_p (netns $(readlink /proc/$_p/ns/net)):"
		cat /proc/$_p/net/nfsfs/servers /proc/$_p/net/nfsfs/volumes 2>&1
		grep -E '^device .* nfs|xprt:' /proc/$_p/mountstats 2>&1
	done
	dmesg | grep -iE 'nfs|rpc|lockd' | tail -n 30
	for _s in /proc/[0-9]*/stat; do
		_d=${_s%/stat}
		[ "$(awk '{print $3}' $_s 2>/dev/null)" = D ] || continue
		echo "D task ${_d#/proc/} $(cat $_d/comm 2>/dev/null):"
		head -n 12 $_d/stack 2>/dev/null | sed 's/^/    /'
	done | head -n 80
}
