//go:build !nsmount_split

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/testenv/ctrdenv"
	"github.com/nsmount/nsmount/testenv/labtest"
)

// Test network: the container's netns nsmB-ctr (eth0 198.51.100.2/24) and
// a peer netns nsmB-peer (nsmB-p0 198.51.100.1/24), joined by a veth pair
// created inside the peer netns. Nothing touches the root netns.
const (
	ctrNetNS  = "nsmB-ctr"
	peerNetNS = "nsmB-peer"
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// addNetNS creates a named netns and deletes it when the test ends.
func addNetNS(t *testing.T, name string) {
	t.Helper()
	exec.Command("ip", "netns", "del", name).Run() // left by a killed run
	ip(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ip(t, "-n", name, "link", "set", "lo", "up")
}

func inodeOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestContainerTarget runs the CLI against a real containerd container:
// --container names the same namespaces as the task's PID, list finds no
// NFS mounts (the host has no NFS), and route decides from the container's
// netns: its veth, its address.
func TestContainerTarget(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: runs containerd and creates network namespaces")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := labtest.StartContainerd(t, ctrdenv.ContainerdConfig{Prefix: "nsmB"})
	addNetNS(t, peerNetNS)
	addNetNS(t, ctrNetNS)
	ip(t, "-n", peerNetNS, "link", "add", "nsmB-p0", "type", "veth", "peer", "name", "eth0", "netns", ctrNetNS)
	ip(t, "-n", peerNetNS, "addr", "add", "198.51.100.1/24", "dev", "nsmB-p0")
	ip(t, "-n", peerNetNS, "link", "set", "nsmB-p0", "up")
	ip(t, "-n", ctrNetNS, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	ip(t, "-n", ctrNetNS, "link", "set", "eth0", "up")
	const id = "nsmB-cli"
	pid, err := c.RunContainer(ctx, id, ctrdenv.RunOptions{NetNS: "/run/netns/" + ctrNetNS})
	if err != nil {
		t.Fatal(err)
	}
	netns := inodeOf(t, fmt.Sprintf("/proc/%d/ns/net", pid))
	if netns != inodeOf(t, "/run/netns/"+ctrNetNS) {
		t.Fatalf("container did not join %s", ctrNetNS)
	}
	target := []string{"--container", id, "--namespace", c.Namespace, "--address", c.Address}

	t.Run("list", func(t *testing.T) {
		out, _, code := runCLI(t, append([]string{"list", "--json"}, target...)...)
		if code != 0 || strings.TrimSpace(out) != "[]" {
			t.Errorf("exit %d, output %q; want 0 and []", code, out)
		}
	})

	t.Run("route-json", func(t *testing.T) {
		// The peer has no NFS server: the route is found and the check is
		// refused, so route exits as mount would (unreachable).
		out, _, code := runCLI(t, append([]string{"route", "--json", "--timeout", "2s", "198.51.100.1:/x"}, target...)...)
		if code != nsmount.ExitCode(nsmount.ErrUnreachable) {
			t.Errorf("exit %d, want %d (unreachable)", code, nsmount.ExitCode(nsmount.ErrUnreachable))
		}
		var plan struct {
			Target     string `json:"target"`
			PID        int    `json:"pid"`
			NetNS      uint64 `json:"netns"`
			MountNS    uint64 `json:"mntns"`
			Candidates []struct {
				Route *struct {
					Iface  string `json:"iface"`
					Source string `json:"source"`
				} `json:"route"`
				Checks []struct {
					Error string `json:"error"`
				} `json:"checks"`
			} `json:"candidates"`
		}
		if err := json.Unmarshal([]byte(out), &plan); err != nil {
			t.Fatalf("route --json: %v", err)
		}
		if plan.PID != pid || plan.NetNS != netns || plan.MountNS != inodeOf(t, fmt.Sprintf("/proc/%d/ns/mnt", pid)) {
			t.Errorf("plan target pid %d netns %d mntns %d, want the task's: pid %d netns %d", plan.PID, plan.NetNS, plan.MountNS, pid, netns)
		}
		if want := fmt.Sprintf("container %s/%s (pid %d)", c.Namespace, id, pid); plan.Target != want {
			t.Errorf("target %q, want %q", plan.Target, want)
		}
		if len(plan.Candidates) != 1 || plan.Candidates[0].Route == nil {
			t.Fatalf("candidates %+v, want one with a route", plan.Candidates)
		}
		if r := plan.Candidates[0].Route; r.Iface != "eth0" || r.Source != "198.51.100.2" {
			t.Errorf("route dev %s src %s, want the container's eth0 src 198.51.100.2", r.Iface, r.Source)
		}
		if ch := plan.Candidates[0].Checks; len(ch) == 0 || !strings.Contains(ch[0].Error, "refused") {
			t.Errorf("checks %+v, want the peer to refuse", ch)
		}
	})

	t.Run("route-text", func(t *testing.T) {
		out, _, _ := runCLI(t, append([]string{"route", "--timeout", "2s", "198.51.100.1:/x"}, target...)...)
		for _, want := range []string{
			fmt.Sprintf("container %s/%s (pid %d) (netns %d,", c.Namespace, id, pid, netns),
			"route    198.51.100.1 dev eth0 src 198.51.100.2",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
	})

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown", []string{"list", "--container", "nsmB-nope", "--namespace", c.Namespace, "--address", c.Address}, 4, `nsmount: container "nsmB-nope" in namespace "` + c.Namespace + `" not found`},
		{"bad-socket", []string{"list", "--container", id, "--address", "/nonexistent/nsmB.sock"}, 4, "nsmount: containerd socket /nonexistent/nsmB.sock does not exist"},
		{"with-pid", []string{"list", "--container", id, "--pid", "1"}, 2, "mutually exclusive"},
		{"with-netns", []string{"umount", "--container", id, "--netns", "/run/netns/" + ctrNetNS, "/x"}, 2, "mutually exclusive"},
		{"namespace-alone", []string{"list", "--pid", "1", "--namespace", "k8s.io"}, 2, "--namespace and --address need --container"},
		{"empty-id", []string{"list", "--container", ""}, 3, "empty container id"},
		{"mount-unknown", []string{"mount", "--container", "nsmB-nope", "--namespace", c.Namespace, "--address", c.Address, "198.51.100.1:/x", "/mnt"}, 4, "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want exit %d and one line with %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}
