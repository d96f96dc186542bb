# Stale NFS client state. Container c1 reaches two servers at the same
# address, srvA (via eth0) and srvB (via eth1, once a /32 route says so).
# A superblock that outlives its mount (a copy propagated into another
# mount namespace; a lazy unmount with an open file) makes the next mount
# of that address share it: without nsmount the remount after the route
# change does not reach srvB. nsmount status names the holder, mount
# refuses or flushes, and the next mount reaches srvB.
set -u
two_servers_one_address
to_b() { ip -n c1 route replace $X/32 via 198.51.100.1 dev eth1; }
to_a() { ip -n c1 route del $X/32 2>/dev/null || true; }
whoami_at() { cat /proc/$C1/root$1/whoami 2>&1; }

# --- a copy propagated into a sidecar's mount namespace -----------------
lab_check mount-a nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
lab_check_output reads-a srvA whoami_at /data
# The sidecar shares c1's netns; its mount namespace is a copy of c1's,
# made while /data was mounted, so it holds a copy of the mount.
nsenter -t $C1 -n -m -- unshare -m sleep 1000 &
SIDE=$!
sleep 0.5
lab_log "sidecar pid $SIDE: $(cat /proc/$SIDE/comm)"
lab_check sidecar-has-copy grep -q ' /data .* - nfs4 ' /proc/$SIDE/mountinfo
lab_check umount-a nsmount umount --pid $C1 /data
lab_check_output superblock-outlives-mount v4 cat /proc/$C1/net/nfsfs/volumes
to_b
lab_check_output route-now-b eth1 ip -n c1 route get $X

# Without nsmount: a plain mount from the container's namespaces.
lab_mount c1 -t nfs4 -o vers=4.2 $X:/export /base
BASE=$(whoami_at /base)
lab_log "plain mount after the route change read: $BASE"
lab_check plain-mount-does-not-reach-b sh -c "! grep -q srvB /proc/$C1/root/base/whoami"
lab_umount c1 /base

# With nsmount: status names the holder and says why.
nsmount status --pid $C1 || true
check_says status-stale STALE nsmount status --pid $C1 --no-probe
check_says status-holder "(pid $SIDE)" nsmount status --pid $C1 --no-probe
check_says status-effect "shares this superblock's NFS client" nsmount status --pid $C1 --no-probe
check_says status-json-stale '"stale": true' nsmount status --pid $C1 --no-probe --json
check_exit refuse-stale 12 nsmount mount --pid $C1 --stale refuse -o vers=4.2 $X:/export /data
check_says refuse-names-holder "pid $SIDE" nsmount mount --pid $C1 --stale refuse -o vers=4.2 $X:/export /data
lab_check sidecar-untouched-by-refuse grep -q ' /data .* - nfs4 ' /proc/$SIDE/mountinfo
check_says flush-dry-run "would do" nsmount flush --pid $C1 --dry-run
lab_check sidecar-untouched-by-dry-run grep -q ' /data .* - nfs4 ' /proc/$SIDE/mountinfo
# The default policy flushes the stale copy, then mounts.
check_says mount-flushes "flushed" nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
lab_check_output reads-b srvB whoami_at /data
lab_check sidecar-copy-gone sh -c "! grep -q ' - nfs4 ' /proc/$SIDE/mountinfo"
lab_check_output clientaddr-eth1 clientaddr=198.51.100.2 grep ' /data ' /proc/$C1/mountinfo
check_says status-ok-after " ok" nsmount status --pid $C1
kill $SIDE 2>/dev/null; wait $SIDE 2>/dev/null
lab_check umount-b nsmount umount --pid $C1 /data
to_a

# --- a lazy unmount that an open file keeps alive -----------------------
lab_check mount-a2 nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
nsenter -t $C1 -n -m -r -w -- sh -c 'exec 3</data/whoami; exec sleep 1000' &
HOLD=$!
sleep 0.5
lab_log "holder pid $HOLD: $(cat /proc/$HOLD/comm)"
nsenter -t $C1 -m umount -l /data
to_b
check_says status-forgets-lazy "forgotten" nsmount status --pid $C1 --no-probe
check_says status-names-fd "held open by pid $HOLD (sleep): fd 3" nsmount status --pid $C1 --no-probe
check_exit flush-mount-refused 12 nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
check_says refused-names-fd "held open by pid $HOLD" nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
check_says flush-without-kill "use --kill" nsmount flush --pid $C1
lab_check holder-alive kill -0 $HOLD
T0=$(date +%s.%N)
check_says flush-kill "flushed superblock" nsmount flush --pid $C1 --kill
lab_log "flush --kill took $(awk "BEGIN{print $(date +%s.%N) - $T0}") s"
lab_check_fails holder-ended kill -0 $HOLD
wait $HOLD 2>/dev/null
lab_check_output no-client-left 0 nfs_clients $C1
lab_check mount-b2 nsmount mount --pid $C1 -o vers=4.2 $X:/export /data
lab_check_output reads-b2 srvB whoami_at /data

# --- a corrupt registry is set aside and rebuilt from mountinfo ----------
# An entry file edited (its checksum no longer matches): set aside, and the
# entry rebuilt from the kernel's mountinfo.
ENTRY=$(ls /run/nsmount/entries/*.json)
sed -i 's|"/data"|"/dbta"|' $ENTRY
check_says corrupt-detected "checksum mismatch" nsmount status --pid $C1 --no-probe
lab_check corrupt-set-aside sh -c "ls $ENTRY.corrupt-*"
check_says rebuilt-entry "$X:/export" nsmount status --pid $C1 --no-probe
lab_check rebuilt-marked grep -q '"rebuilt": true' $ENTRY
# A registry of an earlier release (one registry.json) that is corrupt: set
# aside too.
echo '{"version":1,"checksum":"sha256:00","state":{"entries":[]}}' >/run/nsmount/registry.json
check_says legacy-corrupt-detected "checksum mismatch" nsmount status --pid $C1 --no-probe
lab_check legacy-set-aside sh -c 'ls /run/nsmount/registry.json.corrupt-*'
lab_check umount-rebuilt nsmount umount --pid $C1 /data
lab_check no-leaks no_leaks $C1
lab_check registry-empty registry_is 0
