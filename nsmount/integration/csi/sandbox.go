package csi

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nsmount/nsmount/cachectl/kernel"
)

// Sandbox is a pod's sandbox as the runtime reports it (NRI's
// RunPodSandbox, a CNI ADD with K8S_POD_UID) or as FindSandbox finds it.
type Sandbox struct {
	// PodUID is the pod's UID.
	PodUID string `json:"pod_uid"`
	// NetNS is the path of the pod's network namespace (a bind mount such
	// as /var/run/netns/cni-..., or /proc/PID/ns/net).
	NetNS string `json:"netns"`
	// PID is the sandbox's process (pause), in that network namespace,
	// whose root holds the pod's /etc/resolv.conf: server names are
	// resolved with it. 0 when unknown (at CNI ADD there is no process
	// yet): only servers given as IP addresses can then be mounted.
	PID int `json:"pid,omitempty"`
}

// String describes the sandbox for messages.
func (sb Sandbox) String() string {
	if sb.PID != 0 {
		return fmt.Sprintf("sandbox of pod %s (netns %s, pid %d)", sb.PodUID, sb.NetNS, sb.PID)
	}
	return fmt.Sprintf("sandbox of pod %s (netns %s)", sb.PodUID, sb.NetNS)
}

// check validates a sandbox handed in by the caller.
func (sb Sandbox) check() error {
	switch {
	case !validUID(sb.PodUID):
		return invalid("sandbox: pod UID %q: not a pod UID", printable(sb.PodUID))
	case sb.PID < 0:
		return invalid("sandbox of pod %s: invalid pid %d", sb.PodUID, sb.PID)
	}
	return checkTargetPath("sandbox netns path", sb.NetNS)
}

// FindSandbox looks for a running pod's sandbox by the pod's UID among
// proc's processes: kubelet puts a pod's processes in a cgroup named after
// the pod's UID ("pod<UID>" with the cgroupfs driver,
// "kubepods-<class>-pod<UID with _>.slice" with systemd's), and the
// oldest of them is the sandbox's process, which created the pod's network
// namespace. It reads every process's cgroup file once: call it when no
// runtime event told of the sandbox. ok is false when no process of the
// pod runs (kubelet calls NodePublishVolume before it creates the sandbox).
func FindSandbox(proc kernel.Proc, podUID string) (sb Sandbox, ok bool, err error) {
	if !validUID(podUID) {
		return Sandbox{}, false, invalid("pod UID %q: not a pod UID", printable(podUID))
	}
	pids, err := proc.PIDs()
	if err != nil {
		return Sandbox{}, false, err
	}
	root := proc.Root
	if root == "" {
		root = "/proc"
	}
	best, bestStart := 0, uint64(0)
	for _, pid := range pids {
		data, err := readSmall(filepath.Join(root, strconv.Itoa(pid), "cgroup"))
		if err != nil || !inPodCgroup(data, podUID) {
			continue // exited, or another pod's
		}
		start, err := proc.StartTime(pid)
		if err != nil {
			continue
		}
		if best == 0 || start < bestStart {
			best, bestStart = pid, start
		}
	}
	if best == 0 {
		return Sandbox{}, false, nil
	}
	return Sandbox{PodUID: podUID, NetNS: filepath.Join(root, strconv.Itoa(best), "ns", "net"), PID: best}, true, nil
}

// inPodCgroup reports whether a /proc/PID/cgroup text puts the process in
// the cgroup of the pod with the given UID: a path component "pod<UID>"
// (cgroupfs driver) or "kubepods[-<class>]-pod<UID with _>.slice"
// (systemd driver), in any hierarchy.
func inPodCgroup(text []byte, uid string) bool {
	plain := "pod" + uid
	slice := "-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[2], "/") {
			if c == plain || strings.HasPrefix(c, "kubepods") && strings.HasSuffix(c, slice) {
				return true
			}
		}
	}
	return false
}

// readSmall reads at most 64 KiB of a /proc file.
func readSmall(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 64<<10))
}
