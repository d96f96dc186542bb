package nsmount

// This file holds the code that runs inside the target's namespaces, on the
// helper's locked thread. It is given the descriptors it needs; it never
// resolves a container path with anything but openat2 under the container's
// root.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// maxProcRead bounds reads of /proc files that list per-netns state.
const maxProcRead = 4 << 20

// resolveHow resolves a container path the way the container would, with
// every symlink and ".." kept inside its root.
var resolveHow = unix.OpenHow{
	Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
	Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
}

// errMountpointMissing marks a mount point that does not exist (and may be
// made with mkdir).
var errMountpointMissing = errors.New("missing")

// missingError is an error that is errMountpointMissing, with its own text.
type missingError struct{ error }

func (e missingError) Is(target error) bool { return target == errMountpointMissing }

// openInRoot opens the directory unsafePath inside root (an O_PATH fd of the
// container's root). With mkdir it creates missing components, each one
// resolved again inside root. The result is never the root itself: mounting
// over a container's / is refused, which also catches symlinks such as
// "/data -> /" or "../../..".
func openInRoot(root *os.File, unsafePath string, mkdir bool) (*os.File, error) {
	clean := path.Clean("/" + unsafePath)
	if !strings.HasPrefix(unsafePath, "/") {
		return nil, withClass(ErrInvalidArgument, fmt.Errorf("target %q: must be an absolute path inside the container", unsafePath))
	}
	fd, err := unix.Openat2(int(root.Fd()), clean, &resolveHow)
	if errors.Is(err, unix.ENOENT) && mkdir {
		// Follows symlinks (even dangling ones) inside root and creates
		// what is missing, each step re-resolved under root.
		var f *os.File
		if f, err = pathrs.MkdirAllHandle(root, clean, 0o755); err == nil {
			fd, err = unix.Openat2(int(f.Fd()), ".", &resolveHow)
			f.Close()
		}
	}
	switch {
	case errors.Is(err, unix.ENOENT) && !mkdir:
		return nil, withClass(ErrUnsafePath, missingError{fmt.Errorf("target %s does not exist in the container (use --mkdir)", unsafePath)})
	case errors.Is(err, unix.ENOENT):
		return nil, withClass(ErrUnsafePath, fmt.Errorf("target %s could not be created in the container", unsafePath))
	case errors.Is(err, unix.ENOTDIR) && mkdir:
		return nil, withClass(ErrUnsafePath, fmt.Errorf("target %s is not a directory, or leads through a dangling symlink (not created, as mkdir -p would not)", unsafePath))
	case errors.Is(err, unix.ENOTDIR):
		return nil, withClass(ErrUnsafePath, fmt.Errorf("target %s is not a directory", unsafePath))
	case errors.Is(err, unix.ELOOP):
		return nil, withClass(ErrUnsafePath, fmt.Errorf("target %s: too many levels of symbolic links", unsafePath))
	case err != nil:
		return nil, withClass(ErrUnsafePath, &os.PathError{Op: "openat2 in container root", Path: unsafePath, Err: err})
	}
	f := os.NewFile(uintptr(fd), unsafePath)
	if same, err := sameFile(f, root); err != nil || same {
		f.Close()
		if err != nil {
			return nil, err
		}
		return nil, withClass(ErrUnsafePath, fmt.Errorf("target %s resolves to the container's root directory; refusing to mount over /", unsafePath))
	}
	return f, nil
}

// sameFile compares two open files by device and inode from cached
// attributes (AT_STATX_DONT_SYNC): on an NFS mount whose server is gone or
// has forgotten the file handle, a plain stat would hang or fail ESTALE,
// and unmounting or replacing such a mount is exactly when this runs.
func sameFile(a, b *os.File) (bool, error) {
	var sa, sb unix.Statx_t
	const flags = unix.AT_EMPTY_PATH | unix.AT_STATX_DONT_SYNC
	if err := unix.Statx(int(a.Fd()), "", flags, unix.STATX_INO, &sa); err != nil {
		return false, fmt.Errorf("stat %s: %w", a.Name(), err)
	}
	if err := unix.Statx(int(b.Fd()), "", flags, unix.STATX_INO, &sb); err != nil {
		return false, fmt.Errorf("stat %s: %w", b.Name(), err)
	}
	return sa.Dev_major == sb.Dev_major && sa.Dev_minor == sb.Dev_minor && sa.Ino == sb.Ino, nil
}

