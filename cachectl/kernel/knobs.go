package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/netsysfs"
)

// ErrNoShutdown reports that the kernel has no shutdown knob for an NFS
// superblock (Linux before 6.6, or no such superblock in the netns).
var ErrNoShutdown = netsysfs.ErrNoShutdown

// ClientIdentity returns the NFSv4 client identity (uniquifier) of t's
// network namespace, "" if none is set or the kernel has none. It changes
// nothing.
func ClientIdentity(ctx context.Context, t *nsmount.Target) (string, error) {
	var id string
	err := t.Do(nsmount.NetNS, func() error {
		fs, err := netsysfs.Open()
		if err != nil {
			return err
		}
		defer fs.Close()
		id, _, err = fs.Identity()
		return err
	})
	return id, err
}

// IdentityHere returns the NFSv4 client identity of the calling thread's
// network namespace (as ClientIdentity, for code already running inside
// it on a locked thread).
func IdentityHere() (string, error) {
	fs, err := netsysfs.Open()
	if err != nil {
		return "", err
	}
	defer fs.Close()
	id, _, err := fs.Identity()
	return id, err
}

// ShutdownState reports, for each NFS superblock in devs of t's network
// namespace, whether it is shut down (/sys/fs/nfs/DEV/shutdown reads 1).
// Devices without the knob (kernels before 6.6) are absent from the map.
func ShutdownState(ctx context.Context, t *nsmount.Target, devs []string) (map[string]bool, error) {
	state := map[string]bool{}
	err := t.Do(nsmount.NetNS, func() error {
		fs, err := netsysfs.Open()
		if err != nil {
			return err
		}
		defer fs.Close()
		for _, dev := range devs {
			down, err := fs.Shutdown(dev)
			switch {
			case errors.Is(err, netsysfs.ErrNoShutdown):
			case err != nil:
				return err
			default:
				state[dev] = down
			}
		}
		return nil
	})
	return state, err
}

// Shutdown shuts NFS superblock dev of t's network namespace down (Linux
// 6.6+): every RPC of it fails at once with EIO, files open on it included,
// and the kernel releases its NFS client, so that the next mount of that
// server in the netns gets a client, connection, route and identity of its
// own. The superblock itself stays while it is held. Without the knob it
// returns an error wrapping ErrNoShutdown.
func Shutdown(ctx context.Context, t *nsmount.Target, dev string) error {
	return t.Do(nsmount.NetNS, func() error {
		fs, err := netsysfs.Open()
		if err != nil {
			return err
		}
		defer fs.Close()
		return fs.SetShutdown(dev)
	})
}

// RetireClient shuts down (as Shutdown) every superblock of t's network
// namespace that the NFS client for server and version ("v3", "v4") holds:
// the kernel marks a client unusable once all its superblocks are shut
// down, and the next mount of that server in the netns gets a client,
// connection and state of its own instead of waiting on the old one. A
// superblock already shut down is left as it is. It returns the devices it
// shut down, in the order of nfsfs/volumes.
//
// Only superblocks in mine may be shut down: when the client holds another
// one, nothing is shut down and the error wraps ErrForeignSuperblock.
//
// The superblocks are told apart by what /proc/net/nfsfs/volumes shows
// (version, address, port); two clients that differ only in NFSv4 minor
// version or transport are taken for one.
//
// Without the knob (Linux before 6.6) nothing is changed and the error
// wraps ErrNoShutdown.
func RetireClient(ctx context.Context, t *nsmount.Target, server netip.AddrPort, version string, mine map[string]bool) ([]string, error) {
	var done []string
	err := t.Do(nsmount.NetNS, func() error {
		vols, err := volumesHere()
		if err != nil {
			return err
		}
		fs, err := netsysfs.Open()
		if err != nil {
			return err
		}
		defer fs.Close()
		client := clientVolumes(vols, server, version)
		down := map[string]bool{}
		for _, v := range client {
			if down[v.Dev], err = fs.Shutdown(v.Dev); err != nil {
				return err
			}
		}
		todo, err := retirePlan(client, down, mine)
		if err != nil {
			return err
		}
		for _, dev := range todo {
			if err := fs.SetShutdown(dev); err != nil {
				return err
			}
			done = append(done, dev)
		}
		return nil
	})
	if err != nil {
		return done, fmt.Errorf("retire the NFS client for %s in %s: %w", server, t, err)
	}
	return done, nil
}

// clientVolumes returns the superblocks of vols that the client for server
// and version holds.
func clientVolumes(vols []Volume, server netip.AddrPort, version string) []Volume {
	var out []Volume
	for _, v := range vols {
		if v.Version == version && v.Server == server.Addr().Unmap() && v.Port == server.Port() {
			out = append(out, v)
		}
	}
	return out
}

// retirePlan decides which of a client's superblocks to shut down: those
// not down already, all of them in mine, else none (ErrForeignSuperblock).
func retirePlan(vols []Volume, down, mine map[string]bool) ([]string, error) {
	var todo []string
	for _, v := range vols {
		switch {
		case down[v.Dev]:
		case !mine[v.Dev]:
			return nil, fmt.Errorf("superblock %s: %w", v.Dev, ErrForeignSuperblock)
		default:
			todo = append(todo, v.Dev)
		}
	}
	return todo, nil
}

// ErrForeignSuperblock reports a superblock that RetireClient was not
// allowed to shut down (one nsmount did not mount).
var ErrForeignSuperblock = errors.New("the client also holds this superblock, which nsmount did not mount: not retired")
