// Package nri is nsmount's NRI plugin (containerd >= 1.7, CRI-O): it
// decides at CreateContainer, from pod and container annotations and the
// host policy, whether a container gets NFS mounts, and if so injects
// `nsmount hook` (package ocihook) as its createRuntime and poststop
// hooks, which mount with the container's PID. When a container or pod
// stops or is removed, it hands what is left to the Manager's one
// teardown, in the background. It logs through the *slog.Logger it is
// given; the NRI stub and its ttrpc connection live here and nowhere else.
package nri

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
	"github.com/nsmount/nsmount/nsmount/integration/nri/nriconn"
	"github.com/nsmount/nsmount/nsmount/integration/ocihook"
)

// PodContainerMountsPrefix followed by a container name is a pod
// annotation that asks for mounts in that container of the pod.
const PodContainerMountsPrefix = admission.MountsAnnotation + ".container."

// Bounds of the plugin's work.
const (
	// HookTimeout is the OCI timeout (seconds) of the injected hooks: the
	// runtime kills a hook that takes longer.
	HookTimeout = 120
	// CleanupTimeout bounds one cleanup after a stop or remove, waiting
	// for its turn included; it runs in the background, since the runtime
	// gives a plugin only a short request timeout (2 s by default) before
	// it disconnects it.
	CleanupTimeout = time.Minute
	// MaxCleanups is how many cleanups run at once (each observes the
	// machine's processes); more wait for their turn.
	MaxCleanups = 4
)

// Config configures the plugin.
type Config struct {
	// Socket is the runtime's NRI socket (ignored when the runtime
	// started the plugin and gave it a connection).
	Socket string
	// Name and Idx are what the plugin registers as (unless the runtime
	// started the plugin): a name and two digits.
	Name, Idx string
	// Nsmount is the path of the nsmount binary the runtime runs as the
	// hook.
	Nsmount string
	// Policy is the host policy file, read at every CreateContainer and by
	// the hooks (admission.LoadOrDeny: a missing one denies every mount).
	Policy string
	// StateDir is the registry's directory, for the hooks and the
	// cleanups ("" registry.DefaultDir).
	StateDir string
	// Log is the file the hooks append their lines to ("" none).
	Log string
	// Logger receives what the plugin does; nil discards it.
	Logger *slog.Logger
	// Manager is the Manager the cleanups go through (an agent's, shared
	// with its other services; it must be over StateDir). nil opens one
	// over StateDir at the first cleanup that needs it.
	Manager *cachectl.Manager
}

// Plugin handles the runtime's pod and container events. It is safe for
// concurrent use.
type Plugin struct {
	c   Config
	log *slog.Logger

	slots    chan struct{} // MaxCleanups tokens
	cleanups sync.WaitGroup

	mu  sync.Mutex
	mgr *cachectl.Manager // opened at the first cleanup that needs it
}

var (
	_ stub.CreateContainerInterface = (*Plugin)(nil)
	_ stub.StopContainerInterface   = (*Plugin)(nil)
	_ stub.RemoveContainerInterface = (*Plugin)(nil)
	_ stub.StopPodInterface         = (*Plugin)(nil)
	_ stub.RemovePodInterface       = (*Plugin)(nil)
	_ stub.SynchronizeInterface     = (*Plugin)(nil)
)

// New returns a plugin with configuration c.
func New(c Config) *Plugin {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{c: c, log: log, slots: make(chan struct{}, MaxCleanups)}
}

