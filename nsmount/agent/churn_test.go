package agent_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/containerd/nri/pkg/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/agent"
	"github.com/nsmount/nsmount/nsmount/integration/csi"
	"github.com/nsmount/nsmount/nsmount/integration/nri/nriconn"
	"github.com/nsmount/nsmount/testenv/nriruntime"
)

// Churn is how many pods TestNRIChurn creates and removes.
const churn = 200

// sandbox starts a process in a network namespace of its own, as a pod's
// sandbox, ended when the test ends.
func sandbox(t *testing.T) (netns string, pid int) {
	t.Helper()
	cmd := exec.Command("unshare", "--net", "sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	netns = fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)
	self, _ := os.Readlink("/proc/self/ns/net")
	waitFor(t, 5*time.Second, "the sandbox in its netns", func() bool {
		l, _ := os.Readlink(netns)
		return l != "" && l != self
	})
	return netns, cmd.Process.Pid
}

// pod is pod number i of the test, in the sandbox's netns.
func pod(i int, netns string, pid int, ann map[string]string) *api.PodSandbox {
	return &api.PodSandbox{
		Id: fmt.Sprintf("nsmA-pod-%03d", i), Name: fmt.Sprintf("web-%d", i), Namespace: "nsma",
		Uid: fmt.Sprintf("6b1d3f0e-6a7c-4d2b-9e8f-%012d", i), Pid: uint32(pid), Annotations: ann,
		Linux: &api.LinuxPodSandbox{Namespaces: []*api.LinuxNamespace{{Type: "network", Path: netns}}},
	}
}

const (
	admitted = `[{"server": "192.0.2.1", "export": "/export", "target": "/data", "options": "vers=4.2"}]`
	denied   = `[{"server": "203.0.113.9", "export": "/export", "target": "/data"}]`
)

// kind is one kind of pod of the churn: what the agent must answer at
// its container's CreateContainer.
type kind struct {
	name           string
	podAnn, ctrAnn map[string]string
	hooks          string // the annotation value the hooks are added for; "" no hooks
	err            string // CreateContainer fails with this
}

var kinds = []kind{
	{name: "pod annotation, admitted", podAnn: map[string]string{admission.MountsAnnotation: admitted}, hooks: admitted},
	{name: "no annotation"},
	{name: "container annotation, denied", ctrAnn: map[string]string{admission.MountsAnnotation: denied}, err: `denied by policy`},
	{name: "the container's own empty list", podAnn: map[string]string{admission.MountsAnnotation: admitted}, ctrAnn: map[string]string{admission.MountsAnnotation: "[]"}},
	{name: "another container's annotation", podAnn: map[string]string{"nsmount.io/mounts.container.side": admitted}},
	{name: "this container's annotation, admitted", podAnn: map[string]string{"nsmount.io/mounts.container.app": admitted}, hooks: admitted},
}

// checkAdjustment checks CreateContainer's answer for a pod of kind k.
func (s *setup) checkAdjustment(t *testing.T, k kind, adj *api.ContainerAdjustment, err error) {
	t.Helper()
	switch {
	case k.err != "":
		if err == nil || !strings.Contains(err.Error(), k.err) {
			t.Fatalf("%s: CreateContainer = %v, %v; want an error with %q", k.name, adj, err, k.err)
		}
		return
	case err != nil:
		t.Fatalf("%s: CreateContainer: %v", k.name, err)
	case k.hooks == "":
		if len(adj.GetHooks().GetCreateRuntime()) != 0 || len(adj.GetHooks().GetPoststop()) != 0 || adj.GetAnnotations()[admission.MountsAnnotation] != "" {
			t.Fatalf("%s: adjustment %v, want no hooks", k.name, adj)
		}
		return
	}
	cr, ps := adj.GetHooks().GetCreateRuntime(), adj.GetHooks().GetPoststop()
	if len(cr) != 1 || len(ps) != 1 || cr[0].Path != s.exe || ps[0].Path != s.exe || adj.GetAnnotations()[admission.MountsAnnotation] != k.hooks {
		t.Fatalf("%s: adjustment %v, want the annotation and nsmount hook as createRuntime and poststop hooks", k.name, adj)
	}
	want := []string{"nsmount", "hook", "--stage", "createRuntime", "--policy", s.hookPolicy, "--state-dir", s.state, "--owner", "nri"}
	if !slices.Equal(cr[0].Args, want) {
		t.Fatalf("%s: createRuntime hook %v, want %v (the policy the agent mirrors)", k.name, cr[0].Args, want)
	}
}

// resources are the process's goroutines and open fds.
func resources() (goroutines, fds int) {
	ents, _ := os.ReadDir("/proc/self/fd")
	return runtime.NumGoroutine(), len(ents)
}

// settled waits until the goroutine and fd counts have not changed for
// half a second (the cleanups in the background are done), for up to d.
func settled(t *testing.T, d time.Duration) (goroutines, fds int) {
	t.Helper()
	g, f := resources()
	stable := 0
	for deadline := time.Now().Add(d); stable < 5 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		g2, f2 := resources()
		if g2 == g && f2 == f {
			stable++
		} else {
			g, f, stable = g2, f2, 0
		}
	}
	return g, f
}

