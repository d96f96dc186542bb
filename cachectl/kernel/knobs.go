package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

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
// namespace that the NFS client for server and version holds: the kernel
// marks a client unusable once all its superblocks are shut down, and the
// next mount of that server in the netns gets a client, connection and
// state of its own instead of waiting on the old one. A superblock already
// shut down is left as it is. It returns the devices it shut down, in the
// order of nfsfs/volumes.
//
// version is the NFS version as nsmount mounted it ("3", "4.0", "4.1",
// "4.2"; "4" when the minor version is not known: vers=4 lets the kernel
// choose it), and mine maps nsmount's superblocks in the netns to
// theirs. Only superblocks in mine may be shut down: when the client holds
// another one, nothing is shut down and the error wraps
// ErrForeignSuperblock.
//
// /proc/net/nfsfs/volumes shows a superblock's version (v3, v4), address
// and port, not its NFSv4 minor version, and the kernel keeps one client
// per minor version: a superblock of nsmount's recorded with another minor
// version belongs to another client and is left alone. A foreign one of
// the same server counts as the client's (its minor version is not
// known), and so do two clients that differ only in transport.
//
// Without the knob (Linux before 6.6) nothing is changed and the error
// wraps ErrNoShutdown.
func RetireClient(ctx context.Context, t *nsmount.Target, server netip.AddrPort, version string, mine map[string]string) ([]string, error) {
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
		client := clientVolumes(vols, server, version, mine)
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
// and version (as RetireClient takes it) holds, as far as vols and mine
// tell: same version family, address and port, and, for nsmount's own,
// the same minor version when both are known.
func clientVolumes(vols []Volume, server netip.AddrPort, version string, mine map[string]string) []Volume {
	family, minor := "v3", ""
	if strings.HasPrefix(version, "4") {
		family, minor = "v4", minorVersion(version)
	}
	var out []Volume
	for _, v := range vols {
		if v.Version != family || v.Server != server.Addr().Unmap() || v.Port != server.Port() {
			continue
		}
		if theirs, ok := mine[v.Dev]; ok && family == "v4" && minor != "" {
			if m := minorVersion(theirs); m != "" && m != minor {
				continue
			}
		}
		out = append(out, v)
	}
	return out
}

// minorVersion returns the NFSv4 minor version of a recorded version
// ("4.1": "1"), or "" when it does not say ("4": the kernel chose it).
func minorVersion(version string) string {
	if m, ok := strings.CutPrefix(version, "4."); ok {
		return m
	}
	return ""
}

// retirePlan decides which of a client's superblocks to shut down: those
// not down already, all of them in mine, else none (ErrForeignSuperblock).
func retirePlan(vols []Volume, down map[string]bool, mine map[string]string) ([]string, error) {
	var todo []string
	for _, v := range vols {
		_, ours := mine[v.Dev]
		switch {
		case down[v.Dev]:
		case !ours:
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
