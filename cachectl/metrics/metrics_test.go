package metrics_test

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/kernel/kerneltest"
	"github.com/nsmount/nsmount/cachectl/kmsg"
	"github.com/nsmount/nsmount/cachectl/metrics"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// fixture: containers c1 and c2 mount 198.51.100.10:/export from their
// own netns (the lab capture's /data; c2 with 600 more GETATTRs); c3's
// mount namespace answers nothing (its mountstats is a FIFO nobody
// writes) when hung is set.
type fixture struct {
	f          *kerneltest.Procfs
	reg        *registry.Registry
	c1, c2, c3 registry.Entry
}

func newFixture(t *testing.T, hung bool) *fixture {
	t.Helper()
	f := kerneltest.New(t)
	capture := func(name string) string { return string(kerneltest.Captured(t, name)) }
	busy := strings.Replace(capture("mountstats-6.1.txt"), "GETATTR: 19 19 0 2872 4560 0 8 9 0", "GETATTR: 619 619 0 93872 148560 12 308 409 2", 1)
	f.Add(100, kerneltest.Process{Mnt: "m1", Net: "n1", Start: 100, Mountinfo: capture("mountinfo-6.1.txt"), Mountstats: capture("mountstats-6.1.txt")})
	f.Add(200, kerneltest.Process{Mnt: "m2", Net: "n2", Start: 200, Mountinfo: capture("mountinfo-6.1.txt"), Mountstats: busy})
	f.Add(300, kerneltest.Process{Mnt: "m3", Net: "n3", Start: 300, Mountinfo: capture("mountinfo-6.1.txt"), Mountstats: capture("mountstats-6.1.txt")})
	if hung {
		fifo := filepath.Join(f.Root(), "300", "mountstats")
		if err := syscall.Unlink(fifo); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	reg, err := registry.Open(filepath.Join(t.TempDir(), "nsmOreg"))
	if err != nil {
		t.Fatal(err)
	}
	entry := func(id string, pid int, mnt, net nsmount.NSID, owner string) registry.Entry {
		return registry.Entry{
			ID:         mnt.String() + ":92",
			Target:     registry.Identity{PID: pid, PIDStart: uint64(pid), MountNS: mnt, NetNS: net, Container: id},
			Mountpoint: "/data", MountID: 92, Dev: "0:40", Source: "198.51.100.10:/export", Server: "198.51.100.10",
			Address: "198.51.100.10", FSType: "nfs4", Version: "4.2", Owner: owner, Created: time.Now(),
		}
	}
	fx := &fixture{f: f, reg: reg,
		c1: entry("c1", 100, f.NS("m1"), f.NS("n1"), "nri"),
		c2: entry("c2", 200, f.NS("m2"), f.NS("n2"), "cli"),
		c3: entry("c3", 300, f.NS("m3"), f.NS("n3"), "hook"),
	}
	for _, e := range []registry.Entry{fx.c1, fx.c2, fx.c3} {
		if err := reg.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	return fx
}

func (fx *fixture) metrics(t *testing.T, c metrics.Config) *metrics.Metrics {
	t.Helper()
	c.Registry, c.Proc = fx.reg, fx.f.Proc()
	m, err := metrics.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestCollectAndLint(t *testing.T) {
	fx := newFixture(t, false)
	m := fx.metrics(t, metrics.Config{})
	r := prometheus.NewRegistry()
	if err := m.Register(r); err != nil {
		t.Fatal(err)
	}
	for _, ev := range watchEvents(fx) {
		m.Observe(ev)
	}
	problems, err := testutil.GatherAndLint(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	if n, err := testutil.GatherAndCount(r); err != nil || n == 0 {
		t.Fatalf("%d series, %v", n, err)
	}
}

// watchEvents is what a watch might report: c1 unresponsive (kernel log),
// c2 dead then recovered, a probe, a remount, a kernel line.
func watchEvents(fx *fixture) []cachectl.WatchEvent {
	ev := func(kind string, e registry.Entry) cachectl.WatchEvent {
		return cachectl.WatchEvent{Kind: kind, NetNS: e.Target.NetNS, Dev: e.Dev, Mountpoint: e.Mountpoint, Container: e.Target.Container}
	}
	probe := ev("probe", fx.c1)
	probe.Elapsed = 30 * time.Millisecond
	remounted := ev("remounted", fx.c3)
	remounted.Elapsed = 1500 * time.Millisecond
	kernel := cachectl.WatchEvent{Kind: "kernel", Kernel: &cachectl.KernelReport{
		Message: kmsg.Message{Kind: kmsg.NotResponding, Server: "198.51.100.10"}, Count: 3, Attribution: cachectl.Attributed}}
	return []cachectl.WatchEvent{ev("unresponsive", fx.c1), ev("dead", fx.c2), ev("recovered", fx.c2), probe, remounted, kernel}
}

func TestCollect(t *testing.T) {
	fx := newFixture(t, false)
	m := fx.metrics(t, metrics.Config{})
	for _, ev := range watchEvents(fx) {
		m.Observe(ev)
	}
	n1, n2, n3 := fx.c1.Target.NetNS.String(), fx.c2.Target.NetNS.String(), fx.c3.Target.NetNS.String()
	want := `
# HELP nsmount_nfs_mount_info An NFS mount nsmount made (1), with what identifies it: network and mount namespace inodes, superblock device, where, what, and for whom.
# TYPE nsmount_nfs_mount_info gauge
nsmount_nfs_mount_info{address="198.51.100.10",container_id="c1",dev="0:40",export="/export",mntns="` + fx.c1.Target.MountNS.String() + `",mountpoint="/data",netns="` + n1 + `",owner="nri",server="198.51.100.10",vers="4.2"} 1
nsmount_nfs_mount_info{address="198.51.100.10",container_id="c2",dev="0:40",export="/export",mntns="` + fx.c2.Target.MountNS.String() + `",mountpoint="/data",netns="` + n2 + `",owner="cli",server="198.51.100.10",vers="4.2"} 1
nsmount_nfs_mount_info{address="198.51.100.10",container_id="c3",dev="0:40",export="/export",mntns="` + fx.c3.Target.MountNS.String() + `",mountpoint="/data",netns="` + n3 + `",owner="hook",server="198.51.100.10",vers="4.2"} 1
# HELP nsmount_nfs_operation_requests_total RPC requests of an NFS operation completed, per superblock (counted when they complete).
# TYPE nsmount_nfs_operation_requests_total counter
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n1 + `",operation="ACCESS"} 1
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n1 + `",operation="CLOSE"} 3
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n1 + `",operation="GETATTR"} 19
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n1 + `",operation="OPEN"} 2
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n1 + `",operation="READDIR"} 1
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n1 + `",operation="WRITE"} 5
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n2 + `",operation="ACCESS"} 1
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n2 + `",operation="CLOSE"} 3
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n2 + `",operation="GETATTR"} 619
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n2 + `",operation="OPEN"} 2
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n2 + `",operation="READDIR"} 1
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n2 + `",operation="WRITE"} 5
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n3 + `",operation="ACCESS"} 1
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n3 + `",operation="CLOSE"} 3
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n3 + `",operation="GETATTR"} 19
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n3 + `",operation="OPEN"} 2
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n3 + `",operation="READDIR"} 1
nsmount_nfs_operation_requests_total{dev="0:40",netns="` + n3 + `",operation="WRITE"} 5
# HELP nsmount_nfs_server_unresponsive 1 while nsmount watch knows the server does not answer this superblock (a probe hung, or the kernel log said so), else 0.
# TYPE nsmount_nfs_server_unresponsive gauge
nsmount_nfs_server_unresponsive{dev="0:40",netns="` + n1 + `"} 1
nsmount_nfs_server_unresponsive{dev="0:40",netns="` + n2 + `"} 0
nsmount_nfs_server_unresponsive{dev="0:40",netns="` + n3 + `"} 0
# HELP nsmount_scrape_collector_success Whether a part of the scrape read everything in time (1) or not (0).
# TYPE nsmount_scrape_collector_success gauge
nsmount_scrape_collector_success{collector="mountstats"} 1
nsmount_scrape_collector_success{collector="registry"} 1
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "nsmount_nfs_mount_info", "nsmount_nfs_operation_requests_total",
		"nsmount_nfs_server_unresponsive", "nsmount_scrape_collector_success"); err != nil {
		t.Error(err)
	}
	// The GETATTR of c2 in detail.
	r := prometheus.NewRegistry()
	if err := m.Register(r); err != nil {
		t.Fatal(err)
	}
	mfs, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["netns"] == n2 && labels["operation"] == "GETATTR" {
				got[mf.GetName()] = s.GetCounter().GetValue()
			}
			if mf.GetName() == "nsmount_remount_duration_seconds" {
				got["remount_count"] = float64(s.GetHistogram().GetSampleCount())
			}
			if mf.GetName() == "nsmount_kmsg_messages_total" {
				got["kmsg_"+labels["kind"]] = s.GetCounter().GetValue()
			}
		}
	}
	for name, v := range map[string]float64{
		"nsmount_nfs_operation_requests_total":        619,
		"nsmount_nfs_operation_transmissions_total":   619,
		"nsmount_nfs_operation_major_timeouts_total":  0,
		"nsmount_nfs_operation_errors_total":          2,
		"nsmount_nfs_operation_rtt_seconds_total":     0.308,
		"nsmount_nfs_operation_execute_seconds_total": 0.409,
		"remount_count":       1,
		"kmsg_not-responding": 3,
	} {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
}

// A mount namespace that does not answer costs the scrape its timeout: the
// scrape answers with the others and says the mountstats part failed.
func TestCollectHungNamespace(t *testing.T) {
	fx := newFixture(t, true)
	m := fx.metrics(t, metrics.Config{Deadline: 2 * time.Second, Timeout: 300 * time.Millisecond})
	start := time.Now()
	n, err := testutil.GatherAndCount(registryOf(t, m), "nsmount_nfs_operation_requests_total")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("scrape took %s", d)
	}
	if err != nil || n != 12 {
		t.Errorf("%d request series (c1's and c2's 6 each), %v", n, err)
	}
	want := `
# HELP nsmount_scrape_collector_success Whether a part of the scrape read everything in time (1) or not (0).
# TYPE nsmount_scrape_collector_success gauge
nsmount_scrape_collector_success{collector="mountstats"} 0
nsmount_scrape_collector_success{collector="registry"} 1
# HELP nsmount_scrape_mount_namespace_failures Mount namespaces whose NFS statistics could not be read in this scrape (no answer in time, no process).
# TYPE nsmount_scrape_mount_namespace_failures gauge
nsmount_scrape_mount_namespace_failures 1
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "nsmount_scrape_collector_success", "nsmount_scrape_mount_namespace_failures"); err != nil {
		t.Error(err)
	}
}

func registryOf(t *testing.T, m *metrics.Metrics) *prometheus.Registry {
	t.Helper()
	r := prometheus.NewRegistry()
	if err := m.Register(r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestAllOps(t *testing.T) {
	fx := newFixture(t, false)
	def, err := testutil.GatherAndCount(registryOf(t, fx.metrics(t, metrics.Config{})), "nsmount_nfs_operation_requests_total")
	if err != nil {
		t.Fatal(err)
	}
	all, err := testutil.GatherAndCount(registryOf(t, fx.metrics(t, metrics.Config{AllOps: true})), "nsmount_nfs_operation_requests_total")
	if err != nil {
		t.Fatal(err)
	}
	// The capture's /data also has NULL, OPEN_NOATTR, FSINFO, PATHCONF,
	// SERVER_CAPS, EXCHANGE_ID, CREATE_SESSION, RECLAIM_COMPLETE with
	// requests: 8 more per container.
	if def != 18 || all != 18+3*8 {
		t.Errorf("%d series by default, %d with every operation", def, all)
	}
}
