//go:build !nsmount_split

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/testenv"
	"github.com/nsmount/nsmount/testenv/ctrdenv"
	"github.com/nsmount/nsmount/testenv/labtest"
)

// The NRI host lab: a containerd 2.x daemon (built from the module proxy)
// with CRI and NRI, running inside a node netns of our own, so that the
// CNI bridge plugin it runs makes the bridge there and never in the host's
// root netns.
//
//	nsm7-node: containerd, its shims and CNI plugins; bridge nsm7br0 with
//	           port nsm7-s1 and the pods' veths
//	nsm7-srv:  eth0 198.51.100.2/24, a TCP listener on 2049 (no NFS: the
//	           host kernel has none; enough for nsmount's reachability check)
//	pods:      eth0 from host-local, 198.51.100.100-199
const (
	nriNode, nriSrv = "nsm7-node", "nsm7-srv"
	nriBridge       = "nsm7br0"
	nriServer       = "198.51.100.2"
)

// tcpRecorder accepts TCP connections and records their peers.
type tcpRecorder struct {
	ln    net.Listener
	mu    sync.Mutex
	peers []string
	done  chan struct{}
}

func (r *tcpRecorder) serve() {
	defer close(r.done)
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		r.mu.Lock()
		r.peers = append(r.peers, host)
		r.mu.Unlock()
		c.Close()
	}
}

func (r *tcpRecorder) seen(ip string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.peers {
		if p == ip {
			return true
		}
	}
	return false
}

// nriPluginProc is a running `nsmount nri`.
type nriPluginProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	exited chan struct{}
	err    error
}

// startNRIPlugin runs `nsmount nri` against socket and waits until it has
// registered. It is stopped with SIGTERM when the test ends, and must then
// exit 0.
func startNRIPlugin(t *testing.T, bin string, args ...string) *nriPluginProc {
	t.Helper()
	p := &nriPluginProc{stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"nri"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start nsmount nri: %v", err)
	}
	go func() {
		defer close(p.exited)
		p.err = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(20 * time.Second):
				p.cmd.Process.Kill()
				<-p.exited
				t.Errorf("nsmount nri did not exit within 20s of SIGTERM")
			}
		}
		t.Logf("nsmount nri (%v):\n%s", p.err, p.stderr)
		if p.err != nil {
			t.Errorf("nsmount nri exited with %v, want 0", p.err)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.stderr.String(), "registered with the runtime") {
		select {
		case <-p.exited:
			t.Fatalf("nsmount nri exited (%v) before registering: %s", p.err, p.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nsmount nri did not register within 15s: %s", p.stderr)
		}
	}
	return p
}

// criInfo is the part of the verbose status info of a pod or container
// that the test reads.
type criInfo struct {
	Pid         int         `json:"pid"`
	RuntimeSpec *specs.Spec `json:"runtimeSpec"`
}

func parseCRIInfo(t *testing.T, info map[string]string) criInfo {
	t.Helper()
	var ci criInfo
	if err := json.Unmarshal([]byte(info["info"]), &ci); err != nil {
		t.Fatalf("verbose status info: %v: %q", err, info["info"])
	}
	return ci
}

