# The core scenarios with NFS-Ganesha (FSAL VFS) as the server; the run
# installs it (testenv.WithGanesha, nsmount-lab run --with ganesha):
# every NFS version Ganesha serves, mounted from a container whose server
# only its netns reaches; a Ganesha restart (file handles kept); the
# three-level routing case with Ganesha servers; stale client state after a
# route change to another Ganesha at the same address; and kernel nfsd
# replaced by Ganesha at the same address and directory, where the old
# mounts' file handles fail (the errno is checked: the storage migration
# depends on it).
set -u
now() { awk '{print $1}' /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b - a}'; }
# errno_of CMD...: CMD's error message (its last stderr line), or "ok".
errno_of() { "$@" >/dev/null 2>/tmp/errno.out && echo ok || tail -n 1 /tmp/errno.out; }
# fails_with ERE CMD...: CMD fails and its output matches ERE.
fails_with() {
	_re=$1
	shift
	if _out=$("$@" 2>&1); then
		echo "succeeded: $_out"
		return 1
	fi
	printf '%s\n' "$_out" | grep -Eq "$_re" || { echo "$_out"; return 1; }
}

# --- every version, from a container whose server only its netns reaches --
T=$(now)
one_server_one_container lab_ganesha
lab_log "ganesha: one server and a container in $(since $T) s"
lab_check_fails vm-has-no-route-to-server ip route get $S
for v in 4.2 4.1 4.0 3; do
	opts=vers=$v
	[ $v = 3 ] && opts=vers=3,nolock
	lab_check mount-v$v nsmount mount --pid $PID -o $opts $S:/export /data
	lab_check write-v$v lab_exec c1 sh -c "echo written-by-c1-v$v > /data/c1-v$v"
	lab_check_output server-has-file-v$v written-by-c1-v$v cat /srv/srv1/c1-v$v
	lab_check_output container-reads-server-v$v srv1 lab_exec c1 cat /data/whoami
	lab_check mount-in-container-ns-v$v grep -qE " /data .* - nfs4? $S:/export " /proc/$PID/mountinfo
	lab_check_output not-in-vm-mount-ns-v$v 0 nfs_mounts /proc/self/mountinfo
	lab_check_output list-verified-v$v '"in_netns": true' nsmount list --pid $PID --json
	lab_check umount-v$v nsmount umount --pid $PID /data
	lab_check no-leak-after-umount-v$v no_leaks $PID
done
lab_check_output default-version-4.2 '"version": "4.2"' nsmount mount --pid $PID --json $S:/export /data
lab_check umount-default nsmount umount --pid $PID /data

# A restart (same directory, same Export_Id) keeps the file handles: mounts
# and a file opened before go on without a remount; NFSv4 open state is
# re-established although Ganesha has no grace period.
lab_check restart-mount-v4.2 nsmount mount --pid $PID --mkdir -o vers=4.2 $S:/export /r42
lab_check restart-mount-v3 nsmount mount --pid $PID --mkdir -o vers=3,nolock $S:/export /r3
echo kept >/srv/srv1/kept
lab_exec c1 sh -c 'exec 3</r42/kept; while [ ! -e /tmp/go ]; do sleep 0.1; done; cat <&3 >/tmp/held.out 2>&1; mv /tmp/held.out /tmp/held' &
HELD=$!
sleep 0.5
T=$(now)
lab_check ganesha-stop lab_ganesha_stop srv1
lab_log "ganesha: stopped in $(since $T) s"
T=$(now)
lab_check ganesha-restart lab_ganesha srv1 srv1
lab_log "ganesha: restarted in $(since $T) s"
lab_check_output restart-v4.2-reads srv1 lab_exec c1 cat /r42/whoami
lab_check_output restart-v3-reads srv1 lab_exec c1 cat /r3/whoami
lab_check restart-v4.2-writes lab_exec c1 sh -c 'echo after-restart > /r42/after'
touch /proc/$PID/root/tmp/go
wait_for 20 test -e /proc/$PID/root/tmp/held
lab_check_output restart-open-file-reads kept cat /proc/$PID/root/tmp/held
kill $HELD 2>/dev/null
wait $HELD 2>/dev/null
for m in /r42 /r3; do nsmount umount --pid $PID $m >/dev/null; done
lab_check no-leak-after-restart no_leaks $PID
lab_stop c1 >/dev/null
ip netns del c1

