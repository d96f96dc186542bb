package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"
	"github.com/containerd/nri/pkg/stub"
	"github.com/spf13/cobra"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/nsmount"
)

// The NRI plugin (nsmount nri) does not mount anything itself. At
// CreateContainer it picks the mounts annotation that applies to the
// container, parses it and checks it against the policy (a refusal fails
// the creation), then adjusts the container: the annotation is set on the
// container's own spec and nsmount hook is added as its createRuntime and
// poststop hooks. The mounts then happen in the hook, with the container's
// PID, exactly as for a container whose spec asks for them itself. At
// StopContainer, RemoveContainer, StopPodSandbox and RemovePodSandbox it
// cleans up what the hook may have left (a safety net; idempotent; never a
// failure).

// Annotations the NRI plugin reads, in order of precedence.
const (
	// podContainerMountsPrefix followed by a container name is a pod
	// annotation that asks for mounts in that container of the pod.
	podContainerMountsPrefix = nsmount.MountsAnnotation + ".container."
)

// Bounds of the NRI plugin's work.
const (
	// nriHookTimeout is the OCI timeout (seconds) of the injected hooks:
	// the runtime kills a hook that takes longer.
	nriHookTimeout = 120
	// nriCleanupTimeout bounds one cleanup after a stop or remove; it runs
	// in the background, since the runtime gives a plugin only a short
	// request timeout (2 s by default) before it disconnects it.
	nriCleanupTimeout = time.Minute
)

// nriOptions are the settings of nsmount nri.
type nriOptions struct {
	socket, name, idx string
	policy, log       string
	nsmount, stateDir string
}

func newNRICommand() *cobra.Command {
	var o nriOptions
	cmd := &cobra.Command{
		Use:   "nri [--socket PATH] [--plugin-name NAME] [--plugin-idx NN] [--policy PATH] [--log FILE] [--nsmount PATH]",
		Short: "NRI plugin: mount the NFS volumes that pod and container annotations ask for",
		Long: `nri runs an NRI plugin (containerd >= 1.7, CRI-O) that gives NFS mounts to
the containers whose annotations ask for them. The annotation that applies
to a container is the first of:
  the container's own annotation ` + nsmount.MountsAnnotation + `,
  the pod annotation ` + podContainerMountsPrefix + `<container name>,
  the pod annotation ` + nsmount.MountsAnnotation + ` (every container of the pod).
At CreateContainer it is parsed and checked against the policy: a bad
annotation or a refused required mount fails the creation. Then the
container gets the annotation and nsmount hook as its createRuntime and
poststop OCI hooks, which mount (with the container's PID, in its network
and mount namespaces) and tear down. When a container or pod stops or is
removed, nsmount forgets its registry entries, unmounts what is left and
flushes stale NFS state of the pod's network namespace (warnings only).
It runs until the runtime closes the connection, or SIGTERM/SIGINT.`,
		Example: `  nsmount nri --policy /etc/nsmount/policy.json --log /var/log/nsmount-nri.log`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.stateDir, _ = cmd.Flags().GetString("state-dir")
			if !cmd.Flags().Changed("nsmount") {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find nsmount's own path for the hooks: %w (give --nsmount)", err)
				}
				o.nsmount = exe
			}
			if err := o.validate(); err != nil {
				return err
			}
			return runNRI(cmd.Context(), o, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&o.socket, "socket", api.DefaultSocketPath, "NRI socket of the runtime (ignored when the runtime started the plugin)")
	cmd.Flags().StringVar(&o.name, "plugin-name", "nsmount", "plugin name to register with (unless the runtime started the plugin)")
	cmd.Flags().StringVar(&o.idx, "plugin-idx", "10", "plugin index to register with, two digits (unless the runtime started the plugin)")
	cmd.Flags().StringVar(&o.policy, "policy", nsmount.DefaultPolicyPath, "host policy file deciding what annotations may mount")
	cmd.Flags().StringVar(&o.log, "log", "", "also append what the plugin and its hooks do to FILE")
	cmd.Flags().StringVar(&o.nsmount, "nsmount", "", "path of the nsmount binary that the runtime runs as hook (default: this binary)")
	return cmd
}

