package cachectl

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel/kerneltest"
	"github.com/nsmount/nsmount/cachectl/kmsg"
	"github.com/nsmount/nsmount/cachectl/nfsstat"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// dogFixture: containers c1 (pid 100) and c2 (pid 200) each mount
// 198.51.100.10:/export from their own netns (the lab capture's /data:
// superblocks 0:40 and 0:50); c3 (pid 300) mounts another server; pid 400
// is a process with no NFS mount.
type dogFixture struct {
	f      *kerneltest.Procfs
	d      *watchdog
	events chan WatchEvent
	s      *registry.State
	c1, c2 registry.Entry
}

func newDogFixture(t *testing.T) *dogFixture {
	t.Helper()
	f := kerneltest.New(t)
	cap := func(name string) string { return string(kerneltest.Captured(t, name)) }
	c2 := func(text string) string {
		return strings.NewReplacer("0:40", "0:50", "0:41", "0:51", "0:42", "0:52").Replace(text)
	}
	f.Add(1, kerneltest.Process{Mnt: "host", Net: "host", Start: 1, Mountinfo: kerneltest.RootMountinfo})
	f.Add(100, kerneltest.Process{Mnt: "m1", Net: "n1", Start: 100, Mountinfo: cap("mountinfo-6.1.txt"), Mountstats: cap("mountstats-6.1.txt"),
		Volumes: cap("nfsfs-volumes-6.1.txt"), Servers: cap("nfsfs-servers-6.1.txt")})
	f.Add(200, kerneltest.Process{Mnt: "m2", Net: "n2", Start: 200, Mountinfo: c2(cap("mountinfo-6.1.txt")), Mountstats: cap("mountstats-6.1.txt"),
		Volumes: c2(cap("nfsfs-volumes-6.1.txt")), Servers: cap("nfsfs-servers-6.1.txt")})
	f.Add(300, kerneltest.Process{Mnt: "m3", Net: "n3", Start: 300,
		Mountinfo: "90 1 0:60 / /other rw - nfs4 203.0.113.7:/x rw,vers=4.2,addr=203.0.113.7\n",
		Volumes:   "v4 cb007107  801 0:60 1:0 no \n", Servers: "v4 cb007107  801   1 203.0.113.7\n"})
	f.Add(400, kerneltest.Process{Mnt: "m4", Net: "n4", Start: 400, Comm: "sync", Mountinfo: kerneltest.RootMountinfo})
	m := openManager(t, f.Proc())
	entry := func(id string, pid int, mnt, net nsmount.NSID, mountID uint64, dev string) registry.Entry {
		e := testEntry(id)
		e.Target = registry.Identity{PID: pid, PIDStart: uint64(pid), MountNS: mnt, NetNS: net, Container: id}
		e.MountID, e.Dev, e.Mountpoint, e.Source = mountID, dev, "/data", "198.51.100.10:/export"
		return e
	}
	fx := &dogFixture{f: f,
		c1: entry("c1", 100, f.NS("m1"), f.NS("n1"), 92, "0:40"),
		c2: entry("c2", 200, f.NS("m2"), f.NS("n2"), 92, "0:50"),
	}
	other := entry("c3", 300, f.NS("m3"), f.NS("n3"), 90, "0:60")
	fx.s = &registry.State{Entries: []registry.Entry{fx.c1, fx.c2, other}}
	fx.events = make(chan WatchEvent, 100)
	w := newWatcher(m, WatchOptions{Timeout: time.Second}, fx.events)
	d := newWatchdog(w, statsReader(t, m))
	d.confirm = 10 * time.Millisecond
	fx.d = d
	return fx
}

// kernelEvents takes the "kernel" and "unresponsive" events sent so far,
// each as a line ("kernel ATTRIBUTION xCOUNT [MOUNTS]", "unresponsive
// CONTAINER DEV").
func (fx *dogFixture) kernelEvents() []string {
	var got []string
	for {
		select {
		case ev := <-fx.events:
			switch ev.Kind {
			case "kernel":
				got = append(got, "kernel "+ev.Kernel.Attribution+" x"+strconv.Itoa(ev.Kernel.Count)+" ["+mounts(ev.Kernel)+"]")
			case "unresponsive":
				got = append(got, "unresponsive "+ev.Container+" "+ev.Dev)
			}
		default:
			return got
		}
	}
}

