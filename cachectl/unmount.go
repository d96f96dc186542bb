package cachectl

import (
	"context"
	"fmt"

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
// its timeout.
func (m *Manager) Unmount(ctx context.Context, t *nsmount.Target, target string, o nsmount.UnmountOptions) (*Unmounted, error) {
	l, err := m.reg.Lock(ctx, mountLockName(t.NetNS(), t.MountNS(), target))
	if err != nil {
		return nil, nsmount.WithClass(nsmount.ErrTimeout, fmt.Errorf("unmount %s: %w", target, err))
	}
	id, err := nsmount.Unmount(ctx, t, target, o)
	if err != nil {
		l.Unlock()
		return nil, err
	}
	if err := l.Remove(); err != nil {
		m.notice("unmounted %s: %v", target, err)
	}
	res := &Unmounted{MountID: id}
	entryID := fmt.Sprintf("%d:%d", t.MountNSInode(), id)
	s, err := m.netnsState(t.NetNS())
	if err == nil {
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
