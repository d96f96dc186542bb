package cachectl

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nsmount/nsmount/cachectl/kmsg"
	"github.com/nsmount/nsmount/cachectl/registry"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/routing"
	"golang.org/x/sys/unix"
)

// WatchOptions modify Watch.
type WatchOptions struct {
	// Interval is how often every mount's route is compared with the
	// recorded one (also done at once on a route, address or link event
	// in its netns). Default 2s.
	Interval time.Duration
	// ProbeInterval is how often every mount's health is probed. Default 5s.
	ProbeInterval time.Duration
	// Timeout bounds one probe: a server silent that long is reported
	// dead. Default 3s.
	Timeout time.Duration
	// Kernel, if set, brings the kernel log's messages (package kmsg,
	// read by the caller) to Watch's watchdog: each server or hung-task
	// message is attributed to the mounts it is about, or reported as
	// ambiguous, and those mounts are checked at once (see watchdog.go).
	Kernel <-chan kmsg.Message
}

// WatchEvent is one thing Watch saw or did.
type WatchEvent struct {
	Time time.Time `json:"time"`
	// Kind is what happened: drift (the route changed), stale (ESTALE),
	// dead (no answer), remounted, remount-failed, denied (the new address
	// is outside the mount's admission: left alone), recovered,
	// forgotten (the mount is gone), netlink, error; probe (every health
	// probe: Detail is its outcome, Elapsed how long it took); kernel (a
	// kernel log message and its attribution, in Kernel), unresponsive
	// (the kernel reports that the mount's server does not answer: an
	// attributed message), responsive (a good probe after unresponsive).
	Kind       string       `json:"kind"`
	Mountpoint string       `json:"mountpoint,omitempty"`
	Source     string       `json:"source,omitempty"`
	NetNS      nsmount.NSID `json:"netns"`
	// Dev is the superblock of the mount ("major:minor"; for "remounted",
	// the old one), Container the entry's container ID, if any.
	Dev       string `json:"dev,omitempty"`
	Container string `json:"container,omitempty"`
	Detail    string `json:"detail,omitempty"`
	// Elapsed is, for "remounted", the time from detection to the new mount
	// in place; for "probe", the probe's duration.
	Elapsed time.Duration `json:"elapsed,omitempty"`
	// Kernel is, for "kernel", the message and what it was attributed to.
	Kernel *KernelReport `json:"kernel,omitempty"`
}

// String formats the event as one line.
func (e WatchEvent) String() string {
	s := fmt.Sprintf("%s %s", e.Time.Format("15:04:05.000"), e.Kind)
	if e.Mountpoint != "" {
		s += fmt.Sprintf(" %s (%s, netns %s)", e.Mountpoint, e.Source, e.NetNS)
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Elapsed > 0 {
		s += fmt.Sprintf(" [%.3fs after detection]", e.Elapsed.Seconds())
	}
	return s
}

// watcher is Watch's state.
type watcher struct {
	m      *Manager
	o      WatchOptions
	events chan<- WatchEvent
	mu     sync.Mutex
	denied map[string]string     // entry ID -> the last denial reported
	busy   map[string]bool       // entry ID -> a check is running
	dead   map[string]bool       // entry ID -> reported dead
	last   map[string]time.Time  // entry ID -> last probe
	subs   map[nsmount.NSID]bool // netns with a netlink subscription
	kick   chan nsmount.NSID
	unresp map[string]bool // entry ID -> the kernel reported its server unresponsive
	dog    *watchdog       // nil without WatchOptions.Kernel
}

// Watch keeps nsmount's mounts right until ctx is done, sending what it
// sees and does to events (it never closes the channel; a slow reader
// slows Watch down, it loses nothing). It re-checks every mount's route
// periodically and at once when its netns reports a route, address or link
// change (netlink, subscribed inside each tracked netns), and probes each
// mount's health; a mount whose route changed or that answers ESTALE is
// remounted (Remount: new mount first, and only inside the mount's recorded
// admission: a new address outside it is reported as "denied" and the mount
// is left alone); a server that does not answer within Timeout is reported
// dead. Each mount is checked on its own goroutine, so one hung server
// never delays the others.
func (m *Manager) Watch(ctx context.Context, o WatchOptions, events chan<- WatchEvent) error {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = 5 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	w := &watcher{m: m, o: o, events: events, busy: map[string]bool{}, dead: map[string]bool{}, denied: map[string]string{}, last: map[string]time.Time{}, subs: map[nsmount.NSID]bool{}, kick: make(chan nsmount.NSID, 64), unresp: map[string]bool{}}
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	if o.Kernel != nil {
		d, err := newWatchdog(w)
		if err != nil {
			return err
		}
		defer d.close() // after wg.Wait
		w.dog = d
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	if w.dog != nil {
		wg.Go(func() { w.dog.run(ctx, &wg, o.Kernel) })
	}
	w.round(ctx, &wg, nil)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			w.round(ctx, &wg, nil)
		case ns := <-w.kick:
			w.round(ctx, &wg, &ns)
		}
	}
}

