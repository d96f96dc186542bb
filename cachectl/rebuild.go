package cachectl

import (
	"fmt"
	"strings"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"

	"github.com/nsmount/nsmount/nsmount"
)

// rebuild recovers registry entries from the kernel when the registry file
// is corrupt: every NFS mount, in every mount namespace that has a process,
// whose superblock belongs to the network namespace of that process and
// that is not the host's (PID 1's) network namespace. What only the
// original request knew (the server name, the route taken, the admission)
// is not recovered; the entries are marked Rebuilt, and a rebuilt entry is
// never moved by remount or watch (it has no route to compare, and no
// admission).
func rebuild(p kernel.Proc) (*registry.State, error) {
	w, err := Observe(p)
	if err != nil {
		return nil, err
	}
	s := &registry.State{}
	now := time.Now()
	for mntns, pids := range w.NS.MountNS {
		netns := w.NS.NetOf[mntns]
		if netns == w.NS.Init {
			continue
		}
		pid := pids[0]
		vols, err := p.Volumes(pid)
		if err != nil || len(vols) == 0 {
			continue
		}
		inNet := map[string]bool{}
		for _, v := range vols {
			inNet[v.Dev] = true
		}
		mounts, err := p.NFSMounts(pid)
		if err != nil {
			continue
		}
		start, _ := p.StartTime(pid)
		for _, m := range mounts {
			dev := fmt.Sprintf("%d:%d", m.Major, m.Minor)
			if !inNet[dev] {
				continue
			}
			e := registry.Entry{
				ID:         fmt.Sprintf("%d:%d", mntns.Ino, m.ID),
				Target:     registry.Identity{PID: pid, PIDStart: start, NetNS: netns, MountNS: mntns},
				Mountpoint: m.Mountpoint, MountID: uint64(m.ID), Dev: dev,
				Source: m.Source, FSType: m.FSType, Params: m.VFSOptions,
				Created: now, Rebuilt: true, Owner: "rebuilt",
			}
			// "[2001:db8::1]:/export" as well as "host:/export".
			if src, err := nsmount.ParseSource(m.Source); err == nil {
				e.Server = src.Server
			} else if srv, _, ok := strings.Cut(m.Source, ":"); ok {
				e.Server = srv
			}
			for _, o := range strings.Split(m.VFSOptions, ",") {
				if v, ok := strings.CutPrefix(o, "addr="); ok {
					e.Address = v
				} else if v, ok := strings.CutPrefix(o, "clientaddr="); ok {
					e.ClientAddr = v
				} else if v, ok := strings.CutPrefix(o, "vers="); ok {
					e.Version = v
				}
			}
			e.Request = registry.RequestRecord{Source: m.Source, FSType: m.FSType}
			s.Put(e)
		}
	}
	return s, nil
}
