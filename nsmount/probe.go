package nsmount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultProbeMountTimeout bounds a health probe of a mounted NFS
// filesystem: a server that does not answer within it counts as hung.
const DefaultProbeMountTimeout = 5 * time.Second

// Health is the outcome of probing a mounted NFS filesystem.
type Health struct {
	// Errno is the error the filesystem returned (ESTALE, EIO, ENOTCONN,
	// ...), 0 when it answered.
	Errno syscall.Errno `json:"errno,omitempty"`
	// Hung reports that the server did not answer within the timeout; the
	// probe was stopped.
	Hung bool `json:"hung,omitempty"`
	// Error describes a failed probe for people.
	Error string `json:"error,omitempty"`
	// Elapsed is how long the probe took.
	Elapsed time.Duration `json:"elapsed"`
	// Stats is what the server's statfs said, when it answered.
	Stats *FSStats `json:"stats,omitempty"`
}

// FSStats is a filesystem's size and use as statfs(2) reports it, in bytes
// and inodes (files). For NFS these are the server's figures for the
// export's filesystem.
type FSStats struct {
	// Bytes is the size; BytesFree the free space; BytesAvail the free
	// space available to unprivileged users.
	Bytes      uint64 `json:"bytes"`
	BytesFree  uint64 `json:"bytes_free"`
	BytesAvail uint64 `json:"bytes_avail"`
	// Files is the number of inodes; FilesFree the free ones.
	Files     uint64 `json:"files"`
	FilesFree uint64 `json:"files_free"`
}

// EBADHANDLE is the errno the Linux NFS client returns when the server
// rejects a file handle as malformed (NFS4ERR_BADHANDLE, NFS3ERR_BADHANDLE):
// 521, a kernel-internal errno without a libc name ("Unknown error 521").
// Measured in the lab: a mount made against kernel nfsd gets it from
// NFS-Ganesha serving the same directory at the same address, and the
// other way round; a server that merely forgot a handle says ESTALE.
const EBADHANDLE = syscall.Errno(521)

// OK reports that the filesystem answered.
func (h Health) OK() bool { return h.Errno == 0 && !h.Hung && h.Error == "" }

// String is "ok", "hung", or the error name.
func (h Health) String() string {
	switch {
	case h.Hung:
		return "hung"
	case h.Errno == EBADHANDLE:
		return "EBADHANDLE"
	case h.Errno != 0:
		if name := unix.ErrnoName(h.Errno); name != "" {
			return name
		}
		return fmt.Sprintf("errno %d", int(h.Errno))
	case h.Error != "":
		return "error"
	}
	return "ok"
}

// ProbeMount asks the server behind the NFS mount at target in t whether
// the mount still works: a getattr of the mount root that bypasses the
// attribute cache, then a statfs (its figures are Health.Stats), made by a
// helper process inside t's
// namespaces that is killed after timeout (zero: DefaultProbeMountTimeout),
// so a hung server costs the caller the timeout and nothing more. mountID,
// if not zero, is the mount expected at target; another mount there is an
// error. The returned error is for failures to probe at all (no such
// target, not a mount); the filesystem's own answer is in Health.
func ProbeMount(ctx context.Context, t *Target, target string, mountID uint64, timeout time.Duration) (Health, error) {
	timeout = orDefault(timeout, DefaultProbeMountTimeout)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	resp, err := callHelper(ctx, t, helperRequest{Op: "probe", Target: target, MountID: mountID})
	return healthOf(resp, err, timeout, time.Since(start))
}

// UnmountID unmounts the mount whose ID is mountID from t's mount
// namespace (flushing a copy of a mount that nsmount did not make or no
// longer tracks, found in mountinfo). The mount must be NFS and visible
// under t's root.
func UnmountID(ctx context.Context, t *Target, mountID uint64, o UnmountOptions) error {
	flags := 0
	if o.Lazy {
		flags |= unix.MNT_DETACH
	}
	if o.Force {
		flags |= unix.MNT_FORCE
	}
	ctx, cancel := context.WithTimeout(ctx, orDefault(o.Timeout, DefaultMountTimeout))
	defer cancel()
	_, err := callHelper(ctx, t, helperRequest{Op: "umount-id", MountID: mountID, Umount: flags})
	return err
}

