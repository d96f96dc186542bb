package resolver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// maxResolverFile bounds the size of /etc/resolv.conf and /etc/hosts read
// from a container.
const maxResolverFile = 64 << 10

// ReadResolverFiles reads and parses a container's /etc/resolv.conf and
// /etc/hosts through root, an O_PATH descriptor of the container's root
// directory. The files are untrusted: every path component, symlinks and
// ".." included, is resolved inside root (openat2 RESOLVE_IN_ROOT, no magic
// links), and each must be a regular file of at most 64 KiB; a FIFO or a
// device is refused without being opened for reading. A missing
// resolv.conf gives glibc's defaults (DefaultResolvConf), a missing hosts
// file an empty Hosts.
func ReadResolverFiles(root *os.File) (*ResolvConf, *Hosts, error) {
	data, err := readContainerFile(root, "/etc/resolv.conf", "resolv.conf")
	var conf *ResolvConf
	switch {
	case errors.Is(err, os.ErrNotExist):
		conf = DefaultResolvConf()
	case err != nil:
		return nil, nil, err
	default:
		if conf, err = ParseResolvConf(bytes.NewReader(data)); err != nil {
			return nil, nil, err
		}
	}
	data, err = readContainerFile(root, "/etc/hosts", "hosts")
	var hosts *Hosts
	switch {
	case errors.Is(err, os.ErrNotExist):
		hosts = &Hosts{}
	case err != nil:
		return nil, nil, err
	default:
		if hosts, err = ParseHosts(bytes.NewReader(data)); err != nil {
			return nil, nil, err
		}
	}
	return conf, hosts, nil
}

// readContainerFile reads the regular file path (absolute, resolved inside
// root) of at most maxResolverFile bytes. short names it in messages.
func readContainerFile(root *os.File, path, short string) ([]byte, error) {
	how := unix.OpenHow{Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	// First an O_PATH open, which opens nothing for I/O: a device node is
	// checked before any driver sees an open() (opening some devices has
	// effects), a FIFO before it could block.
	how.Flags = unix.O_PATH | unix.O_CLOEXEC
	pfd, err := openat2(root, path, &how)
	if err != nil {
		return nil, err
	}
	var pst unix.Stat_t
	err = unix.Fstat(pfd, &pst)
	unix.Close(pfd)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, &os.PathError{Op: "fstat", Path: path, Err: err})
	}
	if err := checkRegular(path, &pst); err != nil {
		return nil, err
	}
	// Then the real open. The file could have been swapped in between:
	// it must still be the same regular file.
	how.Flags = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK
	fd, err := openat2(root, path, &how)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, &os.PathError{Op: "fstat", Path: path, Err: err})
	}
	if err := checkRegular(path, &st); err != nil {
		return nil, err
	}
	if st.Dev != pst.Dev || st.Ino != pst.Ino {
		return nil, fmt.Errorf("reading %s: file replaced while opening it", path)
	}
	if st.Size > maxResolverFile {
		return nil, fmt.Errorf("%s is too large (%d bytes, max %d)", short, st.Size, maxResolverFile)
	}
	// The size may grow after fstat: read one byte more than allowed.
	data, err := io.ReadAll(io.LimitReader(f, maxResolverFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > maxResolverFile {
		return nil, fmt.Errorf("%s is too large (more than %d bytes)", short, maxResolverFile)
	}
	return data, nil
}

// openat2 opens path under root, retrying EINTR and EAGAIN (the kernel
// returns EAGAIN for RESOLVE_IN_ROOT when a rename raced the lookup).
func openat2(root *os.File, path string, how *unix.OpenHow) (int, error) {
	var err error
	for range 16 {
		var fd int
		fd, err = unix.Openat2(int(root.Fd()), path, how)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			break
		}
	}
	return -1, fmt.Errorf("reading %s: %w", path, &os.PathError{Op: "openat2", Path: path, Err: err})
}

// checkRegular refuses anything but a regular file.
func checkRegular(path string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		return nil
	}
	kind := "special file"
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		kind = "directory"
	case unix.S_IFIFO:
		kind = "FIFO"
	case unix.S_IFCHR:
		kind = "character device"
	case unix.S_IFBLK:
		kind = "block device"
	case unix.S_IFSOCK:
		kind = "socket"
	}
	return fmt.Errorf("reading %s: not a regular file (%s)", path, kind)
}
