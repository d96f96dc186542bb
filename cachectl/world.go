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
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// MountRef is one place where an NFS superblock is mounted.
type MountRef struct {
	MountNS nsmount.NSID `json:"mntns"`
	// PID is a process in that mount namespace (whose root the path is
	// relative to).
	PID        int    `json:"pid"`
	MountID    uint64 `json:"mount_id"`
	Mountpoint string `json:"mountpoint"`
	Source     string `json:"source"`
	// Entry is the registry entry of this mount, if nsmount made it.
	Entry string `json:"entry,omitempty"`
}

// World is one observation of the kernel's state: every process's
// namespaces and every NFS mount in every mount namespace that has a
// process. (A mount namespace kept alive only by a bind-mounted nsfs file
// or an open descriptor has no process to read it through and is not seen.)
type World struct {
	Proc kernel.Proc
	NS   *kernel.Namespaces
	// Mounts maps a superblock device ("major:minor") to where it is
	// mounted.
	Mounts map[string][]MountRef
	// Taken is when the observation was made; TakenTicks the same on the
	// clock of Entry.CreatedTicks (0: unknown).
	Taken      time.Time
	TakenTicks uint64
	// Shutdowner, if set, tells superblocks that are shut down (Linux
	// 6.6+) from stale ones; Observe leaves it unset.
	Shutdowner Shutdowner

	mu      sync.Mutex
	starts  map[int]uint64                   // process start times read so far
	volumes map[nsmount.NSID][]kernel.Volume // network namespaces' superblocks read so far
}

// volumesOf returns the NFS superblocks of network namespace ns, read
// through pid (a process in it) once per observation.
func (w *World) volumesOf(ns nsmount.NSID, pid int) ([]kernel.Volume, error) {
	w.mu.Lock()
	vols, ok := w.volumes[ns]
	w.mu.Unlock()
	if ok {
		return vols, nil
	}
	vols, err := w.Proc.Volumes(pid)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	if w.volumes == nil {
		w.volumes = map[nsmount.NSID][]kernel.Volume{}
	}
	w.volumes[ns] = vols
	w.mu.Unlock()
	return vols, nil
}

// startTime returns pid's start time, read once per observation.
func (w *World) startTime(pid int) (uint64, error) {
	w.mu.Lock()
	start, ok := w.starts[pid]
	w.mu.Unlock()
	if ok {
		return start, nil
	}
	start, err := w.Proc.StartTime(pid)
	if err != nil {
		return 0, err
	}
	w.mu.Lock()
	if w.starts == nil {
		w.starts = map[int]uint64{}
	}
	w.starts[pid] = start
	w.mu.Unlock()
	return start, nil
}

// Observe scans p.
func Observe(p kernel.Proc) (*World, error) {
	ns, err := p.Scan()
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	w := &World{Proc: p, NS: ns, Mounts: map[string][]MountRef{}, Taken: time.Now()}
	w.TakenTicks, _ = kernel.BootTicks()
	for mntns, pids := range ns.MountNS {
		for _, pid := range pids {
			mounts, err := p.NFSMounts(pid)
			if err != nil {
				continue // exited: try the next process of this namespace
			}
			for _, m := range mounts {
				dev := fmt.Sprintf("%d:%d", m.Major, m.Minor)
				w.Mounts[dev] = append(w.Mounts[dev], MountRef{MountNS: mntns, PID: pid, MountID: uint64(m.ID), Mountpoint: m.Mountpoint, Source: m.Source})
			}
			break
		}
	}
	for _, refs := range w.Mounts {
		sort.Slice(refs, func(i, j int) bool { return refs[i].MountID < refs[j].MountID })
	}
	return w, nil
}

// PIDIn returns a process in the mount namespace of e's target,
// preferring e's own process when it is still the same one.
func (w *World) PIDIn(e *registry.Entry) (int, bool) {
	pids := w.NS.MountNS[e.Target.MountNS]
	for _, pid := range pids {
		if pid == e.Target.PID {
			if start, err := w.startTime(pid); err == nil && start == e.Target.PIDStart {
				return pid, true
			}
		}
	}
	if len(pids) > 0 {
		return pids[0], true
	}
	return 0, false
}

