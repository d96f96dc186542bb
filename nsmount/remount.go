package nsmount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// moveMountBeneath is MOVE_MOUNT_BENEATH (Linux 6.5): attach a mount
// beneath the top mount of a mount point, so that unmounting the top one
// reveals it, with no moment where the path shows the directory below.
const moveMountBeneath = 0x200

// syncGrace bounds the best-effort flush of the old mount's dirty data
// before a swap (the old server may be dead).
const syncGrace = 2 * time.Second

// ReplacePlan carries out plan (made by Explain for t, without error) as a
// replacement of the NFS mount oldID at the plan's mount point: new mount
// first (verified in t's netns, on a superblock of its own: nosharecache is
// added), then the swap, then the old mount is detached (lazily: open files
// in it keep working, or keep failing, until closed). The old mount's dirty
// data is flushed first where the old server still answers.
//
// On kernels with MOVE_MOUNT_BENEATH (6.5+) the swap is atomic: the new
// mount is attached beneath the old one, which is then unmounted. Older
// kernels (Debian 12's 6.1) have no way to do that: the old mount is
// detached and the new one attached right after, so a path lookup in the
// instant between the two system calls sees the directory underneath.
func ReplacePlan(ctx context.Context, t *Target, plan *Plan, oldID uint64) (*Mounted, error) {
	if err := plan.usable(t); err != nil {
		return nil, err
	}
	spec := plan.spec
	if _, ok := spec.Params.Get("nosharecache"); !ok {
		spec.Params = append(slices.Clone(spec.Params), Option{Key: "nosharecache"})
	}
	mctx, cancel := context.WithTimeout(ctx, orDefault(plan.mountTimeout, DefaultMountTimeout)+syncGrace)
	defer cancel()
	resp, err := callHelper(mctx, t, helperRequest{Op: "replace", Spec: spec, Target: plan.Mountpoint, MountID: oldID})
	if err != nil {
		return nil, err
	}
	return mountedOf(t, plan, resp), nil
}

// replaceInside runs in the helper: see Replace.
func replaceInside(req *helperRequest, root, proc *os.File, resp *helperResponse, gate *commitGate) error {
	target, err := openInRoot(root, req.Target, false)
	if err != nil {
		return err
	}
	defer target.Close()
	old, err := mountID(int(target.Fd()))
	if err != nil {
		return err
	}
	if old != req.MountID {
		return withClass(ErrNotMounted, fmt.Errorf("%s: mount %d is not there any more (found mount %d)", req.Target, req.MountID, old))
	}
	oldDev, err := mountDev(int(target.Fd()))
	if err != nil {
		return err
	}
	syncOld(target)
	mfd, err := newMount(req, target, proc, resp)
	if err != nil {
		return err
	}
	if mfd < 0 {
		return withClass(ErrMountFailed, errors.New("remount needs the new mount API (fsopen, Linux 5.2+)"))
	}
	defer unix.Close(mfd)
	if resp.Dev == oldDev {
		return withClass(ErrMountFailed, fmt.Errorf("the kernel handed back the old superblock %s for the new mount; nothing changed", oldDev))
	}
	// Name the old mount by its canonical path inside the container root.
	if err := unix.Fchdir(int(root.Fd())); err != nil {
		return fmt.Errorf("chdir to container root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot to container root: %w", err)
	}
	m, err := nfsMountAt(proc, old)
	if err != nil {
		return err
	}
	if m == nil {
		return withClass(ErrNotMounted, fmt.Errorf("mount %d at %s is gone", old, req.Target))
	}
	if !gate.commit() {
		return withClass(ErrTimeout, errors.New("deadline passed before the new mount was swapped in; nothing changed"))
	}
	beneath := unix.MoveMount(mfd, "", int(target.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH|moveMountBeneath)
	if beneath == nil {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			return withClass(ErrMountFailed, fmt.Errorf("new mount is beneath the old one, but detaching the old one failed: %w", err))
		}
		return nil
	}
	if !errors.Is(beneath, unix.EINVAL) {
		return withClass(ErrMountFailed, fmt.Errorf("attach beneath %s: %w", req.Target, beneath))
	}
	// No MOVE_MOUNT_BENEATH: detach, then attach at once on the directory
	// that was underneath, found from its parent without following links.
	parent, err := unix.Openat2(unix.AT_FDCWD, path.Dir(m.Mountpoint), &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS,
	})
	if err != nil {
		return fmt.Errorf("open parent of %s: %w", m.Mountpoint, err)
	}
	defer unix.Close(parent)
	if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
		return withClass(ErrMountFailed, fmt.Errorf("detach old mount at %s: %w", req.Target, err))
	}
	under, err := unix.Openat(parent, path.Base(m.Mountpoint), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.MoveMount(mfd, "", under, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
		unix.Close(under)
	}
	if err != nil {
		return withClass(ErrMountFailed, fmt.Errorf("old mount at %s detached, but attaching the new one failed: %w", req.Target, err))
	}
	return nil
}

// syncOld flushes the old mount's dirty data, waiting at most syncGrace:
// a dead server must not stop the replacement (the thread is left behind
// and dies with the helper).
func syncOld(target *os.File) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fd, err := unix.Openat(int(target.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		unix.Syncfs(fd)
		unix.Close(fd)
	}()
	select {
	case <-done:
	case <-time.After(syncGrace):
	}
}
