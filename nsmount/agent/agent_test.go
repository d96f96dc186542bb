package agent_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	nrilog "github.com/containerd/nri/pkg/log"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/agent"
	"github.com/nsmount/nsmount/nsmount/integration/nri/nriconn"
)

// TestMain lets the test binary act as nsmount's mount helper.
func TestMain(m *testing.M) {
	nsmount.RunHelper()
	nrilog.Set(quiet{})
	os.Exit(m.Run())
}

// quiet drops containerd/nri's own log lines (the runtime side's).
type quiet struct{}

func (quiet) Debugf(context.Context, string, ...any) {}
func (quiet) Infof(context.Context, string, ...any)  {}
func (quiet) Warnf(context.Context, string, ...any)  {}
func (quiet) Errorf(context.Context, string, ...any) {}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

const policyText = `{"version": 1, "allow": [
  {"name": "nsmA", "servers": ["192.0.2.1"], "networks": ["192.0.2.0/24"], "exports": ["/export"], "targets": ["/data"], "options": ["vers"]},
  {"name": "nsmA-csi", "servers": ["192.0.2.1"], "networks": ["192.0.2.0/24"], "exports": ["/export"], "csi": {"namespaces": ["nsma"]}}]}`

// setup is an agent's files in a test directory.
type setup struct {
	dir, state, policy, hookPolicy, socket, exe string
	logs                                        *syncBuffer
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &setup{dir: dir, state: filepath.Join(dir, "state"), policy: filepath.Join(dir, "etc", "policy.json"),
		hookPolicy: filepath.Join(dir, "opt", "policy.json"), socket: filepath.Join(dir, "nri.sock"), exe: exe, logs: &syncBuffer{}}
	os.MkdirAll(filepath.Dir(s.policy), 0o755)
	s.writePolicy(t, policyText)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", s.logs)
		}
	})
	return s
}

// writePolicy replaces the policy file (by rename, as a ConfigMap update).
func (s *setup) writePolicy(t *testing.T, text string) {
	t.Helper()
	tmp := s.policy + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.policy); err != nil {
		t.Fatal(err)
	}
}

func (s *setup) config() agent.Config {
	return agent.Config{
		StateDir: s.state, Policy: s.policy, HookPolicy: s.hookPolicy, HookBinary: s.exe,
		NRI:         nriconn.Config{Socket: s.socket, Name: "nsmA", Idx: "10", MaxDelay: 500 * time.Millisecond},
		NoKernelLog: true, MetricsAddress: "127.0.0.1:0", PolicyInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// start runs an agent until the test ends; it must stop within 10 s and
// return nil. It returns the agent and its /metrics and /healthz base URL.
func start(t *testing.T, c agent.Config) (*agent.Agent, string) {
	t.Helper()
	a, err := agent.New(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("the agent did not stop within 10s")
		}
	})
	return a, "http://" + a.MetricsAddress()
}

// get GETs url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// waitFor polls cond every 10ms for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
	}
}

// TestNewRefuses: a Config with a bad path, or without a hook binary, is
// refused before anything starts.
func TestNewRefuses(t *testing.T) {
	s := newSetup(t)
	for _, tc := range []struct {
		name   string
		change func(*agent.Config)
		err    string
	}{
		{"relative policy", func(c *agent.Config) { c.Policy = "policy.json" }, `policy "policy.json": want a clean absolute path`},
		{"hook policy is the policy", func(c *agent.Config) { c.HookPolicy = c.Policy }, "the policy itself"},
		{"no hook binary", func(c *agent.Config) { c.HookBinary = filepath.Join(s.dir, "missing") }, "not an executable file (nsmount install --to DIR puts one there)"},
		{"hook binary not executable", func(c *agent.Config) { c.HookBinary = s.policy }, "not an executable file"},
		{"bad NRI index", func(c *agent.Config) { c.NRI.Idx = "1" }, `nri plugin index "1"`},
		{"CSI without endpoint", func(c *agent.Config) { c.CSI = &agent.CSIConfig{} }, "csi endpoint: missing"},
		{"CSI without node ID", func(c *agent.Config) {
			c.CSI = &agent.CSIConfig{Endpoint: "unix://" + filepath.Join(s.dir, "csi.sock")}
		}, "node ID: missing"},
		{"metrics address taken", func(c *agent.Config) { c.MetricsAddress = "256.0.0.1:1" }, "metrics address: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := s.config()
			tc.change(&c)
			a, err := agent.New(c)
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "\n") {
				t.Errorf("New = %v, %v; want an error with %q", a, err, tc.err)
			}
		})
	}
}