// NetPID returns a process in network namespace ns.
func (w *World) NetPID(ns nsmount.NSID) (int, bool) {
	if pids := w.NS.NetNS[ns]; len(pids) > 0 {
		return pids[0], true
	}
	return 0, false
}

// Live reports whether e's mount still exists; why says what is gone if not.
func (w *World) Live(e *registry.Entry) (bool, string) {
	if _, ok := w.NS.MountNS[e.Target.MountNS]; !ok {
		if e.Target.MountNSPath == "" {
			return false, fmt.Sprintf("mount namespace %s is gone (no process left in it)", e.Target.MountNS)
		}
		if id, err := nsmount.NSOfPath(e.Target.MountNSPath); err != nil || id != e.Target.MountNS {
			return false, fmt.Sprintf("mount namespace %s (%s) is gone", e.Target.MountNS, e.Target.MountNSPath)
		}
		// Held by path and alive, but without a process its mount table
		// cannot be read: trust the entry.
		return true, ""
	}
	if e.CreatedTicks != 0 && !w.startedBy(e.Target.MountNS, e.CreatedTicks) {
		return false, fmt.Sprintf("mount namespace %s is gone (its inode now names a namespace whose processes all started after the mount)", e.Target.MountNS)
	}
	for _, m := range w.Mounts[e.Dev] {
		if m.MountNS == e.Target.MountNS && m.MountID == e.MountID {
			return true, ""
		}
	}
	return false, fmt.Sprintf("mount %d (%s at %s) is no longer in mount namespace %s", e.MountID, e.Source, e.Mountpoint, e.Target.MountNS)
}

// newer reports whether e may have been recorded after w was taken (its
// mount possibly made after the observation). The boot clock ticks in
// 10 ms: an entry of the same or the previous tick counts as newer.
func (w *World) newer(e *registry.Entry) bool {
	if e.CreatedTicks != 0 && w.TakenTicks != 0 {
		return e.CreatedTicks+1 >= w.TakenTicks
	}
	return !e.Created.Before(w.Taken.Add(-time.Second))
}

// startedBy reports whether a process of mount namespace ns started at or
// before ticks (see Entry.CreatedTicks).
func (w *World) startedBy(ns nsmount.NSID, ticks uint64) bool {
	for _, pid := range w.NS.MountNS[ns] {
		if start, err := w.startTime(pid); err == nil && start <= ticks {
			return true
		}
	}
	return false
}

// Gone is a registry entry removed because its mount or namespace is gone.
type Gone struct {
	Entry registry.Entry `json:"entry"`
	Why   string         `json:"why"`
}

// Reconcile removes from s the entries whose mount or namespace no longer
// exists in w, and returns them. Entries recorded after w was taken are
// not judged by it: their mounts may be newer than the observation.
func (w *World) Reconcile(s *registry.State) []Gone {
	var gone []Gone
	s.Remove(func(e *registry.Entry) bool {
		if w.newer(e) {
			return false
		}
		if ok, why := w.Live(e); !ok {
			gone = append(gone, Gone{Entry: *e, Why: why})
			return true
		}
		return false
	})
	return gone
}

// Superblock is one NFS superblock of a network namespace, with where it is
// mounted and who else holds it.
type Superblock struct {
	kernel.Volume
	// Mounts are the mounts of this superblock, in any mount namespace.
	Mounts []MountRef `json:"mounts"`
	// Holders are processes holding it through open files (filled in for
	// stale superblocks).
	Holders []kernel.Holder `json:"holders,omitempty"`
	// Stale reports that no live nsmount mount accounts for this
	// superblock: it outlived its mount (a copy propagated into another
	// mount namespace, a lazy unmount with open files) or was never
	// nsmount's. A new mount of the same server in this netns would share
	// its nfs_client, and with it the old connection, route and identity.
	Stale bool `json:"stale"`
	// Why explains Stale (or Shutdown) for people.
	Why string `json:"why,omitempty"`
	// Shutdown reports a superblock that is shut down (Linux 6.6+): its
	// NFS client is released, a new mount cannot inherit anything from
	// it, so it is not stale; it stays while held, failing every access.
	Shutdown bool `json:"shutdown,omitempty"`
	// CanShutdown reports that the kernel has the shutdown knob for this
	// stale superblock (flush --shutdown).
	CanShutdown bool `json:"can_shutdown,omitempty"`
}

