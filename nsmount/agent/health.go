package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nsmount/nsmount/nsmount/integration/nri/nriconn"
)

// Health is what the agent's parts are doing, as /healthz shows it.
type Health struct {
	// NRI is the connection with the runtime; Runtime the runtime's name
	// and version (from its last Configure), Synchronized its last
	// Synchronize.
	NRI          nriconn.State `json:"nri"`
	Runtime      string        `json:"runtime,omitempty"`
	Synchronized Synchronized  `json:"synchronized"`
	// CSI is "off", "serving ENDPOINT" or "stopped: ERROR".
	CSI string `json:"csi"`
	// Watch is "starting", "running" (", without the kernel-log
	// watchdog") or "stopped: ERROR" (started again after a delay).
	Watch string `json:"watch"`
	// Policy is the policy mirror's state.
	Policy PolicyState `json:"policy"`
	// Stopping: the agent is stopping.
	Stopping bool `json:"stopping,omitempty"`
}

// Synchronized is the runtime's last Synchronize.
type Synchronized struct {
	// Time is when it came; Pods and Containers are how many it listed.
	Time       time.Time `json:"time,omitzero"`
	Pods       int       `json:"pods"`
	Containers int       `json:"containers"`
}

// PolicyState is the policy mirror's state.
type PolicyState struct {
	// Source is the policy file, Copy where it is mirrored ("" not
	// mirrored: everything reads Source).
	Source string `json:"source"`
	Copy   string `json:"copy,omitempty"`
	// Digest is the policy in force (the copy's); "" none (every mount
	// denied).
	Digest string `json:"digest,omitempty"`
	// Checked is when Source was last read, Mirrored when the copy last
	// changed.
	Checked  time.Time `json:"checked,omitzero"`
	Mirrored time.Time `json:"mirrored,omitzero"`
	// Error is why the last reading of Source was not mirrored (it does
	// not load: the last good policy stays in force).
	Error string `json:"error,omitempty"`
}

// Alive reports whether every part of the agent runs: the NRI
// connection's loop (connected, or trying to connect again: a runtime
// away is no reason to restart the agent, whose CSI service, watch and
// metrics go on serving), the CSI server and watch. A policy that does not
// load does not make the agent unhealthy (the last good one is in force);
// a stopping agent is not alive.
func (h Health) Alive() bool {
	return !h.Stopping && !strings.HasPrefix(h.CSI, "stopped") && strings.HasPrefix(h.Watch, "running")
}

// String describes h on a few lines: the first "ok" or "unhealthy", then
// one line per part.
func (h Health) String() string {
	var b strings.Builder
	switch {
	case h.Stopping:
		b.WriteString("unhealthy: stopping\n")
	case h.Alive():
		b.WriteString("ok\n")
	default:
		b.WriteString("unhealthy\n")
	}
	n := h.NRI
	if n.Connected {
		fmt.Fprintf(&b, "nri: connected since %s (%s, NRI %s, registration %d)", stamp(n.Since), h.Runtime, n.RuntimeNRI, n.Registrations)
		if s := h.Synchronized; !s.Time.IsZero() {
			fmt.Fprintf(&b, ", synchronized at %s: %d pods, %d containers", stamp(s.Time), s.Pods, s.Containers)
		}
	} else {
		fmt.Fprintf(&b, "nri: not connected since %s, connecting (%d attempts failed", stamp(n.Since), n.Failures)
		if n.LastError != "" {
			fmt.Fprintf(&b, ", last: %s", n.LastError)
		}
		b.WriteString(")")
	}
	fmt.Fprintf(&b, "\ncsi: %s\nwatch: %s\n", h.CSI, h.Watch)
	p := h.Policy
	switch {
	case p.Copy == "":
		fmt.Fprintf(&b, "policy: %s, read as it is\n", p.Source)
	case p.Digest == "":
		fmt.Fprintf(&b, "policy: none at %s, every mount denied\n", p.Copy)
	default:
		fmt.Fprintf(&b, "policy: %s at %s (mirrored from %s at %s)\n", p.Digest, p.Copy, p.Source, stamp(p.Mirrored))
	}
	if p.Error != "" {
		fmt.Fprintf(&b, "policy: the last reading was not mirrored: %s\n", p.Error)
	}
	return b.String()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// Health returns the agent's health now.
func (a *Agent) Health() Health {
	a.mu.Lock()
	h := a.health
	a.mu.Unlock()
	h.NRI = a.conn.State()
	return h
}

// web is the agent's HTTP server: /metrics and /healthz.
type web struct {
	ln  net.Listener
	srv *http.Server
}

// newWeb listens on addr for a's /metrics (on a registry of its own: the
// mounts' metrics, watch's, the agent's, Go's and the process's) and
// /healthz (200 and "ok" when Health.Alive, else 503; then a line per
// part).
func newWeb(a *Agent, addr string) (*web, error) {
	reg := prometheus.NewRegistry()
	if err := a.stats.Register(reg); err != nil {
		return nil, err
	}
	for _, c := range append(a.collectors(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})) {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slogPrinter{a.log},
		ErrorHandling: promhttp.ContinueOnError,
		// Beyond the collectors' own deadline (4 s): a last resort.
		Timeout: 10 * time.Second,
	}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		h := a.Health()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !h.Alive() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprint(w, h.String())
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address: %w", err)
	}
	return &web{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}, nil
}

// collectors are the agent's own metrics, read from Health at scrape time.
func (a *Agent) collectors() []prometheus.Collector {
	up := func(part string, ok func(Health) bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nsmount_agent_up", Help: "Whether a part of the agent works (1) or not (0): nri connected, csi serving, watch running, policy the last reading mirrored.",
			ConstLabels: prometheus.Labels{"part": part},
		}, func() float64 {
			if ok(a.Health()) {
				return 1
			}
			return 0
		})
	}
	cs := []prometheus.Collector{
		up("nri", func(h Health) bool { return h.NRI.Connected }),
		up("watch", func(h Health) bool { return strings.HasPrefix(h.Watch, "running") }),
		up("policy", func(h Health) bool { return h.Policy.Error == "" }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "nsmount_agent_nri_registrations_total",
			Help: "Registrations with the container runtime over NRI (one more after each runtime restart).",
		}, func() float64 { return float64(a.conn.State().Registrations) }),
	}
	if a.svc != nil {
		cs = append(cs, up("csi", func(h Health) bool { return strings.HasPrefix(h.CSI, "serving") }))
	}
	return cs
}

// start serves until stop.
func (w *web) start(log *slog.Logger) {
	go func() {
		if err := w.srv.Serve(w.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "error", oneLine(err.Error()))
		}
	}()
	log.Info("serving metrics", "address", w.ln.Addr().String(), "path", "/metrics", "health", "/healthz")
}

// stop ends the server, letting requests in flight finish for a second.
func (w *web) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	w.srv.Shutdown(ctx)
}

// slogPrinter gives promhttp's error log to slog.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) {
	p.log.Warn("metrics: " + oneLine(fmt.Sprintln(v...)))
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