// fsContext is an fsopen(2) filesystem context.
type fsContext struct{ fd int }

// errNoNewMountAPI reports that the kernel lacks fsopen(2).
var errNoNewMountAPI = errors.New("new mount API not available")

func openFSContext(fstype string) (*fsContext, error) {
	fd, err := unix.Fsopen(fstype, unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return nil, errNoNewMountAPI
	}
	if errors.Is(err, unix.ENODEV) {
		return nil, withClass(ErrMountFailed, fmt.Errorf("fsopen %s: filesystem type not supported by this kernel (is the nfs module loaded?)", fstype))
	}
	if err != nil {
		return nil, withClass(ErrMountFailed, fmt.Errorf("fsopen %s: %w", fstype, err))
	}
	return &fsContext{fd: fd}, nil
}

func (c *fsContext) Close() { unix.Close(c.fd) }

// messages drains the kernel's log for this context: the text mount(8)
// only shows in dmesg. Lines are "e ...", "w ..." or "i ...".
func (c *fsContext) messages() string {
	var msgs []string
	buf := make([]byte, 1024)
	for i := 0; i < 32; i++ {
		n, err := unix.Read(c.fd, buf)
		if err != nil || n <= 0 {
			break
		}
		m := strings.TrimSpace(string(buf[:n]))
		if len(m) > 2 && m[1] == ' ' {
			m = m[2:]
		}
		msgs = append(msgs, m)
	}
	return strings.Join(msgs, "; ")
}

// kernelError wraps a failed fsconfig/fsmount call with the kernel's own
// words from the context log.
func (c *fsContext) kernelError(op string, err error) error {
	if m := c.messages(); m != "" {
		return fmt.Errorf("%s: %s: %w", op, m, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// configure sets the parameters and creates the superblock. This is the call
// that talks to the server.
func (c *fsContext) configure(params Options) error {
	for _, o := range params {
		var err error
		if o.HasValue {
			err = unix.FsconfigSetString(c.fd, o.Key, o.Value)
		} else {
			err = unix.FsconfigSetFlag(c.fd, o.Key)
		}
		if err != nil {
			return withClass(ErrInvalidArgument, c.kernelError("option "+o.String(), err))
		}
	}
	if err := unix.FsconfigCreate(c.fd); err != nil {
		return withClass(ErrMountFailed, c.kernelError("create superblock", err))
	}
	return nil
}

// mountDev returns "major:minor" of the filesystem behind fd without asking
// the server (AT_STATX_DONT_SYNC).
func mountDev(fd int) (string, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_BASIC_STATS, &stx); err != nil {
		return "", fmt.Errorf("statx new mount: %w", err)
	}
	return fmt.Sprintf("%d:%d", stx.Dev_major, stx.Dev_minor), nil
}

// readProc reads a file below the host's /proc (proc, opened before the
// thread entered the target's mount namespace), at most maxProcRead bytes.
func readProc(proc *os.File, name string) ([]byte, error) {
	fd, err := unix.Openat(int(proc.Fd()), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/proc/" + name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxProcRead))
}

// volumeDevs parses /proc/net/nfsfs/volumes and returns the DEV column of
// every NFS superblock of that network namespace.
func volumeDevs(text []byte) map[string]bool {
	devs := make(map[string]bool)
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[0] == "NV" {
			continue
		}
		devs[f[3]] = true
	}
	return devs
}

// inNetNS reports whether the NFS superblock dev belongs to the network
// namespace of the calling thread.
func inNetNS(proc *os.File, dev string) (bool, error) {
	text, err := readProc(proc, "thread-self/net/nfsfs/volumes")
	if err != nil {
		return false, err
	}
	return volumeDevs(text)[dev], nil
}

// nfsMountAt returns the NFS mount whose ID is mntID, from the calling
// thread's mountinfo.
func nfsMountAt(proc *os.File, mntID uint64) (*mountinfo.Info, error) {
	text, err := readProc(proc, "thread-self/mountinfo")
	if err != nil {
		return nil, err
	}
	mounts, err := mountinfo.GetMountsFromReader(bytes.NewReader(text), func(i *mountinfo.Info) (bool, bool) {
		return uint64(i.ID) != mntID, uint64(i.ID) == mntID
	})
	if err != nil || len(mounts) == 0 {
		return nil, err
	}
	if m := mounts[0]; m.FSType == "nfs" || m.FSType == "nfs4" {
		return m, nil
	}
	return nil, nil
}
