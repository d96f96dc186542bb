// Package metrics exposes nsmount's NFS mounts to Prometheus. At scrape
// time it reads the registry (cachectl/registry) and, per superblock of its
// entries, the kernel's NFS client counters (cachectl/nfsstat, each mount
// namespace within a deadline: a hung mount never stalls a scrape), labelled
// by network namespace and superblock device; what watch sees (events,
// probe and remount durations, kernel log messages, unresponsive servers)
// it is told, one cachectl.WatchEvent at a time (Observe). It registers on
// the prometheus.Registerer it is given, never on the default registry.
package metrics

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/nfsstat"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// DefaultOps are the NFS operations exported by default (when they have
// requests): the ones a person reads when a server is slow or busy.
var DefaultOps = []string{
	"READ", "WRITE", "COMMIT", "GETATTR", "SETATTR", "ACCESS", "LOOKUP",
	"READDIR", "READDIRPLUS", "OPEN", "CLOSE", "CREATE", "REMOVE", "RENAME",
	"LOCK", "LOCKU", "LOCKT", "FSSTAT", "STATFS", "SEQUENCE", "RENEW",
}

// Defaults of Config.
const (
	DefaultDeadline = 4 * time.Second
	DefaultTimeout  = nfsstat.DefaultTimeout
)

// Config configures Metrics.
type Config struct {
	// Registry is nsmount's registry, read at every scrape.
	Registry *registry.Registry
	// Proc is the procfs to read; the zero value reads /proc.
	Proc kernel.Proc
	// AllOps exports every operation with requests, not only DefaultOps.
	AllOps bool
	// Deadline bounds a whole scrape (default 4s), Timeout the reading of
	// one mount namespace (default 2s) and of the registry.
	Deadline, Timeout time.Duration
}

// Metrics is nsmount's Prometheus collector and watch's metrics.
type Metrics struct {
	c      Config
	reader *nfsstat.Reader
	ops    map[string]bool // nil: all

	events       *prometheus.CounterVec
	remount      prometheus.Histogram
	probe        prometheus.Histogram
	kmsgMessages *prometheus.CounterVec
	kmsgAttrib   *prometheus.CounterVec

	mu     sync.Mutex
	unresp map[sbKey]bool
	state  *registry.State // the last registry state read
}

type sbKey struct {
	netns uint64
	dev   string
}

// Scrape-time descriptors.
var (
	opLabels = []string{"netns", "dev", "operation"}
	sbLabels = []string{"netns", "dev"}

	descInfo = prometheus.NewDesc("nsmount_nfs_mount_info",
		"An NFS mount nsmount made (1), with what identifies it: network and mount namespace inodes, superblock device, where, what, and for whom.",
		[]string{"netns", "mntns", "dev", "mountpoint", "server", "address", "export", "vers", "owner", "container_id"}, nil)
	descRequests = prometheus.NewDesc("nsmount_nfs_operation_requests_total",
		"RPC requests of an NFS operation completed, per superblock (counted when they complete).", opLabels, nil)
	descTransmissions = prometheus.NewDesc("nsmount_nfs_operation_transmissions_total",
		"RPC transmissions of an NFS operation (requests plus retransmissions), per superblock.", opLabels, nil)
	descMajorTimeouts = prometheus.NewDesc("nsmount_nfs_operation_major_timeouts_total",
		"Major timeouts of an NFS operation's requests, per superblock (counted when the request completes).", opLabels, nil)
	descErrors = prometheus.NewDesc("nsmount_nfs_operation_errors_total",
		"Requests of an NFS operation that completed with an error status, per superblock (Linux 5.8+).", opLabels, nil)
	descRTT = prometheus.NewDesc("nsmount_nfs_operation_rtt_seconds_total",
		"Time from sending an NFS operation's requests to their replies, summed, per superblock.", opLabels, nil)
	descExecute = prometheus.NewDesc("nsmount_nfs_operation_execute_seconds_total",
		"Time from an NFS operation's requests' start to their end (queue and retries included), summed, per superblock.", opLabels, nil)
	descReadBytes = prometheus.NewDesc("nsmount_nfs_read_bytes_total",
		"Bytes read from the NFS server (READ payloads), per superblock.", sbLabels, nil)
	descWrittenBytes = prometheus.NewDesc("nsmount_nfs_written_bytes_total",
		"Bytes written to the NFS server (WRITE payloads), per superblock.", sbLabels, nil)
	descSends = prometheus.NewDesc("nsmount_nfs_transport_sends_total",
		"RPC messages sent by the superblock's transports (retransmissions included).", sbLabels, nil)
	descReceives = prometheus.NewDesc("nsmount_nfs_transport_receives_total",
		"RPC replies received by the superblock's transports.", sbLabels, nil)
	descConnects = prometheus.NewDesc("nsmount_nfs_transport_connects_total",
		"Connection attempts of the superblock's transports.", sbLabels, nil)
	descUnresponsive = prometheus.NewDesc("nsmount_nfs_server_unresponsive",
		"1 while nsmount watch knows the server does not answer this superblock (a probe hung, or the kernel log said so), else 0.", sbLabels, nil)
	descSuccess = prometheus.NewDesc("nsmount_scrape_collector_success",
		"Whether a part of the scrape read everything in time (1) or not (0).", []string{"collector"}, nil)
	descDuration = prometheus.NewDesc("nsmount_scrape_collector_duration_seconds",
		"How long a part of the scrape took.", []string{"collector"}, nil)
	descFailures = prometheus.NewDesc("nsmount_scrape_mount_namespace_failures",
		"Mount namespaces whose NFS statistics could not be read in this scrape (no answer in time, no process).", nil, nil)
)

