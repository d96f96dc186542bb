package csi

import (
	"context"
	"errors"
	"fmt"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nsmount/nsmount/nsmount"
)

// GetPluginInfo reports the driver's name and version.
func (s *Service) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	v := s.c.Version
	if v == "" {
		v = "dev"
	}
	return &csipb.GetPluginInfoResponse{Name: DriverName, VendorVersion: v}, nil
}

// GetPluginCapabilities reports none: there is no controller service
// (nothing to provision or attach: the export exists on the server) and no
// topology (every node may mount).
func (s *Service) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil
}

// Probe reports ready while the records' directory can be read.
func (s *Service) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	if _, _, err := s.store.list(); err != nil {
		return nil, status.Error(codes.FailedPrecondition, oneLine(err))
	}
	return &csipb.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// NodeGetInfo reports the node ID; there is no volume limit and no
// topology.
func (s *Service) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: s.c.NodeID}, nil
}

// NodeGetCapabilities reports GET_VOLUME_STATS and GET_VOLUME_HEALTH; no
// staging.
func (s *Service) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	capability := func(t csipb.NodeServiceCapability_RPC_Type) *csipb.NodeServiceCapability {
		return &csipb.NodeServiceCapability{Type: &csipb.NodeServiceCapability_Rpc{Rpc: &csipb.NodeServiceCapability_RPC{Type: t}}}
	}
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: []*csipb.NodeServiceCapability{
		capability(csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS),
		capability(csipb.NodeServiceCapability_RPC_GET_VOLUME_HEALTH),
	}}, nil
}

