package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
)

// DriverName is the CSI driver's name, as the CSIDriver object and
// kubelet know it.
const DriverName = "nfs.nsmount.io"

// Defaults of a Config.
const (
	// DefaultMountNS is the host's mount namespace as seen from a process
	// in the host's PID namespace (the agent's pod has hostPID).
	DefaultMountNS = "/proc/1/ns/mnt"
	// DefaultStatsTimeout bounds the probe of NodeGetVolumeStats and
	// NodeGetVolumeHealth.
	DefaultStatsTimeout = 5 * time.Second
	// DeadNetNSUnmountTimeout bounds the unmount of a mount whose network
	// namespace is gone (see unmountLocked).
	DeadNetNSUnmountTimeout = 3 * time.Second
	// MaxNodeIDLen bounds a node ID (the CSI spec's limit).
	MaxNodeIDLen = 256
)

// Config configures a Service.
type Config struct {
	// NodeID is what NodeGetInfo reports (the Kubernetes node's name).
	NodeID string
	// Policy is the host policy file (admission.LoadOrDeny: a missing file
	// denies every volume), read at every NodePublishVolume and mount.
	Policy string
	// StateDir is the registry's directory ("" registry.DefaultDir); the
	// published volumes are recorded in its csi subdirectory.
	StateDir string
	// MountNS is the mount namespace that kubelet's target paths are in
	// ("" DefaultMountNS).
	MountNS string
	// TargetRoot, if not "", is the directory that every target path must
	// be below (kubelet's root directory, /var/lib/kubelet).
	TargetRoot string
	// Proc is the procfs that FindSandbox reads; NoDiscovery turns that
	// search off (sandboxes are then known only from PodSandboxReady).
	Proc        kernel.Proc
	NoDiscovery bool
	// ProbeTimeout and MountTimeout bound a mount's reachability checks
	// and the mount itself (zero: nsmount's defaults); StatsTimeout the
	// probe of a volume's statistics and health (zero:
	// DefaultStatsTimeout).
	ProbeTimeout, MountTimeout, StatsTimeout time.Duration
	// Version is the vendor version GetPluginInfo reports.
	Version string
	// Logger receives one line per volume event; nil discards them.
	Logger *slog.Logger
	// Manager is the Manager to mount through (an agent's, shared with its
	// other services; it must be over StateDir and Proc). nil opens one.
	Manager *cachectl.Manager
}

// Service is the CSI Identity and Node service. It is safe for concurrent
// use; the changes to one pod's volumes are serialized.
type Service struct {
	csipb.UnimplementedIdentityServer
	csipb.UnimplementedNodeServer

	c     Config
	log   *slog.Logger
	mgr   *cachectl.Manager
	store *store
	pods  keyedMutex

	mu        sync.Mutex
	sandboxes map[string]Sandbox // by pod UID, from PodSandboxReady
}

// New returns a Service over the registry and records in c.StateDir
// (created if missing).
func New(c Config) (*Service, error) {
	switch {
	case c.NodeID == "":
		return nil, invalid("node ID: missing")
	case len(c.NodeID) > MaxNodeIDLen:
		return nil, invalid("node ID: %d bytes, more than %d", len(c.NodeID), MaxNodeIDLen)
	}
	if c.StateDir == "" {
		c.StateDir = registry.DefaultDir
	}
	if c.MountNS == "" {
		c.MountNS = DefaultMountNS
	}
	if c.StatsTimeout <= 0 {
		c.StatsTimeout = DefaultStatsTimeout
	}
	if c.TargetRoot != "" {
		if err := checkTargetPath("target root", c.TargetRoot); err != nil {
			return nil, err
		}
	}
	t, err := nsmount.OpenPaths("/proc/self/ns/net", c.MountNS)
	if err != nil {
		return nil, fmt.Errorf("host mount namespace %s: %w", c.MountNS, err)
	}
	t.Close()
	mgr := c.Manager
	if mgr == nil {
		if mgr, err = cachectl.Open(cachectl.Config{StateDir: c.StateDir, Proc: c.Proc}); err != nil {
			return nil, err
		}
	}
	st, err := openStore(filepath.Join(c.StateDir, "csi"))
	if err != nil {
		return nil, err
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{c: c, log: log, mgr: mgr, store: st, sandboxes: map[string]Sandbox{}}, nil
}

// Serve serves the Identity and Node services on lis until ctx ends; then
// it stops, letting calls in flight finish for up to 10 seconds. Mounts stay
// in place.
func (s *Service) Serve(ctx context.Context, lis net.Listener) error {
	srv := grpc.NewServer(grpc.UnaryInterceptor(s.intercept))
	csipb.RegisterIdentityServer(srv, s)
	csipb.RegisterNodeServer(srv, s)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			srv.Stop()
		}
	}()
	err := srv.Serve(lis)
	if ctx.Err() != nil {
		<-stopped
		return nil
	}
	srv.Stop()
	return err
}