// mountID returns the mount ID of the mount behind fd.
func mountID(fd int) (uint64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, fmt.Errorf("statx mount id: %w", err)
	}
	return stx.Mnt_id, nil
}

// probeInside runs in the helper: getattr (forced past the cache) and
// statfs of the mount root at req.Target.
func probeInside(req *helperRequest, root *os.File, resp *helperResponse) error {
	f, err := openInRoot(root, req.Target, false)
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) && errno != unix.ENOENT && errno != unix.ENOTDIR {
			resp.Errno = int(errno)
		}
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	if req.MountID != 0 {
		id, err := mountID(fd)
		if err != nil {
			return err
		}
		if id != req.MountID {
			return withClass(ErrNotMounted, fmt.Errorf("%s: mount %d is not the mount there (found %d)", req.Target, req.MountID, id))
		}
	}
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &stx); err != nil {
		resp.Errno = errnoOf(err)
		return fmt.Errorf("getattr %s: %w", req.Target, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		resp.Errno = errnoOf(err)
		return fmt.Errorf("statfs %s: %w", req.Target, err)
	}
	if sfs.Type != unix.NFS_SUPER_MAGIC {
		return withClass(ErrNotMounted, fmt.Errorf("%s is not an NFS mount", req.Target))
	}
	resp.Stats = statsOf(&sfs)
	return nil
}

// statsOf converts statfs(2)'s blocks (of f_frsize bytes, or f_bsize when
// that is 0) to bytes.
func statsOf(sfs *unix.Statfs_t) *FSStats {
	unit := uint64(sfs.Frsize)
	if unit == 0 {
		unit = uint64(sfs.Bsize)
	}
	return &FSStats{
		Bytes: sfs.Blocks * unit, BytesFree: sfs.Bfree * unit, BytesAvail: sfs.Bavail * unit,
		Files: sfs.Files, FilesFree: sfs.Ffree,
	}
}

func errnoOf(err error) int {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return int(errno)
	}
	return int(unix.EIO)
}

// umountIDInside runs in the helper: it unmounts the NFS mount with ID
// req.MountID, named by its path in mountinfo after a chroot into root, and
// checks right before that the path still leads to that mount.
func umountIDInside(req *helperRequest, root, proc *os.File) error {
	if err := unix.Fchdir(int(root.Fd())); err != nil {
		return fmt.Errorf("chdir to root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot to root: %w", err)
	}
	m, err := nfsMountAt(proc, req.MountID)
	if err != nil {
		return err
	}
	if m == nil {
		return withClass(ErrNotMounted, fmt.Errorf("no NFS mount with ID %d", req.MountID))
	}
	fd, err := unix.Open(m.Mountpoint, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", m.Mountpoint, err)
	}
	id, err := mountID(fd)
	unix.Close(fd)
	if err != nil {
		return err
	}
	if id != req.MountID {
		return withClass(ErrMountFailed, fmt.Errorf("umount %s: covered by mount %d, not %d", m.Mountpoint, id, req.MountID))
	}
	if err := unmountBusyRetry(m.Mountpoint, req.Umount|unix.UMOUNT_NOFOLLOW, umountBusyFor); err != nil {
		return withClass(ErrMountFailed, fmt.Errorf("umount %s (%s): %w", m.Mountpoint, m.Source, err))
	}
	return nil
}

// umountBusyFor is how long an unmount retries EBUSY. A probe (nsmount
// watch's, status's) holds the mount for the milliseconds of its GETATTR
// and statfs, and a mount made busy by that alone must still unmount; a
// mount that stays busy longer (a process has files open on it) is
// reported busy, as umount(8) would.
const umountBusyFor = time.Second

// unmountBusyRetry unmounts path with flags, trying again while the
// kernel answers EBUSY, for at most busyFor (waits of 10 ms, doubling, at
// most 200 ms).
func unmountBusyRetry(path string, flags int, busyFor time.Duration) error {
	deadline := time.Now().Add(busyFor)
	wait := 10 * time.Millisecond
	for {
		err := unix.Unmount(path, flags)
		if !errors.Is(err, unix.EBUSY) || time.Now().Add(wait).After(deadline) {
			return err
		}
		time.Sleep(wait)
		wait = min(2*wait, 200*time.Millisecond)
	}
}
