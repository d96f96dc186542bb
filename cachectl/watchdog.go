package cachectl

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/kmsg"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// The watchdog: Watch's reading of the kernel log (WatchOptions.Kernel).
//
// The kernel's lines carry no network namespace, and containers may reach
// different servers at one address, so a line is attributed by what the
// kernel shows per superblock:
//
//   - A server line ("nfs: server X not responding", "timed out", the NFSv4
//     state manager failing on X) names the server as the mount named it.
//     Its candidates are the NFS superblocks, in every network namespace,
//     whose client has that name (nfsfs/servers, nfsfs/volumes). The
//     kernel counts an RPC's major timeouts only once it completes
//     (measured on 6.1 and 6.12: nothing moves in the per-op counters while
//     the server is silent), so the evidence is the transport's: the
//     superblock sent requests since it last received a reply, and still
//     receives nothing half a second later (mountstats xprt sends and
//     receives, against the last sample after which it received
//     something; samples are taken every round). The candidates with that
//     evidence are the ones the line is about; a single candidate is the
//     one; several candidates and no evidence make it ambiguous: Watch
//     names them all and blames none.
//   - "nfs: server X OK" is attributed to X's candidates that were reported
//     unresponsive, or whose major timeouts rose since the last sample.
//   - "INFO: task NAME:PID blocked" is attributed to the mounts of the
//     task's mount namespace (the PID is in the initial PID namespace).
//   - "nfs4_schedule_state_manager: kthread_run: -N" names no client: it
//     is ambiguous among all NFSv4 mounts of nsmount's.
//
// Every attributed (or ambiguous) mount of nsmount's is probed at once, as
// a round would (dead, remount). A server line attributed to a mount also
// marks it unresponsive (event "unresponsive"); the next good probe clears
// it (event "responsive"), which an OK line triggers at once.

// KernelReport is a kernel log message and what Watch made of it.
type KernelReport struct {
	Message kmsg.Message `json:"message"`
	// Count is how many such messages (same kind and server, or the same
	// task) came in the batch this one stands for (the kernel logs them in
	// bursts, rate-limited).
	Count int `json:"count"`
	// Attribution is "attributed" (the message is about Mounts),
	// "ambiguous" (it may be about any of Mounts, which were all checked),
	// or "none" (it is about no mount of nsmount's: Why says why).
	Attribution string        `json:"attribution"`
	Mounts      []KernelMount `json:"mounts,omitempty"`
	Why         string        `json:"why,omitempty"`
}

// KernelMount is a superblock a kernel message was attributed to, with
// the nsmount mount of it (Entry "" for a superblock nsmount did not mount).
type KernelMount struct {
	NetNS      nsmount.NSID `json:"netns"`
	Dev        string       `json:"dev"`
	Entry      string       `json:"entry,omitempty"`
	Mountpoint string       `json:"mountpoint,omitempty"`
	Container  string       `json:"container,omitempty"`
}

// String is the report on one line.
func (r *KernelReport) String() string {
	s := fmt.Sprintf("%s: %s", r.Attribution, r.Message.Text)
	if r.Count > 1 {
		s += fmt.Sprintf(" (x%d)", r.Count)
	}
	var ms []string
	for _, m := range r.Mounts {
		name := m.Mountpoint
		if name == "" {
			name = "not nsmount's"
		}
		if m.Container != "" {
			name += " of " + m.Container
		}
		ms = append(ms, fmt.Sprintf("%s (netns %s, dev %s)", name, m.NetNS, m.Dev))
	}
	if len(ms) > 0 {
		s += " -> " + strings.Join(ms, ", ")
	}
	if r.Why != "" {
		s += "; " + r.Why
	}
	return s
}

// Attributions.
const (
	Attributed = "attributed"
	Ambiguous  = "ambiguous"
	Unrelated  = "none"
)

// sample is one superblock's transport counters at a time.
type sample struct {
	sends, recvs, majors uint64
}

