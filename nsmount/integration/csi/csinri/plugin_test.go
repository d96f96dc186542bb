package csinri

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/containerd/nri/pkg/api"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/csi"
)

func TestMain(m *testing.M) {
	nsmount.RunHelper()
	os.Exit(m.Run())
}

const uid = "4f0c1f4e-9a39-4b5e-8e57-0c4a4e1f6a01"

func pod(netns string, pid int) *api.PodSandbox {
	return &api.PodSandbox{
		Id: "sandbox-1", Name: "web-0", Namespace: "team-a", Uid: uid, Pid: uint32(pid),
		Linux: &api.LinuxPodSandbox{Namespaces: []*api.LinuxNamespace{{Type: "ipc"}, {Type: "network", Path: netns}}},
	}
}

func TestSandboxOf(t *testing.T) {
	got := SandboxOf(pod("/var/run/netns/cni-1", 42))
	want := csi.Sandbox{PodUID: uid, NetNS: "/var/run/netns/cni-1", PID: 42}
	if got != want {
		t.Errorf("SandboxOf = %+v, want %+v", got, want)
	}
	if sb := SandboxOf(&api.PodSandbox{Uid: uid}); sb.NetNS != "" {
		t.Errorf("SandboxOf of a pod without a netns = %+v", sb)
	}
}

// TestCreateContainerHeldBack: a container of a pod whose CSI volume is
// not mounted is refused (kubelet retries it), after the mount round
// started by RunPodSandbox ended; a pod without CSI volumes is let
// through. (No NFS on the host and no route in the sandbox: the mount
// fails here; the lab mounts.)
func TestCreateContainerHeldBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces")
	}
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{"version": 1, "allow": [{"servers": ["*"], "networks": ["198.51.100.0/24"], "exports": ["/export"], "csi": {"namespaces": ["team-a"]}}]}`), 0o644)
	svc, err := csi.New(csi.Config{NodeID: "n", Policy: policy, StateDir: filepath.Join(dir, "state"), MountNS: "/proc/self/ns/mnt", NoDiscovery: true, ProbeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p := New(svc, Config{Wait: 5 * time.Second})
	ctx := context.Background()

	sleeper := exec.Command("unshare", "--net", "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	netns := fmt.Sprintf("/proc/%d/ns/net", sleeper.Process.Pid)
	self, _ := os.Readlink("/proc/self/ns/net")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if l, _ := os.Readlink(netns); l != "" && l != self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sandbox process did not enter its netns")
		}
	}
	pd := pod(netns, sleeper.Process.Pid)

	if _, _, err := p.CreateContainer(ctx, pd, &api.Container{Name: "app"}); err != nil {
		t.Errorf("CreateContainer of a pod without CSI volumes: %v", err)
	}
	target := filepath.Join(dir, "pods", uid, "volumes", "kubernetes.io~csi", "data", "mount")
	os.MkdirAll(filepath.Dir(target), 0o750)
	_, err = svc.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{
		VolumeId: "data", TargetPath: target,
		VolumeCapability: &csipb.VolumeCapability{
			AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		VolumeContext: map[string]string{
			csi.KeyServer: "198.51.100.1", csi.KeyExport: "/export",
			csi.KeyPodUID: uid, csi.KeyPodName: "web-0", csi.KeyPodNamespace: "team-a",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.RunPodSandbox(ctx, pd); err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("RunPodSandbox took %v: the mounts must run in the background", d)
	}
	_, _, err = p.CreateContainer(ctx, pd, &api.Container{Name: "app"})
	if err == nil || !strings.Contains(err.Error(), "volume data (failed: ") || !strings.Contains(err.Error(), "container app") {
		t.Fatalf("CreateContainer with the volume unmounted: %v", err)
	}
	vols, _ := svc.PodVolumes(uid)
	if len(vols) != 1 || vols[0].State != csi.StateFailed {
		t.Errorf("PodVolumes = %+v", vols)
	}
	// The refusal started another round (kubelet's retry finds its outcome).
	p.wait(ctx, uid)
	p.rounds.Wait()
	if vols, _ := svc.PodVolumes(uid); len(vols) != 1 || vols[0].State != csi.StateFailed {
		t.Errorf("after the retry round: %+v", vols)
	}
	if err := p.StopPodSandbox(ctx, pd); err != nil {
		t.Fatal(err)
	}
	svc.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "data", TargetPath: target})
}
