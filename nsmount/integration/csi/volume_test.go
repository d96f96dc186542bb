package csi

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/nsmount"
)

const (
	testUID    = "4f0c1f4e-9a39-4b5e-8e57-0c4a4e1f6a01"
	testTarget = "/var/lib/kubelet/pods/" + testUID + "/volumes/kubernetes.io~csi/data/mount"
)

// goodContext is a volume context as kubelet sends it for a pod in
// namespace team-a.
func goodContext() map[string]string {
	return map[string]string{
		KeyServer: "nfs.team-a.svc.cluster.local", KeyExport: "/export/a", KeyOptions: "vers=4.2,hard",
		KeyPodUID: testUID, KeyPodName: "web-0", KeyPodNamespace: "team-a", KeyEphemeral: "false",
		KeyServiceAccount: "default",
	}
}

func mountCapability(mode csipb.VolumeCapability_AccessMode_Mode, fstype string, flags ...string) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fstype, MountFlags: flags}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode},
	}
}

func TestParseVolume(t *testing.T) {
	rw := mountCapability(csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "")
	with := func(kv ...string) map[string]string {
		m := goodContext()
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "\x00delete" {
				delete(m, kv[i])
				continue
			}
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	block := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}, AccessMode: rw.AccessMode}
	tests := []struct {
		name     string
		id, path string
		cap      *csipb.VolumeCapability
		readonly bool
		ctx      map[string]string
		want     string // options of the volume, or "error: " and a substring of the error
	}{
		{"persistent", "team-a-data", testTarget, rw, false, goodContext(), "vers=4.2,hard"},
		{"readonly flag", "v", testTarget, rw, true, goodContext(), "vers=4.2,hard,ro"},
		{"reader-only mode", "v", testTarget, mountCapability(csipb.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, "nfs"), false, goodContext(), "vers=4.2,hard,ro"},
		{"ro given and readonly", "v", testTarget, rw, true, with(KeyOptions, "ro"), "ro"},
		{"mount flags", "v", testTarget, mountCapability(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "nfs4", "noatime", "timeo=600,retrans=2"), false, with(KeyOptions, "\x00delete"), "noatime,timeo=600,retrans=2"},
		{"ephemeral, no options", "csi-0123abcd", testTarget, rw, false, with(KeyEphemeral, "true", KeyOptions, ""), ""},
		{"IPv6 server", "v", testTarget, rw, false, with(KeyServer, "2001:db8::10"), "vers=4.2,hard"},
		{"no kubelet layout", "v", "/tmp/csi-mount/target", rw, false, goodContext(), "vers=4.2,hard"},
		{"without service account", "v", testTarget, rw, false, with(KeyServiceAccount, "\x00delete", KeyEphemeral, "\x00delete"), "vers=4.2,hard"},

		{"no volume ID", "", testTarget, rw, false, goodContext(), "error: volume ID: missing"},
		{"long volume ID", strings.Repeat("v", 129), testTarget, rw, false, goodContext(), "error: more than 128"},
		{"control in volume ID", "a\nb", testTarget, rw, false, goodContext(), "error: control character"},
		{"no target", "v", "", rw, false, goodContext(), "error: target path: missing"},
		{"relative target", "v", "pods/x", rw, false, goodContext(), "error: must be an absolute path"},
		{"unclean target", "v", "/var/lib/kubelet/../../etc", rw, false, goodContext(), "error: must be a clean path"},
		{"root target", "v", "/", rw, false, goodContext(), "error: / can never be a mount target"},
		{"no capability", "v", testTarget, nil, false, goodContext(), "error: volume capability: missing"},
		{"block", "v", testTarget, block, false, goodContext(), "error: block volumes are not supported"},
		{"fstype", "v", testTarget, mountCapability(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "ext4"), false, goodContext(), `error: fs_type "ext4": want nfs or nfs4`},
		{"no access mode", "v", testTarget, &csipb.VolumeCapability{AccessType: rw.AccessType}, false, goodContext(), "error: access mode UNKNOWN is not supported"},
		{"bad mount flag", "v", testTarget, mountCapability(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "", "Bad Flag"), false, goodContext(), "error: mount_flags[0]"},
		{"empty mount flag", "v", testTarget, mountCapability(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "", ""), false, goodContext(), "error: mount_flags[0]"},
		{"unknown key", "v", testTarget, rw, false, with("Server", "x"), `error: unknown key "Server"`},
		{"no server", "v", testTarget, rw, false, with(KeyServer, "\x00delete"), `error: volume context "server": missing`},
		{"bracketed server", "v", testTarget, rw, false, with(KeyServer, "[2001:db8::1]"), "error: IPv6 address must be given without brackets"},
		{"zoned server", "v", testTarget, rw, false, with(KeyServer, "fe80::1%eth0"), "error: zoned address"},
		{"server with port", "v", testTarget, rw, false, with(KeyServer, "nfs:2049"), "error: not an IP address"},
		{"server with space", "v", testTarget, rw, false, with(KeyServer, "nfs server"), "error: neither an IP address nor a host name"},
		{"no export", "v", testTarget, rw, false, with(KeyExport, "\x00delete"), `error: volume context "export": missing`},
		{"relative export", "v", testTarget, rw, false, with(KeyExport, "export"), "error: must be an absolute path"},
		{"dotdot export", "v", testTarget, rw, false, with(KeyExport, "/export/../etc"), "error: must be a clean path"},
		{"addr option", "v", testTarget, rw, false, with(KeyOptions, "addr=192.0.2.1"), "error: volume options"},
		{"bad version", "v", testTarget, rw, false, with(KeyOptions, "vers=5"), "error: volume options"},
		{"nfs4 with vers=3", "v", testTarget, mountCapability(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "nfs4"), false, with(KeyOptions, "vers=3"), "error: volume options"},
		{"rw on a read-only volume", "v", testTarget, rw, true, with(KeyOptions, "rw"), "error: read-only, but its options ask for rw"},
		{"control in a value", "v", testTarget, rw, false, with(KeyOptions, "vers=4.2\n"), "error: control character"},
		{"huge value", "v", testTarget, rw, false, with(KeyOptions, strings.Repeat("a", 5000)), "error: more than 4096"},
		{"no pod UID", "v", testTarget, rw, false, with(KeyPodUID, "\x00delete"), "error: podInfoOnMount: true"},
		{"bad pod UID", "v", "/tmp/t", rw, false, with(KeyPodUID, "../../etc"), "error: not a pod UID"},
		{"uppercase pod UID", "v", "/tmp/t", rw, false, with(KeyPodUID, strings.ToUpper(testUID)), "error: not a pod UID"},
		{"target of another pod", "v", testTarget, rw, false, with(KeyPodUID, "00000000-0000-4000-8000-000000000000"), "error: is pod " + testUID + "'s"},
		{"no namespace", "v", testTarget, rw, false, with(KeyPodNamespace, ""), "error: missing or not a namespace name"},
		{"bad namespace", "v", testTarget, rw, false, with(KeyPodNamespace, "Team_A"), "error: not a namespace name"},
		{"bad pod name", "v", testTarget, rw, false, with(KeyPodName, "web 0"), "error: not a pod name"},
		{"bad ephemeral", "v", testTarget, rw, false, with(KeyEphemeral, "yes"), "error: want true or false"},
		{"bad service account", "v", testTarget, rw, false, with(KeyServiceAccount, "A"), "error: not a service account name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := ParseVolume(tt.id, tt.path, tt.cap, tt.readonly, tt.ctx)
			if want, bad := strings.CutPrefix(tt.want, "error: "); bad {
				switch {
				case err == nil:
					t.Fatalf("accepted: %+v", v)
				case !strings.Contains(err.Error(), want):
					t.Errorf("error %q\nwant it to contain %q", err, want)
				case !errors.Is(err, nsmount.ErrInvalidArgument):
					t.Errorf("error %q is not ErrInvalidArgument", err)
				case strings.Contains(err.Error(), "\n"):
					t.Errorf("error spans lines: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if got := v.Options.String(); got != tt.want {
				t.Errorf("options %q, want %q", got, tt.want)
			}
			if v.Pod.UID != tt.ctx[KeyPodUID] || v.Pod.Namespace != "team-a" || v.Pod.Name != "web-0" {
				t.Errorf("pod %+v", v.Pod)
			}
			if v.Ephemeral != (tt.ctx[KeyEphemeral] == "true") {
				t.Errorf("ephemeral %v for %q", v.Ephemeral, tt.ctx[KeyEphemeral])
			}
			cv := v.CSIVolume()
			if cv.Target != tt.path || cv.Namespace != "team-a" || cv.Source != v.Source {
				t.Errorf("CSIVolume %+v", cv)
			}
		})
	}
}

