package testenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// A real containerd for tests: the Debian containerd daemon (1.6 on Debian
// 12; the v2 client also talks to 1.7 and 2.x) with a private configuration,
// so that it shares nothing with a system containerd: root, state, sockets,
// runc root, logs and the image all live in one short temporary directory.
// Two things cannot be moved there: each task's shim listens on
// /run/containerd/s/<sha256>, and runc puts each container in a cgroup.
// Close removes both for what it started.

// ContainerdConfig configures a private containerd. The zero value uses the
// binaries found in $PATH.
type ContainerdConfig struct {
	// Containerd, Shim and Runc are the paths of the containerd,
	// containerd-shim-runc-v2 and runc binaries; "" looks each up in $PATH.
	// The shim is found by the daemon through its $PATH, so its directory is
	// put first there.
	Containerd, Shim, Runc string
	// Busybox is a static busybox, the whole image; "" looks "busybox" up in
	// $PATH.
	Busybox string
	// Prefix starts the name of the temporary directory (under TempRoot),
	// the containerd namespace and the cgroup parent; "" means "nsmount-ctrd".
	// Keep it short: the daemon's socket path must stay under 108 bytes.
	Prefix string
	// TempRoot is where the temporary directory is made; "" means /tmp.
	TempRoot string
	// Snapshotter is the snapshotter that unpacks the image and makes
	// container root filesystems; "" means "native" (plain copies: works on
	// any filesystem, and the image is one 2 MB binary).
	Snapshotter string
	// ReadyTimeout bounds the wait for the daemon to serve; 0 means 20s.
	ReadyTimeout time.Duration
	// NetNS is the path of a network namespace to run the daemon in, and
	// with it its shims, hooks and CNI plugins (a bridge that CNI makes is
	// made there); "" means the caller's.
	NetNS string
	// CRI, if set, enables the CRI plugin (and NRI). It needs a containerd
	// 2.x daemon (see Containerd2): the configuration is then version 3.
	CRI *CRIConfig
}

// CRIConfig enables containerd's CRI plugin with private directories.
// The pod sandbox ("pause") image is a busybox image whose command sleeps
// forever; it and the busybox image are imported into the k8s.io
// namespace at start, so nothing is pulled.
type CRIConfig struct {
	// CNIBinDir and CNIConfDir are the CNI plugin directory (bridge,
	// host-local, loopback, ...) and the network configuration directory.
	CNIBinDir, CNIConfDir string
	// NRISocket, if set, enables NRI with its socket at this path; plugins
	// connect to it. Pre-registered plugins are looked for in Dir/nri.
	NRISocket string
}

// CRINamespace is the containerd namespace of CRI's pods and containers.
const CRINamespace = "k8s.io"

// PauseImageName is the pod sandbox image of a CRI-enabled Containerd:
// busybox running "sleep infinity".
const PauseImageName = "nsmount.test/pause:latest"

// Containerd is a running private containerd daemon and the containers
// started through it. Close stops everything.
type Containerd struct {
	// Address is the daemon's gRPC socket.
	Address string
	// Namespace is the containerd namespace that RunContainer uses.
	Namespace string
	// Dir is the temporary directory that holds everything else.
	Dir string
	// Startup is how long the daemon took to serve, from exec.
	Startup time.Duration
	begin   time.Time // exec of the daemon

	cfg      ContainerdConfig
	client   *containerd.Client
	cmd      *exec.Cmd
	exited   chan struct{} // closed when the daemon has been reaped
	waitErr  error         // the daemon's exit, valid once exited is closed
	runcRoot string
	cgroup   string // cgroup parent of the containers, e.g. "/nsmount-ctrd-123"

	mu      sync.Mutex
	image   containerd.Image
	ids     map[string]string // container ID -> namespace, for Close
	closed  bool
	closeMu sync.Mutex
}

// StartContainerd starts a private containerd for the test and stops it,
// with every container, task and shim it ran, when the test ends. The test
// fails (it never skips) when containerd cannot start; it needs root.
func StartContainerd(t testing.TB, cfg ContainerdConfig) *Containerd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := NewContainerd(ctx, cfg)
	if err != nil {
		t.Fatalf("containerd for tests cannot start (install containerd and runc: testenv/install-deps.sh; needs root): %v", err)
	}
	t.Logf("containerd ready in %v at %s", c.Startup.Round(time.Millisecond), c.Address)
	t.Cleanup(func() {
		if t.Failed() && !c.isClosed() {
			t.Logf("containerd log:\n%s", c.logTail(60))
		}
		if err := c.Close(); err != nil {
			t.Errorf("stopping containerd: %v", err)
		}
	})
	return c
}

