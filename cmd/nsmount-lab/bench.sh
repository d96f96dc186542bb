# nsmount-lab bench: nsmount next to nsenter + nfs-utils' mount.nfs, in one
# VM, same server, same container, sequential runs; then nsmount status
# with STATUS_N tracked mounts, one in each of STATUS_N containers.
set -e
lab_netns srv1
lab_container c1
lab_veth srv1 eth0 198.51.100.1/24 c1 eth0 198.51.100.2/24
ip -n srv1 addr add 198.51.100.53/24 dev eth0
lab_nfsd srv1 srv1
lab_dns srv1 198.51.100.53 nfs.lab.test=198.51.100.1
PID=$(lab_pid c1)
printf 'nameserver 198.51.100.53\nsearch lab.test\n' > /proc/$PID/root/etc/resolv.conf
N=${BENCH_N:-20}
UMOUNT="nsenter -t $PID -m /bin/busybox umount /data"
# Warm up: the first mount of a boot pays for module and client set-up.
nsmount mount --pid $PID 198.51.100.1:/export /data && $UMOUNT

nsmount-lab time -n $N --name "nsmount route (address)" -- nsmount route --pid $PID 198.51.100.1
nsmount-lab time -n $N --name "nsmount route (dns name)" -- nsmount route --pid $PID nfs
nsmount-lab time -n $N --name "nsmount mount v4.2" --after "$UMOUNT" -- nsmount mount --pid $PID -o vers=4.2 198.51.100.1:/export /data
nsmount-lab time -n $N --name "nsmount mount v4.2 (dns name)" --after "$UMOUNT" -- nsmount mount --pid $PID -o vers=4.2 nfs:/export /data
# The usual way: enter the container's namespaces and run mount.nfs. The
# VM's root is kept (--root=/) so that mount.nfs and its libraries exist;
# the mount point is the container's /data, reached through /proc.
nsmount-lab time -n $N --name "nsenter + mount.nfs v4.2" --after "$UMOUNT" -- nsenter -t $PID -n -m --root=/ --wd=/ /sbin/mount.nfs 198.51.100.1:/export /proc/$PID/root/data -o vers=4.2
# By name it cannot work that way: mount.nfs runs with the VM's root, so it
# resolves with the VM's resolv.conf and hosts, not the container's.
if out=$(nsenter -t $PID -n -m --root=/ --wd=/ /sbin/mount.nfs nfs.lab.test:/export /proc/$PID/root/data -o vers=4.2 2>&1); then
	$UMOUNT
	echo "NOTE nsenter + mount.nfs by name: worked"
else
	echo "NOTE nsenter + mount.nfs by name: fails, it resolves with the VM's files: $out"
fi

# nsmount status with STATUS_N tracked mounts: STATUS_N light containers
# (own net, mount and UTS namespaces), each with a veth to srv1 and one
# NFSv4.2 mount.
STATUS_N=${BENCH_STATUS_N:-200}
ip -n srv1 addr add 192.0.2.1/32 dev lo
mkdir -p /data
i=0
while [ $i -lt "$STATUS_N" ]; do
	lab_light_routed s$i srv1 203.0.113.$((i % 250 + 1)) 192.0.2.1 >/dev/null
	nsmount mount --pid "$(lab_pid s$i)" -o vers=4.2 192.0.2.1:/export /data >/dev/null
	i=$((i + 1))
done
echo "NOTE status: $STATUS_N containers with one mount each; VM memory available $(awk '/^MemAvailable/ { print int($2 / 1024) }' /proc/meminfo) MiB"
nsmount-lab time -n 5 --name "nsmount status --no-probe, $STATUS_N mounts" -- nsmount status --no-probe
nsmount-lab time -n 3 --name "nsmount status, $STATUS_N mounts" -- nsmount status
nsmount-lab time -n 10 --name "nsmount mount v4.2, $STATUS_N other mounts" --after "$UMOUNT" -- nsmount mount --pid $PID -o vers=4.2 198.51.100.1:/export /data
