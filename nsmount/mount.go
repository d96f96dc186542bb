package nsmount

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/nsmount/nsmount/routing"
	"golang.org/x/sys/unix"
)

// Default bounds for the waits of a mount.
const (
	// DefaultProbeTimeout bounds the reachability check of the server.
	DefaultProbeTimeout = 5 * time.Second
	// DefaultMountTimeout bounds the mount itself (superblock creation).
	DefaultMountTimeout = 30 * time.Second
)

// Request describes one NFS mount into a target.
type Request struct {
	// Source is the server and export.
	Source Source
	// FSType is "nfs" (any version; NFSv4.2 down to v3 are tried unless
	// vers= is given) or "nfs4".
	FSType string
	// Options are mount options as for mount.nfs(8). addr= is chosen by
	// nsmount; clientaddr= defaults to the source address of the route.
	Options Options
	// Target is the mount point, an absolute path inside the container's
	// root. Symlinks in it are resolved inside that root.
	Target string
	// Mkdir creates a missing target directory (inside the container root).
	Mkdir bool
	// ResolveFrom is where SERVER names are resolved: "container" (the
	// default) or "host" (an explicit opt-out).
	ResolveFrom string
	// ProbeTimeout and MountTimeout bound the reachability check and the
	// mount; zero means the defaults.
	ProbeTimeout, MountTimeout time.Duration
}

// Mounted describes a mount that nsmount made and verified.
type Mounted struct {
	// Target is the mount point inside the container.
	Target string `json:"target"`
	// Source is SERVER:/EXPORT as mounted.
	Source string `json:"source"`
	// Address is the server address the container's network was asked for.
	Address netip.Addr `json:"address"`
	// Route is the route the container's network namespace uses to Address.
	Route routing.Route `json:"route"`
	// Version is the NFS version that was mounted.
	Version string `json:"version"`
	// Params are the filesystem parameters given to the kernel.
	Params string `json:"params"`
	// Dev is the new superblock's device number, "major:minor"; it is listed
	// in the container netns's /proc/net/nfsfs/volumes.
	Dev string `json:"dev"`
	// MountID is the new mount's ID in the target's mountinfo.
	MountID uint64 `json:"mount_id"`
	// PID, NetNS and MountNS identify the target.
	PID     int    `json:"pid,omitempty"`
	NetNS   uint64 `json:"netns"`
	MountNS uint64 `json:"mntns"`
	// ClientID is the NFSv4 client identity (uniquifier) of the target's
	// netns; ClientIDSet reports that this mount gave it one (nsmount does so
	// before the first NFSv4 mount of a netns that has none).
	ClientID    string `json:"client_id,omitempty"`
	ClientIDSet bool   `json:"client_id_set,omitempty"`
	// Plan is the decision the mount carried out.
	Plan *Plan `json:"plan"`
	// InHelper is how long the mount took where it was made (the helper
	// process, or the thread), from the request to the answer: the rest of
	// MountPlan's time is starting the helper.
	InHelper time.Duration `json:"in_helper"`
}

// Mount mounts req.Source at req.Target inside t: Explain, then MountPlan.
// Code that must look at the decision before it is carried out (a policy,
// stale client state) calls the two itself.
func Mount(ctx context.Context, t *Target, req Request) (*Mounted, error) {
	plan, err := Explain(ctx, t, req)
	if err != nil {
		return nil, err
	}
	return MountPlan(ctx, t, plan)
}

// MountPlan carries out plan (made by Explain for t, without error): a
// helper process inside t's network and mount namespaces creates the
// superblock (bounded by the request's MountTimeout, killed after),
// checks that it shows up in t's netns's NFS client list, and only then
// attaches it at the plan's mount point; otherwise nothing is mounted and
// ErrNotVerified is returned.
func MountPlan(ctx context.Context, t *Target, plan *Plan) (*Mounted, error) {
	if err := plan.usable(t); err != nil {
		return nil, err
	}
	mctx, cancel := context.WithTimeout(ctx, orDefault(plan.mountTimeout, DefaultMountTimeout))
	defer cancel()
	resp, err := callHelper(mctx, t, helperRequest{Op: "mount", Spec: plan.spec, Target: plan.Mountpoint, Mkdir: plan.Mkdir})
	if err != nil {
		return nil, err
	}
	return mountedOf(t, plan, resp), nil
}

