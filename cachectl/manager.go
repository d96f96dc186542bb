package cachectl

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// Manager carries out nsmount's commands against the registry. Every mount
// it makes is recorded, stale NFS client state is found and flushed before
// it can be inherited, and every later decision about a mount checks the
// admission it was made under. A Manager is safe for concurrent use, and
// several nsmount processes may use one registry at once.
type Manager struct {
	reg       *registry.Registry
	proc      kernel.Proc
	knobs     Shutdowner
	isolation nsmount.Isolation
	helper    string
	keepConns bool

	mu      sync.Mutex
	notices []string
}

// Config configures a Manager.
type Config struct {
	// StateDir is the registry's directory; "" means registry.DefaultDir.
	StateDir string
	// Proc is the procfs to read; the zero value reads /proc.
	Proc kernel.Proc
	// Shutdowner reaches the superblocks' shutdown knob. nil means the
	// kernel's when Proc is the real /proc, and none otherwise (the PIDs
	// of another procfs cannot be entered).
	Shutdowner Shutdowner
	// Isolation is where the targets the Manager opens itself (to probe,
	// unmount or remount through a process) run the work that can block on
	// a server: nsmount.InHelper (the default) for a long-lived Manager
	// (watch, an agent), nsmount.InThread for one command's.
	Isolation nsmount.Isolation
	// Helper is the executable those targets start as their helper (see
	// nsmount.Target.SetHelper); "" means this binary.
	Helper string
	// KeepConnections: a remount leaves the netns's NFS client for the
	// server's address alone: after a route change its connection is not
	// reset, and RemountOptions.RetireClient is ignored (see
	// Manager.Remount).
	KeepConnections bool
}

// Open opens the registry in c.StateDir (creating it) and returns a
// Manager over it.
func Open(c Config) (*Manager, error) {
	reg, err := registry.Open(c.StateDir)
	if err != nil {
		return nil, err
	}
	m := &Manager{reg: reg, proc: c.Proc, knobs: c.Shutdowner, isolation: c.Isolation, helper: c.Helper, keepConns: c.KeepConnections}
	if m.knobs == nil && c.Proc.Root == "" {
		m.knobs = kernelKnobs{}
	}
	return m, nil
}

// Registry returns the registry the Manager records in.
func (m *Manager) Registry() *registry.Registry { return m.reg }

// Notices returns, and forgets, what the Manager noticed on its own since
// the last call (a corrupt registry set aside and rebuilt), one line each.
func (m *Manager) Notices() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.notices
	m.notices = nil
	return n
}

func (m *Manager) notice(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.notices = append(m.notices, fmt.Sprintf(format, args...))
}

// view calls fn with the registry's state (a copy it may change), after
// repairing a corrupt registry.
func (m *Manager) view(fn func(*registry.State) error) error {
	return m.repaired(func() error { return m.reg.View(fn) })
}

// repaired runs op; when the registry turns out corrupt, it rebuilds the
// state from the kernel (RebuildFromMountinfo), has the registry set the
// file aside and store it, and runs op again.
func (m *Manager) repaired(op func() error) error {
	err := op()
	if !errors.Is(err, registry.ErrCorrupt) {
		return err
	}
	s, rerr := rebuild(m.proc)
	if rerr != nil {
		return fmt.Errorf("%w; rebuild from mountinfo: %w", err, rerr)
	}
	rep, rerr := m.reg.Repair(s)
	if rerr != nil {
		return rerr
	}
	if rep != nil {
		m.notice("registry %s was corrupt (%s): set aside as %s, rebuilt %d entries from mountinfo", m.reg.Dir(), rep.Why, rep.Aside, rep.Entries)
	}
	return op()
}

// state returns a copy of the registry's state.
func (m *Manager) state() (*registry.State, error) {
	var out *registry.State
	err := m.view(func(s *registry.State) error { out = s; return nil })
	return out, err
}

// netnsState returns the registry's entries of network namespace ns only
// (read without the others').
func (m *Manager) netnsState(ns nsmount.NSID) (*registry.State, error) {
	var out *registry.State
	err := m.repaired(func() error {
		return m.reg.ViewNetNS(ns, func(s *registry.State) error { out = s; return nil })
	})
	return out, err
}

// put records e (and nothing else).
func (m *Manager) put(e registry.Entry) error {
	return m.repaired(func() error { return m.reg.Put(e) })
}

// forget removes the entries with the given IDs, if still there.
func (m *Manager) forget(ids ...string) error {
	_, err := m.forgot(ids...)
	return err
}

// forgot removes the entries with the given IDs, if still there, and
// returns those it removed itself.
func (m *Manager) forgot(ids ...string) ([]string, error) {
	var removed []string
	err := m.repaired(func() error {
		var err error
		removed, err = m.reg.Remove(ids...)
		return err
	})
	return removed, err
}

