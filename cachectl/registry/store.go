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
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
)

// Names inside the registry directory.
const (
	// entriesDir holds one file per entry: n<netns inode>_<escaped ID>.json.
	entriesDir = "entries"
	// legacyFile is format 1, all entries in one file: migrated on Open.
	legacyFile = "registry.json"
	// lockFile is taken shared by every access and exclusively by a
	// migration or a repair.
	lockFile = "lock"
)

// Format versions: entryFormat of an entry file, legacyFormat of the one
// file of earlier releases. A file of another version is treated like a
// corrupt one (set aside by Repair), never half-understood.
const (
	entryFormat  = 2
	legacyFormat = 1
)

// Size bounds of what is read back.
const (
	maxEntrySize = 1 << 20
	maxStateSize = 64 << 20
)

// entryFile is the content of an entry file: the entry and a checksum of
// its exact bytes, so that a torn or edited file is detected instead of
// trusted.
type entryFile struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	Entry    json.RawMessage `json:"entry"`
}

// Registry is nsmount's record of the mounts it made, under one directory.
// An entry is one file, written to a temporary name and renamed (a crash
// leaves the old or the new entry, never a mix); a change touches only the
// entries it changes, so concurrent nsmount processes never lose each
// other's entries and need no lock to add or remove one. A file lock
// (DIR/lock, shared by every access) only keeps accesses out of a repair
// or a migration, which take it exclusively.
type Registry struct {
	dir string
}

// ErrCorrupt reports a registry file that cannot be trusted: it does not
// parse, has another format version, or its checksum does not match. The
// file is left as it is; Repair sets it aside and stores a rebuilt state.
var ErrCorrupt = errors.New("registry is corrupt")

// Open opens the registry in dir, creating it (mode 0700). A registry of
// an earlier release (one registry.json) is migrated to entry files, and
// the old file renamed registry.json.migrated; a corrupt one is left for
// Repair.
func Open(dir string) (*Registry, error) {
	if dir == "" {
		dir = DefaultDir
	}
	if err := os.MkdirAll(filepath.Join(dir, entriesDir), 0o700); err != nil {
		return nil, fmt.Errorf("create registry dir: %w", err)
	}
	r := &Registry{dir: dir}
	if _, err := os.Lstat(filepath.Join(dir, legacyFile)); err == nil {
		if err := r.migrate(); err != nil && !errors.Is(err, ErrCorrupt) {
			return nil, err
		}
	}
	return r, nil
}

// Dir returns the registry directory.
func (r *Registry) Dir() string { return r.dir }

// View calls fn with the current state. Changes fn makes to the state are
// not stored. A corrupt file is an error wrapping ErrCorrupt.
func (r *Registry) View(fn func(*State) error) error {
	return r.locked(unix.LOCK_SH, func() error {
		s, err := r.load("")
		if err != nil {
			return err
		}
		return fn(s)
	})
}

// ViewNetNS calls fn with the entries of network namespace ns only, read
// without the others' files. Changes are not stored.
func (r *Registry) ViewNetNS(ns nsmount.NSID, fn func(*State) error) error {
	return r.locked(unix.LOCK_SH, func() error {
		s, err := r.load(netnsPrefix(ns))
		if err != nil {
			return err
		}
		return fn(s)
	})
}

// Stamp summarizes the registry's entries for a reader that wants to know
// whether they changed without reading them: the entries directory's
// change time and size (every Put and Remove renames or removes a file in
// it). File timestamps come from a coarse clock (a jiffy), so a change in
// the same tick as the last one may leave the same Stamp: Fresh says when
// a Stamp cannot be trusted yet.
type Stamp struct {
	Changed time.Time
	Size    int64
}

// Stamp returns the registry's Stamp now: one stat, no lock.
func (r *Registry) Stamp() (Stamp, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(r.dir, entriesDir), &st); err != nil {
		return Stamp{}, fmt.Errorf("stat registry: %w", &os.PathError{Op: "stat", Path: filepath.Join(r.dir, entriesDir), Err: err})
	}
	return Stamp{Changed: time.Unix(st.Ctim.Unix()), Size: st.Size}, nil
}

// stampTick bounds the coarse clock's tick (4 ms at HZ=250, 10 ms at
// HZ=100), generously.
const stampTick = 100 * time.Millisecond

// Fresh reports whether another change could still hide behind s: s was
// taken less than a clock tick after the change it shows, at taken.
func (s Stamp) Fresh(taken time.Time) bool { return taken.Sub(s.Changed) < stampTick }

