# `nsmount agent` as the Kubernetes chart runs it (the binary installed for
# the hooks with `nsmount install`, the policy mirrored for them, NRI, CSI,
# metrics, JSON logs), with containerd 2.x (CRI, NRI) in the guest: a pod
# gets an NFS mount through the annotation (the agent injects the hook) and
# a CSI volume in kubelet's order (NodePublishVolume, RunPodSandbox,
# CreateContainer with the target path), both from the pod's netns, over
# the agent's one NRI registration. containerd restarts: the agent
# registers again, /healthz answers throughout, a new pod gets its mounts,
# /metrics lists them all. SIGTERM stops the agent (exit 0) and leaves
# every mount in place; a new agent picks them up and tears the pods down
# with kubelet's order, leaving no mount, registry entry or record.
set -u

CRI="nsmount-lab cri"
SOCK=/run/lab/csi/csi.sock
CSI="nsmount-lab csi --endpoint unix://$SOCK"
S=198.51.100.10
POLICY=/etc/nsmount/policy.json
HOOKPOLICY=/opt/nsmount/policy.json
LOG=/run/lab/log/agent.log
M=http://127.0.0.1:9477
LOGS=/run/lab/cri/logs
UID1=7c2e4a10-3b5d-4e6f-8a9b-0c1d2e3f4a01
UID2=7c2e4a10-3b5d-4e6f-8a9b-0c1d2e3f4a02
T1=/var/lib/kubelet/pods/$UID1/volumes/kubernetes.io~csi/vol/mount
T2=/var/lib/kubelet/pods/$UID2/volumes/kubernetes.io~csi/vol/mount
ANN='[{"server": "198.51.100.10", "export": "/export", "target": "/data", "options": "vers=4.2", "mkdir": true}]'

# --- the node: containerd 2.x (CRI, NRI), CNI, an NFS server ----------------

ip link set lo up
[ -e /etc/resolv.conf ] || echo "# lab: no DNS" >/etc/resolv.conf
cri_node
mkdir -p /run/lab/csi
# The ConfigMap's policy: one rule for the annotation's /data and for CSI
# volumes of pods in namespace lab.
cat >$POLICY <<EOF
{"version": 1, "allow": [
  {"name": "lab", "servers": ["$S"], "networks": ["198.51.100.0/24"], "exports": ["/export"],
   "targets": ["/data"], "options": ["vers"], "csi": {"namespaces": ["lab"]}}
]}
EOF
T0=$(cut -d' ' -f1 /proc/uptime)
# Should the scenario hang, the logs still reach the console.
(sleep 200; echo "--- still running at 200s: agent log"; cat $LOG; tail -n 40 /run/lab/log/containerd.log) &
WATCHDOG=$!
lab_containerd /etc/containerd/config.toml >/dev/null || exit 1
CTRDPID=$(cat /run/lab/containerd.pid)
lab_log "containerd $(containerd --version | cut -d' ' -f3) up"
lab_check "cri - images imported into k8s.io" $CRI images --busybox "$(command -v busybox)"
nfsd_on_bridge labbr0 $S || exit 1
lab_check_fails "the VM has no route to the server" ip route get $S

# --- the chart's init container, then the agent -----------------------------

check_says "install - nsmount install --to /opt/nsmount/bin" "installed /opt/nsmount/bin/nsmount" nsmount install --to /opt/nsmount/bin
lab_check "install - 0755, the same binary" sh -c 'test "$(stat -c %a /opt/nsmount/bin/nsmount)" = 755 && cmp -s /opt/nsmount/bin/nsmount /usr/bin/nsmount'
check_says "install - again: up to date" "up to date: /opt/nsmount/bin/nsmount" nsmount install --to /opt/nsmount/bin

