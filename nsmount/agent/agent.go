// Package agent runs nsmount's node agent: the one long-running nsmount
// process of a node (a Kubernetes DaemonSet's pod), over one Manager. It
// composes what the other packages do and adds no mount logic of its own:
//
//   - one NRI plugin registration (nriconn) whose events reach both the
//     hook injection (integration/nri) and the CSI relay (csinri): the
//     runtime allows one registration per plugin name;
//   - the CSI node service (integration/csi) on its socket, when enabled;
//   - watch (cachectl.Manager.Watch) with the kernel-log watchdog (kmsg);
//   - /metrics (cachectl/metrics, fed every watch event) and /healthz;
//   - the host policy mirrored to where the hooks read it (hostfile).
//
// When the container runtime restarts, the agent registers again as soon
// as the runtime is back (nriconn's backoff: at once, then from 100 ms
// doubling up to 2 s) and catches up on the runtime's Synchronize; the CSI
// service, watch and the metrics keep serving meanwhile. On SIGTERM it
// stops taking events and calls, lets the work in flight end for a bounded
// time, and leaves every mount in place: a new agent finds them in the
// registry and the CSI records.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/kmsg"
	"github.com/nsmount/nsmount/cachectl/metrics"
	"github.com/nsmount/nsmount/cachectl/nfsstat"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/cachectl/watchlog"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/agent/hostfile"
	"github.com/nsmount/nsmount/nsmount/integration/csi"
	"github.com/nsmount/nsmount/nsmount/integration/csi/csinri"
	"github.com/nsmount/nsmount/nsmount/integration/nri"
	"github.com/nsmount/nsmount/nsmount/integration/nri/nriconn"
)

// Defaults of a Config.
const (
	// DefaultPolicyInterval is how often the policy file is read for a
	// change (kubelet updates a ConfigMap volume within a minute or so).
	DefaultPolicyInterval = 2 * time.Second
	// DefaultShutdownTimeout bounds a stop: the work in flight that has
	// not ended by then is abandoned (below the DaemonSet's 30 s grace).
	DefaultShutdownTimeout = 20 * time.Second
	// DefaultNRIName and DefaultNRIIdx are what the agent registers as.
	DefaultNRIName = "nsmount"
	DefaultNRIIdx  = "10"
	// watchRetry bounds the wait before watch is started again after it
	// failed.
	watchRetry = 30 * time.Second
)

// Config configures an Agent.
type Config struct {
	// StateDir is the registry's directory, shared with the hooks.
	StateDir string
	// Policy is the host policy file as deployed (a ConfigMap's key).
	// HookPolicy, if not "", is where the agent mirrors it for the hooks
	// (on the host), and what the agent's own decisions read too: the
	// hooks and the agent always decide by the same policy. "" has
	// everything read Policy itself.
	Policy, HookPolicy string
	// PolicyInterval is how often Policy is read for a change (zero:
	// DefaultPolicyInterval).
	PolicyInterval time.Duration
	// HookBinary is the nsmount binary runc runs as the hooks (the host's
	// copy that `nsmount install` made); HookLog, if not "", a file the
	// hooks append their lines to.
	HookBinary, HookLog string
	// NRI is the runtime's NRI socket and what the agent registers as
	// there (zero MinDelay... take nriconn's defaults; "" Name and Idx
	// DefaultNRIName and DefaultNRIIdx). Its Logger is the agent's.
	NRI nriconn.Config
	// CSI, if not nil, has the agent serve the CSI node service.
	CSI *CSIConfig
	// Watch configures watch (its Kernel is the agent's: see NoKernelLog).
	Watch cachectl.WatchOptions
	// NoKernelLog turns the kernel-log watchdog off; without it, a kernel
	// log that cannot be read turns it off with a warning.
	NoKernelLog bool
	// KeepConnections is cachectl.Config.KeepConnections.
	KeepConnections bool
	// Helper is cachectl.Config.Helper: the mount helper's executable, ""
	// for this binary.
	Helper string
	// MetricsAddress, if not "", is the TCP address of /metrics and
	// /healthz; AllOps exports every NFS operation (metrics.Config).
	MetricsAddress string
	AllOps         bool
	// ShutdownTimeout bounds a stop (zero: DefaultShutdownTimeout).
	ShutdownTimeout time.Duration
	// Version is the agent's version, for the CSI plugin info and the log.
	Version string
	// Logger receives what the agent and its parts do (each line with its
	// component), and watch's events; nil discards them.
	Logger *slog.Logger
}

