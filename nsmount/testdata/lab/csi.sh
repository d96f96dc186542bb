# The CSI node plugin nfs.nsmount.io in kubelet's order, with containerd 2.x
# (CRI, NRI) in the guest and `nsmount csi` registered with it over NRI:
# NodePublishVolume before the pod's sandbox exists (recorded, nothing
# mounted), RunPodSandbox (the mount is made then, from the pod's netns onto
# kubelet's target path in the VM's mount namespace), CreateContainer with
# the target path as a bind mount (the container's own process reads and
# writes the NFS file). Also: refusals, stats and health (a hung server
# costs the stats timeout), a volume published while the sandbox runs, a
# restart of the plugin without NRI (records survive, the sandbox is found
# by its cgroup), a sandbox stopped while the plugin is away and a new one
# for the pod (the stranded mounts redone from the new netns), and the
# teardown (StopPodSandbox unmounts before the network goes,
# NodeUnpublishVolume, RemovePodSandbox) leaving no mount, NFS client,
# record, registry entry or process.
set -u

CRI="nsmount-lab cri"
SOCK=/run/lab/csi/csi.sock
CSI="nsmount-lab csi --endpoint unix://$SOCK"
S=198.51.100.10
POLICY=/etc/nsmount/policy.json
CSILOG=/run/lab/log/csi.log
LOGS=/run/lab/cri/logs
PODUID=5b1d3f0e-6a7c-4d2b-9e8f-1a2b3c4d5e6f
CGROUP=/kubepods/besteffort/pod$PODUID
VOLS=/var/lib/kubelet/pods/$PODUID/volumes/kubernetes.io~csi
T1=$VOLS/data/mount
T2=$VOLS/late/mount
T3=$VOLS/third/mount

# --- the node: containerd 2.x (CRI, NRI), CNI, an NFS server ----------------

ip link set lo up
[ -e /etc/resolv.conf ] || echo "# lab: no DNS" >/etc/resolv.conf
cri_node
mkdir -p /run/lab/csi
cat >$POLICY <<EOF
{"version": 1, "allow": [
  {"name": "lab-csi", "servers": ["$S"], "networks": ["198.51.100.0/24"], "exports": ["/export"],
   "options": ["vers"], "csi": {"namespaces": ["lab"], "ephemeral": true}},
  {"name": "lab-csi-by-name", "servers": ["nfs"], "networks": ["198.51.100.0/24"], "exports": ["/export"],
   "options": ["vers"], "csi": {"namespaces": ["lab"]}}
]}
EOF
T0=$(cut -d' ' -f1 /proc/uptime)
# Should the scenario hang, the logs still reach the console.
(sleep 230; echo "--- still running at 230s: nsmount csi log"; cat $CSILOG /run/lab/log/csi.out; tail -n 40 /run/lab/log/containerd.log) &
WATCHDOG=$!
lab_containerd /etc/containerd/config.toml >/dev/null || exit 1
lab_log "containerd $(containerd --version | cut -d' ' -f3) up"
lab_check "cri - images imported into k8s.io" $CRI images --busybox "$(command -v busybox)"
nfsd_on_bridge labbr0 $S || exit 1
lab_check_fails "the VM has no route to the server" ip route get $S
# The pods' cluster DNS, on the pods' network only: it knows the server as
# nfs.lab.svc.cluster.local; the VM's own resolv.conf has no nameserver.
ip -n srv1 addr add 198.51.100.53/24 dev eth0
lab_dns srv1 198.51.100.53 nfs.lab.svc.cluster.local=$S >/dev/null || exit 1
PODDNS="--dns 198.51.100.53 --search lab.svc.cluster.local --search svc.cluster.local"

# start_csi [ARGS...]: run nsmount csi in the background (CSIPID; not
# under lab_check, whose subshell would keep it).
start_csi() {
	rm -f $SOCK
	nsmount csi --endpoint unix://$SOCK --node-id lab --policy $POLICY --stats-timeout 2s --log $CSILOG "$@" >>/run/lab/log/csi.out 2>&1 &
	CSIPID=$!
}
start_csi --nri-socket /run/nri/nri.sock
lab_check "nsmount csi serves" wait_for 20 test -S $SOCK
lab_check "nsmount csi registers with containerd over NRI" wait_for 20 grep -q "registered with the runtime" $CSILOG
check_says "csi - GetPluginInfo, NodeGetInfo, capabilities" "name nfs.nsmount.io" $CSI info
check_says "csi - no staging; stats and health" "capabilities GET_VOLUME_STATS,GET_VOLUME_HEALTH" $CSI info

