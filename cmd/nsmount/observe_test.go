package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/kmsg"
	"github.com/nsmount/nsmount/cachectl/metrics"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

func TestLogEvent(t *testing.T) {
	when := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	netns := nsmount.NSID{Dev: 4, Ino: 4026532338}
	tests := []struct {
		name, format, level string
		ev                  cachectl.WatchEvent
		want                string // "" = not logged
	}{
		{"dead, text", "text", "info",
			cachectl.WatchEvent{Time: when, Kind: "dead", Mountpoint: "/data", Source: "203.0.113.10:/export", NetNS: netns, Dev: "0:40", Detail: "server 203.0.113.10 does not answer (no answer in 2s)"},
			`time=2026-12-01T10:00:00.000Z level=WARN msg=dead mountpoint=/data source=203.0.113.10:/export netns=4026532338 dev=0:40 detail="server 203.0.113.10 does not answer (no answer in 2s)"` + "\n"},
		{"remounted, json", "json", "info",
			cachectl.WatchEvent{Time: when, Kind: "remounted", Mountpoint: "/data", NetNS: netns, Dev: "0:40", Container: "c1", Detail: "route drift: x;\nnow y", Elapsed: 1500 * time.Millisecond},
			`{"time":"2026-12-01T10:00:00Z","level":"INFO","msg":"remounted","mountpoint":"/data","netns":"4026532338","dev":"0:40","container":"c1","detail":"route drift: x; now y","elapsed":1.5}` + "\n"},
		{"a probe at info", "text", "info", cachectl.WatchEvent{Time: when, Kind: "probe", Elapsed: time.Millisecond}, ""},
		{"a probe at debug", "text", "debug", cachectl.WatchEvent{Time: when, Kind: "probe", Mountpoint: "/data", Detail: "ok", Elapsed: 20 * time.Millisecond},
			"time=2026-12-01T10:00:00.000Z level=DEBUG msg=probe mountpoint=/data detail=ok elapsed=0.02\n"},
		{"an attributed kernel line", "text", "info",
			cachectl.WatchEvent{Time: when, Kind: "kernel", Detail: "attributed: nfs: server s not responding, still trying", Kernel: &cachectl.KernelReport{
				Message: kmsg.Message{Kind: kmsg.NotResponding, Server: "s"}, Count: 2, Attribution: cachectl.Attributed}},
			`time=2026-12-01T10:00:00.000Z level=WARN msg=kernel kmsg=not-responding server=s attribution=attributed count=2 detail="attributed: nfs: server s not responding, still trying"` + "\n"},
		{"an error", "text", "warn", cachectl.WatchEvent{Time: when, Kind: "error", Detail: "scan: x"},
			"time=2026-12-01T10:00:00.000Z level=ERROR msg=error detail=\"scan: x\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			log, err := (&logFlags{format: tt.format, level: tt.level}).logger(&out)
			if err != nil {
				t.Fatal(err)
			}
			logEvent(context.Background(), log, tt.ev)
			if out.String() != tt.want {
				t.Errorf("got  %q\nwant %q", out.String(), tt.want)
			}
			if tt.format == "json" && tt.want != "" && !json.Valid(out.Bytes()) {
				t.Errorf("not JSON: %s", out.String())
			}
		})
	}
}

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