// NodePublishVolume validates the volume (ParseVolume), asks the host
// policy (PermissionDenied when it refuses), records the volume and
// creates the target directory. If the pod's sandbox runs already, the
// volume is mounted at once; otherwise PodSandboxReady mounts it. A repeat
// of the same request is OK; another volume or other parameters at a
// target path already published is AlreadyExists.
func (s *Service) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	if req.GetStagingTargetPath() != "" {
		return nil, status.Error(codes.InvalidArgument, "staging target path given, but the driver has no STAGE_UNSTAGE_VOLUME capability")
	}
	v, err := ParseVolume(req.GetVolumeId(), req.GetTargetPath(), req.GetVolumeCapability(), req.GetReadonly(), req.GetVolumeContext())
	if err != nil {
		return nil, statusOf(err)
	}
	if err := s.checkTargetRoot(v.TargetPath); err != nil {
		return nil, statusOf(err)
	}
	policy, err := s.policy()
	if err != nil {
		return nil, status.Error(codes.Internal, oneLine(err))
	}
	_, adm, err := policy.CheckCSI(v.CSIVolume())
	if err != nil {
		s.log.Warn("volume refused", "volume", v.ID, "pod", v.Pod.String(), "error", oneLine(err))
		return nil, statusOf(err)
	}
	unlock, err := s.pods.lock(ctx, v.Pod.UID)
	if err != nil {
		return nil, statusOf(err)
	}
	defer unlock()
	r, err := s.store.get(v.TargetPath)
	if err != nil {
		return nil, statusOf(err)
	}
	if r != nil && !r.sameRequest(v) {
		return nil, status.Errorf(codes.AlreadyExists, "target path %s has volume %s published already, with other parameters", v.TargetPath, r.Volume.ID)
	}
	created := r == nil
	if created {
		if err := s.makeTarget(v.TargetPath); err != nil {
			return nil, statusOf(err)
		}
		r = &Record{Volume: *v, Admission: adm, Published: time.Now().UTC(), State: StatePending}
		if err := s.store.put(r); err != nil {
			s.removeTarget(v.TargetPath)
			return nil, statusOf(err)
		}
		s.log.Info("published", "volume", v.ID, "target", v.TargetPath, "pod", v.Pod.String(), "source", v.Source.String(), "ephemeral", v.Ephemeral, "rule", adm.Rule)
	}
	sb, ok := s.sandboxOf(v.Pod.UID)
	if !ok {
		return &csipb.NodePublishVolumeResponse{}, nil // PodSandboxReady mounts it
	}
	vr := s.mountLocked(ctx, r, sb)
	if vr.Err != nil {
		if errors.Is(vr.Err, nsmount.ErrTargetNotFound) {
			// The sandbox went away meanwhile: the next one mounts it.
			s.PodSandboxGone(sb)
			return &csipb.NodePublishVolumeResponse{}, nil
		}
		err := fmt.Errorf("volume %s: mount from the pod's running sandbox: %w", v.ID, vr.Err)
		if created && final(codeOf(err)) {
			// Kubelet takes this as nothing published: leave nothing.
			s.store.remove(v.TargetPath)
			s.removeTarget(v.TargetPath)
		}
		return nil, statusOf(err)
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts the volume at the target path (lazily if it
// is busy), flushes what its mount leaves in the kernel's NFS client,
// removes its record and the target directory. It succeeds when there is
// nothing left to do, also after the pod's network namespace is gone.
// Another volume recorded at the target path is NotFound.
func (s *Service) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	id, p := req.GetVolumeId(), req.GetTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, statusOf(err)
	}
	if err := checkTargetPath("target path", p); err != nil {
		return nil, statusOf(err)
	}
	r, err := s.store.get(p)
	if err != nil {
		return nil, statusOf(err)
	}
	if r != nil {
		unlock, err := s.pods.lock(ctx, r.Volume.Pod.UID)
		if err != nil {
			return nil, statusOf(err)
		}
		defer unlock()
		if r, err = s.store.get(p); err != nil { // changed while waiting?
			return nil, statusOf(err)
		}
	}
	if r != nil && r.Volume.ID != id {
		return nil, status.Errorf(codes.NotFound, "target path %s has volume %s published, not %s", p, r.Volume.ID, id)
	}
	if r != nil {
		warnings, err := s.unmountLocked(ctx, r)
		for _, w := range warnings {
			s.log.Warn(w, "volume", id, "target", p)
		}
		if err != nil {
			return nil, statusOf(err)
		}
	} else if err := s.unmountUnrecorded(ctx, p); err != nil {
		return nil, statusOf(err)
	}
	if r != nil {
		if err := s.store.remove(p); err != nil {
			return nil, statusOf(err)
		}
		s.log.Info("unpublished", "volume", id, "target", p, "pod", r.Volume.Pod.String())
	}
	if err := s.removeTarget(p); err != nil {
		return nil, statusOf(err)
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

// unmountUnrecorded unmounts an NFS mount that nsmount made at p without a
// record of this service (a record lost with the state directory); any
// other mount, or none, is left as it is.
func (s *Service) unmountUnrecorded(ctx context.Context, p string) error {
	if s.mountHere(p) == nil {
		return nil // nothing there, or not nsmount's
	}
	t, err := s.hostTarget()
	if err != nil {
		return err
	}
	defer t.Close()
	_, err = s.mgr.Unmount(ctx, t, p, nsmount.UnmountOptions{Timeout: s.c.MountTimeout})
	if err != nil && !errors.Is(err, nsmount.ErrNotMounted) {
		return fmt.Errorf("unmount %s: %w", p, err)
	}
	return nil
}

// NodeGetVolumeStats reports the volume's size and use as the server's
// statfs says, through the mount, in a helper killed after StatsTimeout:
// NotFound for a volume not published at the path, Unavailable for one
// not mounted yet, whose mount failed, or whose server does not answer in
// time or answers with an error.
func (s *Service) NodeGetVolumeStats(ctx context.Context, req *csipb.NodeGetVolumeStatsRequest) (*csipb.NodeGetVolumeStatsResponse, error) {
	id, p := req.GetVolumeId(), req.GetVolumePath()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID: missing")
	}
	if p == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path: missing")
	}
	r, err := s.published(id, p)
	if err != nil {
		return nil, err
	}
	if r.State != StateMounted {
		return nil, status.Error(codes.Unavailable, notMounted(r))
	}
	h, err := s.probe(ctx, r)
	if err != nil {
		return nil, statusOf(fmt.Errorf("volume %s at %s: %w", id, p, err))
	}
	if !h.OK() || h.Stats == nil {
		return nil, status.Errorf(codes.Unavailable, "volume %s at %s: %s", id, p, healthText(h))
	}
	st := h.Stats
	return &csipb.NodeGetVolumeStatsResponse{Usage: []*csipb.VolumeUsage{
		{Unit: csipb.VolumeUsage_BYTES, Total: clamp(st.Bytes), Available: clamp(st.BytesAvail), Used: clamp(st.Bytes - min(st.BytesFree, st.Bytes))},
		{Unit: csipb.VolumeUsage_INODES, Total: clamp(st.Files), Available: clamp(st.FilesFree), Used: clamp(st.Files - min(st.FilesFree, st.Files))},
	}}, nil
}