# publish ID TARGET [ARGS...]: NodePublishVolume as kubelet calls it for
# pod web (namespace lab) and a PersistentVolume of server S; ARGS may
# override the context.
publish() {
	_id=$1 _t=$2
	shift 2
	$CSI publish --volume-id "$_id" --target "$_t" --context server=$S --context export=/export --context options=vers=4.2 \
		--context csi.storage.k8s.io/pod.uid=$PODUID --context csi.storage.k8s.io/pod.name=web \
		--context csi.storage.k8s.io/pod.namespace=lab --context csi.storage.k8s.io/ephemeral=false "$@"
}
records() { ls /run/nsmount/csi | grep -c '\.json$'; }
records_are() { test "$(records)" = "$1"; }
pending_records() { grep -l '"state": "pending"' /run/nsmount/csi/*.json | wc -l; }
# target_dev T: the superblock device of the NFS mount at T in the VM's mount table.
target_dev() { awk -v t="$1" '$5 == t && / - nfs4? / { print $3 }' /proc/self/mountinfo; }
# in_volumes PID DEV: DEV is one of the NFS superblocks of PID's netns.
in_volumes() { [ -n "$2" ] && awk -v d="$2" '$4 == d { found = 1 } END { exit !found }' "/proc/$1/net/nfsfs/volumes"; }
# target_in PID T: the NFS mount at T has its superblock in PID's netns.
target_in() { in_volumes "$1" "$(target_dev "$2")"; }
# counts_are RECORDS ENTRIES: csi records and registry entries.
counts_are() { records_are "$1" && registry_is "$2"; }
pod_ip() { nsenter -t "$1" -n ip -4 -o addr show dev eth0 | awk '{ split($4, a, "/"); print a[1] }'; }
# server_sees IP: the NFS server has an NFSv4 client at IP.
server_sees() { nsenter -t "$SRVPID" -m sh -c 'cat /proc/fs/nfsd/clients/*/info' | grep -q "address: \"$1:"; }
not_server_client() { ! server_sees "$1"; }
# server_clients_status: "ADDRESS STATUS" of each NFSv4 client the server has.
server_clients_status() {
	nsenter -t "$SRVPID" -m sh -c 'cat /proc/fs/nfsd/clients/*/info' |
		awk -F'"' '/^address: / { split($2, a, ":"); addr = a[1] } /^status: / { print addr, $0 }' | sed 's/ status: / /'
}

# --- NodePublishVolume, before the sandbox ----------------------------------

mkdir -p "$(dirname $T1)" "$(dirname $T2)" "$(dirname $T3)" # kubelet makes the parents
lab_check "csi - NodePublishVolume before the pod's sandbox exists (server nfs, a cluster DNS name)" publish data $T1 --context server=nfs
lab_check "csi - NodePublishVolume again: same answer" publish data $T1 --context server=nfs
lab_check "the target directory was made" test -d $T1
lab_check "one record, pending" test "$(records)/$(pending_records)" = 1/1
lab_check "nothing mounted yet" test "$(all_nfs_mounts)" = 0
check_says "csi - stats before the mount: Unavailable, waiting for the sandbox" "Unavailable: volume data at $T1 is not mounted yet: waiting for the sandbox of pod lab/web" $CSI stats --volume-id data --target $T1
check_says "csi - health before the mount: NotMountedYet" "INACCESSIBLE NotMountedYet" $CSI health --volume-id data --target $T1
check_says "csi - another namespace: PermissionDenied" "PermissionDenied: denied by policy $POLICY: CSI volumes of pods in namespace \"other\" are not allowed" \
	publish x $VOLS/x/mount --context csi.storage.k8s.io/pod.namespace=other
check_says "csi - a server outside the policy: PermissionDenied" "PermissionDenied" publish x $VOLS/x/mount --context server=203.0.113.9
check_says "csi - suid: PermissionDenied" "nosuid is enforced" publish x $VOLS/x/mount --context options=suid
check_says "csi - unknown attribute: InvalidArgument" "InvalidArgument: volume context: unknown key \"bogus\"" publish x $VOLS/x/mount --context bogus=1
check_says "csi - another pod's target path: InvalidArgument" "InvalidArgument: target path /var/lib/kubelet/pods/00000000" \
	publish x /var/lib/kubelet/pods/00000000-0000-4000-8000-000000000000/volumes/kubernetes.io~csi/x/mount
check_says "csi - other parameters at a published target: AlreadyExists" "AlreadyExists" publish data $T1 --context server=nfs --context options=vers=4.1
lab_check "refusals left one record" records_are 1

# --- RunPodSandbox: the mount is made, from the pod's netns -----------------

POD=$($CRI runp --uid $PODUID --cgroup-parent $CGROUP $PODDNS web 2>/tmp/err)
lab_check "cri - RunPodSandbox of pod web" test -n "$POD"
[ -n "$POD" ] || { cat /tmp/err; tail -n 30 /run/lab/log/containerd.log; exit 1; }
set -- $($CRI inspectp "$POD")
PODPID=${2:-0} PODNETNS=${3:-}
lab_log "pod $POD pid $PODPID netns $PODNETNS"
lab_check "RunPodSandbox: csi mounted the volume" wait_for 30 grep -q "msg=mounted volume=data" $CSILOG
DEV1=$(target_dev $T1)
lab_log "data mounted at $T1, dev $DEV1"
lab_check "the target path is an NFS mount in the VM's mount namespace" test -n "$DEV1"
lab_check "its superblock is in the pod netns's nfsfs/volumes" in_volumes $PODPID "$DEV1"
lab_check_fails "and not in the VM's netns" in_volumes $$ "$DEV1"
PODIP=$(pod_ip $PODPID)
lab_check "the NFS client's address is the pod's ($PODIP)" sh -c "grep ' $T1 ' /proc/self/mountinfo | grep -q 'clientaddr=$PODIP,'"
lab_check "the server sees the pod's address as its client" wait_for 5 server_sees "$PODIP"
lab_check "nosuid,nodev enforced" sh -c "grep ' $T1 ' /proc/self/mountinfo | grep -q 'nosuid,nodev'"
lab_check "the name was resolved by the pod's DNS (nfs.lab.svc.cluster.local)" sh -c "grep ' $T1 ' /proc/self/mountinfo | grep -q ' nfs:/export .*addr=$S'"
lab_check "the pod's DNS server was asked" grep -q "nfs.lab.svc.cluster.local" /run/lab/log/dns-srv1-198.51.100.53.log
lab_check "the record says mounted, from the pod's netns" grep -q "\"netns_path\": \"$PODNETNS\"" /run/nsmount/csi/*.json
lab_check "the registry has the mount" registry_is 1
lab_check "owner csi" registry_has '"owner": *"csi"'
lab_check "with its admission (namespace lab)" registry_has '"namespace": *"lab"'

# --- CreateContainer with the target path as a bind mount -------------------

APP=$(cri_create --mount $T1:/data "$POD" app -- sh -c 'cat /data/whoami; echo from-app >/data/app.txt; cat /data/app.txt; exec sleep 3600')
lab_check "cri - CreateContainer of app, the target path as /data" test -n "$APP"
lab_check "cri - StartContainer of app" $CRI start "$APP"
set -- $($CRI inspect "$APP")
PID=${2:-0}
lab_check "app's own process wrote the NFS file" wait_for 20 grep -qx from-app /srv/srv1/app.txt
lab_check "app's own process read the server's file" wait_for 5 grep -q ' srv1$' $LOGS/app.log
lab_check "app's own process read its own write back" grep -q ' from-app$' $LOGS/app.log
lab_check "app has the NFS mount at /data" sh -c "grep ' /data ' /proc/$PID/mountinfo | grep -q ' - nfs4 '"
lab_check "app is in the pod's netns" test "$(readlink /proc/$PID/ns/net)" = "$(readlink /proc/$PODPID/ns/net)"
lab_check "one NFS client, in the pod's netns" test "$(nfs_clients $PODPID)" = 1

# --- stats and health through the mount ------------------------------------

check_says "csi - NodeGetVolumeStats: the export's bytes" "bytes " $CSI stats --volume-id data --target $T1
lab_check "csi - stats: a size, free space, inodes" sh -c "$CSI stats --volume-id data --target $T1 | awk '\$2 <= 0 { bad = 1 } END { exit bad || NR != 2 }'"
check_says "csi - NodeGetVolumeHealth: healthy" "healthy" $CSI health --volume-id data --target $T1
ip link set srv1h down
S0=$(cut -d' ' -f1 /proc/uptime)
check_says "csi - stats of a hung server: Unavailable after the 2s timeout" "the server did not answer in" $CSI stats --volume-id data --target $T1
S1=$(cut -d' ' -f1 /proc/uptime)
lab_log "stats of a hung server answered in $(awk -v a="$S0" -v b="$S1" 'BEGIN { print b - a }')s"
lab_check "csi - and it took the timeout, not more (< 6s)" awk -v a="$S0" -v b="$S1" 'BEGIN { exit !(b - a >= 2 && b - a < 6) }'
check_says "csi - health of a hung server: ServerNotResponding" "INACCESSIBLE ServerNotResponding" $CSI health --volume-id data --target $T1
ip link set srv1h up
lab_check "csi - the server answers again: stats" wait_for 60 $CSI stats --volume-id data --target $T1

# --- nsmount status and remount see the mount from the pod's network --------

check_says "status: the CSI mount checked from the pod's network: ok" '"verdict":"ok"' sh -c "nsmount status --json | tr -d ' \n'"
check_says "remount: refused for a CSI volume (the containers' copies would stay behind)" "not remounted" \
	nsmount remount --netns "$PODNETNS" --mntns /proc/1/ns/mnt $T1
lab_check "the mount is unchanged" test "$(target_dev $T1)" = "$DEV1"

# --- a volume published while the sandbox runs: mounted at once -------------

lab_check "csi - NodePublishVolume with the sandbox running" publish late $T2 --readonly
lab_check "mounted at once, from the pod's netns" target_in $PODPID $T2
lab_check "read-only" sh -c "grep ' $T2 ' /proc/self/mountinfo | grep -q ' ro,'"
lab_check "two records, two registry entries" counts_are 2 2
lab_check "app still reads its /data (nothing flushed under it)" sh -c "nsenter -t $PID -m cat /data/app.txt | grep -qx from-app"

# --- a restart of the plugin, without NRI: the sandbox found by its cgroup ---

kill -TERM $CSIPID
wait $CSIPID
lab_check "nsmount csi exits 0 on SIGTERM" test $? = 0
lab_check "its mounts stay" test "$(target_dev $T1)" = "$DEV1"
start_csi
lab_check "nsmount csi serves again (no NRI)" wait_for 20 test -S $SOCK
lab_check "csi - kubelet's republish after a restart: OK" publish data $T1 --context server=nfs
lab_check "the same mount" test "$(target_dev $T1)" = "$DEV1"
lab_check "csi - NodePublishVolume of a third volume" publish third $T3
lab_check "mounted at once: the sandbox found by the pod's cgroup" target_in $PODPID $T3
lab_check "with the sandbox's resolver files (its pid in the record)" grep -q "\"sandbox_pid\": $PODPID" /run/nsmount/csi/*.json

# --- a sandbox stopped while the plugin is away: its network goes, the -------
# --- mounts stay stranded; a new sandbox of the pod gets them redone ---------

kill -TERM $CSIPID
wait $CSIPID
lab_check "cri - stop app" $CRI stop "$APP"
lab_check "cri - remove app" $CRI rm "$APP"
lab_check "cri - StopPodSandbox, the plugin away (the netns goes)" $CRI stopp "$POD"
lab_check "the old netns path is gone" wait_for 5 test ! -e "$PODNETNS"
lab_check "the three mounts stay, stranded" test "$(nfs_mounts /proc/self/mountinfo)" = 3
start_csi --nri-socket /run/nri/nri.sock
lab_check "nsmount csi serves again, with NRI" wait_for 20 test -S $SOCK
lab_check "it registers again" wait_for 20 sh -c "test \"\$(grep -c 'registered with the runtime' $CSILOG)\" = 2"
R0=$(cut -d' ' -f1 /proc/uptime)
POD2=$($CRI runp --uid $PODUID --attempt 1 --cgroup-parent $CGROUP $PODDNS web 2>/tmp/err)
lab_check "cri - RunPodSandbox of a new sandbox for pod web" test -n "$POD2"
[ -n "$POD2" ] || { cat /tmp/err; exit 1; }
set -- $($CRI inspectp "$POD2")
PODPID2=${2:-0} PODNETNS2=${3:-}
lab_log "new sandbox $POD2 pid $PODPID2 netns $PODNETNS2"
lab_check "csi remounted the three volumes from the new sandbox" wait_for 60 sh -c "test \"\$(grep -c 'msg=remounted' $CSILOG)\" = 3"
lab_log "the three remounts (stranded mounts detached lazily) took $(awk -v a="$R0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { print b - a }')s after RunPodSandbox"
PODIP2=$(pod_ip $PODPID2)
for T in $T1 $T2 $T3; do
	V=$(basename "$(dirname "$T")")
	lab_check "$V: superblock in the new netns's nfsfs/volumes" target_in $PODPID2 $T
	lab_check "$V: client address the new pod's ($PODIP2)" sh -c "grep ' $T ' /proc/self/mountinfo | grep -q 'clientaddr=$PODIP2,'"
done
lab_check "one NFS mount per target, none stranded" test "$(all_nfs_mounts)" = 3
lab_check "the server sees the new pod's address" wait_for 5 server_sees "$PODIP2"
lab_check "cri - RemovePodSandbox of the old sandbox" $CRI rmp "$POD"
APP2=$(cri_create --mount $T1:/data "$POD2" app2 -- sh -c 'cat /data/app.txt; echo from-app2 >/data/app2.txt; exec sleep 3600')
lab_check "cri - CreateContainer and start app2 in the new sandbox" $CRI start "$APP2"
lab_check "app2 reads the file app wrote, writes its own" wait_for 20 sh -c "grep -qx from-app2 /srv/srv1/app2.txt && grep -q ' from-app$' $LOGS/app2.log"

# --- teardown as kubelet does it --------------------------------------------

lab_check "cri - stop app2" $CRI stop "$APP2"
lab_check "cri - remove app2" $CRI rm "$APP2"
lab_check "cri - StopPodSandbox" $CRI stopp "$POD2"
lab_check "StopPodSandbox: the mounts went before the pod's network" wait_for 10 grep -q "msg=\"volumes unmounted before the pod's network goes\"" $CSILOG
lab_check "no NFS mount in any mount namespace" test "$(all_nfs_mounts)" = 0
lab_check "the records are pending again" test "$(records)/$(pending_records)" = 3/3
lab_check "the pod's netns is gone" wait_for 5 test ! -e "$PODNETNS2"
U0=$(cut -d' ' -f1 /proc/uptime)
lab_check "csi - NodeUnpublishVolume data" $CSI unpublish --volume-id data --target $T1
lab_check "csi - NodeUnpublishVolume late" $CSI unpublish --volume-id late --target $T2
lab_check "csi - NodeUnpublishVolume third" $CSI unpublish --volume-id third --target $T3
lab_log "three unpublishes took $(awk -v a="$U0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { print b - a }')s"
lab_check "csi - NodeUnpublishVolume again: OK" $CSI unpublish --volume-id data --target $T1
lab_check "cri - RemovePodSandbox" $CRI rmp "$POD2"
lab_check "no target directory left" test -z "$(ls -d $VOLS/*/mount 2>/dev/null)"
lab_check "no record left" records_are 0
lab_check "no registry entry" registry_is 0
# The clean teardown told the server; the stranded client of the stop the
# plugin missed could not: nfsd (5.19+, a "courteous server") keeps an
# expired client as long as no one else needs its state, up to a day.
lab_check "the server has no NFSv4 client of the new pod" wait_for 10 not_server_client "$PODIP2"
lab_check "only the first pod's: the stranded client, a courtesy client past its lease" test "$(server_clients_status)" = "$PODIP courtesy"
echo "--- the server's NFSv4 clients"
nsenter -t $SRVPID -m sh -c 'for c in /proc/fs/nfsd/clients/*; do cat $c/info; done'
lab_check_fails "no shim, runc or helper process" pidof containerd-shim-runc-v2 runc nsmount-helper
lab_check_fails "the pods' processes are gone" sh -c "kill -0 $PODPID || kill -0 $PODPID2"
check_says "csi - stats after the unpublish: NotFound" "NotFound" $CSI stats --volume-id data --target $T1
kill -TERM $CSIPID
wait $CSIPID
lab_check "nsmount csi exits 0 on SIGTERM" test $? = 0
lab_check_fails "no nsmount process left" pidof nsmount
lab_check_fails "no error in the plugin's log" grep -q "level=ERROR" $CSILOG
kill $WATCHDOG 2>/dev/null
lab_log "scenario took $(awk -v t0="$T0" '{ print $1 - t0 }' /proc/uptime)s"
echo "--- nsmount csi log"
cat $CSILOG