# --- three contexts, one address, three servers (routing.sh's case) -----
#
#   laptop (the VM's netns) --- srvL 203.0.113.10 (kernel nfsd)
#     | 198.51.100.1/.2
#   kvm (container) ----------- srvK 203.0.113.10 (Ganesha), DNS 192.0.2.53 (nfs -> 203.0.113.10)
#     | 192.0.2.1/.10
#   c1 (container) ------------ srvC 203.0.113.10 (Ganesha)
three_level_net
lab_nfsd srvL srvL
lab_ganesha srvK srvK
lab_ganesha srvC srvC
lab_dns kvm 192.0.2.53 nfs.lab.test=203.0.113.10
three_levels $X

# A name, resolved by the container's own DNS server through its network.
mount_read name-c1 $C1 nfs srvC vers=4.1
mount_read name-kvm $KVM nfs.lab.test srvK vers=4.0
lab_check no-leak-c1 no_leaks $C1
lab_check no-leak-kvm no_leaks $KVM
lab_stop c1 >/dev/null
ip netns del c1

# --- stale client state: a sidecar keeps the superblock, the route moves -
# Container c1 reaches Ganesha srvA (via eth0) and Ganesha srvB (via eth1,
# once a /32 route says so) at the same address.
two_servers_one_address lab_ganesha
whoami_at() { cat /proc/$C1/root$1/whoami 2>&1; }
lab_check stale-mount-a nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
lab_check_output stale-reads-a srvA whoami_at /data
nsenter -t $C1 -n -m -- unshare -m sleep 1000 &
SIDE=$!
sleep 0.5
lab_check stale-sidecar-has-copy grep -q ' /data .* - nfs4 ' /proc/$SIDE/mountinfo
lab_check stale-umount-a nsmount umount --pid $C1 /data
lab_check_output stale-superblock-outlives-mount v4 cat /proc/$C1/net/nfsfs/volumes
ip -n c1 route replace $X/32 via 198.51.100.1 dev eth1
lab_mount c1 -t nfs4 -o vers=4.2 $X:/export /base
lab_log "ganesha: a plain mount after the route change read: $(whoami_at /base)"
lab_check stale-plain-mount-does-not-reach-b sh -c "! grep -q srvB /proc/$C1/root/base/whoami"
lab_umount c1 /base
check_says stale-status-holder "(pid $SIDE)" nsmount status --pid $C1 --no-probe
check_exit stale-refuse 12 nsmount mount --pid $C1 --stale refuse -o vers=4.2 $X:/export /data
T=$(now)
check_says stale-mount-flushes "flushed" nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
lab_log "ganesha: flush and mount after the route change in $(since $T) s"
lab_check_output stale-reads-b srvB whoami_at /data
lab_check stale-sidecar-copy-gone sh -c "! grep -q ' - nfs4 ' /proc/$SIDE/mountinfo"
lab_check_output stale-clientaddr-eth1 clientaddr=198.51.100.2 grep ' /data ' /proc/$C1/mountinfo
kill $SIDE 2>/dev/null
wait $SIDE 2>/dev/null
lab_check stale-umount-b nsmount umount --pid $C1 /data
lab_check stale-no-leaks no_leaks $C1

