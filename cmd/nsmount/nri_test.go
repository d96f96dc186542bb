package main

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/nsmount/nsmount/nsmount"
)

func TestSelectMounts(t *testing.T) {
	const (
		own  = `[{"server": "192.0.2.1", "export": "/own", "target": "/own"}]`
		per  = `[{"server": "192.0.2.1", "export": "/per", "target": "/per"}]`
		all  = `[{"server": "192.0.2.1", "export": "/all", "target": "/all"}]`
		key  = nsmount.MountsAnnotation
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
			v, from, ok := selectMounts(tc.pod, tc.ctr, tc.ctrName)
			if v != tc.want || from != tc.wantFrom || ok != tc.wantFound {
				t.Errorf("selectMounts = %q, %q, %v; want %q, %q, %v", v, from, ok, tc.want, tc.wantFrom, tc.wantFound)
			}
		})
	}
}

func TestHookAdjustment(t *testing.T) {
	const value = `[{"server": "192.0.2.1", "export": "/export", "target": "/data"}]`
	timeout := api.Int(nriHookTimeout)
	for _, tc := range []struct {
		name            string
		opts            nriOptions
		create, destroy []string
	}{
		{
			name:    "with log",
			opts:    nriOptions{nsmount: "/usr/local/bin/nsmount", policy: "/etc/nsmount/policy.json", stateDir: "/run/nsmount", log: "/var/log/nsmount.log"},
			create:  []string{"nsmount", "hook", "--stage", "createRuntime", "--policy", "/etc/nsmount/policy.json", "--state-dir", "/run/nsmount", "--owner", "nri", "--log", "/var/log/nsmount.log"},
			destroy: []string{"nsmount", "hook", "--stage", "poststop", "--state-dir", "/run/nsmount", "--owner", "nri", "--log", "/var/log/nsmount.log"},
		},
		{
			name:    "without log",
			opts:    nriOptions{nsmount: "/opt/nsmount", policy: "/p.json", stateDir: "/s"},
			create:  []string{"nsmount", "hook", "--stage", "createRuntime", "--policy", "/p.json", "--state-dir", "/s", "--owner", "nri"},
			destroy: []string{"nsmount", "hook", "--stage", "poststop", "--state-dir", "/s", "--owner", "nri"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			adj := hookAdjustment(tc.opts, value)
			want := &api.ContainerAdjustment{
				Annotations: map[string]string{nsmount.MountsAnnotation: value},
				Hooks: &api.Hooks{
					CreateRuntime: []*api.Hook{{Path: tc.opts.nsmount, Args: tc.create, Timeout: timeout}},
					Poststop:      []*api.Hook{{Path: tc.opts.nsmount, Args: tc.destroy, Timeout: timeout}},
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

// TestNRIAdjust checks what CreateContainer decides from an annotation and
// the policy: the same strict parser and policy as the hook.
func TestNRIAdjust(t *testing.T) {
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policy, []byte(`{"version": 1, "allow": [{"name": "t", "servers": ["192.0.2.1"], "networks": ["192.0.2.0/24"],
	  "exports": ["/export"], "targets": ["/data", "/mnt/*"], "options": ["vers"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	const from = "pod annotation nsmount.io/mounts"
	entry := func(s string) string {
		return `{"server": "192.0.2.1", "export": "/export", "target": "/data"` + s + `}`
	}
	for _, tc := range []struct {
		name, value string
		policy      string // "" the test policy
		mounts      int    // allowed now; -1 no adjustment
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
			mounts: 1, warn: "warning: optional mount 203.0.113.9:/export on /mnt/x will be skipped: denied by policy"},
		{name: "all optional denied still gets hooks", value: `[{"server": "203.0.113.9", "export": "/export", "target": "/mnt/x", "required": false}]`,
			mounts: 0, warn: "will be skipped"},
		{name: "no policy", value: "[" + entry("") + "]", policy: filepath.Join(dir, "missing.json"), code: 11,
			err: "missing.json does not exist (deny by default)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &nriPlugin{opts: nriOptions{nsmount: "/bin/nsmount", policy: policy, stateDir: "/run/nsmount"}}
			if tc.policy != "" {
				p.opts.policy = tc.policy
			}
			var warnings []string
			adj, n, err := p.adjust(tc.value, from, func(f string, a ...any) { warnings = append(warnings, fmt.Sprintf(f, a...)) })
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || nsmount.ExitCode(err) != tc.code || strings.Contains(err.Error(), "\n") {
					t.Fatalf("adjust = %v (exit %d), want one line with %q, exit %d", err, nsmount.ExitCode(err), tc.err, tc.code)
				}
				if adj != nil {
					t.Errorf("adjustment %v with an error", adj)
				}
				return
			}
			if err != nil {
				t.Fatalf("adjust: %v", err)
			}
			switch {
			case tc.mounts < 0 && adj != nil:
				t.Errorf("adjustment %v, want none", adj)
			case tc.mounts >= 0 && (adj == nil || adj.Annotations[nsmount.MountsAnnotation] != tc.value || len(adj.Hooks.GetCreateRuntime()) != 1):
				t.Errorf("adjustment %v, want the annotation and hooks", adj)
			case tc.mounts >= 0 && n != tc.mounts:
				t.Errorf("%d mounts allowed, want %d", n, tc.mounts)
			}
			if got := strings.Join(warnings, "|"); tc.warn == "" && got != "" || !strings.Contains(got, tc.warn) {
				t.Errorf("warnings %q, want %q", got, tc.warn)
			}
		})
	}
}

func TestNRIOptions(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	good := nriOptions{socket: "/run/nri.sock", name: "nsmount", idx: "10", policy: "/etc/p.json", nsmount: exe, stateDir: "/run/nsmount"}
	for _, tc := range []struct {
		name   string
		change func(o *nriOptions)
		want   string // "" valid
	}{
		{name: "good", change: func(*nriOptions) {}},
		{name: "relative policy", change: func(o *nriOptions) { o.policy = "p.json" }, want: `--policy "p.json": want a clean absolute path`},
		{name: "unclean log", change: func(o *nriOptions) { o.log = "/var/log/../x" }, want: `--log "/var/log/../x"`},
		{name: "relative state dir", change: func(o *nriOptions) { o.stateDir = "run" }, want: `--state-dir "run"`},
		{name: "idx", change: func(o *nriOptions) { o.idx = "1" }, want: `--plugin-idx "1"`},
		{name: "name", change: func(o *nriOptions) { o.name = "a b" }, want: `--plugin-name "a b"`},
		{name: "empty name", change: func(o *nriOptions) { o.name = "" }, want: `--plugin-name ""`},
		{name: "not executable", change: func(o *nriOptions) { o.nsmount = "/etc/passwd" }, want: "--nsmount /etc/passwd: not an executable file"},
		{name: "missing", change: func(o *nriOptions) { o.nsmount = "/nonexistent/nsmount" }, want: "not an executable file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.change(&o)
			err := o.validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("validate = %v, want %q", err, tc.want)
			}
		})
	}
}
