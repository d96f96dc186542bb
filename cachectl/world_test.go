package cachectl

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/kernel/kerneltest"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// worldFixture is a procfs with a host, a container c1 (netns and mount ns
// c1, three processes), a sidecar in c1's netns with its own mount ns that
// holds copies of c1's mounts, a holder process in c1 with a file open on a
// superblock that is mounted nowhere, and a container c2 whose first
// process has exited. Mount namespaces "pinned" and "dead" have no process.
type worldFixture struct {
	f                        *kerneltest.Procfs
	host, c1, side, c2       nsmount.NSID // mount namespaces
	pinned, dead             nsmount.NSID
	hostNet, c1Net, c2Net    nsmount.NSID
	heldDev, heldPath        string
	srv4, srv6, srvLazy, srv netip.Addr
}

const (
	c1Mounts = "530 47 0:50 / /data rw,relatime shared:1 - nfs4 198.51.100.1:/export rw,vers=4.2,clientaddr=198.51.100.2,local_lock=none,addr=198.51.100.1\n" +
		"531 47 0:53 / /v6 rw,relatime - nfs4 [2001:db8::1]:/export rw,vers=4.1,proto=tcp6,clientaddr=2001:db8::2,local_lock=none,addr=2001:db8::1\n" +
		// A superblock of another netns (a mount made after entering only
		// the mount namespace): not in c1's volumes.
		"532 47 0:70 / /elsewhere rw,relatime - nfs4 203.0.113.10:/x rw,vers=4.2,addr=203.0.113.10\n"
	sideMounts = "610 47 0:50 / /data rw,relatime master:1 - nfs4 198.51.100.1:/export rw,vers=4.2,clientaddr=198.51.100.2,local_lock=none,addr=198.51.100.1\n" +
		"611 47 0:51 / /old rw,relatime - nfs4 198.51.100.1:/export rw,vers=4.2,clientaddr=198.51.100.2,local_lock=none,addr=198.51.100.1\n"
)

func newWorldFixture(t *testing.T) *worldFixture {
	t.Helper()
	f := kerneltest.New(t)
	w := &worldFixture{f: f,
		srv4: netip.MustParseAddr("198.51.100.1"), srv6: netip.MustParseAddr("2001:db8::1"),
		srvLazy: netip.MustParseAddr("203.0.113.10"),
	}
	w.heldPath = filepath.Join(t.TempDir(), "held")
	f.Write(w.heldPath, "x")
	var ok bool
	if w.heldDev, ok = kerneltest.DevOf(w.heldPath); !ok {
		t.Fatal("statx of a temp file failed")
	}
	c1Volumes := "NV SERVER   PORT DEV          FSID                              FSC\n" +
		"v4 c6336401  801 0:50         1:0                               no \n" +
		"v4 c6336401  801 0:51         1:0                               no \n" +
		"v4 20010db8000000000000000000000001  801 0:53         1:0                               no \n" +
		fmt.Sprintf("v4 cb00710a  801 %-12s 2:0                               no \n", w.heldDev)
	c1Servers := "NV SERVER   PORT USE HOSTNAME\n" +
		"v4 c6336401  801   1 198.51.100.1\n" +
		"v4 20010db8000000000000000000000001  801   1 2001:db8::1\n" +
		"v4 cb00710a  801   1 203.0.113.10\n"
	f.Add(1, kerneltest.Process{Mnt: "host", Net: "host", Comm: "init", Start: 1,
		Mountinfo: kerneltest.RootMountinfo + "70 47 0:40 / /srv/home rw,relatime - nfs4 192.0.2.9:/home rw,vers=4.2,addr=192.0.2.9\n",
		Volumes:   "v4 c0000209  801 0:40 1:0 no \n", Servers: "v4 c0000209  801   1 192.0.2.9\n"})
	for _, pid := range []int{100, 101} {
		f.Add(pid, kerneltest.Process{Mnt: "c1", Net: "c1", Start: uint64(50 * pid), Mountinfo: kerneltest.RootMountinfo + c1Mounts, Volumes: c1Volumes, Servers: c1Servers})
	}
	f.Add(200, kerneltest.Process{Mnt: "side", Net: "c1", Comm: "sidecar", Start: 10000, Mountinfo: kerneltest.RootMountinfo + sideMounts, Volumes: c1Volumes, Servers: c1Servers})
	f.Add(300, kerneltest.Process{Mnt: "c1", Net: "c1", Comm: "holder", Start: 15000, Mountinfo: kerneltest.RootMountinfo + c1Mounts, Volumes: c1Volumes, Servers: c1Servers,
		FDs: map[int]string{3: w.heldPath, 4: filepath.Join(f.Root(), "no-such-file")}})
	// c2: PID 400 has exited (no mountinfo left), 401 still runs.
	f.Add(400, kerneltest.Process{Mnt: "c2", Net: "c2"})
	f.Add(401, kerneltest.Process{Mnt: "c2", Net: "c2", Mountinfo: kerneltest.RootMountinfo + "700 47 0:80 / /x rw - nfs 192.0.2.1:/x rw,vers=3,addr=192.0.2.1\n"})
	w.host, w.c1, w.side, w.c2 = f.NS("host"), f.NS("c1"), f.NS("side"), f.NS("c2")
	w.pinned, w.dead = f.NS("pinned"), f.NS("dead")
	w.hostNet, w.c1Net, w.c2Net = w.host, w.c1, w.c2 // same names, same files
	return w
}

