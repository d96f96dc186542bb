package nsmount

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// OpenPIDRootfs opens process pid like OpenPID, for a container that an OCI
// runtime is still creating (the createRuntime hook): its process is in the
// container's namespaces but has not switched to the container's root yet,
// so /proc/PID/root is still the runtime's view of the host's tree, and
// mounting or creating directories there would act on host paths. rootfs is
// the container's root directory as an absolute path in that view (the
// spec's root.path joined to the bundle); the runtime has bind-mounted it in
// the container's mount namespace. Mount targets, and the container's
// resolver files, are then resolved inside rootfs, and mounts made there
// become the container's own once it switches root.
func OpenPIDRootfs(pid int, rootfs string) (_ *Target, retErr error) {
	if !filepath.IsAbs(rootfs) || filepath.Clean(rootfs) != rootfs {
		return nil, withClass(ErrInvalidArgument, fmt.Errorf("rootfs %q: want a clean absolute path", rootfs))
	}
	t, err := OpenPID(pid)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			t.Close()
		}
	}()
	// rootfs is the runtime's path, not the container's: resolved under the
	// process's current root in its mount namespace, with no magic links.
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(int(t.root.Fd()), rootfs, &how)
	if err != nil {
		return nil, withClass(ErrTargetNotFound, &os.PathError{Op: fmt.Sprintf("open rootfs of pid %d", pid), Path: rootfs, Err: err})
	}
	t.root.Close()
	t.root = os.NewFile(uintptr(fd), rootfs)
	if err := unix.PidfdSendSignal(int(t.pidfd.Fd()), 0, nil, 0); err != nil {
		return nil, withClass(ErrTargetNotFound, fmt.Errorf("process %d exited while opening its rootfs: %w", pid, err))
	}
	t.desc = fmt.Sprintf("pid %d (rootfs %s)", pid, rootfs)
	return t, nil
}
