package cachectl

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/routing"
)

// StatusOptions modify Status.
type StatusOptions struct {
	// NetNS limits the report to one network namespace.
	NetNS *nsmount.NSID
	// Probe asks each mount's server (TCP connect from the container's
	// netns, then a getattr and statfs of the mount root in a helper that is
	// killed after Timeout). Without it only local state is read.
	Probe bool
	// Timeout bounds each probe; zero means nsmount.DefaultProbeMountTimeout.
	Timeout time.Duration
	// Parallel bounds how many mounts are probed at once (default 8). A
	// hung server costs its own probes the timeout, not the others.
	Parallel int
}

// MountStatus is the state of one tracked mount.
type MountStatus struct {
	Entry registry.Entry `json:"entry"`
	// RouteNow is the route the container's netns uses to the recorded
	// address now; Drift lists how it differs from the recorded one.
	RouteNow   *routing.Route `json:"route_now,omitempty"`
	RouteError string         `json:"route_error,omitempty"`
	Drift      []string       `json:"drift,omitempty"`
	// Reachable is the TCP check of the server's NFS port, the one the
	// mount was made with (with Probe).
	Reachable  *bool  `json:"reachable,omitempty"`
	ReachError string `json:"reach_error,omitempty"`
	// Health is the filesystem's own answer (with Probe).
	Health *nsmount.Health `json:"health,omitempty"`
	// Verdict sums it up: "ok", "drift", "stale" (ESTALE), "broken" (other
	// errors), "hung", "unreachable", "unknown" (not probed and no drift).
	Verdict string `json:"verdict"`
	// Advice is what to do, for people.
	Advice string `json:"advice,omitempty"`
}

// Report is the output of Status.
type Report struct {
	Taken  time.Time     `json:"taken"`
	Mounts []MountStatus `json:"mounts"`
	NetNS  []*NetNSState `json:"netns"`
	// Orphans are NFS superblocks of network namespaces with no process
	// left, kept alive by a mount (see World.Orphans); reported when no
	// network namespace was selected.
	Orphans []Superblock `json:"orphans,omitempty"`
	// Gone are registry entries removed because their mount or namespace
	// is gone.
	Gone []Gone `json:"gone"`
}

// Status reconciles the registry with the kernel and reports, per tracked
// mount, the route now against the recorded one and (with Probe) the
// server's reachability and the mount's health; per network namespace with
// tracked mounts, the kernel's NFS clients and superblocks, which of them
// are stale, where they are still mounted and who holds them open, and the
// namespace's NFSv4 client identity.
func (m *Manager) Status(ctx context.Context, o StatusOptions) (*Report, error) {
	rep := &Report{}
	w, err := m.observe()
	if err != nil {
		return nil, err
	}
	if rep.Gone, err = m.reconcile(w); err != nil {
		return nil, err
	}
	s, err := m.state()
	if err != nil {
		return nil, err
	}
	var entries []registry.Entry
	nets := map[nsmount.NSID]bool{}
	for _, e := range s.Entries {
		if o.NetNS == nil || e.Target.NetNS == *o.NetNS {
			entries = append(entries, e)
			nets[e.Target.NetNS] = true
		}
	}
	if o.NetNS != nil {
		nets[*o.NetNS] = true
	}
	for ns := range nets {
		if _, ok := w.NetPID(ns); !ok {
			continue // no process to read it through (gone since, or by path)
		}
		st, err := w.NetNS(ns, s, true)
		if err != nil {
			return nil, err
		}
		rep.NetNS = append(rep.NetNS, st)
	}
	if o.NetNS == nil {
		if rep.Orphans, err = w.Orphans(s, true); err != nil {
			return nil, err
		}
	}
	rep.Taken = w.Taken
	sort.Slice(rep.NetNS, func(i, j int) bool { return rep.NetNS[i].NetNS.Ino < rep.NetNS[j].NetNS.Ino })
	// Per netns (its NFSv4 identity) and per mount (its route, and with
	// Probe its server and health), each on its own goroutine, at most
	// Parallel at once: a hung server costs its own probe the timeout.
	par := o.Parallel
	if par <= 0 {
		par = 8
	}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for _, st := range rep.NetNS {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			st.ClientID = m.clientID(ctx, st.PID)
		})
	}
	rep.Mounts = make([]MountStatus, len(entries))
	for i, e := range entries {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			rep.Mounts[i] = m.mountStatus(ctx, w, e, o)
		})
	}
	wg.Wait()
	return rep, nil
}

