// Package registry is nsmount's record of the mounts it made: one Entry per
// mount (target namespaces, server, address, route, superblock device, and
// the policy admission it was made under), kept in one file under
// /run/nsmount with a checksum, replaced atomically, and read and written
// under a file lock so that concurrent nsmount processes see each other's
// changes. It also hands out named locks (Lock) that serialize the
// decisions about one network namespace and server across processes.
//
// The registry only stores: what the kernel says about the entries, and
// what to do about a corrupt file, is its callers' business (a corrupt file
// is reported as ErrCorrupt, and Repair stores a rebuilt state).
package registry

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
)

// DefaultDir is where the registry lives unless configured otherwise. It is
// on tmpfs on purpose: the kernel state it describes does not survive a
// reboot either.
const DefaultDir = "/run/nsmount"

// File names inside the registry directory.
const (
	stateFile = "registry.json"
	lockFile  = "lock"
)

// formatVersion is the registry file format; a file with another version is
// treated like a corrupt one (set aside, rebuilt), never half-understood.
const formatVersion = 1

// maxStateSize bounds what is read from the registry file.
const maxStateSize = 64 << 20

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

// fileFormat is the registry file: the state and a checksum of its exact
// bytes, so that a torn or edited file is detected instead of trusted.
type fileFormat struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	State    json.RawMessage `json:"state"`
}

// Registry is nsmount's record of the mounts it made, under one directory.
// Every access takes a file lock (flock) on DIR/lock, so concurrent nsmount
// processes see each other's changes; writes replace the file atomically
// (write, fsync, rename), so a crash leaves the old or the new state, never a
// mix.
type Registry struct {
	dir string
}

// ErrCorrupt reports a registry file that cannot be trusted: it does not
// parse, has another format version, or its checksum does not match. The
// file is left as it is; Repair sets it aside and stores a rebuilt state.
var ErrCorrupt = errors.New("registry is corrupt")

// Open opens the registry in dir, creating the directory (mode 0700).
func Open(dir string) (*Registry, error) {
	if dir == "" {
		dir = DefaultDir
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create registry dir: %w", err)
	}
	return &Registry{dir: dir}, nil
}

// Dir returns the registry directory.
func (r *Registry) Dir() string { return r.dir }

// View calls fn with the current state under a shared lock. Changes fn
// makes to the state are not stored. A corrupt file is an error wrapping
// ErrCorrupt.
func (r *Registry) View(fn func(*State) error) error {
	return r.locked(unix.LOCK_SH, func() error {
		s, err := r.load()
		if err != nil {
			return err
		}
		return fn(s)
	})
}

// Update calls fn with the current state under an exclusive lock and
// writes the state back if fn returns nil. A corrupt file is an error
// wrapping ErrCorrupt (fn is not called).
func (r *Registry) Update(fn func(*State) error) error {
	return r.locked(unix.LOCK_EX, func() error {
		s, err := r.load()
		if err != nil {
			return err
		}
		if err := fn(s); err != nil {
			return err
		}
		return r.store(s)
	})
}

// Repaired says what Repair did.
type Repaired struct {
	// Aside is the name the corrupt file was set aside under, in Dir.
	Aside string `json:"aside"`
	// Why is what was wrong with it.
	Why string `json:"why"`
	// Entries is how many entries the stored state has.
	Entries int `json:"entries"`
}

// Repair replaces a corrupt registry file with s: under the exclusive
// lock, if the file is (still) corrupt, it is renamed aside
// (registry.json.corrupt-TIME) and s is stored. It returns nil, nil when
// the file is not corrupt (any more: another process repaired it first).
func (r *Registry) Repair(s *State) (*Repaired, error) {
	var rep *Repaired
	err := r.locked(unix.LOCK_EX, func() error {
		_, err := r.load()
		var cerr *CorruptError
		if !errors.As(err, &cerr) {
			return err
		}
		aside := fmt.Sprintf("%s.corrupt-%d", cerr.Path, time.Now().UnixNano())
		if err := os.Rename(cerr.Path, aside); err != nil {
			return fmt.Errorf("registry %s is corrupt (%v) and cannot be set aside: %w", cerr.Path, cerr.Why, err)
		}
		rep = &Repaired{Aside: filepath.Base(aside), Why: cerr.Why.Error(), Entries: len(s.Entries)}
		return r.store(s)
	})
	return rep, err
}

// CorruptError is the error of a corrupt registry file.
type CorruptError struct {
	// Path is the file; Why what is wrong with it.
	Path string
	Why  error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("registry %s is corrupt: %v", e.Path, e.Why)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

func (r *Registry) locked(how int, body func() error) error {
	l, err := lockFileAt(filepath.Join(r.dir, lockFile), how, lockTimeout)
	if err != nil {
		return fmt.Errorf("lock registry: %w", err)
	}
	defer l.Close() // releases the lock
	return body()
}

// lockTimeout bounds the wait for a lock: a stuck nsmount process must not
// block every other one forever.
const lockTimeout = 30 * time.Second

// load reads the state. A missing file is an empty state; a corrupt one
// a *CorruptError.
func (r *Registry) load() (*State, error) {
	path := filepath.Join(r.dir, stateFile)
	data, err := readLimited(path, maxStateSize+1)
	if errors.Is(err, os.ErrNotExist) {
		return &State{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	if len(data) > maxStateSize {
		return nil, &CorruptError{Path: path, Why: fmt.Errorf("larger than %d bytes", maxStateSize)}
	}
	s, err := decodeState(data)
	if err != nil {
		return nil, &CorruptError{Path: path, Why: err}
	}
	return s, nil
}

func decodeState(data []byte) (*State, error) {
	var ff fileFormat
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ff); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	// Only white space may follow. (dec.More is false before a stray '}'
	// or ']': ask for the next token instead.)
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data")
	}
	if ff.Version != formatVersion {
		return nil, fmt.Errorf("format version %d, want %d", ff.Version, formatVersion)
	}
	// The checksum covers the compact form: indentation is not content.
	var compact bytes.Buffer
	if err := json.Compact(&compact, ff.State); err != nil {
		return nil, fmt.Errorf("parse state: %w", err)
	}
	if ff.Checksum != checksum(compact.Bytes()) {
		return nil, errors.New("checksum mismatch")
	}
	var s State
	if err := json.Unmarshal(ff.State, &s); err != nil {
		return nil, fmt.Errorf("parse state: %w", err)
	}
	return &s, nil
}

func checksum(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// store writes s atomically: a temp file in the same directory, fsync,
// rename over the old file, fsync of the directory.
func (r *Registry) store(s *State) error {
	sort.Slice(s.Entries, func(i, j int) bool { return s.Entries[i].ID < s.Entries[j].ID })
	if s.Entries == nil {
		s.Entries = []Entry{}
	}
	raw, err := json.Marshal(s)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(fileFormat{Version: formatVersion, Checksum: checksum(raw), State: raw}, "", " ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(r.dir, stateFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write registry: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync registry: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(r.dir, stateFile)); err != nil {
		return fmt.Errorf("replace registry: %w", err)
	}
	if d, err := os.Open(r.dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}
