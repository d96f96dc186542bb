package ctrdenv

// The daemon process: start (in its own process group, optionally in a
// netns), readiness, attaching to a running one, stop, and its log.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

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

// Client returns a client of the daemon whose default namespace is
// c.Namespace. Close closes it.
func (c *Containerd) Client() *containerd.Client { return c.client }

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
			return fmt.Errorf("containerd exited before serving (%v): %s", c.waitErr, c.LogTail(10))
		case <-ctx.Done():
			return fmt.Errorf("containerd did not create %s within %v: %s", c.Address, c.cfg.ReadyTimeout, c.LogTail(10))
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
			return fmt.Errorf("containerd not serving: %w: %s", err, c.LogTail(10))
		}
	case <-c.exited:
		return fmt.Errorf("containerd exited before serving (%v): %s", c.waitErr, c.LogTail(10))
	}
	c.Startup = time.Since(c.begin)
	return nil
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

func (c *Containerd) logPath() string { return filepath.Join(c.Dir, "containerd.log") }

// LogTail returns the last n lines of the daemon's log, joined with " | "
// when n is at most 10 (for an error message), else with newlines.
func (c *Containerd) LogTail(n int) string {
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