// Run connects a plugin to the runtime and serves until the runtime closes
// the connection or ctx ends; then it waits for the cleanups still
// running. A socket that does not exist or that nobody listens on is
// nsmount.ErrTargetNotFound.
func Run(ctx context.Context, c Config) error {
	p := New(c)
	closed := make(chan struct{})
	var once sync.Once
	opts := []stub.Option{
		stub.WithSocketPath(c.Socket),
		stub.WithLogger(nriconn.StubLogger(p.log)),
		stub.WithOnClose(func() { once.Do(func() { close(closed) }) }),
	}
	// A plugin that the runtime started gets its name and index in the
	// environment; the stub refuses a second index.
	if os.Getenv(api.PluginIdxEnvVar) == "" {
		opts = append(opts, stub.WithPluginName(c.Name), stub.WithPluginIdx(c.Idx))
	}
	s, err := stub.New(p, opts...)
	if err != nil {
		return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("nri plugin: %s", report.OneLine(err.Error())))
	}
	if err := s.Start(ctx); err != nil {
		return nriconn.StartError(c.Socket, err)
	}
	p.log.Info("registered with the runtime", "plugin", c.Idx+"-"+c.Name, "nri", s.RuntimeNRIVersion(), "hooks", c.Nsmount)
	select {
	case <-ctx.Done():
		p.log.Info("stopping", "cause", context.Cause(ctx))
		s.Stop()
	case <-closed:
		p.log.Info("the runtime closed the connection: stopping")
	}
	s.Wait()
	p.Wait()
	return nil
}

// Wait waits for the cleanups in the background to end.
func (p *Plugin) Wait() { p.cleanups.Wait() }

// CreateContainer checks the mounts the container is to get and adjusts it
// so that nsmount hook makes them. A bad annotation, or a required mount
// the policy refuses, fails the creation.
func (p *Plugin) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	value, from, ok := SelectMounts(pod.GetAnnotations(), ctr.GetAnnotations(), ctr.GetName())
	if !ok {
		return nil, nil, nil
	}
	podName := pod.GetNamespace() + "/" + pod.GetName()
	log := p.log.With("container", ctr.GetId(), "pod", podName, "name", ctr.GetName())
	a, err := Adjust(p.c, value, from)
	if err != nil {
		err = fmt.Errorf("nsmount: pod %s container %s: %w", podName, ctr.GetName(), err)
		log.Error("container refused", "error", report.OneLine(err.Error()))
		return nil, nil, err
	}
	for _, w := range a.Warnings {
		log.Warn(w)
	}
	if a.Adjustment != nil {
		log.Info("hooks added", "mounts", a.Admitted, "from", from)
	}
	return a.Adjustment, nil, nil
}

// Adjusted is what CreateContainer decides for one container.
type Adjusted struct {
	// Adjustment sets the annotation and adds the hooks; nil for an
	// empty list of mounts.
	Adjustment *api.ContainerAdjustment
	// Admitted is how many of the mounts the policy admits now.
	Admitted int
	// Warnings are the optional mounts the policy refuses now, one line
	// each: they get no mount (the hook checks the policy again).
	Warnings []string
}

// Adjust parses value (the annotation found in from), checks it against
// c.Policy and returns the adjustment that makes the hooks mount it. A
// refused optional mount is a warning and left to the hook, which checks
// the policy again (it may have changed by then) and skips it.
func Adjust(c Config, value, from string) (*Adjusted, error) {
	vols, err := admission.ParseMountsAnnotation(value)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	a := &Adjusted{}
	if len(vols) == 0 {
		return a, nil
	}
	policy, err := admission.LoadOrDeny(c.Policy)
	if err != nil {
		return nil, err
	}
	for _, v := range vols {
		if _, _, err := policy.Check(v); err != nil {
			if v.Required {
				return nil, fmt.Errorf("mount %s: %w", v, err)
			}
			a.Warnings = append(a.Warnings, report.OneLine(fmt.Sprintf("optional mount %s will be skipped: %v", v, err)))
			continue
		}
		a.Admitted++
	}
	a.Adjustment = HookAdjustment(c, value)
	return a, nil
}

// SelectMounts returns the mounts annotation that applies to the container
// named name, and where it was found: the container's own annotation, else
// the pod's annotation for that container (PodContainerMountsPrefix+name),
// else the pod's annotation for all its containers.
func SelectMounts(pod, ctr map[string]string, name string) (value, from string, ok bool) {
	if v, ok := ctr[admission.MountsAnnotation]; ok {
		return v, "container annotation " + admission.MountsAnnotation, true
	}
	if name != "" {
		if v, ok := pod[PodContainerMountsPrefix+name]; ok {
			return v, "pod annotation " + PodContainerMountsPrefix + name, true
		}
	}
	if v, ok := pod[admission.MountsAnnotation]; ok {
		return v, "pod annotation " + admission.MountsAnnotation, true
	}
	return "", "", false
}

