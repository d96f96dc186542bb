package cachectl

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
	"slices"
	"sort"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
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

// NSID identifies a namespace: the device and inode of its nsfs file.
type NSID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// String formats the namespace as the kernel names it ("net:[4026532281]"
// without the type).
func (n NSID) String() string { return strconv.FormatUint(n.Ino, 10) }

// Identity is the target of a mount: the namespaces it was made in, and the
// process that named them (PID plus its start time, so a reused PID is never
// mistaken for the original process).
type Identity struct {
	PID      int    `json:"pid,omitempty"`
	PIDStart uint64 `json:"pid_start,omitempty"`
	NetNS    NSID   `json:"netns"`
	MountNS  NSID   `json:"mntns"`
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
	// Rebuilt marks an entry recovered from mountinfo after the registry
	// file was found corrupt: only what the kernel shows is known.
	Rebuilt bool `json:"rebuilt,omitempty"`
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
	// Rebuild recovers a state when the file is found corrupt; nil means
	// starting empty. Open sets it to RebuildFromMountinfo.
	rebuild func() (*State, error)
	// Reports receives one line per notable event (corrupt file set aside).
	report func(string)
}

// Option configures a Registry.
type Option func(*Registry)

// WithRebuild sets how a corrupt registry is recovered.
func WithRebuild(fn func() (*State, error)) Option { return func(r *Registry) { r.rebuild = fn } }

// WithReporter sets where notable events are reported (one line each).
func WithReporter(fn func(string)) Option { return func(r *Registry) { r.report = fn } }

// Open opens the registry in dir, creating the directory (mode 0700).
func Open(dir string, opts ...Option) (*Registry, error) {
	if dir == "" {
		dir = DefaultDir
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create registry dir: %w", err)
	}
	r := &Registry{dir: dir, rebuild: RebuildFromMountinfo, report: func(string) {}}
	for _, o := range opts {
		o(r)
	}
	return r, nil
}

// Dir returns the registry directory.
func (r *Registry) Dir() string { return r.dir }

// View calls fn with the current state under a shared lock. Changes fn
// makes to the state are not stored.
func (r *Registry) View(fn func(*State) error) error {
	err := r.locked(unix.LOCK_SH, func() error {
		s, _, err := r.load(false)
		if err != nil {
			return err
		}
		return fn(s)
	})
	if errors.Is(err, errNeedExclusive) {
		// The file is corrupt: set it aside and rebuild, which needs the
		// exclusive lock; then view a copy of what was rebuilt (an Entry
		// holds no references), so that only the rebuilt state is stored.
		err := r.Update(func(s *State) error {
			if err := fn(&State{Entries: slices.Clone(s.Entries)}); err != nil {
				return err
			}
			return errViewed
		})
		if err == errViewed {
			return nil
		}
		return err
	}
	return err
}

var (
	errNeedExclusive = errors.New("registry needs repair")
	// errViewed makes Update skip the store after a View's repair.
	errViewed = errors.New("viewed")
)

// Update calls fn with the current state under an exclusive lock and
// writes the state back if fn returns nil. A state rebuilt from a corrupt
// file is written back whatever fn returns.
func (r *Registry) Update(fn func(*State) error) error {
	return r.locked(unix.LOCK_EX, func() error {
		s, rebuilt, err := r.load(true)
		if err != nil {
			return err
		}
		if err := fn(s); err != nil {
			if rebuilt {
				if serr := r.store(s); serr != nil {
					if err == errViewed {
						return serr
					}
					return fmt.Errorf("%w; and storing the rebuilt registry: %w", err, serr)
				}
			}
			return err
		}
		return r.store(s)
	})
}

func (r *Registry) locked(how int, body func() error) error {
	f, err := os.OpenFile(filepath.Join(r.dir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("open registry lock: %w", err)
	}
	defer f.Close() // releases the lock
	if err := flock(f, how); err != nil {
		return err
	}
	return body()
}

// lockTimeout bounds the wait for the registry lock: a stuck nsmount
// process must not block every other one forever.
const lockTimeout = 30 * time.Second

func flock(f *os.File, how int) error {
	deadline := time.Now().Add(lockTimeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("lock registry: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lock registry %s: held by another nsmount for over %s", f.Name(), lockTimeout)
		}
		time.Sleep(delay)
	}
}

// load reads the state. A missing file is an empty state. A file that does
// not parse, has another format version, or whose checksum does not match is
// rebuilt and then renamed aside (registry.json.corrupt-TIME); if the rebuild
// fails the file is left in place.
func (r *Registry) load(exclusive bool) (s *State, rebuilt bool, err error) {
	path := filepath.Join(r.dir, stateFile)
	data, err := readLimited(path, maxStateSize+1)
	if errors.Is(err, os.ErrNotExist) {
		return &State{}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read registry: %w", err)
	}
	s, perr := decodeState(data)
	if len(data) > maxStateSize {
		perr = fmt.Errorf("larger than %d bytes", maxStateSize)
	}
	if perr == nil {
		return s, false, nil
	}
	if !exclusive {
		return nil, false, errNeedExclusive
	}
	// Rebuild before setting the file aside: if the rebuild fails, the
	// file stays and the next access tries again (instead of finding no
	// file and starting empty).
	s = &State{}
	if r.rebuild != nil {
		if s, err = r.rebuild(); err != nil {
			return nil, false, fmt.Errorf("registry %s is corrupt (%v); rebuild from mountinfo: %w", path, perr, err)
		}
	}
	aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().UnixNano())
	if err := os.Rename(path, aside); err != nil {
		return nil, false, fmt.Errorf("registry %s is corrupt (%v) and cannot be set aside: %w", path, perr, err)
	}
	r.report(fmt.Sprintf("registry %s was corrupt (%v): set aside as %s, rebuilt %d entries from mountinfo", path, perr, filepath.Base(aside), len(s.Entries)))
	return s, true, nil
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
