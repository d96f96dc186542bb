package cachectl

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/cachectl/kmsg"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/routing"
)

// WatchOptions modify Watch.
type WatchOptions struct {
	// Interval is Watch's safety net: how often every mount's route is
	// compared with the recorded one, and the registry reconciled with the
	// kernel (every process and mount namespace observed), even when
	// nothing said that anything changed. Changes are followed as they
	// come: a route, address or link event in a mount's network namespace
	// re-checks that namespace's routes at once, a changed registry is
	// read at once, and a mount or process found gone has the registry
	// reconciled at once. Default 30s.
	Interval time.Duration
	// ProbeInterval is how often every mount's health is probed. Default 5s.
	ProbeInterval time.Duration
	// Timeout bounds one probe: a server silent that long is reported
	// dead. Default 3s.
	Timeout time.Duration
	// ProbeParallel bounds the probes that run at once. A probe that is
	// still waiting for its server after probeHold gives its place up and
	// waits apart: a hung server never holds back the probes of others.
	// Default 8.
	ProbeParallel int
	// ProbeRate bounds how many probes start per second in their turn
	// (default 20): with more mounts than ProbeInterval allows at that
	// rate, each is probed less often (every N/ProbeRate seconds), and
	// watch's cost stays bounded (a probe costs about 4 ms of CPU under
	// TCG, most of it the kernel's getattr and statfs). Probes that
	// evidence asks for (a kernel log line, another mount of the address
	// found stale) do not wait for their turn.
	ProbeRate float64
	// RemountParallel bounds the remounts that run at once (0:
	// DefaultRemountParallel), so that a server change does not storm the
	// new server with every mount at once. Remount attempts of mounts whose
	// server is dead have places of their own, as many: they never hold
	// back the remounts of mounts whose server answers.
	RemountParallel int
	// RemountTimeout bounds the new mount of each remount (0:
	// nsmount.DefaultMountTimeout). The first remount through an NFS
	// client that makes no progress times out after it; the next one
	// retires the client (RemountOptions.RetireClient).
	RemountTimeout time.Duration
	// Kernel, if set, brings the kernel log's messages (package kmsg,
	// read by the caller) to Watch's watchdog: each server or hung-task
	// message is attributed to the mounts it is about, or reported as
	// ambiguous, and those mounts are probed at once (see watchdog.go).
	Kernel <-chan kmsg.Message
	// Stats reads the NFS statistics that the watchdog compares to find
	// which mount a kernel message is about: needed with Kernel, and
	// read with Proc of this Manager's Config (nfsstat.NewReader).
	Stats StatsReader
}

// DefaultRemountParallel is how many remounts Watch runs at once unless
// told otherwise. Measured in the lab (nsmount/testdata/lab/
// remount_parallel.sh: 1 vCPU under TCG, the server in the same VM
// switched between kernel nfsd and NFS-Ganesha at the same address, every
// mount then remounted; README, "Storage migration"): with 200 mounts the
// last remount came 246, 102, 90, 56 and 53 s after the new server
// answered with 1, 2, 4, 8 and 16 at once; with 50, 8.4, 8.4, 8.1, 5.9
// and 7.5 s. 8 was as fast as 16 at 200 and the fastest at 50, with half
// the new server's load at once and each remount quicker (median 1.2 s
// against 1.9-2.4 s).
const DefaultRemountParallel = 8

// probeHold is how long a probe keeps its place among the ProbeParallel
// before it waits apart (it waits for its server, not for the CPU).
const probeHold = time.Second

// watchTick is how often Watch's loop looks at its schedule (probes due,
// the registry's stamp, the safety net).
const watchTick = 250 * time.Millisecond

// registryEvery is how often Watch looks at the registry's stamp.
const registryEvery = time.Second

// fullGap is the least time between two full observations that evidence
// asked for (a mount or process found gone).
const fullGap = 2 * time.Second

// retryMax bounds the wait before a failed remount is tried again.
const retryMax = time.Minute

