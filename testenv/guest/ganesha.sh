# NFS-Ganesha setup (/usr/lib/nsmount-lab/ganesha.sh NAME DIR ID [LOG]), run by
# lab_ganesha in the server's netns and a fresh private mount namespace,
# with stdout and stderr on the server's log. It gives the instance its own
# /run (rpcbind's socket, the pid file, the config) and /var/lib/nfs (NFSv4
# recovery, statd), starts rpcbind and rpc.statd (for NFSv3), then
# ganesha.nfsd in the foreground, in the background of this script, and
# returns once the server answers. The daemons keep the namespaces alive.
set -e
name=$1
dir=$2
id=$3
logconf=${4:-}
log() { read up _ </proc/uptime; echo "[$up] $*"; }
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/rpcbind /run/ganesha
mount -t tmpfs -o mode=0755 tmpfs /var/lib/nfs
mkdir -p /var/lib/nfs/ganesha /var/lib/nfs/sm /var/lib/nfs/sm.bak
rpcbind -w
rpc.statd --no-notify
log "rpcbind, statd started"
# Mount_Path_Pseudo: NFSv3 clients mount the pseudo path (/export) too, as
# with lab_nfsd. Numeric owners and getpwnam: no idmapping through
# libnfsidmap, which fails without /etc/idmapd.conf (the kernel client sends
# numeric ids with sec=sys). No Kerberos, no quotas. Graceless: no 90 s of
# NFS4ERR_GRACE after a start.
cat >/run/ganesha/ganesha.conf <<EOF
NFS_CORE_PARAM {
	Protocols = 3, 4;
	Mount_Path_Pseudo = true;
	Enable_RQUOTA = false;
}
NFSV4 {
	Graceless = true;
	Lease_Lifetime = 10;
	Minor_Versions = 0, 1, 2;
	Allow_Numeric_Owners = true;
	Only_Numeric_Owners = true;
	UseGetpwnam = true;
}
NFS_KRB5 {
	Active_krb5 = false;
}
EXPORT {
	Export_Id = $id;
	Path = "$dir";
	Pseudo = /export;
	Protocols = 3, 4;
	Transports = TCP, UDP;
	Access_Type = RW;
	Squash = No_Root_Squash;
	SecType = sys;
	FSAL {
		Name = VFS;
	}
}
LOG {
	Default_Log_Level = EVENT;
	$logconf
}
EOF
start() {
	log "starting ganesha.nfsd"
	ganesha.nfsd -F -L STDERR -f /run/ganesha/ganesha.conf -p /run/ganesha/ganesha.pid </dev/null &
	pid=$!
}
start
restarts=0
i=0
# Ready: NFS v4 and v3 answer a NULL call over TCP (rpcinfo -t: port 2049
# as rpcbind says) and MOUNT lists the export (showmount -e).
until rpcinfo -t 127.0.0.1 nfs 4 >/dev/null 2>&1 && rpcinfo -t 127.0.0.1 nfs 3 >/dev/null 2>&1 &&
	showmount -e 127.0.0.1 2>/dev/null | grep -q '^/export '; do
	if ! kill -0 $pid 2>/dev/null; then
		status=0
		wait $pid || status=$?
		# Debian 12's Ganesha (4.3) has crashed with SIGSEGV while starting
		# as 50 clients reconnected at once (the migration scenario):
		# restarted, as systemd's Restart=on-failure would, at most twice.
		if [ $status -gt 128 ] && [ $restarts -lt 2 ]; then
			restarts=$((restarts + 1))
			echo "RESTARTED: ganesha.nfsd was killed by signal $((status - 128)) while starting: restarting ($restarts)" >&2
			start
			continue
		fi
		echo "ganesha.nfsd exited (status $status)" >&2
		exit 1
	fi
	i=$((i + 1))
	if [ $i -gt 3000 ]; then
		echo "ganesha.nfsd not answering after 30s" >&2
		exit 1
	fi
	sleep 0.01
done
log "ganesha $name ready (pid $pid)"
