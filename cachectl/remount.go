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
)

// Remounted is the result of a remount.
type Remounted struct {
	Old     registry.Entry   `json:"old"`
	New     registry.Entry   `json:"new"`
	Mounted *nsmount.Mounted `json:"mounted"`
	Elapsed time.Duration    `json:"elapsed"`
	Why     string           `json:"why,omitempty"`
	// Reset is how many TCP connections to the server's address were
	// reset first (a route change to the same address; see Remount).
	Reset int `json:"reset,omitempty"`
	// Retired lists the superblocks shut down first to retire the
	// netns's NFS client for the server (RemountOptions.RetireClient).
	Retired []string `json:"retired,omitempty"`
}

// RemountOptions are the choices of one remount.
type RemountOptions struct {
	// RetireClient shuts down, before the new mount, every superblock of
	// the NFS client that the container's network namespace has for the
	// server's address (kernel.RetireClient; Linux 6.6+, elsewhere
	// nothing is done), so that the new mount gets a client of its own.
	// For a client that no longer makes progress while its server
	// accepts connections: a mount through it hangs (Linux 6.12 leaves a
	// client so when its NFSv4 state manager thread cannot be started,
	// "nfs4_schedule_state_manager: kthread_run: -4" in the kernel log).
	// Every file open on those superblocks fails with EIO from then on.
	// A client that also holds a superblock nsmount did not mount is not
	// retired (kernel.ErrForeignSuperblock, nothing changed). A Manager
	// that keeps connections never retires a client.
	RetireClient bool
	// MountTimeout bounds the new mount (the superblock's creation, as
	// nsmount.Request's); zero: nsmount.DefaultMountTimeout. A client
	// that makes no progress shows as a remount that times out, so a
	// shorter bound finds one sooner; a server slower than that to answer
	// a mount is reported as stuck too.
	MountTimeout time.Duration
}

// FindEntry returns the entry of the nsmount mount at mountpoint in the
// mount namespace of t.
func (m *Manager) FindEntry(t *nsmount.Target, mountpoint string) (*registry.Entry, error) {
	s, err := m.netnsState(t.NetNS())
	if err != nil {
		return nil, err
	}
	var found *registry.Entry
	for _, e := range s.InMountNS(t.MountNS()) {
		if e.Mountpoint == mountpoint {
			found = &e
		}
	}
	if found == nil {
		return nil, nsmount.WithClass(nsmount.ErrNotMounted, fmt.Errorf("no nsmount mount at %s in %s (nsmount status lists them)", mountpoint, t))
	}
	return found, nil
}