func TestParseVolumeTooManyKeys(t *testing.T) {
	ctx := goodContext()
	for i := range MaxContextKeys {
		ctx["k"+strings.Repeat("x", i)] = "v"
	}
	_, err := ParseVolume("v", testTarget, mountCapability(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, ""), false, ctx)
	if err == nil || !strings.Contains(err.Error(), "more than 16") {
		t.Errorf("ParseVolume with %d keys: %v", len(ctx), err)
	}
}

func TestInPodCgroup(t *testing.T) {
	under := strings.ReplaceAll(testUID, "-", "_")
	tests := []struct {
		name, text string
		want       bool
	}{
		{"cgroup v2, cgroupfs driver", "0::/kubepods/besteffort/pod" + testUID + "/0123abcd\n", true},
		{"cgroup v2, guaranteed", "0::/kubepods/pod" + testUID + "/0123abcd\n", true},
		{"cgroup v2, systemd driver", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + under + ".slice/cri-containerd-0123.scope\n", true},
		{"systemd, guaranteed", "0::/kubepods.slice/kubepods-pod" + under + ".slice/cri-containerd-0123.scope\n", true},
		{"cgroup v1", "12:pids:/kubepods/burstable/pod" + testUID + "/abc\n11:memory:/kubepods/burstable/pod" + testUID + "/abc\n", true},
		{"seen from a cgroup namespace", "0::/../../kubepods/besteffort/pod" + testUID + "/abc\n", true},
		{"another pod", "0::/kubepods/besteffort/pod00000000-0000-4000-8000-000000000000/abc\n", false},
		{"a prefix of the UID", "0::/kubepods/besteffort/pod" + testUID[:20] + "/abc\n", false},
		{"UID with a suffix", "0::/kubepods/besteffort/pod" + testUID + "x/abc\n", false},
		{"not kubelet's slice", "0::/system.slice/evil-pod" + under + ".slice\n", false},
		{"in a container name only", "0::/lab/pod" + testUID + ".scope\n", false},
		{"host process", "0::/system.slice/containerd.service\n", false},
		{"garbage", "nonsense", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inPodCgroup([]byte(tt.text), testUID); got != tt.want {
				t.Errorf("inPodCgroup(%q) = %v, want %v", tt.text, got, tt.want)
			}
		})
	}
}