// HookAdjustment sets the container's mounts annotation to value and adds
// `nsmount hook` as its createRuntime and poststop hooks, owner nri.
func HookAdjustment(c Config, value string) *api.ContainerAdjustment {
	common := []string{"--state-dir", c.StateDir, "--owner", cachectl.OwnerNRI}
	if c.Log != "" {
		common = append(common, "--log", c.Log)
	}
	hook := func(stage ocihook.Stage, extra ...string) *api.Hook {
		args := append([]string{"nsmount", "hook", "--stage", string(stage)}, extra...)
		return &api.Hook{Path: c.Nsmount, Args: append(args, common...), Timeout: api.Int(HookTimeout)}
	}
	adj := &api.ContainerAdjustment{}
	adj.AddAnnotation(admission.MountsAnnotation, value)
	adj.AddHooks(&api.Hooks{
		CreateRuntime: []*api.Hook{hook(ocihook.CreateRuntime, "--policy", c.Policy)},
		Poststop:      []*api.Hook{hook(ocihook.Poststop)},
	})
	return adj
}

// StopContainer cleans up after the container (in the background).
func (p *Plugin) StopContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	p.cleanupContainer("stop", ctr)
	return nil, nil
}

// RemoveContainer cleans up after the container (in the background).
func (p *Plugin) RemoveContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) error {
	p.cleanupContainer("remove", ctr)
	return nil
}

// StopPodSandbox cleans up after the pod's containers (in the background).
func (p *Plugin) StopPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.cleanupPod("stop", pod)
	return nil
}

// RemovePodSandbox cleans up after the pod's containers (in the background).
func (p *Plugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.cleanupPod("remove", pod)
	return nil
}

// Synchronize cleans up after the containers that went while the plugin
// was not connected (a restart of the runtime or of the plugin), which the
// runtime reports by leaving them out of ctrs: for every registry entry
// owned by cachectl.OwnerNRI whose container is not among ctrs and whose
// process is gone, the cleanup RemoveContainer would have done, in the
// background. An entry whose process still runs is left alone, listed or
// not (the list is a snapshot: a container started since is not in it).
func (p *Plugin) Synchronize(_ context.Context, _ []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	listed := make(map[string]bool, len(ctrs))
	for _, c := range ctrs {
		listed[c.GetId()] = true
	}
	if _, err := os.Stat(p.stateDir()); err != nil {
		return nil, nil // nsmount never mounted anything here
	}
	p.cleanups.Add(1)
	go func() {
		defer p.cleanups.Done()
		mgr, err := p.manager()
		if err != nil {
			p.log.Warn("synchronize: " + report.OneLine(err.Error()))
			return
		}
		gone, err := goneContainers(mgr.Registry(), listed, kernel.Proc{})
		if err != nil {
			p.log.Warn("synchronize: " + report.OneLine(err.Error()))
		}
		for _, id := range gone {
			p.cleanup("synchronize", cachectl.TeardownRequest{Container: id, Unmount: true, Owners: cleanupOwners}, "container", id)
		}
	}()
	return nil, nil
}

// goneContainers returns, sorted, the containers of reg's OwnerNRI entries
// that are not listed and whose recorded process is gone from proc (a PID
// that no longer exists, or another process by its start time).
func goneContainers(reg *registry.Registry, listed map[string]bool, proc kernel.Proc) ([]string, error) {
	seen := map[string]bool{}
	var gone []string
	err := reg.View(func(s *registry.State) error {
		for _, e := range s.Entries {
			id := e.Target.Container
			if e.Owner != cachectl.OwnerNRI || id == "" || listed[id] || seen[id] {
				continue
			}
			seen[id] = true
			if processGone(proc, e.Target) {
				gone = append(gone, id)
			}
		}
		return nil
	})
	slices.Sort(gone)
	return gone, err
}

