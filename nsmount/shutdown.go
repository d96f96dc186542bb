package nsmount

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoShutdown reports that the kernel has no shutdown knob for an NFS
// superblock (Linux before 6.6, or no such superblock in the netns).
var ErrNoShutdown = errors.New("no /sys/fs/nfs/DEV/shutdown for this superblock (Linux 6.6+)")

// devPattern is a superblock device as nfsfs/volumes prints it.
var devPattern = regexp.MustCompile(`^[0-9]{1,10}:[0-9]{1,10}$`)

// shutdownPath is superblock dev's shutdown knob, relative to a sysfs root.
// The fs/nfs/DEV directories are network-namespaced: only a sysfs made in
// the superblock's netns shows them (measured on 6.12: the VM's /sys shows
// none of a container's).
func shutdownPath(dev string) (string, error) {
	if !devPattern.MatchString(dev) {
		return "", fmt.Errorf("superblock device %q: want MAJOR:MINOR", dev)
	}
	return "fs/nfs/" + dev + "/shutdown", nil
}

// ShutdownState reports, for each NFS superblock in devs of t's network
// namespace, whether it is shut down (/sys/fs/nfs/DEV/shutdown reads 1).
// Devices without the knob (kernels before 6.6) are absent from the map.
func ShutdownState(ctx context.Context, t *Target, devs []string) (map[string]bool, error) {
	state := map[string]bool{}
	err := t.Do(NetNS, func() error {
		mfd, err := netnsSysfs()
		if err != nil {
			return err
		}
		defer unix.Close(mfd)
		for _, dev := range devs {
			p, err := shutdownPath(dev)
			if err != nil {
				return err
			}
			v, err := readSysfs(mfd, p)
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				return err
			}
			state[dev] = v == "1"
		}
		return nil
	})
	return state, err
}

// ShutdownSuperblock shuts NFS superblock dev of t's network namespace down
// (Linux 6.6+): every RPC of it fails at once with EIO, files open on it
// included, and the kernel releases its NFS client, so that the next mount
// of that server in the netns gets a client, connection, route and
// identity of its own. The superblock itself stays while it is held.
// Without the knob it returns ErrNoShutdown.
func ShutdownSuperblock(ctx context.Context, t *Target, dev string) error {
	p, err := shutdownPath(dev)
	if err != nil {
		return err
	}
	return t.Do(NetNS, func() error {
		mfd, err := netnsSysfs()
		if err != nil {
			return err
		}
		defer unix.Close(mfd)
		write := func() error { return writeSysfs(mfd, p, "1") }
		err = write()
		if errors.Is(err, unix.EROFS) {
			err = withWritableSysfs(mfd, write)
		}
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("superblock %s: %w", dev, ErrNoShutdown)
		}
		return err
	})
}

// readSysfs reads a small attribute below the sysfs root mfd.
func readSysfs(mfd int, p string) (string, error) {
	fd, err := unix.Openat(mfd, p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
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

// writeSysfs writes v to an attribute below the sysfs root mfd.
func writeSysfs(mfd int, p, v string) error {
	fd, err := unix.Openat(mfd, p, unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s for writing: %w", p, err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(v)); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}