// validate checks the settings that end up in the hooks' command lines.
func (o *nriOptions) validate() error {
	abs := func(flag, p string) error {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return usageError{fmt.Errorf("--%s %q: want a clean absolute path", flag, p)}
		}
		return nil
	}
	for _, f := range []struct{ flag, path string }{{"nsmount", o.nsmount}, {"policy", o.policy}, {"state-dir", o.stateDir}} {
		if err := abs(f.flag, f.path); err != nil {
			return err
		}
	}
	if o.log != "" {
		if err := abs("log", o.log); err != nil {
			return err
		}
	}
	if err := api.CheckPluginIndex(o.idx); err != nil || o.name == "" || strings.ContainsFunc(o.name, func(r rune) bool { return r <= ' ' || r == '/' || r == 0x7f }) {
		return usageError{fmt.Errorf("--plugin-idx %q --plugin-name %q: want two digits and a name", o.idx, o.name)}
	}
	if fi, err := os.Stat(o.nsmount); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return invalid("--nsmount %s: not an executable file", o.nsmount)
	}
	return nil
}

// runNRI connects the plugin to the runtime and serves until the runtime
// closes the connection or ctx ends; then it waits for the cleanups that
// are still running.
func runNRI(ctx context.Context, o nriOptions, out io.Writer) error {
	p := &nriPlugin{opts: o, out: out}
	closed := make(chan struct{})
	var once sync.Once
	opts := []stub.Option{
		stub.WithSocketPath(o.socket),
		stub.WithLogger(nriLogger{p}),
		stub.WithOnClose(func() { once.Do(func() { close(closed) }) }),
	}
	// A plugin that the runtime started gets its name and index in the
	// environment; the stub refuses a second index.
	if os.Getenv(api.PluginIdxEnvVar) == "" {
		opts = append(opts, stub.WithPluginName(o.name), stub.WithPluginIdx(o.idx))
	}
	s, err := stub.New(p, opts...)
	if err != nil {
		return invalid("nri plugin: %s", oneLine(err.Error()))
	}
	if err := s.Start(ctx); err != nil {
		return nriStartError(o.socket, err)
	}
	p.printf("registered with the runtime as %s (NRI %s), hooks run %s", o.idx+"-"+o.name, s.RuntimeNRIVersion(), o.nsmount)
	select {
	case <-ctx.Done():
		p.printf("stopping: %v", context.Cause(ctx))
		s.Stop()
	case <-closed:
		p.printf("the runtime closed the connection: stopping")
	}
	s.Wait()
	p.cleanups.Wait()
	return nil
}

// nriStartError classifies a failure to connect or register.
func nriStartError(socket string, err error) error {
	if os.Getenv(api.PluginSocketEnvVar) == "" {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("NRI socket %s does not exist (is NRI enabled in the runtime?)", socket))
		case errors.Is(err, syscall.ECONNREFUSED):
			return nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("NRI socket %s: nobody listens (is the runtime running?)", socket))
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return nsmount.WithClass(nsmount.ErrTimeout, fmt.Errorf("register with the runtime at %s: %w", socket, err))
	}
	return fmt.Errorf("register with the runtime at %s: %w", socket, err)
}

// nriPlugin handles the runtime's pod and container events.
type nriPlugin struct {
	opts     nriOptions
	out      io.Writer
	logMu    sync.Mutex
	cleanups sync.WaitGroup
}

var (
	_ stub.CreateContainerInterface = (*nriPlugin)(nil)
	_ stub.StopContainerInterface   = (*nriPlugin)(nil)
	_ stub.RemoveContainerInterface = (*nriPlugin)(nil)
	_ stub.StopPodInterface         = (*nriPlugin)(nil)
	_ stub.RemovePodInterface       = (*nriPlugin)(nil)
)

// printf reports one line of the plugin's own on stderr and in the log.
func (p *nriPlugin) printf(format string, args ...any) {
	p.line("nsmount nri: " + oneLine(fmt.Sprintf(format, args...)))
}

// line writes line to stderr and the log.
func (p *nriPlugin) line(line string) {
	h := p.reporter("")
	defer h.close()
	fmt.Fprintln(h.out, line)
	h.logLine(line)
}

// reporter returns a hook value that reports for container id: the same
// line format and log file as the hooks the plugin injects.
func (p *nriPlugin) reporter(id string) *hook {
	return &hook{id: id, out: &lockedWriter{mu: &p.logMu, w: p.out}, logPath: p.opts.log, stateDir: p.opts.stateDir}
}

// lockedWriter serializes the lines of concurrent events.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// CreateContainer checks the mounts the container is to get and adjusts it
// so that nsmount hook makes them.
func (p *nriPlugin) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	value, from, ok := selectMounts(pod.GetAnnotations(), ctr.GetAnnotations(), ctr.GetName())
	if !ok {
		return nil, nil, nil
	}
	h := p.reporter(ctr.GetId())
	defer h.close()
	adj, n, err := p.adjust(value, from, h.printf)
	if err != nil {
		err = fmt.Errorf("nsmount: pod %s/%s container %s: %w", pod.GetNamespace(), pod.GetName(), ctr.GetName(), err)
		p.line(oneLine(err.Error()))
		return nil, nil, err
	}
	if adj != nil {
		h.printf("pod %s/%s container %s: %d mount(s) from %s: hooks added", pod.GetNamespace(), pod.GetName(), ctr.GetName(), n, from)
	}
	return adj, nil, nil
}