// processGone reports whether the process t records is surely gone. An
// identity without a PID is never taken for gone.
func processGone(proc kernel.Proc, t registry.Identity) bool {
	if t.PID <= 0 {
		return false
	}
	start, err := proc.StartTime(t.PID)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
	}
	return t.PIDStart != 0 && start != t.PIDStart
}

func (p *Plugin) cleanupContainer(event string, ctr *api.Container) {
	if id := ctr.GetId(); id != "" {
		p.cleanup(event, cachectl.TeardownRequest{Container: id, Unmount: true, Owners: cleanupOwners}, "container", id)
	}
}

func (p *Plugin) cleanupPod(event string, pod *api.PodSandbox) {
	netns := PodNetNS(pod)
	if netns == "" {
		return
	}
	id, err := nsmount.NSOfPath(netns)
	if err != nil {
		return // gone with its mounts; nothing to flush through it
	}
	p.cleanup(event, cachectl.TeardownRequest{NetNS: &id, Unmount: true, Owners: cleanupOwners}, "pod", pod.GetNamespace()+"/"+pod.GetName(), "netns", netns)
}

// cleanup runs r through the Manager's teardown in the background,
// bounded by CleanupTimeout, at most MaxCleanups at once. Nothing is done
// when the registry does not exist (nsmount never mounted anything here).
// Everything is logged; nothing fails the runtime's event.
// cleanupOwners are the mounts a container's or pod's cleanup may take:
// those of the hooks (injected by this plugin, or configured statically),
// never the CSI service's, which it unmounts itself.
var cleanupOwners = []string{cachectl.OwnerNRI, cachectl.OwnerHook}

func (p *Plugin) cleanup(event string, r cachectl.TeardownRequest, attrs ...any) {
	if _, err := os.Stat(p.stateDir()); err != nil {
		return
	}
	log := p.log.With(append([]any{"event", event}, attrs...)...)
	p.cleanups.Add(1)
	go func() {
		defer p.cleanups.Done()
		ctx, cancel := context.WithTimeout(context.Background(), CleanupTimeout)
		defer cancel()
		select {
		case p.slots <- struct{}{}:
			defer func() { <-p.slots }()
		case <-ctx.Done():
			log.Warn("cleanup skipped: too many cleanups waiting", "error", ctx.Err())
			return
		}
		mgr, err := p.manager()
		if err != nil {
			log.Warn("cleanup: " + report.OneLine(err.Error()))
			return
		}
		rep, err := mgr.Teardown(ctx, r)
		for _, n := range report.Notices(mgr) {
			logLine(log, n)
		}
		if err != nil {
			log.Warn("cleanup: " + report.OneLine(err.Error()))
		}
		for _, line := range report.Teardown(rep) {
			logLine(log, line)
		}
	}()
}

// stateDir is the registry's directory.
func (p *Plugin) stateDir() string {
	if p.c.StateDir == "" {
		return registry.DefaultDir
	}
	return p.c.StateDir
}

// logLine logs one line of a report: a warning at level WARN without its
// "warning: " prefix, anything else at INFO.
func logLine(log *slog.Logger, line string) {
	if w, ok := strings.CutPrefix(line, "warning: "); ok {
		log.Warn(w)
		return
	}
	log.Info(line)
}

// manager returns Config.Manager, or opens a Manager at the first cleanup
// that needs it.
func (p *Plugin) manager() (*cachectl.Manager, error) {
	if p.c.Manager != nil {
		return p.c.Manager, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mgr == nil {
		m, err := cachectl.Open(cachectl.Config{StateDir: p.c.StateDir})
		if err != nil {
			return nil, err
		}
		p.mgr = m
	}
	return p.mgr, nil
}

// PodNetNS returns the path of the pod's network namespace, "" if none.
func PodNetNS(pod *api.PodSandbox) string {
	for _, ns := range pod.GetLinux().GetNamespaces() {
		if ns.GetType() == "network" {
			return ns.GetPath()
		}
	}
	return ""
}
