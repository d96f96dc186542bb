# Shared by the nsmount e2e lab scenarios (sourced after the lab helpers).

# check_exit NAME CODE CMD...: CMD must exit with CODE; its stderr must be one line.
check_exit() {
	_name=$1 _want=$2
	shift 2
	_out=$("$@" 2>&1 >/dev/null)
	_rc=$?
	_lines=$(printf '%s\n' "$_out" | grep -c .)
	if [ "$_rc" = "$_want" ] && [ "$_lines" -le 1 ]; then
		echo "LAB-CHECK PASS $_name"
		echo "  ($_name: exit $_rc: $_out)"
	else
		echo "LAB-CHECK FAIL $_name: exit $_rc (want $_want), $_lines error line(s): $(printf '%s' "$_out" | tr '\n' ' ' | tail -c 400)"
	fi
}

# nfs_mounts FILE: number of NFS mounts in a mountinfo file.
nfs_mounts() { grep -cE ' - nfs4? ' "$1" || true; }

# nfs_clients PID: number of NFS clients (nfs_client structs) in PID's netns.
nfs_clients() { tail -n +2 "/proc/$1/net/nfsfs/servers" | grep -c . || true; }

# no_leaks PID: the container has no NFS mount and no NFS client, no helper
# process is left, and the VM's own mount table has no NFS mount.
no_leaks() {
	[ "$(nfs_mounts /proc/$1/mountinfo)" = 0 ] || { echo "container still has NFS mounts"; return 1; }
	[ "$(nfs_clients $1)" = 0 ] || { echo "container netns still has NFS clients:"; cat /proc/$1/net/nfsfs/servers; return 1; }
	[ "$(nfs_mounts /proc/self/mountinfo)" = 0 ] || { echo "the VM's mount table has an NFS mount"; return 1; }
	! ps -o pid,args | grep -q '[n]smount-helper' || { echo "helper process left"; return 1; }
}

# one_server_one_container [SERVER]: server srv1 (198.51.100.1, exporting
# /srv/srv1; SERVER is the helper that starts it: lab_nfsd, the default, or
# lab_ganesha) and container c1 (198.51.100.2) on one veth, nothing else;
# sets PID (the container's) and S (the server's address). The VM's own
# netns has no route to the server.
one_server_one_container() {
	lab_netns srv1
	lab_container c1
	lab_veth srv1 eth0 198.51.100.1/24 c1 eth0 198.51.100.2/24
	${1:-lab_nfsd} srv1 srv1
	PID=$(lab_pid c1)
	S=198.51.100.1
}

# check_says NAME TEXT CMD...: CMD's stdout+stderr must contain TEXT,
# whatever its exit status (for refusals and reports).
check_says() {
	_name=$1 _want=$2
	shift 2
	_out=$("$@" 2>&1)
	case $_out in
	*"$_want"*) echo "LAB-CHECK PASS $_name" ;;
	*) echo "LAB-CHECK FAIL $_name: output lacks \"$_want\": $(printf '%s' "$_out" | tr '\n' ' ' | tail -c 600)" ;;
	esac
}

# two_servers_one_address [SERVER]: container c1 reaches srvA
# (203.0.113.10, on eth0) and srvB (also 203.0.113.10, behind 198.51.100.1
# on eth1) once a /32 route via eth1 says so; sets C1 and X (the shared
# address). SERVER starts both servers: lab_nfsd (default) or lab_ganesha.
two_servers_one_address() {
	lab_netns srvA
	lab_netns srvB
	lab_container c1
	lab_veth srvA eth0 203.0.113.10/24 c1 eth0 203.0.113.2/24
	lab_veth srvB eth0 198.51.100.1/24 c1 eth1 198.51.100.2/24
	ip -n srvB addr add 203.0.113.10/32 dev eth0
	${1:-lab_nfsd} srvA srvA
	${1:-lab_nfsd} srvB srvB
	C1=$(lab_pid c1)
	X=203.0.113.10
}

# wait_for SECONDS CMD...: run CMD (a command or a function: it is run anew
# each time, so arguments like "$(count)" must live inside a function)
# every 0.1s until it succeeds, for at most SECONDS.
wait_for() {
	_n=$(($1 * 10))
	shift
	while ! "$@" >/dev/null 2>&1; do
		_n=$((_n - 1))
		[ $_n -gt 0 ] || return 1
		sleep 0.1
	done
}

