package nri_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"log/slog"

	"github.com/containerd/nri/pkg/api"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/integration/nri"
)

func TestSelectMounts(t *testing.T) {
	const (
		own  = `[{"server": "192.0.2.1", "export": "/own", "target": "/own"}]`
		per  = `[{"server": "192.0.2.1", "export": "/per", "target": "/per"}]`
		all  = `[{"server": "192.0.2.1", "export": "/all", "target": "/all"}]`
		key  = admission.MountsAnnotation
		perK = "nsmount.io/mounts.container.app"
	)
	for _, tc := range []struct {
		name      string
		pod, ctr  map[string]string
		ctrName   string
		want      string // "" means none applies
		wantFrom  string
		wantFound bool
	}{
		{name: "none", pod: map[string]string{"other": "x"}, ctr: map[string]string{"io.kubernetes.cri.container-type": "container"}, ctrName: "app"},
		{name: "nil maps", ctrName: "app"},
		{name: "container own", pod: map[string]string{key: all, perK: per}, ctr: map[string]string{key: own}, ctrName: "app",
			want: own, wantFrom: "container annotation nsmount.io/mounts", wantFound: true},
		{name: "container own empty list wins", pod: map[string]string{key: all}, ctr: map[string]string{key: "[]"}, ctrName: "app",
			want: "[]", wantFrom: "container annotation nsmount.io/mounts", wantFound: true},
		{name: "pod per container", pod: map[string]string{key: all, perK: per}, ctrName: "app",
			want: per, wantFrom: "pod annotation nsmount.io/mounts.container.app", wantFound: true},
		{name: "pod per other container", pod: map[string]string{key: all, "nsmount.io/mounts.container.sidecar": per}, ctrName: "app",
			want: all, wantFrom: "pod annotation nsmount.io/mounts", wantFound: true},
		{name: "pod per container only, other name", pod: map[string]string{"nsmount.io/mounts.container.sidecar": per}, ctrName: "app"},
		{name: "pod all", pod: map[string]string{key: all}, ctr: map[string]string{}, ctrName: "app",
			want: all, wantFrom: "pod annotation nsmount.io/mounts", wantFound: true},
		{name: "no name never matches the per-container key", pod: map[string]string{"nsmount.io/mounts.container.": per}, ctrName: ""},
		{name: "case matters", pod: map[string]string{"nsmount.io/mounts.container.App": per}, ctrName: "app"},
		{name: "container key in pod is not a container annotation", ctr: map[string]string{perK: per}, ctrName: "app"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, from, ok := nri.SelectMounts(tc.pod, tc.ctr, tc.ctrName)
			if v != tc.want || from != tc.wantFrom || ok != tc.wantFound {
				t.Errorf("SelectMounts = %q, %q, %v; want %q, %q, %v", v, from, ok, tc.want, tc.wantFrom, tc.wantFound)
			}
		})
	}
}

func TestHookAdjustment(t *testing.T) {
	const value = `[{"server": "192.0.2.1", "export": "/export", "target": "/data"}]`
	timeout := api.Int(nri.HookTimeout)
	for _, tc := range []struct {
		name            string
		c               nri.Config
		create, destroy []string
	}{
		{
			name:    "with log",
			c:       nri.Config{Nsmount: "/usr/local/bin/nsmount", Policy: "/etc/nsmount/policy.json", StateDir: "/run/nsmount", Log: "/var/log/nsmount.log"},
			create:  []string{"nsmount", "hook", "--stage", "createRuntime", "--policy", "/etc/nsmount/policy.json", "--state-dir", "/run/nsmount", "--owner", "nri", "--log", "/var/log/nsmount.log"},
			destroy: []string{"nsmount", "hook", "--stage", "poststop", "--state-dir", "/run/nsmount", "--owner", "nri", "--log", "/var/log/nsmount.log"},
		},
		{
			name:    "without log",
			c:       nri.Config{Nsmount: "/opt/nsmount", Policy: "/p.json", StateDir: "/s"},
			create:  []string{"nsmount", "hook", "--stage", "createRuntime", "--policy", "/p.json", "--state-dir", "/s", "--owner", "nri"},
			destroy: []string{"nsmount", "hook", "--stage", "poststop", "--state-dir", "/s", "--owner", "nri"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			adj := nri.HookAdjustment(tc.c, value)
			want := &api.ContainerAdjustment{
				Annotations: map[string]string{admission.MountsAnnotation: value},
				Hooks: &api.Hooks{
					CreateRuntime: []*api.Hook{{Path: tc.c.Nsmount, Args: tc.create, Timeout: timeout}},
					Poststop:      []*api.Hook{{Path: tc.c.Nsmount, Args: tc.destroy, Timeout: timeout}},
				},
			}
			if !reflect.DeepEqual(adj.Annotations, want.Annotations) {
				t.Errorf("annotations %v, want %v", adj.Annotations, want.Annotations)
			}
			if !reflect.DeepEqual(adj.Hooks.String(), want.Hooks.String()) {
				t.Errorf("hooks\n%v\nwant\n%v", adj.Hooks, want.Hooks)
			}
			// Nothing but the annotation and the hooks is touched.
			adj.Annotations, adj.Hooks = nil, nil
			if !reflect.DeepEqual(adj.String(), (&api.ContainerAdjustment{}).String()) {
				t.Errorf("adjustment touches more: %v", adj)
			}
		})
	}
}

