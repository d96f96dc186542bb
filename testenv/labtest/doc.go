// Package labtest binds testenv's lab and ctrdenv's private containerd to Go
// tests: it is the only part of testenv that imports package testing, so
// that programs (nsmount-lab) link none of it.
//
// A lab is shared by the tests of a test binary (Shared, SharedKernel),
// created on first use; RunT runs a scenario script in a fresh VM, logs the
// console and turns each LAB-CHECK line into a subtest:
//
//	func TestMountIntoContainer(t *testing.T) {
//		labtest.RunT(t, `
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
// reason, and NSMOUNT_LAB=off skips them explicitly (never silently).
//
// StartContainerd starts a private containerd for one test and removes
// everything it ran when the test ends:
//
//	c := labtest.StartContainerd(t, ctrdenv.ContainerdConfig{Prefix: "nsmX"})
//	pid, err := c.RunContainer(ctx, "nsmX-c1", ctrdenv.RunOptions{NetNS: "/run/netns/nsmX-c1"})
package labtest
