# A policy holds for a mount's whole life (issue 10, defect 1). The OCI
# hook mounts nfs.lab.test into c1, as the host policy allows: network
# 198.51.100.0/24 only. Then the container, which is untrusted, points
# nfs.lab.test at 203.0.113.10 in its own /etc/hosts (a server it can
# reach: srvB). Neither `nsmount remount` nor `nsmount watch` (route drift,
# ESTALE after a re-export, a dead server) may move the mount there: each
# is refused (exit 11, a "denied" watch event) and the mount stays on srvA.
# A mount the CLI made (no policy: root on the host asked) follows the name.
# Once the container points the name back, watch repairs the mount on srvA.
set -u
lab_netns srvA >/dev/null
lab_netns srvB >/dev/null
lab_container c1 >/dev/null
lab_veth srvA eth0 198.51.100.1/24 c1 eth0 198.51.100.2/24
lab_veth srvB eth0 203.0.113.10/24 c1 eth1 203.0.113.2/24
lab_nfsd srvA srvA >/dev/null || exit 1
lab_nfsd srvB srvB >/dev/null || exit 1
C1=$(lab_pid c1)
echo "198.51.100.1 nfs.lab.test" >>/ct/c1/etc/hosts
now() { awk '{print $1}' /proc/uptime; }
addr_of() { awk -v m="$1" '$5 == m { for (i = 1; i <= NF; i++) if ($i ~ /addr=/) print $i }' /proc/$C1/mountinfo | tr ',' '\n' | sed -n 's/^addr=//p'; }
reads() { test "$(cat /proc/$C1/root$1/whoami 2>&1)" = "$2"; }

mkdir -p /etc/nsmount /run/lab/bundle
POLICY=/etc/nsmount/policy.json
cat >$POLICY <<EOP
{"version": 1, "allow": [
  {"name": "lab", "servers": ["nfs.lab.test"], "networks": ["198.51.100.0/24"],
   "exports": ["/export"], "targets": ["/data"], "options": ["vers"]}
]}
EOP
# The container's bundle: its root is the process's own root.
echo '{"ociVersion": "1.0.2", "root": {"path": "/"}}' >/run/lab/bundle/config.json
ANN='[{\"server\": \"nfs.lab.test\", \"export\": \"/export\", \"target\": \"/data\", \"options\": \"vers=4.2\"}]'
state() { printf '{"ociVersion": "1.0.2", "id": "c1", "status": "%s", "pid": %s, "bundle": "/run/lab/bundle", "annotations": {"nsmount.io/mounts": "%s"}}' "$1" "$C1" "$ANN"; }

state creating | nsmount hook --stage createRuntime --policy $POLICY >/tmp/hook.out 2>&1
lab_check "hook, exit 0" test $? = 0
cat /tmp/hook.out
lab_check "hook, the mount reads srvA" reads /data srvA
lab_check "hook, the registry records the admission" registry_has '"rule": "rule 0 ..lab'
lab_check "hook, recorded networks" registry_has '198\.51\.100\.0/24'
DEV0=$(awk '$5 == "/data" {print $3}' /proc/$C1/mountinfo)

# The CLI's own mount of the same name, for contrast.
mkdir -p /ct/c1/cli
lab_check "cli mounts nfs.lab.test" nsmount mount --pid $C1 -o vers=4.2 nfs.lab.test:/export /cli
lab_check "cli, reads srvA" reads /cli srvA

