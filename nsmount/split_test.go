package nsmount_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
)

// A target opened with OpenPathsWithResolver resolves names with the
// resolver process's files and finds mount points in the other mount
// namespace (here the test's own, standing in for the host's).
func TestOpenPathsWithResolver(t *testing.T) {
	requireRoot(t)
	pid := startTarget(t)
	podNetNS := fmt.Sprintf("/proc/%d/ns/net", pid)
	hostMntNS := "/proc/self/ns/mnt"

	// The pod's /etc/hosts knows a name the host's does not: bind-mounted
	// over /etc/hosts in the target process's mount namespace only.
	hosts := filepath.Join(tempDir(t), "hosts")
	if err := os.WriteFile(hosts, []byte("198.51.100.7 nsmk-split.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pod, err := nsmount.OpenPID(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	if err := pod.Do(nsmount.MountNS, func() error { return unix.Mount(hosts, "/etc/hosts", "", unix.MS_BIND, "") }); err != nil {
		t.Fatalf("bind %s over /etc/hosts in the target: %v", hosts, err)
	}
	// A directory only the target's mount namespace has.
	hostDir := tempDir(t)
	mountTmpfsIn(t, pod, hostDir)
	if err := pod.Do(nsmount.MountNS, func() error { return os.Mkdir(filepath.Join(hostDir, "only-in-pod"), 0o755) }); err != nil {
		t.Fatal(err)
	}

	src := nsmount.Source{Server: "nsmk-split.test", Export: "/export"}
	want := netip.MustParseAddr("198.51.100.7")
	tests := []struct {
		name        string
		resolverPID int
		target      string
		wantResolve bool
		wantErr     error
	}{
		{"names from the pod, target on the host", pid, hostDir, true, nsmount.ErrUnreachable},
		{"names from the host", 0, hostDir, false, nil},
		{"target only in the pod's mount namespace", pid, filepath.Join(hostDir, "only-in-pod"), false, nsmount.ErrUnsafePath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tgt, err := nsmount.OpenPathsWithResolver(podNetNS, hostMntNS, tt.resolverPID)
			if err != nil {
				t.Fatalf("OpenPathsWithResolver: %v", err)
			}
			defer tgt.Close()
			if tgt.PID() != 0 {
				t.Errorf("PID = %d, want 0", tgt.PID())
			}
			if got, want := tgt.NetNSInode(), nsInode(t, podNetNS); got != want {
				t.Errorf("NetNSInode = %d, want the pod's %d", got, want)
			}
			if got, want := tgt.MountNSInode(), nsInode(t, hostMntNS); got != want {
				t.Errorf("MountNSInode = %d, want the host's %d", got, want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			plan, err := nsmount.Explain(ctx, tgt, nsmount.Request{Source: src, Target: tt.target, ProbeTimeout: time.Second})
			if err == nil {
				t.Fatalf("Explain succeeded with no route to anything: %+v", plan)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Explain: %v, want %v", err, tt.wantErr)
			}
			resolved := plan.Resolution != nil && slices.Contains(plan.Resolution.Addrs, want)
			if resolved != tt.wantResolve {
				t.Errorf("resolved %s to %s: %v, want %v (plan %+v, error %v)", src.Server, want, resolved, tt.wantResolve, plan.Resolution, err)
			}
			if tt.wantResolve && plan.Resolution.Source != "hosts" {
				t.Errorf("resolution source %q, want hosts", plan.Resolution.Source)
			}
		})
	}
}

func TestOpenPathsWithResolverErrors(t *testing.T) {
	requireRoot(t)
	pid := startTarget(t)
	other := startTarget(t)
	podNetNS := fmt.Sprintf("/proc/%d/ns/net", pid)
	tests := []struct {
		name    string
		pid     int
		wantErr error
	}{
		{"negative pid", -1, nsmount.ErrInvalidArgument},
		{"no such process", 1 << 22, nsmount.ErrTargetNotFound},
		{"process in another netns", other, nsmount.ErrInvalidArgument},
		{"the test itself, in another netns", os.Getpid(), nsmount.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tgt, err := nsmount.OpenPathsWithResolver(podNetNS, "/proc/self/ns/mnt", tt.pid)
			if err == nil {
				tgt.Close()
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("OpenPathsWithResolver(pid %d) = %v, want %v", tt.pid, err, tt.wantErr)
			}
		})
	}
}