// event sends e, unless ctx is done.
func (w *watcher) event(ctx context.Context, e WatchEvent) {
	select {
	case w.events <- e:
	case <-ctx.Done():
	}
}

// round starts a check of every entry (of netns only, if set) that is not
// being checked already.
func (w *watcher) round(ctx context.Context, wg *sync.WaitGroup, only *nsmount.NSID) {
	world, err := w.m.observe()
	if err != nil {
		w.event(ctx, WatchEvent{Time: time.Now(), Kind: "error", Detail: err.Error()})
		return
	}
	gone, s, err := w.m.reconcile(world)
	if err != nil {
		w.event(ctx, WatchEvent{Time: time.Now(), Kind: "error", Detail: err.Error()})
		return
	}
	for _, n := range w.m.Notices() {
		w.event(ctx, WatchEvent{Time: time.Now(), Kind: "registry", Detail: n})
	}
	for _, g := range gone {
		w.mu.Lock()
		delete(w.unresp, g.Entry.ID)
		w.mu.Unlock()
		w.event(ctx, WatchEvent{Time: time.Now(), Kind: "forgotten", Mountpoint: g.Entry.Mountpoint, Source: g.Entry.Source, NetNS: g.Entry.Target.NetNS, Dev: g.Entry.Dev, Container: g.Entry.Target.Container, Detail: g.Why})
	}
	if w.dog != nil {
		w.dog.sample(ctx, wg, world)
	}
	for _, e := range s.Entries {
		ns := e.Target.NetNS
		w.mu.Lock()
		subscribed := w.subs[ns]
		w.subs[ns] = true
		w.mu.Unlock()
		if !subscribed {
			if pid, ok := world.NetPID(ns); ok {
				wg.Go(func() { w.subscribe(ctx, ns, pid) })
			}
		}
		if only != nil && ns != *only {
			continue
		}
		w.mu.Lock()
		if w.busy[e.ID] {
			w.mu.Unlock()
			continue
		}
		w.busy[e.ID] = true
		probe := time.Since(w.last[e.ID]) >= w.o.ProbeInterval
		if probe {
			w.last[e.ID] = time.Now()
		}
		w.mu.Unlock()
		wg.Go(func() {
			defer func() { w.mu.Lock(); delete(w.busy, e.ID); w.mu.Unlock() }()
			w.check(ctx, world, e, probe)
		})
	}
}

