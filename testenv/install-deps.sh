#!/bin/sh
# Install the host packages the nsmount lab needs (Debian 12), skipping
# those already present (runc: the OCI hook tests). Run as root. The lab
# itself downloads the kernel.
set -e
need=
check() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] || need="$need $2"; }
check qemu-system-x86_64 qemu-system-x86
check busybox busybox-static
check dash dash
check ip iproute2
check nsenter util-linux
check mount mount
check insmod kmod
check rpc.nfsd nfs-kernel-server
check mount.nfs nfs-common
check rpcbind rpcbind
# The resolver interop tests (routing/resolver) run a real dnsmasq.
check dnsmasq dnsmasq-base
check containerd containerd
check runc runc
check apt-get apt
check dpkg dpkg
# CNI plugins for the host tests of the chained plugin (not a command in $PATH).
[ -x /usr/lib/cni/bridge ] || need="$need containernetworking-plugins"
if [ -n "$need" ]; then
	echo "installing:$need"
	apt-get update
	# Keep the packages' services (containerd, nfs-server, rpcbind) from
	# starting: the tests run their own private instances.
	policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 0755 /usr/sbin/policy-rc.d
		policy=1
	fi
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need || { [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d; exit 1; }
	[ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
fi
if ldd "$(command -v busybox)" >/dev/null 2>&1; then
	echo "warning: busybox is dynamically linked; busybox-static is expected (containers get a copy)" >&2
fi
echo "lab host dependencies present"