// NewContainerd starts a private containerd and waits until it serves. The
// caller must Close it.
func NewContainerd(ctx context.Context, cfg ContainerdConfig) (_ *Containerd, retErr error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("containerd needs root")
	}
	if err := findBinaries(program{&cfg.Containerd, "containerd"}, program{&cfg.Shim, "containerd-shim-runc-v2"},
		program{&cfg.Runc, "runc"}, program{&cfg.Busybox, "busybox"}); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "nsmount-ctrd"
	}
	if cfg.TempRoot == "" {
		cfg.TempRoot = "/tmp"
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "native"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 20 * time.Second
	}
	dir, err := os.MkdirTemp(cfg.TempRoot, cfg.Prefix+"-")
	if err != nil {
		return nil, err
	}
	base := filepath.Base(dir)
	c := &Containerd{
		Address:   filepath.Join(dir, "c.sock"),
		Namespace: base,
		Dir:       dir,
		cfg:       cfg,
		runcRoot:  filepath.Join(dir, "runc"),
		cgroup:    "/" + base,
		exited:    make(chan struct{}),
		ids:       map[string]string{},
	}
	defer func() {
		if retErr != nil {
			if err := c.Close(); err != nil {
				retErr = fmt.Errorf("%w (and cleaning up: %v)", retErr, err)
			}
		}
	}()
	if cfg.CRI != nil {
		for _, d := range []string{"nri/plugins", "nri/conf.d", "s"} {
			if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
				return nil, err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(c.config()), 0o600); err != nil {
		return nil, err
	}
	if err := c.start(); err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, err
	}
	if cfg.CRI != nil {
		if err := c.importCRIImages(ctx); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// program is a binary of ContainerdConfig: its path (empty: look up name).
type program struct {
	path *string
	name string
}

// findBinaries resolves each program's path, or its name when the path is
// empty, in $PATH.
func findBinaries(progs ...program) error {
	for _, b := range progs {
		if *b.path == "" {
			*b.path = b.name
		}
		p, err := exec.LookPath(*b.path)
		if err != nil {
			return fmt.Errorf("find %s: %w", b.name, err)
		}
		*b.path = p
	}
	return nil
}

// AttachContainerd connects to a containerd daemon started by someone else
// (a lab script in the guest, say) at address, to run containers in
// namespace ns the way RunContainer does: runc state under dir/runc,
// container logs in dir/ID.log, cgroups under /ns. Other fields of cfg
// apply as in NewContainerd; Containerd is not used. The caller must not
// Close it unless the containers it ran should go: Close removes them (the
// daemon stays). Each container's files stay in dir until RemoveContainer.
func AttachContainerd(ctx context.Context, address, ns, dir string, cfg ContainerdConfig) (*Containerd, error) {
	if err := findBinaries(program{&cfg.Runc, "runc"}, program{&cfg.Busybox, "busybox"}); err != nil {
		return nil, err
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "native"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 20 * time.Second
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &Containerd{
		Address:   address,
		Namespace: ns,
		Dir:       dir,
		cfg:       cfg,
		runcRoot:  filepath.Join(dir, "runc"),
		cgroup:    "/" + ns,
		exited:    make(chan struct{}),
		ids:       map[string]string{},
	}
	client, err := containerd.New(address, containerd.WithDefaultNamespace(ns), containerd.WithTimeout(cfg.ReadyTimeout))
	if err != nil {
		return nil, fmt.Errorf("containerd client of %s: %w", address, err)
	}
	if ok, err := client.IsServing(ctx); err != nil || !ok {
		client.Close()
		return nil, fmt.Errorf("containerd at %s not serving: %v", address, err)
	}
	c.client = client
	return c, nil
}

// RemoveContainer kills the container's task, deletes it (runc then runs
// the poststop hooks) and deletes the container with its snapshot.
func (c *Containerd) RemoveContainer(ctx context.Context, id string) error {
	container, err := c.client.LoadContainer(ctx, id)
	if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	if err := c.removeContainer(ctx, container); err != nil {
		return err
	}
	os.Remove(filepath.Join(c.Dir, id+".log"))
	return nil
}

// config is the daemon's configuration: version 2, which containerd 1.6,
// 1.7 and 2.x read. Plugins that would touch host paths (/opt/containerd) or
// are not needed are disabled; CRI above all.
func (c *Containerd) config() string {
	if c.cfg.CRI != nil {
		return c.criConfig()
	}
	q := strconv.Quote
	return fmt.Sprintf(`version = 2
root = %s
state = %s
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = %s

[ttrpc]
  address = %s

[debug]
  level = "info"
`, q(filepath.Join(c.Dir, "root")), q(filepath.Join(c.Dir, "state")), q(c.Address), q(c.Address+".ttrpc"))
}

// criConfig is the configuration of a containerd 2.x daemon with CRI and
// NRI: version 3, every path under c.Dir (pod netns mounts and shim sockets
// too), the native snapshotter, runc with its private root, the pause
// stand-in as sandbox image, and CNI from the configured directories.
func (c *Containerd) criConfig() string {
	q := strconv.Quote
	cri := c.cfg.CRI
	nri := "  disable = true\n"
	if cri.NRISocket != "" {
		nri = fmt.Sprintf(`  disable = false
  socket_path = %s
  plugin_path = %s
  plugin_config_path = %s
`, q(cri.NRISocket), q(filepath.Join(c.Dir, "nri", "plugins")), q(filepath.Join(c.Dir, "nri", "conf.d")))
	}
	return fmt.Sprintf(`version = 3
root = %s
state = %s
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  "io.containerd.image-verifier.v1.bindir",
]

[grpc]
  address = %s

[ttrpc]
  address = %s

[debug]
  level = "info"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = %s
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %s

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      snapshotter = %s
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = %s
        Root = %s
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%s]
    conf_dir = %s
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = %s

[plugins."io.containerd.nri.v1.nri"]
%s`, q(filepath.Join(c.Dir, "root")), q(filepath.Join(c.Dir, "state")), q(c.Address), q(c.Address+".ttrpc"),
		q(c.cfg.Snapshotter), q(PauseImageName), q(c.cfg.Snapshotter), q(c.cfg.Runc), q(c.runcRoot),
		q(cri.CNIBinDir), q(cri.CNIConfDir), q(filepath.Join(c.Dir, "s")), nri)
}

// importCRIImages imports the pause stand-in and the busybox image into
// the CRI namespace and unpacks them.
func (c *Containerd) importCRIImages(ctx context.Context) error {
	return ImportCRIImages(ctx, c.client, c.cfg.Busybox, c.cfg.Snapshotter)
}

// ImportCRIImages imports, through client, the images that CRI pods need
// into the CRI namespace, and unpacks them with snapshotter: PauseImageName
// (busybox running "sleep infinity", the sandbox image) and
// BusyboxImageName, both built from the static busybox.
func ImportCRIImages(ctx context.Context, client *containerd.Client, busybox, snapshotter string) error {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	for _, im := range []struct {
		name string
		cmd  []string
	}{{PauseImageName, []string{"sleep", "infinity"}}, {BusyboxImageName, []string{"sh"}}} {
		var buf bytes.Buffer
		if err := WriteBusyboxImageCmd(&buf, busybox, im.name, im.cmd); err != nil {
			return err
		}
		imgs, err := client.Import(ctx, &buf)
		if err != nil {
			return fmt.Errorf("import %s: %w", im.name, err)
		}
		if len(imgs) != 1 {
			return fmt.Errorf("import %s: got %d images, want 1", im.name, len(imgs))
		}
		if err := containerd.NewImage(client, imgs[0]).Unpack(ctx, snapshotter); err != nil {
			return fmt.Errorf("unpack %s with %s: %w", im.name, snapshotter, err)
		}
	}
	return nil
}

// CgroupParent is the cgroup under which containers must be put (a CRI
// pod's cgroup_parent) so that Close removes their cgroups.
func (c *Containerd) CgroupParent() string { return c.cgroup }

// start execs the daemon in its own process group. The daemon gets SIGKILL
// if the test process dies (Pdeathsig), so the thread that forks it stays
// locked until the daemon is reaped.
func (c *Containerd) start() error {
	logf, err := os.Create(c.logPath())
	if err != nil {
		return err
	}
	cmd := exec.Command(c.cfg.Containerd, "--config", filepath.Join(c.Dir, "config.toml"))
	cmd.Env = []string{
		"PATH=" + filepath.Dir(c.cfg.Shim) + ":" + filepath.Dir(c.cfg.Runc) + ":/usr/sbin:/usr/bin:/sbin:/bin",
		"TMPDIR=" + c.Dir,
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var netns *os.File
	if c.cfg.NetNS != "" {
		if netns, err = os.Open(c.cfg.NetNS); err != nil {
			logf.Close()
			return fmt.Errorf("open netns for containerd: %w", err)
		}
		defer netns.Close()
	}
	started := make(chan error, 1)
	c.begin = time.Now()
	go func() {
		defer close(c.exited)
		defer logf.Close()
		runtime.LockOSThread()
		if netns != nil {
			// The thread stays locked: it ends with the goroutine rather
			// than go back to the pool in another netns.
			if err := unix.Setns(int(netns.Fd()), unix.CLONE_NEWNET); err != nil {
				started <- fmt.Errorf("enter netns %s: %w", c.cfg.NetNS, err)
				c.waitErr = err
				return
			}
		} else {
			defer runtime.UnlockOSThread()
		}
		if err := cmd.Start(); err != nil {
			started <- err
			c.waitErr = err
			return
		}
		started <- nil
		c.waitErr = cmd.Wait()
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start %s: %w", c.cfg.Containerd, err)
	}

	c.cmd = cmd
	return nil
}

// waitReady waits until the daemon answers its health check, or exits, or
// the ready timeout passes.
func (c *Containerd) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ReadyTimeout)
	defer cancel()
	for {
		if _, err := os.Stat(c.Address); err == nil {
			break
		}
		select {
		case <-c.exited:
			return fmt.Errorf("containerd exited before serving (%v): %s", c.waitErr, c.logTail(10))
		case <-ctx.Done():
			return fmt.Errorf("containerd did not create %s within %v: %s", c.Address, c.cfg.ReadyTimeout, c.logTail(10))
		case <-time.After(5 * time.Millisecond):
		}
	}
	client, err := containerd.New(c.Address, containerd.WithDefaultNamespace(c.Namespace), containerd.WithTimeout(c.cfg.ReadyTimeout))
	if err != nil {
		return fmt.Errorf("containerd client: %w", err)
	}
	c.client = client
	serving := make(chan error, 1)
	go func() {
		ok, err := client.IsServing(ctx)
		if err == nil && !ok {
			err = errors.New("health check: not serving")
		}
		serving <- err
	}()
	select {
	case err := <-serving:
		if err != nil {
			return fmt.Errorf("containerd not serving: %w: %s", err, c.logTail(10))
		}
	case <-c.exited:
		return fmt.Errorf("containerd exited before serving (%v): %s", c.waitErr, c.logTail(10))
	}
	c.Startup = time.Since(c.begin)
	return nil
}

// Client returns a client of the daemon whose default namespace is
// c.Namespace. Close closes it.
func (c *Containerd) Client() *containerd.Client { return c.client }

// BusyboxImageName is the name under which BusyboxImage imports the image.
const BusyboxImageName = "nsmount.test/busybox:latest"

// BusyboxImage returns the busybox image, built from cfg.Busybox and
// imported (no registry) and unpacked on first use.
func (c *Containerd) BusyboxImage(ctx context.Context) (containerd.Image, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.image != nil {
		return c.image, nil
	}
	var buf bytes.Buffer
	if err := WriteBusyboxImage(&buf, c.cfg.Busybox, BusyboxImageName); err != nil {
		return nil, err
	}
	imgs, err := c.client.Import(ctx, &buf)
	if err != nil {
		return nil, fmt.Errorf("import busybox image: %w", err)
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("import busybox image: got %d images, want 1", len(imgs))
	}
	img := containerd.NewImage(c.client, imgs[0])
	if err := img.Unpack(ctx, c.cfg.Snapshotter); err != nil {
		return nil, fmt.Errorf("unpack busybox image with %s: %w", c.cfg.Snapshotter, err)
	}
	c.image = img
	return img, nil
}

// RunOptions shape a container made by RunContainer.
type RunOptions struct {
	// NetNS is the path of a network namespace to join (e.g.
	// /run/netns/NAME, made and given interfaces by the test); "" gives the
	// container a new, empty one.
	NetNS string
	// Args is the container's command; nil means "sleep 3600" (busybox).
	Args []string
	// SpecOpts are applied after the defaults (e.g. hooks, annotations).
	SpecOpts []oci.SpecOpts
	// Labels are the container's containerd labels.
	Labels map[string]string
}

// RunContainer creates a container with the busybox image, in c.Namespace,
// and starts its task in new PID, IPC, UTS, mount and network namespaces
// (or the network namespace o.NetNS). It returns the task's PID, as seen
// from the host. Close kills and removes the container.
func (c *Containerd) RunContainer(ctx context.Context, id string, o RunOptions) (_ int, retErr error) {
	img, err := c.BusyboxImage(ctx)
	if err != nil {
		return 0, err
	}
	args := o.Args
	if args == nil {
		args = []string{"sleep", "3600"}
	}
	specOpts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithProcessArgs(args...),
		oci.WithHostname(id),
		oci.WithCgroup(c.cgroup + "/" + id),
	}
	if o.NetNS != "" {
		specOpts = append(specOpts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: o.NetNS}))
	}
	specOpts = append(specOpts, o.SpecOpts...)
	c.mu.Lock()
	c.ids[id] = c.Namespace
	c.mu.Unlock()
	container, err := c.client.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithSnapshotter(c.cfg.Snapshotter),
		containerd.WithNewSnapshot(id, img),
		containerd.WithRuntime("io.containerd.runc.v2", &options.Options{BinaryName: c.cfg.Runc, Root: c.runcRoot}),
		containerd.WithContainerLabels(o.Labels),
		containerd.WithNewSpec(specOpts...),
	)
	if err != nil {
		return 0, fmt.Errorf("create container %s: %w", id, err)
	}
	defer func() {
		if retErr != nil {
			c.removeContainer(ctx, container)
		}
	}()
	task, err := container.NewTask(ctx, cio.LogFile(filepath.Join(c.Dir, id+".log")))
	if err != nil {
		return 0, fmt.Errorf("create task %s: %w", id, err)
	}
	if err := task.Start(ctx); err != nil {
		return 0, fmt.Errorf("start task %s: %w", id, err)
	}
	return int(task.Pid()), nil
}

