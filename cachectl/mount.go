package cachectl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
)

// StalePolicy says what a mount does when the target's network namespace
// holds stale NFS client state for the same server.
type StalePolicy string

const (
	// StaleFlush unmounts the stale copies (never busy ones, never ending a
	// process unless Kill is set), then mounts; if stale state remains,
	// the mount is refused with ErrStaleState. The default.
	StaleFlush StalePolicy = "flush"
	// StaleRefuse refuses the mount, naming the holders.
	StaleRefuse StalePolicy = "refuse"
	// StaleShare mounts anyway, knowingly sharing the old client (its
	// connection, route and identity); the sharing is reported.
	StaleShare StalePolicy = "share"
)

// ParseStalePolicy parses a policy name ("" is StaleFlush).
func ParseStalePolicy(s string) (StalePolicy, error) {
	switch p := StalePolicy(s); p {
	case "":
		return StaleFlush, nil
	case StaleFlush, StaleRefuse, StaleShare:
		return p, nil
	}
	return "", nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("stale policy %q: want flush, refuse or share", s))
}

// Owners of registry entries: who asked for the mount.
const (
	OwnerCLI  = "cli"
	OwnerHook = "hook"
	OwnerNRI  = "nri"
	OwnerCSI  = "csi"
)

// MountRequest is a mount for Manager.Mount.
type MountRequest struct {
	// Request is the mount.
	Request nsmount.Request
	// Admission is the host policy's decision for it; nil when no policy
	// decides (the CLI, run by root on the host). Required for every owner
	// but the CLI.
	Admission *admission.Admission
	// Stale is the policy for stale state of the same server.
	Stale StalePolicy
	// Kill lets the flush end processes that hold stale superblocks open.
	Kill bool
	// Shutdown lets the flush shut down stale superblocks held open
	// (Linux 6.6+; see FlushOptions.Shutdown).
	Shutdown bool
	// Owner (OwnerCLI, OwnerHook, ...) and Container are recorded with the
	// entry.
	Owner, Container string
	// NetNSPath and MountNSPath are recorded for targets opened by path.
	NetNSPath, MountNSPath string
}

// MountResult is what Manager.Mount did.
type MountResult struct {
	// Mounted is the mount made.
	Mounted *nsmount.Mounted `json:"mounted"`
	// Entry is its registry entry.
	Entry registry.Entry `json:"entry"`
	// Flushed is the stale state flushed first, if any.
	Flushed *FlushReport `json:"flushed,omitempty"`
	// Warnings are things the caller should tell the user, one line each.
	Warnings []string `json:"warnings,omitempty"`
	// Phases are how long each step took, in order: plan (resolve,
	// route, check), lock (waiting for the server's lock), stale (the
	// stale-state check and flush), mount, record.
	Phases []Phase `json:"phases"`
}

// Phase is one step of a command and how long it took.
type Phase struct {
	Name string        `json:"name"`
	Took time.Duration `json:"took"`
}

// phases times the steps of one command.
type phases struct {
	list []Phase
	last time.Time
}

func startPhases() *phases { return &phases{last: time.Now()} }

// done ends step name.
func (p *phases) done(name string) {
	now := time.Now()
	p.list = append(p.list, Phase{Name: name, Took: now.Sub(p.last)})
	p.last = now
}

