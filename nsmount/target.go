package nsmount

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Namespaces selects which of a target's namespaces Target.Do enters.
type Namespaces int

const (
	// NetNS is the target's network namespace.
	NetNS Namespaces = 1 << iota
	// MountNS is the target's mount namespace.
	MountNS
)

// A Target is a container's network and mount namespaces, pinned by file
// descriptors when it is opened: once open, a Target keeps meaning the same
// namespaces even if the process that named them exits or its PID is reused.
//
// Only code inside Do runs in the target's namespaces. Close releases the
// descriptors.
type Target struct {
	isolation Isolation
	helper    string   // the helper's executable; "": this binary
	pid       int      // 0 when opened by paths
	pidfd     *os.File // nil when opened by paths
	netns     *os.File
	mntns     *os.File
	root      *os.File // O_PATH fd of the container's root; nil: the mount ns root
	// resolvRoot is the O_PATH fd of the root whose resolver files names
	// are resolved with; nil: root's (see OpenPathsWithResolver).
	resolvRoot *os.File
	desc       string
}

// OpenPID opens the namespaces and root of process pid. The process is held
// through a pidfd while its /proc entries are opened, and checked to still be
// alive afterwards, so a PID that is reused in between is detected rather than
// silently redirecting the mount.
func OpenPID(pid int) (_ *Target, retErr error) {
	if pid <= 0 {
		return nil, withClass(ErrInvalidArgument, fmt.Errorf("invalid pid %d", pid))
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, withClass(ErrTargetNotFound, fmt.Errorf("process %d does not exist", pid))
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	t := &Target{pid: pid, pidfd: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid)), desc: fmt.Sprintf("pid %d", pid)}
	defer func() {
		if retErr != nil {
			t.Close()
		}
	}()
	proc := fmt.Sprintf("/proc/%d", pid)
	if t.netns, err = openNS(proc+"/ns/net", unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("open netns of pid %d: %w", pid, err)
	}
	if t.mntns, err = openNS(proc+"/ns/mnt", unix.CLONE_NEWNS); err != nil {
		return nil, fmt.Errorf("open mntns of pid %d: %w", pid, err)
	}
	if t.root, err = openPath(proc + "/root"); err != nil {
		return nil, withClass(ErrTargetNotFound, fmt.Errorf("open root of pid %d: %w", pid, err))
	}
	// The pidfd pins the process identity: if it is still alive now, the
	// /proc entries above were this process's and not a successor's.
	if err := unix.PidfdSendSignal(int(t.pidfd.Fd()), 0, nil, 0); err != nil {
		return nil, withClass(ErrTargetNotFound, fmt.Errorf("process %d exited while opening its namespaces: %w", pid, err))
	}
	return t, nil
}

// OpenPaths opens a network namespace and a mount namespace by path (for
// example /run/netns/NAME and a bind-mounted mount namespace file) for
// namespaces that have no process. Mount targets are resolved inside the
// mount namespace's root.
func OpenPaths(netnsPath, mntnsPath string) (_ *Target, retErr error) {
	if netnsPath == "" || mntnsPath == "" {
		return nil, withClass(ErrInvalidArgument, errors.New("both a network and a mount namespace path are needed"))
	}
	t := &Target{desc: fmt.Sprintf("netns %s, mntns %s", netnsPath, mntnsPath)}
	defer func() {
		if retErr != nil {
			t.Close()
		}
	}()
	var err error
	if t.netns, err = openNS(netnsPath, unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	if t.mntns, err = openNS(mntnsPath, unix.CLONE_NEWNS); err != nil {
		return nil, fmt.Errorf("open mntns: %w", err)
	}
	return t, nil
}

// OpenNetNS opens the network namespace at path (for example the
// CNI_NETNS of a CNI call, /run/netns/NAME) as a Target that has no mount
// namespace: Do(NetNS, ...) and route checks work on it, mounting does not.
// A path that does not exist is ErrTargetNotFound; one that is not a
// network namespace (an empty bind-mount point left behind) is
// ErrInvalidArgument.
func OpenNetNS(path string) (*Target, error) {
	if path == "" {
		return nil, withClass(ErrInvalidArgument, errors.New("empty network namespace path"))
	}
	f, err := openNS(path, unix.CLONE_NEWNET)
	if err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	return &Target{netns: f, desc: "netns " + path}, nil
}

// openNS opens path and checks that it is a namespace of the given type.
func openNS(path string, nstype int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return nil, withClass(ErrTargetNotFound, err)
		}
		return nil, err
	}
	got, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil || got != nstype {
		f.Close()
		return nil, withClass(ErrInvalidArgument, &os.PathError{Op: "check namespace type", Path: path, Err: unix.EINVAL})
	}
	return f, nil
}