// StopTask kills the container's task with SIGKILL and waits until it has
// exited, leaving the stopped task in place (as after a container exits).
func (c *Containerd) StopTask(ctx context.Context, id string) error {
	container, err := c.client.LoadContainer(ctx, id)
	if err != nil {
		return err
	}
	task, err := container.Task(ctx, nil)
	if err != nil {
		return err
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		return err
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill task %s: %w", id, err)
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("task %s did not exit: %w", id, ctx.Err())
	}
}

// removeContainer kills and deletes the container's task and deletes the
// container with its snapshot, best effort.
func (c *Containerd) removeContainer(ctx context.Context, container containerd.Container) error {
	var errs []error
	if task, err := container.Task(ctx, nil); err == nil {
		if exited, err := task.Wait(ctx); err == nil {
			task.Kill(ctx, syscall.SIGKILL)
			select {
			case <-exited:
			case <-ctx.Done():
			}
		}
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
			errs = append(errs, fmt.Errorf("delete task %s: %w", container.ID(), err))
		}
	}
	if err := container.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		errs = append(errs, fmt.Errorf("delete container %s: %w", container.ID(), err))
	}
	return errors.Join(errs...)
}

// Close removes every container of every namespace through the daemon, stops
// the daemon, kills any shim of this daemon (and its processes) that is left,
// removes their sockets and cgroups, unmounts everything under c.Dir and
// removes it. It returns what it could not clean. It is safe to call more
// than once.
func (c *Containerd) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	sockets := c.shimSockets()
	if c.client != nil {
		if err := c.removeAll(ctx); err != nil {
			errs = append(errs, err)
		}
		c.client.Close()
	}
	if c.cmd != nil {
		if err := c.stopDaemon(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.killShims(); err != nil {
		errs = append(errs, err)
	}
	for _, s := range sockets {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := c.removeCgroups(); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Containerd) isClosed() bool {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	return c.closed
}

// removeAll removes the containers of every namespace of the daemon.
func (c *Containerd) removeAll(ctx context.Context) error {
	nss, err := c.client.NamespaceService().List(ctx)
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	var errs []error
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		containers, err := c.client.Containers(nctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("list containers of %s: %w", ns, err))
			continue
		}
		for _, ct := range containers {
			if err := c.removeContainer(nctx, ct); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// shimSockets returns the shim socket paths of the tasks this daemon runs:
// the address file in each task's bundle, and for the containers that
// RunContainer made also the path containerd derives from address,
// namespace and ID (in case the bundle is gone).
func (c *Containerd) shimSockets() []string {
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		p = strings.TrimPrefix(strings.TrimSpace(p), "unix://")
		if strings.HasPrefix(p, "/") && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	bundles, _ := filepath.Glob(filepath.Join(c.Dir, "state", "io.containerd.runtime.v2.task", "*", "*", "address"))
	for _, b := range bundles {
		if text, err := os.ReadFile(b); err == nil {
			add(string(text))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, ns := range c.ids {
		add(ShimSocket(c.Address, ns, id))
	}
	return out
}

// ShimSocket returns the socket path on which containerd's runc shim for
// task id of namespace ns, started by the daemon at address, listens:
// /run/containerd/s/ followed by sha256(address/ns/id), as containerd 1.6 to
// 2.x compute it.
func ShimSocket(address, ns, id string) string {
	return fmt.Sprintf("/run/containerd/s/%x", sha256.Sum256([]byte(filepath.Join(address, ns, id))))
}

// stopDaemon stops the daemon: SIGTERM, then SIGKILL to its process group.
func (c *Containerd) stopDaemon() error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-c.exited:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("containerd %d did not exit after SIGKILL", c.cmd.Process.Pid)
	}
}

// killShims kills the shims still running for this daemon (found by the
// -address argument, which names this daemon's socket), after the processes
// they supervise.
func (c *Containerd) killShims() error {
	shims := findProcs(func(args []string) bool {
		if len(args) == 0 || filepath.Base(args[0]) != filepath.Base(c.cfg.Shim) {
			return false
		}
		for i := range args[:len(args)-1] {
			if args[i] == "-address" && args[i+1] == c.Address {
				return true
			}
		}
		return false
	})
	if len(shims) == 0 {
		return nil
	}
	var killed []int
	for _, pid := range shims {
		for _, child := range childrenOf(pid) {
			syscall.Kill(child, syscall.SIGKILL)
			killed = append(killed, child)
		}
		syscall.Kill(pid, syscall.SIGKILL)
		killed = append(killed, pid)
	}
	// Shims run as children of init (they daemonize), and so do the killed
	// container processes once their shim is gone: wait until each is dead
	// (a zombie counts; init reaps it).
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range killed {
		for ProcessAlive(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d of a shim of %s did not exit", pid, c.Address)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return fmt.Errorf("killed %d shim(s) that outlived containerd, and their processes: %v", len(shims), killed)
}

// removeCgroups removes the containers' cgroups (runc removes them when it
// deletes a container; this is for containers it never deleted) and their
// parent, in every hierarchy.
func (c *Containerd) removeCgroups() error {
	parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", c.cgroup))
	if p := filepath.Join("/sys/fs/cgroup", c.cgroup); dirExists(p) {
		parents = append(parents, p)
	}
	var errs []error
	for _, p := range parents {
		var dirs []string
		filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		// Deepest first.
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	var errs []error
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m.Mountpoint, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Containerd) logPath() string { return filepath.Join(c.Dir, "containerd.log") }

// logTail returns the last n lines of the daemon's log, joined with " | "
// when n is small enough for an error message.
func (c *Containerd) logTail(n int) string {
	data, err := os.ReadFile(c.logPath())
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if n <= 10 {
		return strings.Join(lines, " | ")
	}
	return strings.Join(lines, "\n")
}

// findProcs returns the PIDs of processes whose argv matches.
func findProcs(match func(args []string) bool) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// childrenOf returns the PIDs whose parent is pid.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if ppid, _ := statusField(filepath.Join("/proc", e.Name(), "status"), "PPid"); ppid == strconv.Itoa(pid) {
			p, _ := strconv.Atoi(e.Name())
			out = append(out, p)
		}
	}
	return out
}

// ProcessAlive reports whether process pid exists and is not a zombie.
func ProcessAlive(pid int) bool {
	st, err := statusField(fmt.Sprintf("/proc/%d/status", pid), "State")
	return err == nil && !strings.HasPrefix(st, "Z")
}

// statusField returns a field of a /proc/PID/status file.
func statusField(path, key string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && k == key {
			return strings.TrimSpace(v), nil
		}
	}
	return "", io.EOF
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