// New returns Metrics reading c.Registry; Close releases it.
func New(c Config) (*Metrics, error) {
	if c.Deadline <= 0 {
		c.Deadline = DefaultDeadline
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	r, err := nfsstat.NewReader(nfsstat.Options{Proc: c.Proc, Timeout: c.Timeout})
	if err != nil {
		return nil, err
	}
	m := &Metrics{c: c, reader: r, unresp: map[sbKey]bool{}}
	if !c.AllOps {
		m.ops = map[string]bool{}
		for _, op := range DefaultOps {
			m.ops[op] = true
		}
	}
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nsmount_watch_events_total",
		Help: "Events of nsmount watch, by kind (drift, stale, dead, remounted, probe, kernel, unresponsive, ...).",
	}, []string{"kind"})
	m.remount = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "nsmount_remount_duration_seconds",
		Help:    "Time from detection to the new mount in place, for watch's remounts.",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80},
	})
	m.probe = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "nsmount_probe_duration_seconds",
		Help:    "Duration of watch's health probes (a getattr past the cache and a statfs; a hung server costs the probe timeout).",
		Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	})
	m.kmsgMessages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nsmount_kmsg_messages_total",
		Help: "Kernel log messages the watchdog recognised, by kind (not-responding, timed-out, ok, state-manager-failed, state-manager-not-started, hung-task).",
	}, []string{"kind"})
	m.kmsgAttrib = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nsmount_kmsg_attributions_total",
		Help: "The watchdog's attributions of kernel log messages (one per burst of a kind and server or task), by kind and outcome (attributed, ambiguous, none).",
	}, []string{"kind", "attribution"})
	return m, nil
}

// Close releases the Metrics' reader.
func (m *Metrics) Close() error { return m.reader.Close() }

// Register registers the Metrics (the scrape-time collector and watch's
// metrics) on r.
func (m *Metrics) Register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m, m.events, m.remount, m.probe, m.kmsgMessages, m.kmsgAttrib} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// Observe takes what watch saw into the metrics.
func (m *Metrics) Observe(ev cachectl.WatchEvent) {
	m.events.WithLabelValues(ev.Kind).Inc()
	key := sbKey{ev.NetNS.Ino, ev.Dev}
	switch ev.Kind {
	case "probe":
		m.probe.Observe(ev.Elapsed.Seconds())
	case "remounted":
		m.remount.Observe(ev.Elapsed.Seconds())
	case "kernel":
		if k := ev.Kernel; k != nil {
			m.kmsgMessages.WithLabelValues(string(k.Message.Kind)).Add(float64(max(k.Count, 1)))
			m.kmsgAttrib.WithLabelValues(string(k.Message.Kind), k.Attribution).Inc()
		}
	}
	if ev.Dev == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch ev.Kind {
	case "unresponsive", "dead":
		m.unresp[key] = true
	case "responsive", "recovered", "remounted", "forgotten":
		delete(m.unresp, key)
	}
}

// Describe sends the scrape-time descriptors.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descRequests, descTransmissions, descMajorTimeouts, descErrors, descRTT, descExecute,
		descReadBytes, descWrittenBytes, descSends, descReceives, descConnects, descUnresponsive, descSuccess, descDuration, descFailures} {
		ch <- d
	}
}