// intercept logs every call that fails, and turns an error that is not a
// gRPC status into one (nsmount's classes mapped to codes).
func (s *Service) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	if err != nil {
		err = statusOf(err)
		s.log.Warn("call failed", "method", info.FullMethod, "code", codeOf(err).String(), "error", oneLine(err), "elapsed", time.Since(start).Round(time.Millisecond))
	}
	return resp, err
}

// Listen listens on a CSI endpoint, unix:///PATH (or unix:/PATH, or a
// plain absolute PATH). A socket file left at PATH by an earlier run is
// removed first; anything else there is an error.
func Listen(endpoint string) (net.Listener, error) {
	p := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "unix://"); ok {
		p = rest
	} else if rest, ok := strings.CutPrefix(endpoint, "unix:"); ok {
		p = rest
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return nil, invalid("endpoint %q: want unix:///ABSOLUTE/PATH", printable(endpoint))
	}
	if fi, err := os.Lstat(p); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, invalid("endpoint %s exists and is not a socket", p)
		}
		if err := os.Remove(p); err != nil {
			return nil, fmt.Errorf("remove old socket %s: %w", p, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	return net.Listen("unix", p)
}

// policy loads the host policy.
func (s *Service) policy() (*admission.Policy, error) {
	return admission.LoadOrDeny(s.c.Policy)
}

// checkTargetRoot refuses a target path outside c.TargetRoot.
func (s *Service) checkTargetRoot(p string) error {
	if r := s.c.TargetRoot; r != "" && !strings.HasPrefix(p, strings.TrimSuffix(r, "/")+"/") {
		return invalid("target path %s is not below %s (kubelet's directory)", printable(p), r)
	}
	return nil
}

// hostTarget opens the host's mount namespace as a target (its network
// namespace is this process's: unmounts and probes make no connection of
// their own).
func (s *Service) hostTarget() (*nsmount.Target, error) {
	t, err := nsmount.OpenPaths("/proc/self/ns/net", s.c.MountNS)
	if err != nil {
		return nil, fmt.Errorf("host mount namespace %s: %w", s.c.MountNS, err)
	}
	return t, nil
}

// inHost runs fn in the host's mount namespace.
func (s *Service) inHost(fn func() error) error {
	t, err := s.hostTarget()
	if err != nil {
		return err
	}
	defer t.Close()
	return t.Do(nsmount.MountNS, fn)
}

// makeTarget creates the target directory in the host's mount namespace
// (its parent is kubelet's to make). An existing directory is fine.
func (s *Service) makeTarget(p string) error {
	return s.inHost(func() error {
		err := unix.Mkdir(p, 0o750)
		if errors.Is(err, unix.EEXIST) {
			var st unix.Stat_t
			// No following: the target is the directory itself.
			if err := unix.Lstat(p, &st); err != nil {
				return &os.PathError{Op: "stat", Path: p, Err: err}
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return nsmount.WithClass(nsmount.ErrUnsafePath, fmt.Errorf("target path %s exists and is not a directory", p))
			}
			return nil
		}
		if errors.Is(err, unix.ENOENT) {
			return nsmount.WithClass(nsmount.ErrUnsafePath, fmt.Errorf("target path %s: its parent directory does not exist (kubelet makes it)", p))
		}
		if err != nil {
			return &os.PathError{Op: "mkdir", Path: p, Err: err}
		}
		return nil
	})
}

// removeTarget removes the target directory in the host's mount
// namespace; a missing one is fine, one with files in it an error (files
// written while nothing was mounted are not the driver's to delete).
func (s *Service) removeTarget(p string) error {
	return s.inHost(func() error {
		err := unix.Rmdir(p)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
			return nsmount.WithClass(nsmount.ErrStaleState, fmt.Errorf("target path %s is not empty after the unmount: files were written there while nothing was mounted; left in place", p))
		case errors.Is(err, unix.EBUSY):
			return nsmount.WithClass(nsmount.ErrMountFailed, fmt.Errorf("target path %s is still a mount point", p))
		}
		return &os.PathError{Op: "rmdir", Path: p, Err: err}
	})
}