// watchdog is the state of Watch's kernel log reading.
type watchdog struct {
	w     *watcher
	stats StatsReader
	mu    sync.Mutex
	// base is, per superblock, the last sample after which its transport
	// had received something (or the first); last the last sample.
	base, last map[string]sample
	sampling   bool
	// cursor is where the next sample starts in the sorted namespaces.
	cursor int
	// confirm is the wait between the two samples of a server line.
	confirm time.Duration
}

// sampleBudget bounds the mount namespaces one sample reads (each read is
// two mountinfo and one mountstats reads and a parse: about 4 ms of CPU
// under TCG). Up to that many, every namespace is sampled every time
// (every 2 s); beyond, they take turns: with 200 mounts in 200 containers
// each is sampled every 20 s, at about 4% of a CPU instead of 40%.
// Evidence older than the outage's start misses more often, and a line is
// then ambiguous rather than attributed (all its candidates are probed
// either way).
const sampleBudget = 20

// StatsReader reads the NFS statistics of the superblocks mounted in mount
// namespace ns, through process pid in it: what the watchdog compares
// (WatchOptions.Stats; package nfsstat's Reader is one).
type StatsReader interface {
	// Namespace may fail at once, as busy, while a reading of ns is under
	// way.
	Namespace(ctx context.Context, ns nsmount.NSID, pid int) ([]kernel.NFSStats, error)
	// NamespaceNow waits for a reading under way and reads again.
	NamespaceNow(ctx context.Context, ns nsmount.NSID, pid int) ([]kernel.NFSStats, error)
}

func newWatchdog(w *watcher, stats StatsReader) *watchdog {
	return &watchdog{w: w, stats: stats, base: map[string]sample{}, last: map[string]sample{}, confirm: 500 * time.Millisecond}
}

// batchWait is how long the watchdog waits for more lines of a burst
// before it handles them together.
const batchWait = 200 * time.Millisecond

