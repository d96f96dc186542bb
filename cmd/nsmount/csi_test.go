//go:build !nsmount_split

package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestCSIUsage(t *testing.T) {
	dir := t.TempDir()
	sock := "unix://" + filepath.Join(dir, "csi.sock")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no node ID", []string{"csi", "--endpoint", sock}, 2, "--node-id is required"},
		{"no endpoint", []string{"csi", "--node-id", "n"}, 2, "--endpoint is required"},
		{"relative policy", []string{"csi", "--endpoint", sock, "--node-id", "n", "--policy", "p.json"}, 2, `--policy "p.json": want a clean absolute path`},
		{"unclean kubelet dir", []string{"csi", "--endpoint", sock, "--node-id", "n", "--kubelet-dir", "/var/lib/../kubelet"}, 2, "--kubelet-dir"},
		{"bad NRI index", []string{"csi", "--endpoint", sock, "--node-id", "n", "--nri-socket", "/run/nri.sock", "--nri-plugin-idx", "1"}, 2, `--nri-plugin-idx "1"`},
		{"argument", []string{"csi", "--endpoint", sock, "--node-id", "n", "extra"}, 2, "want no arguments"},
		{"relative endpoint", []string{"csi", "--endpoint", "unix://csi.sock", "--node-id", "n", "--state-dir", dir, "--mount-ns", "/proc/self/ns/mnt"}, 3, "want unix:///ABSOLUTE/PATH"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want exit %d and one line with %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}

// TestCSIServes runs nsmount csi, talks to it as kubelet does, and stops
// it with SIGTERM (exit 0).
func TestCSIServes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: enters the host mount namespace")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "plugins", "csi.sock")
	cmd := exec.Command(os.Args[0], "csi", "--endpoint", "unix://"+sock, "--node-id", "node-7",
		"--state-dir", filepath.Join(dir, "state"), "--policy", filepath.Join(dir, "none.json"), "--mount-ns", "/proc/self/ns/mnt")
	cmd.Env = append(os.Environ(), envMain+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket at %s: %s", sock, stderr.String())
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := csipb.NewIdentityClient(conn).GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{})
	if err != nil || info.GetName() != "nfs.nsmount.io" || info.GetVendorVersion() == "" {
		t.Errorf("GetPluginInfo = %v, %v", info, err)
	}
	ni, err := csipb.NewNodeClient(conn).NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node-7" {
		t.Errorf("NodeGetInfo = %v, %v", ni, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("nsmount csi after SIGTERM: %v: %s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("nsmount csi did not stop on SIGTERM: %s", stderr.String())
	}
	if !strings.Contains(stderr.String(), `msg=serving driver=nfs.nsmount.io`) {
		t.Errorf("log lacks the serving line: %s", stderr.String())
	}
}