// writePolicy writes the test policy (mode 0600, not writable by others).
func writePolicy(t *testing.T, dir string) string {
	t.Helper()
	policy := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policy, []byte(`{"version": 1, "allow": [{"name": "t", "servers": ["192.0.2.1"], "networks": ["192.0.2.0/24"],
	  "exports": ["/export"], "targets": ["/data", "/mnt/*"], "options": ["vers"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return policy
}

// TestAdjust checks what CreateContainer decides from an annotation and
// the policy: the same strict parser and policy as the hook.
func TestAdjust(t *testing.T) {
	dir := t.TempDir()
	policy := writePolicy(t, dir)
	const from = "pod annotation nsmount.io/mounts"
	entry := func(s string) string {
		return `{"server": "192.0.2.1", "export": "/export", "target": "/data"` + s + `}`
	}
	for _, tc := range []struct {
		name, value string
		policy      string // "" the test policy
		mounts      int    // admitted now; -1 no adjustment
		warn        string // a warning containing this
		err         string // an error containing this, and its exit code
		code        int
	}{
		{name: "one", value: "[" + entry("") + "]", mounts: 1},
		{name: "empty list", value: "[]", mounts: -1},
		{name: "malformed", value: "[" + entry(`, "requierd": true`) + "]", code: 3,
			err: `pod annotation nsmount.io/mounts: nsmount.io/mounts[0]: unknown field "requierd"`},
		{name: "not json", value: "data", code: 3, err: "pod annotation nsmount.io/mounts: nsmount.io/mounts"},
		{name: "denied", value: `[{"server": "203.0.113.9", "export": "/export", "target": "/data"}]`, code: 11,
			err: `mount 203.0.113.9:/export on /data: denied by policy ` + policy + `: server "203.0.113.9" is not allowed`},
		{name: "suid", value: "[" + entry(`, "options": "suid"`) + "]", code: 11, err: `option "suid" is not allowed: nosuid is enforced`},
		{name: "optional denied", value: `[{"server": "203.0.113.9", "export": "/export", "target": "/mnt/x", "required": false}, ` + entry("") + `]`,
			mounts: 1, warn: "optional mount 203.0.113.9:/export on /mnt/x will be skipped: denied by policy"},
		{name: "all optional denied still gets hooks", value: `[{"server": "203.0.113.9", "export": "/export", "target": "/mnt/x", "required": false}]`,
			mounts: 0, warn: "will be skipped"},
		{name: "no policy", value: "[" + entry("") + "]", policy: filepath.Join(dir, "missing.json"), code: 11,
			err: "missing.json does not exist (deny by default)"},
		{name: "bad policy", value: "[" + entry("") + "]", policy: dir, code: 3, err: "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := nri.Config{Nsmount: "/bin/nsmount", Policy: policy, StateDir: "/run/nsmount"}
			if tc.policy != "" {
				c.Policy = tc.policy
			}
			a, err := nri.Adjust(c, tc.value, from)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || nsmount.ExitCode(err) != tc.code || strings.Contains(err.Error(), "\n") {
					t.Fatalf("Adjust = %v (exit %d), want one line with %q, exit %d", err, nsmount.ExitCode(err), tc.err, tc.code)
				}
				if a != nil {
					t.Errorf("adjustment %+v with an error", a)
				}
				return
			}
			if err != nil {
				t.Fatalf("Adjust: %v", err)
			}
			switch {
			case tc.mounts < 0 && a.Adjustment != nil:
				t.Errorf("adjustment %v, want none", a.Adjustment)
			case tc.mounts >= 0 && (a.Adjustment == nil || a.Adjustment.Annotations[admission.MountsAnnotation] != tc.value || len(a.Adjustment.Hooks.GetCreateRuntime()) != 1):
				t.Errorf("adjustment %v, want the annotation and hooks", a.Adjustment)
			case tc.mounts >= 0 && a.Admitted != tc.mounts:
				t.Errorf("%d mounts admitted, want %d", a.Admitted, tc.mounts)
			}
			if got := strings.Join(a.Warnings, "|"); tc.warn == "" && got != "" || !strings.Contains(got, tc.warn) {
				t.Errorf("warnings %q, want %q", got, tc.warn)
			}
		})
	}
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

// TestCreateContainerLogs: the plugin's decisions go to its logger, and a
// refusal is the event's error too.
func TestCreateContainerLogs(t *testing.T) {
	var out syncBuffer
	p := nri.New(nri.Config{Nsmount: "/bin/nsmount", Policy: writePolicy(t, t.TempDir()), StateDir: "/run/nsmount",
		Logger: slog.New(slog.NewTextHandler(&out, nil))})
	pod := &api.PodSandbox{Name: "web", Namespace: "nsmD", Annotations: map[string]string{
		admission.MountsAnnotation: `[{"server": "192.0.2.1", "export": "/export", "target": "/data"}, {"server": "203.0.113.9", "export": "/export", "target": "/mnt/x", "required": false}]`,
	}}
	adj, _, err := p.CreateContainer(t.Context(), pod, &api.Container{Id: "c1", Name: "app"})
	if err != nil || adj == nil {
		t.Fatalf("CreateContainer = %v, %v", adj, err)
	}
	_, _, err = p.CreateContainer(t.Context(), pod, &api.Container{Id: "c2", Name: "bad", Annotations: map[string]string{admission.MountsAnnotation: "x"}})
	if err == nil || !strings.HasPrefix(err.Error(), "nsmount: pod nsmD/web container bad: container annotation nsmount.io/mounts: ") || nsmount.ExitCode(err) != 3 {
		t.Errorf("CreateContainer of a bad annotation: %v", err)
	}
	if adj, _, err := p.CreateContainer(t.Context(), &api.PodSandbox{}, &api.Container{Id: "c3"}); adj != nil || err != nil {
		t.Errorf("CreateContainer without annotations: %v, %v; want nothing", adj, err)
	}
	log := out.String()
	for _, want := range []string{
		`level=WARN msg="optional mount 203.0.113.9:/export on /mnt/x will be skipped: denied by policy`,
		`level=INFO msg="hooks added" container=c1 pod=nsmD/web name=app mounts=1 from="pod annotation nsmount.io/mounts"`,
		`level=ERROR msg="container refused" container=c2 pod=nsmD/web name=bad error="nsmount: pod nsmD/web container bad: container annotation`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Count(log, "\n") != 3 {
		t.Errorf("log has %d lines, want 3:\n%s", strings.Count(log, "\n"), log)
	}
}

// TestCleanup: stop and remove events hand the container, or the pod's
// network namespace, to the Manager's teardown in the background; nothing
// happens without a registry.
func TestCleanup(t *testing.T) {
	var out syncBuffer
	state := filepath.Join(t.TempDir(), "state")
	p := nri.New(nri.Config{Nsmount: "/bin/nsmount", StateDir: state, Logger: slog.New(slog.NewTextHandler(&out, nil))})
	ctx := context.Background()
	pod := &api.PodSandbox{Name: "web", Namespace: "nsmD", Linux: &api.LinuxPodSandbox{Namespaces: []*api.LinuxNamespace{{Type: "network", Path: "/proc/self/ns/net"}}}}
	p.StopContainer(ctx, pod, &api.Container{Id: "c1"})
	p.StopPodSandbox(ctx, pod)
	p.Wait()
	if _, err := os.Stat(state); !os.IsNotExist(err) || out.String() != "" {
		t.Fatalf("without a registry: state %v, log %q; want nothing done", err, out.String())
	}

	reg, err := registry.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	gone := nsmount.NSID{Dev: 4, Ino: 1} // no process is in it
	if err := reg.Update(func(s *registry.State) error {
		s.Put(registry.Entry{
			ID: "1:10", Target: registry.Identity{NetNS: gone, MountNS: gone, Container: "c1"},
			Mountpoint: "/data", Source: "192.0.2.1:/export", Server: "192.0.2.1", Address: "192.0.2.1",
			FSType: "nfs", Owner: cachectl.OwnerNRI, Created: time.Now().Add(-time.Hour),
		})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p.StopContainer(ctx, pod, &api.Container{Id: "c1"})
	p.RemoveContainer(ctx, pod, &api.Container{Id: "c1"})
	p.RemovePodSandbox(ctx, &api.PodSandbox{Name: "gone", Linux: &api.LinuxPodSandbox{Namespaces: []*api.LinuxNamespace{{Type: "network", Path: "/run/netns/nsmD-missing"}}}})
	p.RemovePodSandbox(ctx, &api.PodSandbox{Name: "no-netns"})
	p.Wait()
	log := out.String()
	if want := `level=INFO msg="forgot 192.0.2.1:/export at /data: `; strings.Count(log, want) != 1 || !strings.Contains(log, "event=") || !strings.Contains(log, "container=c1") {
		t.Errorf("log %q: want the entry forgotten once, by the container's cleanup", log)
	}
	if strings.Contains(log, "level=WARN") {
		t.Errorf("cleanup warned:\n%s", log)
	}
	s := 0
	reg.View(func(st *registry.State) error { s = len(st.Entries); return nil })
	if s != 0 {
		t.Errorf("%d entries left", s)
	}
}

// deadPID returns the PID of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// TestGoneContainers: after a reconnection, the containers to clean up
// after are nri's whose container the runtime no longer lists and whose
// process is gone; a running process is never taken for gone.
func TestGoneContainers(t *testing.T) {
	self := os.Getpid()
	start, err := kernel.Proc{}.StartTime(self)
	if err != nil {
		t.Fatal(err)
	}
	dead := deadPID(t)
	for _, tc := range []struct {
		name   string
		owner  string
		ctr    string
		pid    int
		start  uint64
		listed bool
		gone   bool
	}{
		{name: "process exited", owner: cachectl.OwnerNRI, ctr: "c-exited", pid: dead, start: 1, gone: true},
		{name: "pid reused by another process", owner: cachectl.OwnerNRI, ctr: "c-reused", pid: self, start: start + 1, gone: true},
		{name: "process runs", owner: cachectl.OwnerNRI, ctr: "c-runs", pid: self, start: start},
		{name: "process runs, start unknown", owner: cachectl.OwnerNRI, ctr: "c-runs-nostart", pid: self},
		{name: "listed by the runtime", owner: cachectl.OwnerNRI, ctr: "c-listed", pid: dead, listed: true},
		{name: "the hook's, not nri's", owner: cachectl.OwnerHook, ctr: "c-hook", pid: dead},
		{name: "no pid recorded", owner: cachectl.OwnerNRI, ctr: "c-nopid"},
		{name: "no container recorded", owner: cachectl.OwnerNRI, pid: dead},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg, err := registry.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			ns := nsmount.NSID{Dev: 4, Ino: 7}
			if err := reg.Update(func(s *registry.State) error {
				s.Put(registry.Entry{ID: "7:1", Target: registry.Identity{PID: tc.pid, PIDStart: tc.start, NetNS: ns, MountNS: ns, Container: tc.ctr},
					Mountpoint: "/data", Source: "192.0.2.1:/export", Server: "192.0.2.1", Address: "192.0.2.1", FSType: "nfs", Owner: tc.owner, Created: time.Now()})
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			gone, err := nri.GoneContainers(reg, map[string]bool{"c-listed": tc.listed}, kernel.Proc{})
			if err != nil {
				t.Fatal(err)
			}
			if got := len(gone) == 1 && gone[0] == tc.ctr; got != tc.gone || len(gone) > 1 {
				t.Errorf("gone = %q, want %v for %q", gone, tc.gone, tc.ctr)
			}
		})
	}
}

// TestSynchronize: a container removed while the plugin was away gets the
// cleanup RemoveContainer would have given it.
func TestSynchronize(t *testing.T) {
	var out syncBuffer
	state := filepath.Join(t.TempDir(), "state")
	mgr, err := cachectl.Open(cachectl.Config{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	p := nri.New(nri.Config{Nsmount: "/bin/nsmount", StateDir: state, Manager: mgr, Logger: slog.New(slog.NewTextHandler(&out, nil))})
	gone := nsmount.NSID{Dev: 4, Ino: 1}
	if err := mgr.Registry().Update(func(s *registry.State) error {
		s.Put(registry.Entry{ID: "1:10", Target: registry.Identity{PID: deadPID(t), NetNS: gone, MountNS: gone, Container: "c-away"},
			Mountpoint: "/data", Source: "192.0.2.1:/export", Server: "192.0.2.1", Address: "192.0.2.1", FSType: "nfs", Owner: cachectl.OwnerNRI, Created: time.Now().Add(-time.Hour)})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Synchronize(t.Context(), nil, []*api.Container{{Id: "c-other"}}); err != nil {
		t.Fatal(err)
	}
	p.Wait()
	log := out.String()
	if !strings.Contains(log, `msg="forgot 192.0.2.1:/export at /data: `) || !strings.Contains(log, "event=synchronize container=c-away") {
		t.Errorf("log %q: want the entry forgotten by a synchronize cleanup of c-away", log)
	}
	if n := 0; mgr.Registry().View(func(s *registry.State) error { n = len(s.Entries); return nil }) != nil || n != 0 {
		t.Errorf("%d entries left", n)
	}
}