// CSIConfig configures the CSI node service of an agent.
type CSIConfig struct {
	// Endpoint is the socket to serve, unix:///PATH.
	Endpoint string
	// Service configures the service; the agent sets its Policy,
	// StateDir, Version, Logger and Manager.
	Service csi.Config
	// Wait bounds CreateContainer's wait for a pod's CSI mounts (zero:
	// csinri.DefaultWait).
	Wait time.Duration
}

// Agent is a node agent, made by New and run by Run.
type Agent struct {
	c   Config
	log *slog.Logger
	mgr *cachectl.Manager

	hooks  *nri.Plugin
	relay  *csinri.Plugin // nil without CSI
	svc    *csi.Service   // nil without CSI
	csiLis net.Listener
	conn   *nriconn.Conn
	stats  *metrics.Metrics
	web    *web // nil without MetricsAddress

	mu     sync.Mutex
	health Health
}

// New checks c, opens the Manager and makes the agent's parts; the CSI
// socket and the metrics address are listened on already when it
// returns. Errors in c are nsmount.ErrInvalidArgument.
func New(c Config) (_ *Agent, retErr error) {
	if c.PolicyInterval <= 0 {
		c.PolicyInterval = DefaultPolicyInterval
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.NRI.Name == "" {
		c.NRI.Name = DefaultNRIName
	}
	if c.NRI.Idx == "" {
		c.NRI.Idx = DefaultNRIIdx
	}
	if c.StateDir == "" {
		c.StateDir = registry.DefaultDir
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{c: c, log: log, health: Health{CSI: "off", Watch: "starting", Policy: PolicyState{Source: c.Policy, Copy: c.HookPolicy}}}
	defer func() {
		if retErr != nil {
			a.close()
		}
	}()
	var err error
	if a.mgr, err = cachectl.Open(cachectl.Config{StateDir: c.StateDir, Isolation: nsmount.InHelper, Helper: c.Helper, KeepConnections: c.KeepConnections}); err != nil {
		return nil, err
	}
	a.hooks = nri.New(nri.Config{
		Nsmount: c.HookBinary, Policy: a.policy(), StateDir: c.StateDir, Log: c.HookLog,
		Logger: log.With("component", "nri"), Manager: a.mgr,
	})
	events := &events{a: a, hooks: a.hooks}
	if c.CSI != nil {
		sc := c.CSI.Service
		sc.Policy, sc.StateDir, sc.Version, sc.Manager = a.policy(), c.StateDir, c.Version, a.mgr
		sc.Logger = log.With("component", "csi")
		if a.svc, err = csi.New(sc); err != nil {
			return nil, err
		}
		a.relay = csinri.New(a.svc, csinri.Config{Wait: c.CSI.Wait, Logger: log.With("component", "csi")})
		events.relay = a.relay
		if a.csiLis, err = csi.Listen(c.CSI.Endpoint); err != nil {
			return nil, err
		}
		a.health.CSI = "serving " + c.CSI.Endpoint
	}
	nc := c.NRI
	nc.Logger = log.With("component", "nri")
	if a.conn, err = nriconn.New(events, nc); err != nil {
		return nil, err
	}
	if a.stats, err = metrics.New(metrics.Config{Registry: a.mgr.Registry(), AllOps: c.AllOps}); err != nil {
		return nil, err
	}
	if c.MetricsAddress != "" {
		if a.web, err = newWeb(a, c.MetricsAddress); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// check checks the paths in c.
func (c *Config) check() error {
	invalid := func(format string, args ...any) error {
		return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf(format, args...))
	}
	paths := []struct{ what, path string }{{"state directory", c.StateDir}, {"policy", c.Policy}, {"hook binary", c.HookBinary}}
	if c.HookPolicy != "" {
		paths = append(paths, struct{ what, path string }{"hook policy", c.HookPolicy})
	}
	if c.HookLog != "" {
		paths = append(paths, struct{ what, path string }{"hook log", c.HookLog})
	}
	for _, p := range paths {
		if !filepath.IsAbs(p.path) || filepath.Clean(p.path) != p.path {
			return invalid("%s %q: want a clean absolute path", p.what, p.path)
		}
	}
	if c.HookPolicy == c.Policy {
		return invalid("hook policy %s: the policy itself (give another path, or none)", c.HookPolicy)
	}
	if fi, err := os.Stat(c.HookBinary); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return invalid("hook binary %s: not an executable file (nsmount install --to DIR puts one there)", c.HookBinary)
	}
	if c.CSI != nil && c.CSI.Endpoint == "" {
		return invalid("csi endpoint: missing")
	}
	return nil
}

// policy is the policy file the agent's parts and the hooks read.
func (a *Agent) policy() string {
	if a.c.HookPolicy != "" {
		return a.c.HookPolicy
	}
	return a.c.Policy
}

// close releases what New opened.
func (a *Agent) close() {
	if a.csiLis != nil {
		a.csiLis.Close()
	}
	if a.web != nil {
		a.web.ln.Close()
	}
	if a.stats != nil {
		a.stats.Close()
	}
}

// Run runs the agent until ctx ends, then stops it (see Stop's order in
// the package doc) and returns nil, every mount left in place. It returns
// early with an error only when the CSI server fails (its socket gone):
// a process supervisor (the DaemonSet) then starts a new agent. Run is
// called once.
func (a *Agent) Run(ctx context.Context) error {
	defer a.close()
	a.log.Info("starting", "version", a.c.Version, "state_dir", a.c.StateDir, "nri", a.c.NRI.Socket, "csi", a.csiEndpoint(),
		"metrics", a.MetricsAddress(), "policy", a.c.Policy, "hook_policy", a.c.HookPolicy, "hook_binary", a.c.HookBinary)
	// The hooks need the policy before the first container is adjusted.
	a.mirrorPolicy()

	run, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	fatal := make(chan error, 1)
	if a.web != nil {
		a.web.start(a.log)
	}
	wg.Go(func() { a.policyLoop(run) })
	wg.Go(func() { a.conn.Run(run) })
	if a.svc != nil {
		wg.Go(func() {
			err := a.svc.Serve(run, a.csiLis)
			a.mu.Lock()
			if run.Err() == nil {
				a.health.CSI = "stopped: " + oneLine(fmt.Sprint(err))
			}
			a.mu.Unlock()
			if run.Err() == nil {
				fatal <- fmt.Errorf("csi server on %s: %w", a.c.CSI.Endpoint, err)
			}
		})
	}
	wg.Go(func() { a.watchLoop(run) })

	var err error
	select {
	case <-ctx.Done():
		a.log.Info("stopping: every mount stays in place", "cause", context.Cause(ctx).Error())
	case err = <-fatal:
		a.log.Error("stopping: "+oneLine(err.Error()), "mounts", "every mount stays in place")
	}
	a.mu.Lock()
	a.health.Stopping = true
	a.mu.Unlock()
	start := time.Now()
	stop()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		a.hooks.Wait()
		if a.relay != nil {
			a.relay.Wait()
		}
		close(done)
	}()
	t := time.NewTimer(a.c.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
		a.log.Info("stopped", "elapsed", time.Since(start).Round(time.Millisecond).String())
	case <-t.C:
		a.log.Warn("stopped: work still running abandoned (its mounts stay, the next agent finds them)", "after", a.c.ShutdownTimeout.String())
	}
	if a.web != nil {
		a.web.stop()
	}
	return err
}

// mirrorPolicy copies the policy to the hooks' path if it changed, and
// says so; a policy that does not load is reported once, and the last
// good one stays in force.
func (a *Agent) mirrorPolicy() {
	if a.c.HookPolicy == "" {
		return
	}
	res, err := hostfile.MirrorPolicy(a.c.Policy, a.c.HookPolicy)
	now := time.Now()
	a.mu.Lock()
	p := &a.health.Policy
	p.Checked = now
	repeat := err != nil && p.Error == oneLine(err.Error())
	if err != nil {
		p.Error = oneLine(err.Error())
	} else {
		p.Error, p.Digest = "", res.Digest
		if res.Changed {
			p.Mirrored = now
		}
	}
	a.mu.Unlock()
	log := a.log.With("component", "policy")
	switch {
	case err != nil && !repeat:
		log.Error("policy not mirrored", "error", oneLine(err.Error()))
	case err != nil:
	case res.Changed && res.Digest == "":
		log.Warn("the policy is gone: its copy removed, the hooks deny every mount", "policy", a.c.Policy, "copy", a.c.HookPolicy)
	case res.Changed:
		log.Info("policy mirrored", "policy", a.c.Policy, "copy", a.c.HookPolicy, "digest", res.Digest)
	}
}

// policyLoop mirrors the policy every PolicyInterval until ctx ends.
func (a *Agent) policyLoop(ctx context.Context) {
	if a.c.HookPolicy == "" {
		return
	}
	t := time.NewTicker(a.c.PolicyInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.mirrorPolicy()
		}
	}
}