// mountAt reports the mount ID at path in the host's mount namespace and
// whether path is that mount's root, from cached attributes only (a hung
// server does not block it).
func (s *Service) mountAt(p string) (id uint64, root bool, err error) {
	err = s.inHost(func() error {
		var stx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &stx); err != nil {
			return &os.PathError{Op: "statx", Path: p, Err: err}
		}
		id = stx.Mnt_id
		root = stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
		return nil
	})
	return id, root, err
}

// remember records the sandbox that PodSandboxReady was told about.
func (s *Service) remember(sb Sandbox) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sandboxes[sb.PodUID] = sb
}

// sandboxOf returns the pod's running sandbox: the one PodSandboxReady
// told of, if its network namespace is still there, else the one
// FindSandbox finds.
func (s *Service) sandboxOf(uid string) (Sandbox, bool) {
	s.mu.Lock()
	sb, ok := s.sandboxes[uid]
	s.mu.Unlock()
	if ok {
		if _, err := nsmount.NSOfPath(sb.NetNS); err == nil {
			return sb, true
		}
		s.mu.Lock()
		if s.sandboxes[uid] == sb {
			delete(s.sandboxes, uid)
		}
		s.mu.Unlock()
	}
	if s.c.NoDiscovery {
		return Sandbox{}, false
	}
	found, ok, err := FindSandbox(s.c.Proc, uid)
	if err != nil {
		s.log.Warn("look for the pod's sandbox: "+oneLine(err), "pod_uid", uid)
		return Sandbox{}, false
	}
	return found, ok
}

// VolumeReport is what was done for one volume by PodSandboxReady or
// NodePublishVolume.
type VolumeReport struct {
	// VolumeID and TargetPath name the volume.
	VolumeID   string `json:"volume_id"`
	TargetPath string `json:"target_path"`
	// Did is "mounted", "remounted" (from a new sandbox), "already
	// mounted" or "unmounted" (PodSandboxStopping); "" when it failed.
	Did string `json:"did,omitempty"`
	// Mount is the volume's mount, when there is one.
	Mount *MountState `json:"mount,omitempty"`
	// Warnings are one line each for people.
	Warnings []string `json:"warnings,omitempty"`
	// Err is why the mount failed.
	Err error `json:"-"`
}

// SandboxReport is what PodSandboxReady did.
type SandboxReport struct {
	// Sandbox is the sandbox mounted from.
	Sandbox Sandbox `json:"sandbox"`
	// Volumes has one report per volume recorded for the pod.
	Volumes []VolumeReport `json:"volumes"`
	// Problems are record files that could not be read, one line each.
	Problems []string `json:"problems,omitempty"`
}

