package containerd_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/containerd"
	"github.com/nsmount/nsmount/testenv/ctrdenv"
	"github.com/nsmount/nsmount/testenv/labtest"
)

// startContainerd starts a private containerd (the real daemon, runc and
// shim) for the test.
func startContainerd(t *testing.T) *ctrdenv.Containerd {
	t.Helper()
	requireRoot(t)
	return labtest.StartContainerd(t, ctrdenv.ContainerdConfig{Prefix: "nsmB"})
}

// TestOpenContainer resolves a containerd container to its task's
// namespaces: the same netns and mntns inodes as /proc/PID/ns/*, not the
// host's, and Do really runs there.
func TestOpenContainer(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c := startContainerd(t)
	pid, err := c.RunContainer(ctx, "nsmB-open", ctrdenv.RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tgt, err := containerd.Open(ctx, containerd.Ref{Address: c.Address, Namespace: c.Namespace, ID: "nsmB-open"})
	if err != nil {
		t.Fatalf("OpenContainer: %v", err)
	}
	t.Logf("OpenContainer took %v", time.Since(start).Round(time.Microsecond))
	defer tgt.Close()
	if tgt.PID() != pid {
		t.Errorf("PID() = %d, want the task's %d", tgt.PID(), pid)
	}
	if got, want := tgt.NetNSInode(), nsInode(t, fmt.Sprintf("/proc/%d/ns/net", pid)); got != want {
		t.Errorf("netns inode %d, want the task's %d", got, want)
	}
	if got, want := tgt.MountNSInode(), nsInode(t, fmt.Sprintf("/proc/%d/ns/mnt", pid)); got != want {
		t.Errorf("mntns inode %d, want the task's %d", got, want)
	}
	if tgt.NetNSInode() == nsInode(t, "/proc/self/ns/net") || tgt.MountNSInode() == nsInode(t, "/proc/self/ns/mnt") {
		t.Error("target has the host's namespaces")
	}
	if want := fmt.Sprintf("container %s/nsmB-open (pid %d)", c.Namespace, pid); tgt.String() != want {
		t.Errorf("String() = %q, want %q", tgt.String(), want)
	}
	var inside string
	if err := tgt.Do(nsmount.NetNS, func() error {
		var err error
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if want := nsLink(t, fmt.Sprintf("/proc/%d/ns/net", pid)); inside != want {
		t.Errorf("Do ran in %s, want %s", inside, want)
	}
	// In the container's mount namespace, / is the busybox image.
	if err := tgt.Do(nsmount.MountNS, func() error {
		if _, err := os.Lstat("/bin/busybox"); err != nil {
			return err
		}
		if _, err := os.Stat("/usr/lib/os-release"); err == nil {
			return errors.New("/usr/lib/os-release (the host's) is visible")
		}
		return nil
	}); err != nil {
		t.Errorf("in the container's mntns: %v", err)
	}
}

// TestOpenContainerErrors: every way of naming no running container gives a
// one-line error of the documented class, within the timeout.
func TestOpenContainerErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := startContainerd(t)
	if _, err := c.RunContainer(ctx, "nsmB-run", ctrdenv.RunOptions{}); err != nil {
		t.Fatal(err)
	}
	// A container whose task has exited (not deleted) ...
	if _, err := c.RunContainer(ctx, "nsmB-stopped", ctrdenv.RunOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.StopTask(ctx, "nsmB-stopped"); err != nil {
		t.Fatal(err)
	}
	// ... and one with no task at all.
	if _, err := c.RunContainer(ctx, "nsmB-notask", ctrdenv.RunOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.StopTask(ctx, "nsmB-notask"); err != nil {
		t.Fatal(err)
	}
	if ct, err := c.Client().LoadContainer(ctx, "nsmB-notask"); err != nil {
		t.Fatal(err)
	} else if task, err := ct.Task(ctx, nil); err != nil {
		t.Fatal(err)
	} else if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "nsmB-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A socket nobody listens on any more: connection refused.
	refused := filepath.Join(dir, "refused.sock")
	l, err := net.Listen("unix", refused)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	// A socket that accepts and never answers.
	silent := filepath.Join(dir, "silent.sock")
	sl, err := net.Listen("unix", silent)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			conn, err := sl.Accept()
			if err != nil {
				return
			}
			held = append(held, conn)
		}
	}()

	for _, tc := range []struct {
		name  string
		ref   containerd.Ref
		class error
		want  string
	}{
		{"unknown id", containerd.Ref{ID: "nsmB-nope"}, nsmount.ErrTargetNotFound, `container "nsmB-nope" in namespace "` + c.Namespace + `" not found`},
		{"stopped task", containerd.Ref{ID: "nsmB-stopped"}, nsmount.ErrTargetNotFound, "is not running (task stopped with exit status 137)"},
		{"no task", containerd.Ref{ID: "nsmB-notask"}, nsmount.ErrTargetNotFound, "is not running (no task)"},
		{"wrong namespace", containerd.Ref{ID: "nsmB-run", Namespace: "nsmB-other"}, nsmount.ErrTargetNotFound, `container "nsmB-run" in namespace "nsmB-other" not found`},
		{"default namespace", containerd.Ref{ID: "nsmB-run", Namespace: "-"}, nsmount.ErrTargetNotFound, `in namespace "default" not found`},
		{"empty id", containerd.Ref{}, nsmount.ErrInvalidArgument, "empty container id"},
		{"missing socket", containerd.Ref{ID: "nsmB-run", Address: filepath.Join(dir, "none.sock")}, nsmount.ErrTargetNotFound, "none.sock does not exist"},
		{"not a socket", containerd.Ref{ID: "nsmB-run", Address: file}, nsmount.ErrInvalidArgument, "is not a socket"},
		{"refused", containerd.Ref{ID: "nsmB-run", Address: refused}, nsmount.ErrTargetNotFound, "connection refused"},
		{"silent", containerd.Ref{ID: "nsmB-run", Address: silent, Timeout: 500 * time.Millisecond}, nsmount.ErrTimeout, "did not answer about container \"nsmB-run\" in namespace \"" + c.Namespace + "\" within 500ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := tc.ref
			if ref.Address == "" {
				ref.Address = c.Address
			}
			switch ref.Namespace {
			case "":
				ref.Namespace = c.Namespace
			case "-":
				ref.Namespace = ""
			}
			start := time.Now()
			tgt, err := containerd.Open(ctx, ref)
			took := time.Since(start)
			if err == nil {
				tgt.Close()
				t.Fatal("OpenContainer succeeded")
			}
			t.Logf("%v (%v)", err, took.Round(time.Millisecond))
			if !errors.Is(err, tc.class) {
				t.Errorf("error %q is not %v", err, tc.class)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if took > 3*time.Second {
				t.Errorf("took %v", took)
			}
		})
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: starts containerd")
	}
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	id, err := nsmount.NSOfPath(path)
	if err != nil {
		t.Fatal(err)
	}
	return id.Ino
}

func nsLink(t *testing.T, path string) string {
	t.Helper()
	s, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