// Remount redoes e's decision (resolve, route, check from the container's
// network now) and replaces the mount in place (nsmount.ReplacePlan: a new
// superblock first, then the swap, then the old mount is detached). The
// new address must be inside e's recorded admission: a mount that a
// policy admitted is never moved outside it (ErrDenied, nothing touched),
// and one that needs an admission and has none recorded is not moved at
// all. When the server's address is the same but its route changed, the
// TCP connections of the container's netns to that address (the NFS
// client's, shared by every superblock of that server there) are reset
// first (kernel.ResetConnections), unless the Manager keeps connections:
// the client reconnects over the new route at once, and the old mount's
// open files then talk to whatever answers at the address now (ESTALE or
// EIO when it is another server: that is what moving to it means). The
// registry entry is replaced; why is recorded in the result. o.RetireClient
// retires the client for the server's address first (see RemountOptions).
func (m *Manager) Remount(ctx context.Context, e registry.Entry, why string, o RemountOptions) (*Remounted, error) {
	start := time.Now()
	t, err := m.openEntry(&e)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	req, err := requestOf(e)
	if err != nil {
		return nil, err
	}
	req.MountTimeout = o.MountTimeout
	plan, err := nsmount.Explain(ctx, t, req)
	if err != nil {
		return nil, fmt.Errorf("remount %s at %s: %w", e.Source, e.Mountpoint, err)
	}
	if e.Admission != nil || e.NeedsAdmission() {
		if err := e.Admission.Allows(plan.Address); err != nil {
			return nil, fmt.Errorf("remount %s at %s (owner %s): %w", e.Source, e.Mountpoint, e.Owner, err)
		}
	}
	l, err := m.lockServer(ctx, t.NetNS(), plan.Address)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	port := e.Port
	if port == 0 {
		port = nsmount.DefaultNFSPort
	}
	var retired []string
	if o.RetireClient && !m.keepConns {
		version := "3"
		if e.NFSv4() {
			version = e.Version
			if !strings.HasPrefix(version, "4") {
				version = "4" // an entry rebuilt from mountinfo: the minor version is not known
			}
		}
		mine, err := m.superblocksOf(t.NetNS())
		if err != nil {
			return nil, err
		}
		retired, err = kernel.RetireClient(ctx, t, netip.AddrPortFrom(plan.Address, port), version, mine)
		switch {
		case errors.Is(err, kernel.ErrForeignSuperblock):
			return nil, nsmount.WithClass(nsmount.ErrStaleState, fmt.Errorf("remount %s at %s: %w", e.Source, e.Mountpoint, err))
		case errors.Is(err, kernel.ErrNoShutdown):
			m.notice("remount %s at %s: the NFS client for %s in %s not retired (no shutdown knob: Linux 6.6+); the new mount shares it", e.Source, e.Mountpoint, plan.Address, t)
		case err != nil:
			return nil, fmt.Errorf("remount %s at %s: %w", e.Source, e.Mountpoint, err)
		}
	}
	// fail reports a failure from here on, and the client retired before
	// it, which cannot be undone.
	fail := func(err error) error {
		err = fmt.Errorf("remount %s at %s: %w", e.Source, e.Mountpoint, err)
		if len(retired) > 0 {
			err = fmt.Errorf("%w (the NFS client for %s was retired first: shut down %s)", err, plan.Address, strings.Join(retired, " "))
		}
		return err
	}
	reset := 0
	if !m.keepConns && plan.Address == addrOf(e.Address) && plan.Route != nil && len(drift(e.Route, *plan.Route)) > 0 {
		// The same address, another route: the netns's NFS client for
		// that address, which the new superblock shares (nosharecache
		// gives a superblock of its own, not a client), keeps its
		// connection over the old route, and it hangs until the RPC
		// layer gives up (measured: 18.5 s). Reset, it reconnects at once
		// over the route the netns has now.
		n, err := kernel.ResetConnections(ctx, t, netip.AddrPortFrom(plan.Address, port))
		if err != nil {
			return nil, fail(err)
		}
		reset = n
	}
	mnt, err := nsmount.ReplacePlan(ctx, t, plan, e.MountID)
	if errors.Is(err, nsmount.ErrTimeout) && len(retired) == 0 {
		return nil, fmt.Errorf("remount %s at %s: %w; %w", e.Source, e.Mountpoint, err, clientHungError(plan.Address))
	}
	if err != nil {
		return nil, fail(err)
	}
	owner := e.Owner
	if owner == "rebuilt" {
		owner = OwnerCLI
	}
	ne := entryOf(mnt, plan, MountRequest{
		Request: req, Admission: e.Admission, Owner: owner, Container: e.Target.Container,
		NetNSPath: e.Target.NetNSPath, MountNSPath: e.Target.MountNSPath,
	}, t.NetNS(), t.MountNS())
	if pid := t.PID(); pid != 0 {
		ne.Target.PIDStart, _ = m.proc.StartTime(pid)
	}
	err = m.put(ne)
	if err == nil && ne.ID != e.ID {
		err = m.forget(e.ID)
	}
	r := &Remounted{Old: e, New: ne, Mounted: mnt, Elapsed: time.Since(start), Why: why, Reset: reset, Retired: retired}
	if err != nil {
		return r, fmt.Errorf("remounted %s at %s, but recording it failed: %w", e.Source, e.Mountpoint, err)
	}
	return r, nil
}

// openEntry opens a process in e's mount namespace, which must still be in
// e's network namespace: e's own process when it is still there, else any
// process of that mount namespace. A mount made from another network
// namespace than its mount namespace's (a CSI volume) is not remounted:
// see errSplitRemount.
func (m *Manager) openEntry(e *registry.Entry) (*nsmount.Target, error) {
	pid := 0
	if live, sure := m.quickLive(e); sure && live {
		pid = e.Target.PID
	} else {
		w, err := m.observe()
		if err != nil {
			return nil, err
		}
		p, ok := w.PIDIn(e)
		if !ok {
			return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("%s at %s: %w", e.Source, e.Mountpoint, errNoProcess))
		}
		if net, err := w.Proc.NS(p, "net"); err == nil && net != e.Target.NetNS && e.Target.NetNSPath != "" {
			return nil, splitRemountError(e)
		}
		pid = p
	}
	t, err := m.openPID(pid)
	if err != nil {
		return nil, err
	}
	if t.NetNS() != e.Target.NetNS || t.MountNS() != e.Target.MountNS {
		t.Close()
		return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("pid %d is no longer in the namespaces %s was mounted from", pid, e.Mountpoint))
	}
	return t, nil
}

// requestOf rebuilds the user's request behind e.
func requestOf(e registry.Entry) (nsmount.Request, error) {
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

// superblocksOf returns the superblocks of nsmount's mounts in netns, each
// with the NFS version it was mounted with.
func (m *Manager) superblocksOf(netns nsmount.NSID) (map[string]string, error) {
	s, err := m.netnsState(netns)
	if err != nil {
		return nil, err
	}
	mine := map[string]string{}
	for _, e := range s.Entries {
		if e.Target.NetNS == netns {
			mine[e.Dev] = e.Version
		}
	}
	return mine, nil
}

// errClientHung marks a remount whose mount timed out although its server
// had just accepted a connection (the preflight): the mount waited on the
// netns's NFS client for that address, which then no longer makes
// progress. The next remount may retire it (RemountOptions.RetireClient).
var errClientHung = errors.New("the NFS client for the address may be stuck")

// clientHungError is errClientHung about addr, saying how to retire it.
func clientHungError(addr netip.Addr) error {
	return fmt.Errorf("%w: %s accepted a connection just before (nsmount remount --retire-client replaces that client)", errClientHung, addr)
}