func mountedOf(t *Target, plan *Plan, resp *helperResponse) *Mounted {
	return &Mounted{
		Target:  plan.Mountpoint,
		Source:  plan.Source,
		Address: plan.Address,
		Route:   *plan.Route,
		Version: resp.Vers,
		Params:  resp.Params,
		Dev:     resp.Dev,
		MountID: resp.MountID,
		PID:     t.PID(),
		NetNS:   t.NetNSInode(),
		MountNS: t.MountNSInode(),
		Plan:    plan,

		ClientID:    resp.ClientID,
		ClientIDSet: resp.ClientIDSet,
		InHelper:    resp.took(),
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// UnmountOptions modify Unmount.
type UnmountOptions struct {
	// Lazy detaches the mount now and cleans up when it is no longer busy
	// (MNT_DETACH). A lazily unmounted NFS superblock that is still held
	// keeps its client and connection alive.
	Lazy bool
	// Force aborts pending requests to an unresponsive server (MNT_FORCE).
	Force bool
	// Timeout bounds the unmount; zero means DefaultMountTimeout.
	Timeout time.Duration
}

// Unmount removes the NFS mount at target (a path inside the container's
// root) from t's mount namespace and returns the ID the mount had. It
// returns ErrNotMounted when there is no NFS mount there.
func Unmount(ctx context.Context, t *Target, target string, o UnmountOptions) (uint64, error) {
	flags := 0
	if o.Lazy {
		flags |= unix.MNT_DETACH
	}
	if o.Force {
		flags |= unix.MNT_FORCE
	}
	ctx, cancel := context.WithTimeout(ctx, orDefault(o.Timeout, DefaultMountTimeout))
	defer cancel()
	resp, err := callHelper(ctx, t, helperRequest{Op: "umount", Target: target, Umount: flags})
	if err != nil {
		return 0, err
	}
	return resp.MountID, nil
}

// MountIDAt returns the ID of the NFS mount at target (a path inside the
// container's root, resolved there as Unmount resolves it, symlinks
// included) and leaves the mount in place. It returns ErrNotMounted when
// there is no NFS mount there. timeout bounds it (zero means
// DefaultMountTimeout): resolving a path can wait on an NFS server.
func MountIDAt(ctx context.Context, t *Target, target string, timeout time.Duration) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, orDefault(timeout, DefaultMountTimeout))
	defer cancel()
	resp, err := callHelper(ctx, t, helperRequest{Op: "mount-id", Target: target})
	if err != nil {
		return 0, err
	}
	return resp.MountID, nil
}

// MountEntry is one NFS mount in a target's mount table.
type MountEntry struct {
	// Target is the mount point as the target sees it.
	Target string `json:"target"`
	// Source is SERVER:/EXPORT.
	Source string `json:"source"`
	// FSType is nfs or nfs4.
	FSType string `json:"fstype"`
	// Dev is the superblock's device number, "major:minor".
	Dev string `json:"dev"`
	// Options are the per-mount options; SuperOptions the NFS options the
	// kernel reports (vers, addr, clientaddr, ...).
	Options      string `json:"options"`
	SuperOptions string `json:"super_options"`
	// Address and ClientAddr are addr= and clientaddr= from SuperOptions.
	Address    string `json:"address,omitempty"`
	ClientAddr string `json:"clientaddr,omitempty"`
	// InNetNS reports whether the superblock's NFS client lives in the
	// target's network namespace (listed in its nfsfs/volumes). A mount made
	// from another namespace looks the same in mountinfo but is false here.
	InNetNS bool `json:"in_netns"`
}

// List returns the NFS mounts in t's mount namespace, as its mountinfo
// shows them (paths relative to the target's root).
func List(t *Target) ([]MountEntry, error) {
	var info, volumes []byte
	if t.PID() != 0 {
		var err error
		if info, err = readFileLimited(fmt.Sprintf("/proc/%d/mountinfo", t.PID())); err != nil {
			return nil, withClass(ErrTargetNotFound, err)
		}
		volumes, _ = readFileLimited(fmt.Sprintf("/proc/%d/net/nfsfs/volumes", t.PID()))
	} else {
		proc, err := openPath("/proc")
		if err != nil {
			return nil, err
		}
		defer proc.Close()
		err = t.Do(NetNS|MountNS, func() error {
			var err error
			info, err = readProc(proc, "thread-self/mountinfo")
			volumes, _ = readProc(proc, "thread-self/net/nfsfs/volumes")
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	mounts, err := mountinfo.GetMountsFromReader(bytes.NewReader(info), mountinfo.FSTypeFilter("nfs", "nfs4"))
	if err != nil {
		return nil, fmt.Errorf("parse mountinfo of %s: %w", t, err)
	}
	devs := volumeDevs(volumes)
	out := make([]MountEntry, 0, len(mounts))
	for _, m := range mounts {
		e := MountEntry{
			Target: m.Mountpoint, Source: m.Source, FSType: m.FSType,
			Dev:     fmt.Sprintf("%d:%d", m.Major, m.Minor),
			Options: m.Options, SuperOptions: m.VFSOptions,
		}
		e.InNetNS = devs[e.Dev]
		for _, o := range strings.Split(m.VFSOptions, ",") {
			if v, ok := strings.CutPrefix(o, "addr="); ok {
				e.Address = v
			} else if v, ok := strings.CutPrefix(o, "clientaddr="); ok {
				e.ClientAddr = v
			}
		}
		out = append(out, e)
	}
	return out, nil
}

func readFileLimited(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxProcRead))
}
