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
// Go tests use it through package labtest (a lab shared per test binary,
// LAB-CHECK lines as subtests); this package itself links no testing code,
// so that nsmount-lab stays free of it. Lab tests run by default: a machine
// without qemu fails them with the reason, and NSMOUNT_LAB=off skips them
// explicitly. README.md documents the guest helpers (lab_netns, lab_veth,
// lab_nfsd, lab_ganesha, lab_dns, lab_proxy, lab_container, lab_exec, lab_mount,
// lab_check, ...), environment variables and the cache.
//
// Containerd in guests: ContainerdGuestFiles are the host's containerd, runc
// and CNI plugins for a run (WithContainerd, or WithFiles), Containerd2 a
// containerd 2.x build kept in the cache. NFS-Ganesha in guests:
// GaneshaGuestFiles are Debian's nfs-ganesha and nfs-ganesha-vfs with their
// libraries, fetched into the cache (WithGanesha), for lab_ganesha. Subpackages: ctrdenv runs a private containerd daemon (on
// the host or in a guest), ociimage writes the busybox image it imports,
// labtest binds all of it to *testing.T.
package testenv
