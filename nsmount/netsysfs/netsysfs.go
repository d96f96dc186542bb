// Package netsysfs reads and writes the network-namespaced part of sysfs:
// the NFS client's per-netns knobs (/sys/fs/nfs/net/nfs_client/identifier,
// /sys/fs/nfs/DEV/shutdown) of the calling thread's network namespace.
//
// sysfs shows the network namespace of whoever created its superblock, not
// of whoever reads it: the host's /sys shows the host's NFS client, and a
// container's /sys may be read-only or absent. So a Sysfs is a fresh sysfs
// made in the calling thread's network namespace (run it inside
// nsmount.Target.Do(nsmount.NetNS, ...)), never attached anywhere: it lives
// only as a detached mount's descriptor and is gone with Close.
package netsysfs

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Sysfs is a detached sysfs mount of one network namespace.
type Sysfs struct{ fd int }

// Open makes a sysfs of the calling thread's network namespace.
func Open() (*Sysfs, error) {
	fsfd, err := unix.Fsopen("sysfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsopen sysfs: %w", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("create sysfs in the netns: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsmount sysfs: %w", err)
	}
	return &Sysfs{fd: mfd}, nil
}

// Close releases the mount.
func (s *Sysfs) Close() error { return unix.Close(s.fd) }

// Read reads a small attribute at p (relative to the sysfs root, like
// "fs/nfs/net/nfs_client/identifier"), without trailing white space. A
// missing attribute is an error wrapping unix.ENOENT.
func (s *Sysfs) Read(p string) (string, error) {
	fd, err := unix.Openat(s.fd, p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", p, err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 256)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// Write writes v to the attribute at p. When the namespace's sysfs
// superblock is read-only (see WithWritable), it is made writable for the
// write and read-only again after.
func (s *Sysfs) Write(p, v string) error {
	write := func() error {
		fd, err := unix.Openat(s.fd, p, unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("open %s for writing: %w", p, err)
		}
		defer unix.Close(fd)
		if _, err := unix.Write(fd, []byte(v)); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		return nil
	}
	err := write()
	if errors.Is(err, unix.EROFS) {
		err = s.withWritable(write)
	}
	return err
}

// withWritable runs fn with the sysfs superblock read-write, and makes it
// read-only again after.
//
// sysfs has one superblock per network namespace, shared by every mount of
// it: once a container runtime has mounted the container's /sys read-only
// (runc does, before createRuntime hooks run), a new sysfs made in that
// netns is the same read-only superblock, and no attribute can be written
// (EROFS). The superblock is reconfigured read-write just for the write.
// The container's own /sys mount keeps its read-only mount flag throughout,
// so the container never sees a writable /sys.
func (s *Sysfs) withWritable(fn func() error) error {
	reconf := func(flag string) error {
		pfd, err := unix.Fspick(s.fd, "", unix.FSPICK_EMPTY_PATH|unix.FSPICK_CLOEXEC|unix.FSPICK_NO_AUTOMOUNT)
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
		return fmt.Errorf("the netns's sysfs is read-only: %w", err)
	}
	err := fn()
	if rerr := reconf("ro"); rerr != nil {
		err = errors.Join(err, fmt.Errorf("making the netns's sysfs read-only again: %w", rerr))
	}
	return err
}

// IdentifierPath is the per-netns NFSv4 client identity uniquifier
// (Linux 5.18+, and Debian's 6.1).
const IdentifierPath = "fs/nfs/net/nfs_client/identifier"

// Identity reads the NFSv4 client identity uniquifier: "" when none is
// set, ok false when the kernel has no per-netns identifier.
func (s *Sysfs) Identity() (id string, ok bool, err error) {
	cur, err := s.Read(IdentifierPath)
	if errors.Is(err, unix.ENOENT) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if cur == "(null)" {
		cur = ""
	}
	return cur, true, nil
}

// SetIdentity writes id as the NFSv4 client identity uniquifier. NFSv4
// clients created in the netns afterwards use it.
func (s *Sysfs) SetIdentity(id string) error { return s.Write(IdentifierPath, id) }

// ErrNoShutdown reports that the kernel has no shutdown knob for an NFS
// superblock (Linux before 6.6, or no such superblock in the netns).
var ErrNoShutdown = errors.New("no /sys/fs/nfs/DEV/shutdown for this superblock (Linux 6.6+)")

// ShutdownPath is superblock dev's shutdown knob (Linux 6.6+). The
// fs/nfs/DEV directories are network-namespaced: only a sysfs made in the
// superblock's netns shows them (measured on 6.12: the VM's /sys shows none
// of a container's).
func ShutdownPath(dev string) (string, error) {
	if !validDev(dev) {
		return "", fmt.Errorf("superblock device %q: want MAJOR:MINOR", dev)
	}
	return "fs/nfs/" + dev + "/shutdown", nil
}

// Shutdown reports whether NFS superblock dev is shut down; an error
// wrapping ErrNoShutdown when it has no knob.
func (s *Sysfs) Shutdown(dev string) (bool, error) {
	p, err := ShutdownPath(dev)
	if err != nil {
		return false, err
	}
	v, err := s.Read(p)
	if errors.Is(err, unix.ENOENT) {
		return false, fmt.Errorf("superblock %s: %w", dev, ErrNoShutdown)
	}
	return v == "1", err
}

// SetShutdown shuts NFS superblock dev down; an error wrapping
// ErrNoShutdown when it has no knob.
func (s *Sysfs) SetShutdown(dev string) error {
	p, err := ShutdownPath(dev)
	if err != nil {
		return err
	}
	err = s.Write(p, "1")
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("superblock %s: %w", dev, ErrNoShutdown)
	}
	return err
}

// validDev accepts MAJOR:MINOR of at most 10 digits each.
func validDev(dev string) bool {
	maj, min, ok := strings.Cut(dev, ":")
	digits := func(s string) bool {
		if s == "" || len(s) > 10 {
			return false
		}
		for _, r := range s {
			if r < '0' || r > '9' {
				return false
			}
		}
		return true
	}
	return ok && digits(maj) && digits(min)
}
