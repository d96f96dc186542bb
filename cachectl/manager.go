package cachectl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/nsmount/nsmount/nsmount"
	"golang.org/x/sys/unix"
)

// Manager carries out nsmount's commands against the registry: every mount
// it makes is recorded, every command starts by reconciling the registry
// with the kernel, and stale NFS client state is found and flushed before it
// can be inherited.
type Manager struct {
	// Registry is where mounts are recorded.
	Registry *Registry
	// Proc is the procfs to read; the zero value reads /proc.
	Proc Proc
	// Report, if set, receives one line per action taken or problem seen.
	Report func(string)
	// Shutdowner reaches the superblocks' shutdown knob. nil means the
	// kernel's (nsmount.ShutdownState and ShutdownSuperblock) when Proc is
	// the real /proc, and none otherwise (its PIDs cannot be entered).
	Shutdowner Shutdowner
}

// shutdowner returns m.Shutdowner, else the kernel's when m reads the real
// /proc (the PIDs of another procfs cannot be entered), else nil.
func (m *Manager) shutdowner() Shutdowner {
	switch {
	case m.Shutdowner != nil:
		return m.Shutdowner
	case m.Proc.Root == "":
		return kernelShutdowner{}
	}
	return nil
}

// kernelShutdowner is the Shutdowner of the running kernel.
type kernelShutdowner struct{}

func (kernelShutdowner) ShutdownState(ctx context.Context, pid int, devs []string) (map[string]bool, error) {
	t, err := nsmount.OpenPID(pid)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	return nsmount.ShutdownState(ctx, t, devs)
}

func (kernelShutdowner) Shutdown(ctx context.Context, pid int, dev string) error {
	t, err := nsmount.OpenPID(pid)
	if err != nil {
		return err
	}
	defer t.Close()
	return nsmount.ShutdownSuperblock(ctx, t, dev)
}

func (m *Manager) report(format string, args ...any) {
	if m.Report != nil {
		m.Report(fmt.Sprintf(format, args...))
	}
}

// nsfsDev is the device of the nsfs filesystem: with an inode it names a
// namespace.
func nsfsDev() uint64 {
	var st unix.Stat_t
	if unix.Stat("/proc/self/ns/net", &st) != nil {
		return 0
	}
	return st.Dev
}

func nsid(ino uint64) NSID { return NSID{Dev: nsfsDev(), Ino: ino} }

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

// MountOptions modify Manager.Mount.
type MountOptions struct {
	// Stale is the policy for stale state of the same server.
	Stale StalePolicy
	// Kill lets the flush end processes that hold stale superblocks open.
	Kill bool
	// Shutdown lets the flush shut down stale superblocks held open
	// (Linux 6.6+; see FlushOptions.Shutdown).
	Shutdown bool
	// Owner ("cli", "hook", ...) and Container are recorded with the entry.
	Owner, Container string
	// NetNSPath and MountNSPath are recorded for targets opened by path.
	NetNSPath, MountNSPath string
}

// Mount mounts req into t like nsmount.Mount, and first makes sure the
// mount will not inherit stale client state: after the decision (address
// and route) and before the mount, the target netns's superblocks of that
// server that no live nsmount mount accounts for are handled by o.Stale.
// The mount is recorded in the registry.
func (m *Manager) Mount(ctx context.Context, t *nsmount.Target, req nsmount.Request, o MountOptions) (*nsmount.Mounted, error) {
	policy, err := ParseStalePolicy(string(o.Stale))
	if err != nil {
		return nil, err
	}
	netns := nsid(t.NetNSInode())
	verify := req.Verify
	req.Verify = func(p *nsmount.Plan) error {
		if verify != nil {
			if err := verify(p); err != nil {
				return err
			}
		}
		return m.checkStale(ctx, netns, p, policy, o)
	}
	mnt, err := nsmount.Mount(ctx, t, req)
	if err != nil {
		return nil, err
	}
	e := entryOf(mnt, req, o)
	if pid := t.PID(); pid != 0 {
		e.Target.PIDStart, _ = m.Proc.StartTime(pid)
	}
	if err := m.Registry.Update(func(s *State) error { s.Put(e); return nil }); err != nil {
		return mnt, fmt.Errorf("mounted %s at %s, but recording it failed: %w", mnt.Source, mnt.Target, err)
	}
	return mnt, nil
}