func (w *worldFixture) observe(t *testing.T) *World {
	t.Helper()
	world, err := Observe(w.f.Proc())
	if err != nil {
		t.Fatal(err)
	}
	return world
}

// entry returns an entry of c1's mount 530 (live), changed by edit.
func (w *worldFixture) entry(id string, edit func(*registry.Entry)) registry.Entry {
	e := testEntry(id)
	e.Target = registry.Identity{PID: 101, PIDStart: 5050, NetNS: w.c1Net, MountNS: w.c1}
	e.MountID, e.Dev, e.Mountpoint = 530, "0:50", "/data"
	if edit != nil {
		edit(&e)
	}
	return e
}

func TestObserveFixture(t *testing.T) {
	w := newWorldFixture(t)
	world := w.observe(t)
	got := map[string][]string{}
	for dev, refs := range world.Mounts {
		for _, m := range refs {
			got[dev] = append(got[dev], fmt.Sprintf("%d %s pid %d %s %s", m.MountID, m.MountNS, m.PID, m.Mountpoint, m.Source))
		}
	}
	want := map[string][]string{
		"0:40": {fmt.Sprintf("70 %s pid 1 /srv/home 192.0.2.9:/home", w.host)},
		"0:50": {fmt.Sprintf("530 %s pid 100 /data 198.51.100.1:/export", w.c1), fmt.Sprintf("610 %s pid 200 /data 198.51.100.1:/export", w.side)},
		"0:51": {fmt.Sprintf("611 %s pid 200 /old 198.51.100.1:/export", w.side)},
		"0:53": {fmt.Sprintf("531 %s pid 100 /v6 [2001:db8::1]:/export", w.c1)},
		"0:70": {fmt.Sprintf("532 %s pid 100 /elsewhere 203.0.113.10:/x", w.c1)},
		// c2's first process has exited: read through the next one.
		"0:80": {fmt.Sprintf("700 %s pid 401 /x 192.0.2.1:/x", w.c2)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Mounts =\n%v\nwant\n%v", got, want)
	}
	if world.Taken.IsZero() {
		t.Error("Taken not set")
	}
	if _, err := Observe(kernel.Proc{Root: filepath.Join(w.f.Root(), "missing")}); err == nil || !strings.Contains(err.Error(), "scan processes") {
		t.Errorf("Observe of a missing procfs: %v", err)
	}
}

func TestPIDInAndNetPID(t *testing.T) {
	w := newWorldFixture(t)
	world := w.observe(t)
	tests := []struct {
		name   string
		target registry.Identity
		want   int
		ok     bool
	}{
		{"own process, same start", registry.Identity{PID: 101, PIDStart: 5050, MountNS: w.c1}, 101, true},
		{"own PID reused by another process", registry.Identity{PID: 101, PIDStart: 4, MountNS: w.c1}, 100, true},
		{"own process left the namespace", registry.Identity{PID: 200, PIDStart: 10000, MountNS: w.c1}, 100, true},
		{"own process gone", registry.Identity{PID: 999, MountNS: w.c1}, 100, true},
		{"no process in the namespace", registry.Identity{PID: 101, PIDStart: 5050, MountNS: w.dead}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid, ok := world.PIDIn(&registry.Entry{Target: tt.target})
			if pid != tt.want || ok != tt.ok {
				t.Errorf("PIDIn = %d, %v; want %d, %v", pid, ok, tt.want, tt.ok)
			}
		})
	}
	if pid, ok := world.NetPID(w.c1Net); pid != 100 || !ok {
		t.Errorf("NetPID(c1) = %d, %v", pid, ok)
	}
	if pid, ok := world.NetPID(w.dead); pid != 0 || ok {
		t.Errorf("NetPID(dead) = %d, %v", pid, ok)
	}
}