// PodSandboxReady mounts the volumes published for the pod of sb from its
// network namespace, resolving server names with the resolver files of its
// process (if sb.PID is not 0), onto their target paths in the host's
// mount namespace. Call it when the runtime has made the pod's sandbox and
// before it creates the pod's containers: NRI's RunPodSandbox (whose Pid
// and network namespace path are what sb needs), or a CNI ADD with
// K8S_POD_UID (no process yet: server names cannot be resolved then).
//
// Volumes mounted from this sandbox already are left alone; those mounted
// from an earlier sandbox of the pod (a new network namespace) are
// unmounted and mounted again from this one. The sandbox is remembered:
// a volume published for the pod later is mounted at once. It is
// idempotent, and bounded by ctx and the Config's timeouts. The report is
// never nil; the error joins the failures of the volumes (each also in
// its VolumeReport): the caller should not let the pod's containers start
// without them (fail the RunPodSandbox event, or the CreateContainer
// events).
func (s *Service) PodSandboxReady(ctx context.Context, sb Sandbox) (*SandboxReport, error) {
	rep := &SandboxReport{Sandbox: sb}
	if err := sb.check(); err != nil {
		return rep, err
	}
	if sb.PID == 0 && !s.c.NoDiscovery {
		// A runtime that does not give the sandbox's process: the pod's
		// oldest process, if it is in that network namespace.
		if found, ok, err := FindSandbox(s.c.Proc, sb.PodUID); err == nil && ok {
			a, err1 := nsmount.NSOfPath(found.NetNS)
			b, err2 := nsmount.NSOfPath(sb.NetNS)
			if err1 == nil && err2 == nil && a == b {
				sb.PID = found.PID
				rep.Sandbox = sb
			}
		}
	}
	unlock, err := s.pods.lock(ctx, sb.PodUID)
	if err != nil {
		return rep, err
	}
	defer unlock()
	s.remember(sb)
	recs, problems, err := s.store.ofPod(sb.PodUID)
	rep.Problems = problems
	if err != nil {
		return rep, err
	}
	var errs []error
	for _, r := range recs {
		vr := s.mountLocked(ctx, r, sb)
		rep.Volumes = append(rep.Volumes, vr)
		if vr.Err != nil {
			errs = append(errs, fmt.Errorf("volume %s at %s: %w", r.Volume.ID, r.Volume.TargetPath, vr.Err))
		}
	}
	return rep, errors.Join(errs...)
}

// PodSandboxStopping unmounts the pod's volumes that were mounted from
// sandbox sb's network namespace, and flushes what they leave in the
// kernel's NFS client, while the server can still be reached from that
// namespace. Call it when the runtime stops the sandbox, after the pod's
// containers and before the pod's network is torn down: NRI's
// StopPodSandbox (containerd and CRI-O send it between the two). A mount
// outlives its network otherwise: its NFS client can no longer reach the
// server, and its unmount (NodeUnpublishVolume, after the sandbox has
// stopped) could not end the client's session with the server.
//
// The volumes stay published, pending: a new sandbox of the pod mounts
// them again (PodSandboxReady), NodeUnpublishVolume removes them. The
// sandbox is forgotten (PodSandboxGone). The report is never nil; the
// error joins the volumes' failures.
func (s *Service) PodSandboxStopping(ctx context.Context, sb Sandbox) (*SandboxReport, error) {
	rep := &SandboxReport{Sandbox: sb}
	if err := sb.check(); err != nil {
		return rep, err
	}
	s.PodSandboxGone(sb)
	netns, err := nsmount.NSOfPath(sb.NetNS)
	if err != nil {
		return rep, nil // gone already: nothing can be done through it
	}
	unlock, err := s.pods.lock(ctx, sb.PodUID)
	if err != nil {
		return rep, err
	}
	defer unlock()
	recs, problems, err := s.store.ofPod(sb.PodUID)
	rep.Problems = problems
	if err != nil {
		return rep, err
	}
	var errs []error
	for _, r := range recs {
		if r.Mount == nil || r.Mount.NetNS != netns {
			continue
		}
		vr := VolumeReport{VolumeID: r.Volume.ID, TargetPath: r.Volume.TargetPath, Mount: r.Mount}
		vr.Warnings, vr.Err = s.unmountLocked(ctx, r)
		if vr.Err == nil {
			vr.Did, vr.Mount = "unmounted", nil
			r.State = StatePending
			if err := s.store.put(r); err != nil {
				vr.Err = err
			}
		}
		if vr.Err != nil {
			errs = append(errs, fmt.Errorf("volume %s at %s: %w", r.Volume.ID, r.Volume.TargetPath, vr.Err))
		}
		for _, w := range vr.Warnings {
			s.log.Warn(w, "volume", r.Volume.ID)
		}
		rep.Volumes = append(rep.Volumes, vr)
	}
	return rep, errors.Join(errs...)
}