# start_agent: the chart's command line (its metrics port on the VM's
# loopback; debug logs: every NRI event the agent gets), in the background (AGENTPID; not under lab_check, whose
# subshell would keep it).
start_agent() {
	nsmount agent --policy $POLICY --state-dir /run/nsmount --nri-socket /run/nri/nri.sock \
		--hook-binary /opt/nsmount/bin/nsmount --hook-policy $HOOKPOLICY --metrics-address 127.0.0.1:9477 \
		--log-format json --log-level debug --csi-endpoint unix://$SOCK --node-id lab >>$LOG 2>&1 &
	AGENTPID=$!
}
# says N TEXT: the agent's log has TEXT N times.
says() { test "$(grep -cF "$2" $LOG)" = "$1"; }
healthz() { nsmount-lab get --timeout 2s $M/healthz; }
mount_infos() { nsmount-lab get --timeout 5s $M/metrics | grep -c '^nsmount_nfs_mount_info{'; }
mount_infos_are() { test "$(mount_infos)" = "$1"; }
records_are() { test "$(ls /run/nsmount/csi | grep -c '\.json$')" = "$1"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }'; }
# target_dev T: the superblock of the NFS mount at T in the VM's mount table.
target_dev() { awk -v t="$1" '$5 == t && / - nfs4? / { print $3 }' /proc/self/mountinfo; }
# in_volumes PID DEV: DEV is an NFS superblock of PID's netns.
in_volumes() { [ -n "$2" ] && awk -v d="$2" '$4 == d { found = 1 } END { exit !found }' "/proc/$1/net/nfsfs/volumes"; }
# data_dev PID: the superblock of the NFS mount at /data in PID's mount namespace.
data_dev() { awk '$5 == "/data" && / - nfs4? / { print $3 }' "/proc/$1/mountinfo"; }
publish() {
	$CSI publish --volume-id "$1" --target "$2" --context server=$S --context export=/export --context options=vers=4.2 \
		--context csi.storage.k8s.io/pod.uid="$3" --context csi.storage.k8s.io/pod.name="$4" \
		--context csi.storage.k8s.io/pod.namespace=lab --context csi.storage.k8s.io/ephemeral=false
}

A0=$(uptime_s)
start_agent
lab_check "agent - registers with containerd over NRI" wait_for 20 says 1 '"msg":"registered with the runtime"'
lab_check "agent - synchronized" wait_for 5 says 1 '"msg":"synchronized with the runtime"'
lab_log "the agent registered $(since $A0)s after its start"
# The product binary of `make build` (split): the agent runs from the full
# binary it carries, in a memfd, and keeps the product binary open to start
# as its mount helper (which links none of the daemons' libraries).
if nsmount version | grep -q "build split"; then
	lab_check "split - the agent runs from the full binary in a memfd" sh -c "readlink /proc/$AGENTPID/exe | grep -q '^/memfd:nsmount-full'"
	lab_check "split - it holds the product binary for its helpers" sh -c "ls -l /proc/$AGENTPID/fd | grep -q ' /usr/bin/nsmount\$'"
else
	lab_log "nsmount is the full build: the agent runs from it"
fi
lab_check "agent - containerd lists one plugin, 10-nsmount" wait_for 5 grep -q '10-nsmount.* connected' /run/lab/log/containerd.log
lab_check "agent - serves CSI" wait_for 10 test -S $SOCK
check_says "agent - /healthz: ok, NRI connected, CSI serving, watch running" "nri: connected since" healthz
check_says "agent - /healthz: containerd named" "containerd" healthz
lab_check "agent - the policy mirrored for the hooks, 0644 root" sh -c "cmp -s $POLICY $HOOKPOLICY && test \"\$(stat -c '%a %u' $HOOKPOLICY)\" = '644 0'"
check_says "agent - one JSON object per line" '"level":"INFO"' head -n 1 $LOG

# --- pod 1: an annotation mount and a CSI volume, in kubelet's order ---------

