package main

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
)

// hookEnv is what the runc tests share: the nsmount binary, a policy, a
// runc root and a directory for the bundles, all under one temp dir.
type hookEnv struct {
	dir, bin, policy, runcRoot, busybox string
}

// needHookHost fails the test unless it can run: root, runc and a static
// busybox on the host (testenv/install-deps.sh installs them).
func needHookHost(t *testing.T) (busybox string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: runs containers with runc (run the tests as root)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatal("runc not found: install it (testenv/install-deps.sh, Debian package runc)")
	}
	busybox, err := exec.LookPath("busybox")
	if err == nil {
		var f *elf.File
		if f, err = elf.Open(busybox); err == nil {
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					err = errors.New("dynamically linked")
				}
			}
			f.Close()
		}
	}
	if err != nil {
		t.Fatalf("a static busybox is needed for the container (Debian busybox-static): %v", err)
	}
	return busybox
}

func newHookEnv(t *testing.T) *hookEnv {
	t.Helper()
	busybox := needHookHost(t)
	dir, err := os.MkdirTemp("", "nsmA-hook-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &hookEnv{dir: dir, bin: filepath.Join(dir, "nsmount"), policy: filepath.Join(dir, "policy.json"), runcRoot: filepath.Join(dir, "runc"), busybox: busybox}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goBin, "build", "-o", e.bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build nsmount: %v: %s", err, out)
	}
	policy := `{"version": 1, "allow": [{"name": "test", "servers": ["192.0.2.1", "nfs.hook.test"], "networks": ["192.0.2.0/24"],
	  "exports": ["/export"], "targets": ["/data", "/mnt/*"], "options": ["vers", "nolock"]}]}`
	if err := os.WriteFile(e.policy, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// bundle writes a bundle for container id: a busybox rootfs with /data and
// /mnt, a config.json with the annotation (none if "-"), the hooks, and
// the network namespace netns (a new one if "").
func (e *hookEnv) bundle(t *testing.T, id, annotation, netns, policy string, hosts string) (bundle, logFile string) {
	t.Helper()
	bundle = filepath.Join(e.dir, id)
	rootfs := filepath.Join(bundle, "rootfs")
	for _, d := range []string{"bin", "data", "mnt", "etc", "proc", "dev"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile(e.busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "sleep"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "hosts"), []byte("127.0.0.1 localhost\n"+hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile = filepath.Join(bundle, "hook.log")
	timeout := 60
	spec := specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: id,
		Process: &specs.Process{
			Args: []string{"/bin/sleep", "600"}, Cwd: "/", Env: []string{"PATH=/bin"},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755", "size=1m"}},
		},
		Hooks: &specs.Hooks{
			CreateRuntime: []specs.Hook{{Path: e.bin, Args: []string{"nsmount", "hook", "--policy", policy, "--log", logFile, "--state-dir", filepath.Join(e.dir, "state")}, Timeout: &timeout}},
			Poststop:      []specs.Hook{{Path: e.bin, Args: []string{"nsmount", "hook", "--stage", "poststop", "--log", logFile, "--state-dir", filepath.Join(e.dir, "state")}, Timeout: &timeout}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.NetworkNamespace, Path: netns},
			},
		},
	}
	if annotation != "-" {
		spec.Annotations = map[string]string{admission.MountsAnnotation: annotation}
		if strings.HasPrefix(id, "nsmA-sandbox") {
			spec.Annotations["io.kubernetes.cri.container-type"] = "sandbox"
		}
	}
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return bundle, logFile
}

// runc runs runc with the test's root; output goes to a file, since a
// detached container keeps runc's stdio open.
func (e *hookEnv) runc(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := os.CreateTemp(e.dir, "runc-out-")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "runc", append([]string{"--root", e.runcRoot}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	text, rerr := os.ReadFile(out.Name())
	if rerr != nil {
		t.Fatal(rerr)
	}
	return string(text), err
}

// netnsWithServers makes a named netns whose lo has the given addresses,
// each accepting TCP on port 2049 (enough for the preflight check; nothing
// leaves the netns). It is removed when the test ends.
func netnsWithServers(t *testing.T, name string, addrs ...string) string {
	t.Helper()
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ip("-n", name, "link", "set", "lo", "up")
	path := "/run/netns/" + name
	tgt, err := nsmount.OpenPaths(path, "/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	for _, a := range addrs {
		ip("-n", name, "addr", "add", a+"/32", "dev", "lo")
		var ln net.Listener
		err := tgt.Do(nsmount.NetNS, func() error {
			var err error
			ln, err = net.Listen("tcp", net.JoinHostPort(a, "2049"))
			return err
		})
		if err != nil {
			t.Fatalf("listen on %s in %s: %v", a, name, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	return path
}

// TestHookRunc runs real runc containers whose config.json carries the
// annotation and `nsmount hook` as createRuntime and poststop hooks. The host
// kernel has no NFS, so no mount succeeds here: the lab VM tests that.
func TestHookRunc(t *testing.T) {
	e := newHookEnv(t)
	const entry = `{"server": "192.0.2.1", "export": "/export", "target": "/data"`
	tests := []struct {
		name       string
		annotation string // "-": none
		netns      string // "servers": a netns with listeners on 192.0.2.1 and 198.51.100.7; "": new
		policy     string // "": the test policy
		hosts      string // extra lines of the container's /etc/hosts
		start      bool   // the container must start
		want       []string
		check      func(t *testing.T, bundle string)
	}{
		{name: "no-annotation", annotation: "-", start: true},
		// A CRI pod's sandbox gets the pod's annotations too: ignored (the
		// mount would fail: the server is unreachable).
		{name: "sandbox", annotation: `[` + entry + `}]`, start: true,
			want: []string{"nsmount: container nsmA-sandbox: pod sandbox: nsmount.io/mounts ignored"}},
		{name: "empty-list", annotation: "[]", start: true},
		{name: "denied", annotation: `[{"server": "203.0.113.5", "export": "/export", "target": "/data"}]`,
			want: []string{"exit status 11", `nsmount: container nsmA-denied: mount 203.0.113.5:/export on /data: denied by policy ` + e.policy + `: server \"203.0.113.5\" is not allowed`}},
		{name: "suid", annotation: `[` + entry + `, "options": "vers=4.2,suid"}]`,
			want: []string{"exit status 11", `option \"suid\" is not allowed: nosuid is enforced`}},
		{name: "malformed", annotation: `[` + entry + `, "requierd": false}]`,
			want: []string{"exit status 3", `nsmount: container nsmA-malformed: nsmount.io/mounts[0]: unknown field \"requierd\"`}},
		{name: "optional-unreachable", annotation: `[` + entry + `, "required": false}]`, start: true,
			want: []string{"nsmount: container nsmA-optional-unreachable: warning: optional mount 192.0.2.1:/export on /data skipped: server 192.0.2.1 from pid", "no route"}},
		{name: "required-unreachable", annotation: `[` + entry + `}]`,
			want: []string{"exit status 6", "nsmount: container nsmA-required-unreachable: mount 192.0.2.1:/export on /data: server 192.0.2.1 from pid", "no route"}},
		{name: "denied-optional-then-unreachable", annotation: `[{"server": "203.0.113.5", "export": "/export", "target": "/mnt/a", "required": false}, ` + entry + `}]`,
			want: []string{"exit status 6", `warning: optional mount 203.0.113.5:/export on /mnt/a skipped: denied by policy`, "mount 192.0.2.1:/export on /data: server 192.0.2.1"}},
		{name: "no-policy", annotation: `[` + entry + `}]`, policy: "missing.json",
			want: []string{"exit status 11", "denied: policy", "missing.json does not exist (deny by default)"}},
		{name: "resolved-outside", annotation: `[{"server": "nfs.hook.test", "export": "/export", "target": "/data"}]`,
			netns: "servers", hosts: "198.51.100.7 nfs.hook.test\n",
			want: []string{"exit status 11", `denied by policy ` + e.policy + `: server \"nfs.hook.test\" resolved to 198.51.100.7, outside the networks of rule 0 \"test\"`}},
		{name: "mkdir-in-rootfs", annotation: `[{"server": "nfs.hook.test", "export": "/export", "target": "/mnt/nsmA-new/dir", "mkdir": true}]`,
			netns: "servers", hosts: "192.0.2.1 nfs.hook.test\n",
			want: []string{"exit status 7", "fsopen nfs: filesystem type not supported by this kernel"},
			check: func(t *testing.T, bundle string) {
				if fi, err := os.Stat(filepath.Join(bundle, "rootfs/mnt/nsmA-new/dir")); err != nil || !fi.IsDir() {
					t.Errorf("target not created inside the container's rootfs: %v", err)
				}
				if _, err := os.Lstat("/mnt/nsmA-new"); !errors.Is(err, os.ErrNotExist) {
					os.RemoveAll("/mnt/nsmA-new")
					t.Errorf("target created on the host: %v", err)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := "nsmA-" + tc.name
			netns := ""
			if tc.netns == "servers" {
				netns = netnsWithServers(t, id, "192.0.2.1", "198.51.100.7")
			}
			policy := e.policy
			if tc.policy != "" {
				policy = filepath.Join(e.dir, tc.policy)
			}
			bundle, logFile := e.bundle(t, id, tc.annotation, netns, policy, tc.hosts)
			t.Cleanup(func() { e.runc(t, "delete", "--force", id) })
			start := time.Now()
			out, err := e.runc(t, "run", "-d", "--bundle", bundle, id)
			took := time.Since(start)
			log, _ := os.ReadFile(logFile)
			t.Logf("runc run (%v): %v: %s", took.Round(time.Millisecond), err, out)
			t.Logf("hook log: %s", log)
			if tc.start {
				if err != nil {
					t.Fatalf("container did not start: %v: %s", err, out)
				}
				state, err := e.runc(t, "state", id)
				if err != nil || !strings.Contains(state, `"status": "running"`) {
					t.Errorf("container state: %v: %s", err, state)
				}
				for _, w := range tc.want {
					if !strings.Contains(string(log), w) {
						t.Errorf("hook log lacks %q", w)
					}
				}
				// poststop runs at delete; it must not fail.
				if out, err := e.runc(t, "delete", "--force", id); err != nil || strings.Contains(out, "hook") {
					t.Errorf("runc delete: %v: %s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("container started, want runc to fail with %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("runc output lacks %q", w)
				}
			}
			if n := strings.Count(out, "stderr: nsmount: container "+id+": "); n != 1 {
				t.Errorf("runc output has %d nsmount error lines, want 1", n)
			}
			if state, err := e.runc(t, "state", id); err == nil {
				t.Errorf("failed container still exists: %s", state)
			}
			if tc.check != nil {
				tc.check(t, bundle)
			}
		})
	}
	if out, err := e.runc(t, "list", "-q"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("runc list after the tests: %v: %q", err, out)
	}
}

// TestHookNoAnnotationNoPolicy: a container without the annotation needs no
// policy file, no bundle, no log: the hook touches nothing and exits 0.
func TestHookNoAnnotationNoPolicy(t *testing.T) {
	cmd := newRootCommand()
	var stderr bytes.Buffer
	cmd.SetIn(strings.NewReader(`{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":1,"bundle":"/nonexistent","annotations":{"other":"x"}}`))
	cmd.SetErr(&stderr)
	cmd.SetArgs([]string{"hook", "--policy", "/nonexistent/policy.json", "--log", "/nonexistent/hook.log"})
	if err := cmd.Execute(); err != nil || stderr.Len() != 0 {
		t.Errorf("hook = %v, stderr %q; want success, silent", err, stderr.String())
	}
	cmd.SetIn(strings.NewReader(`{"ociVersion":"1.0.2","id":"c1","status":"running","pid":1,"bundle":"/b"}`))
	cmd.SetArgs([]string{"hook"})
	err := cmd.Execute()
	var uerr usageError
	if !errors.As(err, &uerr) {
		t.Errorf("hook with status running and no --stage = %v, want a usage error", err)
	}
	cmd = newRootCommand()
	cmd.SetIn(strings.NewReader(`{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":1,"bundle":"/b"}`))
	cmd.SetArgs([]string{"hook", "--stage", "prestart"})
	if err := cmd.Execute(); !errors.As(err, &uerr) || !strings.Contains(err.Error(), `--stage "prestart": want createRuntime or poststop`) {
		t.Errorf("hook --stage prestart = %v, want a usage error naming the stages", err)
	}
	cmd = newRootCommand()
	cmd.SetIn(strings.NewReader(`{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":1,"bundle":"/b"}`))
	cmd.SetArgs([]string{"hook", "--owner", "cli"})
	if err := cmd.Execute(); !errors.As(err, &uerr) || !strings.Contains(err.Error(), `--owner "cli": want hook or nri`) {
		t.Errorf("hook --owner cli = %v, want a usage error naming hook and nri", err)
	}
}