// Mount makes r.Request's mount in t and records it. The decision is made
// first (nsmount.Explain: resolved, routed and checked from t's network),
// then checked against r.Admission; then, holding the lock of that server
// address in t's network namespace, stale NFS client state of the server
// there is handled by r.Stale, the mount is made (nsmount.MountPlan) and
// recorded, so that a concurrent mount of the same server in the same
// namespace never takes this one's new superblock for stale state.
func (m *Manager) Mount(ctx context.Context, t *nsmount.Target, r MountRequest) (*MountResult, error) {
	policy, err := ParseStalePolicy(string(r.Stale))
	if err != nil {
		return nil, err
	}
	if r.Owner == "" {
		r.Owner = OwnerCLI
	}
	if needsAdmission(r.Owner) && r.Admission == nil {
		return nil, nsmount.WithClass(nsmount.ErrDenied, fmt.Errorf("a mount for %s needs a policy admission", r.Owner))
	}
	ph := startPhases()
	plan, err := nsmount.Explain(ctx, t, r.Request)
	if err != nil {
		return nil, err
	}
	if r.Admission != nil {
		if err := r.Admission.Allows(plan.Address); err != nil {
			return nil, err
		}
	}
	ph.done("plan")
	l, err := m.lockServer(ctx, t.NetNS(), plan.Address)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	ph.done("lock")
	res := &MountResult{}
	if res.Flushed, res.Warnings, err = m.prepare(ctx, t, plan, policy, r); err != nil {
		return nil, err
	}
	ph.done("stale")
	mnt, err := nsmount.MountPlan(ctx, t, plan)
	if err != nil {
		return nil, err
	}
	ph.done("mount")
	res.Mounted = mnt
	res.Entry = entryOf(mnt, plan, r, t.NetNS(), t.MountNS())
	if pid := t.PID(); pid != 0 {
		res.Entry.Target.PIDStart, _ = m.proc.StartTime(pid)
	}
	err = m.put(res.Entry)
	ph.done("record")
	res.Phases = ph.list
	if err != nil {
		return res, fmt.Errorf("mounted %s at %s, but recording it failed: %w", mnt.Source, mnt.Target, err)
	}
	return res, nil
}

// needsAdmission reports whether mounts of owner are decided by the host
// policy.
func needsAdmission(owner string) bool {
	e := registry.Entry{Owner: owner}
	return e.NeedsAdmission()
}

// prepare handles the stale state of plan's server in t's network
// namespace under policy, and returns what was flushed and warnings. The
// caller holds the server's lock.
//
// It reads only what t's namespace needs: its NFS superblocks, and for
// those of the server the mounts of the registry entries that claim them.
// Only when a superblock of the server is not accounted for (or that is
// not sure) is the whole machine observed, to find where the superblock is
// still mounted and who holds it.
func (m *Manager) prepare(ctx context.Context, t *nsmount.Target, plan *nsmount.Plan, policy StalePolicy, r MountRequest) (*FlushReport, []string, error) {
	netns := t.NetNS()
	server := plan.Address.Unmap()
	vols, err := m.volumesOf(t)
	if err != nil {
		return nil, nil, fmt.Errorf("check stale NFS state in netns %s: %w", netns, err)
	}
	s, err := m.netnsState(netns)
	if err != nil {
		return nil, nil, err
	}
	var warnings []string
	var dead []string
	unaccounted := false
	for _, v := range vols {
		if v.Server != server {
			continue
		}
		accounted := false
		for _, e := range s.InNetNS(netns) {
			if e.Dev != v.Dev {
				continue
			}
			live, sure := m.quickLive(&e)
			switch {
			case !sure:
				unaccounted = true // look closer below
			case live:
				accounted = true
				if w := driftWarning(&e, plan); w != "" {
					warnings = append(warnings, w)
				}
			default:
				dead = append(dead, e.ID)
			}
		}
		if !accounted {
			unaccounted = true
		}
	}
	if err := m.forget(dead...); err != nil {
		return nil, nil, err
	}
	if !unaccounted {
		return nil, warnings, nil
	}
	w, err := m.observe()
	if err != nil {
		return nil, nil, err
	}
	if s, err = m.state(); err != nil {
		return nil, nil, err
	}
	if _, ok := w.NetPID(netns); !ok {
		// No process in the netns (a target opened by path): nothing
		// to read its superblocks through. The kernel's verdict is the
		// mount's own verification.
		return nil, warnings, nil
	}
	st, err := w.NetNS(netns, s, true)
	if err != nil {
		return nil, nil, fmt.Errorf("check stale NFS state in netns %s: %w", netns, err)
	}
	stale := st.StaleFor(server)
	if len(stale) == 0 {
		return nil, warnings, nil
	}
	switch policy {
	case StaleShare:
		for _, sb := range stale {
			warnings = append(warnings, fmt.Sprintf("warning: sharing the NFS client of stale superblock %s (%s): %s", sb.Dev, sb.Server, sb.Why))
		}
		return nil, warnings, nil
	case StaleRefuse:
		return nil, nil, nsmount.WithClass(nsmount.ErrStaleState, staleError(server, stale))
	}
	rep := &FlushReport{}
	m.flushStale(ctx, netns, st.PID, stale, FlushOptions{NetNS: &netns, Server: server, Kill: r.Kill, Shutdown: r.Shutdown, Timeout: r.Request.MountTimeout}, rep)
	if len(rep.Remaining) > 0 {
		return rep, nil, nsmount.WithClass(nsmount.ErrStaleState, staleError(server, rep.Remaining))
	}
	return rep, warnings, nil
}

