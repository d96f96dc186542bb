package ctrdenv

// Close: everything a daemon and its containers leave on the host
// (containers, shims, shim sockets, cgroups, mounts, the directory) goes.

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

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

// Closed reports whether Close has been called (the directory, with the
// daemon's log, is then gone).
func (c *Containerd) Closed() bool {
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
	deadline := time.Now().Add(cgroupBusyWait)
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
			if err := rmdirCgroup(d, deadline); err != nil {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// cgroupBusyWait bounds how long Close retries a busy cgroup.
const cgroupBusyWait = 5 * time.Second

// rmdirCgroup removes cgroup directory d (gone already is fine), retrying
// while it is busy until deadline: processes that killShims killed leave
// their cgroup only once reaped, and orphans are reaped by init, in its
// own time (seconds on a loaded machine).
func rmdirCgroup(d string, deadline time.Time) error {
	for {
		err := unix.Rmdir(d)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			return nil
		case !errors.Is(err, unix.EBUSY) || time.Now().After(deadline):
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
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
