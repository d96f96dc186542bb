package ctrdenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
)

// TestContainerd runs a container through a private containerd and checks
// that Close leaves nothing behind: no daemon, shim or container process,
// shim socket, cgroup, mount or directory.
func TestContainerd(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := NewContainerd(ctx, ContainerdConfig{Prefix: "nsmB"})
	if err != nil {
		t.Fatalf("containerd for tests cannot start (install containerd and runc: testenv/install-deps.sh; needs root): %v", err)
	}
	t.Logf("containerd ready in %v", c.Startup.Round(time.Millisecond))
	closed := false
	t.Cleanup(func() {
		if !closed {
			c.Close()
		}
	})
	daemon := c.cmd.Process.Pid

	start := time.Now()
	pid, err := c.RunContainer(ctx, "nsmB-c1", RunOptions{})
	if err != nil {
		t.Fatalf("RunContainer: %v\n%s", err, c.LogTail(40))
	}
	t.Logf("image import and first container in %v", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	pid2, err := c.RunContainer(ctx, "nsmB-c2", RunOptions{Args: []string{"sh", "-c", "exec sleep 3600"}})
	if err != nil {
		t.Fatalf("RunContainer: %v", err)
	}
	t.Logf("second container in %v", time.Since(start).Round(time.Millisecond))
	for _, p := range []int{pid, pid2} {
		// The second one runs sh until it has exec'd sleep.
		var comm []byte
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if comm, _ = os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); string(comm) == "sleep\n" {
				break
			}
		}
		if strings.TrimSpace(string(comm)) != "sleep" {
			t.Errorf("container pid %d runs %q, want sleep", p, comm)
		}
		for _, ns := range []string{"net", "mnt", "pid", "uts"} {
			if link(t, fmt.Sprintf("/proc/%d/ns/%s", p, ns)) == link(t, "/proc/self/ns/"+ns) {
				t.Errorf("container pid %d shares the host's %s namespace", p, ns)
			}
		}
	}
	if link(t, fmt.Sprintf("/proc/%d/ns/net", pid)) == link(t, fmt.Sprintf("/proc/%d/ns/net", pid2)) {
		t.Error("two containers share a netns")
	}
	// One stopped task stays stopped, not deleted, at Close.
	if err := c.StopTask(ctx, "nsmB-c2"); err != nil {
		t.Fatalf("StopTask: %v", err)
	}
	sockets := c.shimSockets()
	if len(sockets) == 0 {
		t.Error("no shim sockets found for the running tasks")
	}
	for _, s := range sockets {
		if _, err := os.Stat(s); err != nil {
			t.Errorf("shim socket: %v", err)
		}
	}
	if s := ShimSocket(c.Address, c.Namespace, "nsmB-c1"); !contains(sockets, s) {
		t.Errorf("ShimSocket = %s, not among the bundles' addresses %v", s, sockets)
	}

	start = time.Now()
	closed = true
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	t.Logf("Close took %v", time.Since(start).Round(time.Millisecond))
	for _, p := range []int{daemon, pid, pid2} {
		if ProcessAlive(p) {
			t.Errorf("process %d still exists after Close", p)
		}
	}
	if procs := findProcs(func(args []string) bool { return strings.Contains(strings.Join(args, " "), c.Address) }); len(procs) != 0 {
		t.Errorf("processes naming %s after Close: %v", c.Address, procs)
	}
	for _, s := range sockets {
		if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("shim socket %s after Close: %v", s, err)
		}
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after Close: %v", c.Dir, err)
	}
	if m, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(c.Dir)); len(m) != 0 {
		t.Errorf("mounts under %s after Close: %v", c.Dir, m)
	}
	if cg, _ := filepath.Glob("/sys/fs/cgroup/*" + c.cgroup); len(cg) != 0 {
		t.Errorf("cgroups after Close: %v", cg)
	}
	if cg := filepath.Join("/sys/fs/cgroup", c.cgroup); dirExists(cg) {
		t.Errorf("cgroup after Close: %v", cg)
	}
}

// TestContainerdCrashCleanup: when the daemon dies with tasks running, Close
// still kills their shims and processes and removes their sockets, mounts
// and cgroups, and says so.
func TestContainerdCrashCleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c := startContainerd(t, ContainerdConfig{Prefix: "nsmB"})
	pid, err := c.RunContainer(ctx, "nsmB-crash", RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sockets := c.shimSockets()
	c.cmd.Process.Kill()
	<-c.exited
	err = c.Close()
	if err == nil || !strings.Contains(err.Error(), "outlived containerd") {
		t.Errorf("Close after a crash: %v, want an error naming the shims it killed", err)
	}
	t.Logf("Close: %v", err)
	if ProcessAlive(pid) {
		t.Errorf("container process %d still exists", pid)
	}
	if procs := findProcs(func(args []string) bool { return strings.Contains(strings.Join(args, " "), c.Address) }); len(procs) != 0 {
		t.Errorf("processes naming %s after Close: %v", c.Address, procs)
	}
	for _, s := range sockets {
		if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("shim socket %s after Close: %v", s, err)
		}
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after Close: %v", c.Dir, err)
	}
	if cg, _ := filepath.Glob("/sys/fs/cgroup/*" + c.cgroup); len(cg) != 0 {
		t.Errorf("cgroups after Close: %v", cg)
	}
}

// TestContainerdErrors: a broken setup fails with its reason and leaves no
// directory behind.
func TestContainerdErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  ContainerdConfig
		want string
	}{
		{"missing binary", ContainerdConfig{Containerd: "/nonexistent/containerd"}, "find containerd"},
		{"daemon exits", ContainerdConfig{Containerd: "/bin/false"}, "exited before serving"},
		{"dynamic busybox", ContainerdConfig{Busybox: "/bin/sh"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			before, _ := filepath.Glob("/tmp/nsmB-[0-9]*")
			tc.cfg.Prefix = "nsmB"
			c, err := NewContainerd(ctx, tc.cfg)
			if tc.want == "" {
				// Starts; the image cannot be built.
				if err != nil {
					t.Fatal(err)
				}
				_, err = c.RunContainer(ctx, "nsmB-x", RunOptions{})
				tc.want = "dynamically linked"
				if cerr := c.Close(); cerr != nil {
					t.Errorf("Close: %v", cerr)
				}
			} else if c != nil {
				c.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			t.Logf("error: %v", err)
			if after, _ := filepath.Glob("/tmp/nsmB-[0-9]*"); len(after) > len(before) {
				t.Errorf("left behind: %v (before %v)", after, before)
			}
		})
	}
}

// startContainerd starts a daemon that the test's cleanup closes (the
// testing.T binding, labtest.StartContainerd, imports this package).
func startContainerd(t *testing.T, cfg ContainerdConfig) *Containerd {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := NewContainerd(ctx, cfg)
	if err != nil {
		t.Fatalf("containerd for tests cannot start (install containerd and runc: testenv/install-deps.sh; needs root): %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func link(t *testing.T, path string) string {
	t.Helper()
	s, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