// openPath opens path as an O_PATH directory descriptor.
func openPath(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// String describes the target for messages.
func (t *Target) String() string { return t.desc }

// PID returns the target's process ID, or 0 for a target opened by paths.
func (t *Target) PID() int { return t.pid }

// NetNSInode returns the inode number that identifies the target's network
// namespace (as shown by `ls -L -i /proc/PID/ns/net`).
func (t *Target) NetNSInode() uint64 { return nsidOf(t.netns).Ino }

// MountNSInode returns the inode number of the target's mount namespace.
func (t *Target) MountNSInode() uint64 { return nsidOf(t.mntns).Ino }

// NetNS returns the identity of the target's network namespace; the zero
// NSID once closed.
func (t *Target) NetNS() NSID { return nsidOf(t.netns) }

// MountNS returns the identity of the target's mount namespace; the zero
// NSID for a target without one (OpenNetNS) or once closed.
func (t *Target) MountNS() NSID { return nsidOf(t.mntns) }

// Isolation says where a Target runs the work that can block on an NFS
// server: creating a superblock (fsconfig talks to the server), unmounting,
// probing a mount.
type Isolation int

const (
	// InHelper runs it in a helper process (this binary re-executed) that
	// is killed at the deadline. The default, and the only choice for a
	// long-lived caller (watch, an agent, a runtime plugin): a thread stuck
	// on a dead server cannot be ended, a process can.
	InHelper Isolation = iota
	// InThread runs it on a locked thread of this process that enters the
	// namespaces, which saves starting the helper (about 40 ms of a 120 ms
	// mount under TCG). A thread stuck on a dead server stays stuck until
	// the process exits, so it is for short-lived callers (a CLI command)
	// only. The caller's deadline still bounds its wait, and a mount that
	// passes its deadline is never attached.
	InThread
)

// SetIsolation sets where t runs the work that can block on a server.
func (t *Target) SetIsolation(i Isolation) { t.isolation = i }

// SetHelper sets the executable that t starts as its helper (InHelper): a
// path, or "" for this binary (/proc/self/exe, the default). It must be a
// build of nsmount from the same source that calls RunHelper first in
// main: nsmount's full binary, run from inside the product binary, starts
// the product binary's own light executable this way, which does not
// initialise the daemons' libraries.
func (t *Target) SetHelper(path string) { t.helper = path }

// SetName sets how messages name the target (for example "container ID
// (pid N)" by the code that found the PID).
func (t *Target) SetName(name string) { t.desc = name }

// Alive reports an error wrapping ErrTargetNotFound when the target's
// process has exited. A target opened by paths has no process: nil.
func (t *Target) Alive() error {
	if t.pidfd == nil {
		return nil
	}
	if err := unix.PidfdSendSignal(int(t.pidfd.Fd()), 0, nil, 0); err != nil {
		return withClass(ErrTargetNotFound, fmt.Errorf("process %d has exited: %w", t.pid, err))
	}
	return nil
}

// NSID identifies a namespace: the device and inode of its nsfs file, as
// stat(2) of /proc/PID/ns/net shows them. The kernel reuses inode numbers
// of freed namespaces, so an NSID names a namespace only while something
// holds it.
type NSID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// String formats the namespace as its inode number, as `lsns` and the
// kernel's "net:[INODE]" links name it.
func (n NSID) String() string { return strconv.FormatUint(n.Ino, 10) }

// IsZero reports whether n names no namespace.
func (n NSID) IsZero() bool { return n == NSID{} }

// NSOfPath returns the namespace that the nsfs file at path names (a
// /proc/PID/ns/* link or a bind mount of one).
func NSOfPath(path string) (NSID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return NSID{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return NSID{Dev: st.Dev, Ino: st.Ino}, nil
}

func nsidOf(f *os.File) NSID {
	var st unix.Stat_t
	if f == nil || unix.Fstat(int(f.Fd()), &st) != nil {
		return NSID{}
	}
	return NSID{Dev: st.Dev, Ino: st.Ino}
}

// Close releases the target's descriptors. It is safe to call more than once.
func (t *Target) Close() error {
	for _, f := range []**os.File{&t.pidfd, &t.netns, &t.mntns, &t.root, &t.resolvRoot} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
	return nil
}

// Do runs fn on a new OS thread that has entered the selected namespaces of
// the target, and returns fn's error. Only fn runs there: the thread is locked
// for its whole life and never unlocked, so when fn returns the Go runtime
// ends the thread instead of returning it, still inside the container's
// namespaces, to the pool. Goroutines that fn starts do NOT run in the
// target's namespaces.
//
// Entering a mount namespace first detaches the thread's filesystem state
// (unshare(CLONE_FS)), which setns requires in a multi-threaded process; the
// thread's root and working directory become the mount namespace's root.
func (t *Target) Do(which Namespaces, fn func() error) error {
	errc := make(chan error, 1)
	go t.run(which, fn, errc)
	return <-errc
}

// run is Do's goroutine. The Go runtime never ends the main thread: a
// goroutine that exits while locked to it leaves it parked for good, here
// inside the container's namespaces. So on the main thread run holds the
// thread and does the work on another goroutine, which then cannot be
// scheduled there.
func (t *Target) run(which Namespaces, fn func() error, errc chan<- error) {
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			t.run(which, fn, errc)
		}()
		<-done
		runtime.UnlockOSThread() // this thread never left its namespaces
		return
	}
	// Deliberately no UnlockOSThread from here on: see Do.
	defer func() {
		if r := recover(); r != nil {
			errc <- fmt.Errorf("panic in namespace of %s: %v", t, r)
		}
	}()
	if err := t.enter(which); err != nil {
		errc <- err
		return
	}
	errc <- fn()
}