mkdir -p "$(dirname $T1)" "$(dirname $T2)" # kubelet makes the parents
lab_check "csi - NodePublishVolume before the sandbox" publish vol $T1 $UID1 web1
POD1=$($CRI runp --uid $UID1 --cgroup-parent /kubepods/besteffort/pod$UID1 --annotation "nsmount.io/mounts.container.app=$ANN" web1 2>/tmp/err)
lab_check "cri - RunPodSandbox of web1" test -n "$POD1"
[ -n "$POD1" ] || { cat /tmp/err; tail -n 30 /run/lab/log/containerd.log; exit 1; }
set -- $($CRI inspectp "$POD1")
PODPID1=${2:-0} PODNETNS1=${3:-}
t1_in_pod1() { in_volumes $PODPID1 "$(target_dev $T1)"; }
lab_check "RunPodSandbox: the CSI volume mounted from the pod's netns" wait_for 30 t1_in_pod1
APP1=$(cri_create --mount $T1:/vol "$POD1" app -- sh -c 'cat /data/whoami; echo app1-data >/data/app1.txt; echo app1-vol >/vol/app1v.txt; exec sleep 3600')
lab_check "nri - CreateContainer of app: hooks added" wait_for 5 says 1 '"msg":"hooks added"'
lab_check "cri - StartContainer of app (the hook mounts /data)" $CRI start "$APP1"
set -- $($CRI inspect "$APP1")
PID1=${2:-0}
lab_check "app's own process wrote through the annotation's mount" wait_for 20 grep -qx app1-data /srv/srv1/app1.txt
lab_check "app's own process wrote through the CSI volume" wait_for 5 grep -qx app1-vol /srv/srv1/app1v.txt
lab_check "app read the server's file" wait_for 5 grep -q ' srv1$' $LOGS/app.log
lab_check "/data's superblock is the pod netns's" in_volumes $PODPID1 "$(data_dev $PID1)"
lab_check "registry: two entries" registry_is 2
lab_check "registry: the annotation's, owner nri" registry_has '"owner": *"nri"'
lab_check "registry: the CSI volume's, owner csi" registry_has '"owner": *"csi"'
lab_check "metrics - both mounts listed" wait_for 10 mount_infos_are 2
check_says "metrics - the annotation's, owner nri" 'owner="nri"' nsmount-lab get $M/metrics
check_says "metrics - the CSI volume's, owner csi" 'owner="csi"' nsmount-lab get $M/metrics
check_says "metrics - the agent's own" 'nsmount_agent_up{part="nri"} 1' nsmount-lab get $M/metrics

# --- containerd restarts: the agent registers again ---------------------------

