// Package nfsstat reads the NFS client statistics of nsmount's mounts: for
// each superblock that a registry entry mounts, the kernel's counters
// (/proc/PID/mountstats read through a process in the mount's mount
// namespace, parsed with prometheus/procfs: Parser) with the entries that
// use it, and the rates between two readings. Only the long-lived
// commands link it: procfs's init alone is a millisecond of every start.
// A reading never waits long for one mount namespace: each is read within
// a deadline, and one that does not answer in time is reported as failed
// and left to finish on its own.
package nfsstat

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// DefaultTimeout bounds the reading of one mount namespace.
const DefaultTimeout = 2 * time.Second

// Superblock is one NFS superblock of nsmount's mounts and its counters.
type Superblock struct {
	// NetNS is the network namespace the entries mounted it from; Dev
	// its device number ("major:minor").
	NetNS nsmount.NSID `json:"netns"`
	Dev   string       `json:"dev"`
	// Entries are the registry entries of its mounts (several when one
	// superblock is mounted in several places, e.g. two containers of a
	// pod mounting the same export).
	Entries []registry.Entry `json:"entries"`
	Stats   kernel.NFSStats  `json:"stats"`
}

// Failure is a mount namespace whose statistics could not be read.
type Failure struct {
	MountNS nsmount.NSID `json:"mntns"`
	PID     int          `json:"pid,omitempty"`
	// Entries are the IDs of the entries left unread.
	Entries []string `json:"entries"`
	Error   string   `json:"error"`
}

// Snapshot is one reading.
type Snapshot struct {
	Taken       time.Time    `json:"taken"`
	Superblocks []Superblock `json:"superblocks"`
	// Failures are the mount namespaces not read (no process left in
	// them, no answer in time, unreadable files).
	Failures []Failure `json:"failures,omitempty"`
	// Unparsed are records of mountstats that did not parse (the other
	// records of their file are read).
	Unparsed []string `json:"unparsed,omitempty"`
	// Missing are entries whose mount was not found where the registry
	// says it is (gone since; the registry is reconciled by nsmount
	// status and watch, not here).
	Missing []string `json:"missing,omitempty"`
}

// Options configure a Reader.
type Options struct {
	// Proc is the procfs to read; the zero value reads /proc.
	Proc kernel.Proc
	// Timeout bounds the reading of one mount namespace; zero means
	// DefaultTimeout.
	Timeout time.Duration
	// Parallel bounds how many mount namespaces are read at once
	// (default 8).
	Parallel int
}

// Reader reads Snapshots. It remembers the mount namespaces whose reading
// has not returned yet, and does not start another there until it has. A
// Reader is safe for concurrent use.
type Reader struct {
	o      Options
	parser *Parser
	mu     sync.Mutex
	busy   map[nsmount.NSID]*inflight // mount namespace -> its reading under way
}

// NewReader returns a Reader; Close releases it.
func NewReader(o Options) (*Reader, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Parallel <= 0 {
		o.Parallel = 8
	}
	p, err := NewParser()
	if err != nil {
		return nil, err
	}
	return &Reader{o: o, parser: p, busy: map[nsmount.NSID]*inflight{}}, nil
}

// Close releases the Reader's parser.
func (r *Reader) Close() error { return r.parser.Close() }

// reading is what one mount namespace gave.
type reading struct {
	pid   int
	stats []kernel.NFSStats
	errs  []error
	err   error
}

// Read reads the statistics of the superblocks of s's entries, each mount
// namespace within the Reader's timeout, all of them within ctx.
func (r *Reader) Read(ctx context.Context, s *registry.State) *Snapshot {
	snap := &Snapshot{Taken: time.Now()}
	byNS := map[nsmount.NSID][]registry.Entry{}
	var order []nsmount.NSID
	for _, e := range s.Entries {
		if _, ok := byNS[e.Target.MountNS]; !ok {
			order = append(order, e.Target.MountNS)
		}
		byNS[e.Target.MountNS] = append(byNS[e.Target.MountNS], e)
	}
	pids := r.pids(byNS)
	results := make([]reading, len(order))
	sem := make(chan struct{}, r.o.Parallel)
	var wg sync.WaitGroup
	for i, ns := range order {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
				results[i] = r.readNS(ctx, ns, pids[ns], false)
			case <-ctx.Done():
				results[i] = reading{err: fmt.Errorf("not read: %w", ctx.Err())}
			}
		})
	}
	wg.Wait()
	sbs := map[string]int{} // netns/dev -> index in snap.Superblocks
	for i, ns := range order {
		res := results[i]
		if res.err != nil {
			f := Failure{MountNS: ns, PID: res.pid, Error: res.err.Error()}
			for _, e := range byNS[ns] {
				f.Entries = append(f.Entries, e.ID)
			}
			snap.Failures = append(snap.Failures, f)
			continue
		}
		for _, err := range res.errs {
			snap.Unparsed = append(snap.Unparsed, err.Error())
		}
		for _, e := range byNS[ns] {
			st, ok := find(res.stats, e.MountID, e.Dev)
			if !ok {
				snap.Missing = append(snap.Missing, e.ID)
				continue
			}
			key := fmt.Sprintf("%d/%s", e.Target.NetNS.Ino, e.Dev)
			if j, ok := sbs[key]; ok {
				snap.Superblocks[j].Entries = append(snap.Superblocks[j].Entries, e)
				continue
			}
			sbs[key] = len(snap.Superblocks)
			snap.Superblocks = append(snap.Superblocks, Superblock{NetNS: e.Target.NetNS, Dev: e.Dev, Entries: []registry.Entry{e}, Stats: st})
		}
	}
	sort.Slice(snap.Superblocks, func(i, j int) bool {
		a, b := snap.Superblocks[i], snap.Superblocks[j]
		if a.NetNS.Ino != b.NetNS.Ino {
			return a.NetNS.Ino < b.NetNS.Ino
		}
		return a.Dev < b.Dev
	})
	return snap
}

