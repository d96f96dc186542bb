package nsmount

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

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
	fsfd, err := unix.Fsopen("sysfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return "", false, fmt.Errorf("fsopen sysfs: %w", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return "", false, fmt.Errorf("create sysfs in target netns: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return "", false, fmt.Errorf("fsmount sysfs: %w", err)
	}
	defer unix.Close(mfd)
	fd, err := unix.Openat(mfd, identifierPath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ENOENT) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("open %s: %w", identifierPath, err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 256)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return "", false, fmt.Errorf("read %s: %w", identifierPath, err)
	}
	if cur := strings.TrimSpace(string(buf[:n])); !set || cur != "" && cur != "(null)" {
		return cur, false, nil
	}
	id := newIdentity()
	if _, err := unix.Pwrite(fd, []byte(id), 0); err != nil {
		return "", false, fmt.Errorf("write %s: %w", identifierPath, err)
	}
	return id, true, nil
}

// newIdentity returns a random UUID (version 4) string.
func newIdentity() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