rm -f /tmp/healthz.ok /tmp/healthz.fail /tmp/healthz.stop
touch /tmp/healthz.ok /tmp/healthz.fail
(
	while [ ! -e /tmp/healthz.stop ]; do
		if nsmount-lab get --timeout 2s $M/healthz >/tmp/healthz.last 2>&1; then echo ok >>/tmp/healthz.ok; else echo "fail: $(tr '\n' ' ' </tmp/healthz.last)" >>/tmp/healthz.fail; fi
		grep -q "nri: not connected" /tmp/healthz.last && cp /tmp/healthz.last /tmp/healthz.away
		sleep 0.2
	done
) &
POLLER=$!
R0=$(uptime_s)
kill -TERM $CTRDPID
wait $CTRDPID
lab_log "containerd stopped in $(since $R0)s (its pods' shims go on)"
lab_check "agent - sees the runtime go" wait_for 5 says 1 '"msg":"the runtime closed the NRI connection: connecting again"'
lab_check "agent - /healthz while containerd is away: ok, NRI not connected" wait_for 5 test -e /tmp/healthz.away
lab_check "app still reads its /data while containerd is away" sh -c "nsenter -t $PID1 -m cat /data/app1.txt | grep -qx app1-data"
rm -f /run/containerd/containerd.sock /run/nri/nri.sock
# When containerd's NRI socket is back, and when the agent is registered
# and synchronized again (20 ms polls).
(while [ ! -S /run/nri/nri.sock ]; do sleep 0.02; done; uptime_s >/tmp/nri.up) &
(while ! says 2 '"msg":"synchronized with the runtime"'; do sleep 0.02; done; uptime_s >/tmp/agent.up) &
R1=$(uptime_s)
lab_containerd /etc/containerd/config.toml >/dev/null || exit 1
CTRDPID=$(cat /run/lab/containerd.pid)
R2=$(uptime_s)
lab_check "agent - registers again" wait_for 30 says 2 '"msg":"registered with the runtime"'
lab_check "agent - synchronized again, with pod web1 and app" wait_for 10 sh -c "grep -F '\"msg\":\"synchronized with the runtime\"' $LOG | tail -n 1 | grep -q '\"pods\":1,\"containers\":1'"
wait_for 5 test -s /tmp/agent.up
NRIUP=$(cat /tmp/nri.up 2>/dev/null || echo 0) AGENTUP=$(cat /tmp/agent.up 2>/dev/null || echo 0)
at() { awk -v a="$R1" -v b="$1" 'BEGIN { printf "%.2f", b - a }'; }
lab_log "containerd restart: down $(awk -v a=$R0 -v b=$R1 'BEGIN { printf "%.1f", b - a }')s; from its start: NRI socket at $(at $NRIUP)s, CRI socket at $(at $R2)s, the agent registered and synchronized at $(at $AGENTUP)s"
# The agent tries again at most 2 s apart (backing off from 100 ms), then
# registers and synchronizes: a CI run took 2.21 s from the socket to done.
lab_check "agent - registered within 4s of containerd's NRI socket (retries at most 2s apart)" awk -v a="$NRIUP" -v b="$AGENTUP" 'BEGIN { exit !(a > 0 && b - a < 4) }'
touch /tmp/healthz.stop
wait $POLLER
lab_log "/healthz during the restart: $(wc -l </tmp/healthz.ok) answers ok, $(wc -l </tmp/healthz.fail) not"
lab_check "agent - /healthz answered ok throughout" test ! -s /tmp/healthz.fail
echo "--- /healthz while containerd was away"
cat /tmp/healthz.away
check_says "agent - /healthz after: registration 2" "registration 2" healthz
check_says "metrics - nsmount_agent_nri_registrations_total 2" "nsmount_agent_nri_registrations_total 2" nsmount-lab get $M/metrics

# --- pod 2, after the restart: the same two mounts ---------------------------

lab_check "csi - NodePublishVolume for web2" publish vol $T2 $UID2 web2
POD2=$($CRI runp --uid $UID2 --cgroup-parent /kubepods/besteffort/pod$UID2 --annotation "nsmount.io/mounts.container.app=$ANN" web2 2>/tmp/err)
lab_check "cri - RunPodSandbox of web2 after the restart" test -n "$POD2"
[ -n "$POD2" ] || { cat /tmp/err; tail -n 30 /run/lab/log/containerd.log; exit 1; }
set -- $($CRI inspectp "$POD2")
PODPID2=${2:-0}
APP2=$(cri_create --mount $T2:/vol "$POD2" app -- sh -c 'echo app2-data >/data/app2.txt; echo app2-vol >/vol/app2v.txt; exec sleep 3600')
lab_check "cri - StartContainer of web2's app" $CRI start "$APP2"
set -- $($CRI inspect "$APP2")
PID2=${2:-0}
lab_check "web2's app wrote through the annotation's mount" wait_for 20 grep -qx app2-data /srv/srv1/app2.txt
lab_check "web2's app wrote through the CSI volume" wait_for 5 grep -qx app2-vol /srv/srv1/app2v.txt
lab_check "web2's CSI volume is from its pod's netns" in_volumes $PODPID2 "$(target_dev $T2)"
lab_check "web2's /data is from its pod's netns" in_volumes $PODPID2 "$(data_dev $PID2)"
lab_check "metrics - the four mounts listed" wait_for 10 mount_infos_are 4

# --- SIGTERM: the agent stops, the mounts stay ------------------------------