// DoEach runs fn(i) for every target in turn on one new OS thread, which
// enters the selected namespaces of targets[i] before fn(i), as Do does for
// one target. It saves a thread per target when many are visited (status
// over a node's containers); the thread is never returned to the pool.
// errs[i] is fn(i)'s error, or why targets[i] could not be entered (the
// others still run).
func DoEach(targets []*Target, which Namespaces, fn func(i int) error) (errs []error) {
	errs = make([]error, len(targets))
	if len(targets) == 0 {
		return errs
	}
	done := make(chan struct{})
	go doEach(targets, which, fn, errs, done)
	<-done
	return errs
}

// doEach is DoEach's goroutine (see run for the main thread's case).
func doEach(targets []*Target, which Namespaces, fn func(int) error, errs []error, done chan<- struct{}) {
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		inner := make(chan struct{})
		go doEach(targets, which, fn, errs, inner)
		<-inner
		runtime.UnlockOSThread() // this thread never left its namespaces
		close(done)
		return
	}
	// Deliberately no UnlockOSThread: see Do.
	defer close(done)
	for i, t := range targets {
		func() {
			defer func() {
				if r := recover(); r != nil {
					errs[i] = fmt.Errorf("panic in namespace of %s: %v", t, r)
				}
			}()
			if err := t.enter(which); err != nil {
				errs[i] = err
				return
			}
			errs[i] = fn(i)
		}()
	}
}

// enter switches the calling (locked) thread into the selected namespaces.
func (t *Target) enter(which Namespaces) error {
	if which&MountNS != 0 {
		if t.mntns == nil {
			return errors.New("target is closed")
		}
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return fmt.Errorf("unshare fs state: %w", err)
		}
		if err := unix.Setns(int(t.mntns.Fd()), unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("enter mntns of %s: %w", t, err)
		}
	}
	if which&NetNS != 0 {
		if t.netns == nil {
			return errors.New("target is closed")
		}
		if err := unix.Setns(int(t.netns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns of %s: %w", t, err)
		}
	}
	return nil
}

// dup returns a copy of t with descriptors of its own (no pidfd).
func (t *Target) dup() (_ *Target, retErr error) {
	c := &Target{isolation: t.isolation, helper: t.helper, pid: t.pid, desc: t.desc}
	defer func() {
		if retErr != nil {
			c.Close()
		}
	}()
	for _, f := range []struct{ from, to **os.File }{{&t.netns, &c.netns}, {&t.mntns, &c.mntns}, {&t.root, &c.root}} {
		if *f.from == nil {
			continue
		}
		d, err := dupCloexec(*f.from)
		if err != nil {
			return nil, fmt.Errorf("dup descriptors of %s: %w", t, err)
		}
		*f.to = d
	}
	return c, nil
}

// dupCloexec duplicates f's descriptor (close-on-exec).
func dupCloexec(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
