// Package testenv is the nested-VM lab of nsmount: it boots throwaway
// Debian cloud-kernel VMs under qemu that run scenario scripts with real
// kernel NFS servers, network namespaces and containers, which the host
// (no NFS in its kernel) cannot provide.
//
// A Lab is prepared once (New): the kernel package is fetched with apt into
// a cache directory, a base initramfs (busybox, dash, iproute2, util-linux,
// nfs-utils, rpcbind with their libraries, and the NFS and veth modules)
// is built and cached, and nsmount and nsmount-lab (whose dns subcommand
// is the guest's DNS server, lab_dns) are built and packed with the guest
// helper library. Each Run boots a fresh VM from these archives plus the script,
// streams the serial console and returns the script's exit status, read
// from the line "NSMOUNT-LAB-EXIT=<status>" that the guest's /init prints.
//
// In tests, use the shared lab:
//
//	func TestMountIntoContainer(t *testing.T) {
//		testenv.RunT(t, `
//			lab_netns srv1
//			lab_container c1
//			lab_veth srv1 eth0 198.51.100.1/24 c1 eth0 198.51.100.2/24
//			lab_nfsd srv1 srv1
//			nsmount mount --pid $(lab_pid c1) 198.51.100.1:/export /data
//			lab_check_output read-whoami srv1 lab_exec c1 cat /data/whoami
//		`)
//	}
//
// Lab tests run by default: a machine without qemu fails them with the
// reason, and NSMOUNT_LAB=off skips them explicitly. README.md documents the
// guest helpers (lab_netns, lab_veth, lab_nfsd, lab_dns, lab_container,
// lab_exec, lab_mount, lab_check, ...), environment variables and the cache.
//
// Containerd in guests: ContainerdGuestFiles are the host's containerd, runc
// and CNI plugins for a run (WithFiles), Containerd2 a containerd 2.x build
// kept in the cache. Subpackages: ctrdenv runs a private containerd daemon (on
// the host or in a guest), ociimage writes the busybox image it imports.
package testenv
