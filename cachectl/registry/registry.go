// Package registry is nsmount's record of the mounts it made: one Entry per
// mount (target namespaces, server, address, route, superblock device, and
// the policy admission it was made under), one file per entry under
// /run/nsmount/entries, each with a checksum and replaced atomically, named
// by its network namespace so that the entries of one namespace are read
// without the others'. It also hands out named locks (Lock) that serialize
// the decisions about one network namespace and server across processes.
//
// The registry only stores: what the kernel says about the entries, and
// what to do about a corrupt file, is its callers' business (a corrupt file
// is reported as ErrCorrupt, and Repair stores a rebuilt state).
package registry

import (
	"strings"
	"time"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
)

// DefaultDir is where the registry lives unless configured otherwise. It is
// on tmpfs on purpose: the kernel state it describes does not survive a
// reboot either.
const DefaultDir = "/run/nsmount"

// Identity is the target of a mount: the namespaces it was made in, and the
// process that named them (PID plus its start time, so a reused PID is never
// mistaken for the original process).
type Identity struct {
	PID      int          `json:"pid,omitempty"`
	PIDStart uint64       `json:"pid_start,omitempty"`
	NetNS    nsmount.NSID `json:"netns"`
	MountNS  nsmount.NSID `json:"mntns"`
	// NetNSPath and MountNSPath are set for targets opened by path.
	NetNSPath   string `json:"netns_path,omitempty"`
	MountNSPath string `json:"mntns_path,omitempty"`
	// Container is the container ID given by the integration that asked
	// (OCI hook, containerd, NRI), if any.
	Container string `json:"container,omitempty"`
}

// Route is the route a mount was made through, as recorded.
type Route struct {
	Iface   string `json:"iface"`
	Gateway string `json:"gateway,omitempty"`
	Source  string `json:"source"`
	Table   int    `json:"table,omitempty"`
}

// Entry is one mount nsmount made, with everything needed to tell later
// whether it still reaches the server it reached then.
type Entry struct {
	// ID is "<mntns inode>:<mount ID>": unique while the mount exists.
	ID     string   `json:"id"`
	Target Identity `json:"target"`
	// Mountpoint is the mount point inside the container.
	Mountpoint string `json:"mountpoint"`
	// MountID is the kernel's mount ID (mountinfo's first field).
	MountID uint64 `json:"mount_id"`
	// Dev is the superblock's device number, "major:minor".
	Dev string `json:"dev"`
	// Source is SERVER:/EXPORT as given; Server the name or literal.
	Source string `json:"source"`
	Server string `json:"server"`
	// Address is the server address chosen; Route how it was reached.
	Address    string `json:"address"`
	Route      Route  `json:"route"`
	ClientAddr string `json:"clientaddr,omitempty"`
	// FSType, Version and Params are what was given to the kernel.
	FSType  string `json:"fstype"`
	Version string `json:"version"`
	Params  string `json:"params"`
	// Request is the request as the user gave it (options before nsmount's
	// additions), so that a remount can redo the decision.
	Request RequestRecord `json:"request"`
	// ClientID is the NFSv4 client identity of the netns when mounted.
	ClientID string `json:"client_id,omitempty"`
	// Owner is who asked: "cli", "hook", "cni", "nri".
	Owner   string    `json:"owner,omitempty"`
	Created time.Time `json:"created"`
	// CreatedTicks is when the mount was made on the clock of process
	// start times (clock ticks since boot, /proc/PID/stat field 22). The
	// kernel reuses namespace inodes and mount IDs: a mount namespace in
	// which every process started after CreatedTicks is a successor that
	// got the same inode, not the one mounted in. Zero: unknown.
	CreatedTicks uint64 `json:"created_ticks,omitempty"`
	// Port is the server's NFS port that reachability checks probe (the
	// port= option, else 2049).
	Port uint16 `json:"port,omitempty"`
	// Admission is the host policy's decision this mount was made under
	// (nil for a mount that no policy decided, such as the CLI's): a later
	// decision about the mount (remount, watch) must stay inside it.
	Admission *admission.Admission `json:"admission,omitempty"`
	// Rebuilt marks an entry recovered from mountinfo after the registry
	// file was found corrupt: only what the kernel shows is known.
	Rebuilt bool `json:"rebuilt,omitempty"`
}

// NFSv4 reports whether e's mount speaks NFSv4 (4.0, 4.1, 4.2): its
// Version says so, or, for an entry rebuilt from mountinfo, its FSType.
func (e *Entry) NFSv4() bool {
	return e.FSType == "nfs4" || e.Version == "4" || strings.HasPrefix(e.Version, "4.")
}

// NeedsAdmission reports whether e was made for an integration that the
// host policy decides (OCI hook, NRI, CSI): such a mount is never redone
// without an admission that allows it.
func (e *Entry) NeedsAdmission() bool {
	switch e.Owner {
	case "", "cli", "rebuilt":
		return false
	}
	return true
}

// RequestRecord is the user's request behind an entry.
type RequestRecord struct {
	Source      string `json:"source"`
	FSType      string `json:"fstype"`
	Options     string `json:"options,omitempty"`
	ResolveFrom string `json:"resolve_from,omitempty"`
}

// State is the registry's content.
type State struct {
	Entries []Entry `json:"entries"`
}

// Find returns the entry with id, or nil.
func (s *State) Find(id string) *Entry {
	for i := range s.Entries {
		if s.Entries[i].ID == id {
			return &s.Entries[i]
		}
	}
	return nil
}

// Put adds e, replacing an entry with the same ID.
func (s *State) Put(e Entry) {
	if old := s.Find(e.ID); old != nil {
		*old = e
		return
	}
	s.Entries = append(s.Entries, e)
}

// InNetNS returns the entries whose mount was made from network namespace
// ns.
func (s *State) InNetNS(ns nsmount.NSID) []Entry {
	var out []Entry
	for _, e := range s.Entries {
		if e.Target.NetNS == ns {
			out = append(out, e)
		}
	}
	return out
}

// InMountNS returns the entries of mounts in mount namespace ns.
func (s *State) InMountNS(ns nsmount.NSID) []Entry {
	var out []Entry
	for _, e := range s.Entries {
		if e.Target.MountNS == ns {
			out = append(out, e)
		}
	}
	return out
}

// Remove removes the entries for which drop returns true and returns them.
func (s *State) Remove(drop func(*Entry) bool) []Entry {
	var gone []Entry
	kept := s.Entries[:0]
	for _, e := range s.Entries {
		if drop(&e) {
			gone = append(gone, e)
			continue
		}
		kept = append(kept, e)
	}
	s.Entries = kept
	return gone
}
