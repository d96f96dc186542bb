//go:build !nsmount_split

package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/cachectl/metrics"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

func TestObserveUsageErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nsmOreg")
	for _, args := range [][]string{
		{"watch", "--log-format", "xml"},
		{"watch", "--log-level", "loud"},
		{"top", "--interval", "0s"},
		{"top", "extra"},
	} {
		_, stderr, code := runCLI(t, append(args, "--state-dir", dir)...)
		if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("nsmount %v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

// remount: the options that exclude each other, and a missing target.
func TestRemountUsageErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nsmOreg")
	for _, args := range [][]string{
		{"remount", "--pid", "1", "--keep-connections", "--retire-client", "/data"},
		{"remount", "--retire-client"},
		{"watch", "--remount-timeout", "0s", "--no-kernel-log"},
		{"agent", "--remount-timeout", "-1s"},
		{"agent", "--remount-parallel", "0"},
		{"agent", "--probe-rate", "0"},
	} {
		_, stderr, code := runCLI(t, append(args, "--state-dir", dir)...)
		if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("nsmount %v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

// nsmount watch --metrics-address serves /metrics and /healthz, with the
// process's own metrics, on an empty registry.
func TestWatchServesMetrics(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nsmOreg")
	m, err := metrics.New(metrics.Config{Registry: mustRegistry(t, dir)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var logs bytes.Buffer
	log, _ := (&logFlags{format: "text", level: "info"}).logger(&logs)
	if err := serveMetrics(ctx, "127.0.0.1:0", m, log); err != nil {
		t.Fatal(err)
	}
	addr := between(logs.String(), "address=", " ")
	for path, want := range map[string]string{
		"/metrics": `nsmount_scrape_collector_success{collector="registry"} 1`,
		"/healthz": "ok",
	} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d, lacks %q", path, resp.StatusCode, want)
		}
		if path == "/metrics" && !strings.Contains(string(body), "process_open_fds") {
			t.Errorf("/metrics lacks the process's metrics")
		}
	}
}

func mustRegistry(t *testing.T, dir string) *registry.Registry {
	t.Helper()
	r, err := registry.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func between(s, a, b string) string {
	_, rest, _ := strings.Cut(s, a)
	v, _, _ := strings.Cut(rest, b)
	return v
}

func TestContainerName(t *testing.T) {
	long := "3f4e1b2c9d8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e"
	tests := []struct {
		e    registry.Entry
		want string
	}{
		{registry.Entry{Target: registry.Identity{Container: long}}, long[:12]},
		{registry.Entry{Target: registry.Identity{Container: "my-pod_c1"}}, "my-pod_c1"},
		{registry.Entry{Target: registry.Identity{PID: 4242}}, "pid 4242"},
		{registry.Entry{Target: registry.Identity{NetNS: nsmount.NSID{Ino: 7}}}, "netns 7"},
	}
	for _, tt := range tests {
		if got := containerName(tt.e); got != tt.want {
			t.Errorf("containerName(%+v) = %q, want %q", tt.e.Target, got, tt.want)
		}
	}
}
