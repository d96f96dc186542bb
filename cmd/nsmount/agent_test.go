//go:build !nsmount_split

package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
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

	"github.com/nsmount/nsmount/nsmount/integration/csi"
	"github.com/nsmount/nsmount/testenv/nriruntime"
)

func TestAgentUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--log-format", "xml"}, `--log-format "xml"`},
		{[]string{"agent", "--csi-endpoint", "unix:///x.sock"}, "--csi-endpoint needs --node-id"},
		{[]string{"agent", "--node-id", "n1"}, "--node-id needs --csi-endpoint"},
		{[]string{"agent", "--policy", "policy.json"}, `--policy "policy.json": want a clean absolute path`},
		{[]string{"agent", "--hook-policy", "/opt/../p.json"}, "--hook-policy"},
		{[]string{"agent", "--nri-plugin-idx", "1"}, `--nri-plugin-idx "1"`},
		{[]string{"agent", "extra"}, "want no arguments"},
		{[]string{"install"}, `--to "": want a clean absolute path`},
		{[]string{"install", "--to", "bin"}, `--to "bin"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, stderr, code := runCLI(t, append(tc.args, "--state-dir", filepath.Join(dir, "nsmAreg"))...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("exit %d, stderr %q; want exit 2 with %q", code, stderr, tc.want)
			}
		})
	}
}

// TestInstallCLI: nsmount install copies the running binary, 0755, into a
// directory it makes, and says when it was there already.
func TestInstallCLI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "opt", "nsmount", "bin")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"installed " + dir + "/nsmount (", "up to date: " + dir + "/nsmount ("} {
		stdout, stderr, code := runCLI(t, "install", "--to", dir)
		if code != 0 || !strings.HasPrefix(stdout, want) || !strings.Contains(stdout, "bytes, sha256:") || stderr != "" {
			t.Errorf("install: exit %d, %q %q; want %q", code, stdout, stderr, want)
		}
	}
	got, err := os.ReadFile(filepath.Join(dir, "nsmount"))
	fi, _ := os.Stat(filepath.Join(dir, "nsmount"))
	if err != nil || !bytes.Equal(got, self) || fi.Mode() != 0o755 {
		t.Errorf("installed binary: %v, same bytes %v, mode %v", err, bytes.Equal(got, self), fi.Mode())
	}
}

// agentProc is a running `nsmount agent`.
type agentProc struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
	err    error
}

// startAgent runs `nsmount agent ARGS` (JSON logs) and waits until it
// serves its metrics; it returns the process and its base URL.
func startAgent(t *testing.T, args ...string) (*agentProc, string) {
	t.Helper()
	p := &agentProc{out: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], append([]string{"agent", "--log-format", "json", "--metrics-address", "127.0.0.1:0"}, args...)...)
	p.cmd.Env = append(os.Environ(), envMain+"=1")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.exited)
		p.err = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("nsmount agent:\n%s", p.out)
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		for _, line := range strings.Split(p.out.String(), "\n") {
			var rec struct{ Msg, Address string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving metrics" {
				return p, "http://" + rec.Address
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("nsmount agent exited (%v):\n%s", p.err, p.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nsmount agent does not serve its metrics after 15s:\n%s", p.out)
		}
	}
}

// stop sends SIGTERM and returns how long the agent took to exit.
func (p *agentProc) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("nsmount agent did not exit within 30s of SIGTERM")
	}
	if p.err != nil {
		t.Errorf("nsmount agent exited with %v after SIGTERM, want 0", p.err)
	}
	return time.Since(start)
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// snapshot returns every file under dir and its content.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			data, _ := os.ReadFile(p)
			files[p] = string(data)
		}
		return nil
	})
	return files
}

// TestAgentStopAndRestart runs `nsmount agent` as the chart does (the
// policy mirrored for the hooks, CSI, metrics) against containerd/nri's
// runtime side in the test process: it registers, serves CSI (a volume
// published before the pod's sandbox exists, recorded), and on SIGTERM
// exits 0 within seconds, the NRI registration gone and the registry and
// the CSI record as they were (mounts stay: the lab shows them); a new
// agent registers again and finds the volume published.
func TestAgentStopAndRestart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mount namespaces")
	}
	dir := t.TempDir()
	state, kubelet := filepath.Join(dir, "state"), filepath.Join(dir, "kubelet")
	policy, hookPolicy := filepath.Join(dir, "policy.json"), filepath.Join(dir, "opt", "policy.json")
	if err := os.WriteFile(policy, []byte(`{"version": 1, "allow": [{"name": "nsmA", "servers": ["192.0.2.1"], "networks": ["192.0.2.0/24"], "exports": ["/export"], "csi": {"namespaces": ["nsma"]}}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	sock, csiSock := filepath.Join(dir, "nri.sock"), filepath.Join(dir, "csi.sock")
	rt, err := nriruntime.Start(sock, filepath.Join(dir, "runtime"))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Stop()
	args := []string{"--state-dir", state, "--policy", policy, "--hook-policy", hookPolicy, "--hook-binary", os.Args[0],
		"--nri-socket", sock, "--nri-plugin-name", "nsmA", "--csi-endpoint", "unix://" + csiSock, "--node-id", "nsmA-node",
		"--kubelet-dir", kubelet, "--mount-ns", "/proc/self/ns/mnt", "--no-kernel-log"}

	synced := func(what string) {
		t.Helper()
		select {
		case s := <-rt.Synced():
			if s.Err != nil {
				t.Fatalf("%s: synchronize: %v", what, s.Err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("%s: not registered within 15s", what)
		}
	}
	const uid = "6b1d3f0e-6a7c-4d2b-9e8f-0000000000aa"
	target := filepath.Join(kubelet, "pods", uid, "volumes", "kubernetes.io~csi", "data", "mount")
	os.MkdirAll(filepath.Dir(target), 0o750)
	publish := func() error {
		cc, err := grpc.NewClient("unix://"+csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		_, err = csipb.NewNodeClient(cc).NodePublishVolume(t.Context(), &csipb.NodePublishVolumeRequest{
			VolumeId: "data", TargetPath: target,
			VolumeCapability: &csipb.VolumeCapability{
				AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
				AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
			},
			VolumeContext: map[string]string{csi.KeyServer: "192.0.2.1", csi.KeyExport: "/export",
				csi.KeyPodUID: uid, csi.KeyPodName: "web", csi.KeyPodNamespace: "nsma"},
		})
		return err
	}

	first, base := startAgent(t, args...)
	synced("first agent")
	healthy := func(base string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if code, _ := httpGet(t, base+"/healthz"); code == 200 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/healthz not ok within 10s")
			}
		}
	}
	healthy(base)
	if code, body := httpGet(t, base+"/healthz"); code != 200 || !strings.Contains(body, "nri: connected") || !strings.Contains(body, "csi: serving") {
		t.Errorf("/healthz: %d\n%s", code, body)
	}
	if data, err := os.ReadFile(hookPolicy); err != nil || !strings.Contains(string(data), `"nsmA"`) {
		t.Errorf("the policy's copy for the hooks: %v %q", err, data)
	}
	if err := publish(); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	before := snapshot(t, state)
	took := first.stop(t)
	t.Logf("the agent stopped %s after SIGTERM", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("stopping took %s", took)
	}
	log := first.out.String()
	for _, want := range []string{`"msg":"stopping: every mount stays in place"`, `"msg":"stopped"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
	if after := snapshot(t, state); len(after) == 0 || len(after) != len(before) {
		t.Errorf("the state changed at the stop: %d files before, %d after", len(before), len(after))
	} else {
		for p, data := range before {
			if after[p] != data {
				t.Errorf("%s changed at the stop", p)
			}
		}
	}
	if _, err := os.Stat(target); err != nil {
		t.Errorf("the target directory went at the stop: %v", err)
	}

	second, base := startAgent(t, args...)
	synced("second agent")
	if err := publish(); err != nil {
		t.Errorf("NodePublishVolume again, after the restart: %v (the record must be found)", err)
	}
	if !strings.Contains(second.out.String(), `"msg":"registered with the runtime"`) {
		t.Errorf("the second agent did not register:\n%s", second.out)
	}
	healthy(base)
	second.stop(t)
}