MOUNTS=$(all_nfs_mounts)
ENTRIES=$(registry_entries)
DEV1=$(target_dev $T1)
lab_log "before the stop: $MOUNTS NFS mounts in all mount namespaces, $ENTRIES registry entries"
S0=$(uptime_s)
kill -TERM $AGENTPID
wait $AGENTPID
lab_check "agent - exits 0 on SIGTERM" test $? = 0
lab_log "the agent stopped $(since $S0)s after SIGTERM"
lab_check "agent - said every mount stays" says 1 '"msg":"stopping: every mount stays in place"'
lab_check "every NFS mount stays" test "$(all_nfs_mounts)" = "$MOUNTS"
lab_check "every registry entry stays" registry_is "$ENTRIES"
lab_check "the CSI records stay" records_are 2
lab_check "app still reads and writes /data and /vol" sh -c "nsenter -t $PID1 -m sh -c 'cat /data/app1.txt /vol/app1v.txt && echo again >/vol/again.txt' && grep -qx again /srv/srv1/again.txt"
lab_check_fails "no /healthz without the agent" healthz

A1=$(uptime_s)
start_agent
lab_check "new agent - registers" wait_for 20 says 3 '"msg":"registered with the runtime"'
lab_log "the new agent registered $(since $A1)s after its start"
lab_check "new agent - synchronized with both pods" wait_for 10 sh -c "grep -F '\"msg\":\"synchronized with the runtime\"' $LOG | tail -n 1 | grep -q '\"pods\":2,\"containers\":2'"
lab_check "new agent - /healthz ok" wait_for 10 healthz
lab_check "new agent - /metrics lists the four mounts" wait_for 10 mount_infos_are 4
lab_check "new agent - CSI republish of web1's volume: OK" publish vol $T1 $UID1 web1
lab_check "the same mount" test "$(target_dev $T1)" = "$DEV1"

# --- teardown as kubelet does it, with the new agent --------------------------

for C in $APP1 $APP2; do
	lab_check "cri - stop and remove $C" sh -c "$CRI stop $C && $CRI rm $C"
done
lab_check "cri - StopPodSandbox web1" $CRI stopp "$POD1"
lab_check "cri - StopPodSandbox web2" $CRI stopp "$POD2"
lab_check "csi - NodeUnpublishVolume web1" $CSI unpublish --volume-id vol --target $T1
lab_check "csi - NodeUnpublishVolume web2" $CSI unpublish --volume-id vol --target $T2
lab_check "cri - RemovePodSandbox web1" $CRI rmp "$POD1"
lab_check "cri - RemovePodSandbox web2" $CRI rmp "$POD2"
no_nfs_mounts() { test "$(all_nfs_mounts)" = 0; }
# containerd keeps the state NRI events depend on in memory only, and
# restores that of containers, not of pods, when a plugin synchronizes
# (containerd#8426): a pod that lived through its restart gets no
# StopPodSandbox or RemovePodSandbox event.
lab_check "nri - web2's StopPodSandbox reached the agent: its CSI volume went before the pod's network" \
	grep -q '"msg":"volumes unmounted before the pod'"'"'s network goes".*"pod":"lab/web2"' $LOG
lab_check_fails "nri - containerd 2.4.2 sent no StopPodSandbox for web1, which lived through its restart (containerd#8426)" \
	grep -q '"msg":"StopPodSandbox".*"pod":"lab/web1"' $LOG
lab_check "csi - so web1's volume went at NodeUnpublishVolume, lazily (its netns gone)" \
	grep -q '"msg":"unmounted lazily (the pod'"'"'s network namespace is gone)".*'$UID1 $LOG
lab_check "no NFS mount in any mount namespace" wait_for 10 no_nfs_mounts
lab_check "no registry entry" wait_for 10 registry_is 0
lab_check "no CSI record" records_are 0
lab_check "metrics - no mount listed" wait_for 10 mount_infos_are 0
kill -TERM $AGENTPID
wait $AGENTPID
lab_check "new agent - exits 0 on SIGTERM" test $? = 0
lab_check_fails "no nsmount process left" pidof nsmount nsmount-helper
lab_check_fails "no error in the agent's log" grep -q '"level":"ERROR"' $LOG
kill $WATCHDOG 2>/dev/null
lab_log "scenario took $(since $T0)s"
echo "--- agent log"
cat $LOG