// TestNRIChurn runs the agent against containerd/nri's own runtime side
// (in this process, on a socket of the test's own): it registers once,
// for both the hook injection and the CSI relay; churn pods are created
// and removed (RunPodSandbox, CreateContainer with and without the mounts
// annotation, StopContainer, RemoveContainer, StopPodSandbox,
// RemovePodSandbox), every adjustment checked; the goroutines and fds of
// the process do not grow across the cycles; a CSI volume published for a
// pod holds its container back (the host has no NFS: its mount fails); the
// runtime restarts on the same socket and the agent registers again
// within seconds, is synchronized (with the pod that lived through the
// restart) and goes on adjusting.
func TestNRIChurn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces")
	}
	s := newSetup(t)
	c := s.config()
	c.NRI.MaxDelay = 0 // the default: what the runtime's restart costs
	kubelet := filepath.Join(s.dir, "kubelet")
	c.CSI = &agent.CSIConfig{Endpoint: "unix://" + filepath.Join(s.dir, "csi.sock"),
		Service: csi.Config{NodeID: "nsmA-node", MountNS: "/proc/self/ns/mnt", TargetRoot: kubelet, NoDiscovery: true, ProbeTimeout: time.Second}}
	rt, err := nriruntime.Start(s.socket, filepath.Join(s.dir, "runtime"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Stop)
	a, base := start(t, c)
	select {
	case sy := <-rt.Synced():
		if sy.Err != nil {
			t.Fatal(sy.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not register within 10s")
	}
	waitFor(t, 5*time.Second, "/healthz ok", func() bool { code, _ := get(t, base+"/healthz"); return code == 200 })
	if code, body := get(t, base+"/healthz"); code != 200 || !strings.HasPrefix(body, "ok\nnri: connected since ") || !strings.Contains(body, "csi: serving unix://") {
		t.Errorf("/healthz: %d\n%s", code, body)
	}
	netns, pid := sandbox(t)
	ctx := t.Context()
	recorded := 0

	reg := a.Registry()
	cycle := func(i int) {
		t.Helper()
		k := kinds[i%len(kinds)]
		p := pod(i, netns, pid, k.podAnn)
		if k.hooks != "" && i%10 == 0 {
			// What a hook would have recorded for the container, its
			// mount gone: the container's cleanup must forget it.
			gone := nsmount.NSID{Dev: 4, Ino: uint64(1000 + i)}
			if err := reg.Update(func(s *registry.State) error {
				s.Put(registry.Entry{ID: fmt.Sprintf("%d:1", 1000+i), Target: registry.Identity{NetNS: gone, MountNS: gone, Container: fmt.Sprintf("nsmA-ctr-%03d", i)},
					Mountpoint: "/data", Source: "192.0.2.1:/export", Server: "192.0.2.1", Address: "192.0.2.1", FSType: "nfs",
					Owner: cachectl.OwnerNRI, Created: time.Now().Add(-time.Hour)})
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			recorded++
		}
		if err := rt.RunPod(ctx, p); err != nil {
			t.Fatalf("pod %d: RunPodSandbox: %v", i, err)
		}
		ctr := &api.Container{Id: fmt.Sprintf("nsmA-ctr-%03d", i), PodSandboxId: p.Id, Name: "app", Annotations: k.ctrAnn}
		adj, err := rt.CreateContainer(ctx, p, ctr)
		s.checkAdjustment(t, k, adj, err)
		if err == nil {
			if err := rt.StopContainer(ctx, p, ctr); err != nil {
				t.Fatalf("pod %d: StopContainer: %v", i, err)
			}
			if err := rt.RemoveContainer(ctx, p, ctr); err != nil {
				t.Fatalf("pod %d: RemoveContainer: %v", i, err)
			}
		}
		if err := rt.StopPod(ctx, p); err != nil {
			t.Fatalf("pod %d: StopPodSandbox: %v", i, err)
		}
		if err := rt.RemovePod(ctx, p); err != nil {
			t.Fatalf("pod %d: RemovePodSandbox: %v", i, err)
		}
	}
	cycle(0) // the first of each thing (the Manager's registry, gRPC's pools) is made once
	g0, f0 := settled(t, 30*time.Second)
	begin := time.Now()
	for i := 1; i <= churn; i++ {
		cycle(i)
	}
	took := time.Since(begin)
	g1, f1 := settled(t, 60*time.Second)
	t.Logf("%d pods created and removed in %s (%s each); goroutines %d before, %d after; fds %d before, %d after",
		churn, took.Round(time.Millisecond), (took / churn).Round(time.Microsecond), g0, g1, f0, f1)
	if g1 > g0 || f1 > f0 {
		t.Errorf("the cycles leaked: goroutines %d -> %d, fds %d -> %d", g0, g1, f0, f1)
	}
	entries := -1
	reg.View(func(s *registry.State) error { entries = len(s.Entries); return nil })
	forgot := strings.Count(s.logs.String(), `msg="forgot 192.0.2.1:/export at /data: `)
	t.Logf("%d entries recorded for the containers, %d left, %d reported forgotten by their container's cleanup", recorded, entries, forgot)
	if entries != 0 || forgot == 0 {
		t.Errorf("the containers' cleanups did not run")
	}
	if h := a.Health(); h.NRI.Registrations != 1 {
		t.Errorf("registered %d times during the cycles (the runtime dropped a slow plugin?), want once", h.NRI.Registrations)
	}

	t.Run("CSI hold-back, then the hooks", func(t *testing.T) {
		i := churn + 1
		p := pod(i, netns, pid, map[string]string{admission.MountsAnnotation: admitted})
		target := filepath.Join(kubelet, "pods", p.Uid, "volumes", "kubernetes.io~csi", "data", "mount")
		os.MkdirAll(filepath.Dir(target), 0o750)
		cc, err := grpc.NewClient("unix://"+filepath.Join(s.dir, "csi.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		node := csipb.NewNodeClient(cc)
		if _, err := node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{
			VolumeId: "data", TargetPath: target,
			VolumeCapability: &csipb.VolumeCapability{
				AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
				AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
			},
			VolumeContext: map[string]string{csi.KeyServer: "192.0.2.1", csi.KeyExport: "/export",
				csi.KeyPodUID: p.Uid, csi.KeyPodName: p.Name, csi.KeyPodNamespace: p.Namespace},
		}); err != nil {
			t.Fatalf("NodePublishVolume: %v", err)
		}
		if err := rt.RunPod(ctx, p); err != nil {
			t.Fatal(err)
		}
		ctr := &api.Container{Id: "nsmA-held", PodSandboxId: p.Id, Name: "app"}
		adj, err := rt.CreateContainer(ctx, p, ctr)
		if err == nil || !strings.Contains(err.Error(), "CSI volumes not mounted from the pod's network yet") || !strings.Contains(err.Error(), "volume data (failed: ") {
			t.Errorf("CreateContainer with the CSI volume unmounted = %v, %v; want it held back", adj, err)
		}
		if _, err := node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "data", TargetPath: target}); err != nil {
			t.Errorf("NodeUnpublishVolume: %v", err)
		}
		adj, err = rt.CreateContainer(ctx, p, ctr)
		s.checkAdjustment(t, kinds[0], adj, err)
		rt.RemoveContainer(ctx, p, ctr)
		rt.StopPod(ctx, p)
		rt.RemovePod(ctx, p)
	})

	t.Run("runtime restart", func(t *testing.T) {
		// A pod and its container live through the restart.
		k := kinds[0]
		p := pod(churn+2, netns, pid, k.podAnn)
		if err := rt.RunPod(ctx, p); err != nil {
			t.Fatal(err)
		}
		ctr := &api.Container{Id: "nsmA-kept", PodSandboxId: p.Id, Name: "app"}
		adj, err := rt.CreateContainer(ctx, p, ctr)
		s.checkAdjustment(t, k, adj, err)
		for n, away := range []time.Duration{0, time.Second, 3 * time.Second} {
			n++
			before := time.Now()
			if err := rt.Restart(away); err != nil {
				t.Fatal(err)
			}
			restarted := time.Now()
			select {
			case sy := <-rt.Synced():
				if sy.Err != nil || sy.Pods != 1 || sy.Containers != 1 {
					t.Fatalf("restart %d: synchronized %+v, want the pod and its container", n, sy)
				}
				t.Logf("restart %d: the runtime was away %s; the agent registered and was synchronized %s after it was back",
					n, restarted.Sub(before).Round(time.Millisecond), sy.Time.Sub(restarted).Round(time.Millisecond))
				if d := sy.Time.Sub(restarted); d > nriconn.DefaultMaxDelay+time.Second {
					t.Errorf("restart %d: registered %s after the runtime was back, want within seconds", n, d)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("restart %d: not registered again within 10s", n)
			}
			waitFor(t, 2*time.Second, "the synchronization seen by the agent", func() bool {
				h := a.Health()
				return h.NRI.Connected && h.NRI.Registrations == 1+n && h.Synchronized.Pods == 1 && h.Synchronized.Containers == 1
			})
			cycle(churn + 2 + n)
		}
		rt.StopContainer(ctx, p, ctr)
		rt.RemoveContainer(ctx, p, ctr)
		rt.StopPod(ctx, p)
		rt.RemovePod(ctx, p)
		if code, body := get(t, base+"/healthz"); code != 200 || !strings.Contains(body, "registration 4") {
			t.Errorf("/healthz after the restarts: %d\n%s", code, body)
		}
		if _, body := get(t, base+"/metrics"); !strings.Contains(body, "nsmount_agent_nri_registrations_total 4") || !strings.Contains(body, `nsmount_agent_up{part="nri"} 1`) {
			t.Errorf("/metrics lacks the registrations or nri's up:\n%s", body)
		}
	})

	// Measured here, not in the subtest (whose caller waits on a goroutine).
	g2, f2 := settled(t, 60*time.Second)
	t.Logf("after 3 restarts: goroutines %d, fds %d (before the cycles: %d, %d)", g2, f2, g0, f0)
	if g2 > g0 || f2 > f0 {
		t.Errorf("the restarts leaked: goroutines %d -> %d, fds %d -> %d", g0, g2, f0, f2)
	}
}
