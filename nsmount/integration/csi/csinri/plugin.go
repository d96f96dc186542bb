// Package csinri feeds the CSI node service (package csi) the container
// runtime's pod sandbox events over NRI, so that a pod's deferred CSI
// volumes are mounted between its sandbox and its containers:
// RunPodSandbox starts the mounts from the new sandbox's network
// namespace, CreateContainer holds the pod's containers back until they
// are in place, StopPodSandbox and RemovePodSandbox forget the sandbox,
// and Synchronize (every connection) catches up on the pods that run.
// The runtime's plugin request timeout (2 s by default) is shorter than a
// mount may take, and a slow plugin stalls every pod on the node: the
// mounts run in the background, and CreateContainer waits for them for a
// bounded time, then fails the container's creation, which kubelet
// retries.
package csinri

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/csi"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
	"github.com/nsmount/nsmount/nsmount/integration/nri/nriconn"
)

// Defaults of a Config.
const (
	// DefaultWait bounds CreateContainer's wait for the pod's mounts,
	// below the runtime's default plugin request timeout (2 s).
	DefaultWait = 1500 * time.Millisecond
	// DefaultMountBound bounds one background PodSandboxReady.
	DefaultMountBound = 2 * time.Minute
)

// Config configures the plugin.
type Config struct {
	// Socket is the runtime's NRI socket.
	Socket string
	// Name and Idx are what the plugin registers as.
	Name, Idx string
	// Wait bounds CreateContainer's wait for the pod's mounts (zero:
	// DefaultWait); MountBound one PodSandboxReady (zero:
	// DefaultMountBound).
	Wait, MountBound time.Duration
	// Logger receives what the plugin does; nil discards it.
	Logger *slog.Logger
}

// Plugin relays pod sandbox events to a csi.Service. It is safe for
// concurrent use.
type Plugin struct {
	svc *csi.Service
	c   Config
	log *slog.Logger

	mu       sync.Mutex
	inflight map[string]chan struct{} // by pod UID: closed when its mount round ends
	rounds   sync.WaitGroup
}

var (
	_ stub.RunPodInterface          = (*Plugin)(nil)
	_ stub.StopPodInterface         = (*Plugin)(nil)
	_ stub.RemovePodInterface       = (*Plugin)(nil)
	_ stub.CreateContainerInterface = (*Plugin)(nil)
	_ stub.SynchronizeInterface     = (*Plugin)(nil)
)

// New returns a plugin that relays to svc.
func New(svc *csi.Service, c Config) *Plugin {
	if c.Wait <= 0 {
		c.Wait = DefaultWait
	}
	if c.MountBound <= 0 {
		c.MountBound = DefaultMountBound
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{svc: svc, c: c, log: log, inflight: map[string]chan struct{}{}}
}

// Run connects p to the runtime and serves until the runtime closes the
// connection or ctx ends; then it waits for the mount rounds in flight. A
// socket that does not exist or that nobody listens on is
// nsmount.ErrTargetNotFound.
func (p *Plugin) Run(ctx context.Context) error {
	closed := make(chan struct{})
	var once sync.Once
	s, err := stub.New(p,
		stub.WithSocketPath(p.c.Socket), stub.WithPluginName(p.c.Name), stub.WithPluginIdx(p.c.Idx),
		stub.WithLogger(nriconn.StubLogger(p.log)),
		stub.WithOnClose(func() { once.Do(func() { close(closed) }) }))
	if err != nil {
		return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("csi nri plugin: %s", report.OneLine(err.Error())))
	}
	if err := s.Start(ctx); err != nil {
		return nriconn.StartError(p.c.Socket, err)
	}
	p.log.Info("registered with the runtime", "plugin", p.c.Idx+"-"+p.c.Name, "nri", s.RuntimeNRIVersion())
	select {
	case <-ctx.Done():
		s.Stop()
	case <-closed:
		p.log.Info("the runtime closed the connection: stopping")
	}
	s.Wait()
	p.Wait()
	return nil
}

// Wait waits for the mount and unmount rounds running in the background
// to end (each is bounded by Config.MountBound).
func (p *Plugin) Wait() { p.rounds.Wait() }

// SandboxOf returns the csi.Sandbox of an NRI pod: its UID, network
// namespace path and process.
func SandboxOf(pod *api.PodSandbox) csi.Sandbox {
	sb := csi.Sandbox{PodUID: pod.GetUid(), PID: int(pod.GetPid())}
	for _, ns := range pod.GetLinux().GetNamespaces() {
		if ns.GetType() == "network" {
			sb.NetNS = ns.GetPath()
		}
	}
	return sb
}

// RunPodSandbox starts mounting the pod's published volumes from its new
// sandbox, in the background.
func (p *Plugin) RunPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.start(pod, "run")
	return nil
}

// Synchronize starts a mount round for every running pod: volumes
// published while the plugin was away, or whose mount is gone, are mounted.
func (p *Plugin) Synchronize(_ context.Context, pods []*api.PodSandbox, _ []*api.Container) ([]*api.ContainerUpdate, error) {
	for _, pod := range pods {
		p.start(pod, "synchronize")
	}
	return nil, nil
}