// lockServer takes the lock of server's NFS client state in network
// namespace ns (see registry.Registry.Lock).
func (m *Manager) lockServer(ctx context.Context, ns nsmount.NSID, server netip.Addr) (*registry.Lock, error) {
	l, err := m.reg.Lock(ctx, serverLockName(ns, server))
	if err != nil {
		return nil, nsmount.WithClass(nsmount.ErrTimeout, err)
	}
	return l, nil
}

func serverLockName(ns nsmount.NSID, server netip.Addr) string {
	return fmt.Sprintf("netns-%d-%s", ns.Ino, server.Unmap())
}

// mountLockName names the lock of the mount point mountpoint in mount
// namespace mntns (of a process in network namespace netns, whose teardown
// removes it with the server locks). A probe holds it shared while it
// holds the mount (openat, GETATTR, statfs), an unmount exclusively: the
// unmount waits for the probes in flight instead of failing with EBUSY.
// The name holds a hash of the cleaned path: an unmount by another path to
// the same mount (a symlink) does not wait, and is left to its EBUSY retry.
func mountLockName(netns, mntns nsmount.NSID, mountpoint string) string {
	h := fnv.New64a()
	h.Write([]byte(path.Clean(mountpoint)))
	return fmt.Sprintf("netns-%d-mount-%d-%016x", netns.Ino, mntns.Ino, h.Sum64())
}

// lockMountShared takes e's mount lock shared, waiting at most timeout; nil
// when it cannot be had (the probe goes on without: the lock only spares
// an unmount its EBUSY retries).
func (m *Manager) lockMountShared(ctx context.Context, e *registry.Entry, timeout time.Duration) *registry.Lock {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	l, err := m.reg.LockShared(ctx, mountLockName(e.Target.NetNS, e.Target.MountNS, e.Mountpoint))
	if err != nil {
		return nil
	}
	return l
}

// Shutdowner reads and uses the shutdown knob of NFS superblocks
// (/sys/fs/nfs/DEV/shutdown, Linux 6.6+), in the network namespace of a
// process.
type Shutdowner interface {
	// ShutdownState reports, per superblock in devs, whether it is shut
	// down; superblocks without the knob are absent.
	ShutdownState(ctx context.Context, pid int, devs []string) (map[string]bool, error)
	// Shutdown shuts superblock dev down.
	Shutdown(ctx context.Context, pid int, dev string) error
}

// kernelKnobs is the Shutdowner of the running kernel.
type kernelKnobs struct{}

func (kernelKnobs) ShutdownState(ctx context.Context, pid int, devs []string) (map[string]bool, error) {
	t, err := nsmount.OpenPID(pid)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	return kernel.ShutdownState(ctx, t, devs)
}

func (kernelKnobs) Shutdown(ctx context.Context, pid int, dev string) error {
	t, err := nsmount.OpenPID(pid)
	if err != nil {
		return err
	}
	defer t.Close()
	return kernel.Shutdown(ctx, t, dev)
}

// openPID opens process pid as a target with the Manager's isolation.
func (m *Manager) openPID(pid int) (*nsmount.Target, error) {
	t, err := nsmount.OpenPID(pid)
	if err != nil {
		return nil, err
	}
	t.SetIsolation(m.isolation)
	t.SetHelper(m.helper)
	return t, nil
}

// observe takes a full observation of the kernel (every process and mount
// namespace): for commands about the whole machine, and for a netns that
// has stale state.
func (m *Manager) observe() (*World, error) {
	w, err := Observe(m.proc)
	if err != nil {
		return nil, err
	}
	w.Shutdowner = m.knobs
	return w, nil
}

// reconcile removes the entries that w shows gone and returns them, and
// the registry's state without them (read once for both). An entry that
// another nsmount process removed meanwhile is not returned: of several
// reconciling at once (the stop and the remove of one container), one
// reports each entry gone.
func (m *Manager) reconcile(w *World) ([]Gone, *registry.State, error) {
	s, err := m.state()
	if err != nil {
		return nil, nil, err
	}
	gone := w.Reconcile(s)
	// A mount that an unmount is taking away (its lock held) is that
	// unmount's to forget: reported here, it would read as lost.
	gone = slices.DeleteFunc(gone, func(g Gone) bool {
		return m.reg.Held(mountLockName(g.Entry.Target.NetNS, g.Entry.Target.MountNS, g.Entry.Mountpoint))
	})
	if len(gone) == 0 {
		return nil, s, nil
	}
	ids := make([]string, len(gone))
	for i, g := range gone {
		ids[i] = g.Entry.ID
	}
	removed, err := m.forgot(ids...)
	if err != nil {
		return nil, nil, err
	}
	mine := gone[:0]
	for _, g := range gone {
		if slices.Contains(removed, g.Entry.ID) {
			mine = append(mine, g)
		}
	}
	return mine, s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