// NodeGetVolumeHealth reports the volume's health (an alpha RPC of CSI
// 1.13, which replaced NodeGetVolumeStats' volume condition): no entry for
// a mount whose server answers, else INACCESSIBLE with a reason
// (NotMountedYet, MountFailed, ServerNotResponding, StaleFileHandle,
// IOError, NotMounted). Without a path, every target path the volume is
// published at is probed.
func (s *Service) NodeGetVolumeHealth(ctx context.Context, req *csipb.NodeGetVolumeHealthRequest) (*csipb.NodeGetVolumeHealthResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID: missing")
	}
	var recs []*Record
	if p := req.GetVolumePublishPath(); p != "" {
		r, err := s.published(id, p)
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
	} else {
		all, _, err := s.store.list()
		if err != nil {
			return nil, statusOf(err)
		}
		for _, r := range all {
			if r.Volume.ID == id {
				recs = append(recs, r)
			}
		}
		if len(recs) == 0 {
			return nil, status.Errorf(codes.NotFound, "volume %s is not published on this node", id)
		}
	}
	vh := &csipb.VolumeHealth{VolumeId: id}
	seen := map[string]bool{}
	add := func(reason, msg string) {
		if !seen[reason] {
			seen[reason] = true
			vh.HealthStatuses = append(vh.HealthStatuses, &csipb.VolumeHealth_VolumeHealthEntry{Status: csipb.VolumeHealthErrorType_INACCESSIBLE, Reason: reason, Message: msg})
		}
	}
	for _, r := range recs {
		switch r.State {
		case StatePending:
			add("NotMountedYet", notMounted(r))
			continue
		case StateFailed:
			add("MountFailed", notMounted(r))
			continue
		}
		h, err := s.probe(ctx, r)
		switch {
		case err != nil:
			add("NotMounted", fmt.Sprintf("%s: %s", r.Volume.TargetPath, oneLine(err)))
		case h.Hung:
			add("ServerNotResponding", fmt.Sprintf("%s: %s", r.Volume.TargetPath, healthText(h)))
		case h.Errno == unix.ESTALE:
			add("StaleFileHandle", fmt.Sprintf("%s: %s", r.Volume.TargetPath, healthText(h)))
		case !h.OK():
			add("IOError", fmt.Sprintf("%s: %s", r.Volume.TargetPath, healthText(h)))
		}
	}
	return &csipb.NodeGetVolumeHealthResponse{VolumeHealth: vh}, nil
}

// published returns the record of volume id at path p: NotFound if
// there is none.
func (s *Service) published(id, p string) (*Record, error) {
	if checkTargetPath("volume path", p) != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not published at %s", id, printable(p))
	}
	r, err := s.store.get(p)
	if err != nil {
		return nil, statusOf(err)
	}
	if r == nil || r.Volume.ID != id {
		return nil, status.Errorf(codes.NotFound, "volume %s is not published at %s", id, p)
	}
	return r, nil
}

// probe probes the mount at r's target path in the host's mount
// namespace, bounded by StatsTimeout.
func (s *Service) probe(ctx context.Context, r *Record) (nsmount.Health, error) {
	e := s.mountHere(r.Volume.TargetPath)
	if e == nil {
		return nsmount.Health{}, nsmount.WithClass(nsmount.ErrNotMounted, fmt.Errorf("no nsmount mount at %s any more", r.Volume.TargetPath))
	}
	t, err := s.hostTarget()
	if err != nil {
		return nsmount.Health{}, err
	}
	defer t.Close()
	return nsmount.ProbeMount(ctx, t, r.Volume.TargetPath, e.MountID, s.c.StatsTimeout)
}

// notMounted says why r has no mount.
func notMounted(r *Record) string {
	if r.State == StateFailed {
		return fmt.Sprintf("volume %s at %s: the mount from the pod's network failed (%d attempts): %s", r.Volume.ID, r.Volume.TargetPath, r.Attempts, r.LastError)
	}
	return fmt.Sprintf("volume %s at %s is not mounted yet: waiting for the sandbox of pod %s", r.Volume.ID, r.Volume.TargetPath, r.Volume.Pod)
}

// healthText describes a failed probe.
func healthText(h nsmount.Health) string {
	switch {
	case h.Hung:
		return fmt.Sprintf("the server did not answer in %s (%s)", h.Elapsed.Round(time.Millisecond), h.Error)
	case h.Errno != 0:
		return fmt.Sprintf("%s: %s", errnoName(h.Errno), h.Error)
	case h.Error != "":
		return h.Error
	}
	return "no statistics"
}

// clamp converts a count to the CSI's int64, saturating.
func clamp(n uint64) int64 {
	if n > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(n)
}
