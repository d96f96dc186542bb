# A container whose NFS server is reachable only from its own netns:
# mount every NFS version with nsmount, write through the mount, find the
# file in the server's export, and check where the mount is and is not.
set -u
one_server_one_container

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
	lab_check_output list-addr-v$v "\"address\": \"$S\"" nsmount list --pid $PID --json
	if [ $v != 3 ]; then
		lab_check_output clientaddr-is-container-source-v$v '"clientaddr": "198.51.100.2"' nsmount list --pid $PID --json
	fi
	lab_check umount-v$v nsmount umount --pid $PID /data
	lab_check no-leak-after-umount-v$v no_leaks $PID
done

# -t nfs without vers negotiates the highest version, like mount.nfs.
lab_check_output default-version-4.2 '"version": "4.2"' nsmount mount --pid $PID --json $S:/export /data
lab_check_output default-options-nosuid-nodev 'nosuid,nodev' grep " /data " /proc/$PID/mountinfo
# A plain umount says what it did on stdout, and nothing on stderr (it
# once reported its own entry as "forgotten ... no longer in mount
# namespace", as if something were wrong).
nsmount umount --pid $PID /data >/tmp/umount.out 2>/tmp/umount.err
lab_check umount-default test $? = 0
lab_check_output umount-says-unmounted "unmounted /data" cat /tmp/umount.out
lab_check umount-quiet-on-stderr test ! -s /tmp/umount.err

# Namespaces named by path instead of a PID; --mkdir creates the target in
# the container's root.
lab_check mount-by-paths nsmount mount --netns /run/netns/c1 --mntns /proc/$PID/ns/mnt -t nfs4 --mkdir $S:/export /mnt/by/paths
lab_check_output paths-target-created srv1 lab_exec c1 cat /mnt/by/paths/whoami
lab_check_fails mkdir-not-on-vm test -e /mnt/by/paths
lab_check_output list-by-paths /mnt/by/paths nsmount list --netns /run/netns/c1 --mntns /proc/$PID/ns/mnt
lab_check umount-by-paths nsmount umount --netns /run/netns/c1 --mntns /proc/$PID/ns/mnt /mnt/by/paths

# An unmount through a symlink to the mount point waits for a probe in
# flight, as one through the mount point does: it takes the mount's lock,
# named by the mount point nsmount recorded, not by the path given. A
# process holds that lock shared, as watch's and status's probes do, and
# keeps the mount busy for 2 s (its working directory, as a probe's open
# file); the unmount through /held-link must wait and then succeed. It
# failed at once with EBUSY (exit 7) when it locked the symlink's path.
# 7afcf9f92875bcdd is FNV-1a (64 bits) of "/held", the lock name's end.
lab_check mount-held nsmount mount --pid $PID --mkdir $S:/export /held
ln -s /held /proc/$PID/root/held-link
nsmount status --pid $PID >/dev/null
HELD_LOCK=$(ls /run/nsmount/locks/netns-*-mount-*-7afcf9f92875bcdd)
cat >/tmp/held.sh <<EOS
flock -s $HELD_LOCK sh -c 'cd /proc/$PID/root/held && sleep 2' &
sleep 0.3
T0=\$(awk '{print \$1}' /proc/uptime)
nsmount umount --pid $PID /held-link >/tmp/held.out 2>&1
echo "rc=\$? after \$(awk -v a=\$T0 '{printf "%.2f", \$1 - a}' /proc/uptime) s" >>/tmp/held.out
wait
EOS
sh /tmp/held.sh
lab_log "umount through a symlink while a probe holds the mount: $(tr '\n' ' ' </tmp/held.out)"
lab_check_output umount-via-symlink-waits-for-probe "unmounted /held-link" cat /tmp/held.out
lab_check_output umount-via-symlink-exit-0 "rc=0 " cat /tmp/held.out
lab_check_fails umount-via-symlink-gone-and-forgotten sh -c "{ nsmount list --pid $PID; nsmount status --no-probe; } | grep -q /held"
lab_check no-leak-at-end no_leaks $PID
nsmount list --pid $PID

# Why verification matters: the VM's own network reaches a *different* server
# at the same address. A mount made by entering only the container's mount
# namespace (the naive way) connects from the VM's netns and reaches srv2,
# yet looks the same in mountinfo. nsmount's mount reaches srv1, and
# nsmount list tells the two apart through the netns's nfsfs/volumes.
lab_netns srv2
lab_veth srv2 eth0 198.51.100.1/24 - lab0 198.51.100.9/24
lab_nfsd srv2 srv2
lab_exec c1 mkdir -p /naive
nsenter -t $PID -m /bin/busybox mount -t nfs4 -o vers=4.2,addr=$S,clientaddr=198.51.100.9 $S:/export /naive
lab_check_output naive-mount-reaches-wrong-server srv2 lab_exec c1 cat /naive/whoami
lab_check nsmount-mount-reaches-right-server nsmount mount --pid $PID $S:/export /data
lab_check_output nsmount-reads-srv1 srv1 lab_exec c1 cat /data/whoami
nsmount list --pid $PID
lab_check_output list-flags-naive-mount '"target": "/naive"' sh -c "nsmount list --pid $PID --json | grep -B3 -A11 '\"target\": \"/naive\"' | grep -q '\"in_netns\": false' && echo '\"target\": \"/naive\"'"
lab_check_output list-verifies-nsmount-mount '"in_netns": true' sh -c "nsmount list --pid $PID --json | grep -A12 '\"target\": \"/data\"'"
nsenter -t $PID -m /bin/busybox umount /naive
lab_check umount-final nsmount umount --pid $PID /data