// run handles the messages of in until ctx is done.
func (d *watchdog) run(ctx context.Context, wg *sync.WaitGroup, in <-chan kmsg.Message) {
	for {
		var batch []kmsg.Message
		select {
		case <-ctx.Done():
			return
		case m, ok := <-in:
			if !ok {
				return
			}
			batch = append(batch, m)
		}
		t := time.NewTimer(batchWait)
	more:
		for {
			select {
			case m, ok := <-in:
				if !ok {
					break more
				}
				batch = append(batch, m)
			case <-t.C:
				break more
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
		t.Stop()
		d.handle(ctx, wg, batch)
	}
}

// handle attributes a batch of messages (one report per kind and server,
// or per hung task) and checks the mounts concerned.
func (d *watchdog) handle(ctx context.Context, wg *sync.WaitGroup, batch []kmsg.Message) {
	type group struct {
		m kmsg.Message
		n int
	}
	var order []string
	groups := map[string]*group{}
	for _, m := range batch {
		key := string(m.Kind) + "\x00" + m.Server
		if m.Kind == kmsg.HungTask {
			key = fmt.Sprintf("%s\x00%d", m.Kind, m.PID)
		}
		if g, ok := groups[key]; ok {
			g.n++
			continue
		}
		groups[key] = &group{m: m, n: 1}
		order = append(order, key)
	}
	world, err := d.w.m.observe()
	if err != nil {
		d.w.event(ctx, WatchEvent{Time: time.Now(), Kind: "error", Detail: "kernel log: " + err.Error()})
		return
	}
	s, err := d.w.m.state()
	if err != nil {
		d.w.event(ctx, WatchEvent{Time: time.Now(), Kind: "error", Detail: "kernel log: " + err.Error()})
		return
	}
	for _, key := range order {
		g := groups[key]
		var rep *KernelReport
		switch g.m.Kind {
		case kmsg.HungTask:
			rep = d.attributeTask(world, s, g.m)
		case kmsg.StateManagerNotStarted:
			rep = attributeNotStarted(s, g.m)
		default:
			rep = d.attributeServer(ctx, world, s, g.m)
		}
		rep.Count = g.n
		d.w.event(ctx, WatchEvent{Time: time.Now(), Kind: "kernel", Detail: rep.String(), Kernel: rep})
		d.act(ctx, wg, world, s, rep)
	}
}

// act marks the attributed mounts of a server line unresponsive and checks
// every mount of the report at once.
func (d *watchdog) act(ctx context.Context, wg *sync.WaitGroup, world *World, s *registry.State, rep *KernelReport) {
	down := rep.Attribution == Attributed && rep.Message.Kind != kmsg.ServerOK && rep.Message.Kind != kmsg.HungTask
	for _, km := range rep.Mounts {
		e := s.Find(km.Entry)
		if e == nil {
			continue
		}
		if down {
			d.w.mu.Lock()
			first := !d.w.unresp[e.ID]
			d.w.unresp[e.ID] = true
			d.w.mu.Unlock()
			if first {
				d.w.event(ctx, WatchEvent{Time: time.Now(), Kind: "unresponsive", Mountpoint: e.Mountpoint, Source: e.Source, NetNS: e.Target.NetNS, Dev: e.Dev, Container: e.Target.Container, Detail: "kernel: " + rep.Message.Text})
			}
		}
		d.w.probeNow(e.ID)
	}
}

// candidate is a superblock of the server a message names.
type candidate struct {
	netns nsmount.NSID
	dev   string
}

// attributeServer attributes a server line (see the rules above).
func (d *watchdog) attributeServer(ctx context.Context, world *World, s *registry.State, m kmsg.Message) *KernelReport {
	rep := &KernelReport{Message: m}
	cands := candidates(world, m.Server)
	if len(cands) == 0 {
		rep.Attribution, rep.Why = Unrelated, fmt.Sprintf("no NFS superblock's client is named %s", m.Server)
		return rep
	}
	var blamed []candidate
	switch m.Kind {
	case kmsg.ServerOK:
		now := d.read(ctx, world, cands)
		d.mu.Lock()
		for _, c := range cands {
			was, ok := d.last[c.dev]
			cur, ok2 := now[c.dev]
			rose := ok && ok2 && cur.majors > was.majors
			if rose || d.unresponsive(s, c) {
				blamed = append(blamed, c)
			}
		}
		d.mu.Unlock()
	default:
		first := d.read(ctx, world, cands)
		select {
		case <-time.After(d.confirm):
		case <-ctx.Done():
		}
		second := d.read(ctx, world, cands)
		d.mu.Lock()
		for _, c := range cands {
			base, ok := d.base[c.dev]
			a, ok1 := first[c.dev]
			b, ok2 := second[c.dev]
			if !ok || !ok1 || !ok2 {
				continue
			}
			// Sent since it last received, and nothing received since,
			// in both samples.
			if a.recvs == base.recvs && b.recvs == base.recvs && (a.sends > base.sends || b.sends > base.sends) {
				blamed = append(blamed, c)
			}
		}
		d.mu.Unlock()
	}
	switch {
	case len(blamed) > 0:
		rep.Attribution = Attributed
		if len(blamed) < len(cands) {
			rep.Why = fmt.Sprintf("%d of %d superblocks of %s show it", len(blamed), len(cands), m.Server)
		}
	case len(cands) == 1:
		rep.Attribution, blamed = Attributed, cands
		rep.Why = fmt.Sprintf("the only superblock of %s", m.Server)
	default:
		rep.Attribution, blamed = Ambiguous, cands
		rep.Why = fmt.Sprintf("%d superblocks of %s, none shows it: all checked", len(cands), m.Server)
	}
	rep.Mounts = mountsOf(s, blamed)
	if rep.Attribution == Attributed && !anyEntry(rep.Mounts) {
		rep.Attribution, rep.Why = Unrelated, "not nsmount's mounts"
	}
	return rep
}

// unresponsive reports whether a mount of c was marked unresponsive.
func (d *watchdog) unresponsive(s *registry.State, c candidate) bool {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	for _, e := range s.Entries {
		if e.Target.NetNS == c.netns && e.Dev == c.dev && (d.w.unresp[e.ID] || d.w.dead[e.ID]) {
			return true
		}
	}
	return false
}

// attributeNotStarted attributes a state manager that did not start, a
// line that names no client, to every NFSv4 mount of nsmount's: all are
// checked, none blamed.
func attributeNotStarted(s *registry.State, m kmsg.Message) *KernelReport {
	rep := &KernelReport{Message: m}
	for _, e := range s.Entries {
		if e.NFSv4() {
			rep.Mounts = append(rep.Mounts, KernelMount{NetNS: e.Target.NetNS, Dev: e.Dev, Entry: e.ID, Mountpoint: e.Mountpoint, Container: e.Target.Container})
		}
	}
	if len(rep.Mounts) == 0 {
		rep.Attribution, rep.Why = Unrelated, "an NFSv4 client's recovery thread did not start; nsmount has no NFSv4 mount"
		return rep
	}
	sort.Slice(rep.Mounts, func(i, j int) bool {
		a, b := rep.Mounts[i], rep.Mounts[j]
		if a.NetNS.Ino != b.NetNS.Ino {
			return a.NetNS.Ino < b.NetNS.Ino
		}
		return a.Dev < b.Dev
	})
	rep.Attribution = Ambiguous
	rep.Why = fmt.Sprintf("an NFSv4 client's recovery thread did not start (the line names no client; its mounts may hang, and a remount through it time out, until watch retires it): all %d NFSv4 mounts checked", len(rep.Mounts))
	return rep
}

// attributeTask attributes a hung task to the mounts of its mount
// namespace.
func (d *watchdog) attributeTask(world *World, s *registry.State, m kmsg.Message) *KernelReport {
	rep := &KernelReport{Message: m}
	mnt, err := world.Proc.NS(m.PID, "mnt")
	if err != nil {
		rep.Attribution, rep.Why = Unrelated, fmt.Sprintf("pid %d is gone", m.PID)
		return rep
	}
	for _, e := range s.InMountNS(mnt) {
		rep.Mounts = append(rep.Mounts, KernelMount{NetNS: e.Target.NetNS, Dev: e.Dev, Entry: e.ID, Mountpoint: e.Mountpoint, Container: e.Target.Container})
	}
	if len(rep.Mounts) == 0 {
		rep.Attribution, rep.Why = Unrelated, fmt.Sprintf("pid %d (%s) is in mount namespace %s, which has no nsmount mount", m.PID, m.Task, mnt)
		return rep
	}
	rep.Attribution = Attributed
	rep.Why = fmt.Sprintf("pid %d (%s) is in mount namespace %s", m.PID, m.Task, mnt)
	return rep
}

// candidates returns the superblocks, in every network namespace of
// world, whose NFS client is named server (as mounts name it, nfsfs's
// HOSTNAME), or talks to server when it is an address.
func candidates(world *World, server string) []candidate {
	addr, _ := netip.ParseAddr(server)
	var out []candidate
	for ns, pids := range world.NS.NetNS {
		for _, pid := range pids {
			clients, err := world.Proc.Clients(pid)
			if err != nil {
				continue // exited: the next process of the netns
			}
			type key struct {
				version string
				addr    netip.Addr
				port    uint16
			}
			named := map[key]bool{}
			for _, c := range clients {
				if c.Hostname == server || (addr.IsValid() && c.Server == addr.Unmap()) {
					named[key{c.Version, c.Server, c.Port}] = true
				}
			}
			if len(named) > 0 {
				vols, err := world.Proc.Volumes(pid)
				if err != nil {
					continue
				}
				for _, v := range vols {
					if named[key{v.Version, v.Server, v.Port}] {
						out = append(out, candidate{netns: ns, dev: v.Dev})
					}
				}
			}
			break
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].netns.Ino != out[j].netns.Ino {
			return out[i].netns.Ino < out[j].netns.Ino
		}
		return out[i].dev < out[j].dev
	})
	return out
}

// mountsOf lists the superblocks with their nsmount entries.
func mountsOf(s *registry.State, cands []candidate) []KernelMount {
	var out []KernelMount
	for _, c := range cands {
		found := false
		for _, e := range s.Entries {
			if e.Target.NetNS == c.netns && e.Dev == c.dev {
				out = append(out, KernelMount{NetNS: c.netns, Dev: c.dev, Entry: e.ID, Mountpoint: e.Mountpoint, Container: e.Target.Container})
				found = true
			}
		}
		if !found {
			out = append(out, KernelMount{NetNS: c.netns, Dev: c.dev})
		}
	}
	return out
}

func anyEntry(ms []KernelMount) bool {
	for _, m := range ms {
		if m.Entry != "" {
			return true
		}
	}
	return false
}

// read samples the transports of the candidates' superblocks (each read
// in a mount namespace where it is mounted), after the call.
func (d *watchdog) read(ctx context.Context, world *World, cands []candidate) map[string]sample {
	want := map[string]bool{}
	for _, c := range cands {
		want[c.dev] = true
	}
	targets := map[nsmount.NSID]int{}
	for dev := range want {
		if refs := world.Mounts[dev]; len(refs) > 0 {
			targets[refs[0].MountNS] = refs[0].PID
		}
	}
	out := map[string]sample{}
	for ns, pid := range targets {
		// Now, not maybe busy: the background sampler may be reading
		// the same namespace, and a candidate without this sample could
		// not be blamed (the line would go to all of them).
		stats, err := d.stats.NamespaceNow(ctx, ns, pid)
		if err != nil {
			continue
		}
		for _, st := range stats {
			if want[st.Dev] {
				out[st.Dev] = toSample(&st)
			}
		}
	}
	return out
}

func toSample(st *kernel.NFSStats) sample {
	x := st.Transport()
	return sample{sends: x.Sends, recvs: x.Receives, majors: st.MajorTimeouts()}
}

// sample refreshes, in the background, the samples of every NFS
// superblock mounted in the mount namespaces nss (each with a process in
// it), unless the last refresh still runs.
func (d *watchdog) sample(ctx context.Context, wg *sync.WaitGroup, nss map[nsmount.NSID]int) {
	d.mu.Lock()
	if d.sampling {
		d.mu.Unlock()
		return
	}
	d.sampling = true
	d.mu.Unlock()
	order := make([]nsmount.NSID, 0, len(nss))
	for ns := range nss {
		order = append(order, ns)
	}
	sort.Slice(order, func(i, j int) bool { return order[i].Ino < order[j].Ino })
	if len(order) > sampleBudget {
		start := d.cursor % len(order)
		order = append(order[start:], order[:start]...)[:sampleBudget]
		d.cursor = start + sampleBudget
	}
	wg.Go(func() {
		defer func() { d.mu.Lock(); d.sampling = false; d.mu.Unlock() }()
		seen := map[string]bool{}
		for _, ns := range order {
			if ctx.Err() != nil {
				return
			}
			stats, err := d.stats.Namespace(ctx, ns, nss[ns])
			if err != nil {
				continue
			}
			d.mu.Lock()
			for _, st := range stats {
				if !seen[st.Dev] {
					seen[st.Dev] = true
					d.record(st.Dev, toSample(&st))
				}
			}
			d.mu.Unlock()
		}
	})
}

// nfsNamespaces returns the mount namespaces of world with an NFS mount,
// each with a process in it.
func nfsNamespaces(world *World) map[nsmount.NSID]int {
	out := map[nsmount.NSID]int{}
	for _, refs := range world.Mounts {
		for _, r := range refs {
			out[r.MountNS] = r.PID
		}
	}
	return out
}

// record keeps a sample of dev (d.mu held): the base moves when the
// transport received something since the last sample, or its counters
// went back (a new superblock got the device number).
func (d *watchdog) record(dev string, s sample) {
	last, ok := d.last[dev]
	if !ok || s.recvs != last.recvs || s.sends < last.sends || s.recvs < last.recvs {
		d.base[dev] = s
	}
	d.last[dev] = s
}
