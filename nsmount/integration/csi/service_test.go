package csi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/nsmount/nsmount/nsmount"
)

// TestMain lets the re-executed test binary act as the mount helper.
func TestMain(m *testing.M) {
	nsmount.RunHelper()
	os.Exit(m.Run())
}

const testPolicy = `{"version": 1, "allow": [
  {"name": "team-a", "servers": ["*"], "networks": ["198.51.100.0/24"], "exports": ["/export", "/export/*"],
   "options": ["vers", "hard"], "csi": {"namespaces": ["team-a"], "ephemeral": true}}
]}`

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: enters mount namespaces")
	}
}

// testService is a Service over temporary state, with kubelet's
// directory at kubelet.
type testService struct {
	*Service
	kubelet string
	state   string
}

func newTestService(t *testing.T, policy string) *testService {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.json")
	if policy != "" {
		if err := os.WriteFile(pol, []byte(policy), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kubelet := filepath.Join(dir, "kubelet")
	s, err := New(Config{
		NodeID: "node-1", Policy: pol, StateDir: filepath.Join(dir, "state"), MountNS: "/proc/self/ns/mnt",
		TargetRoot: kubelet, NoDiscovery: true, ProbeTimeout: time.Second, MountTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &testService{Service: s, kubelet: kubelet, state: filepath.Join(dir, "state")}
}

// target returns kubelet's target path of volume name for pod uid, with
// its parent made as kubelet makes it.
func (ts *testService) target(t *testing.T, uid, name string) string {
	t.Helper()
	parent := filepath.Join(ts.kubelet, "pods", uid, "volumes", "kubernetes.io~csi", name)
	if err := os.MkdirAll(parent, 0o750); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(parent, "mount")
}

func publishRequest(id, target, uid string, kv ...string) *csipb.NodePublishVolumeRequest {
	ctx := map[string]string{
		KeyServer: "198.51.100.1", KeyExport: "/export", KeyOptions: "vers=4.2",
		KeyPodUID: uid, KeyPodName: "web-0", KeyPodNamespace: "team-a", KeyEphemeral: "false",
	}
	for i := 0; i+1 < len(kv); i += 2 {
		ctx[kv[i]] = kv[i+1]
	}
	return &csipb.NodePublishVolumeRequest{
		VolumeId: id, TargetPath: target, VolumeContext: ctx,
		VolumeCapability: mountCapability(csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, ""),
	}
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: %v (code %s), want code %s", what, err, got, want)
	}
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// TestPublishDeferred: with no sandbox, NodePublishVolume records the
// volume and makes the target directory; repeats are OK, other parameters
// AlreadyExists; stats and health say it is not mounted yet;
// NodeUnpublishVolume removes it all, and again.
func TestPublishDeferred(t *testing.T) {
	ts := newTestService(t, testPolicy)
	ctx := context.Background()
	target := ts.target(t, testUID, "data")
	req := publishRequest("team-a-data", target, testUID)
	for i := range 3 {
		if _, err := ts.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("NodePublishVolume #%d: %v", i+1, err)
		}
	}
	if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
		t.Fatalf("target %s: %v, want a directory", target, err)
	}
	r, err := ts.store.get(target)
	if err != nil || r == nil || r.State != StatePending || r.Admission == nil || r.Admission.Namespace != "team-a" || r.Admission.Rule != `rule 0 "team-a"` {
		t.Fatalf("record %+v, %v: want pending, with the admission", r, err)
	}
	vols, err := ts.PodVolumes(testUID)
	if err != nil || len(vols) != 1 || vols[0].State != StatePending || vols[0].VolumeID != "team-a-data" {
		t.Errorf("PodVolumes = %+v, %v", vols, err)
	}

	other := publishRequest("team-a-data", target, testUID, KeyOptions, "vers=4.1")
	_, err = ts.NodePublishVolume(ctx, other)
	wantCode(t, "publish other options at the same target", err, codes.AlreadyExists)
	_, err = ts.NodePublishVolume(ctx, publishRequest("other-volume", target, testUID))
	wantCode(t, "publish another volume at the same target", err, codes.AlreadyExists)

	_, err = ts.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "team-a-data", VolumePath: target})
	wantCode(t, "stats of a pending volume", err, codes.Unavailable)
	if err != nil && !strings.Contains(err.Error(), "not mounted yet: waiting for the sandbox of pod team-a/web-0") {
		t.Errorf("stats of a pending volume: %v", err)
	}
	h, err := ts.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: "team-a-data"})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 1 || h.GetVolumeHealth().GetHealthStatuses()[0].GetReason() != "NotMountedYet" ||
		h.GetVolumeHealth().GetHealthStatuses()[0].GetStatus() != csipb.VolumeHealthErrorType_INACCESSIBLE {
		t.Errorf("health of a pending volume: %v, %v", h, err)
	}

	_, err = ts.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "wrong", TargetPath: target})
	wantCode(t, "unpublish of another volume ID", err, codes.NotFound)
	for i := range 2 {
		if _, err := ts.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "team-a-data", TargetPath: target}); err != nil {
			t.Fatalf("NodeUnpublishVolume #%d: %v", i+1, err)
		}
	}
	if exists(target) {
		t.Errorf("target %s left after unpublish", target)
	}
	if r, err := ts.store.get(target); r != nil || err != nil {
		t.Errorf("record left after unpublish: %+v, %v", r, err)
	}
	_, err = ts.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "team-a-data", VolumePath: target})
	wantCode(t, "stats after unpublish", err, codes.NotFound)
	_, err = ts.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: "team-a-data"})
	wantCode(t, "health after unpublish", err, codes.NotFound)
}

