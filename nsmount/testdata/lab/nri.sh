# containerd 2.x with CRI and NRI in the guest (the run installs it), and
# `nsmount nri` registered with it, nsmount-cni chained in the CNI config
# that CRI runs: a pod made through the CRI API, as the kubelet would, whose
# annotation asks for an NFS mount. nsmount nri checks
# it at CreateContainer and injects nsmount hook; the container's own
# process writes and reads the NFS file from the pod's netns. Refusals
# fail CreateContainer. Stop and removal leave no mount, no NFS client, no
# registry entry, no process.
set -u

CRI="nsmount-lab cri"
S=198.51.100.10
POLICY=/etc/nsmount/policy.json
NRILOG=/run/lab/log/nri.log
LOGS=/run/lab/cri/logs

# --- the node: containerd 2.x (CRI, NRI), CNI, an NFS server ----------------

ip link set lo up
# CRI copies the node's resolv.conf into each pod.
[ -e /etc/resolv.conf ] || echo "# lab: no DNS" >/etc/resolv.conf
cri_node '{"type": "nsmount-cni", "servers": ["198.51.100.10"], "required": true}'
ln -s /usr/bin/nsmount /usr/lib/cni/nsmount-cni
cat >$POLICY <<EOF
{"version": 1, "allow": [
  {"name": "lab", "servers": ["$S"], "networks": ["198.51.100.0/24"],
   "exports": ["/export"], "targets": ["/data"], "options": ["vers"]}
]}
EOF
T0=$(cut -d' ' -f1 /proc/uptime)
lab_containerd /etc/containerd/config.toml >/dev/null || exit 1
lab_log "containerd $(containerd --version | cut -d' ' -f3) up"
lab_check "cri - images imported into k8s.io" $CRI images --busybox "$(command -v busybox)"

nfsd_on_bridge labbr0 $S || exit 1
lab_check_fails "the VM has no route to the server" ip route get $S

nsmount nri --socket /run/nri/nri.sock --policy $POLICY --log $NRILOG >/run/lab/log/nri.out 2>&1 &
NRIPID=$!
lab_check "nsmount nri registers with containerd" wait_for 20 grep -q "registered with the runtime" /run/lab/log/nri.out
lab_check "containerd lists the plugin" wait_for 5 grep -q '10-nsmount.* connected' /run/lab/log/containerd.log

# --- a pod whose annotation asks for the mount ------------------------------