// volumesOf reads the NFS superblocks of t's network namespace: through
// its process when it has one, else from a thread inside the namespace.
func (m *Manager) volumesOf(t *nsmount.Target) ([]kernel.Volume, error) {
	if pid := t.PID(); pid != 0 {
		return m.proc.Volumes(pid)
	}
	return kernel.VolumesIn(t)
}

// quickLive tells whether e's mount still exists by reading the mount
// table through e's own process, if it is still there (the same process,
// by start time, in the same mount namespace): then the namespace is the
// one mounted in, and the answer is sure. Otherwise it is unsure.
func (m *Manager) quickLive(e *registry.Entry) (live, sure bool) {
	pid := e.Target.PID
	if pid == 0 || e.Target.PIDStart == 0 {
		return false, false
	}
	same := func() bool {
		start, err := m.proc.StartTime(pid)
		if err != nil || start != e.Target.PIDStart {
			return false
		}
		mnt, err := m.proc.NS(pid, "mnt")
		return err == nil && mnt == e.Target.MountNS
	}
	if !same() {
		return false, false
	}
	mounts, err := m.proc.NFSMounts(pid)
	if err != nil || !same() {
		return false, false
	}
	for _, mi := range mounts {
		if uint64(mi.ID) == e.MountID && fmt.Sprintf("%d:%d", mi.Major, mi.Minor) == e.Dev {
			return true, true
		}
	}
	return false, true
}

// driftWarning warns when live mount e of the same server in the netns
// was made through another route than plan's: the new mount shares its NFS
// client.
func driftWarning(e *registry.Entry, plan *nsmount.Plan) string {
	if plan.Route == nil || e.Rebuilt || e.Address != plan.Address.String() {
		return ""
	}
	if e.Route.Iface == plan.Route.Iface && e.Route.Source == plan.Route.Source.String() {
		return ""
	}
	return fmt.Sprintf("warning: %s at %s was mounted via %s src %s, the server now routes via %s src %s; the new mount shares its NFS client: run nsmount remount", e.Source, e.Mountpoint, e.Route.Iface, e.Route.Source, plan.Route.Iface, plan.Route.Source)
}

// entryOf records mount mnt, made by plan for r.
func entryOf(mnt *nsmount.Mounted, plan *nsmount.Plan, r MountRequest, netns, mntns nsmount.NSID) registry.Entry {
	req := r.Request
	e := registry.Entry{
		ID: fmt.Sprintf("%d:%d", mnt.MountNS, mnt.MountID),
		Target: registry.Identity{
			PID: mnt.PID, NetNS: netns, MountNS: mntns,
			NetNSPath: r.NetNSPath, MountNSPath: r.MountNSPath, Container: r.Container,
		},
		Mountpoint: mnt.Target, MountID: mnt.MountID, Dev: mnt.Dev,
		Source: mnt.Source, Server: req.Source.Server, Address: mnt.Address.String(),
		Route: registry.Route{
			Iface: mnt.Route.Iface, Source: mnt.Route.Source.String(), Table: mnt.Route.Table,
		},
		FSType: req.FSType, Version: mnt.Version, Params: mnt.Params,
		Request: registry.RequestRecord{
			Source: req.Source.String(), FSType: req.FSType,
			Options: req.Options.String(), ResolveFrom: req.ResolveFrom,
		},
		Port:     plan.NFSPort,
		ClientID: mnt.ClientID, Owner: r.Owner, Created: time.Now().UTC(),
		Admission: r.Admission,
	}
	e.CreatedTicks, _ = kernel.BootTicks()
	if mnt.Route.Gateway.IsValid() {
		e.Route.Gateway = mnt.Route.Gateway.String()
	}
	for _, kv := range strings.Split(mnt.Params, ",") {
		if v, ok := strings.CutPrefix(kv, "clientaddr="); ok {
			e.ClientAddr = v
		}
	}
	if e.FSType == "" {
		e.FSType = "nfs"
	}
	return e
}

// addrOf parses a recorded address; the zero Addr if it is not one.
func addrOf(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

var errNoProcess = errors.New("no process left in the mount namespace")
