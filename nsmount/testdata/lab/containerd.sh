# containerd + runc in the guest (the run installs them): containers made
# by containerd get their NFS mount from their own netns through each
# integration: the OCI hook (annotation + createRuntime/poststop hooks in
# the container's spec), `nsmount mount --container ID`, and the CNI
# chained plugin nsmount-cni (ADD/CHECK/DEL, DEL twice, DEL without a
# netns). Teardown leaves no mount, NFS client, registry entry or process.
set -u

CTR="nsmount-lab ctr --namespace lab"
CNI="nsmount-lab cni --conf /etc/cni/net.d/labnet.conflist"
S=198.51.100.10
POLICY=/etc/nsmount/policy.json
HOOKLOG=/run/lab/log/hook.log

# sidecar_mounts N: the sidecar has N NFS mounts.
sidecar_mounts() { test "$(nfs_mounts /proc/$SIDE/mountinfo)" = "$1"; }

# netns_clients NS: NFS clients in named netns NS.
netns_clients() { ip netns exec "$1" sh -c 'tail -n +2 /proc/net/nfsfs/servers | grep -c . || true'; }

# --- the node: containerd, the CNI network, an NFS server on it ----------

lab_containerd >/dev/null || exit 1
mkdir -p /etc/cni/net.d /etc/nsmount /run/lab/ctr
ln -s /usr/bin/nsmount /usr/lib/cni/nsmount-cni
cat >/etc/cni/net.d/labnet.conflist <<EOF
{"cniVersion": "1.0.0", "name": "labnet", "plugins": [
  {"type": "bridge", "bridge": "labbr0", "isGateway": false,
   "ipam": {"type": "host-local", "dataDir": "/run/lab/ipam",
            "ranges": [[{"subnet": "198.51.100.0/24", "rangeStart": "198.51.100.100", "rangeEnd": "198.51.100.200"}]]}},
  {"type": "nsmount-cni", "servers": ["$S"], "required": true}
]}
EOF
cat >$POLICY <<EOF
{"version": 1, "allow": [
  {"name": "lab", "servers": ["$S"], "networks": ["198.51.100.0/24"],
   "exports": ["/export"], "targets": ["/data"], "options": ["vers"]}
]}
EOF
nfsd_on_bridge labbr0 $S || exit 1
lab_check_fails "the VM has no route to the server" ip route get $S

ANN='[{"server": "198.51.100.10", "export": "/export", "target": "/data", "options": "vers=4.2", "mkdir": true}]'
HOOK="--hook /usr/bin/nsmount --hook-arg --policy --hook-arg $POLICY --hook-arg --log --hook-arg $HOOKLOG"

# --- CNI ADD through libcni; the hook mounts at createRuntime -----------

ip netns add web
lab_check "cni add web" $CNI --netns /run/netns/web add web
lab_check "cni record of web" sh -c 'ls /run/nsmount/cni/*.json'
lab_check "cni check web" $CNI --netns /run/netns/web check web

WEB=$($CTR run --netns /run/netns/web --annotation "nsmount.io/mounts=$ANN" $HOOK web -- \
	sh -c 'cat /data/whoami; echo from-web >/data/web.txt; exec sleep 3600' 2>/tmp/err)
lab_check "hook, containerd runs web" test -n "$WEB" || cat /tmp/err
lab_check "hook, the container's /sys stays read-only" sh -c "grep ' /sys ' /proc/$WEB/mountinfo | grep -q ' ro,'"
lab_log "web pid $WEB"
lab_check "hook, web's own process wrote the NFS file" wait_for 20 grep -qx from-web /srv/srv1/web.txt
lab_check "hook, web's own process read the server's file" wait_for 5 grep -qx srv1 /run/lab/ctr/web.log
lab_check "hook, one NFS mount, in web" test "$(nfs_mounts /proc/$WEB/mountinfo)" = 1
lab_check "hook, none in the VM" test "$(nfs_mounts /proc/self/mountinfo)" = 0
lab_check "hook, one NFS client, in web's netns" test "$(nfs_clients $WEB)" = 1
lab_check "hook, nosuid,nodev enforced" grep -q ' /data .*nosuid,nodev' /proc/$WEB/mountinfo
lab_check "hook, web's netns got its own NFSv4 identity" sh -c "ip netns exec web cat /sys/fs/nfs/net/nfs_client/identifier | grep -Eq '^[0-9a-f]{8}-'"
lab_check "hook, web's sysfs superblock is read-only again" sh -c "grep ' /sys ' /proc/$WEB/mountinfo | grep -q 'sysfs ro\$'"
lab_check "hook, registry has web's mount" test "$(registry_entries)" = 1
check_says "hook, nsmount list --container web" "198.51.100.10:/export" nsmount list --container web --namespace lab
check_says "hook, logged the mount" "mounted" cat $HOOKLOG

# --- refusals: policy and a bad annotation fail container creation -------

ip netns add bad
DENY='[{"server": "203.0.113.99", "export": "/export", "target": "/data", "mkdir": true}]'
check_says "hook, policy refusal fails the container" "denied by policy" \
	$CTR run --netns /run/netns/bad --annotation "nsmount.io/mounts=$DENY" $HOOK bad1
