package nriconn_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/nri/nriconn"
	"github.com/nsmount/nsmount/testenv/nriruntime"
)

// quiet drops containerd/nri's own log lines (the runtime side's).
type quiet struct{}

func (quiet) Debugf(context.Context, string, ...any) {}
func (quiet) Infof(context.Context, string, ...any)  {}
func (quiet) Warnf(context.Context, string, ...any)  {}
func (quiet) Errorf(context.Context, string, ...any) {}

func init() { nrilog.Set(quiet{}) }

// handler counts what it is sent.
type handler struct {
	runs  atomic.Int64
	syncs atomic.Int64
}

func (h *handler) RunPodSandbox(context.Context, *api.PodSandbox) error { h.runs.Add(1); return nil }
func (h *handler) Synchronize(context.Context, []*api.PodSandbox, []*api.Container) ([]*api.ContainerUpdate, error) {
	h.syncs.Add(1)
	return nil, nil
}

// nothing handles no event.
type nothing struct{}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler any
		c       nriconn.Config
		err     string
	}{
		{"ok", &handler{}, nriconn.Config{Socket: "/run/nri/nri.sock", Name: "nsmount", Idx: "10"}, ""},
		{"relative socket", &handler{}, nriconn.Config{Socket: "nri.sock", Name: "nsmount", Idx: "10"}, `nri socket "nri.sock": want a clean absolute path`},
		{"unclean socket", &handler{}, nriconn.Config{Socket: "/run/../nri.sock", Name: "nsmount", Idx: "10"}, "want a clean absolute path"},
		{"one digit", &handler{}, nriconn.Config{Socket: "/nri.sock", Name: "nsmount", Idx: "1"}, `nri plugin index "1" and name "nsmount": want two digits and a name`},
		{"no name", &handler{}, nriconn.Config{Socket: "/nri.sock", Idx: "10"}, "want two digits and a name"},
		{"a slash in the name", &handler{}, nriconn.Config{Socket: "/nri.sock", Name: "a/b", Idx: "10"}, "want two digits and a name"},
		{"no event handled", nothing{}, nriconn.Config{Socket: "/nri.sock", Name: "nsmount", Idx: "10"}, "nri plugin: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nriconn.New(tc.handler, tc.c)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || nsmount.ExitCode(err) != 3) {
				t.Errorf("New = %v (exit %d), want %q", err, nsmount.ExitCode(err), tc.err)
			}
		})
	}
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

// TestReconnect: no runtime at first (attempts fail and are counted), then
// the runtime comes (the plugin registers and is synchronized), restarts
// (the plugin registers again, at once), and events reach the plugin
// after each registration; when ctx ends, Run returns at once.
func TestReconnect(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "nri.sock")
	var logs syncBuffer
	h := &handler{}
	cn, err := nriconn.New(h, nriconn.Config{Socket: socket, Name: "nsmA", Idx: "10", MaxDelay: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- cn.Run(ctx) }()

	waitFor(t, 2*time.Second, "failed attempts without a runtime", func() bool { return cn.State().Failures >= 3 })
	if st := cn.State(); st.Connected || !strings.Contains(st.LastError, "does not exist") {
		t.Errorf("state without a runtime: %+v", st)
	}
	rt, err := nriruntime.Start(socket, filepath.Join(dir, "rt"))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Stop()
	select {
	case s := <-rt.Synced():
		if s.Err != nil {
			t.Fatal(s.Err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not synchronized within 5s of the runtime's start")
	}
	waitFor(t, time.Second, "connected", func() bool { return cn.State().Connected })
	pod := &api.PodSandbox{Id: "p1", Name: "web", Namespace: "nsmA", Uid: "u1"}
	if err := rt.RunPod(t.Context(), pod); err != nil || h.runs.Load() != 1 {
		t.Fatalf("RunPodSandbox: %v, %d delivered", err, h.runs.Load())
	}

	for i := range 3 {
		start := time.Now()
		if err := rt.Restart(0); err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-rt.Synced():
			if want := min(i+1, 2); s.Err != nil || s.Pods != want {
				t.Fatalf("synchronized %+v, want %d pods", s, want)
			}
			t.Logf("restart %d: registered and synchronized %s after the runtime started again", i+1, s.Time.Sub(start).Round(time.Millisecond))
		case <-time.After(5 * time.Second):
			t.Fatalf("restart %d: not synchronized within 5s: state %+v\n%s", i+1, cn.State(), logs.String())
		}
		waitFor(t, time.Second, "connected", func() bool { return cn.State().Connected })
		if err := rt.RunPod(t.Context(), &api.PodSandbox{Id: "p2", Uid: "u2"}); err != nil || h.runs.Load() != int64(2+i) {
			t.Fatalf("RunPodSandbox after restart %d: %v, %d delivered", i+1, err, h.runs.Load())
		}
	}
	if st := cn.State(); st.Registrations != 4 || h.syncs.Load() != 4 || st.Failures != 0 {
		t.Errorf("state %+v, %d synchronizations; want 4 registrations and synchronizations", st, h.syncs.Load())
	}
	start := time.Now()
	cancel()
	if err := <-done; err != nil || time.Since(start) > time.Second {
		t.Errorf("Run = %v after %s", err, time.Since(start))
	}
	log := logs.String()
	for _, want := range []string{
		"level=WARN msg=\"cannot register with the runtime: trying again\" socket=" + socket + " error=\"NRI socket " + socket + " does not exist",
		"level=INFO msg=\"registered with the runtime\" plugin=10-nsmA socket=" + socket,
		"level=WARN msg=\"the runtime closed the NRI connection: connecting again\"",
		"registrations=4 after=",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Count(log, "cannot register") != 1 {
		t.Errorf("failed attempts logged more than once:\n%s", log)
	}
}

// TestRunEndsWithoutRuntime: a Run that never connected returns at once
// when ctx ends, in the middle of a long delay.
func TestRunEndsWithoutRuntime(t *testing.T) {
	cn, err := nriconn.New(&handler{}, nriconn.Config{Socket: filepath.Join(t.TempDir(), "none.sock"), Name: "nsmA", Idx: "10", MinDelay: time.Minute, MaxDelay: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := cn.Run(ctx); err != nil || time.Since(start) > time.Second {
		t.Errorf("Run = %v after %s", err, time.Since(start))
	}
	if st := cn.State(); st.Connected || st.Failures == 0 || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("state %+v", st)
	}
}

// TestWakesOnSocket: a runtime that makes its socket during a long delay
// between attempts is connected to at once, not at the delay's end.
func TestWakesOnSocket(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "nri.sock")
	cn, err := nriconn.New(&handler{}, nriconn.Config{Socket: socket, Name: "nsmA", Idx: "10", MinDelay: time.Minute, MaxDelay: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- cn.Run(ctx) }()
	waitFor(t, 2*time.Second, "the first attempt failed", func() bool { return cn.State().Failures == 1 })
	rt, err := nriruntime.Start(socket, filepath.Join(dir, "rt"))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Stop()
	started := time.Now()
	select {
	case s := <-rt.Synced():
		t.Logf("registered %s after the socket was made (the delay was a minute)", s.Time.Sub(started).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("not registered within 5s of the socket's making: the delay was not cut short")
	}
	start := time.Now()
	cancel()
	if err := <-done; err != nil || time.Since(start) > time.Second {
		t.Errorf("Run = %v after %s", err, time.Since(start))
	}
}