func TestLiveAndReconcile(t *testing.T) {
	w := newWorldFixture(t)
	world := w.observe(t)
	pinnedPath := w.f.NSPath("pinned")
	tests := []struct {
		name string
		e    registry.Entry
		live bool
		why  string // substring of the reason; "" when live
	}{
		{name: "live", e: w.entry("live", nil), live: true},
		{name: "live in the sidecar", e: w.entry("side", func(e *registry.Entry) {
			e.Target.MountNS, e.MountID = w.side, 610
		}), live: true},
		{name: "unmounted", e: w.entry("unmounted", func(e *registry.Entry) { e.MountID = 540 }),
			why: fmt.Sprintf("mount 540 (198.51.100.1:/export at /data) is no longer in mount namespace %s", w.c1)},
		{name: "mount ID reused by another superblock", e: w.entry("reused", func(e *registry.Entry) { e.Dev = "0:99" }),
			why: "mount 530 (198.51.100.1:/export at /data) is no longer in mount namespace"},
		{name: "mount ID of another namespace", e: w.entry("otherns", func(e *registry.Entry) { e.MountID = 610 }),
			why: "mount 610"},
		{name: "made after the namespace's first process started", e: w.entry("ticked", func(e *registry.Entry) {
			e.CreatedTicks = 5000 // c1's PID 100 started at 5000
		}), live: true},
		{name: "namespace inode reused by a successor", e: w.entry("successor", func(e *registry.Entry) {
			e.CreatedTicks = 4999 // every process of c1 started later
		}), why: fmt.Sprintf("mount namespace %s is gone (its inode now names a namespace whose processes all started after the mount)", w.c1)},
		{name: "namespace without process", e: w.entry("dead", func(e *registry.Entry) { e.Target.MountNS = w.dead }),
			why: fmt.Sprintf("mount namespace %s is gone (no process left in it)", w.dead)},
		{name: "namespace pinned by path", e: w.entry("pinned", func(e *registry.Entry) {
			e.Target.MountNS, e.Target.MountNSPath = w.pinned, pinnedPath
		}), live: true},
		{name: "path now names another namespace", e: w.entry("repinned", func(e *registry.Entry) {
			e.Target.MountNS, e.Target.MountNSPath = w.dead, pinnedPath
		}), why: fmt.Sprintf("mount namespace %s (%s) is gone", w.dead, pinnedPath)},
		{name: "path removed", e: w.entry("unpinned", func(e *registry.Entry) {
			e.Target.MountNS, e.Target.MountNSPath = w.dead, filepath.Join(w.f.Root(), "nsmD-missing")
		}), why: "nsmD-missing) is gone"},
	}
	var s registry.State
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			live, why := world.Live(&tt.e)
			if live != tt.live || !strings.Contains(why, tt.why) || (tt.live && why != "") {
				t.Errorf("Live = %v, %q; want %v, %q", live, why, tt.live, tt.why)
			}
		})
		s.Put(tt.e)
	}
	gone := world.Reconcile(&s)
	var goneIDs []string
	for _, g := range gone {
		goneIDs = append(goneIDs, g.Entry.ID)
		if g.Why == "" {
			t.Errorf("gone %s without a reason", g.Entry.ID)
		}
	}
	if want := []string{"unmounted", "reused", "otherns", "successor", "dead", "repinned", "unpinned"}; !slices.Equal(goneIDs, want) {
		t.Errorf("Reconcile removed %v, want %v", goneIDs, want)
	}
	if want := []string{"live", "side", "ticked", "pinned"}; !slices.Equal(ids(&s), want) {
		t.Errorf("Reconcile kept %v, want %v", ids(&s), want)
	}
	if gone := world.Reconcile(&s); len(gone) != 0 {
		t.Errorf("second Reconcile removed %v", gone)
	}
}