// TestPublishRefused: what is refused leaves no record and no directory.
func TestPublishRefused(t *testing.T) {
	ts := newTestService(t, testPolicy)
	ctx := context.Background()
	target := ts.target(t, testUID, "data")
	file := ts.target(t, testUID, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	staged := publishRequest("v", target, testUID)
	staged.StagingTargetPath = "/var/lib/kubelet/plugins/staging"
	tests := []struct {
		name string
		req  *csipb.NodePublishVolumeRequest
		code codes.Code
		want string
	}{
		{"other namespace", publishRequest("v", target, testUID, KeyPodNamespace, "team-b"), codes.PermissionDenied, `CSI volumes of pods in namespace "team-b" are not allowed`},
		{"address outside the networks", publishRequest("v", target, testUID, KeyServer, "203.0.113.1"), codes.PermissionDenied, "outside the allowed networks"},
		{"option not allowed", publishRequest("v", target, testUID, KeyOptions, "nolock"), codes.PermissionDenied, `option "nolock" is not allowed`},
		{"suid", publishRequest("v", target, testUID, KeyOptions, "suid"), codes.PermissionDenied, "nosuid is enforced"},
		{"bad context", publishRequest("v", target, testUID, "mountOptions", "x"), codes.InvalidArgument, `unknown key "mountOptions"`},
		{"outside kubelet's directory", publishRequest("v", "/tmp/nsmk-elsewhere/mount", testUID), codes.InvalidArgument, "is not below"},
		{"staging path", staged, codes.InvalidArgument, "no STAGE_UNSTAGE_VOLUME"},
		{"no parent", publishRequest("v", filepath.Join(ts.kubelet, "pods", testUID, "volumes", "kubernetes.io~csi", "none", "mount"), testUID), codes.InvalidArgument, "parent directory does not exist"},
		{"target is a file", publishRequest("v", file, testUID), codes.InvalidArgument, "is not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ts.NodePublishVolume(ctx, tt.req)
			wantCode(t, "publish", err, tt.code)
			if err != nil && !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
			all, _, _ := ts.store.list()
			if len(all) != 0 {
				t.Errorf("%d records after a refusal", len(all))
			}
		})
	}
	if exists(target) {
		t.Errorf("target %s made for refused volumes", target)
	}

	nopolicy := newTestService(t, "")
	_, err := nopolicy.NodePublishVolume(ctx, publishRequest("v", nopolicy.target(t, testUID, "data"), testUID))
	wantCode(t, "publish with no policy file", err, codes.PermissionDenied)
	if err != nil && !strings.Contains(err.Error(), "deny by default") {
		t.Errorf("publish with no policy file: %v", err)
	}
}

// TestUnpublishLeavesFiles: files written into a target while nothing was
// mounted are not deleted: FailedPrecondition, and the record is gone.
func TestUnpublishLeavesFiles(t *testing.T) {
	ts := newTestService(t, testPolicy)
	ctx := context.Background()
	target := ts.target(t, testUID, "data")
	if _, err := ts.NodePublishVolume(ctx, publishRequest("v", target, testUID)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "written-locally"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ts.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: target})
	wantCode(t, "unpublish of a target with files", err, codes.FailedPrecondition)
	if !exists(filepath.Join(target, "written-locally")) {
		t.Error("the file written in the target was deleted")
	}
	if r, _ := ts.store.get(target); r != nil {
		t.Errorf("record kept: %+v", r)
	}
}