# --- kernel nfsd replaced by Ganesha at the same address and directory ----
# Mounts made against kernel nfsd hold nfsd's file handles, which Ganesha
# rejects as malformed: NFS4ERR_BADHANDLE / NFS3ERR_BADHANDLE, which the
# Linux client returns as errno 521 (EBADHANDLE, "Unknown error 521"), not
# ESTALE. Opening the mount root as a directory while its attributes are
# still cached gives ESTALE instead. A fresh mount reads everything written
# before the switch.
lab_netns srvM
lab_container m1
lab_veth srvM eth0 192.0.2.1/24 m1 eth0 192.0.2.2/24
lab_nfsd srvM mig
M1=$(lab_pid m1)
for t in m42 m41 m3 m42noac m3noac; do
	case $t in
	m42) o=vers=4.2 ;;
	m41) o=vers=4.1 ;;
	m3) o=vers=3,nolock ;;
	m42noac) o=vers=4.2,noac ;;
	m3noac) o=vers=3,nolock,noac ;;
	esac
	lab_check migration-mount-$t nsmount mount --pid $M1 --mkdir -o $o 192.0.2.1:/export /$t
	lab_check migration-write-$t lab_exec m1 sh -c "echo before-$t > /$t/before-$t"
	echo unread >/srv/mig/unread-$t
	# Opened before the switch, read (nothing cached) after it.
	lab_exec m1 sh -c "exec 3</$t/unread-$t; while [ ! -e /tmp/go ]; do sleep 0.1; done; cat <&3 >/dev/null 2>/tmp/held-$t; echo \$? >>/tmp/held-$t" &
done
sleep 0.5
T=$(now)
lab_check migration-nfsd-stop lab_nfsd_stop srvM
lab_log "migration: nfsd stopped in $(since $T) s"
lab_check migration-ganesha-start lab_ganesha srvM mig
lab_log "migration: Ganesha serves /srv/mig at 192.0.2.1 $(since $T) s after the stop began"
touch /proc/$M1/root/tmp/go
for t in m42 m41 m3 m42noac m3noac; do
	lab_log "migration $t: root stat: $(errno_of lab_exec m1 stat /$t); root ls: $(errno_of lab_exec m1 ls /$t); file stat: $(errno_of lab_exec m1 stat /$t/whoami); file cat: $(errno_of lab_exec m1 cat /$t/whoami); create: $(errno_of lab_exec m1 touch /$t/new)"
done
for t in m42 m41 m3 m42noac m3noac; do
	wait_for 10 grep -q '^[0-9]' /proc/$M1/root/tmp/held-$t
	lab_log "migration $t: read of a file opened before: $(tr '\n' ' ' </proc/$M1/root/tmp/held-$t)"
	check_says migration-open-file-$t-ebadhandle "Unknown error 521" cat /proc/$M1/root/tmp/held-$t
	check_says migration-file-cat-$t-ebadhandle "Unknown error 521" lab_exec m1 cat /$t/whoami
	check_says migration-file-stat-$t-ebadhandle "Unknown error 521" lab_exec m1 stat /$t/whoami
	lab_check migration-root-ls-$t-fails fails_with 'Stale file handle|Unknown error 521' lab_exec m1 ls /$t
done
check_says migration-root-stat-noac-v4.2-ebadhandle "Unknown error 521" lab_exec m1 stat /m42noac
check_says migration-root-stat-noac-v3-ebadhandle "Unknown error 521" lab_exec m1 stat /m3noac
nsmount status --pid $M1 2>&1 | sed 's/^/migration status: /'
lab_check migration-fresh-mount nsmount mount --pid $M1 --mkdir -o vers=4.2 192.0.2.1:/export /fresh
lab_check_output migration-fresh-reads-whoami mig lab_exec m1 cat /fresh/whoami
lab_check_output migration-fresh-reads-old-writes before-m3noac lab_exec m1 sh -c 'cat /fresh/before-*'
lab_check migration-fresh-writes lab_exec m1 sh -c 'echo after > /fresh/after'
lab_check_output migration-export-has-new-file after cat /srv/mig/after
dmesg | grep -E 'NFS|nfs' | tail -n 5