func (m *Manager) clientID(ctx context.Context, pid int) string {
	t, err := m.openPID(pid)
	if err != nil {
		return ""
	}
	defer t.Close()
	id, _ := kernel.ClientIdentity(ctx, t)
	return id
}

func (m *Manager) mountStatus(ctx context.Context, w *World, e registry.Entry, o StatusOptions) MountStatus {
	ms := MountStatus{Entry: e}
	if _, ok := w.PIDIn(&e); !ok {
		ms.Verdict, ms.Advice = "unknown", "no process in the mount namespace to check through"
		return ms
	}
	t, err := m.openIn(w, &e)
	if err != nil {
		ms.Verdict, ms.RouteError = "unknown", err.Error()
		return ms
	}
	defer t.Close()
	addr, err := netip.ParseAddr(e.Address)
	if err != nil {
		ms.Verdict, ms.RouteError = "unknown", fmt.Sprintf("recorded address %q: %v", e.Address, err)
		return ms
	}
	router, err := routing.NewRouter(func(fn func() error) error { return t.Do(nsmount.NetNS, fn) })
	if err != nil {
		ms.RouteError = err.Error()
	} else {
		defer router.Close()
		r, err := router.Lookup(addr)
		if err != nil {
			ms.RouteError = err.Error()
		} else {
			ms.RouteNow = &r
			ms.Drift = drift(e.Route, r)
		}
	}
	if o.Probe {
		if router != nil {
			port := e.Port
			if port == 0 {
				port = nsmount.DefaultNFSPort
			}
			err := router.Probe(ctx, netip.AddrPortFrom(addr, port), orDefault(o.Timeout, nsmount.DefaultProbeMountTimeout))
			reach := err == nil
			ms.Reachable = &reach
			if err != nil {
				ms.ReachError = err.Error()
			}
		}
		h, err := nsmount.ProbeMount(ctx, t, e.Mountpoint, e.MountID, o.Timeout)
		if err != nil {
			h.Error = err.Error()
		}
		ms.Health = &h
	}
	ms.Verdict, ms.Advice = verdict(&ms)
	return ms
}

// drift lists the differences between the recorded route and now. An entry
// rebuilt from mountinfo has no recorded route: nothing to compare.
func drift(was registry.Route, now routing.Route) []string {
	if was == (registry.Route{}) {
		return nil
	}
	var d []string
	if was.Iface != now.Iface {
		d = append(d, fmt.Sprintf("interface %s -> %s", was.Iface, now.Iface))
	}
	gw := ""
	if now.Gateway.IsValid() {
		gw = now.Gateway.String()
	}
	if was.Gateway != gw {
		d = append(d, fmt.Sprintf("gateway %s -> %s", orNone(was.Gateway), orNone(gw)))
	}
	if was.Source != now.Source.String() {
		d = append(d, fmt.Sprintf("source %s -> %s", was.Source, now.Source))
	}
	return d
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func verdict(ms *MountStatus) (string, string) {
	h := ms.Health
	switch {
	case h != nil && h.Hung:
		return "hung", "the server does not answer; nsmount remount (or umount --force) once it is back or moved"
	case h != nil && h.String() == "ESTALE":
		return "stale", "the server no longer knows this mount's file handles (server moved or re-exported): nsmount remount"
	case h != nil && !h.OK():
		return "broken", "the mount fails: " + h.Error
	case ms.Reachable != nil && !*ms.Reachable:
		return "unreachable", "the server's NFS port does not answer from the container's network: " + ms.ReachError
	case len(ms.Drift) > 0:
		return "drift", "the route changed since the mount; the connection may still use the old path: nsmount remount"
	case ms.RouteError != "":
		return "unreachable", "no route from the container's network: " + ms.RouteError
	case h == nil:
		return "unknown", ""
	}
	return "ok", ""
}
