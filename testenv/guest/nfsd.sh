# NFS server setup (/usr/lib/nsmount-lab/nfsd.sh NAME FSID), run by lab_nfsd
# in the server's netns and a fresh private mount namespace. The daemons it
# starts keep the namespaces alive after it returns.
set -e
name=$1
fsid=$2
log() { read up _ </proc/uptime; echo "[$up] $*"; }
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/rpcbind /run/lab
mount -t tmpfs -o mode=0755 tmpfs /var/lib/nfs
mkdir -p /var/lib/nfs/rpc_pipefs /var/lib/nfs/nfsdcld /var/lib/nfs/sm /var/lib/nfs/sm.bak /var/lib/nfs/v4recovery
: >/var/lib/nfs/etab
: >/var/lib/nfs/rmtab
mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
mount -t nfsd nfsd /proc/fs/nfsd
mount --bind "/srv/$name" /export
log "mounts ready"
rpcbind -w
rpc.statd --no-notify
log "rpcbind, statd started"
exportfs -o "rw,no_root_squash,insecure,no_subtree_check,fsid=$fsid" "*:/export"
rpc.mountd
log "mountd started"
nfsdcld -F >/dev/null 2>&1 </dev/null &
cld=$!
i=0
until ls -l /proc/$cld/fd 2>/dev/null | grep -q inotify; do
	i=$((i + 1))
	if [ $i -gt 500 ] || ! kill -0 $cld 2>/dev/null; then
		echo "nfsdcld did not start" >&2
		exit 1
	fi
	sleep 0.01
done
log "nfsdcld ready"
echo 10 >/proc/fs/nfsd/nfsv4leasetime
echo 10 >/proc/fs/nfsd/nfsv4gracetime
rpc.nfsd 4
i=0
while :; do
	read threads </proc/fs/nfsd/threads
	if [ "$threads" -gt 0 ] && rpcinfo -p 127.0.0.1 >/run/lab/rpcinfo 2>&1 &&
		grep -q nfs /run/lab/rpcinfo && grep -q mountd /run/lab/rpcinfo; then
		break
	fi
	i=$((i + 1))
	if [ $i -gt 500 ]; then
		echo "nfsd not registered: threads=$threads" >&2
		cat /run/lab/rpcinfo >&2
		exit 1
	fi
	sleep 0.01
done
log "nfsd $name ready"
