package cachectl

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"golang.org/x/sys/unix"
)

// FlushOptions select what Flush removes.
type FlushOptions struct {
	// NetNS limits the flush to one network namespace; nil means every
	// network namespace but the host's. The zero NSID selects none (with
	// Orphans: only orphans).
	NetNS *nsmount.NSID
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
	Kind  string       `json:"kind"`
	NetNS nsmount.NSID `json:"netns"`
	// PID is a process in NetNS, to reach its sysfs through (shutdown).
	PID        int            `json:"pid,omitempty"`
	Dev        string         `json:"dev"`
	Server     netip.Addr     `json:"server"`
	Mount      *MountRef      `json:"mount,omitempty"`
	Holder     *kernel.Holder `json:"holder,omitempty"`
	Done       bool           `json:"done"`
	Error      string         `json:"error,omitempty"`
	Superblock *Superblock    `json:"-"`
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
	if a.NetNS.IsZero() {
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
	// Flushed are the superblocks that are gone (or shut down) afterwards;
	// Notes say so for people, one line each.
	Flushed []string `json:"flushed"`
	Notes   []string `json:"notes,omitempty"`
	// Remaining are the stale superblocks still there.
	Remaining []Superblock `json:"remaining"`
	// Gone are registry entries found gone on the way (and forgotten).
	Gone   []Gone `json:"gone,omitempty"`
	DryRun bool   `json:"dry_run,omitempty"`
}

// flushKey is one network namespace and server whose stale state a flush
// handles under one lock (the zero NetNS: orphans of that server).
type flushKey struct {
	netns  nsmount.NSID
	server netip.Addr
}

// Flush removes stale NFS client state: for every stale superblock (one no
// live nsmount mount accounts for) in the selected network namespaces, it
// unmounts the copies in the mount namespaces that hold them (never lazily:
// a copy with open files is busy and stays), ends the processes that hold
// it open if o.Kill, and checks that the superblock is gone. The kernel
// frees an nfs_client with its last superblock, so a flushed server's next
// mount gets a new client, connection and route.
//
// What is stale is decided twice: once to find the network namespaces and
// servers concerned, and again for each, under its lock, right before
// acting, so that a mount in progress there is never taken for stale.
func (m *Manager) Flush(ctx context.Context, o FlushOptions) (*FlushReport, error) {
	w, err := m.observe()
	if err != nil {
		return nil, err
	}
	rep := &FlushReport{DryRun: o.DryRun}
	var s *registry.State
	if rep.Gone, s, err = m.reconcile(w); err != nil {
		return nil, err
	}
	keys, err := flushKeys(w, s, o)
	if err != nil {
		return nil, err
	}
	if o.DryRun {
		for _, k := range keys {
			stale, pid, err := staleOf(w, s, k)
			if err != nil {
				return nil, err
			}
			for _, sb := range stale {
				rep.Actions = append(rep.Actions, planFlush(k.netns, pid, sb, o)...)
			}
			rep.Remaining = append(rep.Remaining, stale...)
		}
		return rep, nil
	}
	for _, k := range keys {
		if err := m.flushLocked(ctx, k, o, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// flushKeys lists the (network namespace, server) pairs with stale state
// that o selects, in a stable order.
func flushKeys(w *World, s *registry.State, o FlushOptions) ([]flushKey, error) {
	seen := map[flushKey]bool{}
	var keys []flushKey
	add := func(k flushKey) {
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for netns := range w.NS.NetNS {
		if o.NetNS != nil && netns != *o.NetNS || o.NetNS == nil && netns == w.NS.Init {
			continue
		}
		st, err := w.NetNS(netns, s, false)
		if err != nil {
			return nil, err
		}
		for _, sb := range st.StaleFor(o.Server) {
			add(flushKey{netns, sb.Server})
		}
	}
	if o.Orphans {
		orphans, err := w.Orphans(s, false)
		if err != nil {
			return nil, err
		}
		for _, sb := range orphans {
			if !o.Server.IsValid() || sb.Server == o.Server {
				add(flushKey{server: sb.Server})
			}
		}
	}
	slices.SortFunc(keys, func(a, b flushKey) int {
		if c := cmp.Compare(a.netns.Ino, b.netns.Ino); c != 0 {
			return c
		}
		return a.server.Compare(b.server)
	})
	return keys, nil
}

// staleOf returns the stale superblocks of k in w, with holders, and a
// process of its netns (0 for orphans).
func staleOf(w *World, s *registry.State, k flushKey) ([]Superblock, int, error) {
	if k.netns.IsZero() {
		orphans, err := w.Orphans(s, true)
		if err != nil {
			return nil, 0, err
		}
		var out []Superblock
		for _, sb := range orphans {
			if sb.Server == k.server {
				out = append(out, sb)
			}
		}
		return out, 0, nil
	}
	if _, ok := w.NetPID(k.netns); !ok {
		return nil, 0, nil // gone meanwhile, and its superblocks with it
	}
	st, err := w.NetNS(k.netns, s, true)
	if err != nil {
		return nil, 0, err
	}
	return st.StaleFor(k.server), st.PID, nil
}

// flushLocked flushes the stale state of k: it takes k's lock, observes
// afresh, acts, and checks what is left, adding to rep.
func (m *Manager) flushLocked(ctx context.Context, k flushKey, o FlushOptions, rep *FlushReport) error {
	name := serverLockName(k.netns, k.server)
	if k.netns.IsZero() {
		name = "orphans-" + k.server.Unmap().String()
	}
	l, err := m.reg.Lock(ctx, name)
	if err != nil {
		return nsmount.WithClass(nsmount.ErrTimeout, err)
	}
	defer l.Unlock()
	w, err := m.observe()
	if err != nil {
		return err
	}
	s, err := m.state()
	if err != nil {
		return err
	}
	stale, pid, err := staleOf(w, s, k)
	if err != nil || len(stale) == 0 {
		return err
	}
	m.flushStale(ctx, k.netns, pid, stale, o, rep)
	return nil
}

// flushStale acts on the stale superblocks of one netns (pid: a process in
// it; the zero netns and pid 0 for orphans) and records the outcome in
// rep. The caller holds the lock of their server.
func (m *Manager) flushStale(ctx context.Context, netns nsmount.NSID, pid int, stale []Superblock, o FlushOptions, rep *FlushReport) {
	first := len(rep.Actions)
	for _, sb := range stale {
		rep.Actions = append(rep.Actions, planFlush(netns, pid, sb, o)...)
	}
	acts := rep.Actions[first:]
	// Holders first: a copy with open files cannot be unmounted.
	for i := range acts {
		if acts[i].Kind == "kill" {
			m.act(ctx, &acts[i], o)
		}
	}
	for i := range acts {
		if acts[i].Kind == "umount" || acts[i].Kind == "shutdown" {
			m.act(ctx, &acts[i], o)
		}
	}
	done := func(kind, dev string) bool {
		return slices.ContainsFunc(acts, func(a Action) bool { return a.Kind == kind && a.Dev == dev && a.Done })
	}
	if netns.IsZero() {
		// An orphan has no namespace to read its volumes through: it is
		// gone when every mount of it is.
		for _, sb := range stale {
			if slices.ContainsFunc(acts, func(a Action) bool { return a.Dev == sb.Dev && a.Kind == "umount" && !a.Done }) {
				rep.Remaining = append(rep.Remaining, sb)
				continue
			}
			rep.Flushed = append(rep.Flushed, sb.Dev)
			rep.Notes = append(rep.Notes, fmt.Sprintf("flushed: orphan superblock %s (server %s) is unmounted everywhere", sb.Dev, sb.Server))
		}
		return
	}
	// What is left: read the namespace's volumes again. The kernel frees
	// a superblock when its last holder goes, which can lag the unmount or
	// the holder's exit a little (the final RPCs): wait briefly.
	now := m.volumesAfter(pid, stale, 2*time.Second)
	for _, sb := range stale {
		switch {
		case now[sb.Dev] && done("shutdown", sb.Dev):
			rep.Flushed = append(rep.Flushed, sb.Dev)
			rep.Notes = append(rep.Notes, fmt.Sprintf("flushed: netns %s superblock %s (server %s) is shut down: it stays while held, but its NFS client is released", netns, sb.Dev, sb.Server))
		case now[sb.Dev]:
			rep.Remaining = append(rep.Remaining, sb)
		default:
			rep.Flushed = append(rep.Flushed, sb.Dev)
			rep.Notes = append(rep.Notes, fmt.Sprintf("flushed: netns %s superblock %s (server %s) is gone", netns, sb.Dev, sb.Server))
		}
	}
}

// volumesAfter returns the superblock devs of pid's netns, waiting up to
// grace for those of stale to disappear.
func (m *Manager) volumesAfter(pid int, stale []Superblock, grace time.Duration) map[string]bool {
	deadline := time.Now().Add(grace)
	for {
		vols, _ := m.proc.Volumes(pid)
		now := map[string]bool{}
		for _, v := range vols {
			now[v.Dev] = true
		}
		left := slices.ContainsFunc(stale, func(sb Superblock) bool { return now[sb.Dev] })
		if !left || time.Now().After(deadline) {
			return now
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// planFlush plans the flush of stale superblock sb of netns (pid: a process
// in it; 0 for an orphan).
func planFlush(netns nsmount.NSID, pid int, sb Superblock, o FlushOptions) []Action {
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

// act carries out one action and records its outcome in a.
func (m *Manager) act(ctx context.Context, a *Action, o FlushOptions) {
	var err error
	switch a.Kind {
	case "kill":
		err = killWait(a.Holder.PID, orDefault(o.Timeout, nsmount.DefaultMountTimeout))
	case "umount":
		var t *nsmount.Target
		if t, err = m.openPID(a.Mount.PID); err == nil {
			err = nsmount.UnmountID(ctx, t, a.Mount.MountID, nsmount.UnmountOptions{Timeout: o.Timeout})
			t.Close()
		}
		if errors.Is(err, unix.EBUSY) {
			err = fmt.Errorf("busy: files are open on it (end the holders, or use --kill)")
		}
	case "shutdown":
		err = errors.New("no shutdown knob here")
		if m.knobs != nil {
			err = m.knobs.Shutdown(ctx, a.PID, a.Dev)
		}
	}
	a.Done = err == nil
	if err != nil {
		a.Error = err.Error()
	}
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

// staleError describes stale superblocks of server that a mount would
// inherit.
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