func TestNetNSClassification(t *testing.T) {
	w := newWorldFixture(t)
	world := w.observe(t)
	sideAt := func(path string) string {
		return fmt.Sprintf("mounted at %s in mount namespace %s (pid 200)", path, w.side)
	}
	const lazy = "superblock is mounted nowhere (lazily unmounted, still held)"
	tests := []struct {
		name    string
		entries []registry.Entry
		// stale maps each superblock to a substring of its Why; "" = not stale.
		stale map[string]string
		// tracked is the entry ID each /data mount (c1's, the sidecar's) is
		// attributed to.
		tracked [2]string
	}{
		{
			name:    "tracked mount, copy in a sidecar",
			entries: []registry.Entry{w.entry("live", nil)},
			stale: map[string]string{
				"0:50":    "",
				"0:51":    "outlived its mount, or nsmount never made it); " + sideAt("/old"),
				"0:53":    fmt.Sprintf("mounted at /v6 in mount namespace %s (pid 100)", w.c1),
				w.heldDev: lazy,
			},
			tracked: [2]string{"live", ""},
		},
		{
			name: "no entries: every superblock is stale",
			stale: map[string]string{
				"0:50":    fmt.Sprintf("mounted at /data in mount namespace %s (pid 100), /data in mount namespace %s (pid 200)", w.c1, w.side),
				"0:51":    sideAt("/old"),
				"0:53":    "/v6",
				w.heldDev: lazy,
			},
		},
		{
			name:    "the entry's mount is gone",
			entries: []registry.Entry{w.entry("gone", func(e *registry.Entry) { e.MountID = 540 })},
			stale:   map[string]string{"0:50": "/data", "0:51": "/old", "0:53": "/v6", w.heldDev: lazy},
		},
		{
			name:    "an entry of another netns does not count",
			entries: []registry.Entry{w.entry("host", func(e *registry.Entry) { e.Target.NetNS = w.hostNet })},
			stale:   map[string]string{"0:50": "/data", "0:51": "/old", "0:53": "/v6", w.heldDev: lazy},
		},
		{
			name: "the sidecar's copy is tracked",
			entries: []registry.Entry{w.entry("side", func(e *registry.Entry) {
				e.Target.MountNS, e.MountID = w.side, 610
			})},
			stale:   map[string]string{"0:50": "", "0:51": "/old", "0:53": "/v6", w.heldDev: lazy},
			tracked: [2]string{"", "side"},
		},
		{
			name: "IPv6 and sidecar mounts tracked",
			entries: []registry.Entry{
				w.entry("live", nil),
				w.entry("v6", func(e *registry.Entry) { e.MountID, e.Dev = 531, "0:53" }),
				w.entry("old", func(e *registry.Entry) { e.Target.MountNS, e.MountID, e.Dev = w.side, 611, "0:51" }),
			},
			stale:   map[string]string{"0:50": "", "0:51": "", "0:53": "", w.heldDev: lazy},
			tracked: [2]string{"live", ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := world.NetNS(w.c1Net, &registry.State{Entries: tt.entries}, true)
			if err != nil {
				t.Fatal(err)
			}
			if st.NetNS != w.c1Net || st.PID != 100 || len(st.Clients) != 3 {
				t.Errorf("netns %v pid %d clients %v", st.NetNS, st.PID, st.Clients)
			}
			got := map[string]string{}
			for _, sb := range st.Superblocks {
				got[sb.Dev] = sb.Why
				if sb.Stale != (sb.Why != "") {
					t.Errorf("%s: Stale %v with Why %q", sb.Dev, sb.Stale, sb.Why)
				}
				if sb.Dev == "0:50" {
					if len(sb.Mounts) != 2 || sb.Mounts[0].MountID != 530 || sb.Mounts[1].MountID != 610 {
						t.Fatalf("0:50 mounts %+v", sb.Mounts)
					}
					if tr := [2]string{sb.Mounts[0].Entry, sb.Mounts[1].Entry}; tr != tt.tracked {
						t.Errorf("0:50 mounts attributed to %q, want %q", tr, tt.tracked)
					}
				}
				// Holders are only looked for on stale superblocks; only
				// the lazily unmounted one has any.
				var holders []string
				for _, h := range sb.Holders {
					holders = append(holders, fmt.Sprintf("%d %s %s %s", h.PID, h.Comm, h.What, h.Path))
				}
				want := []string(nil)
				if sb.Dev == w.heldDev {
					want = []string{"300 holder fd 3 " + w.heldPath}
				}
				if !slices.Equal(holders, want) {
					t.Errorf("%s holders %q, want %q", sb.Dev, holders, want)
				}
			}
			if len(got) != len(tt.stale) {
				t.Errorf("superblocks %v, want %v", got, tt.stale)
			}
			for dev, why := range tt.stale {
				g, ok := got[dev]
				switch {
				case !ok:
					t.Errorf("%s missing", dev)
				case why == "" && g != "":
					t.Errorf("%s stale (%s), want not stale", dev, g)
				case why != "" && !strings.Contains(g, why):
					t.Errorf("%s: Why %q, want it to contain %q", dev, g, why)
				}
			}
		})
	}
}

