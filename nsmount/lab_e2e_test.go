package nsmount_test

import (
	"context"
	"embed"
	"path/filepath"
	"testing"
	"time"

	"github.com/nsmount/nsmount/testenv"
	"github.com/nsmount/nsmount/testenv/labtest"
)

// The lab scenarios: each script boots one VM with a real kernel NFS server
// and client, and reports its checks as subtests.
//
//go:embed testdata/lab/*.sh
var labScripts embed.FS

func labScript(t *testing.T, name string) string {
	t.Helper()
	common, err := labScripts.ReadFile("testdata/lab/common.sh")
	if err != nil {
		t.Fatal(err)
	}
	body, err := labScripts.ReadFile("testdata/lab/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(common) + "\n" + string(body)
}

// TestLabMount mounts every NFS version into a container whose server only
// its own netns can reach.
func TestLabMount(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "mount.sh"))
}

// TestLabFaults feeds bad input and faults (escaping symlinks, dead PID,
// unreachable and hung servers) and checks nothing leaks.
func TestLabFaults(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "faults.sh"))
}

// TestLabRouting resolves and routes from inside containers: one address and
// one name reach a different server from each of three nested contexts, in
// both orders, v3 and v4.2; policy routing picks the interface and
// clientaddr; an IPv6-only container; hostile resolver files and a silent
// nameserver.
func TestLabRouting(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "routing.sh"))
}

// TestLabClientIdentity mounts NFSv4.2 from two containers with the same
// hostname: nsmount gives each netns its own NFSv4 client identity, keeps
// it on later mounts, and both clients keep working past a lease period.
func TestLabClientIdentity(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "identity.sh"))
}

// TestLabStale makes a superblock outlive its mount (a copy in a sidecar's
// mount namespace; a lazy unmount with an open file), changes the route,
// and checks that a plain mount inherits the old superblock while nsmount
// status names the holder and nsmount mount refuses or flushes it and
// reaches the new server. Also: a corrupt registry is rebuilt.
func TestLabStale(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "stale.sh"))
}

// TestLabWatch replaces a mount in place (nsmount remount) and runs nsmount
// watch through a route change, a server re-export with new file handles
// (ESTALE) and a dead server.
func TestLabWatch(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "watch.sh"))
}

// TestLabChurn mounts into 60 long-lived containers (NFSv4.2 and v3), then
// runs 200 cycles of create container, mount, write and read, unmount,
// destroy (and a few containers destroyed with their mount), and checks
// that network namespaces, NFS superblocks and clients, the server's NFSv4
// clients, mounts, registry entries and nsmount processes come back to
// their baselines. It prints the counts and times nsmount status with the
// 60 tracked mounts.
func TestLabChurn(t *testing.T) {
	t.Parallel()
	// 270 containers: long by design, and slow when the machine is busy
	// (measured: 3 to 4.5 minutes with another VM and builds beside it).
	labtest.RunT(t, labScript(t, "churn.sh"), testenv.WithTimeout(10*time.Minute))
}

// TestLabNewerKernel runs on Debian 12's newer kernel (6.12): nsmount
// remount swaps atomically (MOVE_MOUNT_BENEATH: a reader never misses the
// file), and flush --shutdown cuts off a stale superblock held open
// (/sys/fs/nfs/DEV/shutdown in the container's netns): the holder is not
// ended but gets EIO, the NFS client is released, and the next mount
// reaches the new route's server with a client of its own.
func TestLabNewerKernel(t *testing.T) {
	t.Parallel()
	labtest.RunOnT(t, labtest.SharedKernel(t, testenv.NewerKernelPackage), labScript(t, "newer_kernel.sh"))
}

// TestLabGanesha runs the core scenarios against NFS-Ganesha (Debian's,
// FSAL VFS) in one VM: NFSv4.2, 4.1, 4.0 and v3 mounted from a container
// whose server only its netns reaches (written and read, found in the
// export); a Ganesha restart that keeps the mounts' file handles; the
// three-level routing case (one address, a kernel nfsd and two Ganesha
// servers, one per context, both orders and all at once, v4.2 and v3, and
// names from the container's DNS); stale state after a route change to
// another Ganesha at the same address (a plain mount inherits it, nsmount
// flushes and reaches the new server); and kernel nfsd replaced by Ganesha
// at the same address and directory: the old mounts get errno 521
// (EBADHANDLE) for a file opened before, a lookup, a stat, and a fresh
// mount reads the data written before the switch.
func TestLabGanesha(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "ganesha.sh"), testenv.WithGanesha())
}

// TestLabMigration moves 50 containers' NFSv4.2 mounts from kernel nfsd to
// NFS-Ganesha at the same address, exporting the same directory, under
// nsmount watch: every old mount gets errno 521 (EBADHANDLE), watch tells
// the answering server from a dead one and remounts each from its own
// container's network; each container then reads what it wrote before the
// switch and writes anew, with no failure. A container looping stat() (a
// GETATTR storm) is named first by nsmount top before and after the
// switch. The script prints the time from the switch to the last container
// reading again, remounts per second, and watch's metrics during it.
func TestLabMigration(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "migration.sh"), testenv.WithGanesha(), testenv.WithMemory(1024))
}

