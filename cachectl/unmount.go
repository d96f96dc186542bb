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
func (m *Manager) Unmount(ctx context.Context, t *nsmount.Target, target string, o nsmount.UnmountOptions) (*Unmounted, error) {
	id, err := nsmount.Unmount(ctx, t, target, o)
	if err != nil {
		return nil, err
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
