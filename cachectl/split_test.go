package cachectl

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// TestOpenIn: an entry whose network namespace is not its mount
// namespace's (a CSI volume's) is opened through a process of each; a
// container's through its own process; one with no process left in its
// netns is not found.
func TestOpenIn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces")
	}
	pod := exec.Command("unshare", "--net", "sleep", "600")
	if err := pod.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { pod.Process.Kill(); pod.Wait() }()
	podNet := fmt.Sprintf("/proc/%d/ns/net", pod.Process.Pid)
	self, _ := os.Readlink("/proc/self/ns/net")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if l, _ := os.Readlink(podNet); l != "" && l != self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pod process did not enter its netns")
		}
	}
	netns, err := nsmount.NSOfPath(podNet)
	if err != nil {
		t.Fatal(err)
	}
	hostMnt, _ := nsmount.NSOfPath("/proc/self/ns/mnt")
	hostNet, _ := nsmount.NSOfPath("/proc/self/ns/net")
	m := openManager(t, kernel.Proc{})
	w, err := Observe(kernel.Proc{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		net     nsmount.NSID
		wantErr error
	}{
		{"csi: the pod's netns, the host's mount namespace", netns, nil},
		{"container: one process in both", hostNet, nil},
		{"no process in the netns", nsmount.NSID{Dev: netns.Dev, Ino: 1}, nsmount.ErrTargetNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := registry.Entry{Source: "198.51.100.1:/export", Mountpoint: "/x", Target: registry.Identity{NetNS: tc.net, MountNS: hostMnt}}
			tgt, err := m.openIn(w, &e)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("openIn = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tgt.Close()
			if tgt.NetNS() != tc.net || tgt.MountNS() != hostMnt {
				t.Errorf("target in netns %s mntns %s, want %s and %s", tgt.NetNS(), tgt.MountNS(), tc.net, hostMnt)
			}
		})
	}
}

// TestRemountRefusesSplit: a CSI volume's mount is never remounted (the
// containers' copies would stay behind).
func TestRemountRefusesSplit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces")
	}
	pod := exec.Command("unshare", "--net", "sleep", "600")
	if err := pod.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { pod.Process.Kill(); pod.Wait() }()
	podNet := fmt.Sprintf("/proc/%d/ns/net", pod.Process.Pid)
	self, _ := os.Readlink("/proc/self/ns/net")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if l, _ := os.Readlink(podNet); l != "" && l != self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pod process did not enter its netns")
		}
	}
	netns, _ := nsmount.NSOfPath(podNet)
	hostMnt, _ := nsmount.NSOfPath("/proc/self/ns/mnt")
	m := openManager(t, kernel.Proc{})
	e := registry.Entry{Source: "198.51.100.1:/export", Mountpoint: "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/v/mount", Owner: OwnerCSI,
		Target: registry.Identity{NetNS: netns, MountNS: hostMnt, NetNSPath: podNet, MountNSPath: "/proc/1/ns/mnt"}}
	_, err := m.openEntry(&e)
	if !errors.Is(err, nsmount.ErrInvalidArgument) || !strings.Contains(err.Error(), "not remounted") {
		t.Fatalf("openEntry of a CSI volume's mount = %v, want refused", err)
	}
}