SUID='[{"server": "198.51.100.10", "export": "/export", "target": "/data", "options": "suid", "mkdir": true}]'
check_says "hook, suid refused" "suid" \
	$CTR run --netns /run/netns/bad --annotation "nsmount.io/mounts=$SUID" $HOOK bad2
BOGUS='[{"server": "198.51.100.10", "export": "/export", "target": "/data", "bogus": 1}]'
check_says "hook, malformed annotation refused" "bogus" \
	$CTR run --netns /run/netns/bad --annotation "nsmount.io/mounts=$BOGUS" $HOOK bad3
lab_check "hook, refused containers are gone" sh -c '! ls /run/lab/ctr/runc/lab/bad* 2>/dev/null'
lab_check "hook, refusals left no registry entry" test "$(registry_entries)" = 1
ip netns del bad

# --- nsmount mount --container: containerd resolves the task -------------

ip netns add app
lab_check "cni add app" $CNI --netns /run/netns/app add app
APP=$($CTR run --netns /run/netns/app app -- sh -c \
	'mkdir -p /data; until grep -q srv1 /data/whoami 2>/dev/null; do sleep 0.1; done; echo from-app >/data/app.txt; exec sleep 3600' 2>/tmp/err)
lab_check "container, containerd runs app" test -n "$APP" || cat /tmp/err
lab_check "container, nsmount mount --container app" nsmount mount --container app --namespace lab -o vers=4.2 $S:/export /data
lab_check "container, app's own process wrote the NFS file" wait_for 20 grep -qx from-app /srv/srv1/app.txt
lab_check "container, the mount is app's" test "$(nfs_mounts /proc/$APP/mountinfo)" = 1
lab_check "container, registry has both" test "$(registry_entries)" = 2
check_exit "container, unknown container" 4 nsmount mount --container nope --namespace lab $S:/export /data
check_exit "container, --namespace without --container is a usage error" 2 nsmount list --namespace lab

# --- teardown -------------------------------------------------------------

lab_check "hook, containerd removes web (poststop)" $CTR rm web
lab_check "hook, poststop unmounted web's mount" test "$(all_nfs_mounts)" = 1
lab_check "hook, poststop left no NFS client in web's netns" test "$(netns_clients web)" = 0
lab_check "hook, poststop forgot web's entry" test "$(registry_entries)" = 1
lab_check "cni del web" $CNI --netns /run/netns/web del web
lab_check "cni del web again" $CNI --netns /run/netns/web del web
ip netns del web

lab_check "container, nsmount umount --container app" nsmount umount --container app --namespace lab /data
lab_check "container, containerd removes app" $CTR rm app
ip netns del app
lab_check "cni del app without a netns" $CNI --netns "" del app

# --- orphan: a netns gone, its NFS client kept alive by a copy -----------
# A sidecar whose mount namespace is a copy of the container's keeps the
# superblock after the container and its netns are gone: an orphan, holding
# the dead netns's NFS client. CNI DEL without a netns flushes it. (Not a
# containerd container: removing one deletes its rootfs snapshot, and the
# kernel detaches mounts in other mount namespaces whose mount point is
# deleted, so the copy would go with it.)
ip netns add orph
lab_check "orphan, cni add" $CNI --netns /run/netns/orph add orph
lab_container orph orph >/dev/null
ORPH=$(lab_pid orph)
lab_check "orphan, nsmount mount" nsmount mount --pid $ORPH -o vers=4.2 $S:/export /data
nsenter -t "$ORPH" -m -- unshare -m sleep 3600 &
SIDE=$!
lab_check "orphan, the sidecar holds a copy" wait_for 5 sidecar_mounts 1
lab_check "orphan, nsmount umount" nsmount umount --pid $ORPH /data
lab_stop orph >/dev/null
ip netns del orph
lab_check "orphan, the copy outlives the container" sidecar_mounts 1
nsmount status --no-probe | sed "s/^/status: /"
check_says "orphan, nsmount status names it" "orphan superblock" nsmount status --no-probe
lab_check "orphan, the server still has the dead netns's NFSv4 client" server_clients 1
lab_check "orphan, cni del without a netns" $CNI --netns "" del orph
lab_check "orphan, the sidecar's copy is unmounted" sidecar_mounts 0
lab_check "orphan, the sidecar lives on" kill -0 $SIDE
lab_check "orphan, the dead netns's NFSv4 client is gone from the server" wait_for 10 server_clients 0
kill $SIDE
wait $SIDE 2>/dev/null
lab_check "cni, no records left" sh -c '! ls /run/nsmount/cni/*.json 2>/dev/null'

lab_check "no NFS mount in any mount namespace" test "$(all_nfs_mounts)" = 0
lab_check "no registry entry" test "$(registry_entries)" = 0
lab_check "the server has no NFSv4 client" server_clients 0
lab_check_fails "no shim, runc or nsmount process" pidof containerd-shim-runc-v2 runc nsmount nsmount-helper
lab_check "no container state" sh -c '! ls /run/lab/ctr/runc/lab/* 2>/dev/null'
echo "--- hook log"
cat $HOOKLOG
