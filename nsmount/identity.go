package nsmount

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// identifierPath is the per-netns NFSv4 client identity uniquifier, relative
// to a sysfs root (Linux 5.18+, and Debian's 6.1).
const identifierPath = "fs/nfs/net/nfs_client/identifier"

// ensureClientIdentity gives the calling thread's network namespace a unique
// NFSv4 client identity unless it has one. Without it, every netns whose
// hostname is the same sends the same client ID ("Linux NFSv4.2 HOST"), and
// the server drops one client whenever the other renews its lease.
//
// sysfs shows the network namespace of whoever creates the superblock, so a
// fresh sysfs is created here, inside the target netns, and never attached
// anywhere: it lives only as this detached mount's fd. An identity already
// set (by nsmount earlier, or by the administrator) is kept. It returns the
// identity in force, and whether this call set it; ("", false, nil) when the
// kernel has no per-netns identifier.
func ensureClientIdentity() (id string, set bool, err error) {
	return clientIdentity(true)
}

// ClientIdentity returns the NFSv4 client identity (uniquifier) of t's
// network namespace, "" if none is set or the kernel has none. It changes
// nothing.
func ClientIdentity(ctx context.Context, t *Target) (string, error) {
	var id string
	err := t.Do(NetNS, func() error {
		var err error
		id, _, err = clientIdentity(false)
		return err
	})
	if id == "(null)" {
		id = ""
	}
	return id, err
}

// clientIdentity reads the calling thread's netns's identity and, if set
// is true and there is none, sets a new one.
func clientIdentity(set bool) (string, bool, error) {
	mfd, err := netnsSysfs()
	if err != nil {
		return "", false, err
	}
	defer unix.Close(mfd)
	cur, err := readIdentity(mfd)
	if err != nil || cur == "" {
		return "", false, err // "" with nil: the kernel has no identifier
	}
	if !set || cur != "(null)" {
		return cur, false, nil
	}
	id := newIdentity()
	err = writeIdentity(mfd, id)
	if errors.Is(err, unix.EROFS) {
		// The netns's sysfs superblock is read-only: see withWritableSysfs.
		err = withWritableSysfs(mfd, func() error { return writeIdentity(mfd, id) })
	}
	if err != nil {
		return "", false, err
	}
	return id, true, nil
}

// netnsSysfs returns a detached sysfs mount made in the calling thread's
// network namespace: it shows that namespace's network-tagged directories
// (fs/nfs/net, fs/nfs/DEV), whatever the caller's own /sys shows. It is
// never attached anywhere: it goes with its fd.
func netnsSysfs() (int, error) {
	fsfd, err := unix.Fsopen("sysfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen sysfs: %w", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return -1, fmt.Errorf("create sysfs in target netns: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsmount sysfs: %w", err)
	}
	return mfd, nil
}

// readIdentity reads the identifier below the sysfs root mfd; "" (and no
// error) when the kernel has none, "(null)" when none is set.
func readIdentity(mfd int) (string, error) {
	cur, err := readSysfs(mfd, identifierPath)
	if errors.Is(err, unix.ENOENT) {
		return "", nil
	}
	if err != nil || cur != "" {
		return cur, err
	}
	return "(null)", nil
}

// writeIdentity writes id as the identifier below the sysfs root mfd.
func writeIdentity(mfd int, id string) error { return writeSysfs(mfd, identifierPath, id) }

// withWritableSysfs runs fn with the sysfs superblock of the detached mount
// mfd read-write, and makes it read-only again after.
//
// sysfs has one superblock per network namespace, shared by every mount of
// it: once a container runtime has mounted the container's /sys read-only
// (runc does, before createRuntime hooks run), a new sysfs made in that
// netns is the same read-only superblock, and the identifier cannot be
// written (EROFS). The superblock is reconfigured read-write just for the
// write. The container's own /sys mount keeps its read-only mount flag
// throughout, so the container never sees a writable /sys.
func withWritableSysfs(mfd int, fn func() error) error {
	reconf := func(flag string) error {
		pfd, err := unix.Fspick(mfd, "", unix.FSPICK_EMPTY_PATH|unix.FSPICK_CLOEXEC|unix.FSPICK_NO_AUTOMOUNT)
		if err != nil {
			return fmt.Errorf("fspick sysfs: %w", err)
		}
		defer unix.Close(pfd)
		if err := unix.FsconfigSetFlag(pfd, flag); err != nil {
			return fmt.Errorf("sysfs %s: %w", flag, err)
		}
		if err := unix.FsconfigReconfigure(pfd); err != nil {
			return fmt.Errorf("reconfigure sysfs %s: %w", flag, err)
		}
		return nil
	}
	if err := reconf("rw"); err != nil {
		return fmt.Errorf("the target netns's sysfs is read-only: %w", err)
	}
	err := fn()
	if rerr := reconf("ro"); rerr != nil {
		err = errors.Join(err, fmt.Errorf("making the target netns's sysfs read-only again: %w", rerr))
	}
	return err
}

// newIdentity returns a random UUID (version 4) string.
func newIdentity() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
