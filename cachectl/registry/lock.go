package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// locksDir holds the named locks, in the registry directory.
const locksDir = "locks"

// Lock is a named lock held across processes (see Registry.Lock).
type Lock struct {
	f    *os.File
	path string
}

// Lock takes the lock called name (letters, digits, '.', '-', '_', ':'),
// waiting until it is free, ctx is done, or 30 s have passed. nsmount
// names one per network namespace and server address: every decision
// that looks at that server's NFS client state in that namespace and then
// changes it (mount, remount, flush) holds it from the look to the change,
// so that none takes another's mount in progress for stale state.
//
// The lock is a flock(2) of a file in DIR/locks; the waiting is in the
// kernel, woken at once when the holder lets go, not polled. Unlock
// releases it; a process that dies releases its locks with it.
func (r *Registry) Lock(ctx context.Context, name string) (*Lock, error) {
	return r.lock(ctx, name, unix.LOCK_EX)
}

// LockShared takes the lock called name shared: with other shared holders,
// never with an exclusive one (Lock). nsmount names one per mount (see
// cachectl): a probe holds it shared for the moments it holds the mount,
// an unmount holds it exclusively, and so waits for the probes in flight
// (each bounded by its timeout) instead of failing with EBUSY.
func (r *Registry) LockShared(ctx context.Context, name string) (*Lock, error) {
	return r.lock(ctx, name, unix.LOCK_SH)
}

func (r *Registry) lock(ctx context.Context, name string, how int) (*Lock, error) {
	if name == "" || len(name) > 200 || strings.ContainsFunc(name, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' || c == ':')
	}) {
		return nil, fmt.Errorf("lock name %q: want letters, digits, '.', '-', '_' or ':'", name)
	}
	dir := filepath.Join(r.dir, locksDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create lock dir: %w", err)
	}
	path := filepath.Join(dir, strings.ReplaceAll(name, ":", "_"))
	timeout := lockTimeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = max(time.Until(d), 0)
	}
	deadline := time.Now().Add(timeout)
	for {
		f, err := lockFileAt(path, how, max(time.Until(deadline), 0))
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("lock %s: %w", name, context.Cause(ctx))
			}
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		// A lock file is removed (RemoveLock) only while locked: one
		// that was removed while this process waited is not the lock any
		// more, and whoever makes the file anew must not be locked out.
		if samePath(f, path) {
			return &Lock{f: f, path: path}, nil
		}
		f.Close()
	}
}

// RemoveLock removes the file of the lock called name, once nobody holds
// it (for a network namespace that is gone). Taking the lock later makes
// the file again.
func (r *Registry) RemoveLock(ctx context.Context, name string) error {
	l, err := r.Lock(ctx, name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove lock %s: %w", name, err)
	}
	return nil
}

// samePath reports whether f is still the file at path.
func samePath(f *os.File, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// Held reports whether the lock called name is held exclusively now (an
// unmount in progress, for a mount's lock), without waiting and without
// making its file.
func (r *Registry) Held(name string) bool {
	f, err := os.OpenFile(filepath.Join(r.dir, locksDir, strings.ReplaceAll(name, ":", "_")), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	return errors.Is(unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB), unix.EWOULDBLOCK)
}

// Remove removes the lock's file and releases the lock (for a lock of
// something that is gone, as RemoveLock, by its exclusive holder).
func (l *Lock) Remove() error {
	if l == nil || l.f == nil {
		return nil
	}
	defer l.Unlock()
	if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove lock %s: %w", filepath.Base(l.path), err)
	}
	return nil
}

// Unlock releases the lock. It is safe to call more than once.
func (l *Lock) Unlock() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// errLockTimeout is the error of a lock not taken in time.
var errLockTimeout = errors.New("held by another nsmount")

// lockFileAt opens path (creating it, mode 0600) and takes a flock of kind
// how on it, waiting at most timeout. The wait is a blocking flock(2) on a
// goroutine of its own: a wait that times out leaves that goroutine (and
// its thread) blocked in the kernel until the lock comes free, and then it
// lets go of it at once.
func lockFileAt(path string, how int, timeout time.Duration) (*os.File, error) {
	open := func() (*os.File, error) {
		return os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	}
	f, err := open()
	if err != nil {
		return nil, err
	}
	err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
	if err == nil {
		return f, nil
	}
	f.Close()
	if !errors.Is(err, unix.EWOULDBLOCK) {
		return nil, fmt.Errorf("flock %s: %w", path, err)
	}
	type result struct {
		f   *os.File
		err error
	}
	got := make(chan result)
	abandon := make(chan struct{})
	go func() {
		f, err := open()
		if err == nil {
			err = unix.Flock(int(f.Fd()), how)
			for errors.Is(err, unix.EINTR) {
				err = unix.Flock(int(f.Fd()), how)
			}
			if err != nil {
				f.Close()
				f = nil
			}
		}
		select {
		case got <- result{f, err}:
		case <-abandon:
			if f != nil {
				f.Close()
			}
		}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-got:
		if r.err != nil {
			return nil, fmt.Errorf("flock %s: %w", path, r.err)
		}
		return r.f, nil
	case <-timer.C:
		close(abandon)
		return nil, fmt.Errorf("%s: %w for over %s", path, errLockTimeout, timeout.Round(time.Millisecond))
	}
}

// RemoveLocks removes the files of every lock whose name starts with
// prefix (see RemoveLock).
func (r *Registry) RemoveLocks(ctx context.Context, prefix string) error {
	ents, err := os.ReadDir(filepath.Join(r.dir, locksDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list locks: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			errs = append(errs, r.RemoveLock(ctx, e.Name()))
		}
	}
	return errors.Join(errs...)
}