// PodSandboxGone forgets the sandbox sb (NRI's RemovePodSandbox): a
// volume published for its pod later waits for the next sandbox. A
// remembered sandbox of the pod with another network namespace (a newer
// one) is kept. Mounts are left alone.
func (s *Service) PodSandboxGone(sb Sandbox) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.sandboxes[sb.PodUID]; ok && cur.NetNS == sb.NetNS {
		delete(s.sandboxes, sb.PodUID)
	}
}

// VolumeStatus is one published volume's state, as PodVolumes reports it.
type VolumeStatus struct {
	VolumeID   string `json:"volume_id"`
	TargetPath string `json:"target_path"`
	// State is StatePending, StateMounted or StateFailed.
	State string `json:"state"`
	// NetNS and NetNSPath are the network namespace mounted from
	// (StateMounted).
	NetNS     nsmount.NSID `json:"netns,omitzero"`
	NetNSPath string       `json:"netns_path,omitempty"`
	// LastError is why the last mount attempt failed.
	LastError string `json:"last_error,omitempty"`
}

// PodVolumes returns the state of every volume published for the pod with
// the given UID (none: an empty list), for the caller to decide whether
// the pod's containers may start: every volume StateMounted, from the
// network namespace of the pod's current sandbox.
func (s *Service) PodVolumes(podUID string) ([]VolumeStatus, error) {
	recs, _, err := s.store.ofPod(podUID)
	if err != nil {
		return nil, err
	}
	out := make([]VolumeStatus, 0, len(recs))
	for _, r := range recs {
		vs := VolumeStatus{VolumeID: r.Volume.ID, TargetPath: r.Volume.TargetPath, State: r.State, LastError: r.LastError}
		if r.Mount != nil {
			vs.NetNS, vs.NetNSPath = r.Mount.NetNS, r.Mount.NetNSPath
		}
		out = append(out, vs)
	}
	return out, nil
}