ANN='[{"server": "198.51.100.10", "export": "/export", "target": "/data", "options": "vers=4.2", "mkdir": true}]'
POD=$($CRI runp --annotation "nsmount.io/mounts.container.app=$ANN" web 2>/tmp/err)
lab_check "cri - pod web runs" test -n "$POD"
[ -n "$POD" ] || { cat /tmp/err; tail -n 30 /run/lab/log/containerd.log; exit 1; }
lab_check "cni - containerd ran nsmount-cni: a record of the pod sandbox" grep -q "\"cni_container_id\": \"$POD\"" /run/nsmount/cni/*.json
set -- $($CRI inspectp "$POD")
PODPID=${2:-0} PODNETNS=${3:-}
lab_log "pod $POD pid $PODPID netns $PODNETNS"

APP=$($CRI create "$POD" app -- sh -c 'cat /data/whoami; echo from-app >/data/app.txt; cat /data/app.txt; exec sleep 3600' 2>/tmp/err)
lab_check "nri - CreateContainer of app" test -n "$APP"
[ -n "$APP" ] || cat /tmp/err
check_says "nri - hooks added to app" "hooks added" cat $NRILOG
lab_check "cri - StartContainer of app (the hook mounts)" $CRI start "$APP"
set -- $($CRI inspect "$APP")
PID=${2:-0}
lab_log "app $APP pid $PID"
lab_check "app's own process wrote the NFS file" wait_for 20 grep -qx from-app /srv/srv1/app.txt
lab_check "app's own process read the server's file" wait_for 5 grep -q ' srv1$' $LOGS/app.log
lab_check "app's own process read its own write back" grep -q ' from-app$' $LOGS/app.log
lab_check "app is in the pod's netns" test "$(readlink /proc/$PID/ns/net)" = "$(readlink /proc/$PODPID/ns/net)"
lab_check "one NFS mount, in app" test "$(nfs_mounts /proc/$PID/mountinfo)" = 1
lab_check "none in the VM" test "$(nfs_mounts /proc/self/mountinfo)" = 0
lab_check "one NFS client, in the pod's netns" test "$(nfs_clients $PODPID)" = 1
lab_check "nosuid,nodev enforced" grep -q ' /data .*nosuid,nodev' /proc/$PID/mountinfo
PODIP=$(nsenter -t "$PODPID" -n ip -4 -o addr show dev eth0 | awk '{ split($4, a, "/"); print a[1] }')
lab_check "the NFS client's address is the pod's ($PODIP)" grep -q "clientaddr=$PODIP," /proc/$PID/mountinfo
lab_check "registry has app's mount" test "$(registry_entries)" = 1
lab_check "the registry names nri as its owner" registry_has '"owner": *"nri"'
check_says "hook log - mounted" "mounted 198.51.100.10:/export on /data" cat $NRILOG

# A container of the same pod that the annotation does not name gets nothing.
SIDE=$($CRI create "$POD" side 2>/tmp/err)
lab_check "cri - side starts without mounts" $CRI start "$SIDE"
set -- $($CRI inspect "$SIDE")
lab_check "side has no NFS mount" test "$(nfs_mounts /proc/${2:-0}/mountinfo)" = 0

# --- refusals fail CreateContainer ------------------------------------------

DENY='[{"server": "203.0.113.99", "export": "/export", "target": "/data", "mkdir": true}]'
check_says "nri - policy refusal fails CreateContainer" "denied by policy" \
	$CRI create --annotation "nsmount.io/mounts=$DENY" "$POD" bad1
SUID='[{"server": "198.51.100.10", "export": "/export", "target": "/data", "options": "suid", "mkdir": true}]'
check_says "nri - suid refused" "option \"suid\" is not allowed" \
	$CRI create --annotation "nsmount.io/mounts=$SUID" "$POD" bad2
BOGUS='[{"server": "198.51.100.10", "export": "/export", "target": "/data", "bogus": 1}]'
check_says "nri - malformed annotation refused" "unknown field \"bogus\"" \
	$CRI create --annotation "nsmount.io/mounts=$BOGUS" "$POD" bad3
lab_check "refusals left no registry entry" test "$(registry_entries)" = 1

# --- teardown as the kubelet does it ----------------------------------------

lab_check "cri - stop app" $CRI stop "$APP"
lab_check "stop - no NFS mount in any mount namespace" test "$(all_nfs_mounts)" = 0
lab_check "stop - no NFS client in the pod's netns" test "$(nfs_clients $PODPID)" = 0
lab_check "stop - registry forgot app's mount" wait_for 5 registry_is 0
lab_check "cri - remove app" $CRI rm "$APP"
lab_check "cri - stop side" $CRI stop "$SIDE"
lab_check "cri - remove side" $CRI rm "$SIDE"
lab_check "cri - stop pod" $CRI stopp "$POD"
lab_check "cri - remove pod" $CRI rmp "$POD"
lab_check "the pod's netns is gone" wait_for 5 test ! -e "$PODNETNS"
lab_check_fails "cni - containerd's DEL removed the record" sh -c 'ls /run/nsmount/cni/*.json' 
lab_check "no NFS mount in any mount namespace" test "$(all_nfs_mounts)" = 0
lab_check "no registry entry" test "$(registry_entries)" = 0
lab_check "the server has no NFSv4 client" wait_for 5 server_clients 0
lab_check_fails "no shim, runc or helper process" pidof containerd-shim-runc-v2 runc nsmount-helper
lab_check_fails "the pod's and app's processes are gone" sh -c "kill -0 $PID || kill -0 $PODPID"
lab_check_fails "no nsmount process but the plugin" sh -c "pidof nsmount | tr ' ' '\n' | grep -vx $NRIPID"
kill -TERM $NRIPID
wait $NRIPID
lab_check "nsmount nri exits 0 on SIGTERM" test $? = 0
lab_check_fails "cleanup warned nothing" grep -Eq "warning|level=WARN" $NRILOG
lab_log "scenario took $(awk -v t0="$T0" '{ print $1 - t0 }' /proc/uptime)s"
echo "--- nsmount nri log"
cat $NRILOG /run/lab/log/nri.out
