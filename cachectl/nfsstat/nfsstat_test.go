package nfsstat_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel/kerneltest"
	"github.com/nsmount/nsmount/cachectl/nfsstat"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// entry is a registry entry of a mount in the lab capture's mount table.
func entry(id string, pid int, start uint64, mnt, net nsmount.NSID, mountID uint64, dev, mp string) registry.Entry {
	return registry.Entry{
		ID:         id,
		Target:     registry.Identity{PID: pid, PIDStart: start, MountNS: mnt, NetNS: net, Container: "ctr-" + id},
		Mountpoint: mp, MountID: mountID, Dev: dev,
		Source: "198.51.100.10:/export", Server: "198.51.100.10", Address: "198.51.100.10", Owner: "cli",
	}
}

func newReader(t *testing.T, fs *kerneltest.Procfs, timeout time.Duration) *nfsstat.Reader {
	t.Helper()
	r, err := nfsstat.NewReader(nfsstat.Options{Proc: fs.Proc(), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestRead(t *testing.T) {
	fs := kerneltest.New(t)
	mountinfo := string(kerneltest.Captured(t, "mountinfo-6.1.txt"))
	mountstats := string(kerneltest.Captured(t, "mountstats-6.1.txt"))
	m1, n1, m2, n2, m3 := fs.NS("mnt1"), fs.NS("net1"), fs.NS("mnt2"), fs.NS("net2"), fs.NS("mnt3")
	// c1: the capture. c2: its /data only, and its recorded process was
	// replaced by another one (PID 201 found by a scan).
	fs.Add(100, kerneltest.Process{Mnt: "mnt1", Net: "net1", Start: 50, Mountinfo: mountinfo, Mountstats: mountstats})
	fs.Add(200, kerneltest.Process{Mnt: "mnt2", Net: "net2", Start: 99, Mountinfo: mountinfo, Mountstats: mountstats})
	fs.Add(201, kerneltest.Process{Mnt: "mnt2", Net: "net2", Start: 70, Mountinfo: mountinfo, Mountstats: mountstats})
	s := &registry.State{Entries: []registry.Entry{
		entry("a", 100, 50, m1, n1, 92, "0:40", "/data"),
		entry("b", 100, 50, m1, n1, 94, "0:41", "/v3"),
		entry("gone", 100, 50, m1, n1, 77, "0:77", "/old"),
		entry("c", 200, 60, m2, n2, 92, "0:40", "/data"),
		entry("nobody", 300, 1, m3, n1, 92, "0:40", "/data"),
	}}
	snap := newReader(t, fs, time.Second).Read(context.Background(), s)
	var got []string
	for _, sb := range snap.Superblocks {
		getattr, _ := sb.Stats.Op("GETATTR")
		var ids []string
		for _, e := range sb.Entries {
			ids = append(ids, e.ID)
		}
		got = append(got, sb.NetNS.String()+" "+sb.Dev+" "+strings.Join(ids, "+")+" "+strings.Repeat("g", int(getattr.Requests)/19))
	}
	want := []string{n1.String() + " 0:40 a g", n1.String() + " 0:41 b ", n2.String() + " 0:40 c g"}
	if n2.Ino < n1.Ino {
		want = []string{n2.String() + " 0:40 c g", n1.String() + " 0:40 a g", n1.String() + " 0:41 b "}
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("superblocks %v, want %v", got, want)
	}
	if len(snap.Missing) != 1 || snap.Missing[0] != "gone" {
		t.Errorf("missing %v, want [gone]", snap.Missing)
	}
	if len(snap.Failures) != 1 || snap.Failures[0].MountNS != m3 || !strings.Contains(snap.Failures[0].Error, "no process") {
		t.Errorf("failures %+v, want mntns %s without a process", snap.Failures, m3)
	}
}

// A mount namespace whose mountstats does not answer (here a FIFO nobody
// writes) costs a reading its timeout, and the next reading nothing, until
// the first read returns.
func TestReadHungNamespace(t *testing.T) {
	fs := kerneltest.New(t)
	mountinfo := string(kerneltest.Captured(t, "mountinfo-6.1.txt"))
	fs.Add(100, kerneltest.Process{Mnt: "mnt1", Net: "net1", Start: 50, Mountinfo: mountinfo, Mountstats: string(kerneltest.Captured(t, "mountstats-6.1.txt"))})
	fs.Add(200, kerneltest.Process{Mnt: "mnt2", Net: "net2", Start: 50, Mountinfo: mountinfo})
	fifo := filepath.Join(fs.Root(), "200", "mountstats")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	s := &registry.State{Entries: []registry.Entry{
		entry("a", 100, 50, fs.NS("mnt1"), fs.NS("net1"), 92, "0:40", "/data"),
		entry("hung", 200, 50, fs.NS("mnt2"), fs.NS("net2"), 92, "0:40", "/data"),
	}}
	r := newReader(t, fs, 300*time.Millisecond)
	start := time.Now()
	snap := r.Read(context.Background(), s)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("reading took %s", d)
	}
	if len(snap.Superblocks) != 1 || len(snap.Failures) != 1 || !strings.Contains(snap.Failures[0].Error, "no answer in 300ms") {
		t.Fatalf("superblocks %d, failures %+v", len(snap.Superblocks), snap.Failures)
	}
	start = time.Now()
	snap = r.Read(context.Background(), s)
	if d := time.Since(start); d > 200*time.Millisecond || len(snap.Failures) != 1 || !strings.Contains(snap.Failures[0].Error, "still reading") {
		t.Fatalf("second reading: %s, failures %+v", d, snap.Failures)
	}
	// The read returns (a writer comes and goes): the namespace is read
	// again, and its text parsed.
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(kerneltest.Captured(t, "mountstats-6.1.txt"))
	w.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		os.Remove(fifo)
		fs.Write(fifo, string(kerneltest.Captured(t, "mountstats-6.1.txt")))
		snap = r.Read(context.Background(), s)
		if len(snap.Failures) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(snap.Failures) != 0 || len(snap.Superblocks) != 2 {
		t.Fatalf("after the read returned: superblocks %d, failures %+v", len(snap.Superblocks), snap.Failures)
	}
}

func TestRates(t *testing.T) {
	fs := kerneltest.New(t)
	mountinfo := string(kerneltest.Captured(t, "mountinfo-6.1.txt"))
	fs.Add(100, kerneltest.Process{Mnt: "mnt1", Net: "net1", Start: 50, Mountinfo: mountinfo, Mountstats: string(kerneltest.Captured(t, "mountstats-6.1.txt"))})
	s := &registry.State{Entries: []registry.Entry{
		entry("a", 100, 50, fs.NS("mnt1"), fs.NS("net1"), 92, "0:40", "/data"),
		entry("b", 100, 50, fs.NS("mnt1"), fs.NS("net1"), 94, "0:41", "/v3"),
		entry("c", 100, 50, fs.NS("mnt1"), fs.NS("net1"), 93, "0:42", "/mnt"),
	}}
	r := newReader(t, fs, time.Second)
	before := r.Read(context.Background(), s)
	fs.Write(filepath.Join(fs.Root(), "100", "mountstats"), string(kerneltest.Captured(t, "mountstats-after-6.1.txt")))
	after := r.Read(context.Background(), s)
	after.Taken = before.Taken.Add(2 * time.Second)
	rates := nfsstat.Rates(before, after)
	// After the outage: /mnt wrote 1 MiB (WRITE, COMMIT...), /data's two
	// stuck GETATTRs completed, /v3 did nothing.
	if len(rates) != 3 || rates[0].Dev != "0:42" || rates[1].Dev != "0:40" || rates[2].Dev != "0:41" {
		for _, r := range rates {
			t.Logf("%s %.1f/s %+v", r.Dev, r.PerSecond, r.Ops)
		}
		t.Fatalf("order of %d rates", len(rates))
	}
	data := rates[1]
	var getattr nfsstat.OpRate
	for _, op := range data.Ops {
		if op.Name == "GETATTR" {
			getattr = op
		}
	}
	if getattr.Requests != 2 || getattr.PerSecond != 1 || getattr.MajorTimeouts != 9 || getattr.AvgRTT != 500*time.Microsecond || getattr.AvgExecute != 9172500*time.Microsecond {
		t.Errorf("/data GETATTR %+v", getattr)
	}
	if len(rates[2].Ops) != 0 || rates[2].PerSecond != 0 {
		t.Errorf("/v3 %+v", rates[2])
	}
	if w := rates[0].WriteBPS; w != float64(1310726-262150)/2 {
		t.Errorf("/mnt write %f B/s", w)
	}
	// A superblock younger than before (a device number reused) is not
	// compared.
	after.Superblocks[0].Stats.Age = 0
	if got := nfsstat.Rates(before, after); len(got) != 2 {
		t.Errorf("%d rates with a reused device, want 2", len(got))
	}
}

// TestReadAgainAtOnce: a reading that has returned no longer counts as
// busy, even when the next one starts at once (the reading's goroutine
// used to mark its namespace free only after handing its result over, so
// a Read right after a Read could find it busy).
func TestReadAgainAtOnce(t *testing.T) {
	fs := kerneltest.New(t)
	fs.Add(100, kerneltest.Process{Mnt: "mnt1", Net: "net1", Start: 50, Mountinfo: string(kerneltest.Captured(t, "mountinfo-6.1.txt")), Mountstats: string(kerneltest.Captured(t, "mountstats-6.1.txt"))})
	s := &registry.State{Entries: []registry.Entry{entry("a", 100, 50, fs.NS("mnt1"), fs.NS("net1"), 92, "0:40", "/data")}}
	r := newReader(t, fs, 5*time.Second)
	for i := range 2000 {
		if snap := r.Read(context.Background(), s); len(snap.Failures) != 0 {
			t.Fatalf("read %d: failures %+v", i+1, snap.Failures)
		}
	}
}

// While a reading of a namespace is under way (here blocked on a FIFO),
// Namespace reports it busy at once, and NamespaceNow waits for that
// reading and reads the namespace again: it answers with what is there
// after its call. Without that the watchdog, whose background sampler
// reads the same namespaces every 250 ms, missed a mount's evidence and
// sent a kernel line to every mount of the server (TestLabObserve, once
// in a fresh-clone CI run).
func TestNamespaceNowWaits(t *testing.T) {
	fs := kerneltest.New(t)
	mountinfo := string(kerneltest.Captured(t, "mountinfo-6.1.txt"))
	mountstats := kerneltest.Captured(t, "mountstats-6.1.txt")
	fs.Add(100, kerneltest.Process{Mnt: "mnt1", Net: "net1", Start: 50, Mountinfo: mountinfo})
	fifo := filepath.Join(fs.Root(), "100", "mountstats")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := fs.NS("mnt1")
	r := newReader(t, fs, 5*time.Second)
	// A reading that its caller gave up on: it stays under way.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := r.Namespace(ctx, ns, 100); err == nil {
		t.Fatal("a reading of a FIFO nobody writes returned")
	}
	if _, err := r.Namespace(context.Background(), ns, 100); err == nil || !strings.Contains(err.Error(), "still reading") {
		t.Fatalf("Namespace during a reading: %v, want busy", err)
	}
	type result struct {
		n   int
		err error
	}
	now := make(chan result, 1)
	go func() {
		stats, err := r.NamespaceNow(context.Background(), ns, 100)
		now <- result{len(stats), err}
	}()
	select {
	case res := <-now:
		t.Fatalf("NamespaceNow returned during the other reading: %+v", res)
	case <-time.After(200 * time.Millisecond):
	}
	// The reading under way ends with an empty text, and the file is a
	// regular one with the capture from now on: NamespaceNow answers
	// with the capture's superblocks only if it read again.
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(fifo)
	fs.Write(fifo, string(mountstats))
	w.Close()
	select {
	case res := <-now:
		if res.err != nil || res.n == 0 {
			t.Fatalf("NamespaceNow: %d superblocks, %v", res.n, res.err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("NamespaceNow did not answer after the other reading returned")
	}
}
