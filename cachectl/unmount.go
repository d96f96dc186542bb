package cachectl

import (
	"context"
	"fmt"
	"path"
	"slices"
	"time"

	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// Unmounted is what Manager.Unmount did.
type Unmounted struct {
	// MountID is the ID the unmounted mount had.
	MountID uint64 `json:"mount_id"`
	// Entry is the registry entry forgotten with it; nil when nsmount did
	// not make the mount.
	Entry *registry.Entry `json:"entry,omitempty"`
}

// Unmount unmounts target in t and forgets its registry entry.
// While it unmounts it holds the mount's lock (mountLockName), and so
// waits for a probe in flight (nsmount watch's, status's), each bounded by
// its timeout. The lock is named by the entry's mount point: when target
// is another path to the mount (a symlink to it, say), Unmount first asks
// t which mount is there, and then unmounts that mount by its ID, so that
// the mount it locked is the one it takes away, and a watch reconciling
// meanwhile does not report it lost. o.Timeout bounds the whole.
func (m *Manager) Unmount(ctx context.Context, t *nsmount.Target, target string, o nsmount.UnmountOptions) (*Unmounted, error) {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = nsmount.DefaultMountTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	mountpoint, byID := target, uint64(0)
	// A registry that cannot be read does not keep the mount in place: the
	// unmount goes on under the lock of the path given, and reports the
	// registry's error when it forgets the entry.
	s, err := m.netnsState(t.NetNS())
	if err == nil {
		mountpoint, byID = m.unmountLockPoint(ctx, s, t, target, timeout)
	}
	l, err := m.reg.Lock(ctx, mountLockName(t.NetNS(), t.MountNS(), mountpoint))
	if err != nil {
		return nil, nsmount.WithClass(nsmount.ErrTimeout, fmt.Errorf("unmount %s: %w", target, err))
	}
	id := byID
	if byID != 0 {
		err = nsmount.UnmountID(ctx, t, byID, o)
	} else {
		id, err = nsmount.Unmount(ctx, t, target, o)
	}
	if err != nil {
		l.Unlock()
		return nil, err
	}
	if err := l.Remove(); err != nil {
		m.notice("unmounted %s: %v", target, err)
	}
	res := &Unmounted{MountID: id}
	entryID := fmt.Sprintf("%d:%d", t.MountNSInode(), id)
	if s, err = m.netnsState(t.NetNS()); err == nil {
		if e := s.Find(entryID); e != nil {
			res.Entry = e
		}
		err = m.forget(entryID)
	}
	if err != nil {
		return res, fmt.Errorf("unmounted %s, but forgetting its entry failed: %w", target, err)
	}
	return res, nil
}

// unmountLockPoint returns the mount point whose lock an unmount of target
// takes: target itself when an entry of t's mount namespace (in s) has it
// as its mount point, or when none has entries there (nothing to
// exclude); otherwise, when the mount at target is an entry's, that
// entry's mount point and the mount's ID, by which it is then unmounted.
// An error finding the mount leaves target to the unmount, which reports
// it as it would have.
func (m *Manager) unmountLockPoint(ctx context.Context, s *registry.State, t *nsmount.Target, target string, timeout time.Duration) (string, uint64) {
	clean := path.Clean(target)
	entries := s.InMountNS(t.MountNS())
	if len(entries) == 0 || slices.ContainsFunc(entries, func(e registry.Entry) bool { return path.Clean(e.Mountpoint) == clean }) {
		return target, 0
	}
	id, err := nsmount.MountIDAt(ctx, t, target, timeout)
	if err != nil {
		return target, 0
	}
	e := s.Find(fmt.Sprintf("%d:%d", t.MountNSInode(), id))
	if e == nil || e.Target.NetNS != t.NetNS() {
		return target, 0
	}
	return e.Mountpoint, id
}