func entryOf(mnt *nsmount.Mounted, req nsmount.Request, o MountOptions) Entry {
	e := Entry{
		ID: fmt.Sprintf("%d:%d", mnt.MountNS, mnt.MountID),
		Target: Identity{
			PID: mnt.PID, NetNS: nsid(mnt.NetNS), MountNS: nsid(mnt.MountNS),
			NetNSPath: o.NetNSPath, MountNSPath: o.MountNSPath, Container: o.Container,
		},
		Mountpoint: mnt.Target, MountID: mnt.MountID, Dev: mnt.Dev,
		Source: mnt.Source, Server: req.Source.Server, Address: mnt.Address.String(),
		Route: Route{
			Iface: mnt.Route.Iface, Source: mnt.Route.Source.String(), Table: mnt.Route.Table,
		},
		FSType: req.FSType, Version: mnt.Version, Params: mnt.Params,
		Request: RequestRecord{
			Source: req.Source.String(), FSType: req.FSType,
			Options: req.Options.String(), ResolveFrom: req.ResolveFrom,
		},
		ClientID: mnt.ClientID, Owner: o.Owner, Created: time.Now().UTC(),
	}
	e.CreatedTicks, _ = BootTicks()
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

// checkStale applies policy to the stale superblocks of p's server in netns.
func (m *Manager) checkStale(ctx context.Context, netns NSID, p *nsmount.Plan, policy StalePolicy, o MountOptions) error {
	var st *NetNSState
	gone, err := m.reconciled(func(s *State, w *World) error {
		var err error
		st, err = w.NetNS(netns, s, true)
		m.reportDrift(s, netns, p)
		return err
	})
	m.reportGone(gone)
	if err != nil {
		return fmt.Errorf("check stale NFS state in netns %s: %w", netns, err)
	}
	stale := st.StaleFor(p.Address)
	if len(stale) == 0 {
		return nil
	}
	switch policy {
	case StaleShare:
		for _, sb := range stale {
			m.report("warning: sharing the NFS client of stale superblock %s (%s): %s", sb.Dev, sb.Server, sb.Why)
		}
		return nil
	case StaleRefuse:
		return nsmount.WithClass(nsmount.ErrStaleState, staleError(p.Address, stale))
	}
	rep, err := m.Flush(ctx, FlushOptions{NetNS: &netns, Server: p.Address, Kill: o.Kill, Shutdown: o.Shutdown})
	if err != nil {
		return err
	}
	if len(rep.Remaining) > 0 {
		return nsmount.WithClass(nsmount.ErrStaleState, staleError(p.Address, rep.Remaining))
	}
	return nil
}

// reportDrift warns when live mounts of the same server in this netns were
// made through another route: the new mount will share their client.
func (m *Manager) reportDrift(s *State, netns NSID, p *nsmount.Plan) {
	if p.Route == nil {
		return
	}
	for i := range s.Entries {
		e := &s.Entries[i]
		if e.Target.NetNS != netns || e.Address != p.Address.String() || e.Rebuilt {
			continue
		}
		if e.Route.Iface != p.Route.Iface || e.Route.Source != p.Route.Source.String() {
			m.report("warning: %s at %s was mounted via %s src %s, the server now routes via %s src %s; the new mount shares its NFS client: run nsmount remount", e.Source, e.Mountpoint, e.Route.Iface, e.Route.Source, p.Route.Iface, p.Route.Source)
		}
	}
}

func staleError(server netip.Addr, sbs []Superblock) error {
	var parts []string
	for _, sb := range sbs {
		part := fmt.Sprintf("superblock %s: %s", sb.Dev, sb.Why)
		for _, h := range sb.Holders {
			part += fmt.Sprintf("; held open by pid %d (%s) %s %s", h.PID, h.Comm, h.What, h.Path)
		}
		parts = append(parts, part)
	}
	return fmt.Errorf("the netns has stale NFS state for %s that the new mount would inherit (old connection, route and client identity): %s; run nsmount status, then nsmount flush (--kill to end the holders)", server, strings.Join(parts, " | "))
}

// Unmount unmounts target in t and forgets its registry entry.
func (m *Manager) Unmount(ctx context.Context, t *nsmount.Target, target string, o nsmount.UnmountOptions) error {
	if err := nsmount.Unmount(ctx, t, target, o); err != nil {
		return err
	}
	_, err := m.Reconcile()
	return err
}

// Reconcile removes the registry entries whose mount or namespace is gone,
// reports and returns them.
func (m *Manager) Reconcile() ([]Gone, error) {
	gone, err := m.reconciled(nil)
	m.reportGone(gone)
	return gone, err
}

// reconciled observes the kernel under the registry's exclusive lock,
// removes the entries whose mount or namespace is gone (returned, not
// reported), then calls fn (if set) with the state and the observation.
func (m *Manager) reconciled(fn func(*State, *World) error) ([]Gone, error) {
	var gone []Gone
	err := m.Registry.Update(func(s *State) error {
		w, err := Observe(m.Proc)
		if err != nil {
			return err
		}
		w.Shutdowner = m.shutdowner()
		gone = w.Reconcile(s)
		if fn != nil {
			return fn(s, w)
		}
		return nil
	})
	return gone, err
}

func (m *Manager) reportGone(gone []Gone) {
	for _, g := range gone {
		m.report("registry: forgot %s at %s: %s", g.Entry.Source, g.Entry.Mountpoint, g.Why)
	}
}

// FlushOptions select what Flush removes.
type FlushOptions struct {
	// NetNS limits the flush to one network namespace; nil means every
	// network namespace but the host's. The zero NSID selects none (with
	// Orphans: only orphans).
	NetNS *NSID
	// Orphans also flushes orphan superblocks (see World.Orphans): those of
	// network namespaces with no process left, kept alive by a mount.
	Orphans bool
	// Server limits the flush to superblocks of one server address.
	Server netip.Addr
	// Kill ends processes that hold stale superblocks open (SIGKILL).
	Kill bool
	// Shutdown shuts down stale superblocks that processes hold open
	// (without Kill; Linux 6.6+, /sys/fs/nfs/DEV/shutdown in their netns):
	// no process is ended, but every access through the superblock fails
	// with EIO from then on, and its NFS client is released, so a new
	// mount of the server gets its own.
	Shutdown bool
	// DryRun plans without acting.
	DryRun bool
	// Timeout bounds each unmount; zero means nsmount.DefaultMountTimeout.
	Timeout time.Duration
}

// Action is one step of a flush.
type Action struct {
	// Kind is "umount" (a copy of the superblock in some mount namespace),
	// "kill" (a process holding it open), "holder" (a process holding it,
	// left alone without Kill) or "shutdown" (/sys/fs/nfs/DEV/shutdown).
	Kind  string `json:"kind"`
	NetNS NSID   `json:"netns"`
	// PID is a process in NetNS, to reach its sysfs through (shutdown).
	PID        int         `json:"pid,omitempty"`
	Dev        string      `json:"dev"`
	Server     netip.Addr  `json:"server"`
	Mount      *MountRef   `json:"mount,omitempty"`
	Holder     *Holder     `json:"holder,omitempty"`
	Done       bool        `json:"done"`
	Error      string      `json:"error,omitempty"`
	Superblock *Superblock `json:"-"`
}

// String describes the action for people.
func (a Action) String() string {
	var s string
	switch a.Kind {
	case "umount":
		s = fmt.Sprintf("umount %s (mount %d) in mount namespace %s (pid %d)", a.Mount.Mountpoint, a.Mount.MountID, a.Mount.MountNS, a.Mount.PID)
	case "kill":
		s = fmt.Sprintf("kill pid %d (%s), holding %s %s", a.Holder.PID, a.Holder.Comm, a.Holder.What, a.Holder.Path)
	case "holder":
		hint := "use --kill to end it"
		if a.Superblock != nil && a.Superblock.CanShutdown {
			hint += ", or --shutdown to cut it off"
		}
		s = fmt.Sprintf("left pid %d (%s) holding %s %s (%s)", a.Holder.PID, a.Holder.Comm, a.Holder.What, a.Holder.Path, hint)
	case "shutdown":
		s = "shut down the superblock (/sys/fs/nfs/" + a.Dev + "/shutdown)"
	}
	netns := a.NetNS.String()
	if a.NetNS == (NSID{}) {
		netns = "(gone)"
	}
	s = fmt.Sprintf("netns %s superblock %s (server %s): %s", netns, a.Dev, a.Server, s)
	if a.Error != "" {
		s += ": " + a.Error
	}
	return s
}

// FlushReport is what Flush did.
type FlushReport struct {
	Actions []Action `json:"actions"`
	// Flushed are the superblocks that are gone afterwards.
	Flushed []string `json:"flushed"`
	// Remaining are the stale superblocks still there.
	Remaining []Superblock `json:"remaining"`
	DryRun    bool         `json:"dry_run,omitempty"`
}

// Flush removes stale NFS client state: for every stale superblock (one no
// live nsmount mount accounts for) in the selected network namespaces, it
// unmounts the copies in the mount namespaces that hold them (never lazily:
// a copy with open files is busy and stays), ends the processes that hold
// it open if o.Kill, and checks that the superblock is gone. The kernel
// frees an nfs_client with its last superblock, so a flushed server's next
// mount gets a new client, connection and route.
func (m *Manager) Flush(ctx context.Context, o FlushOptions) (*FlushReport, error) {
	var states []*NetNSState
	var orphans []Superblock
	gone, err := m.reconciled(func(s *State, w *World) error {
		for netns := range w.NS.NetNS {
			if o.NetNS != nil && netns != *o.NetNS || o.NetNS == nil && netns == w.NS.Init {
				continue
			}
			st, err := w.NetNS(netns, s, true)
			if err != nil {
				return err
			}
			states = append(states, st)
		}
		if o.Orphans {
			var err error
			if orphans, err = w.Orphans(s, true); err != nil {
				return err
			}
		}
		return nil
	})
	m.reportGone(gone)
	if err != nil {
		return nil, err
	}
	rep := &FlushReport{DryRun: o.DryRun}
	var orphanSet []Superblock
	for _, sb := range orphans {
		if !o.Server.IsValid() || sb.Server == o.Server {
			orphanSet = append(orphanSet, sb)
			rep.Actions = append(rep.Actions, planFlush(NSID{}, 0, sb, o)...)
		}
	}
	for _, st := range states {
		for _, sb := range st.StaleFor(o.Server) {
			rep.Actions = append(rep.Actions, planFlush(st.NetNS, st.PID, sb, o)...)
		}
	}
	if o.DryRun {
		for _, st := range states {
			rep.Remaining = append(rep.Remaining, st.StaleFor(o.Server)...)
		}
		rep.Remaining = append(rep.Remaining, orphanSet...)
		return rep, nil
	}
	// Holders first: a copy with open files cannot be unmounted.
	for i := range rep.Actions {
		if a := &rep.Actions[i]; a.Kind == "kill" {
			m.act(ctx, a, o)
		}
	}
	for i := range rep.Actions {
		if a := &rep.Actions[i]; a.Kind == "umount" || a.Kind == "shutdown" {
			m.act(ctx, a, o)
		}
	}
	// What is left: read each namespace's volumes again. The kernel frees
	// a superblock when its last holder goes, which can lag the unmount or
	// the holder's exit a little (the final RPCs): wait briefly.
	for _, st := range states {
		now := m.volumesAfter(st, o.Server, 2*time.Second)
		for _, sb := range st.StaleFor(o.Server) {
			if now[sb.Dev] && rep.done("shutdown", st.NetNS, sb.Dev) {
				rep.Flushed = append(rep.Flushed, sb.Dev)
				m.report("flushed: netns %s superblock %s (server %s) is shut down: it stays while held, but its NFS client is released", st.NetNS, sb.Dev, sb.Server)
			} else if now[sb.Dev] {
				rep.Remaining = append(rep.Remaining, sb)
			} else {
				rep.Flushed = append(rep.Flushed, sb.Dev)
				m.report("flushed: netns %s superblock %s (server %s) is gone", st.NetNS, sb.Dev, sb.Server)
			}
		}
	}
	// An orphan has no namespace to read its volumes through: it is gone
	// when every mount of it is.
	for _, sb := range orphanSet {
		left := false
		for _, a := range rep.Actions {
			left = left || a.Dev == sb.Dev && a.NetNS == (NSID{}) && a.Kind == "umount" && !a.Done
		}
		if left {
			rep.Remaining = append(rep.Remaining, sb)
		} else {
			rep.Flushed = append(rep.Flushed, sb.Dev)
			m.report("flushed: orphan superblock %s (server %s) is unmounted everywhere", sb.Dev, sb.Server)
		}
	}
	return rep, nil
}

// done reports whether an action of kind on superblock dev of netns was
// carried out.
func (r *FlushReport) done(kind string, netns NSID, dev string) bool {
	for _, a := range r.Actions {
		if a.Kind == kind && a.NetNS == netns && a.Dev == dev && a.Done {
			return true
		}
	}
	return false
}

// volumesAfter returns the devs of st's netns, waiting up to grace for the
// stale superblocks of server to disappear.
func (m *Manager) volumesAfter(st *NetNSState, server netip.Addr, grace time.Duration) map[string]bool {
	deadline := time.Now().Add(grace)
	for {
		vols, _ := m.Proc.Volumes(st.PID)
		now := map[string]bool{}
		for _, v := range vols {
			now[v.Dev] = true
		}
		left := false
		for _, sb := range st.StaleFor(server) {
			left = left || now[sb.Dev]
		}
		if !left || time.Now().After(deadline) {
			return now
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// planFlush plans the flush of stale superblock sb of netns (pid: a process
// in it; 0 for an orphan).
func planFlush(netns NSID, pid int, sb Superblock, o FlushOptions) []Action {
	var out []Action
	kill := o.Kill
	base := Action{NetNS: netns, Dev: sb.Dev, Server: sb.Server, Superblock: &sb}
	for _, h := range sb.Holders {
		a := base
		a.Holder = &h
		a.Kind = "holder"
		if kill {
			a.Kind = "kill"
		}
		out = append(out, a)
	}
	for _, mr := range sb.Mounts {
		a := base
		a.Mount = &mr
		a.Kind = "umount"
		out = append(out, a)
	}
	if len(sb.Holders) > 0 && !kill && o.Shutdown && sb.CanShutdown && pid != 0 {
		a := base
		a.Kind, a.PID = "shutdown", pid
		out = append(out, a)
	}
	return out
}

func (m *Manager) act(ctx context.Context, a *Action, o FlushOptions) {
	var err error
	switch a.Kind {
	case "kill":
		err = killWait(a.Holder.PID, orDefault(o.Timeout, nsmount.DefaultMountTimeout))
	case "umount":
		var t *nsmount.Target
		if t, err = nsmount.OpenPID(a.Mount.PID); err == nil {
			err = nsmount.UnmountID(ctx, t, a.Mount.MountID, nsmount.UnmountOptions{Timeout: o.Timeout})
			t.Close()
		}
		if errors.Is(err, unix.EBUSY) {
			err = fmt.Errorf("busy: files are open on it (end the holders, or use --kill)")
		}
	case "shutdown":
		err = errors.New("no shutdown knob here")
		if s := m.shutdowner(); s != nil {
			err = s.Shutdown(ctx, a.PID, a.Dev)
		}
	}
	a.Done = err == nil
	if err != nil {
		a.Error = err.Error()
	}
	m.report("%s", a.String())
}

// killWait sends SIGKILL to pid through a pidfd and waits (bounded) until
// it has exited.
func killWait(pid int, timeout time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(timeout.Milliseconds()))
	if err != nil {
		return fmt.Errorf("wait for %d: %w", pid, err)
	}
	if n == 0 {
		// SIGKILL was delivered, but exit closes the process's NFS files,
		// and a close waits for the server (NFSv4 CLOSE).
		return fmt.Errorf("pid %d was killed but has not finished exiting after %s (closing its files waits for the NFS server)", pid, timeout)
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