// StopPodSandbox unmounts the pod's volumes mounted from this sandbox
// while its network still reaches the servers (the runtime tears the
// network down right after): it waits for that for up to Config.Wait, and
// lets it finish in the background after.
func (p *Plugin) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	sb := SandboxOf(pod)
	if sb.PodUID == "" || sb.NetNS == "" {
		return nil
	}
	done := make(chan struct{})
	p.rounds.Add(1)
	go func() {
		defer p.rounds.Done()
		defer close(done)
		bctx, cancel := context.WithTimeout(context.Background(), p.c.MountBound)
		defer cancel()
		start := time.Now()
		rep, err := p.svc.PodSandboxStopping(bctx, sb)
		log := p.log.With("event", "stop", "pod", pod.GetNamespace()+"/"+pod.GetName(), "netns", sb.NetNS, "elapsed", time.Since(start).Round(time.Millisecond))
		switch {
		case err != nil:
			log.Warn("unmounts failed", "error", report.OneLine(err.Error()))
		case len(rep.Volumes) > 0:
			log.Info("volumes unmounted before the pod's network goes", "volumes", len(rep.Volumes))
		}
	}()
	t := time.NewTimer(p.c.Wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		p.log.Warn("unmounts still running when the runtime tears the pod's network down", "pod", pod.GetNamespace()+"/"+pod.GetName())
	case <-ctx.Done():
	}
	return nil
}

// RemovePodSandbox forgets the sandbox.
func (p *Plugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.svc.PodSandboxGone(SandboxOf(pod))
	return nil
}

// CreateContainer lets a container of the pod be created only when every
// CSI volume published for the pod is mounted from the pod's current
// network namespace: otherwise the container's bind mount of a target path
// would show an empty directory, and what it writes would stay on the
// node's disk. It waits for a mount round in flight for up to Config.Wait,
// and otherwise fails the creation (kubelet retries it) after starting a
// new round.
func (p *Plugin) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	uid := pod.GetUid()
	if uid == "" {
		return nil, nil, nil
	}
	p.wait(ctx, uid)
	vols, err := p.svc.PodVolumes(uid)
	if err != nil {
		return nil, nil, fmt.Errorf("nsmount csi: pod %s/%s: %w", pod.GetNamespace(), pod.GetName(), err)
	}
	if len(vols) == 0 {
		return nil, nil, nil
	}
	netns, nserr := nsmount.NSOfPath(SandboxOf(pod).NetNS)
	var missing []string
	for _, v := range vols {
		if v.State == csi.StateMounted && nserr == nil && v.NetNS == netns {
			continue
		}
		why := v.State
		if v.State == csi.StateMounted {
			why = "mounted from another sandbox"
		}
		if v.LastError != "" {
			why += ": " + v.LastError
		}
		missing = append(missing, fmt.Sprintf("volume %s (%s)", v.VolumeID, why))
	}
	if len(missing) == 0 {
		return nil, nil, nil
	}
	p.start(pod, "retry")
	err = fmt.Errorf("nsmount csi: pod %s/%s container %s: CSI volumes not mounted from the pod's network yet, the container would see empty directories: %s",
		pod.GetNamespace(), pod.GetName(), ctr.GetName(), strings.Join(missing, "; "))
	p.log.Warn("container held back", "pod", pod.GetNamespace()+"/"+pod.GetName(), "container", ctr.GetName(), "error", err.Error())
	return nil, nil, err
}

// start starts a mount round for pod in the background, unless one runs.
func (p *Plugin) start(pod *api.PodSandbox, why string) {
	sb := SandboxOf(pod)
	if sb.PodUID == "" || sb.NetNS == "" {
		return // no UID (not a Kubernetes pod) or no netns of its own
	}
	p.mu.Lock()
	if _, ok := p.inflight[sb.PodUID]; ok {
		p.mu.Unlock()
		return
	}
	done := make(chan struct{})
	p.inflight[sb.PodUID] = done
	p.rounds.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.rounds.Done()
		defer func() {
			p.mu.Lock()
			delete(p.inflight, sb.PodUID)
			p.mu.Unlock()
			close(done)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), p.c.MountBound)
		defer cancel()
		start := time.Now()
		rep, err := p.svc.PodSandboxReady(ctx, sb)
		log := p.log.With("event", why, "pod", pod.GetNamespace()+"/"+pod.GetName(), "netns", sb.NetNS)
		for _, problem := range rep.Problems {
			log.Warn(problem)
		}
		if len(rep.Volumes) == 0 && err == nil {
			return
		}
		if err != nil {
			log.Warn("mounts failed", "error", report.OneLine(err.Error()), "elapsed", time.Since(start).Round(time.Millisecond))
			return
		}
		log.Info("volumes mounted", "volumes", len(rep.Volumes), "elapsed", time.Since(start).Round(time.Millisecond))
	}()
}

// wait waits for the pod's mount round in flight, for up to Config.Wait.
func (p *Plugin) wait(ctx context.Context, uid string) {
	p.mu.Lock()
	done, ok := p.inflight[uid]
	p.mu.Unlock()
	if !ok {
		return
	}
	t := time.NewTimer(p.c.Wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	case <-ctx.Done():
	}
}