// mountLocked makes r's mount from sandbox sb, unless it is mounted from
// it already, and records the outcome. The caller holds the pod's lock.
func (s *Service) mountLocked(ctx context.Context, r *Record, sb Sandbox) VolumeReport {
	vr := VolumeReport{VolumeID: r.Volume.ID, TargetPath: r.Volume.TargetPath}
	log := s.log.With("volume", r.Volume.ID, "target", r.Volume.TargetPath, "pod", r.Volume.Pod.String())
	fail := func(err error) VolumeReport {
		r.State, r.LastError = StateFailed, oneLine(err)
		if perr := s.store.put(r); perr != nil {
			err = fmt.Errorf("%w; recording the failure: %w", err, perr)
		}
		log.Warn("mount failed", "netns", sb.NetNS, "error", oneLine(err))
		vr.Err = err
		return vr
	}
	netns, err := nsmount.NSOfPath(sb.NetNS)
	if err != nil {
		return fail(nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("network namespace of the pod's sandbox: %w", err)))
	}
	if _, err := netip.ParseAddr(r.Volume.Source.Server); err != nil && sb.PID == 0 {
		// Never the host's resolver files: the volume waits (pending)
		// for a sandbox event that names the pod's process.
		vr.Err = nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("server %q is resolved with the pod's own resolver files, and the sandbox's process is not known yet (RunPodSandbox gives it)", r.Volume.Source.Server))
		return vr
	}
	e := s.mountHere(r.Volume.TargetPath)
	// The same network namespace, by identity (a path found by FindSandbox
	// differs from the runtime's): while the mount is there, its NFS
	// client holds the namespace, whose inode cannot be reused meanwhile.
	if e != nil && e.Target.NetNS == netns {
		if r.Mount == nil || r.Mount.MountID != e.MountID {
			// Made before a restart of the records, or replaced by
			// nsmount remount or watch: the registry knows.
			r.State, r.Mount = StateMounted, mountStateOf(e, sb.PID)
			if err := s.store.put(r); err != nil {
				vr.Warnings = append(vr.Warnings, "recording the mount: "+oneLine(err))
			}
		}
		vr.Did, vr.Mount = "already mounted", r.Mount
		return vr
	}
	if e != nil || r.Mount != nil {
		if e != nil {
			log.Info("new sandbox: unmounting the mount made from the old one", "old_netns", e.Target.NetNSPath, "netns", sb.NetNS)
		}
		w, err := s.unmountLocked(ctx, r)
		vr.Warnings = append(vr.Warnings, w...)
		if err != nil {
			return fail(fmt.Errorf("unmount the mount made from the pod's earlier sandbox: %w", err))
		}
		vr.Did = "remounted"
	}
	policy, err := s.policy()
	if err != nil {
		return fail(err)
	}
	req, adm, err := policy.CheckCSI(r.Volume.CSIVolume())
	if err != nil {
		return fail(err)
	}
	req.ProbeTimeout, req.MountTimeout = s.c.ProbeTimeout, s.c.MountTimeout
	t, err := nsmount.OpenPathsWithResolver(sb.NetNS, s.c.MountNS, sb.PID)
	if err != nil {
		return fail(err)
	}
	defer t.Close()
	r.Attempts++
	r.LastAttempt = time.Now().UTC()
	res, err := s.mgr.Mount(ctx, t, cachectl.MountRequest{
		Request: req, Admission: adm, Owner: cachectl.OwnerCSI,
		NetNSPath: sb.NetNS, MountNSPath: s.c.MountNS,
	})
	if res == nil || res.Mounted == nil {
		return fail(err)
	}
	if err != nil {
		// Mounted, but the registry did not take it: the mount is there.
		vr.Warnings = append(vr.Warnings, oneLine(err))
	}
	vr.Warnings = append(vr.Warnings, res.Warnings...)
	if res.Flushed != nil {
		for _, a := range res.Flushed.Actions {
			log.Info("flushed stale NFS state first: " + report.OneLine(a.String()))
		}
	}
	mnt := res.Mounted
	r.State, r.LastError, r.Admission = StateMounted, "", adm
	r.Mount = mountStateOf(&res.Entry, sb.PID)
	r.Mount.NetNS, r.Mount.NetNSPath = netns, sb.NetNS
	if err := s.store.put(r); err != nil {
		vr.Warnings = append(vr.Warnings, "mounted, but recording it failed: "+oneLine(err))
	}
	if vr.Did == "" {
		vr.Did = "mounted"
	}
	vr.Mount = r.Mount
	log.Info(vr.Did, "source", mnt.Source, "netns", sb.NetNS, "address", mnt.Address, "route", mnt.Route.String(), "nfs", mnt.Version, "dev", mnt.Dev)
	for _, w := range vr.Warnings {
		log.Warn(w)
	}
	return vr
}