// statsReader is the watchdog's nfsstat reader, through m's procfs.
func statsReader(t *testing.T, m *Manager) *nfsstat.Reader {
	t.Helper()
	r, err := nfsstat.NewReader(nfsstat.Options{Proc: m.proc, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// sampleNow takes the watchdog's round sample and waits for it.
func (fx *dogFixture) sampleNow(t *testing.T) {
	t.Helper()
	var wg sync.WaitGroup
	fx.d.sample(context.Background(), &wg, nfsNamespaces(fx.world(t)))
	wg.Wait()
}

func (fx *dogFixture) world(t *testing.T) *World {
	t.Helper()
	w, err := Observe(fx.f.Proc())
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (fx *dogFixture) setMountstats(pid int, name string, t *testing.T) {
	fx.f.Write(fx.f.Root()+"/"+strconv.Itoa(pid)+"/mountstats", string(kerneltest.Captured(t, name)))
}

// mounts is a report's mounts as "entry dev", ordered by device. The
// report orders them by network namespace inode, which the fake procfs's
// files get from the filesystem: n1 below n2 mostly, not always (a CI
// run had c2's mounts first).
func mounts(rep *KernelReport) string {
	ms := slices.Clone(rep.Mounts)
	slices.SortStableFunc(ms, func(a, b KernelMount) int { return strings.Compare(a.Dev, b.Dev) })
	var out []string
	for _, m := range ms {
		out = append(out, m.Entry+" "+m.Dev)
	}
	return strings.Join(out, ",")
}

func TestAttributeServer(t *testing.T) {
	notResponding := kmsg.Message{Kind: kmsg.NotResponding, Program: "nfs", Server: "198.51.100.10", Text: "nfs: server 198.51.100.10 not responding, still trying"}
	ok := kmsg.Message{Kind: kmsg.ServerOK, Program: "nfs", Server: "198.51.100.10", Text: "nfs: server 198.51.100.10 OK"}
	tests := []struct {
		name string
		// c1Now and c2Now are the mountstats captures the containers show
		// when the message comes (the round sampled mountstats-6.1.txt).
		c1Now, c2Now    string
		msg             kmsg.Message
		unresponsive    string // entry marked unresponsive before
		wantAttribution string
		wantMounts      string
	}{
		// The capture has three superblocks of the server per container:
		// /data (nsmount's entry), /v3 and /mnt (not nsmount's). In the
		// outage, /data and /mnt sent without a reply, /v3 was idle.
		{"c1's route blackholed: c1 sent without reply", "mountstats-outage-6.1.txt", "mountstats-6.1.txt", notResponding, "", Attributed, "c1 0:40, 0:42"},
		{"both blackholed", "mountstats-outage-6.1.txt", "mountstats-outage-6.1.txt", notResponding, "", Attributed, "c1 0:40, 0:42,c2 0:50, 0:52"},
		// Nothing shows it (the round's sample came after the last
		// request): both named, none blamed.
		{"no evidence", "mountstats-6.1.txt", "mountstats-6.1.txt", notResponding, "", Ambiguous, "c1 0:40, 0:41, 0:42,c2 0:50, 0:51, 0:52"},
		{"another server", "mountstats-6.1.txt", "mountstats-6.1.txt", kmsg.Message{Kind: kmsg.NotResponding, Server: "192.0.2.99", Text: "nfs: server 192.0.2.99 not responding, still trying"}, "", Unrelated, ""},
		{"the only superblock of its server", "mountstats-6.1.txt", "mountstats-6.1.txt", kmsg.Message{Kind: kmsg.TimedOut, Server: "203.0.113.7", Text: "nfs: server 203.0.113.7 not responding, timed out"}, "", Attributed, "c3 0:60"},
		// OK: the superblock whose major timeouts rose since the sample.
		{"ok after c1's outage", "mountstats-after-6.1.txt", "mountstats-6.1.txt", ok, "", Attributed, "c1 0:40"},
		{"ok, c2 was reported unresponsive", "mountstats-6.1.txt", "mountstats-6.1.txt", ok, "c2", Attributed, "c2 0:50"},
		{"ok, nothing shows it", "mountstats-6.1.txt", "mountstats-6.1.txt", ok, "", Ambiguous, "c1 0:40, 0:41, 0:42,c2 0:50, 0:51, 0:52"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newDogFixture(t)
			fx.sampleNow(t)
			fx.setMountstats(100, tt.c1Now, t)
			fx.setMountstats(200, tt.c2Now, t)
			if tt.unresponsive != "" {
				fx.d.w.unresp[tt.unresponsive] = true
			}
			rep := fx.d.attributeServer(context.Background(), fx.world(t), fx.s, tt.msg)
			if rep.Attribution != tt.wantAttribution || mounts(rep) != tt.wantMounts {
				t.Errorf("%s -> %s [%s], want %s [%s]", tt.msg.Text, rep.Attribution, mounts(rep), tt.wantAttribution, tt.wantMounts)
			}
			if strings.Contains(rep.String(), "\n") {
				t.Errorf("report on several lines: %q", rep.String())
			}
		})
	}
}

func TestAttributeTask(t *testing.T) {
	tests := []struct {
		pid             int
		wantAttribution string
		wantMounts      string
		wantWhy         string
	}{
		{100, Attributed, "c1 0:40", "pid 100 (sync) is in mount namespace"},
		{400, Unrelated, "", "has no nsmount mount"},
		{999, Unrelated, "", "pid 999 is gone"},
	}
	fx := newDogFixture(t)
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.pid), func(t *testing.T) {
			m := kmsg.Message{Kind: kmsg.HungTask, Task: "sync", PID: tt.pid, Blocked: 5 * time.Second}
			rep := fx.d.attributeTask(fx.world(t), fx.s, m)
			if rep.Attribution != tt.wantAttribution || mounts(rep) != tt.wantMounts || !strings.Contains(rep.Why, tt.wantWhy) {
				t.Errorf("pid %d -> %s [%s] %q", tt.pid, rep.Attribution, mounts(rep), rep.Why)
			}
		})
	}
}

