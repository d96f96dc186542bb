package cachectl

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// TeardownRequest selects what Teardown cleans up after: the mounts made
// for a container or from a network namespace, and the NFS client state
// they may have left.
type TeardownRequest struct {
	// Container selects the entries recorded for this container ID.
	Container string
	// NetNS selects the entries made from this network namespace, whose
	// stale NFS state is flushed too.
	NetNS *nsmount.NSID
	// Unmount unmounts the selected mounts that still exist (a mount
	// namespace kept alive by another process after the container ended).
	// Without it they are left alone.
	Unmount bool
	// OrphanServers are server addresses whose orphan superblocks are
	// flushed: for a network namespace that is gone, copies of its mounts
	// elsewhere keep its NFS client alive.
	OrphanServers []netip.Addr
	// Owners limits the selected entries to those made for these owners
	// (OwnerNRI, OwnerHook...); nil selects any. The NRI plugin's cleanup
	// of a pod's netns must not take the CSI service's volumes there.
	Owners []string
}

// TeardownReport is what Teardown did. Nothing in it is an error of the
// teardown: a runtime's teardown must never be stuck on what nsmount
// cannot remove (a process it does not own holding a superblock); it is
// reported instead.
type TeardownReport struct {
	// Forgotten are the selected entries whose mount was gone.
	Forgotten []Gone `json:"forgotten,omitempty"`
	// Unmounted are the selected mounts unmounted (with Unmount).
	Unmounted []registry.Entry `json:"unmounted,omitempty"`
	// Flushes are the flushes of the network namespaces concerned.
	Flushes []*FlushReport `json:"flushes,omitempty"`
	// Warnings are what could not be done, one line each.
	Warnings []string `json:"warnings,omitempty"`
}

// Teardown is the one cleanup of the integrations (OCI hook poststop, NRI
// stop and remove events, CNI DEL): it forgets the selected entries whose
// mount is gone, unmounts those that outlived their container (with
// r.Unmount), flushes the stale NFS client state of the network namespaces
// concerned (never ending a process), and the orphans of r.OrphanServers.
// It is idempotent: a second call finds nothing to do.
func (m *Manager) Teardown(ctx context.Context, r TeardownRequest) (*TeardownReport, error) {
	rep := &TeardownReport{}
	selected := func(e *registry.Entry) bool {
		if r.Owners != nil && !slices.Contains(r.Owners, e.Owner) {
			return false
		}
		return r.Container != "" && e.Target.Container == r.Container || r.NetNS != nil && e.Target.NetNS == *r.NetNS
	}
	w, err := m.observe()
	if err != nil {
		return nil, err
	}
	gone, s, err := m.reconcile(w)
	if err != nil {
		return nil, err
	}
	nets := map[nsmount.NSID]bool{}
	if r.NetNS != nil {
		nets[*r.NetNS] = true
	}
	for _, g := range gone {
		if selected(&g.Entry) {
			rep.Forgotten = append(rep.Forgotten, g)
			nets[g.Entry.Target.NetNS] = true
		}
	}
	var live []registry.Entry
	for _, e := range s.Entries {
		if selected(&e) {
			live = append(live, e)
			nets[e.Target.NetNS] = true
		}
	}
	if r.Unmount {
		for _, e := range live {
			if err := m.unmountEntry(ctx, w, e); err != nil {
				rep.Warnings = append(rep.Warnings, err.Error())
				continue
			}
			rep.Unmounted = append(rep.Unmounted, e)
		}
	}
	ordered := make([]nsmount.NSID, 0, len(nets))
	for ns := range nets {
		ordered = append(ordered, ns)
	}
	slices.SortFunc(ordered, func(a, b nsmount.NSID) int { return cmp.Compare(a.Ino, b.Ino) })
	for _, ns := range ordered {
		if _, ok := w.NetPID(ns); !ok {
			// Gone with its superblocks (or they are orphans now), and
			// its locks are no use any more.
			if err := m.reg.RemoveLocks(ctx, fmt.Sprintf("netns-%d-", ns.Ino)); err != nil {
				rep.Warnings = append(rep.Warnings, err.Error())
			}
			continue
		}
		fl, err := m.Flush(ctx, FlushOptions{NetNS: &ns})
		switch {
		case err != nil:
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("flush netns %s: %v", ns, err))
		case len(fl.Remaining) > 0:
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%d stale NFS superblock(s) remain in netns %s: %s", len(fl.Remaining), ns, fl.Remaining[0].Why))
		}
		if fl != nil {
			rep.Flushes = append(rep.Flushes, fl)
		}
	}
	none := nsmount.NSID{}
	for _, server := range r.OrphanServers {
		fl, err := m.Flush(ctx, FlushOptions{NetNS: &none, Orphans: true, Server: server})
		switch {
		case err != nil:
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("flush orphan NFS state of server %s: %v", server, err))
		case len(fl.Remaining) > 0:
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%d orphan NFS superblock(s) of server %s remain: %s", len(fl.Remaining), server, fl.Remaining[0].Why))
		}
		if fl != nil {
			rep.Flushes = append(rep.Flushes, fl)
		}
	}
	return rep, nil
}

// unmountEntry unmounts e's mount through a process left in its mount
// namespace (lazily if it is busy) and forgets it.
func (m *Manager) unmountEntry(ctx context.Context, w *World, e registry.Entry) error {
	pid, ok := w.PIDIn(&e)
	if !ok {
		return fmt.Errorf("%s at %s: no process left in mount namespace %s to unmount it through", e.Source, e.Mountpoint, e.Target.MountNS)
	}
	t, err := m.openPID(pid)
	if err != nil {
		return fmt.Errorf("unmount %s: %w", e.Mountpoint, err)
	}
	defer t.Close()
	_, err = nsmount.Unmount(ctx, t, e.Mountpoint, nsmount.UnmountOptions{})
	if err != nil && !errors.Is(err, nsmount.ErrNotMounted) {
		_, err = nsmount.Unmount(ctx, t, e.Mountpoint, nsmount.UnmountOptions{Lazy: true})
	}
	if err != nil && !errors.Is(err, nsmount.ErrNotMounted) {
		return fmt.Errorf("unmount %s (mount namespace %s): %w", e.Mountpoint, e.Target.MountNS, err)
	}
	return m.forget(e.ID)
}
