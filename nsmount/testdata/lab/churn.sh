# Churn: one kernel NFS server; LONG long-lived containers that nsmount
# mounts into (NFSv4.2, every fifth NFSv3) and that write and read through
# their mounts; then CYCLES cycles of create container -> nsmount mount ->
# write/read -> nsmount umount -> destroy container, and KILLED cycles whose
# container is destroyed with its mount still there. Everything that could
# leak is counted before and after (network namespaces, NFS superblocks and
# clients in every netns, the server's NFSv4 clients, mounts, registry
# entries, nsmount processes) and must come back to its baseline. nsmount
# status is timed with the LONG tracked mounts.
#
# Topology: the server netns srv has 198.51.100.1/32 on lo and one veth per
# container, with a /32 route to the container's address; the container
# has ADDR peer 198.51.100.1 on its eth0. Long-lived containers use
# 203.0.113.10+, churn containers 192.0.2.10+. Containers are
# lab_light_container: their own net, mount and UTS namespaces and a
# process, sharing the VM's root, so that 270 of them fit in the run.
set -u
LONG=${LONG:-60}
CYCLES=${CYCLES:-200}
KILLED=${KILLED:-10}
S=198.51.100.1

mem() { awk '/^Mem(Total|Available)/ { printf "%s %d MiB ", $1, $2 / 1024 }' /proc/meminfo; }
now() { read -r _up _ </proc/uptime && echo "$_up"; }
since() { awk "BEGIN { printf \"%.1f\", $(now) - $1 }"; }
lab_log "memory: $(mem)"
mkdir -p /data

# --- counters ------------------------------------------------------------

# SRVPID: a process in the server's mount namespace (its nfsd mount).
SRVPID=

# counts: one line "key=value ..." of everything that must come back to its
# baseline:
#   netns          network namespaces with a process
#   netns_slab     struct net objects after a slab shrink: also those no
#                  process holds any more (approximate, see slab_near)
#   srv_veths      the server's ends of container veths (a container
#                  netns that is not dismantled keeps its veth)
#   nfs_volumes    NFS superblocks, summed over every netns with a process
#   nfs_clients    NFS clients (nfs_client), likewise
#   nfs_mounts     NFS mounts, summed over every mount namespace
#   vm_mounts      mounts in the VM's own mount namespace
#   registry       entries in nsmount's registry
#   nsmount_procs  nsmount and nsmount-helper processes
#   nfsd_clients   NFSv4 clients the server knows (/proc/fs/nfsd/clients)
counts() {
	# One PID per network and per mount namespace.
	_ns=$(ls -l /proc/[0-9]*/ns/net /proc/[0-9]*/ns/mnt 2>/dev/null |
		awk '{ split($(NF-2), p, "/"); if (!seen[$NF]++) print p[5], p[3] }')
	_net=$(echo "$_ns" | awk '$1 == "net" { printf " /proc/%s/net/nfsfs/volumes /proc/%s/net/nfsfs/servers", $2, $2 }')
	_mnt=$(echo "$_ns" | awk '$1 == "mnt" { printf " /proc/%s/mountinfo", $2 }')
	echo 1 >/sys/kernel/slab/net_namespace/shrink
	printf 'netns=%s ' "$(echo "$_ns" | grep -c '^net')"
	printf 'netns_slab=%s ' "$(awk '$1 == "net_namespace" { print $2 }' /proc/slabinfo)"
	printf 'srv_veths=%s ' "$(ip -n srv -o link show type veth | grep -c .)"
	grep -H '^v[34]' $_net 2>/dev/null |
		awk -F: '$1 ~ /volumes$/ { v++ } $1 ~ /servers$/ { s++ } END { printf "nfs_volumes=%d nfs_clients=%d ", v, s }'
	printf 'nfs_mounts=%s ' "$(cat $_mnt 2>/dev/null | grep -cE ' - nfs4? ')"
	printf 'vm_mounts=%s ' "$(grep -c . /proc/self/mountinfo)"
	printf 'registry=%s ' "$(registry_entries)"
	printf 'nsmount_procs=%s ' "$(ps -o args | grep -cE '^(/usr/bin/)?nsmount( |-helper|$)')"
	printf 'nfsd_clients=%s ' "$(nsenter -t "$SRVPID" -m ls /proc/fs/nfsd/clients | grep -c .)"
	printf 'mem_avail_mib=%s\n' "$(awk '/^MemAvailable/ { print int($2 / 1024) }' /proc/meminfo)"
}

