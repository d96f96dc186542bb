# nsmount demo: an NFS server and a container in two network namespaces;
# nsmount mounts the server's export into the container from outside.
set -e

heading() { echo; echo "=== $* ==="; }

heading "topology: server srv1 198.51.100.1/24 <-veth-> container c1 198.51.100.2/24"
lab_netns srv1
lab_container c1
lab_veth srv1 eth0 198.51.100.1/24 c1 eth0 198.51.100.2/24
lab_nfsd srv1 srv1
pid=$(lab_pid c1)

heading "nsmount mount --pid $pid 198.51.100.1:/export /data"
nsmount mount --pid "$pid" 198.51.100.1:/export /data

heading "the container writes a file to /data"
lab_exec c1 sh -c 'echo "hello from $(hostname)" > /data/hello.txt; ls -l /data'

heading "server side: /srv/srv1 in the VM"
ls -l /srv/srv1
cat /srv/srv1/hello.txt

heading "nsmount list --pid $pid"
nsmount list --pid "$pid"

heading "the container's mount table"
grep ' /data ' "/proc/$pid/mounts"

heading "the VM's own mount table has no NFS mount"
if grep -E ' nfs4? ' /proc/self/mounts; then
	echo "unexpected: NFS mount visible in the VM's mount namespace"
	exit 1
fi
echo "(none)"

heading "nsmount umount --pid $pid /data"
nsmount umount --pid "$pid" /data
if grep ' /data ' "/proc/$pid/mounts"; then
	echo "unexpected: /data still mounted"
	exit 1
fi
echo "unmounted"
lab_check demo-file-on-server grep -q "hello from c1" /srv/srv1/hello.txt