// Collect reads the registry and the kernel, within the deadline.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), m.c.Deadline)
	defer cancel()

	start := time.Now()
	s, ok := m.readRegistry(ctx)
	collector(ch, "registry", ok, time.Since(start))
	if s == nil {
		return
	}

	start = time.Now()
	snap := m.reader.Read(ctx, s)
	collector(ch, "mountstats", len(snap.Failures) == 0 && len(snap.Unparsed) == 0, time.Since(start))
	ch <- prometheus.MustNewConstMetric(descFailures, prometheus.GaugeValue, float64(len(snap.Failures)))

	missing := map[string]bool{}
	for _, id := range snap.Missing {
		missing[id] = true
	}
	m.mu.Lock()
	unresp := make(map[sbKey]bool, len(m.unresp))
	for k, v := range m.unresp {
		unresp[k] = v
	}
	m.mu.Unlock()
	sbs := map[sbKey]bool{}
	infos := map[string]bool{}
	for _, e := range s.Entries {
		if missing[e.ID] {
			continue
		}
		server, export := e.Server, ""
		if src, err := nsmount.ParseSource(e.Source); err == nil {
			server, export = src.Server, src.Export
		}
		labels := []string{e.Target.NetNS.String(), e.Target.MountNS.String(), e.Dev, e.Mountpoint, server, e.Address, export, e.Version, e.Owner, e.Target.Container}
		if id := strings.Join(labels, "\x00"); !infos[id] {
			// (Two entries alike in every label, a mount over a mount of
			// the same superblock, would be a duplicate series.)
			infos[id] = true
			ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, labels...)
		}
		key := sbKey{e.Target.NetNS.Ino, e.Dev}
		if sbs[key] {
			continue
		}
		sbs[key] = true
		v := 0.0
		if unresp[key] {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descUnresponsive, prometheus.GaugeValue, v, e.Target.NetNS.String(), e.Dev)
	}
	for _, sb := range snap.Superblocks {
		netns := sb.NetNS.String()
		for _, op := range sb.Stats.Ops {
			if op.Requests == 0 || (m.ops != nil && !m.ops[op.Name]) {
				continue
			}
			counter := func(d *prometheus.Desc, v float64) {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, netns, sb.Dev, op.Name)
			}
			counter(descRequests, float64(op.Requests))
			counter(descTransmissions, float64(op.Transmissions))
			counter(descMajorTimeouts, float64(op.MajorTimeouts))
			counter(descErrors, float64(op.Errors))
			counter(descRTT, op.RTT.Seconds())
			counter(descExecute, op.Execute.Seconds())
		}
		x := sb.Stats.Transport()
		for _, c := range []struct {
			d *prometheus.Desc
			v uint64
		}{
			{descReadBytes, sb.Stats.Bytes.ServerRead}, {descWrittenBytes, sb.Stats.Bytes.ServerWrite},
			{descSends, x.Sends}, {descReceives, x.Receives}, {descConnects, x.Connects},
		} {
			ch <- prometheus.MustNewConstMetric(c.d, prometheus.CounterValue, float64(c.v), netns, sb.Dev)
		}
	}
}

func collector(ch chan<- prometheus.Metric, name string, ok bool, d time.Duration) {
	v := 0.0
	if ok {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(descSuccess, prometheus.GaugeValue, v, name)
	ch <- prometheus.MustNewConstMetric(descDuration, prometheus.GaugeValue, d.Seconds(), name)
}

// readRegistry reads the registry within the timeout. When it cannot (a
// lock held past the timeout, a corrupt registry: watch repairs it), it
// reports failure and returns the last state read, if any.
func (m *Metrics) readRegistry(ctx context.Context) (*registry.State, bool) {
	type result struct {
		s   *registry.State
		err error
	}
	done := make(chan result, 1)
	go func() {
		var s *registry.State
		err := m.c.Registry.View(func(st *registry.State) error { s = st; return nil })
		done <- result{s, err}
	}()
	t := time.NewTimer(m.c.Timeout)
	defer t.Stop()
	select {
	case r := <-done:
		if r.err == nil {
			slices.SortFunc(r.s.Entries, func(a, b registry.Entry) int { return strings.Compare(a.ID, b.ID) })
			m.mu.Lock()
			m.state = r.s
			m.mu.Unlock()
			return r.s, true
		}
	case <-t.C:
	case <-ctx.Done():
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state, false
}