// startSandbox starts a process in a network namespace of its own (lo
// down, no route anywhere), standing in for a pod's sandbox.
func startSandbox(t *testing.T, uid string) Sandbox {
	t.Helper()
	cmd := exec.Command("unshare", "--net", "sleep", "600")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	self, _ := os.Readlink("/proc/self/ns/net")
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(5 * time.Second); ; {
		net, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if net != "" && net != self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox process did not enter its netns: %s", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return Sandbox{PodUID: uid, NetNS: fmt.Sprintf("/proc/%d/ns/net", pid), PID: pid}
}

// TestPodSandboxReady: the deferred mount is tried from the sandbox's
// network namespace when it is ready, and at once for a pod whose
// sandbox is known; a failure is recorded and reported, a final one at
// NodePublishVolume leaves nothing. (The host has no NFS and the sandbox
// no route: every mount fails here; the lab mounts.)
func TestPodSandboxReady(t *testing.T) {
	ts := newTestService(t, testPolicy)
	ctx := context.Background()
	target := ts.target(t, testUID, "data")
	if _, err := ts.NodePublishVolume(ctx, publishRequest("v", target, testUID)); err != nil {
		t.Fatal(err)
	}
	sb := startSandbox(t, testUID)
	rep, err := ts.PodSandboxReady(ctx, sb)
	if !errors.Is(err, nsmount.ErrUnreachable) || len(rep.Volumes) != 1 || !errors.Is(rep.Volumes[0].Err, nsmount.ErrUnreachable) {
		t.Fatalf("PodSandboxReady = %+v, %v; want the volume unreachable", rep, err)
	}
	r, _ := ts.store.get(target)
	if r == nil || r.State != StateFailed || r.Attempts != 1 || !strings.Contains(r.LastError, "198.51.100.1") {
		t.Fatalf("record after a failed mount: %+v", r)
	}
	h, err := ts.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: "v", VolumePublishPath: target})
	if err != nil || h.GetVolumeHealth().GetHealthStatuses()[0].GetReason() != "MountFailed" {
		t.Errorf("health after a failed mount: %v, %v", h, err)
	}

	// Known sandbox: a repeated publish tries again at once. Unavailable
	// is not final for kubelet: the record stays for its unpublish.
	_, err = ts.NodePublishVolume(ctx, publishRequest("v", target, testUID))
	wantCode(t, "republish with the sandbox known", err, codes.Unavailable)
	if r, _ := ts.store.get(target); r == nil || r.Attempts != 2 {
		t.Errorf("record after the retry: %+v", r)
	}
	second := ts.target(t, testUID, "second")
	_, err = ts.NodePublishVolume(ctx, publishRequest("second", second, testUID))
	wantCode(t, "publish with the sandbox known", err, codes.Unavailable)
	if r, _ := ts.store.get(second); r == nil || r.State != StateFailed {
		t.Errorf("record of a non-final failure: %+v", r)
	}

	// A sandbox process in another netns than the sandbox's: refused
	// (final), and a volume first published then leaves nothing behind.
	other := startSandbox(t, testUID)
	bad := Sandbox{PodUID: testUID, NetNS: sb.NetNS, PID: other.PID}
	if _, err := ts.PodSandboxReady(ctx, bad); !errors.Is(err, nsmount.ErrInvalidArgument) {
		t.Errorf("PodSandboxReady with a process of another netns: %v", err)
	}
	third := ts.target(t, testUID, "third")
	_, err = ts.NodePublishVolume(ctx, publishRequest("third", third, testUID))
	wantCode(t, "publish with a mismatched sandbox", err, codes.InvalidArgument)
	if r, _ := ts.store.get(third); r != nil || exists(third) {
		t.Errorf("a final failure left record %+v (target exists: %v)", r, exists(third))
	}

	// Gone: nothing is tried until the next sandbox.
	ts.PodSandboxGone(Sandbox{PodUID: testUID, NetNS: "/var/run/netns/another"})
	if _, ok := ts.sandboxOf(testUID); !ok {
		t.Error("PodSandboxGone of another sandbox forgot the pod's")
	}
	ts.PodSandboxGone(bad)
	fourth := ts.target(t, testUID, "fourth")
	if _, err := ts.NodePublishVolume(ctx, publishRequest("fourth", fourth, testUID)); err != nil {
		t.Errorf("publish after the sandbox is gone: %v", err)
	}
	if r, _ := ts.store.get(fourth); r == nil || r.State != StatePending || r.Attempts != 0 {
		t.Errorf("record after the sandbox is gone: %+v", r)
	}

	vols, err := ts.PodVolumes(testUID)
	if err != nil || len(vols) != 3 {
		t.Errorf("PodVolumes = %+v, %v", vols, err)
	}
	for id, p := range map[string]string{"v": target, "second": second, "fourth": fourth} {
		if _, err := ts.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: p}); err != nil {
			t.Errorf("unpublish %s: %v", p, err)
		}
		if exists(p) {
			t.Errorf("target %s left", p)
		}
	}
}