func TestNetNSHoldersOffAndStaleFor(t *testing.T) {
	w := newWorldFixture(t)
	world := w.observe(t)
	st, err := world.NetNS(w.c1Net, &registry.State{Entries: []registry.Entry{w.entry("live", nil)}}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range st.Superblocks {
		if sb.Holders != nil {
			t.Errorf("%s: holders %v without asking", sb.Dev, sb.Holders)
		}
	}
	tests := []struct {
		server netip.Addr
		want   []string
	}{
		{w.srv4, []string{"0:51"}},
		{w.srv6, []string{"0:53"}},
		{w.srvLazy, []string{w.heldDev}},
		{netip.Addr{}, []string{"0:51", "0:53", w.heldDev}},
		{netip.MustParseAddr("192.0.2.77"), nil},
	}
	for _, tt := range tests {
		var got []string
		for _, sb := range st.StaleFor(tt.server) {
			got = append(got, sb.Dev)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("StaleFor(%v) = %v, want %v", tt.server, got, tt.want)
		}
	}
}

func TestNetNSErrors(t *testing.T) {
	w := newWorldFixture(t)
	w.f.Add(500, kerneltest.Process{Mnt: "bad", Net: "badnet", Volumes: "v4 c6336401  801 0:50 1:0 no\nv4 zz\n", Servers: kerneltest.RealServers})
	w.f.Add(501, kerneltest.Process{Mnt: "bad2", Net: "badnet2", Volumes: kerneltest.RealVolumes, Servers: "v4 c6336401  801 x h\n"})
	world := w.observe(t)
	tests := []struct {
		name string
		ns   nsmount.NSID
		want string
	}{
		{"no process", w.dead, fmt.Sprintf("network namespace %s has no process", w.dead)},
		{"malformed volumes", w.f.NS("badnet"), fmt.Sprintf("nfs volumes of netns %s (pid 500): line 2: 2 fields", w.f.NS("badnet"))},
		{"malformed servers", w.f.NS("badnet2"), `(pid 501): line 1: USE "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := world.NetNS(tt.ns, &registry.State{}, true)
			checkErr(t, err, tt.want)
		})
	}
	// A netns where NFS was never used has no nfsfs files: no state, no error.
	st, err := world.NetNS(w.c2Net, &registry.State{}, true)
	if err != nil || len(st.Superblocks) != 0 || len(st.Clients) != 0 {
		t.Errorf("NetNS(c2) = %+v, %v", st, err)
	}
}

func TestRebuildFixture(t *testing.T) {
	w := newWorldFixture(t)
	s, err := rebuild(w.f.Proc())
	if err != nil {
		t.Fatal(err)
	}
	// c1's mounts whose superblock is in c1's netns, and the sidecar's
	// copies (its netns is c1's); not c1's mount of another netns's
	// superblock, not the host's mounts, not c2 (no volumes).
	want := map[string]string{
		fmt.Sprintf("%d:530", w.c1.Ino):   "pid 100 start 5000 /data 0:50 server 198.51.100.1 addr 198.51.100.1 client 198.51.100.2 vers 4.2 nfs4",
		fmt.Sprintf("%d:531", w.c1.Ino):   "pid 100 start 5000 /v6 0:53 server 2001:db8::1 addr 2001:db8::1 client 2001:db8::2 vers 4.1 nfs4",
		fmt.Sprintf("%d:610", w.side.Ino): "pid 200 start 10000 /data 0:50 server 198.51.100.1 addr 198.51.100.1 client 198.51.100.2 vers 4.2 nfs4",
		fmt.Sprintf("%d:611", w.side.Ino): "pid 200 start 10000 /old 0:51 server 198.51.100.1 addr 198.51.100.1 client 198.51.100.2 vers 4.2 nfs4",
	}
	got := map[string]string{}
	for _, e := range s.Entries {
		got[e.ID] = fmt.Sprintf("pid %d start %d %s %s server %s addr %s client %s vers %s %s",
			e.Target.PID, e.Target.PIDStart, e.Mountpoint, e.Dev, e.Server, e.Address, e.ClientAddr, e.Version, e.FSType)
		if !e.Rebuilt || e.Owner != "rebuilt" || e.Target.NetNS != w.c1Net || e.Created.IsZero() ||
			e.Request.Source != e.Source || e.Request.FSType != e.FSType || e.Route != (registry.Route{}) {
			t.Errorf("entry %s: %+v", e.ID, e)
		}
		if wantMnt := map[bool]nsmount.NSID{true: w.c1, false: w.side}[strings.HasPrefix(e.ID, fmt.Sprint(w.c1.Ino)+":")]; e.Target.MountNS != wantMnt {
			t.Errorf("entry %s: mount ns %v, want %v", e.ID, e.Target.MountNS, wantMnt)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rebuilt:\n%v\nwant\n%v", got, want)
	}
	// What was rebuilt is live in the same world.
	world := w.observe(t)
	if gone := world.Reconcile(s); len(gone) != 0 {
		t.Errorf("rebuilt entries reconciled away: %+v", gone)
	}
	if _, err := rebuild(kernel.Proc{Root: filepath.Join(w.f.Root(), "missing")}); err == nil {
		t.Error("rebuild of a missing procfs succeeded")
	}
}

// TestRebuildRealProc: on the host (no NFS) the real rebuild finds nothing
// and does not fail.
func TestRebuildRealProc(t *testing.T) {
	if _, err := os.Stat("/proc/self/mountinfo"); err != nil {
		t.Fatalf("no procfs: %v", err)
	}
	s, err := rebuild(kernel.Proc{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range s.Entries {
		if !e.Rebuilt {
			t.Errorf("entry %s not marked rebuilt", e.ID)
		}
	}
	t.Logf("rebuilt %d entries from the host's /proc", len(s.Entries))
}

func BenchmarkObserve(b *testing.B) {
	var mounts, pids int
	for b.Loop() {
		w, err := Observe(kernel.Proc{})
		if err != nil {
			b.Fatal(err)
		}
		mounts, pids = len(w.Mounts), 0
		for _, p := range w.NS.MountNS {
			pids += len(p)
		}
	}
	b.ReportMetric(float64(pids), "procs")
	b.ReportMetric(float64(mounts), "nfs-superblocks")
}

func TestOrphans(t *testing.T) {
	w := newWorldFixture(t)
	world := w.observe(t)
	tests := []struct {
		name    string
		entries []registry.Entry
		want    []string // "dev server mountid..."
	}{
		{
			name: "superblocks in no netns with a process",
			want: []string{"0:70 203.0.113.10 532", "0:80 192.0.2.1 700"},
		},
		{
			name: "a live entry accounts for its superblock",
			entries: []registry.Entry{w.entry("elsewhere", func(e *registry.Entry) {
				e.MountID, e.Dev, e.Mountpoint = 532, "0:70", "/elsewhere"
			})},
			want: []string{"0:80 192.0.2.1 700"},
		},
		{
			name:    "an entry whose mount is gone does not",
			entries: []registry.Entry{w.entry("gone", func(e *registry.Entry) { e.MountID, e.Dev = 999, "0:70" })},
			want:    []string{"0:70 203.0.113.10 532", "0:80 192.0.2.1 700"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			orphans, err := world.Orphans(&registry.State{Entries: tt.entries}, false)
			if err != nil {
				t.Fatal(err)
			}
			for _, sb := range orphans {
				if !sb.Stale || sb.Why != orphanWhy {
					t.Errorf("%s: Stale %v Why %q", sb.Dev, sb.Stale, sb.Why)
				}
				s := sb.Dev + " " + sb.Server.String()
				for _, m := range sb.Mounts {
					s += fmt.Sprintf(" %d", m.MountID)
				}
				got = append(got, s)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("orphans %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSourceServer(t *testing.T) {
	for _, tt := range []struct{ source, want string }{
		{"198.51.100.1:/export", "198.51.100.1"},
		{"[2001:db8::1]:/export", "2001:db8::1"},
		{"[::ffff:192.0.2.1]:/x", "192.0.2.1"},
		{"nfs.example.test:/export", "invalid IP"},
		{"198.51.100.1", "invalid IP"},
		{"", "invalid IP"},
	} {
		if got := sourceServer(tt.source).String(); got != tt.want {
			t.Errorf("sourceServer(%q) = %s, want %s", tt.source, got, tt.want)
		}
	}
}

// fakeShutdowner answers ShutdownState from down (devs absent: no knob) and
// records Shutdown calls.
type fakeShutdowner struct {
	down  map[string]bool
	err   error
	calls []string
}

func (f *fakeShutdowner) ShutdownState(_ context.Context, pid int, devs []string) (map[string]bool, error) {
	f.calls = append(f.calls, fmt.Sprintf("state %d %v", pid, devs))
	out := map[string]bool{}
	for _, d := range devs {
		if v, ok := f.down[d]; ok {
			out[d] = v
		}
	}
	return out, f.err
}

func (f *fakeShutdowner) Shutdown(_ context.Context, pid int, dev string) error {
	f.calls = append(f.calls, fmt.Sprintf("shutdown %d %s", pid, dev))
	return f.err
}

// TestNetNSShutdown: a shut-down superblock (Linux 6.6+) is not stale (its
// NFS client is released); a stale one with the knob can be shut down;
// without an answer, stale stays stale.
func TestNetNSShutdown(t *testing.T) {
	w := newWorldFixture(t)
	entries := registry.State{Entries: []registry.Entry{w.entry("live", nil)}}
	tests := []struct {
		name string
		fake *fakeShutdowner
		// want maps each superblock to "stale", "stale+knob", "shutdown"
		// or "" (tracked).
		want map[string]string
	}{
		{name: "no Shutdowner (6.1)", want: map[string]string{"0:50": "", "0:51": "stale", "0:53": "stale", w.heldDev: "stale"}},
		{name: "knob everywhere, one shut down", fake: &fakeShutdowner{down: map[string]bool{"0:50": false, "0:51": true, "0:53": false, w.heldDev: false}},
			want: map[string]string{"0:50": "", "0:51": "shutdown", "0:53": "stale+knob", w.heldDev: "stale+knob"}},
		{name: "the netns cannot be entered", fake: &fakeShutdowner{down: map[string]bool{"0:51": true}, err: errors.New("no such process")},
			want: map[string]string{"0:50": "", "0:51": "stale", "0:53": "stale", w.heldDev: "stale"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			world := w.observe(t)
			if tt.fake != nil {
				world.Shutdowner = tt.fake
			}
			st, err := world.NetNS(w.c1Net, &entries, true)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, sb := range st.Superblocks {
				switch {
				case sb.Shutdown && !sb.Stale && sb.Why == shutdownWhy && sb.Holders == nil:
					got[sb.Dev] = "shutdown"
				case sb.Stale && sb.CanShutdown:
					got[sb.Dev] = "stale+knob"
				case sb.Stale:
					got[sb.Dev] = "stale"
				case !sb.Shutdown && !sb.CanShutdown:
					got[sb.Dev] = ""
				default:
					got[sb.Dev] = fmt.Sprintf("%+v", sb)
				}
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if tt.fake != nil && (len(tt.fake.calls) != 1 || !strings.HasPrefix(tt.fake.calls[0], "state 100 ")) {
				t.Errorf("Shutdowner calls %q, want one state query through pid 100", tt.fake.calls)
			}
			if len(st.StaleFor(w.srv4)) != strings.Count(fmt.Sprint(tt.want["0:51"]), "stale") {
				t.Errorf("StaleFor(%s) = %+v", w.srv4, st.StaleFor(w.srv4))
			}
		})
	}
}
