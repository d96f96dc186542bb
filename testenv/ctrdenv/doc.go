// Package ctrdenv runs a private containerd daemon for tests, on the host or in
// a lab guest: the Debian containerd (1.6 on Debian 12; the v2 client also
// talks to 1.7 and 2.x) with a configuration that shares nothing with a
// system containerd. Root, state, sockets, runc root, logs and the image all
// live in one short temporary directory. Two things cannot be moved there:
// each task's shim listens on /run/containerd/s/<sha256>, and runc puts each
// container in a cgroup. Close removes both for what it started.
//
// NewContainerd starts the daemon (CRI off unless ContainerdConfig.CRI asks
// for it, its own runc root) and AttachContainerd connects to one that a lab
// script started; RunContainer runs a busybox container whose image is built
// from busybox-static (package ociimage) and imported without a registry;
// Close removes every container, shim, socket, cgroup and mount it made:
//
//	c, err := ctrdenv.NewContainerd(ctx, ctrdenv.ContainerdConfig{Prefix: "nsmX"})
//	defer c.Close()
//	pid, err := c.RunContainer(ctx, "nsmX-c1", ctrdenv.RunOptions{NetNS: "/run/netns/nsmX-c1"})
//
// In Go tests, labtest.StartContainerd ties the daemon to the test.
package ctrdenv