// A burst of lines is one report per server; an attributed server line
// marks the mount unresponsive once.
func TestWatchdogHandleBurst(t *testing.T) {
	fx := newDogFixture(t)
	if err := fx.d.w.m.reg.Update(func(s *registry.State) error { *s = *fx.s; return nil }); err != nil {
		t.Fatal(err)
	}
	fx.sampleNow(t)
	fx.setMountstats(100, "mountstats-outage-6.1.txt", t)
	line := kmsg.Message{Kind: kmsg.StateManagerFailed, Server: "198.51.100.10", Section: "check lease", Errno: 22, Text: "NFS: state manager: check lease failed on NFSv4 server 198.51.100.10 with error 22"}
	var wg sync.WaitGroup
	fx.d.handle(context.Background(), &wg, []kmsg.Message{line, line, line})
	got := fx.kernelEvents()
	if strings.Join(got, "|") != "kernel attributed x3 [c1 0:40, 0:42]|unresponsive c1 0:40" {
		t.Errorf("events %v", got)
	}
	if !fx.d.w.unresp["c1"] || fx.d.w.unresp["c2"] {
		t.Errorf("unresponsive %v", fx.d.w.unresp)
	}
}

// The base of the evidence stays at the last sample after which the
// transport received something: samples taken during an outage do not
// move it, a reply (or a new superblock on the device number) does.
func TestWatchdogRecord(t *testing.T) {
	d := &watchdog{base: map[string]sample{}, last: map[string]sample{}}
	steps := []struct {
		s        sample
		wantBase sample
	}{
		{sample{sends: 53, recvs: 53}, sample{sends: 53, recvs: 53}},                       // first
		{sample{sends: 54, recvs: 53}, sample{sends: 53, recvs: 53}},                       // a request out
		{sample{sends: 55, recvs: 53}, sample{sends: 53, recvs: 53}},                       // retransmitted, no reply
		{sample{sends: 55, recvs: 53}, sample{sends: 53, recvs: 53}},                       // nothing moves
		{sample{sends: 60, recvs: 58, majors: 9}, sample{sends: 60, recvs: 58, majors: 9}}, // replies again
		{sample{sends: 3, recvs: 3}, sample{sends: 3, recvs: 3}},                           // another superblock
	}
	for i, st := range steps {
		d.record("0:40", st.s)
		if d.base["0:40"] != st.wantBase {
			t.Errorf("step %d: base %+v, want %+v", i, d.base["0:40"], st.wantBase)
		}
	}
}

