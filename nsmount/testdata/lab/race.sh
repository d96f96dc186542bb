# Concurrency (issue 10, defect 3): 16 containers mount one server at the
# same moment; four of them share one network namespace, as a pod's
# containers do. Every mount reported "mounted" must be in place afterwards,
# readable from its container, and recorded. The old code lost one pod
# member's mount in 4 of 5 runs: a concurrent mount in the same netns took
# the other's just-made, not yet recorded superblock for stale state and
# unmounted it. ROUNDS rounds of all-at-once mount, check, all-at-once
# umount.
set -u
S=198.51.100.1
ROUNDS=${ROUNDS:-5}
mkdir -p /data
lab_netns srv >/dev/null
ip -n srv addr add $S/32 dev lo
lab_nfsd srv srv >/dev/null || exit 1

# Twelve containers with a netns each, and the pod: p1 and three more
# members in p1's netns, each with a mount namespace of its own.
PIDS=
for i in $(seq 1 12); do
	lab_light_routed s$i srv 203.0.113.$((10 + i)) $S >/dev/null || exit 1
	PIDS="$PIDS $(lab_pid s$i)"
done
lab_light_routed p1 srv 203.0.113.50 $S >/dev/null || exit 1
P1=$(lab_pid p1)
POD="$P1"
for i in 2 3 4; do
	nsenter --net=/proc/$P1/ns/net -- unshare -m -u --propagation private -- sleep 2147483647 &
	POD="$POD $!"
done
PIDS="$PIDS $POD"
# Each member is nsenter, then unshare, then sleep: ready once it is sleep.
is_sleep() { [ "$(cat /proc/$1/comm 2>/dev/null)" = sleep ]; }
for p in $POD; do wait_for 10 is_sleep $p; done
lab_check "pod members share one netns" test "$(for p in $POD; do readlink /proc/$p/ns/net; done | sort -u | grep -c .)" = 1
lab_check "pod members have their own mount namespaces" test "$(for p in $POD; do readlink /proc/$p/ns/mnt; done | sort -u | grep -c .)" = 4
N=$(echo $PIDS | wc -w)

now() { read -r _up _ </proc/uptime && echo "$_up"; }
mounted_in() { grep -q " /data .* - nfs4 " /proc/$1/mountinfo && [ "$(cat /proc/$1/root/data/whoami 2>/dev/null)" = srv ]; }

lost_total=0
for r in $(seq 1 $ROUNDS); do
	T0=$(now)
	JOBS=
	for p in $PIDS; do
		(nsmount mount --pid $p -o vers=4.2 $S:/export /data >/tmp/race-$p.out 2>&1; echo $? >/tmp/race-$p.rc) &
		JOBS="$JOBS $!"
	done
	wait $JOBS # not the pod members: they are this shell's jobs too
	T1=$(now)
	ok=0 failed= lost=
	for p in $PIDS; do
		if [ "$(cat /tmp/race-$p.rc)" != 0 ]; then
			failed="$failed $p($(tr '\n' ' ' </tmp/race-$p.out))"
		elif mounted_in $p; then
			ok=$((ok + 1))
		else
			lost="$lost $p"
		fi
	done
	lost_total=$((lost_total + $(echo $lost | wc -w)))
	lab_log "round $r: $N mounts at once in $(awk -v a=$T0 -v b=$T1 'BEGIN{printf "%.2f", b - a}') s; in place $ok, lost:${lost:- none}, failed:${failed:- none}"
	lab_check "round $r: every mount succeeded" test -z "$failed"
	lab_check "round $r: every mount reported mounted is in place and reads the server" test -z "$lost"
	lab_check "round $r: $N registry entries" registry_is $N
	lab_check "round $r: the pod's netns has one NFS client" test "$(nfs_clients $P1)" = 1
	JOBS=
	for p in $PIDS; do
		(nsmount umount --pid $p /data >/tmp/race-$p.out 2>&1; echo $? >/tmp/race-$p.rc) &
		JOBS="$JOBS $!"
	done
	wait $JOBS
	lab_check "round $r: every umount succeeded" sh -c "! grep -vx 0 $(for p in $PIDS; do printf '/tmp/race-%s.rc ' $p; done)"
	lab_check "round $r: no NFS mount left" test "$(all_nfs_mounts)" = 0
	lab_check "round $r: no registry entry left" registry_is 0
done
lab_log "lost mounts over $ROUNDS rounds: $lost_total"
KILLED=
for p in $POD; do [ "$p" = "$P1" ] || { kill $p; KILLED="$KILLED $p"; }; done
wait $KILLED 2>/dev/null
lab_check "no nsmount process left" sh -c '! pidof nsmount nsmount-helper'