// TestLabContainerd runs containerd and runc in the VM: a container whose
// spec carries the annotation and the nsmount hook gets its mount at
// createRuntime from its own (CNI-made) netns and its own process reads and
// writes the file; policy and annotation refusals fail creation; `nsmount
// mount --container` mounts into a running one; the CNI chained plugin's
// ADD, CHECK, DEL (twice, and without a netns) run through libcni; removing
// the containers leaves no mount, NFS client, registry entry or process.
func TestLabContainerd(t *testing.T) {
	t.Parallel()
	files, err := testenv.ContainerdGuestFiles()
	if err != nil {
		t.Fatal(err)
	}
	labtest.RunT(t, labScript(t, "containerd.sh"), testenv.WithFiles(files...), testenv.WithMemory(1536))
}

// TestLabNRI runs containerd 2.x (built from the module proxy) with CRI and
// NRI in the VM, and nsmount nri registered with it: a pod made through
// the CRI API whose annotation asks for an NFS mount gets it, through the
// injected hook, in its container from the pod's netns; the container's
// own process writes and reads the file; refusals fail CreateContainer;
// stopping and removing leave no mount, NFS client, registry entry or
// process.
func TestLabNRI(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "nri.sh"), testenv.WithFiles(containerd2Files(t)...), testenv.WithMemory(2048))
}

// TestLabRace mounts one server into 16 containers at once, four of them
// sharing a network namespace as a pod's containers do, five rounds: every
// mount reported mounted is in place, readable and recorded afterwards.
func TestLabRace(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "race.sh"))
}

// TestLabAdmission: a mount the OCI hook made under the host policy is
// never moved outside the policy's networks, whatever the container does
// to its own name resolution: remount is refused (exit 11) and watch
// (route drift, ESTALE, dead server) reports "denied" and leaves the mount
// on the admitted server; a CLI mount of the same name follows it.
func TestLabAdmission(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "admission.sh"))
}

// TestLabCSI runs the CSI node plugin (nsmount csi, registered with
// containerd 2.x over NRI) in kubelet's order: NodePublishVolume before
// the pod's sandbox exists records the volume; RunPodSandbox has it
// mounted from the pod's netns onto kubelet's target path; CreateContainer
// with the target as a bind mount gives the container's own process the
// NFS file; the superblock is the pod netns's and the server sees the
// pod's address. Also refusals, stats and health (a hung server costs the
// timeout), a republish and a restart of the plugin, a recreated sandbox
// (mounts redone from the new netns), and a teardown (StopPodSandbox,
// NodeUnpublishVolume, RemovePodSandbox) that leaves no mount, NFS
// client, record, registry entry or process.
func TestLabCSI(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "csi.sh"), testenv.WithFiles(containerd2Files(t)...), testenv.WithMemory(2048))
}

// TestLabAgent runs `nsmount agent` as the Kubernetes chart does (installed
// for the hooks, the policy mirrored, NRI, CSI, metrics) with containerd
// 2.x (CRI, NRI) in the VM: a pod gets an annotation mount and a CSI
// volume in kubelet's order from its own netns, through the agent's one
// NRI registration; containerd restarts and the agent registers again
// (/healthz answering throughout), a new pod gets its mounts, /metrics
// lists them; SIGTERM leaves every mount in place and a new agent picks
// them up and tears the pods down, leaving nothing behind.
func TestLabAgent(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "agent.sh"), testenv.WithFiles(containerd2Files(t)...), testenv.WithMemory(2048))
}

// TestLabObserve: two containers mount the same address from their own
// netns (different servers, noac): nsmount watch's metrics count their
// GETATTRs apart, nsmount top names the busy one first; blackholing one
// container's route sets only its unresponsive gauge, the watchdog
// attributes the kernel's "not responding" line and a hung task to it, a
// scrape during the outage answers within 5 s, and the gauge clears once
// the server answers again.
func TestLabObserve(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, labScript(t, "observe.sh"), testenv.WithTimeout(10*time.Minute))
}

// containerd2Files are the guest files of the CRI scenarios: containerd
// 2.x (built from the module proxy, cached) and its shim, runc and the CNI
// plugins (ContainerdGuestFiles' containerd 1.6 shadowed).
func containerd2Files(t *testing.T) []testenv.HostFile {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	dir, err := testenv.Containerd2(ctx, "", nil)
	if err != nil {
		t.Fatalf("containerd %s for the guest: %v", testenv.Containerd2Version, err)
	}
	files := []testenv.HostFile{
		{Src: filepath.Join(dir, "containerd"), Dst: "/usr/bin/containerd"},
		{Src: filepath.Join(dir, "containerd-shim-runc-v2"), Dst: "/usr/bin/containerd-shim-runc-v2"},
	}
	more, err := testenv.ContainerdGuestFiles()
	if err != nil {
		t.Fatal(err)
	}
	return append(files, more...)
}