# --- the container redirects the name --------------------------------------
lab_exec c1 sed -i 's/^198.51.100.1 nfs.lab.test$/203.0.113.10 nfs.lab.test/' /etc/hosts
lab_check_output "route now says srvB's address" "203.0.113.10" nsmount route --pid $C1 nfs.lab.test
check_exit "remount of the hook's mount is refused (11)" 11 nsmount remount --pid $C1 /data
check_says "remount names the rule and networks" 'outside the networks of rule 0 "lab"' nsmount remount --pid $C1 /data
lab_check "after remount, the hook's mount still reads srvA" reads /data srvA
lab_check "after remount, same superblock" test "$(awk '$5 == "/data" {print $3}' /proc/$C1/mountinfo)" = "$DEV0"
lab_check "remount of the CLI's mount follows the name" nsmount remount --pid $C1 /cli
lab_check "the CLI's mount reads srvB" reads /cli srvB
lab_check "cli umount" nsmount umount --pid $C1 /cli

# --- watch: drift, ESTALE, a dead server: never outside the admission -------
nsmount watch --interval 1s --probe-interval 1s --timeout 2s --for 90s >/tmp/watch.log 2>&1 &
WATCH=$!
sleep 1.5
# Drift: c1 gets another source address towards srvA.
ip -n c1 addr add 198.51.100.3/24 dev eth0
ip -n c1 route replace 198.51.100.0/24 dev eth0 src 198.51.100.3
lab_check "watch, drift: denied" wait_for 15 grep -q 'msg=denied mountpoint=/data .*route drift' /tmp/watch.log
lab_check "watch, drift: still on srvA's address" test "$(addr_of /data)" = 198.51.100.1
lab_check "watch, drift: reads srvA" reads /data srvA
ip -n c1 route replace 198.51.100.0/24 dev eth0 src 198.51.100.2
ip -n c1 addr del 198.51.100.3/24 dev eth0
# ESTALE: srvA re-exports with new file handles.
MOUNTD=$(for p in $(ip netns pids srvA); do [ "$(cat /proc/$p/comm)" = rpc.mountd ] && echo $p; done | head -n 1)
nsenter -t $MOUNTD -n -m sh -c 'exportfs -ua && exportfs -o rw,no_root_squash,insecure,no_subtree_check,fsid=77 "*:/export" && exportfs -f'
lab_check "watch, ESTALE: denied" wait_for 15 grep -q 'msg=denied mountpoint=/data .*ESTALE' /tmp/watch.log
lab_check "watch, ESTALE: still on srvA's address" test "$(addr_of /data)" = 198.51.100.1
lab_check_fails "watch, ESTALE: never reads srvB" reads /data srvB
# Dead: srvA's link goes down.
ip -n srvA link set eth0 down
lab_check "watch, dead: reported" wait_for 15 grep -q 'msg=dead mountpoint=/data' /tmp/watch.log
sleep 3
lab_check "watch, dead: still on srvA's address" test "$(addr_of /data)" = 198.51.100.1
lab_check_fails "watch never remounted the hook's mount onto srvB" grep -q 'msg=remounted mountpoint=/data.*203.0.113.10' /tmp/watch.log
ip -n srvA link set eth0 up
# The container points the name back: watch repairs the mount on srvA.
lab_exec c1 sed -i 's/^203.0.113.10 nfs.lab.test$/198.51.100.1 nfs.lab.test/' /etc/hosts
T0=$(now)
lab_check "watch, name back: remounted within the admission" wait_for 30 reads /data srvA
lab_log "watch repaired the mount $(awk -v a=$T0 -v b=$(now) 'BEGIN{printf "%.1f", b - a}') s after the name came back"
lab_check "watch, name back: on srvA's address" test "$(addr_of /data)" = 198.51.100.1
kill $WATCH
wait $WATCH 2>/dev/null
lab_log "watch log:"
cat /tmp/watch.log
grep -c 'msg=denied ' /tmp/watch.log | sed 's/^/lab: denied events: /'

# --- poststop tears down ------------------------------------------------------
lab_check "poststop, nsmount umount /data" nsmount umount --pid $C1 /data
state stopped | nsmount hook --stage poststop >/tmp/hook.out 2>&1
lab_check "poststop, exit 0" test $? = 0
lab_check "no registry entry" registry_is 0
lab_check "no leaks" no_leaks $C1