// procsInNetNS returns the processes whose network namespace has inode ino.
func procsInNetNS(ino uint64) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) == nil && st.Ino == ino {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestNRIContainerd runs nsmount nri against a real containerd 2.x with CRI
// and NRI, and drives it with the CRI API as the kubelet would: a pod whose
// annotations ask for mounts, with containers that cover each way a
// container gets (or is refused) its mounts. The host kernel has no NFS:
// the mount call itself fails, after nsmount reached the server from the
// pod's netns (the lab VM test makes the mount).
func TestNRIContainerd(t *testing.T) {
	busybox := needHookHost(t)
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(debianCNI, p)); err != nil {
			t.Fatalf("CNI plugin %s missing (install containernetworking-plugins: testenv/install-deps.sh): %v", p, err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	ctrd, err := testenv.Containerd2(ctx, "", nil)
	if err != nil {
		t.Fatalf("containerd %s for the NRI test: %v", testenv.Containerd2Version, err)
	}
	t.Logf("containerd %s in %s (%v)", testenv.Containerd2Version, ctrd, time.Since(start).Round(time.Millisecond))

	dir, err := os.MkdirTemp("", "nsm7-nri-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "nsmount")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}

	// The network: node and server netns, bridge, server listener.
	addNS(t, nriNode)
	addNS(t, nriSrv)
	cmd(t, "ip", "-n", nriNode, "link", "add", nriBridge, "type", "bridge")
	cmd(t, "ip", "-n", nriNode, "link", "set", nriBridge, "up")
	cmd(t, "ip", "link", "add", "nsm7-s1", "netns", nriNode, "type", "veth", "peer", "name", "eth0", "netns", nriSrv)
	cmd(t, "ip", "-n", nriNode, "link", "set", "nsm7-s1", "master", nriBridge, "up")
	cmd(t, "ip", "-n", nriSrv, "addr", "add", nriServer+"/24", "dev", "eth0")
	cmd(t, "ip", "-n", nriSrv, "link", "set", "eth0", "up")
	rec := &tcpRecorder{done: make(chan struct{})}
	if err := inNS(nsHandle(t, nriSrv), func() error {
		var err error
		rec.ln, err = net.Listen("tcp", nriServer+":2049")
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", nriSrv, err)
	}
	go rec.serve()
	t.Cleanup(func() { rec.ln.Close(); <-rec.done })

	// CNI: Debian's plugins, a private configuration.
	cniBin, cniConf := filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf")
	for _, d := range []string{cniBin, cniConf, filepath.Join(dir, "logs")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if err := os.Symlink(filepath.Join(debianCNI, p), filepath.Join(cniBin, p)); err != nil {
			t.Fatal(err)
		}
	}
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "nsm7-net", "plugins": [{"type": "bridge", "bridge": %q,
	  "isGateway": false, "ipMasq": false, "ipam": {"type": "host-local", "dataDir": %q,
	  "ranges": [[{"subnet": "198.51.100.0/24", "rangeStart": "198.51.100.100", "rangeEnd": "198.51.100.199"}]]}}]}`,
		nriBridge, filepath.Join(dir, "ipam"))
	if err := os.WriteFile(filepath.Join(cniConf, "10-nsm7.conflist"), []byte(conflist), 0o600); err != nil {
		t.Fatal(err)
	}

	nriSocket := filepath.Join(dir, "nri.sock")
	c := labtest.StartContainerd(t, ctrdenv.ContainerdConfig{
		Containerd: filepath.Join(ctrd, "containerd"), Shim: filepath.Join(ctrd, "containerd-shim-runc-v2"),
		Busybox: busybox, Prefix: "nsm7", NetNS: "/run/netns/" + nriNode,
		CRI: &ctrdenv.CRIConfig{CNIBinDir: cniBin, CNIConfDir: cniConf, NRISocket: nriSocket},
	})

	policy, state, logFile := filepath.Join(dir, "policy.json"), filepath.Join(dir, "state"), filepath.Join(dir, "nsmount.log")
	if err := os.WriteFile(policy, []byte(`{"version": 1, "allow": [{"name": "nri", "servers": ["`+nriServer+`"],
	  "networks": ["198.51.100.0/24"], "exports": ["/export"], "targets": ["/data", "/mnt/*"], "options": ["vers", "nolock"]}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	plugin := startNRIPlugin(t, bin, "--socket", nriSocket, "--policy", policy, "--state-dir", state, "--log", logFile, "--nsmount", bin, "--plugin-idx", "07")

	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)

	const (
		required = `[{"server": "` + nriServer + `", "export": "/export", "target": "/data", "mkdir": true, "options": "vers=4.2"}]`
		optional = `[{"server": "` + nriServer + `", "export": "/export", "target": "/mnt/opt", "mkdir": true, "required": false}]`
	)
	podCfg := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: "nsm7-pod", Uid: "nsm7-uid", Namespace: "nsm7"},
		Hostname:     "nsm7-pod",
		LogDirectory: filepath.Join(dir, "logs"),
		Annotations: map[string]string{
			admission.MountsAnnotation:                required,
			"nsmount.io/mounts.container.optional":    optional,
			"nsmount.io/mounts.container.unannotated": "[]",
		},
		Linux: &cri.LinuxPodSandboxConfig{CgroupParent: c.CgroupParent()},
	}
	pod, err := rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podID := pod.PodSandboxId
	podStatus, err := rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: podID, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	podIP := podStatus.GetStatus().GetNetwork().GetIp()
	podInfo := parseCRIInfo(t, podStatus.Info)
	var podNetNS string
	for _, ns := range podInfo.RuntimeSpec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			podNetNS = ns.Path
		}
	}
	podNetIno := inodeOf(t, fmt.Sprintf("/proc/%d/ns/net", podInfo.Pid))
	if podNetNS == "" || inodeOf(t, podNetNS) != podNetIno || !strings.HasPrefix(podNetNS, c.Dir) {
		t.Fatalf("pod netns %q (pid %d): want a netns under %s that the pod is in", podNetNS, podInfo.Pid, c.Dir)
	}
	t.Logf("pod %s: ip %s, netns %s, pid %d", podID, podIP, podNetNS, podInfo.Pid)

	var created []string
	create := func(name string, annotations map[string]string) (string, error) {
		resp, err := rt.CreateContainer(ctx, &cri.CreateContainerRequest{
			PodSandboxId: podID, SandboxConfig: podCfg,
			Config: &cri.ContainerConfig{
				Metadata:    &cri.ContainerMetadata{Name: name},
				Image:       &cri.ImageSpec{Image: ctrdenv.BusyboxImageName},
				Command:     []string{"sleep", "3600"},
				Annotations: annotations,
				LogPath:     name + ".log",
			},
		})
		if err != nil {
			return "", err
		}
		created = append(created, resp.ContainerId)
		return resp.ContainerId, nil
	}
	status := func(t *testing.T, id string) (*cri.ContainerStatus, criInfo) {
		t.Helper()
		st, err := rt.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: id, Verbose: true})
		if err != nil {
			t.Fatalf("ContainerStatus %s: %v", id, err)
		}
		return st.Status, parseCRIInfo(t, st.Info)
	}
	hooksOf := func(spec *specs.Spec) (create, poststop []specs.Hook) {
		if spec.Hooks == nil {
			return nil, nil
		}
		return spec.Hooks.CreateRuntime, spec.Hooks.Poststop
	}
	logText := func() string {
		b, _ := os.ReadFile(logFile)
		return string(b)
	}

	// Refused at CreateContainer: nothing is created.
	for _, tc := range []struct {
		name, annotation, want string
	}{
		{"malformed", `[{"server": "` + nriServer + `", "export": "/export", "target": "/data", "requierd": true}]`,
			`nsmount: pod nsm7/nsm7-pod container malformed: container annotation nsmount.io/mounts: nsmount.io/mounts[0]: unknown field "requierd"`},
		{"denied", `[{"server": "203.0.113.5", "export": "/export", "target": "/data"}]`,
			`nsmount: pod nsm7/nsm7-pod container denied: mount 203.0.113.5:/export on /data: denied by policy ` + policy + `: server "203.0.113.5" is not allowed`},
		{"suid", `[{"server": "` + nriServer + `", "export": "/export", "target": "/data", "options": "suid"}]`,
			`option "suid" is not allowed: nosuid is enforced`},
	} {
		t.Run("create-"+tc.name, func(t *testing.T) {
			id, err := create(tc.name, map[string]string{admission.MountsAnnotation: tc.annotation})
			if err == nil {
				t.Fatalf("CreateContainer succeeded (%s), want it refused with %q", id, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CreateContainer: %v\nwant %q", err, tc.want)
			}
			t.Logf("CreateContainer: %v", err)
		})
	}

	// No mounts: the container's own empty list beats the pod's; no hooks.
	t.Run("unannotated", func(t *testing.T) {
		id, err := create("unannotated", nil)
		if err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		if _, err := rt.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}
		st, info := status(t, id)
		cr, ps := hooksOf(info.RuntimeSpec)
		if st.State != cri.ContainerState_CONTAINER_RUNNING || len(cr)+len(ps) != 0 {
			t.Errorf("state %v, hooks %v %v; want running without hooks", st.State, cr, ps)
		}
	})

	// Optional (pod annotation for this container): the hook reaches the
	// server from the pod's netns, the mount call fails, the container runs.
	t.Run("optional", func(t *testing.T) {
		id, err := create("optional", nil)
		if err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		_, info := status(t, id)
		cr, ps := hooksOf(info.RuntimeSpec)
		if got := info.RuntimeSpec.Annotations[admission.MountsAnnotation]; got != optional {
			t.Errorf("container annotation %q, want the pod's per-container one %q", got, optional)
		}
		if len(cr) != 1 || len(ps) != 1 || cr[0].Path != bin || !strings.Contains(strings.Join(cr[0].Args, " "), "hook --stage createRuntime --policy "+policy+" --state-dir "+state) {
			t.Errorf("hooks createRuntime %v poststop %v; want nsmount hook", cr, ps)
		}
		if _, err := rt.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer: %v\n%s", err, logText())
		}
		st, info := status(t, id)
		if st.State != cri.ContainerState_CONTAINER_RUNNING {
			t.Errorf("state %v, want running", st.State)
		}
		want := "nsmount: container " + id + ": warning: optional mount " + nriServer + ":/export on /mnt/opt skipped: "
		log := logText()
		if !strings.Contains(log, want) || !strings.Contains(log, "fsopen nfs: filesystem type not supported by this kernel") {
			t.Errorf("log lacks %q ... fsopen nfs: not supported:\n%s", want, log)
		}
		if !rec.seen(podIP) {
			t.Errorf("the server saw no connection from the pod's address %s: %v", podIP, rec.peers)
		}
		if inodeOf(t, fmt.Sprintf("/proc/%d/ns/net", info.Pid)) != podNetIno {
			t.Errorf("container not in the pod's netns")
		}
	})

	// Required (the pod's annotation for all containers): the mount call
	// fails, so the createRuntime hook fails StartContainer naming it.
	t.Run("required", func(t *testing.T) {
		id, err := create("required", nil)
		if err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		_, err = rt.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: id})
		for _, want := range []string{"nsmount: container " + id + ": mount " + nriServer + ":/export on /data: ", "fsopen nfs: filesystem type not supported by this kernel"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("StartContainer: %v\nwant an error with %q", err, want)
			}
		}
		t.Logf("StartContainer: %v", err)
		if st, _ := status(t, id); st.State == cri.ContainerState_CONTAINER_RUNNING {
			t.Errorf("container running after its required mount failed")
		}
	})

	// Teardown as the kubelet does it.
	for _, id := range created {
		if _, err := rt.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
			t.Errorf("StopContainer %s: %v", id, err)
		}
		if _, err := rt.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Errorf("RemoveContainer %s: %v", id, err)
		}
	}
	if _, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Errorf("StopPodSandbox: %v", err)
	}
	if _, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Errorf("RemovePodSandbox: %v", err)
	}

	t.Run("teardown", func(t *testing.T) {
		pods, err := rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
		if err != nil || len(pods.Items) != 0 {
			t.Errorf("pods left: %v %v", pods, err)
		}
		ctrs, err := rt.ListContainers(ctx, &cri.ListContainersRequest{})
		if err != nil || len(ctrs.Containers) != 0 {
			t.Errorf("containers left: %v %v", ctrs, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(procsInNetNS(podNetIno)) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if pids := procsInNetNS(podNetIno); len(pids) > 0 {
			t.Errorf("processes left in the pod's netns: %v", pids)
		}
		if _, err := os.Lstat(podNetNS); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pod netns %s still exists: %v", podNetNS, err)
		}
		if _, err := os.Stat(state); err == nil {
			reg, err := registry.Open(state)
			if err != nil {
				t.Fatal(err)
			}
			reg.View(func(s *registry.State) error {
				if len(s.Entries) != 0 {
					t.Errorf("registry entries left: %+v", s.Entries)
				}
				return nil
			})
		}
		if strings.Contains(plugin.stderr.String(), "level=WARN") {
			t.Errorf("cleanup warned:\n%s", plugin.stderr)
		}
	})
	t.Logf("nsmount log:\n%s", logText())
}