# get KEY COUNTS: the value of KEY in a counts line.
get() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

# expect PREFIX REF KEY...: poll counts (up to 15 s: netns teardown and
# NFSv4 client destruction are asynchronous) until every KEY has its value
# in the counts line REF (or, for KEY=VALUE, that value); then print one
# LAB-CHECK PREFIX-KEY per key. Sets COUNTS to the last counts line.
expect() {
	_pre=$1 _ref=$2
	shift 2
	_n=0
	while :; do
		COUNTS=$(counts)
		_bad=
		for _k in "$@"; do
			_want=$(want "$_k" "$_ref")
			[ "$(get "${_k%%=*}" "$COUNTS")" = "$_want" ] || _bad=1
		done
		[ -n "$_bad" ] && [ $_n -lt 30 ] || break
		_n=$((_n + 1))
		sleep 0.5
	done
	for _k in "$@"; do
		_want=$(want "$_k" "$_ref")
		_v=$(get "${_k%%=*}" "$COUNTS")
		if [ "$_v" = "$_want" ]; then
			echo "LAB-CHECK PASS $_pre-${_k%%=*}"
		else
			echo "LAB-CHECK FAIL $_pre-${_k%%=*}: ${_k%%=*}=$_v, want $_want ($COUNTS)"
		fi
	done
}
want() {
	case $1 in
	*=*) echo "${1#*=}" ;;
	*) get "$1" "$2" ;;
	esac
}

# The counts that must come back to their baseline.
LEAKY="netns srv_veths nfs_volumes nfs_clients nfs_mounts vm_mounts registry nsmount_procs nfsd_clients"

# fail MSG: record a failed step; failures NAME: a LAB-CHECK that passes
# when no step failed since the last call, else names the first failures.
FAILS=$LAB_STATE/churn-fails
: >"$FAILS"
fail() { echo "$*" >>"$FAILS"; }
failures() {
	if [ -s "$FAILS" ]; then
		echo "LAB-CHECK FAIL $1: $(grep -c . "$FAILS") failed steps: $(head -n 3 "$FAILS" | tr '\n' ' ')"
	else
		echo "LAB-CHECK PASS $1"
	fi
	: >"$FAILS"
}

# --- server and containers -----------------------------------------------

lab_netns srv
ip -n srv addr add $S/32 dev lo
lab_nfsd srv srv
SRVPID=$(pidof rpc.mountd) || { echo "churn: no rpc.mountd" >&2; exit 1; }
lab_log "server mount namespace through rpc.mountd pid $SRVPID"

# ct_up NAME ADDR: container NAME, eth0 ADDR peer $S, linked to srv; sets
# PID.
ct_up() {
	lab_light_routed "$1" srv "$2" $S >/dev/null || return
	PID=$(lab_pid "$1")
}

# ct_mount NAME VERS: nsmount mount $S:/export on /data in NAME.
ct_mount() {
	case $2 in
	3) _o=vers=3,nolock ;;
	*) _o=vers=$2 ;;
	esac
	nsmount mount --pid "$PID" -o "$_o" $S:/export /data >/dev/null
}

# ct_io NAME: the container writes /data/NAME and reads it back.
ct_io() {
	nsenter -t "$PID" -n -m -u sh -c "echo $1 >/data/$1 && read -r l </data/$1 && [ \"\$l\" = $1 ] || { echo \"read back '\$l'\"; exit 1; }"
}

# vers_of I EVERY: 3 for every EVERY-th I, else 4.2.
vers_of() { if [ $(($1 % $2)) -eq $(($2 - 1)) ]; then echo 3; else echo 4.2; fi; }