// TestFindSandbox reads a procfs tree of fixtures: the oldest process of
// the pod's cgroup is its sandbox.
func TestFindSandbox(t *testing.T) {
	root := t.TempDir()
	proc := func(pid, start, cgroup string) {
		dir := filepath.Join(root, pid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := pid + " (x y) S 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 " + start + " 0 0\n"
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cgroup), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pod := "0::/kubepods/besteffort/pod" + testUID + "/c\n"
	proc("10", "500", "0::/init.scope\n")
	proc("20", "900", pod) // a container
	proc("21", "700", pod) // the sandbox: oldest
	proc("22", "800", pod) // another container
	proc("30", "100", "0::/kubepods/besteffort/pod00000000-0000-4000-8000-000000000000/c\n")
	if err := os.MkdirAll(filepath.Join(root, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := kernel.Proc{Root: root}
	sb, ok, err := FindSandbox(p, testUID)
	if err != nil || !ok {
		t.Fatalf("FindSandbox = %+v, %v, %v", sb, ok, err)
	}
	want := Sandbox{PodUID: testUID, NetNS: filepath.Join(root, "21", "ns", "net"), PID: 21}
	if sb != want {
		t.Errorf("FindSandbox = %+v, want %+v", sb, want)
	}
	if _, ok, err := FindSandbox(p, "11111111-1111-4111-8111-111111111111"); ok || err != nil {
		t.Errorf("FindSandbox of a pod with no process: %v, %v", ok, err)
	}
	if _, _, err := FindSandbox(p, "../x"); !errors.Is(err, nsmount.ErrInvalidArgument) {
		t.Errorf("FindSandbox of a bad UID: %v", err)
	}
}

func TestKubeletPodUID(t *testing.T) {
	for _, tc := range []struct {
		path, want string
		ok         bool
	}{
		{testTarget, testUID, true},
		{"/var/lib/k0s/kubelet/pods/" + testUID + "/volumes/kubernetes.io~csi/v/mount", testUID, true},
		{"/var/lib/kubelet/pods/" + testUID + "/volumes/kubernetes.io~nfs/v", "", false},
		{"/tmp/csi-mount/target", "", false},
	} {
		got, ok := kubeletPodUID(tc.path)
		if got != tc.want || ok != tc.ok {
			t.Errorf("kubeletPodUID(%q) = %q, %v; want %q, %v", tc.path, got, ok, tc.want, tc.ok)
		}
	}
}

func TestSameRequest(t *testing.T) {
	c := mountCapability(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "")
	v, err := ParseVolume("v", testTarget, c, false, goodContext())
	if err != nil {
		t.Fatal(err)
	}
	r := &Record{Volume: *v}
	for _, tc := range []struct {
		name     string
		change   func(m map[string]string)
		readonly bool
		id       string
		want     bool
	}{
		{"same", func(map[string]string) {}, false, "v", true},
		{"other options", func(m map[string]string) { m[KeyOptions] = "vers=4.1" }, false, "v", false},
		{"read-only", func(map[string]string) {}, true, "v", false},
		{"other volume", func(map[string]string) {}, false, "w", false},
		{"other server", func(m map[string]string) { m[KeyServer] = "192.0.2.1" }, false, "v", false},
	} {
		m := maps.Clone(goodContext())
		tc.change(m)
		w, err := ParseVolume(tc.id, testTarget, c, tc.readonly, m)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.sameRequest(w); got != tc.want {
			t.Errorf("%s: sameRequest = %v, want %v", tc.name, got, tc.want)
		}
	}
}