// adjust parses value (found in from), checks it against the policy and
// returns the adjustment that makes the hooks mount it, and how many mounts
// the policy allows now. An empty list needs no adjustment. A refused
// optional mount is reported with warn and left to the hook, which checks
// the policy again (it may have changed by then) and skips it.
func (p *nriPlugin) adjust(value, from string, warn func(string, ...any)) (*api.ContainerAdjustment, int, error) {
	vols, err := nsmount.ParseMountsAnnotation(value)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", from, err)
	}
	if len(vols) == 0 {
		return nil, 0, nil
	}
	check, err := loadChecker(p.opts.policy)
	if err != nil {
		return nil, 0, err
	}
	n := 0
	for _, v := range vols {
		if _, err := check(v); err != nil {
			if v.Required {
				return nil, 0, fmt.Errorf("mount %s: %w", v, err)
			}
			warn("warning: optional mount %s will be skipped: %v", v, err)
			continue
		}
		n++
	}
	return hookAdjustment(p.opts, value), n, nil
}

// selectMounts returns the mounts annotation that applies to the container
// named name, and where it was found: the container's own annotation, else
// the pod's annotation for that container, else the pod's annotation for
// all its containers.
func selectMounts(pod, ctr map[string]string, name string) (value, from string, ok bool) {
	if v, ok := ctr[nsmount.MountsAnnotation]; ok {
		return v, "container annotation " + nsmount.MountsAnnotation, true
	}
	if name != "" {
		if v, ok := pod[podContainerMountsPrefix+name]; ok {
			return v, "pod annotation " + podContainerMountsPrefix + name, true
		}
	}
	if v, ok := pod[nsmount.MountsAnnotation]; ok {
		return v, "pod annotation " + nsmount.MountsAnnotation, true
	}
	return "", "", false
}

// hookAdjustment sets the container's mounts annotation to value and adds
// nsmount hook as its createRuntime and poststop hooks.
func hookAdjustment(o nriOptions, value string) *api.ContainerAdjustment {
	common := []string{"--state-dir", o.stateDir, "--owner", "nri"}
	if o.log != "" {
		common = append(common, "--log", o.log)
	}
	hook := func(stage string, extra ...string) *api.Hook {
		args := append([]string{"nsmount", "hook", "--stage", stage}, extra...)
		return &api.Hook{Path: o.nsmount, Args: append(args, common...), Timeout: api.Int(nriHookTimeout)}
	}
	adj := &api.ContainerAdjustment{}
	adj.AddAnnotation(nsmount.MountsAnnotation, value)
	adj.AddHooks(&api.Hooks{
		CreateRuntime: []*api.Hook{hook(stageCreateRuntime, "--policy", o.policy)},
		Poststop:      []*api.Hook{hook(stagePoststop)},
	})
	return adj
}

// StopContainer cleans up after the container (in the background).
func (p *nriPlugin) StopContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	p.cleanupContainer("stop", pod, ctr)
	return nil, nil
}

// RemoveContainer cleans up after the container (in the background).
func (p *nriPlugin) RemoveContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.cleanupContainer("remove", pod, ctr)
	return nil
}

// StopPodSandbox cleans up after the pod's containers (in the background).
func (p *nriPlugin) StopPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.cleanupPod("stop", pod)
	return nil
}

// RemovePodSandbox cleans up after the pod's containers (in the background).
func (p *nriPlugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.cleanupPod("remove", pod)
	return nil
}

func (p *nriPlugin) cleanupContainer(event string, pod *api.PodSandbox, ctr *api.Container) {
	id := ctr.GetId()
	if id == "" {
		return
	}
	p.cleanup(id, event, podNetNS(pod), func(e *cachectl.Entry) bool { return e.Target.Container == id })
}

func (p *nriPlugin) cleanupPod(event string, pod *api.PodSandbox) {
	netns := podNetNS(pod)
	if netns == "" {
		return
	}
	id, err := cachectl.NSOfPath(netns)
	if err != nil {
		return // gone with its mounts; nothing to flush through it
	}
	p.cleanup("pod-"+pod.GetId(), event, netns, func(e *cachectl.Entry) bool { return e.Target.NetNS == id })
}