# slab_near NAME REF: a LAB-CHECK that netns_slab is at most REF's + 7,
# polling counts (sets COUNTS) for up to 30 s. A struct net outlives its
# last process: cleanup_net frees it later from a workqueue, in batches,
# after RCU grace periods (10 of 60 just-stopped containers were still
# there at the first look once, under TCG). After a shrink SLUB also still
# counts a few freed objects (1-4 seen, stable for minutes, also with
# containers that never had a network), so this catches namespaces that
# pile up, not one.
slab_near() {
	_r=$(get netns_slab "$2")
	_t=$(now)
	_n=0
	while :; do
		_s=$(get netns_slab "$COUNTS")
		[ "$_s" -gt $((_r + 7)) ] && [ $_n -lt 60 ] || break
		_n=$((_n + 1))
		sleep 0.5
		COUNTS=$(counts)
	done
	if [ "$_s" -le $((_r + 7)) ]; then
		echo "LAB-CHECK PASS $1"
	else
		echo "LAB-CHECK FAIL $1: netns_slab=$_s after $(since "$_t") s, want at most $((_r + 7)) ($COUNTS)"
	fi
	[ $_n -eq 0 ] || lab_log "$1: struct net back near baseline after $(since "$_t") s"
}

BASE=$(counts)
lab_log "counts baseline: $BASE"

# --- LONG long-lived containers ---------------------------------------------
T=$(now)
V3=0
i=0
while [ $i -lt "$LONG" ]; do
	v=$(vers_of $i 5)
	[ "$v" != 3 ] || V3=$((V3 + 1))
	if ct_up c$i 203.0.113.$((10 + i)); then
		if out=$(ct_mount c$i "$v" 2>&1); then
			out=$(ct_io c$i 2>&1) || fail "c$i: write/read: $out"
		else
			fail "c$i: mount v$v: $out"
		fi
	else
		fail "c$i: create"
	fi
	i=$((i + 1))
done
V4=$((LONG - V3))
lab_log "$LONG containers created, mounted ($V4 v4.2, $V3 v3), written and read in $(since "$T") s"
failures long-mount-write-read
lab_check_output long-files-on-server "$LONG" sh -c 'ls /srv/srv | grep -c "^c[0-9]"'
expect long "$BASE" netns=$(($(get netns "$BASE") + LONG)) srv_veths=$LONG \
	registry=$LONG nfs_mounts=$LONG nfs_volumes=$LONG nfs_clients=$LONG nfsd_clients=$V4 \
	vm_mounts nsmount_procs
MID=$COUNTS
lab_log "counts with $LONG mounted: $MID"

# --- nsmount status with LONG tracked mounts --------------------------------
nsmount-lab time -n 3 --name "status --no-probe, $LONG mounts" -- nsmount status --no-probe
T=$(now)
ST=$(nsmount status)
lab_log "status (probes), $LONG mounts: $(since "$T") s"
# status_ok: every tracked mount's verdict in ST is ok.
status_ok() {
	_n=$(echo "$ST" | grep -c ' ok$')
	[ "$_n" = "$LONG" ] || { echo "$_n of $LONG mounts ok: $(echo "$ST" | grep -v ' ok$' | head -n 3)"; return 1; }
}
lab_check status-all-ok status_ok
nsmount-lab time -n 2 --name "status (probes), $LONG mounts" -- nsmount status