// shutdownWhy explains a shut-down superblock.
const shutdownWhy = "shut down: its NFS client is released (a new mount gets its own), and every access through it fails with EIO until its holders let go"

// NetNSState is the NFS client state of one network namespace.
type NetNSState struct {
	NetNS nsmount.NSID `json:"netns"`
	// PID is the process the state was read through.
	PID         int             `json:"pid"`
	Clients     []kernel.Client `json:"clients"`
	Superblocks []Superblock    `json:"superblocks"`
	// ClientID is the netns's NFSv4 client identity, if known: as its
	// mounts recorded it (ClientIDRecorded), else as read from the kernel.
	ClientID string `json:"client_id,omitempty"`
	// ClientIDRecorded reports that ClientID is the one recorded with
	// the netns's mounts when they were made (nsmount sets it only where
	// none is set; it changes only if something writes the netns's
	// /sys/fs/nfs/net/nfs_client/identifier), not read now.
	ClientIDRecorded bool `json:"client_id_recorded,omitempty"`
}

// StaleFor returns the stale superblocks whose client talks to server
// (any address if server is invalid).
func (n *NetNSState) StaleFor(server netip.Addr) []Superblock {
	var out []Superblock
	for _, sb := range n.Superblocks {
		if sb.Stale && (!server.IsValid() || sb.Server == server) {
			out = append(out, sb)
		}
	}
	return out
}

// NetNS reads the NFS client state of network namespace ns and classifies
// its superblocks against the live entries of s. holders, if true, also
// looks for processes that hold stale superblocks open (a scan of every
// process's descriptors).
func (w *World) NetNS(ns nsmount.NSID, s *registry.State, holders bool) (*NetNSState, error) {
	pid, ok := w.NetPID(ns)
	if !ok {
		return nil, fmt.Errorf("network namespace %s has no process", ns)
	}
	out := &NetNSState{NetNS: ns, PID: pid}
	vols, err := w.volumesOf(ns, pid)
	if err != nil {
		return nil, fmt.Errorf("nfs volumes of netns %s (pid %d): %w", ns, pid, err)
	}
	if out.Clients, err = w.Proc.Clients(pid); err != nil {
		return nil, fmt.Errorf("nfs clients of netns %s (pid %d): %w", ns, pid, err)
	}
	live := map[string]string{} // "mntns:mountid" -> entry ID
	recent := map[string]bool{} // devs of entries newer than w
	for i := range s.Entries {
		e := &s.Entries[i]
		if e.Target.NetNS != ns {
			continue
		}
		if w.newer(e) {
			// Mounted after w was taken, perhaps: not judged by w, and
			// its superblock is not stale.
			recent[e.Dev] = true
		} else if ok, _ := w.Live(e); ok {
			live[fmt.Sprintf("%d:%d", e.Target.MountNS.Ino, e.MountID)] = e.ID
		}
	}
	stale := map[string]bool{}
	for _, v := range vols {
		sb := Superblock{Volume: v}
		tracked := 0
		for _, m := range w.Mounts[v.Dev] {
			m.Entry = live[fmt.Sprintf("%d:%d", m.MountNS.Ino, m.MountID)]
			if m.Entry != "" {
				tracked++
			}
			sb.Mounts = append(sb.Mounts, m)
		}
		switch {
		case tracked > 0, recent[v.Dev]:
		case len(sb.Mounts) == 0:
			sb.Stale, sb.Why = true, "superblock is mounted nowhere (lazily unmounted, still held)"
		default:
			var where []string
			for _, m := range sb.Mounts {
				where = append(where, fmt.Sprintf("%s in mount namespace %s (pid %d)", m.Mountpoint, m.MountNS, m.PID))
			}
			sb.Stale, sb.Why = true, "no nsmount mount uses this superblock (it outlived its mount, or nsmount never made it); mounted at "+strings.Join(where, ", ")
		}
		if sb.Stale {
			stale[v.Dev] = true
		}
		out.Superblocks = append(out.Superblocks, sb)
	}
	w.markShutdown(pid, out.Superblocks, stale)
	if holders && len(stale) > 0 {
		h, err := w.Proc.Holders(stale)
		if err != nil {
			return nil, err
		}
		for i := range out.Superblocks {
			out.Superblocks[i].Holders = h[out.Superblocks[i].Dev]
		}
	}
	return out, nil
}

