package nsmount

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenPathsWithResolver opens a target whose network namespace is not the
// one its mount namespace's processes use: the network namespace at
// netnsPath, and the mount namespace at mntnsPath, in whose root mount
// points are resolved (as for OpenPaths). It is for a mount made from one
// network onto a path of another mount namespace: a Kubernetes pod's
// network, and a CSI volume's target path in the host's mount namespace,
// which the pod's containers then get as a bind mount.
//
// resolverPID, when not 0, is a process in that network namespace (the
// pod's sandbox) whose root holds the resolver files, /etc/resolv.conf and
// /etc/hosts: server names are then resolved as that process resolves them,
// read through its root with the same rules as for OpenPID. Its process is
// held by a pidfd while its root is opened; one in another network
// namespace is ErrInvalidArgument. With 0, names are resolved with the
// files of the mount namespace's root.
//
// The target has no PID (PID returns 0): no one process is in both of its
// namespaces.
func OpenPathsWithResolver(netnsPath, mntnsPath string, resolverPID int) (_ *Target, retErr error) {
	if resolverPID < 0 {
		return nil, withClass(ErrInvalidArgument, fmt.Errorf("invalid resolver pid %d", resolverPID))
	}
	t, err := OpenPaths(netnsPath, mntnsPath)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			t.Close()
		}
	}()
	if resolverPID == 0 {
		return t, nil
	}
	fd, err := unix.PidfdOpen(resolverPID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, withClass(ErrTargetNotFound, fmt.Errorf("resolver process %d does not exist", resolverPID))
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", resolverPID, err)
	}
	pidfd := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", resolverPID))
	defer pidfd.Close()
	proc := fmt.Sprintf("/proc/%d", resolverPID)
	netns, err := NSOfPath(proc + "/ns/net")
	if err != nil {
		return nil, withClass(ErrTargetNotFound, fmt.Errorf("netns of resolver process %d: %w", resolverPID, err))
	}
	if netns != t.NetNS() {
		return nil, withClass(ErrInvalidArgument, fmt.Errorf("resolver process %d is in netns %s, not in %s (%s)", resolverPID, netns, t.NetNS(), netnsPath))
	}
	if t.resolvRoot, err = openPath(proc + "/root"); err != nil {
		return nil, withClass(ErrTargetNotFound, fmt.Errorf("open root of resolver process %d: %w", resolverPID, err))
	}
	// As in OpenPID: alive now, so the /proc entries were its own.
	if err := unix.PidfdSendSignal(int(pidfd.Fd()), 0, nil, 0); err != nil {
		return nil, withClass(ErrTargetNotFound, fmt.Errorf("resolver process %d exited while opening its root: %w", resolverPID, err))
	}
	t.desc = fmt.Sprintf("netns %s (resolver files of pid %d), mntns %s", netnsPath, resolverPID, mntnsPath)
	return t, nil
}

// resolverRoot returns an O_PATH descriptor of the root whose resolver
// files the target's names are resolved with: the resolver process's root
// (OpenPathsWithResolver), else the container's root (rootDir).
func (t *Target) resolverRoot() (*os.File, error) {
	if t.resolvRoot != nil {
		fd, err := dupCloexec(t.resolvRoot)
		if err != nil {
			return nil, fmt.Errorf("dup resolver root of %s: %w", t, err)
		}
		return fd, nil
	}
	return t.rootDir()
}
