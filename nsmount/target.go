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

// Do runs fn on an OS thread that has entered the selected namespaces of
// the target, and returns fn's error. Goroutines that fn starts do NOT run
// in the target's namespaces.
//
// With MountNS (or none), fn runs on a new OS thread that is locked for
// its whole life and never unlocked, so when fn returns the Go runtime
// ends the thread instead of returning it, still inside the container's
// namespaces, to the pool. Entering a mount namespace first detaches the thread's
// filesystem state (unshare(CLONE_FS)), which setns requires in a
// multi-threaded process; the thread's root and working directory become
// the mount namespace's root, and fn may change them (chroot, fchdir).
//
// With NetNS alone, the network namespace is the only thread state that
// changes, and it can be put back, as CNI's ns.Do does: fn runs on a
// locked thread of the pool that enters the target's network namespace and
// afterwards goes back to its own. Only a thread that is back is unlocked;
// one whose return fails stays locked, and the runtime ends it. That saves
// the creation and exit of a thread, and the hand-offs between threads
// around them, for each network step of a mount (the route lookup, the
// preflight dial, reading the namespace's NFS volumes). Such an fn must
// leave the thread's other state alone (mount namespace, root,
// credentials): the thread goes back to the pool.
func (t *Target) Do(which Namespaces, fn func() error) error {
	errc := make(chan error, 1)
	if which == NetNS {
		go offMainThread(func() { errc <- t.visitNet(fn) })
	} else {
		go offMainThread(func() { errc <- t.enterForGood(which, fn) })
	}
	return <-errc
}

// offMainThread locks the calling goroutine to its thread and runs work
// there, unless that is the process's main thread: then work runs on
// another goroutine, locked to another thread, while this one holds the
// main thread. work returns with its thread still locked; it unlocks it
// only if the thread is back where it was.
//
// The main thread must never enter a target: the Go runtime never ends
// it (a goroutine that exits locked to it leaves it parked for good, here
// inside the container's namespaces), and it is the thread that
// /proc/PID/ns and /proc/PID/mountinfo show to others (the holders scan of
// another nsmount, an operator's lsns).
func offMainThread(work func()) {
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			offMainThread(work)
		}()
		<-done
		runtime.UnlockOSThread() // this thread never left its namespaces
		return
	}
	work()
}

// visitNet runs fn in the target's network namespace on the calling
// thread, locked and not the main one, and takes the thread back to its
// own network namespace afterwards (see Do). It unlocks the thread only
// once it is back. A panic in fn is returned as an error.
func (t *Target) visitNet(fn func() error) (err error) {
	if t.netns == nil {
		runtime.UnlockOSThread()
		return errors.New("target is closed")
	}
	home, err := os.OpenFile("/proc/thread-self/ns/net", os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open the network namespace to come back to: %w", err)
	}
	defer home.Close()
	if err := unix.Setns(int(t.netns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread() // it never left
		return fmt.Errorf("enter netns of %s: %w", t, err)
	}
	err = func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic in namespace of %s: %v", t, r)
			}
		}()
		return fn()
	}()
	if backErr := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); backErr != nil {
		// Still locked, the thread ends with its goroutine.
		backErr = fmt.Errorf("leave netns of %s: %w", t, backErr)
		if err != nil {
			return fmt.Errorf("%w (and %v)", err, backErr)
		}
		return backErr
	}
	runtime.UnlockOSThread()
	return err
}

// enterForGood runs fn on the calling thread, locked and not the main one,
// after it entered the selected namespaces of the target. The thread stays
// locked, so the runtime ends it with its goroutine (see Do).
func (t *Target) enterForGood(which Namespaces, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in namespace of %s: %v", t, r)
		}
	}()
	if err := t.enter(which); err != nil {
		return err
	}
	return fn()
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
	go offMainThread(func() {
		// Deliberately no UnlockOSThread: see Do.
		defer close(done)
		for i, t := range targets {
			errs[i] = t.enterForGood(which, func() error { return fn(i) })
		}
	})
	<-done
	return errs
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
