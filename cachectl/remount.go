package cachectl

import (
	"context"
	"fmt"
	"time"

	"github.com/nsmount/nsmount/nsmount"
)

// Remounted is the result of a remount.
type Remounted struct {
	Old     Entry            `json:"old"`
	New     Entry            `json:"new"`
	Mounted *nsmount.Mounted `json:"mounted"`
	Elapsed time.Duration    `json:"elapsed"`
	Why     string           `json:"why,omitempty"`
}

// FindEntry returns the live entry for mountpoint in the mount namespace
// of t.
func (m *Manager) FindEntry(t *nsmount.Target, mountpoint string) (*Entry, error) {
	var found *Entry
	mntns := nsid(t.MountNSInode())
	gone, err := m.reconciled(func(s *State, _ *World) error {
		for i := range s.Entries {
			if e := s.Entries[i]; e.Target.MountNS == mntns && e.Mountpoint == mountpoint {
				found = &e
			}
		}
		return nil
	})
	m.reportGone(gone)
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, nsmount.WithClass(nsmount.ErrNotMounted, fmt.Errorf("no nsmount mount at %s in %s (nsmount status lists them)", mountpoint, t))
	}
	return found, nil
}

// Remount redoes e's decision (resolve, route, check from the container's
// network now) and replaces the mount in place with nsmount.Replace: a new
// superblock first, then the swap, then the old mount is detached. The
// registry entry is replaced. why is recorded in reports.
func (m *Manager) Remount(ctx context.Context, e Entry, why string) (*Remounted, error) {
	start := time.Now()
	w, err := Observe(m.Proc)
	if err != nil {
		return nil, err
	}
	pid, ok := w.PIDIn(&e)
	if !ok {
		return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("no process left in the mount namespace of %s", e.Mountpoint))
	}
	t, err := nsmount.OpenPID(pid)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if nsid(t.NetNSInode()) != e.Target.NetNS {
		return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("pid %d is no longer in the network namespace %s was mounted from", pid, e.Mountpoint))
	}
	req, err := requestOf(e)
	if err != nil {
		return nil, err
	}
	mnt, err := nsmount.Replace(ctx, t, req, e.MountID)
	if err != nil {
		return nil, fmt.Errorf("remount %s at %s: %w", e.Source, e.Mountpoint, err)
	}
	ne := entryOf(mnt, req, MountOptions{
		Owner: e.Owner, Container: e.Target.Container,
		NetNSPath: e.Target.NetNSPath, MountNSPath: e.Target.MountNSPath,
	})
	ne.Target.PIDStart, _ = m.Proc.StartTime(pid)
	if ne.Owner == "rebuilt" {
		ne.Owner = ""
	}
	err = m.Registry.Update(func(s *State) error {
		s.Remove(func(x *Entry) bool { return x.ID == e.ID })
		s.Put(ne)
		return nil
	})
	r := &Remounted{Old: e, New: ne, Mounted: mnt, Elapsed: time.Since(start), Why: why}
	if err != nil {
		return r, fmt.Errorf("remounted %s at %s, but recording it failed: %w", e.Source, e.Mountpoint, err)
	}
	return r, nil
}

// requestOf rebuilds the user's request behind e.
func requestOf(e Entry) (nsmount.Request, error) {
	src := e.Request.Source
	if src == "" {
		src = e.Source
	}
	source, err := nsmount.ParseSource(src)
	if err != nil {
		return nsmount.Request{}, fmt.Errorf("recorded source of %s: %w", e.Mountpoint, err)
	}
	opts, err := nsmount.ParseOptions(e.Request.Options)
	if err != nil {
		return nsmount.Request{}, fmt.Errorf("recorded options of %s: %w", e.Mountpoint, err)
	}
	fstype := e.Request.FSType
	if fstype == "" {
		fstype = e.FSType
	}
	return nsmount.Request{
		Source: source, FSType: fstype, Options: opts, Target: e.Mountpoint,
		ResolveFrom: e.Request.ResolveFrom,
	}, nil
}