// markShutdown asks w.Shutdowner about the stale superblocks of sbs (of the
// netns of pid): shut-down ones are not stale (and leave stale), others
// with the knob can be shut down. Without an answer they stay stale.
func (w *World) markShutdown(pid int, sbs []Superblock, stale map[string]bool) {
	if w.Shutdowner == nil || len(stale) == 0 {
		return
	}
	devs := make([]string, 0, len(stale))
	for dev := range stale {
		devs = append(devs, dev)
	}
	sort.Strings(devs)
	down, err := w.Shutdowner.ShutdownState(context.Background(), pid, devs)
	if err != nil {
		return
	}
	for i := range sbs {
		sb := &sbs[i]
		d, ok := down[sb.Dev]
		switch {
		case !ok || !sb.Stale:
		case d:
			sb.Stale, sb.Shutdown, sb.Why = false, true, shutdownWhy
			delete(stale, sb.Dev)
		default:
			sb.CanShutdown = true
		}
	}
}

// orphanWhy explains an orphan superblock.
const orphanWhy = "its network namespace has no process left: this mount keeps that namespace's NFS client (connection, route, identity) alive"

// Orphans returns the NFS superblocks that are mounted in some mount
// namespace of w but belong to no network namespace with a process. The
// network namespace they were mounted from is gone for every user (its last
// process exited, e.g. a container's teardown), but a copy of the mount
// (propagated into another mount namespace, or bind-mounted) keeps the
// superblock, its nfs_client and the kernel's struct net alive. They are
// always stale, unless a live entry of s accounts for them (a mount made
// with --netns PATH into a namespace that no process is in). Their NetNS is
// unknown; Server comes from the mount source when it is an address.
// holders, if true, also looks for processes that hold them open (as
// NetNS does for stale superblocks).
func (w *World) Orphans(s *registry.State, holders bool) ([]Superblock, error) {
	known := map[string]bool{}
	for i := range s.Entries {
		if ok, _ := w.Live(&s.Entries[i]); ok || w.newer(&s.Entries[i]) {
			known[s.Entries[i].Dev] = true
		}
	}
	for ns, pids := range w.NS.NetNS {
		// The first process still there reads the namespace's volumes
		// (unless NetNS read them already). A namespace all of whose
		// processes exited since the scan is gone too: its superblocks
		// died with it, or are orphans now.
		for _, pid := range pids {
			vols, err := w.volumesOf(ns, pid)
			if err != nil {
				continue
			}
			for _, v := range vols {
				known[v.Dev] = true
			}
			break
		}
	}
	var out []Superblock
	for dev, refs := range w.Mounts {
		if known[dev] {
			continue
		}
		sb := Superblock{Volume: kernel.Volume{Dev: dev, Server: sourceServer(refs[0].Source)}, Mounts: refs, Stale: true, Why: orphanWhy}
		out = append(out, sb)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dev < out[j].Dev })
	if holders && len(out) > 0 {
		devs := map[string]bool{}
		for _, sb := range out {
			devs[sb.Dev] = true
		}
		h, err := w.Proc.Holders(devs)
		if err != nil {
			return nil, err
		}
		for i := range out {
			out[i].Holders = h[out[i].Dev]
		}
	}
	return out, nil
}

// sourceServer returns the server address of an NFS mount source
// ("ADDR:/path", "[V6]:/path"); the zero Addr when it is a name.
func sourceServer(source string) netip.Addr {
	host, _, ok := strings.Cut(source, ":/")
	if i := strings.LastIndex(source, "]:/"); strings.HasPrefix(source, "[") && i > 0 {
		host, ok = source[1:i], true
	}
	if !ok {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" {
		// nfsfs lists servers without a zone: a zoned source would never
		// match one (found by FuzzSourceServer).
		return netip.Addr{}
	}
	return a.Unmap()
}