# registry_entries: number of entries in nsmount's registry.
registry_entries() { ls /run/nsmount/entries/ 2>/dev/null | grep -c '\.json$'; }

# registry_text: every entry of nsmount's registry (JSON, one file each).
registry_text() { cat /run/nsmount/entries/*.json 2>/dev/null; }

# registry_has ERE: some entry of the registry matches ERE.
registry_has() { registry_text | grep -Eq "$1"; }

# registry_is N: nsmount's registry has N entries.
registry_is() { test "$(registry_entries)" = "$1"; }

# all_nfs_mounts: NFS mounts in every mount namespace of the VM.
all_nfs_mounts() {
	for _p in /proc/[0-9]*; do
		_ns=$(readlink "$_p/ns/mnt" 2>/dev/null) && echo "$_ns $_p"
	done | sort -u -k1,1 | while read -r _ns _p; do
		nfs_mounts "$_p/mountinfo"
	done | awk '{ n += $1 } END { print n + 0 }'
}

# server_clients N: the NFS server whose mount namespace $SRVPID is in
# (e.g. its rpc.mountd) knows N NFSv4 clients.
server_clients() { test "$(nsenter -t "$SRVPID" -m ls /proc/fs/nfsd/clients | grep -c .)" = "$1"; }

# nfsd_on_bridge BRIDGE ADDR: an NFS server srv1 (exporting /srv/srv1) at
# ADDR/24 in netns srv1, hung on a new bridge BRIDGE (the one CNI's bridge
# plugin then uses). The VM itself has no address there, so only the
# containers' netns reach the server. Sets SRVPID (see server_clients).
nfsd_on_bridge() {
	ip link add "$1" type bridge && ip link set "$1" up || return
	lab_netns srv1 >/dev/null || return
	ip link add srv1h type veth peer name eth0 netns srv1 &&
		ip link set srv1h master "$1" up &&
		ip -n srv1 addr add "$2/24" dev eth0 &&
		ip -n srv1 link set eth0 up || return
	lab_nfsd srv1 srv1 >/dev/null || return
	SRVPID=$(pidof rpc.mountd)
}

# cri_node [CHAINED]: the node of the CRI scenarios, as files: containerd
# 2.x's config (CRI with runc and the native snapshotter, the pause image
# pinned, NRI on /run/nri/nri.sock) and the CNI network labnet that CRI
# gives each pod (bridge labbr0 on 198.51.100.0/24, addresses .100 to
# .200), CHAINED (a plugin's JSON) after the bridge. Then
# `lab_containerd /etc/containerd/config.toml` starts containerd.
cri_node() {
	mkdir -p /etc/containerd /var/lib/containerd /etc/cni/net.d /etc/nsmount /run/lab/cri /run/nri
	cat >/etc/containerd/config.toml <<'EOF'
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.snapshotter.v1.zfs", "io.containerd.differ.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
  "io.containerd.image-verifier.v1.bindir"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "nsmount.test/pause:latest"
[plugins."io.containerd.cri.v1.runtime"]
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    snapshotter = "native"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "/usr/bin/runc"
      Root = "/run/lab/cri/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "/etc/cni/net.d"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = "/run/nri/nri.sock"
  plugin_path = "/run/lab/nri/plugins"
  plugin_config_path = "/run/lab/nri/conf.d"
EOF
	cat >/etc/cni/net.d/10-labnet.conflist <<EOF
{"cniVersion": "1.0.0", "name": "labnet", "plugins": [
  {"type": "bridge", "bridge": "labbr0", "isGateway": false,
   "ipam": {"type": "host-local", "dataDir": "/run/lab/ipam",
            "ranges": [[{"subnet": "198.51.100.0/24", "rangeStart": "198.51.100.100", "rangeEnd": "198.51.100.200"}]]}}${1:+,
  $1}
]}
EOF
}

# cri_create ARGS...: CreateContainer (nsmount-lab cri create ARGS) as
# kubelet does, retried for up to 10 s while the plugin holds the container
# back (the pod's mounts not made yet); prints the container's ID.
cri_create() {
	_try=0
	while [ $_try -lt 10 ]; do
		_try=$((_try + 1))
		if _id=$(nsmount-lab cri create "$@" 2>/tmp/create.err); then
			[ $_try = 1 ] || lab_log "CreateContainer: held back $((_try - 1)) time(s): $(cat /tmp/create.err)" >&2
			echo "$_id"
			return 0
		fi
		sleep 1
	done
	cat /tmp/create.err >&2
	return 1
}

# three_level_net: the three-level routing case's network. The VM's own
# netns is the "laptop", kvm a container behind it, c1 a container behind
# kvm; each reaches a server netns of its own at 203.0.113.10 (srvL, srvK,
# srvC, their NFS servers left to the caller), and kvm has 192.0.2.53 for
# a DNS server. Sets LAPTOP, KVM, C1 and X (the shared address).
#
#   laptop (the VM's netns) --- srvL 203.0.113.10
#     | 198.51.100.1/.2
#   kvm (container) ----------- srvK 203.0.113.10, 192.0.2.53 for DNS
#     | 192.0.2.1/.10
#   c1 (container) ------------ srvC 203.0.113.10
three_level_net() {
	lab_netns srvL
	lab_netns srvK
	lab_netns srvC
	lab_container kvm
	lab_container c1
	lab_veth srvL eth0 203.0.113.10/24 - lab0 203.0.113.1/24
	lab_veth - lab1 198.51.100.1/24 kvm eth0 198.51.100.2/24
	lab_veth srvK eth0 203.0.113.10/24 kvm eth1 203.0.113.1/24
	lab_veth kvm eth2 192.0.2.1/24 c1 eth0 192.0.2.10/24
	lab_veth srvC eth0 203.0.113.10/24 c1 eth1 203.0.113.2/24
	ip -n kvm addr add 192.0.2.53/24 dev eth2
	lab_route c1 default 192.0.2.1
	LAPTOP=$$
	KVM=$(lab_pid kvm)
	C1=$(lab_pid c1)
	X=203.0.113.10
}

# mount_read NAME PID SERVER EXPECTED OPTS: mount SERVER:/export at /m/NAME in
# PID's namespaces, check the server's name through the mount, unmount.
mount_read() {
	_n=$1 _pid=$2 _srv=$3 _want=$4 _opts=$5
	lab_check mount-$_n nsmount mount --pid $_pid --mkdir -o $_opts $_srv:/export /m/$_n
	lab_check_output read-$_n $_want cat /proc/$_pid/root/m/$_n/whoami
	lab_check umount-$_n nsmount umount --pid $_pid /m/$_n
}

# three_levels X: the three-level routing case. The VM ($LAPTOP), kvm ($KVM)
# and c1 ($C1) each reach a server of their own at address X (srvL, srvK,
# srvC); NFSv4.2 and v3, one mount after another in an order that would
# reuse a client if any were shared, then all three at once: three clients
# for one address, one per netns.
three_levels() {
	for _v in 4.2 3; do
		_o=vers=$_v
		[ $_v = 3 ] && _o=vers=3,nolock
		mount_read laptop-first-v$_v $LAPTOP $1 srvL $_o
		mount_read kvm-second-v$_v $KVM $1 srvK $_o
		mount_read c1-third-v$_v $C1 $1 srvC $_o
		mount_read c1-first-v$_v $C1 $1 srvC $_o
		mount_read kvm-then-v$_v $KVM $1 srvK $_o
		mount_read laptop-last-v$_v $LAPTOP $1 srvL $_o
		for _who in laptop:$LAPTOP kvm:$KVM c1:$C1; do
			lab_check mount-all-${_who%%:*}-v$_v nsmount mount --pid ${_who#*:} --mkdir -o $_o $1:/export /all
		done
		lab_check_output all-laptop-v$_v srvL cat /proc/$LAPTOP/root/all/whoami
		lab_check_output all-kvm-v$_v srvK cat /proc/$KVM/root/all/whoami
		lab_check_output all-c1-v$_v srvC cat /proc/$C1/root/all/whoami
		for _p in $LAPTOP $KVM $C1; do nsmount umount --pid $_p /all >/dev/null; done
	done
}