// watchLoop runs watch until ctx ends, feeding its events to the metrics
// and the log; a watch that fails is started again after a delay.
func (a *Agent) watchLoop(ctx context.Context) {
	log := a.log.With("component", "watch")
	delay := time.Second
	for {
		err := a.watch(ctx, log)
		if ctx.Err() != nil {
			return
		}
		a.mu.Lock()
		a.health.Watch = "stopped: " + oneLine(fmt.Sprint(err))
		a.mu.Unlock()
		log.Error("watch stopped: starting it again", "error", oneLine(fmt.Sprint(err)), "in", delay.String())
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, watchRetry)
	}
}

// watch runs one Watch with the kernel log (unless turned off or
// unreadable) until ctx ends or it fails.
func (a *Agent) watch(ctx context.Context, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	o := a.c.Watch
	o.Kernel = nil
	if !a.c.NoKernelLog {
		stats, err := nfsstat.NewReader(nfsstat.Options{Timeout: o.Timeout})
		if err != nil {
			return fmt.Errorf("watchdog's statistics reader: %w", err)
		}
		defer stats.Close() // after Watch returned (done)
		if r, err := kmsg.Open(log); err != nil {
			log.Warn("kernel log watchdog off", "error", oneLine(err.Error()))
		} else {
			ch := make(chan kmsg.Message, 64)
			o.Kernel, o.Stats = ch, stats
			wg.Go(func() {
				if err := r.Run(ctx, ch); err != nil {
					log.Warn("kernel log watchdog stopped", "error", oneLine(err.Error()))
				}
			})
		}
	}
	events := make(chan cachectl.WatchEvent)
	done := make(chan error, 1)
	go func() { done <- a.mgr.Watch(ctx, o, events) }()
	a.mu.Lock()
	a.health.Watch = "running"
	if o.Kernel == nil {
		a.health.Watch = "running, without the kernel-log watchdog"
	}
	a.mu.Unlock()
	for {
		select {
		case e := <-events:
			a.stats.Observe(e)
			watchlog.Log(ctx, log, e)
		case err := <-done:
			if err == nil && ctx.Err() == nil {
				err = errors.New("watch returned")
			}
			return err
		}
	}
}

func (a *Agent) csiEndpoint() string {
	if a.c.CSI == nil {
		return ""
	}
	return a.c.CSI.Endpoint
}

// Registry returns the registry of the agent's Manager.
func (a *Agent) Registry() *registry.Registry { return a.mgr.Registry() }

// MetricsAddress returns the address /metrics and /healthz are served
// on ("" none): Config.MetricsAddress with the port the system chose for
// port 0.
func (a *Agent) MetricsAddress() string {
	if a.web == nil {
		return ""
	}
	return a.web.ln.Addr().String()
}