func find(stats []kernel.NFSStats, mountID uint64, dev string) (kernel.NFSStats, bool) {
	for _, st := range stats {
		if st.MountID == mountID && st.Dev == dev {
			return st, true
		}
	}
	return kernel.NFSStats{}, false
}

// pids finds a process in each mount namespace: the entry's own process
// when it is still the same one there (the common case, a few reads),
// else one from a scan of every process (once per Read, only if needed).
func (r *Reader) pids(byNS map[nsmount.NSID][]registry.Entry) map[nsmount.NSID]int {
	out := map[nsmount.NSID]int{}
	scan := false
	for ns, entries := range byNS {
		for _, e := range entries {
			pid := e.Target.PID
			if pid <= 0 {
				continue
			}
			if start, err := r.o.Proc.StartTime(pid); err != nil || start != e.Target.PIDStart {
				continue
			}
			if id, err := r.o.Proc.NS(pid, "mnt"); err == nil && id == ns {
				out[ns] = pid
				break
			}
		}
		if out[ns] == 0 {
			scan = true
		}
	}
	if !scan {
		return out
	}
	all, err := r.o.Proc.Scan()
	if err != nil {
		return out
	}
	for ns := range byNS {
		if out[ns] == 0 {
			if p := all.MountNS[ns]; len(p) > 0 {
				out[ns] = p[0]
			}
		}
	}
	return out
}

// errBusy reports a mount namespace whose previous reading has not
// returned.
var errBusy = errors.New("still reading it since an earlier reading")

// inflight is a reading of a mount namespace under way.
type inflight struct {
	since time.Time
	done  chan struct{} // closed when it returns
}

// readNS reads mount namespace ns through pid within the timeout. A read
// that does not return in time is left running; ns stays busy until it
// returns. A caller that finds ns busy gets errBusy at once, or with wait
// waits for that reading to return (within the same timeout) and reads ns
// again: what it gets was read after its call.
func (r *Reader) readNS(ctx context.Context, ns nsmount.NSID, pid int, wait bool) reading {
	if pid == 0 {
		return reading{err: fmt.Errorf("mount namespace %s has no process to read it through", ns)}
	}
	t := time.NewTimer(r.o.Timeout)
	defer t.Stop()
	r.mu.Lock()
	for r.busy[ns] != nil {
		cur := r.busy[ns]
		r.mu.Unlock()
		if !wait {
			return reading{pid: pid, err: fmt.Errorf("mountstats of pid %d: %w (%s ago)", pid, errBusy, time.Since(cur.since).Round(time.Millisecond))}
		}
		select {
		case <-cur.done:
		case <-t.C:
			return reading{pid: pid, err: fmt.Errorf("mountstats of pid %d: %w (%s ago), for %s", pid, errBusy, time.Since(cur.since).Round(time.Millisecond), r.o.Timeout)}
		case <-ctx.Done():
			return reading{pid: pid, err: fmt.Errorf("mountstats of pid %d: %w", pid, ctx.Err())}
		}
		r.mu.Lock()
	}
	fl := &inflight{since: time.Now(), done: make(chan struct{})}
	r.busy[ns] = fl
	r.mu.Unlock()
	done := make(chan reading, 1)
	go func() {
		// The namespace is free again before the result is handed over:
		// a Read that follows at once must not find it busy.
		var res reading
		func() {
			defer func() { r.mu.Lock(); delete(r.busy, ns); close(fl.done); r.mu.Unlock() }()
			stats, errs, err := ReadMountStats(r.o.Proc, pid, r.parser)
			res = reading{pid: pid, stats: stats, errs: errs, err: err}
		}()
		done <- res
	}()
	select {
	case res := <-done:
		return res
	case <-t.C:
		return reading{pid: pid, err: fmt.Errorf("mountstats of pid %d: no answer in %s", pid, r.o.Timeout)}
	case <-ctx.Done():
		return reading{pid: pid, err: fmt.Errorf("mountstats of pid %d: %w", pid, ctx.Err())}
	}
}

// Namespace reads the statistics of every NFS superblock mounted in mount
// namespace ns (nsmount's or not), through process pid, within the
// Reader's timeout (and ctx). A superblock mounted several times there
// gives one NFSStats per mount. Records that did not parse are left out.
func (r *Reader) Namespace(ctx context.Context, ns nsmount.NSID, pid int) ([]kernel.NFSStats, error) {
	res := r.readNS(ctx, ns, pid, false)
	return res.stats, res.err
}

// NamespaceNow is Namespace for a caller that needs a reading made after
// its call (evidence for something that just happened): a reading of ns
// already under way, which Namespace would report as busy, is waited for
// and ns read again, all within the Reader's timeout (and ctx).
func (r *Reader) NamespaceNow(ctx context.Context, ns nsmount.NSID, pid int) ([]kernel.NFSStats, error) {
	res := r.readNS(ctx, ns, pid, true)
	return res.stats, res.err
}
