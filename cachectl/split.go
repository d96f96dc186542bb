package cachectl

import (
	"fmt"

	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// openIn opens a target in e's mount namespace and network namespace.
// For a container's mount, one of the mount namespace's processes is in
// both (OpenPID). A mount made from one network namespace onto a path of
// another mount namespace (a CSI volume: the pod's netns, the host's mount
// namespace; see nsmount.OpenPathsWithResolver) needs a process of each:
// routes are then looked up from the pod's network, names resolved with
// its process's files (the pod's sandbox), and the mount point found in
// the mount namespace.
func (m *Manager) openIn(w *World, e *registry.Entry) (*nsmount.Target, error) {
	pid, ok := w.PIDIn(e)
	if !ok {
		return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("%s at %s: %w", e.Source, e.Mountpoint, errNoProcess))
	}
	if net, err := w.Proc.NS(pid, "net"); err != nil || net == e.Target.NetNS {
		return m.openPID(pid)
	}
	netPID, ok := w.NetPID(e.Target.NetNS)
	if !ok {
		return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("%s at %s: no process left in network namespace %s", e.Source, e.Mountpoint, e.Target.NetNS))
	}
	t, err := nsmount.OpenPathsWithResolver(fmt.Sprintf("/proc/%d/ns/net", netPID), fmt.Sprintf("/proc/%d/ns/mnt", pid), netPID)
	if err != nil {
		return nil, err
	}
	if t.NetNS() != e.Target.NetNS || t.MountNS() != e.Target.MountNS {
		t.Close()
		return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("pids %d and %d are no longer in the namespaces %s was mounted from", netPID, pid, e.Mountpoint))
	}
	t.SetIsolation(m.isolation)
	t.SetHelper(m.helper)
	t.SetName(fmt.Sprintf("netns %s (pid %d), mntns %s (pid %d)", e.Target.NetNS, netPID, e.Target.MountNS, pid))
	return t, nil
}

// splitRemountError refuses to remount e, a mount made from another
// network namespace onto a path of a mount namespace whose processes are
// elsewhere: a CSI volume at kubelet's target path. The pod's containers
// hold bind copies of it (private, as kubelet makes them unless a
// volumeMount asks for HostToContainer propagation) that a new mount at
// the target path does not reach: they would stay on the old superblock,
// and the next mount of the server in the pod's netns would flush them as
// stale, taking the volume from under the running containers.
func splitRemountError(e *registry.Entry) error {
	return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("%s at %s was mounted from network namespace %s onto another mount namespace (owner %s): not remounted, since the containers' copies of it would stay on the old superblock; restart the pod to mount it anew", e.Source, e.Mountpoint, e.Target.NetNS, e.Owner))
}