// WatchEvent is one thing Watch saw or did.
type WatchEvent struct {
	Time time.Time `json:"time"`
	// Kind is what happened: drift (the route changed), stale (the
	// server no longer knows the mount's file handles: ESTALE or
	// EBADHANDLE), broken (the mount fails while its server answers),
	// dead (no answer), remounted, remount-failed, retired (before a
	// remounted: the netns's NFS client for the server was retired first,
	// see RemountOptions.RetireClient), denied (the new address
	// is outside the mount's admission: left alone), recovered, forgotten
	// (the mount is gone), netlink, error, registry; probe (every health
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

// eventOf is an event about e.
func eventOf(e *registry.Entry, kind, detail string) WatchEvent {
	return WatchEvent{Time: time.Now(), Kind: kind, Mountpoint: e.Mountpoint, Source: e.Source, NetNS: e.Target.NetNS, Dev: e.Dev, Container: e.Target.Container, Detail: detail}
}

// watched is one mount as Watch's loop knows it.
type watched struct {
	e    registry.Entry
	next time.Time // next probe
	// probing: a probe runs; remounting: a remount runs (a route drift
	// found while a probe runs, perhaps hung on the old route, starts the
	// remount anyway: the probe's answer is then ignored).
	probing, remounting bool
	// denied is the last denial reported, broken the last "broken".
	denied, broken string
	// failed is the kind of the last failed remount, retryAt when the
	// next of that kind may start, backoff the wait after the next
	// failure.
	failed  string
	retryAt time.Time
	backoff time.Duration
	// hung: the last remount timed out although the server had just
	// accepted a connection (its preflight): the netns's NFS client for
	// the address no longer makes progress, and the next remount retires
	// it first (RemountOptions.RetireClient).
	hung bool
	// gone: the registry no longer has the entry; forgotten once the
	// work running on it reports.
	gone bool
	// now: the next probe was asked for by evidence, not by the clock
	// (it does not wait for ProbeRate).
	now bool
	// started is when the running (or last) probe started; goodAt the
	// last time the mount is known to have worked: the start of its last
	// good probe, or when it was made.
	started, goodAt time.Time
}

// watcher is Watch's state. The fields after mu belong to the loop
// goroutine (Watch's own); workers report to it through results, the
// watchdog through probeNow.
type watcher struct {
	m      *Manager
	o      WatchOptions
	events chan<- WatchEvent
	prober *nsmount.Prober // nil: a helper per probe (ProbeMount)
	dog    *watchdog       // nil without WatchOptions.Kernel

	mu     sync.Mutex
	dead   map[string]bool // entry ID -> reported dead
	unresp map[string]bool // entry ID -> the kernel reported its server unresponsive
	urgent map[string]bool // entry IDs to probe at once
	poke   chan struct{}   // urgent has news

	mounts   map[string]*watched
	changed  map[string]time.Time // server address -> when a change of its server was first seen (staleWave)
	world    *World               // the last full observation
	stamp    registry.Stamp
	stampAt  time.Time
	subs     map[nsmount.NSID]context.CancelFunc
	routing  map[nsmount.NSID]bool // a route check of the netns runs
	again    map[nsmount.NSID]bool // and another is wanted after it
	full     bool                  // a full observation runs
	wantFull bool
	tokens   float64 // probes that may start now in their turn (ProbeRate)
	tokensAt time.Time
	lastFull time.Time
	next     struct{ full, routes, sample, stamp time.Time }

	probeSlots, remountSlots, deadSlots chan struct{}
	results                             chan watchResult
	kick                                chan nsmount.NSID
	wg                                  sync.WaitGroup
}

// newWatcher returns a watcher with o's defaults filled in.
func newWatcher(m *Manager, o WatchOptions, events chan<- WatchEvent) *watcher {
	if o.Interval <= 0 {
		o.Interval = 30 * time.Second
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = 5 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	if o.ProbeParallel <= 0 {
		o.ProbeParallel = 8
	}
	if o.RemountParallel <= 0 {
		o.RemountParallel = DefaultRemountParallel
	}
	if o.ProbeRate <= 0 {
		o.ProbeRate = 20
	}
	return &watcher{
		m: m, o: o, events: events,
		dead: map[string]bool{}, unresp: map[string]bool{}, urgent: map[string]bool{}, poke: make(chan struct{}, 1),
		mounts: map[string]*watched{}, changed: map[string]time.Time{}, subs: map[nsmount.NSID]context.CancelFunc{},
		routing: map[nsmount.NSID]bool{}, again: map[nsmount.NSID]bool{},
		probeSlots: make(chan struct{}, o.ProbeParallel), remountSlots: make(chan struct{}, o.RemountParallel),
		deadSlots: make(chan struct{}, o.RemountParallel),
		results:   make(chan watchResult), kick: make(chan nsmount.NSID, 64),
	}
}

// Watch keeps nsmount's mounts right until ctx is done, sending what it
// sees and does to events (it never closes the channel; a slow reader
// slows Watch down, it loses nothing).
//
// It probes each mount's health every ProbeInterval (at most
// ProbeParallel at once, through long-lived probe helpers: see
// nsmount.Prober) and remounts, at most RemountParallel at once, the
// mounts that need it (diagnose): the server answers but no longer knows
// the mount's file handles (ESTALE, EBADHANDLE: re-exported, or another
// server at the same address), or the mount fails with EIO while its
// server answers; a server that does not answer within Timeout is
// reported dead. When one mount of an address turns out stale, every
// other mount of that address is probed at once: a server change is
// followed in one probe round, not one per mount. A route, address or
// link change in a mount's network namespace (netlink, subscribed inside
// it) re-checks that namespace's routes at once; a route that drifted is
// followed by a remount. Remounts go only where the mount's recorded
// admission allows: a new address outside it is reported as "denied" and
// the mount left alone. A hung server costs its own probes their timeout
// and never delays the others.
//
// Watch's cost follows what changes, not the machine: every Interval (and
// when a mount or its process is found gone) it observes every process
// and mount namespace and reconciles the registry; the registry is read
// again when its stamp changes; routes are looked up on netlink events
// and every Interval.
func (m *Manager) Watch(ctx context.Context, o WatchOptions, events chan<- WatchEvent) error {
	w := newWatcher(m, o, events)
	if m.isolation == nsmount.InHelper {
		w.prober = nsmount.NewProber(m.helper)
		defer w.prober.Close() // after wg.Wait
	}
	if o.Kernel != nil {
		if o.Stats == nil {
			return nsmount.WithClass(nsmount.ErrInvalidArgument, errors.New("watch: a kernel log needs a statistics reader (WatchOptions.Stats)"))
		}
		w.dog = newWatchdog(w, o.Stats)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer w.wg.Wait()
	defer cancel()
	if w.dog != nil {
		w.wg.Go(func() { w.dog.run(ctx, &w.wg, o.Kernel) })
	}
	w.tokens = w.o.ProbeRate
	// The first observation, before anything else.
	w.full = true
	w.apply(ctx, w.observe(), time.Now())
	tick := time.NewTicker(watchTick)
	defer tick.Stop()
	for {
		w.schedule(ctx, time.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-w.poke:
		case ns := <-w.kick:
			w.routeCheck(ctx, ns)
		case r := <-w.results:
			w.handle(ctx, r)
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

// report sends r to the loop, unless ctx is done.
func (w *watcher) report(ctx context.Context, r watchResult) {
	select {
	case w.results <- r:
	case <-ctx.Done():
	}
}

// probeNow asks for probes of the entries ids at once (the watchdog's
// way of checking the mounts a kernel message is about).
func (w *watcher) probeNow(ids ...string) {
	w.mu.Lock()
	for _, id := range ids {
		w.urgent[id] = true
	}
	w.mu.Unlock()
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// What a worker reports to the loop.
const (
	resultRefresh      = iota // a full observation
	resultProbe               // a probe
	resultRoutes              // a route check of one netns
	resultRemount             // a remount
	resultUnsubscribed        // a netns subscription ended on its own
)

// watchResult is a worker's outcome.
type watchResult struct {
	kind int
	id   string // the entry (probe, remount)
	err  error

	// resultRefresh
	world *World
	gone  []Gone
	state *registry.State
	// resultProbe
	health nsmount.Health
	diag   Diagnosis
	// resultRoutes: ns, and the entries that drifted with how
	ns    nsmount.NSID
	drift map[string][]string
	// resultRemount
	why       string
	how       string // the diagnosis kind behind it, or "drift"
	remounted *Remounted
	took      time.Duration
}

// schedule starts what is due at now.
func (w *watcher) schedule(ctx context.Context, now time.Time) {
	w.mu.Lock()
	urgent := w.urgent
	w.urgent = map[string]bool{}
	w.mu.Unlock()
	for id := range urgent {
		if mt := w.mounts[id]; mt != nil {
			mt.next, mt.now = now, true
		}
	}
	if !w.tokensAt.IsZero() {
		w.tokens = min(w.tokens+now.Sub(w.tokensAt).Seconds()*w.o.ProbeRate, w.o.ProbeRate)
	}
	w.tokensAt = now
	if !now.Before(w.next.stamp) {
		w.next.stamp = now.Add(registryEvery)
		w.reread(ctx, now)
	}
	if !w.full && (!now.Before(w.next.full) || w.wantFull && now.Sub(w.lastFull) >= fullGap) {
		w.full, w.wantFull = true, false
		w.wg.Go(func() { w.report(ctx, w.observe()) })
	}
	if !now.Before(w.next.routes) {
		w.next.routes = now.Add(w.o.Interval)
		w.routeCheckAll(ctx)
	}
	if w.dog != nil && !now.Before(w.next.sample) {
		w.next.sample = now.Add(min(w.o.Interval, 2*time.Second))
		w.dog.sample(ctx, &w.wg, w.sampleTargets())
	}
	for _, mt := range w.mounts {
		if mt.failed == "drift" && !mt.remounting && !now.Before(mt.retryAt) {
			// A remount after a route change failed: look again.
			mt.failed = ""
			w.routeCheck(ctx, mt.e.Target.NetNS)
		}
		if mt.probing || mt.remounting || now.Before(mt.next) || mt.e.Rebuilt {
			continue
		}
		if !mt.now {
			if w.tokens < 1 {
				continue // its turn comes at a later tick
			}
			w.tokens--
		}
		mt.probing, mt.now, mt.started = true, false, now
		mt.next = now.Add(jitter(w.o.ProbeInterval))
		e, world := mt.e, w.world
		w.wg.Go(func() { w.report(ctx, w.probe(ctx, e, world)) })
	}
}

// jitter is d give or take 10%, so that mounts probed together drift
// apart.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

// observe takes a full observation and reconciles the registry with it.
func (w *watcher) observe() watchResult {
	r := watchResult{kind: resultRefresh}
	r.world, r.err = w.m.observe()
	if r.err == nil {
		r.gone, r.state, r.err = w.m.reconcile(r.world)
	}
	return r
}

// apply takes a full observation's result in.
func (w *watcher) apply(ctx context.Context, r watchResult, now time.Time) {
	w.full, w.lastFull = false, now
	w.next.full = now.Add(w.o.Interval)
	if r.err != nil {
		w.event(ctx, WatchEvent{Time: now, Kind: "error", Detail: r.err.Error()})
		return
	}
	w.world = r.world
	for _, n := range w.m.Notices() {
		w.event(ctx, WatchEvent{Time: now, Kind: "registry", Detail: n})
	}
	for _, g := range r.gone {
		w.forgetEntry(g.Entry.ID)
		w.event(ctx, eventOf(&g.Entry, "forgotten", g.Why))
	}
	w.take(ctx, r.state, now)
}

// reread reads the registry again if its stamp says it changed.
func (w *watcher) reread(ctx context.Context, now time.Time) {
	st, err := w.m.reg.Stamp()
	if err != nil || st == w.stamp && !w.stamp.Fresh(w.stampAt) {
		return
	}
	s, err := w.m.state()
	if err != nil {
		w.event(ctx, WatchEvent{Time: now, Kind: "error", Detail: err.Error()})
		return
	}
	w.stamp, w.stampAt = st, now
	w.take(ctx, s, now)
}

// take makes the registry's entries s the mounts watched: new ones are
// probed soon and their network namespaces subscribed to, gone ones
// forgotten (a running probe's result is then dropped), and subscriptions
// of namespaces without mounts ended.
func (w *watcher) take(ctx context.Context, s *registry.State, now time.Time) {
	if s == nil {
		return
	}
	if st, err := w.m.reg.Stamp(); err == nil && w.stampAt.IsZero() {
		w.stamp, w.stampAt = st, now
	}
	seen := make(map[string]bool, len(s.Entries))
	first := map[nsmount.NSID]*registry.Entry{} // the first entry of each netns
	for i := range s.Entries {
		e := &s.Entries[i]
		seen[e.ID] = true
		if mt := w.mounts[e.ID]; mt != nil {
			mt.e, mt.gone = *e, false
		} else {
			// The first probe soon, spread over a second.
			w.mounts[e.ID] = &watched{e: *e, next: now.Add(rand.N(time.Second)), goodAt: e.Created}
		}
		if first[e.Target.NetNS] == nil {
			first[e.Target.NetNS] = e
		}
	}
	for id, mt := range w.mounts {
		switch {
		case seen[id]:
		case mt.probing || mt.remounting:
			mt.gone = true // forgotten when its work reports
		default:
			w.forgetEntry(id)
		}
	}
	for ns, e := range first {
		if _, ok := w.subs[ns]; ok {
			continue
		}
		pid, ok := w.netPID(e)
		if !ok {
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		w.subs[ns] = cancel
		w.wg.Go(func() {
			w.subscribe(sctx, ns, pid)
			w.report(ctx, watchResult{kind: resultUnsubscribed, ns: ns})
		})
	}
	for ns, cancel := range w.subs {
		if first[ns] == nil {
			cancel()
			delete(w.subs, ns)
		}
	}
}

// forgetEntry drops id from the loop's and the watchdog's state.
func (w *watcher) forgetEntry(id string) {
	delete(w.mounts, id)
	w.mu.Lock()
	delete(w.dead, id)
	delete(w.unresp, id)
	w.mu.Unlock()
}

// pid returns a process in e's mount and network namespaces: e's own
// while it lives (two small reads), else one of the last full
// observation's, checked again now.
func (w *watcher) pid(e *registry.Entry) (int, bool) {
	p := w.m.proc
	if e.Target.PID != 0 && e.Target.PIDStart != 0 {
		if start, err := p.StartTime(e.Target.PID); err == nil && start == e.Target.PIDStart {
			if mnt, err := p.NS(e.Target.PID, "mnt"); err == nil && mnt == e.Target.MountNS {
				return e.Target.PID, true
			}
		}
	}
	if w.world == nil {
		return 0, false
	}
	pid, ok := w.world.PIDIn(e)
	if !ok {
		return 0, false
	}
	if mnt, err := p.NS(pid, "mnt"); err != nil || mnt != e.Target.MountNS {
		return 0, false
	}
	return pid, true
}

// netPID returns a process in e's network namespace (see pid).
func (w *watcher) netPID(e *registry.Entry) (int, bool) {
	if pid, ok := w.pid(e); ok {
		if net, err := w.m.proc.NS(pid, "net"); err == nil && net == e.Target.NetNS {
			return pid, true
		}
	}
	if w.world == nil {
		return 0, false
	}
	pid, ok := w.world.NetPID(e.Target.NetNS)
	if !ok {
		return 0, false
	}
	if net, err := w.m.proc.NS(pid, "net"); err != nil || net != e.Target.NetNS {
		return 0, false
	}
	return pid, true
}

// target opens e's namespaces for a probe: through e's own process while
// it is in them (OpenPID holds the process while it opens them; no
// /proc reads besides), else as world, the last full observation, says
// (openIn: also a mount made from another netns than its mount
// namespace's). It runs on a worker: it reads nothing of the loop's.
func (w *watcher) target(e *registry.Entry, world *World) (*nsmount.Target, error) {
	if e.Target.PID != 0 {
		if t, err := w.m.openPID(e.Target.PID); err == nil {
			if t.NetNS() == e.Target.NetNS && t.MountNS() == e.Target.MountNS {
				return t, nil
			}
			t.Close()
		}
	}
	if world == nil {
		return nil, errNoProcess
	}
	return w.m.openIn(world, e)
}

// slot takes a place in slots until release is called or hold passes
// (hold 0: until release).
func slot(ctx context.Context, slots chan struct{}, hold time.Duration) (release func(), ok bool) {
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return nil, false
	}
	var once sync.Once
	free := func() { once.Do(func() { <-slots }) }
	if hold > 0 {
		t := time.AfterFunc(hold, free)
		return func() { t.Stop(); free() }, true
	}
	return free, true
}

// probe probes e and, when the probe alone cannot tell, asks its server
// (an NFS NULL call from its network namespace); it runs on a worker.
func (w *watcher) probe(ctx context.Context, e registry.Entry, world *World) watchResult {
	r := watchResult{kind: resultProbe, id: e.ID}
	release, ok := slot(ctx, w.probeSlots, probeHold)
	if !ok {
		r.err = ctx.Err()
		return r
	}
	defer release()
	t, err := w.target(&e, world)
	if err != nil {
		r.err = err
		return r
	}
	defer t.Close()
	if l := w.m.lockMountShared(ctx, &e, w.o.Timeout); l != nil {
		defer l.Unlock()
	}
	if w.prober != nil {
		r.health, r.err = w.prober.Probe(ctx, t, e.Mountpoint, e.MountID, w.o.Timeout)
	} else {
		r.health, r.err = nsmount.ProbeMount(ctx, t, e.Mountpoint, e.MountID, w.o.Timeout)
	}
	if r.err != nil {
		return r
	}
	var reply serverReply
	if needsServer(r.health) {
		reply = w.askServer(ctx, t, &e)
	}
	r.diag = diagnose(r.health, reply)
	return r
}

// askServer makes an NFS NULL call to e's server from t's network
// namespace.
func (w *watcher) askServer(ctx context.Context, t *nsmount.Target, e *registry.Entry) serverReply {
	addr, err := netip.ParseAddr(e.Address)
	if err != nil {
		return serverReply{}
	}
	port := e.Port
	if port == 0 {
		port = nsmount.DefaultNFSPort
	}
	vers := uint32(4)
	if e.Version == "3" {
		vers = 3
	}
	router, err := routing.NewRouter(func(fn func() error) error { return t.Do(nsmount.NetNS, fn) })
	if err != nil {
		return serverReply{}
	}
	defer router.Close()
	return serverReply{Asked: true, Err: router.NFSNull(ctx, netip.AddrPortFrom(addr, port), vers, w.o.Timeout)}
}

// routeCheck looks up, in netns ns, the routes of its mounts; a check
// already running there runs again after.
func (w *watcher) routeCheck(ctx context.Context, ns nsmount.NSID) {
	if w.routing[ns] {
		w.again[ns] = true
		return
	}
	var entries []registry.Entry
	pid := 0
	for _, mt := range w.mounts {
		if mt.e.Target.NetNS != ns || mt.e.Rebuilt {
			continue
		}
		entries = append(entries, mt.e)
		if pid == 0 {
			pid, _ = w.netPID(&mt.e)
		}
	}
	if len(entries) == 0 || pid == 0 {
		return
	}
	w.routing[ns] = true
	w.wg.Go(func() {
		release, ok := slot(ctx, w.probeSlots, probeHold)
		if !ok {
			return
		}
		views := w.m.netnsViews([]int{pid}, nil)
		release()
		w.report(ctx, watchResult{kind: resultRoutes, ns: ns, drift: drifted(views[0], entries)})
		views[0].close()
	})
}

// routeCheckAll is the safety net: every netns's routes, through
// ProbeParallel threads that each visit their share of the namespaces in
// turn.
func (w *watcher) routeCheckAll(ctx context.Context) {
	byNS := map[nsmount.NSID][]registry.Entry{}
	pids := map[nsmount.NSID]int{}
	for _, mt := range w.mounts {
		ns := mt.e.Target.NetNS
		if w.routing[ns] || mt.e.Rebuilt {
			continue
		}
		byNS[ns] = append(byNS[ns], mt.e)
		if pids[ns] == 0 {
			pids[ns], _ = w.netPID(&mt.e)
		}
	}
	var nss []nsmount.NSID
	for ns := range byNS {
		if pids[ns] != 0 {
			nss = append(nss, ns)
			w.routing[ns] = true
		}
	}
	par := w.o.ProbeParallel
	for c := range min(par, len(nss)) {
		var mine []nsmount.NSID
		var minePIDs []int
		for k := c; k < len(nss); k += par {
			mine = append(mine, nss[k])
			minePIDs = append(minePIDs, pids[nss[k]])
		}
		w.wg.Go(func() {
			views := w.m.netnsViews(minePIDs, nil)
			for k, ns := range mine {
				w.report(ctx, watchResult{kind: resultRoutes, ns: ns, drift: drifted(views[k], byNS[ns])})
				views[k].close()
			}
		})
	}
}

// drifted returns, per entry ID, how the route to its address differs
// from the recorded one, through v (nil where it does not or cannot be
// looked up).
func drifted(v *netnsView, entries []registry.Entry) map[string][]string {
	out := map[string][]string{}
	if v.err != nil {
		return out
	}
	for _, e := range entries {
		addr, err := netip.ParseAddr(e.Address)
		if err != nil {
			continue
		}
		if r, err := v.router.Lookup(addr); err == nil {
			if d := drift(e.Route, r); len(d) > 0 {
				out[e.ID] = d
			}
		}
	}
	return out
}

// handle takes a worker's result in and decides what follows.
func (w *watcher) handle(ctx context.Context, r watchResult) {
	now := time.Now()
	switch r.kind {
	case resultRefresh:
		w.apply(ctx, r, now)
	case resultRoutes:
		w.routing[r.ns] = false
		for id, d := range r.drift {
			mt := w.mounts[id]
			if mt == nil || mt.remounting {
				continue
			}
			why := "route drift: " + strings.Join(d, ", ")
			w.event(ctx, eventOf(&mt.e, "drift", strings.Join(d, ", ")))
			w.remount(ctx, mt, why, "drift", now)
		}
		if w.again[r.ns] {
			delete(w.again, r.ns)
			w.routeCheck(ctx, r.ns)
		}
	case resultProbe:
		w.probed(ctx, r, now)
	case resultRemount:
		w.remounted(ctx, r, now)
	case resultUnsubscribed:
		// Subscribed again at the next reading of the registry, if the
		// netns still has mounts (and was not unsubscribed on purpose).
		if cancel, ok := w.subs[r.ns]; ok {
			cancel()
			delete(w.subs, r.ns)
			w.stampAt = time.Time{}
		}
	}
}

// probed acts on a probe's result.
func (w *watcher) probed(ctx context.Context, r watchResult, now time.Time) {
	mt := w.mounts[r.id]
	if mt == nil {
		return // forgotten meanwhile
	}
	mt.probing = false
	if mt.gone && !mt.remounting {
		w.forgetEntry(r.id)
		return
	}
	if mt.remounting {
		return // a remount after a route drift overtook the probe
	}
	e := &mt.e
	if r.err != nil {
		// Gone meanwhile (its process, its mount): reconcile soon.
		w.wantFull = true
		return
	}
	p := eventOf(e, "probe", r.health.String())
	p.Elapsed = r.health.Elapsed
	w.event(ctx, p)
	d := r.diag
	switch d.Kind {
	case DiagOK:
		w.mu.Lock()
		was, unresp := w.dead[e.ID], w.unresp[e.ID]
		delete(w.dead, e.ID)
		delete(w.unresp, e.ID)
		w.mu.Unlock()
		mt.broken, mt.failed, mt.backoff, mt.hung = "", "", 0, false
		mt.goodAt = mt.started
		if was {
			w.event(ctx, eventOf(e, "recovered", "server answers again"))
		}
		if unresp {
			w.event(ctx, eventOf(e, "responsive", fmt.Sprintf("server %s answers a probe again (%s)", e.Address, r.health.Elapsed.Round(time.Millisecond))))
		}
		return
	case DiagDead:
		w.mu.Lock()
		first := !w.dead[e.ID]
		w.dead[e.ID] = true
		w.mu.Unlock()
		if first {
			detail := fmt.Sprintf("server %s does not answer (%s)", e.Address, r.health.Error)
			if !r.health.Hung {
				detail = d.Why
			}
			w.event(ctx, eventOf(e, "dead", detail))
		}
	case DiagStale:
		w.event(ctx, eventOf(e, "stale", d.Why))
		for _, o := range w.staleWave(mt, now) {
			o.next, o.now = now, true
		}
	case DiagBroken:
		if mt.broken != d.Why {
			mt.broken = d.Why
			w.event(ctx, eventOf(e, "broken", d.Why))
		}
	}
	if d.Remount {
		why := d.Why
		if d.Kind == DiagDead {
			why = "server dead"
		}
		w.remount(ctx, mt, why, d.Kind, now)
	}
}

// remount starts a remount of mt, unless one of the same kind failed
// lately (then it waits for its retry time).
func (w *watcher) remount(ctx context.Context, mt *watched, why, how string, now time.Time) {
	if mt.remounting || how == mt.failed && now.Before(mt.retryAt) {
		return
	}
	mt.remounting = true
	e, ro := mt.e, RemountOptions{RetireClient: mt.hung, MountTimeout: w.o.RemountTimeout}
	slots := w.remountSlots
	if how == DiagDead {
		slots = w.deadSlots
	}
	w.wg.Go(func() {
		r := watchResult{kind: resultRemount, id: e.ID, why: why, how: how}
		release, ok := slot(ctx, slots, 0)
		if !ok {
			return
		}
		defer release()
		start := time.Now()
		r.remounted, r.err = w.m.Remount(ctx, e, why, ro)
		r.took = time.Since(start)
		w.report(ctx, r)
	})
}

// remounted acts on a remount's result.
func (w *watcher) remounted(ctx context.Context, r watchResult, now time.Time) {
	mt := w.mounts[r.id]
	if mt == nil {
		return
	}
	mt.remounting = false
	e := &mt.e
	if mt.gone && r.err != nil && !mt.probing {
		w.forgetEntry(r.id)
		return
	}
	switch {
	case errors.Is(r.err, nsmount.ErrDenied):
		// The container may have pointed the name elsewhere: the mount
		// stays where its admission allows. Reported once per reason;
		// tried again at the next probe (cheap: no mount is made).
		if key := r.why + "\x00" + r.err.Error(); mt.denied != key {
			mt.denied = key
			w.event(ctx, eventOf(e, "denied", fmt.Sprintf("%s; not remounted: %v", r.why, r.err)))
		}
		return
	case r.err != nil:
		if r.how != DiagDead || !errors.Is(r.err, nsmount.ErrUnreachable) {
			w.event(ctx, eventOf(e, "remount-failed", r.err.Error()))
		}
		mt.failed, mt.hung = r.how, errors.Is(r.err, errClientHung)
		mt.backoff = min(max(2*mt.backoff, w.o.ProbeInterval), retryMax)
		mt.retryAt = now.Add(mt.backoff)
		return
	}
	n := r.remounted.New
	made := now.Add(-r.took) // the new mount works from here on at least
	detail := fmt.Sprintf("%s; now %s via %s src %s, dev %s", r.why, n.Address, n.Route.Iface, n.Route.Source, n.Dev)
	if d := r.remounted.Retired; len(d) > 0 {
		detail += fmt.Sprintf("; the last remount timed out: retired the NFS client for %s first (shut down %s)", n.Address, strings.Join(d, " "))
		w.event(ctx, eventOf(e, "retired", fmt.Sprintf("the netns's NFS client for %s made no progress (a remount timed out while the server accepted connections): shut down %s, files open on them fail with EIO", n.Address, strings.Join(d, " "))))
	}
	done := eventOf(e, "remounted", detail)
	done.Elapsed = r.took
	w.event(ctx, done)
	w.forgetEntry(e.ID)
	if nt := w.mounts[n.ID]; nt != nil {
		nt.next, nt.goodAt = now.Add(jitter(w.o.ProbeInterval)), made // already read from the registry
	} else {
		w.mounts[n.ID] = &watched{e: n, next: now.Add(jitter(w.o.ProbeInterval)), goodAt: made}
	}
}

// staleWave returns the mounts to probe at once because mt, a mount of
// their server's address, was found stale at now: the server there
// changed or re-exported, so the others of that address are probed now
// rather than in their turn, but only those not known to have worked
// since the change was first seen. A server change makes N mounts stale
// one probe after another; asking again on each of them for every mount
// of the address (those already remounted included) made O(N²) probes,
// which took the CPU the remounts needed. A mount that worked after the
// change was seen and is now stale tells of a new change.
func (w *watcher) staleWave(mt *watched, now time.Time) []*watched {
	addr := mt.e.Address
	since, ok := w.changed[addr]
	if !ok || mt.goodAt.After(since) {
		since = now
		w.changed[addr] = since
	}
	var out []*watched
	for _, o := range w.mounts {
		if o != mt && o.e.Address == addr && !o.probing && !o.remounting && o.goodAt.Before(since) {
			out = append(out, o)
		}
	}
	return out
}

// sampleTargets are the mount namespaces the watchdog samples, each with
// a process in it: every one with an NFS mount in the last full
// observation, and those of the mounts watched (newer ones included).
func (w *watcher) sampleTargets() map[nsmount.NSID]int {
	out := map[nsmount.NSID]int{}
	if w.world != nil {
		out = nfsNamespaces(w.world)
	}
	for _, mt := range w.mounts {
		if _, ok := out[mt.e.Target.MountNS]; !ok && mt.e.Target.PID != 0 {
			out[mt.e.Target.MountNS] = mt.e.Target.PID
		}
	}
	return out
}

// subscribe listens for route, address and link changes in netns ns
// (through a process pid in it) and kicks a route check of that netns on
// each, until ctx ends (the netns has no mount left, or Watch ends). The
// socket is created inside the netns (and holds it while open); it is
// read here, on an ordinary goroutine.
func (w *watcher) subscribe(ctx context.Context, ns nsmount.NSID, pid int) {
	t, err := w.m.openPID(pid)
	if err != nil {
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