// TestPodSandboxStopping: the volumes mounted from the stopping sandbox go
// back to pending (their mount is gone here: only the bookkeeping is
// checked; the lab unmounts real ones), others are left alone.
func TestPodSandboxStopping(t *testing.T) {
	ts := newTestService(t, testPolicy)
	ctx := context.Background()
	sb := startSandbox(t, testUID)
	ns, err := nsmount.NSOfPath(sb.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	mine, other := ts.target(t, testUID, "mine"), ts.target(t, testUID, "other")
	for _, p := range []string{mine, other} {
		if _, err := ts.NodePublishVolume(ctx, publishRequest(filepath.Base(filepath.Dir(p)), p, testUID)); err != nil {
			t.Fatal(err)
		}
	}
	mark := func(p string, m MountState) {
		r, err := ts.store.get(p)
		if err != nil || r == nil {
			t.Fatal(r, err)
		}
		r.State, r.Mount = StateMounted, &m
		if err := ts.store.put(r); err != nil {
			t.Fatal(err)
		}
	}
	mark(mine, MountState{NetNS: ns, NetNSPath: sb.NetNS, MountID: 1 << 30, Dev: "0:999", Address: "198.51.100.1"})
	mark(other, MountState{NetNS: nsmount.NSID{Dev: ns.Dev, Ino: 1}, NetNSPath: "/var/run/netns/older", MountID: 1<<30 + 1, Address: "198.51.100.1"})
	ts.remember(sb)
	rep, err := ts.PodSandboxStopping(ctx, sb)
	if err != nil || len(rep.Volumes) != 1 || rep.Volumes[0].Did != "unmounted" || rep.Volumes[0].VolumeID != "mine" {
		t.Fatalf("PodSandboxStopping = %+v, %v", rep, err)
	}
	if r, _ := ts.store.get(mine); r == nil || r.State != StatePending || r.Mount != nil {
		t.Errorf("the stopped sandbox's volume: %+v, want pending, no mount", r)
	}
	if r, _ := ts.store.get(other); r == nil || r.State != StateMounted {
		t.Errorf("another sandbox's volume: %+v, want left alone", r)
	}
	if _, ok := ts.sandboxOf(testUID); ok {
		t.Error("the stopped sandbox is still remembered")
	}
	if rep, err := ts.PodSandboxStopping(ctx, sb); err != nil || len(rep.Volumes) != 0 {
		t.Errorf("second PodSandboxStopping = %+v, %v", rep, err)
	}
}

// TestPodSandboxReadyNoProcess: without the sandbox's process (a CNI ADD
// trigger), a server name is never resolved with the host's files: the
// volume stays pending.
func TestPodSandboxReadyNoProcess(t *testing.T) {
	ts := newTestService(t, testPolicy)
	ctx := context.Background()
	target := ts.target(t, testUID, "named")
	if _, err := ts.NodePublishVolume(ctx, publishRequest("named", target, testUID, KeyServer, "nfs.example.test")); err != nil {
		t.Fatal(err)
	}
	sb := startSandbox(t, testUID)
	sb.PID = 0
	rep, err := ts.PodSandboxReady(ctx, sb)
	if !errors.Is(err, nsmount.ErrTargetNotFound) || len(rep.Volumes) != 1 || !strings.Contains(rep.Volumes[0].Err.Error(), "the sandbox's process is not known yet") {
		t.Fatalf("PodSandboxReady without a process = %+v, %v", rep, err)
	}
	if r, _ := ts.store.get(target); r == nil || r.State != StatePending || r.Attempts != 0 {
		t.Errorf("record %+v, want still pending, never tried", r)
	}
}

func TestPodSandboxReadyInvalid(t *testing.T) {
	ts := newTestService(t, testPolicy)
	for _, sb := range []Sandbox{
		{PodUID: "x", NetNS: "/proc/1/ns/net"},
		{PodUID: testUID, NetNS: "relative"},
		{PodUID: testUID, NetNS: "/proc/1/ns/net", PID: -1},
	} {
		if _, err := ts.PodSandboxReady(context.Background(), sb); !errors.Is(err, nsmount.ErrInvalidArgument) {
			t.Errorf("PodSandboxReady(%+v) = %v, want invalid argument", sb, err)
		}
	}
	// A pod with nothing published: nothing to do.
	rep, err := ts.PodSandboxReady(context.Background(), Sandbox{PodUID: testUID, NetNS: "/proc/self/ns/net"})
	if err != nil || len(rep.Volumes) != 0 {
		t.Errorf("PodSandboxReady of a pod without volumes: %+v, %v", rep, err)
	}
}

// TestServe: the services over a unix socket, as kubelet calls them.
func TestServe(t *testing.T) {
	ts := newTestService(t, testPolicy)
	sock := filepath.Join(t.TempDir(), "csi.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix://" + sock); !errors.Is(err, nsmount.ErrInvalidArgument) {
		t.Errorf("Listen over a regular file: %v", err)
	}
	os.Remove(sock)
	lis, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ts.Serve(ctx, lis) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	id, node := csipb.NewIdentityClient(conn), csipb.NewNodeClient(conn)
	info, err := id.GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{})
	if err != nil || info.GetName() != DriverName {
		t.Errorf("GetPluginInfo = %v, %v", info, err)
	}
	pc, err := id.GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{})
	if err != nil || len(pc.GetCapabilities()) != 0 {
		t.Errorf("GetPluginCapabilities = %v, %v; want none (no controller)", pc, err)
	}
	probe, err := id.Probe(ctx, &csipb.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Errorf("Probe = %v, %v", probe, err)
	}
	ni, err := node.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node-1" {
		t.Errorf("NodeGetInfo = %v, %v", ni, err)
	}
	nc, err := node.NodeGetCapabilities(ctx, &csipb.NodeGetCapabilitiesRequest{})
	var got []string
	for _, c := range nc.GetCapabilities() {
		got = append(got, c.GetRpc().GetType().String())
	}
	if err != nil || strings.Join(got, ",") != "GET_VOLUME_STATS,GET_VOLUME_HEALTH" {
		t.Errorf("NodeGetCapabilities = %v, %v", got, err)
	}
	_, err = node.NodePublishVolume(ctx, publishRequest("v", ts.target(t, testUID, "d"), testUID, KeyPodNamespace, "team-b"))
	wantCode(t, "a refused publish over gRPC", err, codes.PermissionDenied)
	_, err = node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{})
	wantCode(t, "NodeStageVolume", err, codes.Unimplemented)
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