// TestPolicyMirror: the agent copies the policy where the hooks read it
// before anything else, follows its changes, keeps the last good one when
// a new one does not load (said once in the log, and in /healthz and
// /metrics), and takes the next good one. No runtime listens: the agent
// serves its health and metrics all the same.
func TestPolicyMirror(t *testing.T) {
	s := newSetup(t)
	_, base := start(t, s.config())
	copyIs := func(want string) func() bool {
		return func() bool {
			data, err := os.ReadFile(s.hookPolicy)
			return err == nil && string(data) == want
		}
	}
	waitFor(t, 2*time.Second, "the policy mirrored", copyIs(policyText))
	fi, err := os.Stat(s.hookPolicy)
	if err != nil || fi.Mode() != 0o644 {
		t.Errorf("the copy: %v, mode %v; want 0644", err, fi.Mode())
	}
	// The NRI connector's first attempt runs beside the mirroring: wait
	// for /healthz to report its failure rather than read it once.
	var (
		code int
		body string
	)
	waitFor(t, 2*time.Second, "/healthz to report no runtime", func() bool {
		code, body = get(t, base+"/healthz")
		return strings.Contains(body, "does not exist")
	})
	if code != 200 || !strings.Contains(body, "policy: sha256:") || !strings.Contains(body, "nri: not connected since ") {
		t.Errorf("/healthz without a runtime: %d\n%s", code, body)
	}

	second := strings.Replace(policyText, `"name": "nsmA"`, `"name": "nsmA-2"`, 1)
	s.writePolicy(t, second)
	waitFor(t, 2*time.Second, "the new policy mirrored", copyIs(second))

	s.writePolicy(t, `{"version": 1, "allow": [{"name": "bad"}]}`)
	waitFor(t, 2*time.Second, "the bad policy reported", func() bool { return strings.Contains(s.logs.String(), "policy not mirrored") })
	time.Sleep(300 * time.Millisecond) // several more readings of the bad policy
	if !copyIs(second)() {
		t.Errorf("the copy changed for a policy that does not load")
	}
	if n := strings.Count(s.logs.String(), "policy not mirrored"); n != 1 {
		t.Errorf("the bad policy was logged %d times, want once", n)
	}
	code, body = get(t, base+"/healthz")
	if code != 200 || !strings.Contains(body, "policy: the last reading was not mirrored: mirror policy to "+s.hookPolicy+": kept the last good one: policy "+s.policy+": allow[0]") {
		t.Errorf("/healthz with a bad policy: %d\n%s", code, body)
	}
	if _, body := get(t, base+"/metrics"); !strings.Contains(body, `nsmount_agent_up{part="policy"} 0`) || !strings.Contains(body, `nsmount_agent_up{part="nri"} 0`) {
		t.Errorf("/metrics: want policy and nri down:\n%s", body)
	}

	s.writePolicy(t, policyText)
	waitFor(t, 2*time.Second, "the good policy mirrored again", copyIs(policyText))
	waitFor(t, 2*time.Second, "the error cleared", func() bool {
		_, body := get(t, base+"/healthz")
		return !strings.Contains(body, "not mirrored")
	})
	if _, body := get(t, base+"/metrics"); !strings.Contains(body, `nsmount_agent_up{part="policy"} 1`) || !strings.Contains(body, "nsmount_scrape_collector_success") {
		t.Errorf("/metrics: want policy up and the mounts' collectors:\n%s", body)
	}

	os.Remove(s.policy)
	waitFor(t, 2*time.Second, "the copy removed with the policy", func() bool { _, err := os.Stat(s.hookPolicy); return os.IsNotExist(err) })
	// The agent removes the copy, then says so: wait for both.
	waitFor(t, 2*time.Second, "/healthz to say there is no policy", func() bool {
		_, body := get(t, base+"/healthz")
		return strings.Contains(body, "policy: none at "+s.hookPolicy+", every mount denied")
	})
}

// TestHealth: what /healthz says, and when it says unhealthy.
func TestHealth(t *testing.T) {
	since := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	good := agent.Health{
		NRI:     nriconn.State{Connected: true, Since: since, Registrations: 2, RuntimeNRI: "v0.12.0"},
		Runtime: "containerd v2.4.2", Synchronized: agent.Synchronized{Time: since, Pods: 3, Containers: 5},
		CSI: "serving unix:///csi/csi.sock", Watch: "running",
		Policy: agent.PolicyState{Source: "/etc/nsmount/policy.json", Copy: "/opt/nsmount/policy.json", Digest: "sha256:ab", Mirrored: since},
	}
	for _, tc := range []struct {
		name   string
		change func(*agent.Health)
		alive  bool
		want   string
	}{
		{"all good", func(*agent.Health) {}, true, "ok\n" +
			"nri: connected since 2026-12-01T10:00:00Z (containerd v2.4.2, NRI v0.12.0, registration 2), synchronized at 2026-12-01T10:00:00Z: 3 pods, 5 containers\n" +
			"csi: serving unix:///csi/csi.sock\nwatch: running\n" +
			"policy: sha256:ab at /opt/nsmount/policy.json (mirrored from /etc/nsmount/policy.json at 2026-12-01T10:00:00Z)\n"},
		{"the runtime away: still alive", func(h *agent.Health) {
			h.NRI = nriconn.State{Since: since, Registrations: 2, Failures: 7, LastError: "NRI socket /var/run/nri/nri.sock does not exist"}
		}, true, "ok\nnri: not connected since 2026-12-01T10:00:00Z, connecting (7 attempts failed, last: NRI socket /var/run/nri/nri.sock does not exist)\n"},
		{"a bad policy: still alive", func(h *agent.Health) { h.Policy.Error = "mirror policy: x" }, true, "policy: the last reading was not mirrored: mirror policy: x\n"},
		{"no CSI", func(h *agent.Health) { h.CSI = "off" }, true, "csi: off\n"},
		{"CSI stopped", func(h *agent.Health) { h.CSI = "stopped: accept: closed" }, false, "unhealthy\n"},
		{"watch stopped", func(h *agent.Health) { h.Watch = "stopped: x" }, false, "watch: stopped: x\n"},
		{"watch without the watchdog", func(h *agent.Health) { h.Watch = "running, without the kernel-log watchdog" }, true, "ok\n"},
		{"stopping", func(h *agent.Health) { h.Stopping = true }, false, "unhealthy: stopping\n"},
		{"policy read as it is", func(h *agent.Health) { h.Policy = agent.PolicyState{Source: "/etc/p.json"} }, true, "policy: /etc/p.json, read as it is\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := good
			tc.change(&h)
			if h.Alive() != tc.alive || !strings.Contains(h.String(), tc.want) {
				t.Errorf("Alive %v (want %v), String:\n%s\nwant in it:\n%s", h.Alive(), tc.alive, h, tc.want)
			}
		})
	}
}