// unmountLocked unmounts r's recorded mount if it is still at the target
// path, and flushes the NFS client state it leaves: stale superblocks of
// its network namespace if that is still there, and orphan superblocks of
// its server. It never fails for what is gone already. The caller holds
// the pod's lock.
//
// A mount whose network namespace is gone (its sandbox stopped without
// PodSandboxStopping: the agent was away) can no longer reach its server:
// the kernel's goodbye to the server (DESTROY_SESSION, DESTROY_CLIENTID)
// at the last unmount would wait for the server up to minutes. It is
// detached lazily at once, and the helper stopped after
// DeadNetNSUnmountTimeout: the mount is gone from the target, and the
// superblock is freed without the server (which forgets the client when
// its lease expires).
func (s *Service) unmountLocked(ctx context.Context, r *Record) ([]string, error) {
	p := r.Volume.TargetPath
	e := s.mountHere(p)
	m := r.Mount
	if e != nil {
		m = mountStateOf(e, 0)
	}
	if m == nil {
		return nil, nil
	}
	alive := false
	if ns, err := nsmount.NSOfPath(m.NetNSPath); err == nil && ns == m.NetNS {
		alive = true
	}
	var warnings []string
	if e != nil {
		t, err := s.hostTarget()
		if err != nil {
			return nil, err
		}
		defer t.Close()
		if alive {
			_, err = s.mgr.Unmount(ctx, t, p, nsmount.UnmountOptions{Timeout: s.c.MountTimeout})
		}
		if !alive || err != nil && !errors.Is(err, nsmount.ErrNotMounted) {
			_, err = s.mgr.Unmount(ctx, t, p, nsmount.UnmountOptions{Lazy: true, Timeout: DeadNetNSUnmountTimeout})
		}
		if err != nil && !errors.Is(err, nsmount.ErrNotMounted) {
			// Detached, but its teardown did not finish in time (the
			// server cannot be reached): the target is free.
			if id, root, aerr := s.mountAt(p); aerr == nil && (!root || id != e.MountID) {
				warnings = append(warnings, fmt.Sprintf("unmounted %s, but the NFS client could not reach server %s to end its session (%s)", p, m.Address, oneLine(err)))
				err = nil
			}
		}
		if err != nil && !errors.Is(err, nsmount.ErrNotMounted) {
			return warnings, fmt.Errorf("unmount %s: %w", p, err)
		}
		how := "unmounted"
		if !alive {
			how = "unmounted lazily (the pod's network namespace is gone)"
		}
		s.log.Info(how, "volume", r.Volume.ID, "target", p, "netns", m.NetNSPath)
	}
	r.Mount = nil
	tr := cachectl.TeardownRequest{}
	if alive {
		tr.NetNS = &m.NetNS
	}
	if a, err := netip.ParseAddr(m.Address); err == nil {
		tr.OrphanServers = []netip.Addr{a}
	}
	rep, err := s.mgr.Teardown(ctx, tr)
	if err != nil {
		warnings = append(warnings, "flush after the unmount: "+oneLine(err))
	}
	if rep != nil {
		for _, w := range rep.Warnings {
			warnings = append(warnings, report.OneLine(w))
		}
		for _, f := range rep.Flushes {
			for _, a := range f.Actions {
				s.log.Info("flushed: "+report.OneLine(a.String()), "volume", r.Volume.ID)
			}
		}
	}
	return warnings, nil
}

// mountHere returns the registry entry of the nsmount mount at target path
// p in the host's mount namespace, if that mount is the one there now: the
// registry follows the mount when nsmount remount or watch replaces it.
func (s *Service) mountHere(p string) *registry.Entry {
	id, root, err := s.mountAt(p)
	if err != nil || !root {
		return nil
	}
	mntns, err := nsmount.NSOfPath(s.c.MountNS)
	if err != nil {
		return nil
	}
	var found *registry.Entry
	err = s.mgr.Registry().View(func(st *registry.State) error {
		for _, e := range st.InMountNS(mntns) {
			if e.Mountpoint == p && e.MountID == id {
				found = &e
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("read the registry: "+oneLine(err), "target", p)
		return nil
	}
	return found
}

// mountStateOf is the MountState of registry entry e.
func mountStateOf(e *registry.Entry, sandboxPID int) *MountState {
	return &MountState{
		NetNS: e.Target.NetNS, NetNSPath: e.Target.NetNSPath, SandboxPID: sandboxPID,
		Entry: e.ID, MountID: e.MountID, Dev: e.Dev,
		Address: e.Address, ClientAddr: e.ClientAddr, Mounted: e.Created,
	}
}

// keyedMutex is a set of mutexes by key (a pod's UID) whose lock waits
// can be cancelled.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{} // holds a token while locked
	refs int
}

// lock locks key, waiting until ctx ends at most, and returns the unlock.
func (k *keyedMutex) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, nsmount.WithClass(nsmount.ErrTimeout, fmt.Errorf("wait for another operation on pod %s: %w", key, context.Cause(ctx)))
	}
}

// errnoName names an errno for messages ("ESTALE").
func errnoName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return e.Error()
}