// cleanup runs the safety net in the background, bounded by
// nriCleanupTimeout. Nothing is done when the registry does not exist
// (nsmount never mounted anything here).
func (p *nriPlugin) cleanup(id, event, netns string, match func(*cachectl.Entry) bool) {
	if _, err := os.Stat(p.opts.stateDir); err != nil {
		return
	}
	p.cleanups.Add(1)
	go func() {
		defer p.cleanups.Done()
		ctx, cancel := context.WithTimeout(context.Background(), nriCleanupTimeout)
		defer cancel()
		h := p.reporter(id)
		defer h.close()
		cleanupEntries(ctx, h, event, netns, match)
	}()
}

// podNetNS returns the path of the pod's network namespace, "" if none.
func podNetNS(pod *api.PodSandbox) string {
	for _, ns := range pod.GetLinux().GetNamespaces() {
		if ns.GetType() == "network" {
			return ns.GetPath()
		}
	}
	return ""
}

// cleanupEntries forgets the registry entries that match and whose mount is
// gone, unmounts the matching mounts that still exist (through any process
// left in their mount namespace), and flushes stale NFS client state of
// their network namespaces and of netns (a path; "" for none). Everything
// it cannot do is a warning; a second call finds nothing to do.
func cleanupEntries(ctx context.Context, h *hook, event, netns string, match func(*cachectl.Entry) bool) {
	mgr, err := h.manager()
	if err != nil {
		h.printf("warning: %s: %v", event, err)
		return
	}
	nets := map[cachectl.NSID]bool{}
	if netns != "" {
		if id, err := cachectl.NSOfPath(netns); err == nil {
			nets[id] = true
		}
	}
	var live []cachectl.Entry
	gone, err := mgr.Reconcile()
	if err != nil {
		h.printf("warning: %s: reconcile registry: %v", event, err)
	}
	for _, g := range gone {
		if match(&g.Entry) {
			nets[g.Entry.Target.NetNS] = true
		}
	}
	err = mgr.Registry.View(func(s *cachectl.State) error {
		for _, e := range s.Entries {
			if match(&e) {
				live = append(live, e)
				nets[e.Target.NetNS] = true
			}
		}
		return nil
	})
	if err != nil {
		h.printf("warning: %s: read registry: %v", event, err)
	}
	if len(live) > 0 {
		unmountEntries(ctx, h, mgr, live)
	}
	for ns := range nets {
		rep, err := mgr.Flush(ctx, cachectl.FlushOptions{NetNS: &ns})
		switch {
		case err != nil:
			h.printf("warning: %s: flush netns %s: %v", event, ns, err)
		case len(rep.Remaining) > 0:
			h.printf("warning: %s: %d stale NFS superblock(s) remain in netns %s: %s", event, len(rep.Remaining), ns, rep.Remaining[0].Why)
		case len(rep.Flushed) > 0:
			h.printf("%s: flushed %d stale NFS superblock(s) in netns %s", event, len(rep.Flushed), ns)
		}
	}
}

// unmountEntries unmounts mounts that outlived the event that should have
// ended them (a mount namespace kept by another process).
func unmountEntries(ctx context.Context, h *hook, mgr *cachectl.Manager, entries []cachectl.Entry) {
	w, err := cachectl.Observe(mgr.Proc)
	if err != nil {
		h.printf("warning: %v", err)
		return
	}
	for _, e := range entries {
		pid, ok := w.PIDIn(&e)
		if !ok {
			h.printf("warning: %s at %s: no process left in mount namespace %s to unmount it through", e.Source, e.Mountpoint, e.Target.MountNS)
			continue
		}
		t, err := nsmount.OpenPID(pid)
		if err != nil {
			h.printf("warning: unmount %s: %v", e.Mountpoint, err)
			continue
		}
		err = mgr.Unmount(ctx, t, e.Mountpoint, nsmount.UnmountOptions{})
		if err != nil && !errors.Is(err, nsmount.ErrNotMounted) {
			err = mgr.Unmount(ctx, t, e.Mountpoint, nsmount.UnmountOptions{Lazy: true})
		}
		t.Close()
		if err != nil {
			h.printf("warning: unmount %s (mount namespace %s): %v", e.Mountpoint, e.Target.MountNS, err)
			continue
		}
		h.printf("unmounted %s at %s, left by the container", e.Source, e.Mountpoint)
	}
}

// nriLogger passes the NRI stub's warnings and errors on; its chatter
// (debug, info) is dropped.
type nriLogger struct{ p *nriPlugin }

func (nriLogger) Debugf(context.Context, string, ...any) {}
func (nriLogger) Infof(context.Context, string, ...any)  {}
func (l nriLogger) Warnf(_ context.Context, format string, args ...any) {
	l.p.printf("nri: warning: "+format, args...)
}
func (l nriLogger) Errorf(_ context.Context, format string, args ...any) {
	l.p.printf("nri: "+format, args...)
}

var _ nrilog.Logger = nriLogger{}