func TestKeyedMutex(t *testing.T) {
	var k keyedMutex
	unlock, err := k.lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	other, err := k.lock(context.Background(), "b")
	if err != nil {
		t.Fatalf("another key waits: %v", err)
	}
	other()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := k.lock(ctx, "a"); !errors.Is(err, nsmount.ErrTimeout) {
		t.Errorf("second lock of a held key: %v, want a timeout", err)
	}
	got := make(chan struct{})
	go func() {
		u, err := k.lock(context.Background(), "a")
		if err == nil {
			u()
		}
		close(got)
	}()
	unlock()
	<-got
	if len(k.locks) != 0 {
		t.Errorf("%d locks left", len(k.locks))
	}
}

func TestCodeOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{nsmount.WithClass(nsmount.ErrInvalidArgument, errors.New("x")), codes.InvalidArgument},
		{nsmount.WithClass(nsmount.ErrUnsafePath, errors.New("x")), codes.InvalidArgument},
		{nsmount.WithClass(nsmount.ErrTargetNotFound, errors.New("x")), codes.NotFound},
		{nsmount.WithClass(nsmount.ErrNotMounted, errors.New("x")), codes.NotFound},
		{nsmount.WithClass(nsmount.ErrDenied, errors.New("x")), codes.PermissionDenied},
		{nsmount.WithClass(nsmount.ErrTimeout, errors.New("x")), codes.DeadlineExceeded},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{nsmount.WithClass(nsmount.ErrUnreachable, errors.New("x")), codes.Unavailable},
		{nsmount.WithClass(nsmount.ErrStaleState, errors.New("x")), codes.FailedPrecondition},
		{nsmount.WithClass(nsmount.ErrMountFailed, errors.New("x")), codes.Internal},
		{nsmount.WithClass(nsmount.ErrNotVerified, errors.New("x")), codes.Internal},
		{errors.New("plain"), codes.Internal},
		{status.Error(codes.AlreadyExists, "x"), codes.AlreadyExists},
	} {
		if got := codeOf(tc.err); got != tc.want {
			t.Errorf("codeOf(%v) = %s, want %s", tc.err, got, tc.want)
		}
		if s := status.Convert(statusOf(tc.err)); s.Code() != tc.want || strings.Contains(s.Message(), "\n") {
			t.Errorf("statusOf(%v) = %v", tc.err, s)
		}
	}
}