// Update calls fn with the current state and stores what fn changed:
// entries added or changed are written, entries removed are deleted; the
// others are not touched, so a concurrent Update of other entries is never
// undone. Nothing is stored when fn returns an error. A corrupt file is an
// error wrapping ErrCorrupt (fn is not called).
func (r *Registry) Update(fn func(*State) error) error {
	return r.locked(unix.LOCK_SH, func() error {
		s, err := r.load("")
		if err != nil {
			return err
		}
		before := make(map[string]Entry, len(s.Entries))
		for _, e := range s.Entries {
			before[e.ID] = e
		}
		if err := fn(s); err != nil {
			return err
		}
		kept := make(map[string]bool, len(s.Entries))
		for _, e := range s.Entries {
			kept[e.ID] = true
			old, had := before[e.ID]
			if had && reflect.DeepEqual(old, e) {
				continue
			}
			if had && old.Target.NetNS != e.Target.NetNS {
				// Another file name: the old one goes.
				if err := r.remove(&old); err != nil {
					return err
				}
			}
			if err := r.write(&e); err != nil {
				return err
			}
		}
		for id, e := range before {
			if !kept[id] {
				if err := r.remove(&e); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// Put stores e, replacing the entry with its ID, without reading the
// others: what a mount records.
func (r *Registry) Put(e Entry) error {
	return r.locked(unix.LOCK_SH, func() error {
		if _, err := r.removeID(e.ID, fileName(&e)); err != nil {
			return err
		}
		return r.write(&e)
	})
}

// Remove removes the entries with the given IDs, if they are there,
// without reading the others. It returns the IDs it removed: of two
// processes removing one entry at once, only one has it in its answer.
func (r *Registry) Remove(ids ...string) (removed []string, err error) {
	if len(ids) == 0 {
		return nil, nil
	}
	err = r.locked(unix.LOCK_SH, func() error {
		for _, id := range ids {
			n, err := r.removeID(id, "")
			if err != nil {
				return err
			}
			if n > 0 {
				removed = append(removed, id)
			}
		}
		return nil
	})
	return removed, err
}

// removeID removes the files of the entry with id, but keep (its file in
// the network namespace it is being stored for), and returns how many it
// removed.
func (r *Registry) removeID(id, keep string) (int, error) {
	probe := Entry{ID: id}
	suffix := strings.TrimPrefix(fileName(&probe), netnsPrefix(nsmount.NSID{}))
	names, err := r.names("")
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, n := range names {
		// n<inode>_<escaped id>.json: the escaped ID starts after the
		// first '_', and escapes never make a '_' of their own digits.
		if _, rest, ok := strings.Cut(n, "_"); ok && rest == suffix && n != keep {
			err := os.Remove(filepath.Join(r.dir, entriesDir, n))
			switch {
			case err == nil:
				removed++
			case !errors.Is(err, os.ErrNotExist):
				return removed, fmt.Errorf("remove registry entry: %w", err)
			}
		}
	}
	return removed, nil
}

// Repaired says what Repair did.
type Repaired struct {
	// Aside are the names the corrupt files were set aside under, in Dir
	// (or its entries directory).
	Aside []string `json:"aside"`
	// Why is what was wrong with the first of them.
	Why string `json:"why"`
	// Entries is how many entries of the given state were stored.
	Entries int `json:"entries"`
}

// Repair sets every corrupt registry file aside (NAME.corrupt-TIME) and
// stores the entries of s that have no readable file: under the exclusive
// lock, so that nothing reads a half-repaired registry. It returns nil, nil
// when no file is corrupt (any more: another process repaired it first).
func (r *Registry) Repair(s *State) (*Repaired, error) {
	var rep *Repaired
	err := r.locked(unix.LOCK_EX, func() error {
		stamp := strconv.FormatInt(time.Now().UnixNano(), 10)
		setAside := func(path string, why error) error {
			aside := path + ".corrupt-" + stamp
			if err := os.Rename(path, aside); err != nil {
				return fmt.Errorf("registry file %s is corrupt (%v) and cannot be set aside: %w", path, why, err)
			}
			if rep == nil {
				rep = &Repaired{Why: why.Error()}
			}
			rep.Aside = append(rep.Aside, filepath.Base(aside))
			return nil
		}
		if _, err := r.readLegacy(); err != nil {
			var cerr *CorruptError
			if !errors.As(err, &cerr) {
				return err
			}
			if err := setAside(cerr.Path, cerr.Why); err != nil {
				return err
			}
		}
		names, err := r.names("")
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, n := range names {
			e, err := r.read(n)
			var cerr *CorruptError
			switch {
			case errors.As(err, &cerr):
				if err := setAside(cerr.Path, cerr.Why); err != nil {
					return err
				}
			case errors.Is(err, os.ErrNotExist):
			case err != nil:
				return err
			default:
				have[e.ID] = true
			}
		}
		if rep == nil {
			return nil
		}
		for _, e := range s.Entries {
			if !have[e.ID] {
				if err := r.write(&e); err != nil {
					return err
				}
				rep.Entries++
			}
		}
		return nil
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
	return fmt.Sprintf("registry file %s is corrupt: %v", e.Path, e.Why)
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

// netnsPrefix is the file name prefix of the entries of ns.
func netnsPrefix(ns nsmount.NSID) string { return "n" + strconv.FormatUint(ns.Ino, 10) + "_" }

// fileName is e's file name: its network namespace and its ID, with every
// byte of the ID other than letters, digits, '-' and '.' escaped as _XX.
func fileName(e *Entry) string {
	var b strings.Builder
	b.WriteString(netnsPrefix(e.Target.NetNS))
	for i := 0; i < len(e.ID); i++ {
		c := e.ID[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' && i > 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	b.WriteString(".json")
	return b.String()
}

// names lists the entry files whose name starts with prefix.
func (r *Registry) names(prefix string) ([]string, error) {
	d, err := os.Open(filepath.Join(r.dir, entriesDir))
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	defer d.Close()
	all, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	out := all[:0]
	for _, n := range all {
		if strings.HasPrefix(n, prefix) && strings.HasSuffix(n, ".json") && !strings.HasPrefix(n, ".") {
			out = append(out, n)
		}
	}
	return out, nil
}

// load reads the entries whose file name starts with prefix (all for "").
// A corrupt file is a *CorruptError; a file removed meanwhile is skipped.
func (r *Registry) load(prefix string) (*State, error) {
	// A format 1 file still there is one that Open could not migrate:
	// corrupt, and its entries are not in the entry files.
	if _, err := r.readLegacy(); err != nil {
		return nil, err
	}
	names, err := r.names(prefix)
	if err != nil {
		return nil, err
	}
	s := &State{Entries: make([]Entry, 0, len(names))}
	for _, n := range names {
		e, err := r.read(n)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		s.Entries = append(s.Entries, *e)
	}
	sort.Slice(s.Entries, func(i, j int) bool { return s.Entries[i].ID < s.Entries[j].ID })
	return s, nil
}

// read reads and checks the entry file name.
func (r *Registry) read(name string) (*Entry, error) {
	path := filepath.Join(r.dir, entriesDir, name)
	data, err := readLimited(path, maxEntrySize+1)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("read registry: %w", err)
	}
	if len(data) > maxEntrySize {
		return nil, &CorruptError{Path: path, Why: fmt.Errorf("larger than %d bytes", maxEntrySize)}
	}
	e, err := decodeEntry(data)
	if err != nil {
		return nil, &CorruptError{Path: path, Why: err}
	}
	if fileName(e) != name {
		return nil, &CorruptError{Path: path, Why: fmt.Errorf("holds entry %q of netns %s, not what its name says", e.ID, e.Target.NetNS)}
	}
	return e, nil
}

// decodeEntry decodes and checks an entry file.
func decodeEntry(data []byte) (*Entry, error) {
	var ef entryFile
	raw, err := decodeChecked(data, &ef, func() (int, int, string, []byte) {
		return ef.Version, entryFormat, ef.Checksum, ef.Entry
	})
	if err != nil {
		return nil, err
	}
	var e Entry
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("parse entry: %w", err)
	}
	if e.ID == "" {
		return nil, errors.New("entry without an ID")
	}
	return &e, nil
}

// decodeChecked decodes data strictly into ff (one object, no unknown
// field, nothing after it), then checks the version and the checksum that
// fields returns; it returns the checked payload.
func decodeChecked(data []byte, ff any, fields func() (version, want int, sum string, payload []byte)) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(ff); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	// Only white space may follow. (dec.More is false before a stray '}'
	// or ']': ask for the next token instead.)
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data")
	}
	version, want, sum, payload := fields()
	if version != want {
		return nil, fmt.Errorf("format version %d, want %d", version, want)
	}
	// The checksum covers the compact form: indentation is not content.
	var compact bytes.Buffer
	if err := json.Compact(&compact, payload); err != nil {
		return nil, fmt.Errorf("parse payload: %w", err)
	}
	if sum != checksum(compact.Bytes()) {
		return nil, errors.New("checksum mismatch")
	}
	return payload, nil
}

func checksum(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// write stores e in its file: a temporary file in the same directory, then
// rename over the old one. (The registry is on tmpfs, like the kernel state
// it describes: no fsync.)
func (r *Registry) write(e *Entry) error {
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(entryFile{Version: entryFormat, Checksum: checksum(raw), Entry: raw}, "", " ")
	if err != nil {
		return err
	}
	dir := filepath.Join(r.dir, entriesDir)
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("write registry entry: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(append(data, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write registry entry: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, fileName(e))); err != nil {
		return fmt.Errorf("write registry entry: %w", err)
	}
	return nil
}

// remove deletes e's file; a missing file is no error.
func (r *Registry) remove(e *Entry) error {
	err := os.Remove(filepath.Join(r.dir, entriesDir, fileName(e)))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove registry entry: %w", err)
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