// Beyond sampleBudget mount namespaces, samples take turns: with 2.5
// budgets' worth of namespaces, every one is sampled within three samples.
func TestWatchdogSampleBudget(t *testing.T) {
	f := kerneltest.New(t)
	mi := string(kerneltest.Captured(t, "mountinfo-6.1.txt"))
	ms := string(kerneltest.Captured(t, "mountstats-6.1.txt"))
	nss := map[nsmount.NSID]int{}
	n := sampleBudget * 5 / 2
	for i := range n {
		pid := 1000 + i
		dev := func(text string) string {
			return strings.NewReplacer("0:40", "7:"+strconv.Itoa(3*i), "0:41", "7:"+strconv.Itoa(3*i+1), "0:42", "7:"+strconv.Itoa(3*i+2)).Replace(text)
		}
		name := "m" + strconv.Itoa(i)
		f.Add(pid, kerneltest.Process{Mnt: name, Net: "n" + strconv.Itoa(i), Start: uint64(pid), Mountinfo: dev(mi), Mountstats: ms})
		nss[f.NS(name)] = pid
	}
	m := openManager(t, f.Proc())
	d := newWatchdog(newWatcher(m, WatchOptions{Timeout: time.Second}, make(chan WatchEvent, 1)), statsReader(t, m))
	sampled := func() int {
		var wg sync.WaitGroup
		d.sample(context.Background(), &wg, nss)
		wg.Wait()
		return len(d.last)
	}
	// Three NFS superblocks per namespace.
	if got := sampled(); got != 3*sampleBudget {
		t.Errorf("first sample: %d superblocks, want %d", got, 3*sampleBudget)
	}
	if got := sampled(); got != 3*2*sampleBudget {
		t.Errorf("after the second: %d superblocks, want %d", got, 3*2*sampleBudget)
	}
	if got := sampled(); got != 3*n {
		t.Errorf("after the third: %d superblocks, want all %d", got, 3*n)
	}
}

// TestWatchKernelNeedsStats: a kernel log without a statistics reader is
// a caller's mistake, refused before Watch starts.
func TestWatchKernelNeedsStats(t *testing.T) {
	m := openManager(t, kerneltest.New(t).Proc())
	err := m.Watch(t.Context(), WatchOptions{Kernel: make(chan kmsg.Message)}, make(chan WatchEvent, 1))
	if !errors.Is(err, nsmount.ErrInvalidArgument) {
		t.Fatalf("Watch with Kernel and no Stats = %v, want ErrInvalidArgument", err)
	}
}

// A state manager that did not start names no client: every NFSv4 mount of
// nsmount's is checked at once, none is marked unresponsive.
func TestWatchdogStateManagerNotStarted(t *testing.T) {
	fx := newDogFixture(t)
	fx.s.Entries[1].Version = "3"                                // c2: NFSv3, no state manager
	fx.s.Entries[2].FSType, fx.s.Entries[2].Version = "nfs4", "" // c3: rebuilt from mountinfo
	if err := fx.d.w.m.reg.Update(func(s *registry.State) error { *s = *fx.s; return nil }); err != nil {
		t.Fatal(err)
	}
	line, ok := kmsg.Parse("nfs4_schedule_state_manager: kthread_run: -4")
	if !ok {
		t.Fatal("line not recognised")
	}
	var wg sync.WaitGroup
	fx.d.handle(context.Background(), &wg, []kmsg.Message{line})
	got := fx.kernelEvents()
	if want := "kernel " + Ambiguous + " x1 [c1 0:40,c3 0:60]"; strings.Join(got, "|") != want {
		t.Errorf("events %q, want %q", got, want)
	}
	if !fx.d.w.urgent["c1"] || fx.d.w.urgent["c2"] || !fx.d.w.urgent["c3"] {
		t.Errorf("probes asked for %v, want c1 and c3", fx.d.w.urgent)
	}
}