// check looks at one mount and remounts it when its route drifted or it
// answers ESTALE.
func (w *watcher) check(ctx context.Context, world *World, e registry.Entry, probe bool) {
	ev := func(kind, detail string) WatchEvent {
		return WatchEvent{Time: time.Now(), Kind: kind, Mountpoint: e.Mountpoint, Source: e.Source, NetNS: e.Target.NetNS, Dev: e.Dev, Container: e.Target.Container, Detail: detail}
	}
	if e.Rebuilt {
		return // no recorded route to compare with
	}
	ms := w.m.mountStatus(ctx, world, e, StatusOptions{Probe: false})
	why := ""
	if len(ms.Drift) > 0 {
		why = "route drift: " + strings.Join(ms.Drift, ", ")
		w.event(ctx, ev("drift", strings.Join(ms.Drift, ", ")))
	}
	if why == "" && probe {
		h, err := w.health(ctx, world, e)
		if err == nil {
			p := ev("probe", h.String())
			p.Elapsed = h.Elapsed
			w.event(ctx, p)
		}
		switch {
		case err != nil:
			return // gone meanwhile; the next round reconciles
		case h.Hung:
			w.mu.Lock()
			first := !w.dead[e.ID]
			w.dead[e.ID] = true
			w.mu.Unlock()
			if first {
				w.event(ctx, ev("dead", fmt.Sprintf("server %s does not answer (%s)", e.Address, h.Error)))
			}
			why = "server dead"
		case h.Errno == unix.ESTALE:
			why = "ESTALE: the server no longer knows the mount's file handles"
			w.event(ctx, ev("stale", why))
		case h.OK():
			w.mu.Lock()
			was, unresp := w.dead[e.ID], w.unresp[e.ID]
			delete(w.dead, e.ID)
			delete(w.unresp, e.ID)
			w.mu.Unlock()
			if was {
				w.event(ctx, ev("recovered", "server answers again"))
			}
			if unresp {
				w.event(ctx, ev("responsive", fmt.Sprintf("server %s answers a probe again (%s)", e.Address, h.Elapsed.Round(time.Millisecond))))
			}
		}
	}
	if why == "" {
		return
	}
	start := time.Now()
	r, err := w.m.Remount(ctx, e, why)
	switch {
	case errors.Is(err, nsmount.ErrDenied):
		// The container may have pointed the name elsewhere: the mount
		// stays where its admission allows. Reported once per reason.
		key := why + "\x00" + err.Error()
		w.mu.Lock()
		again := w.denied[e.ID] == key
		w.denied[e.ID] = key
		w.mu.Unlock()
		if !again {
			w.event(ctx, ev("denied", fmt.Sprintf("%s; not remounted: %v", why, err)))
		}
		return
	case err != nil:
		if why != "server dead" || !errors.Is(err, nsmount.ErrUnreachable) {
			w.event(ctx, ev("remount-failed", err.Error()))
		}
		return
	}
	done := ev("remounted", fmt.Sprintf("%s; now %s via %s src %s, dev %s", why, r.New.Address, r.New.Route.Iface, r.New.Route.Source, r.New.Dev))
	done.Elapsed = time.Since(start)
	w.mu.Lock()
	delete(w.dead, e.ID)
	delete(w.denied, e.ID)
	delete(w.unresp, e.ID)
	w.mu.Unlock()
	w.event(ctx, done)
}

func (w *watcher) health(ctx context.Context, world *World, e registry.Entry) (nsmount.Health, error) {
	if _, ok := world.PIDIn(&e); !ok {
		return nsmount.Health{}, errors.New("no process")
	}
	t, err := w.m.openIn(world, &e)
	if err != nil {
		return nsmount.Health{}, err
	}
	defer t.Close()
	return nsmount.ProbeMount(ctx, t, e.Mountpoint, e.MountID, w.o.Timeout)
}

// subscribe listens for route, address and link changes in netns ns
// (through a process pid in it) and kicks a round for that netns on each.
// The socket is created inside the netns and keeps it; it is read here,
// on an ordinary goroutine.
func (w *watcher) subscribe(ctx context.Context, ns nsmount.NSID, pid int) {
	t, err := w.m.openPID(pid)
	if err != nil {
		w.forget(ns)
		return
	}
	fd := -1
	err = t.Do(nsmount.NetNS, func() error {
		var err error
		fd, err = routing.SubscribeChanges()
		return err
	})
	t.Close()
	if err != nil {
		w.event(ctx, WatchEvent{Time: time.Now(), Kind: "netlink", NetNS: ns, Detail: "subscribe: " + err.Error()})
		w.forget(ns)
		return
	}
	defer unix.Close(fd)
	buf := make([]byte, 1<<16)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue // receive timeout: look at ctx again
		}
		if err != nil && !errors.Is(err, unix.ENOBUFS) {
			w.forget(ns)
			return
		}
		if n > 0 || errors.Is(err, unix.ENOBUFS) {
			select {
			case w.kick <- ns:
			default:
			}
		}
	}
}

func (w *watcher) forget(ns nsmount.NSID) {
	w.mu.Lock()
	delete(w.subs, ns)
	w.mu.Unlock()
}