# --- churn -----------------------------------------------------------------
# cycle N ADDR VERS [killed]: one container's life.
cycle() {
	ct_up "$1" "$2" || { fail "$1: create"; return; }
	if out=$(ct_mount "$1" "$3" 2>&1); then
		out=$(ct_io "$1" 2>&1) || fail "$1: write/read: $out"
		if [ $# -eq 3 ]; then
			out=$(nsmount umount --pid "$PID" /data 2>&1) || fail "$1: umount: $out"
		fi
	else
		fail "$1: mount v$3: $out"
	fi
	lab_stop "$1" >/dev/null || fail "$1: stop"
}
T=$(now)
k=0
while [ $k -lt "$CYCLES" ]; do
	cycle k$k 192.0.2.$((10 + k % 200)) "$(vers_of $k 10)"
	k=$((k + 1))
	[ $((k % 50)) -ne 0 ] || lab_log "churn: $k cycles in $(since "$T") s"
done
failures churn-cycles
lab_check_output churn-files-on-server "$CYCLES" sh -c 'ls /srv/srv | grep -c "^k[0-9]"'
# Containers destroyed with their mount: the kernel drops the mount and its
# superblock with the mount namespace; nsmount forgets the entry at its
# next look (the last cycle is a normal one, with nsmount umount).
T=$(now)
k=0
while [ $k -lt "$KILLED" ]; do
	cycle x$k 192.0.2.$((220 + k)) "$(vers_of $k 5)" killed
	k=$((k + 1))
done
cycle k$CYCLES 192.0.2.250 4.2
lab_log "$KILLED containers destroyed with their mounts in $(since "$T") s"
failures killed-cycles

# --- a successor in the same namespace inode ------------------------------
# The kernel reuses mount namespace inodes, mount IDs and NFS superblock
# device numbers: a container created right after one died with its
# nsmount mount (no nsmount command in between), mounting the same way,
# gets all three back. A mount that this registry did not make (here:
# another nsmount with its own --state-dir) must not keep the dead
# container's entry alive: it would be taken for this registry's, with the
# old container's server, route and identity. (A busybox mount(2) lands on
# another mount ID: the same procedure is what reproduces the reuse.)
# mount_key PID PATH: "<mntns inode>:<mount ID> <dev>" of the mount at PATH.
mount_key() {
	_ino=$(readlink "/proc/$1/ns/mnt" | tr -dc 0-9)
	awk -v p="$2" -v i="$_ino" '$5 == p { k = i ":" $1 " " $3 } END { print k }' "/proc/$1/mountinfo"
}
OTHER="--state-dir $LAB_STATE/other-registry"
ct_up y0 192.0.2.240 && ct_mount y0 4.2 || fail "y0: create, mount"
OLD=$(mount_key "$PID" /data)
lab_stop y0 >/dev/null || fail "y0: stop"
ct_up y1 192.0.2.241 || fail "y1: create"
# Mount IDs are freed an RCU grace period after their namespace: retry a
# few times until the old one is free.
n=0
while :; do
	nsmount $OTHER mount --pid "$PID" -o vers=4.2 $S:/export /data >/dev/null || { fail "y1: other mount"; break; }
	NEW=$(mount_key "$PID" /data)
	[ "$NEW" != "$OLD" ] && [ $n -lt 10 ] || break
	n=$((n + 1))
	nsmount $OTHER umount --pid "$PID" /data >/dev/null || { fail "y1: other umount"; break; }
	sleep 0.3
done
lab_log "successor: y0's nsmount mount was $OLD, y1's is $NEW ($n retries)"
failures successor-setup
lab_check_output successor-reuses-inode-mount-id-dev "$OLD" echo "$NEW"
nsmount status --no-probe >/dev/null
lab_check_fails successor-does-not-revive-entry registry_has "\"id\": *\"${OLD%% *}\""
nsmount $OTHER umount --pid "$PID" /data >/dev/null || fail "y1: other umount"
lab_stop y1 >/dev/null || fail "y1: stop"
failures successor-teardown
expect after-churn "$MID" $LEAKY
slab_near after-churn-netns_slab "$MID"
lab_log "counts after churn: $COUNTS"
nsmount-lab time -n 3 --name "status --no-probe, $LONG mounts, after churn" -- nsmount status --no-probe

# --- the long-lived ones still work; then everything goes -------------------
i=0
while [ $i -lt "$LONG" ]; do
	PID=$(lab_pid c$i)
	out=$(ct_io c$i 2>&1) || fail "c$i: write/read after churn: $out"
	i=$((i + 1))
done
failures long-write-read-after-churn
T=$(now)
i=0
while [ $i -lt "$LONG" ]; do
	out=$(nsmount umount --pid "$(lab_pid c$i)" /data 2>&1) || fail "c$i: umount: $out"
	i=$((i + 1))
done
lab_log "$LONG unmounts in $(since "$T") s"
failures long-umount
expect unmounted "$BASE" registry=0 nfs_mounts=0 nfs_volumes=0 nfs_clients=0 nfsd_clients=0
# no_leaks in one v4.2 and one v3 container (the counts cover all).
lab_check no-leaks-c0-v42 no_leaks "$(lab_pid c0)"
lab_check no-leaks-c4-v3 no_leaks "$(lab_pid c4)"
i=0
while [ $i -lt "$LONG" ]; do
	lab_stop c$i >/dev/null || fail "c$i: stop"
	i=$((i + 1))
done
failures long-stop
expect final "$BASE" $LEAKY
slab_near final-netns_slab "$BASE"
lab_log "counts final: $COUNTS"
lab_log "memory: $(mem)"
