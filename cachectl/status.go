package cachectl

import (
	"context"
	"errors"
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
	var s *registry.State
	if rep.Gone, s, err = m.reconcile(w); err != nil {
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
	// Per network namespace: the routes of its mounts and its NFSv4
	// identity, read on a thread that visits it (Parallel threads, each
	// entering its share of the namespaces in turn: entering is cheap, a
	// thread is not); then, with Probe, each server and mount.
	byNetNS := map[nsmount.NSID][]int{}
	for i, e := range entries {
		byNetNS[e.Target.NetNS] = append(byNetNS[e.Target.NetNS], i)
	}
	stateOf := map[nsmount.NSID]*NetNSState{}
	for _, st := range rep.NetNS {
		stateOf[st.NetNS] = st
		if _, ok := byNetNS[st.NetNS]; !ok {
			byNetNS[st.NetNS] = nil
		}
	}
	nss := make([]nsmount.NSID, 0, len(byNetNS))
	for ns := range byNetNS {
		nss = append(nss, ns)
	}
	// A netns's NFSv4 identity as recorded by its mounts (what it was when
	// nsmount mounted there, or what nsmount gave it): reading it from the
	// kernel takes a sysfs mounted in the netns, a quarter of a status's
	// time at 200 mounts; it is read only where no mount recorded it.
	recordedID := map[nsmount.NSID]string{}
	for _, e := range entries {
		if e.ClientID != "" {
			recordedID[e.Target.NetNS] = e.ClientID
		}
	}
	views := make(map[nsmount.NSID]*netnsView, len(nss))
	var mu sync.Mutex
	for c := range par {
		wg.Go(func() {
			var mine []nsmount.NSID
			for k := c; k < len(nss); k += par {
				mine = append(mine, nss[k])
			}
			pids := make([]int, len(mine))
			readID := make([]bool, len(mine))
			for k, ns := range mine {
				pids[k], _ = w.NetPID(ns)
				readID[k] = recordedID[ns] == ""
			}
			vs := m.netnsViews(pids, readID)
			mu.Lock()
			for k, ns := range mine {
				views[ns] = vs[k]
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	defer func() {
		for _, v := range views {
			v.close()
		}
	}()
	for ns, v := range views {
		if st := stateOf[ns]; st != nil {
			st.ClientID = v.id
			if id := recordedID[ns]; id != "" {
				st.ClientID, st.ClientIDRecorded = id, true
			}
		}
	}
	rep.Mounts = make([]MountStatus, len(entries))
	for i, e := range entries {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ms := MountStatus{Entry: e}
			m.mountStatusWith(ctx, w, views[e.Target.NetNS], &ms, o)
			rep.Mounts[i] = ms
		})
	}
	wg.Wait()
	return rep, nil
}

// netnsView is what a status needs of one network namespace: a router
// in it and its NFSv4 identity, or why they could not be had.
type netnsView struct {
	t      *nsmount.Target
	router *routing.Router
	id     string
	err    error
}

func (v *netnsView) close() {
	if v.router != nil {
		v.router.Close()
	}
	if v.t != nil {
		v.t.Close()
	}
}

// netnsViews opens a router in the network namespace of each of pids (0:
// none, the view says so) and, where readID[k] is true, reads its NFSv4
// identity, on one thread that enters them in turn (nsmount.DoEach).
func (m *Manager) netnsViews(pids []int, readID []bool) []*netnsView {
	views := make([]*netnsView, len(pids))
	var targets []*nsmount.Target
	var of []int
	for k, pid := range pids {
		v := &netnsView{}
		views[k] = v
		if pid == 0 {
			v.err = errors.New("no process in the network namespace to check through")
			continue
		}
		var err error
		if v.t, err = m.openPID(pid); err == nil {
			targets = append(targets, v.t)
			of = append(of, k)
		} else {
			v.err = err
		}
	}
	inside := true // while DoEach visits the namespaces
	errs := nsmount.DoEach(targets, nsmount.NetNS, func(j int) error {
		v := views[of[j]]
		t := v.t
		// The router makes its netlink handle here, in the namespace;
		// later it makes probe sockets through a Do of its own.
		in := func(fn func() error) error {
			if inside {
				return fn()
			}
			return t.Do(nsmount.NetNS, fn)
		}
		var err error
		if v.router, err = routing.NewRouter(in); err != nil {
			return err
		}
		if readID != nil && readID[of[j]] {
			v.id, _ = kernel.IdentityHere()
		}
		return nil
	})
	inside = false
	for j, err := range errs {
		if err != nil {
			views[of[j]].err = err
		}
	}
	return views
}

// mountStatus checks one mount (its route now; with o.Probe its server and
// the mount itself).
func (m *Manager) mountStatus(ctx context.Context, w *World, e registry.Entry, o StatusOptions) MountStatus {
	pid, _ := w.NetPID(e.Target.NetNS)
	views := m.netnsViews([]int{pid}, nil)
	defer views[0].close()
	ms := MountStatus{Entry: e}
	m.mountStatusWith(ctx, w, views[0], &ms, o)
	return ms
}

// mountStatusWith fills in ms through v, a view of its netns.
func (m *Manager) mountStatusWith(ctx context.Context, w *World, v *netnsView, ms *MountStatus, o StatusOptions) {
	e := ms.Entry
	addr, err := netip.ParseAddr(e.Address)
	if err != nil {
		ms.Verdict, ms.RouteError = "unknown", fmt.Sprintf("recorded address %q: %v", e.Address, err)
		return
	}
	if v.err != nil {
		ms.RouteError = v.err.Error()
	} else if r, err := v.router.Lookup(addr); err != nil {
		ms.RouteError = err.Error()
	} else {
		ms.RouteNow = &r
		ms.Drift = drift(e.Route, r)
	}
	if o.Probe {
		if v.router != nil {
			port := e.Port
			if port == 0 {
				port = nsmount.DefaultNFSPort
			}
			err := v.router.Probe(ctx, netip.AddrPortFrom(addr, port), orDefault(o.Timeout, nsmount.DefaultProbeMountTimeout))
			reach := err == nil
			ms.Reachable = &reach
			if err != nil {
				ms.ReachError = err.Error()
			}
		}
		ms.Health = m.probeEntry(ctx, w, e, o.Timeout)
	}
	ms.Verdict, ms.Advice = verdict(ms)
}

// probeEntry probes e's mount through a process of its mount namespace.
func (m *Manager) probeEntry(ctx context.Context, w *World, e registry.Entry, timeout time.Duration) *nsmount.Health {
	if _, ok := w.PIDIn(&e); !ok {
		return &nsmount.Health{Error: "no process in the mount namespace to probe through"}
	}
	t, err := m.openIn(w, &e)
	if err != nil {
		return &nsmount.Health{Error: err.Error()}
	}
	defer t.Close()
	if l := m.lockMountShared(ctx, &e, orDefault(timeout, nsmount.DefaultProbeMountTimeout)); l != nil {
		defer l.Unlock()
	}
	h, err := nsmount.ProbeMount(ctx, t, e.Mountpoint, e.MountID, timeout)
	if err != nil {
		h.Error = err.Error()
	}
	return &h
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
	if h != nil && !h.OK() {
		// The TCP check of the server's port is the server's answer here.
		server := serverReply{Asked: ms.Reachable != nil}
		if ms.Reachable != nil && !*ms.Reachable {
			server.Err = errors.New(ms.ReachError)
		}
		d := diagnose(*h, server)
		switch {
		case h.Hung:
			return "hung", "the server does not answer; nsmount remount (or umount --force) once it is back or moved"
		case d.Kind == DiagStale:
			return "stale", h.String() + ": the server no longer knows this mount's file handles (server moved, replaced or re-exported): nsmount remount"
		case d.Kind == DiagDead:
			return "unreachable", "the mount fails (" + h.String() + ") and the server's NFS port does not answer from the container's network: " + ms.ReachError
		case d.Remount:
			return "broken", "the mount fails: " + h.Error + "; the server answers, a new mount would not share this one's failure: nsmount remount"
		}
		return "broken", "the mount fails: " + h.Error
	}
	switch {
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
