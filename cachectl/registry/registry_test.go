package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsmount/nsmount/nsmount"
)

// testEntry is a full entry as Manager.Mount records it.
func testEntry(id string) Entry {
	return Entry{
		ID: id,
		Target: Identity{
			PID: 4242, PIDStart: 324581,
			NetNS: nsmount.NSID{Dev: 4, Ino: 4026532281}, MountNS: nsmount.NSID{Dev: 4, Ino: 4026532280},
			Container: "ctr-" + id,
		},
		Mountpoint: "/data", MountID: 530, Dev: "0:53",
		Source: "198.51.100.1:/export", Server: "198.51.100.1", Address: "198.51.100.1",
		Route:      Route{Iface: "eth0", Source: "198.51.100.2"},
		ClientAddr: "198.51.100.2",
		FSType:     "nfs", Version: "4.2",
		Params:   "vers=4.2,addr=198.51.100.1,clientaddr=198.51.100.2",
		Request:  RequestRecord{Source: "198.51.100.1:/export", FSType: "nfs", Options: "vers=4.2"},
		ClientID: "nsmount-0b6c", Owner: "cli",
		Created: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
	}
}

// openTest opens a registry in a fresh dir.
func openTest(t testing.TB) *Registry {
	t.Helper()
	r, err := Open(filepath.Join(t.TempDir(), "nsmDreg"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func viewState(t testing.TB, r *Registry) *State {
	t.Helper()
	var got *State
	if err := r.View(func(s *State) error { got = s; return nil }); err != nil {
		t.Fatalf("View: %v", err)
	}
	return got
}

func ids(s *State) []string {
	var out []string
	for _, e := range s.Entries {
		out = append(out, e.ID)
	}
	return out
}

// dirNames lists the registry dir.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestRegistryEmpty(t *testing.T) {
	r := openTest(t)
	s := viewState(t, r)
	if len(s.Entries) != 0 {
		t.Errorf("fresh registry has %d entries", len(s.Entries))
	}
	// An Update of nothing writes nothing.
	if err := r.Update(func(*State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, filepath.Join(r.Dir(), entriesDir)); len(got) != 0 {
		t.Errorf("entries dir holds %v", got)
	}
}

func TestRegistryRoundTrip(t *testing.T) {
	r := openTest(t)
	e1, e2 := testEntry("4026532280:530"), testEntry("4026532280:531")
	e2.Route.Gateway, e2.Rebuilt, e2.Target.NetNSPath = "192.0.2.1", true, "/run/netns/nsmD-c1"
	e2.Mountpoint = "/weird \"path\" <&> ünïcode\t"
	if err := r.Update(func(s *State) error { s.Put(e2); s.Put(e1); return nil }); err != nil {
		t.Fatal(err)
	}
	got := viewState(t, r)
	// Read back sorted by ID.
	if want := []Entry{e1, e2}; !reflect.DeepEqual(got.Entries, want) {
		t.Errorf("View =\n%+v\nwant\n%+v", got.Entries, want)
	}
	// Put replaces by ID; Remove returns what it removed.
	e1b := e1
	e1b.Mountpoint = "/other"
	var removed []Entry
	err := r.Update(func(s *State) error {
		s.Put(e1b)
		removed = s.Remove(func(e *Entry) bool { return e.ID == e2.ID })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].ID != e2.ID {
		t.Errorf("Remove returned %v", removed)
	}
	if got := viewState(t, r); !reflect.DeepEqual(got.Entries, []Entry{e1b}) {
		t.Errorf("after Put and Remove: %+v", got.Entries)
	}
	if s := viewState(t, r); s.Find("nope") != nil || s.Find(e1.ID).Mountpoint != "/other" {
		t.Errorf("Find: %+v", s.Entries)
	}
	// An entry whose network namespace changes keeps one file.
	e1c := e1b
	e1c.Target.NetNS.Ino++
	if err := r.Update(func(s *State) error { s.Put(e1c); return nil }); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, filepath.Join(r.Dir(), entriesDir)); len(got) != 1 || got[0] != fileName(&e1c) {
		t.Errorf("entries dir holds %v, want only %s", got, fileName(&e1c))
	}
}

// TestRegistryViewNetNS: the entries of one network namespace are read
// without the others' files (a corrupt file of another netns does not
// matter to them).
func TestRegistryViewNetNS(t *testing.T) {
	r := openTest(t)
	a, b := testEntry("a:1"), testEntry("b:2")
	b.Target.NetNS.Ino = 4026539999
	if err := r.Update(func(s *State) error { s.Put(a); s.Put(b); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.Dir(), entriesDir, fileName(&b)), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := r.ViewNetNS(a.Target.NetNS, func(s *State) error { got = ids(s); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"a:1"}) {
		t.Errorf("ViewNetNS = %v, want [a:1]", got)
	}
	if err := r.View(func(*State) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Errorf("View of all = %v, want ErrCorrupt", err)
	}
}

// TestFileName: entry IDs become file names that are safe, distinct and
// carry the netns.
func TestFileName(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"4026532280:530", "4026532280_530", "a", "A", "../x", ".hidden", "x/y", "ü", "", "a b"} {
		e := testEntry(id)
		n := fileName(&e)
		if strings.ContainsAny(n, "/ ") || strings.HasPrefix(n, ".") || !strings.HasPrefix(n, "n4026532281_") || !strings.HasSuffix(n, ".json") {
			t.Errorf("fileName(%q) = %q", id, n)
		}
		if other, dup := seen[n]; dup {
			t.Errorf("IDs %q and %q share the file %s", id, other, n)
		}
		seen[n] = id
	}
}

func TestRegistryUpdateError(t *testing.T) {
	r := openTest(t)
	if err := r.Update(func(s *State) error { s.Put(testEntry("a")); return nil }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := r.Update(func(s *State) error { s.Put(testEntry("b")); return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want fn's error", err)
	}
	if got := ids(viewState(t, r)); !slices.Equal(got, []string{"a"}) {
		t.Errorf("a failed Update was stored: %v", got)
	}
	// View never stores.
	if err := r.View(func(s *State) error { s.Put(testEntry("c")); return nil }); err != nil {
		t.Fatal(err)
	}
	if got := ids(viewState(t, r)); !slices.Equal(got, []string{"a"}) {
		t.Errorf("View stored its changes: %v", got)
	}
	if err := r.View(func(*State) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("View = %v, want fn's error", err)
	}
}

func TestRegistryPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nsmD", "run", "nsmount")
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	e := testEntry("a")
	if err := r.Update(func(s *State) error { s.Put(e); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path string
		want os.FileMode
	}{
		{dir, os.ModeDir | 0o700},
		{filepath.Join(dir, entriesDir), os.ModeDir | 0o700},
		{filepath.Join(dir, entriesDir, fileName(&e)), 0o600},
		{filepath.Join(dir, lockFile), 0o600},
	} {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tt.want {
			t.Errorf("%s: mode %v, want %v", filepath.Base(tt.path), fi.Mode(), tt.want)
		}
	}
}

func TestRegistryNoTempFilesLeft(t *testing.T) {
	r := openTest(t)
	for i := range 20 {
		err := r.Update(func(s *State) error {
			s.Put(testEntry(strconv.Itoa(i)))
			if i%3 == 0 {
				return errors.New("refused") // a failed Update writes nothing
			}
			return nil
		})
		if err != nil && i%3 != 0 {
			t.Fatal(err)
		}
	}
	for _, n := range dirNames(t, filepath.Join(r.Dir(), entriesDir)) {
		if !strings.HasSuffix(n, ".json") || strings.HasPrefix(n, ".") {
			t.Errorf("entries dir holds %s", n)
		}
	}
	if got := len(viewState(t, r).Entries); got != 13 {
		t.Errorf("%d entries, want 13", got)
	}
}

// TestRegistryConcurrentGoroutines: every Update opens its own lock file
// description, so goroutines of one process exclude each other too.
func TestRegistryConcurrentGoroutines(t *testing.T) {
	r := openTest(t)
	const workers, each = 8, 50
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				errs <- r.Update(func(s *State) error {
					s.Put(testEntry(fmt.Sprintf("g%d-%03d", w, i)))
					return nil
				})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d Updates from %d goroutines in %v", workers*each, workers, time.Since(start))
	checkAllEntries(t, r, "g", workers, each)
}

func checkAllEntries(t *testing.T, r *Registry, prefix string, workers, each int) {
	t.Helper()
	s := viewState(t, r)
	if len(s.Entries) != workers*each {
		t.Errorf("%d entries, want %d: updates were lost", len(s.Entries), workers*each)
	}
	for w := range workers {
		for i := range each {
			if id := fmt.Sprintf("%s%d-%03d", prefix, w, i); s.Find(id) == nil {
				t.Errorf("entry %s lost", id)
			}
		}
	}
	if got := dirNames(t, filepath.Join(r.Dir(), entriesDir)); len(got) != workers*each {
		t.Errorf("entries dir holds %d files, want %d", len(got), workers*each)
	}
}

// Environment of the re-executed test binary (the pattern of Go's
// os/exec tests): the registry dir, the worker number and the count.
const (
	envHelperDir    = "NSMD_REGISTRY_HELPER_DIR"
	envHelperWorker = "NSMD_REGISTRY_HELPER_WORKER"
	envHelperCount  = "NSMD_REGISTRY_HELPER_COUNT"
)

// TestRegistryHelperProcess is not a test: it is the child process of
// TestRegistryConcurrentProcesses.
func TestRegistryHelperProcess(t *testing.T) {
	dir := os.Getenv(envHelperDir)
	if dir == "" {
		return
	}
	w, _ := strconv.Atoi(os.Getenv(envHelperWorker))
	n, _ := strconv.Atoi(os.Getenv(envHelperCount))
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		err := r.Update(func(s *State) error {
			s.Put(testEntry(fmt.Sprintf("p%d-%03d", w, i)))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestRegistryConcurrentProcesses proves the flock between processes:
// separate processes append to one registry and nothing is lost.
func TestRegistryConcurrentProcesses(t *testing.T) {
	r := openTest(t)
	const procs, each = 8, 50
	start := time.Now()
	cmds := make([]*exec.Cmd, procs)
	outs := make([]*bytes.Buffer, procs)
	for w := range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRegistryHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), envHelperDir+"="+r.Dir(), envHelperWorker+"="+strconv.Itoa(w), envHelperCount+"="+strconv.Itoa(each))
		outs[w] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = outs[w], outs[w]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[w] = cmd
	}
	for w, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper %d: %v\n%s", w, err, outs[w])
		}
	}
	t.Logf("%d Updates from %d processes in %v", procs*each, procs, time.Since(start))
	checkAllEntries(t, r, "p", procs, each)
}

// TestRegistryRepairExcludes: a repair waits for an access in progress,
// and an access waits for a repair.
func TestRegistryRepairExcludes(t *testing.T) {
	r := openTest(t)
	inside := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- r.View(func(*State) error {
			close(inside)
			<-release
			return nil
		})
	}()
	<-inside
	repaired := make(chan error)
	go func() {
		_, err := r.Repair(&State{})
		repaired <- err
	}()
	select {
	case err := <-repaired:
		t.Fatalf("Repair finished while a View was in progress: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-repaired; err != nil {
		t.Fatal(err)
	}
}

// validEntryFile returns the bytes of a valid entry file of e.
func validEntryFile(t *testing.T, e Entry) []byte {
	t.Helper()
	r := openTest(t)
	if err := r.Update(func(s *State) error { s.Put(e); return nil }); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(r.Dir(), entriesDir, fileName(&e)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withEntry returns an entry file with raw as entry, version and a
// correct checksum.
func withEntry(version int, raw string) []byte {
	return fmt.Appendf(nil, `{"version":%d,"checksum":%q,"entry":%s}`, version, checksum([]byte(raw)), raw)
}

func TestRegistryCorrupt(t *testing.T) {
	e := testEntry("4026532280:530")
	valid := validEntryFile(t, e)
	half := len(valid) / 2
	other := testEntry("other:1")
	otherRaw, _ := json.Marshal(other)
	tests := []struct {
		name string
		// data is the file content; size, if set, makes it a sparse file of
		// that size starting with data.
		data []byte
		size int64
		// why is the reason the error gives.
		why string
	}{
		{name: "garbage", data: []byte("\x00\xffnot json at all"), why: "parse: invalid character"},
		{name: "empty file", data: nil, why: "parse: EOF"},
		{name: "torn write", data: valid[:half], why: "parse: unexpected EOF"},
		{name: "wrong checksum", data: bytes.Replace(valid, []byte(`"checksum": "sha256:`), []byte(`"checksum": "sha256:00`), 1), why: "checksum mismatch"},
		{name: "no checksum", data: []byte(`{"version":2,"entry":{"id":"x"}}`), why: "checksum mismatch"},
		{name: "one byte edited in the entry", data: bytes.Replace(valid, []byte(`"/data"`), []byte(`"/dbta"`), 1), why: "checksum mismatch"},
		{name: "digit edited in the entry", data: bytes.Replace(valid, []byte(`"mount_id": 530`), []byte(`"mount_id": 531`), 1), why: "checksum mismatch"},
		{name: "other format version", data: withEntry(1, `{"id":"4026532280:530"}`), why: "format version 1, want 2"},
		{name: "unknown top-level field", data: []byte(`{"version":2,"checksum":"x","entry":{},"extra":1}`), why: `unknown field "extra"`},
		{name: "entry of the wrong shape", data: withEntry(2, `{"id":{"a":1}}`), why: "parse entry"},
		{name: "entry without an ID", data: withEntry(2, `{"mountpoint":"/x"}`), why: "entry without an ID"},
		{name: "another entry than the name says", data: withEntry(2, string(otherRaw)), why: `holds entry "other:1"`},
		{name: "trailing data", data: append(slices.Clone(valid), "xyz"...), why: "trailing data"},
		{name: "trailing brace", data: append(slices.Clone(valid), "}\n"...), why: "trailing data"},
		{name: "oversized", data: valid, size: maxEntrySize + 1, why: fmt.Sprintf("larger than %d bytes", maxEntrySize)},
	}
	rebuilt := testEntry("rebuilt:1")
	rebuilt.Rebuilt = true
	for _, tt := range tests {
		for _, via := range []string{"Update", "View"} {
			t.Run(tt.name+"/"+via, func(t *testing.T) {
				r := openTest(t)
				keep := testEntry("kept:1")
				if err := r.Update(func(s *State) error { s.Put(keep); return nil }); err != nil {
					t.Fatal(err)
				}
				path := filepath.Join(r.Dir(), entriesDir, fileName(&e))
				if err := os.WriteFile(path, tt.data, 0o600); err != nil {
					t.Fatal(err)
				}
				if tt.size > 0 {
					if err := os.Truncate(path, tt.size); err != nil {
						t.Fatal(err)
					}
				}
				called := false
				fn := func(s *State) error { called = true; return nil }
				var err error
				if via == "Update" {
					err = r.Update(fn)
				} else {
					err = r.View(fn)
				}
				var cerr *CorruptError
				if !errors.Is(err, ErrCorrupt) || !errors.As(err, &cerr) || !strings.Contains(err.Error(), tt.why) {
					t.Fatalf("%s = %v, want ErrCorrupt saying %q", via, err, tt.why)
				}
				if called {
					t.Errorf("%s called fn with a corrupt state", via)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error has a newline: %q", err)
				}
				rep, err := r.Repair(&State{Entries: []Entry{rebuilt, keep}})
				if err != nil || rep == nil {
					t.Fatalf("Repair = %+v, %v", rep, err)
				}
				if !strings.Contains(rep.Why, tt.why) || rep.Entries != 1 || len(rep.Aside) != 1 || !strings.HasPrefix(rep.Aside[0], fileName(&e)+".corrupt-") {
					t.Errorf("Repair reported %+v, want the reason %q, 1 entry stored (kept:1 has its file), the aside name", rep, tt.why)
				}
				// The corrupt file is set aside, byte for byte.
				aside := filepath.Join(r.Dir(), entriesDir, rep.Aside[0])
				if fi, err := os.Stat(aside); err != nil {
					t.Error(err)
				} else if tt.size > 0 && fi.Size() != tt.size {
					t.Errorf("aside file has %d bytes, want %d", fi.Size(), tt.size)
				} else if tt.size == 0 {
					if b, _ := os.ReadFile(aside); !bytes.Equal(b, tt.data) {
						t.Errorf("aside file differs from the corrupt file")
					}
				}
				if got := ids(viewState(t, r)); !slices.Equal(got, []string{keep.ID, rebuilt.ID}) {
					t.Errorf("after repair: %v", got)
				}
				if rep, err := r.Repair(&State{}); rep != nil || err != nil {
					t.Errorf("second Repair = %+v, %v, want nothing done", rep, err)
				}
			})
		}
	}
}

// TestRegistryAcceptsReformatted: the checksum covers the content, not the
// layout, so a re-indented file is still valid.
func TestRegistryAcceptsReformatted(t *testing.T) {
	e := testEntry("a")
	valid := validEntryFile(t, e)
	var compact bytes.Buffer
	if err := json.Compact(&compact, valid); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"as written":       valid,
		"compact":          compact.Bytes(),
		"crlf and spaces":  append(bytes.ReplaceAll(valid, []byte("\n"), []byte("\r\n")), "  \n\n"...),
		"no final newline": bytes.TrimRight(valid, "\n"),
	} {
		t.Run(name, func(t *testing.T) {
			r := openTest(t)
			if err := os.WriteFile(filepath.Join(r.Dir(), entriesDir, fileName(&e)), data, 0o600); err != nil {
				t.Fatal(err)
			}
			if got := ids(viewState(t, r)); !slices.Equal(got, []string{"a"}) {
				t.Errorf("entries %v", got)
			}
		})
	}
}

// TestRegistryReadError: an entry file that cannot be read is an error,
// not a corruption (nothing set aside, nothing rebuilt).
func TestRegistryReadError(t *testing.T) {
	r := openTest(t)
	e := testEntry("a")
	if err := os.Mkdir(filepath.Join(r.Dir(), entriesDir, fileName(&e)), 0o700); err != nil {
		t.Fatal(err)
	}
	err := r.View(func(*State) error { return nil })
	if err == nil || errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "read registry") {
		t.Errorf("View = %v, want a read error", err)
	}
}

// TestRegistryMigratesLegacy: the one file of earlier releases becomes
// entry files when the registry is opened; a corrupt one is left for
// Repair, which sets it aside.
func TestRegistryMigratesLegacy(t *testing.T) {
	legacy := func(entries ...Entry) []byte {
		raw, err := json.Marshal(&State{Entries: entries})
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.MarshalIndent(legacyState{Version: legacyFormat, Checksum: checksum(raw), State: raw}, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	dir := filepath.Join(t.TempDir(), "nsmDreg")
	os.MkdirAll(dir, 0o700)
	a, b := testEntry("a:1"), testEntry("b:2")
	if err := os.WriteFile(filepath.Join(dir, legacyFile), legacy(a, b), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := viewState(t, r).Entries; !reflect.DeepEqual(got, []Entry{a, b}) {
		t.Errorf("migrated %+v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, legacyFile+".migrated")); err != nil {
		t.Errorf("legacy file not renamed: %v", err)
	}

	dir = filepath.Join(t.TempDir(), "nsmDreg")
	os.MkdirAll(dir, 0o700)
	if err := os.WriteFile(filepath.Join(dir, legacyFile), []byte(`{"version":1,"checksum":"sha256:00","state":{"entries":[]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if r, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	if err := r.View(func(*State) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Errorf("View with a corrupt legacy file = %v, want ErrCorrupt (its entries are lost until rebuilt)", err)
	}
	rep, err := r.Repair(&State{Entries: []Entry{a}})
	if err != nil || rep == nil || !strings.Contains(rep.Why, "checksum mismatch") || len(rep.Aside) != 1 || !strings.HasPrefix(rep.Aside[0], legacyFile+".corrupt-") {
		t.Fatalf("Repair = %+v, %v", rep, err)
	}
}

func BenchmarkRegistryUpdate200(b *testing.B) {
	r := openTest(b)
	err := r.Update(func(s *State) error {
		for i := range 200 {
			e := testEntry(fmt.Sprintf("4026532280:%d", 1000+i))
			e.MountID = uint64(1000 + i)
			e.Target.NetNS.Ino = uint64(4026530000 + i)
			s.Put(e)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	extra := testEntry("4026532280:999999")
	for b.Loop() {
		err := r.Update(func(s *State) error {
			s.Put(extra)
			s.Remove(func(e *Entry) bool { return e.ID == extra.ID })
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRegistryViewNetNS200: what a mount reads of a registry of 200
// entries in 200 namespaces: its own namespace's.
func BenchmarkRegistryViewNetNS200(b *testing.B) {
	r := openTest(b)
	err := r.Update(func(s *State) error {
		for i := range 200 {
			e := testEntry(fmt.Sprintf("4026532280:%d", 1000+i))
			e.Target.NetNS.Ino = uint64(4026530000 + i)
			s.Put(e)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	ns := nsmount.NSID{Dev: 4, Ino: 4026530100}
	for b.Loop() {
		if err := r.ViewNetNS(ns, func(*State) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLockExcludes: a named lock held by one process makes another wait
// (woken at once when it is let go), times out at the context's deadline,
// and survives the removal of its file by RemoveLock.
func TestLockExcludes(t *testing.T) {
	r := openTest(t)
	ctx := t.Context()
	l, err := r.Lock(ctx, "netns-4026532281-198.51.100.1")
	if err != nil {
		t.Fatal(err)
	}
	// Another taker waits, and gives up at its deadline.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := r.Lock(short, "netns-4026532281-198.51.100.1"); err == nil {
		t.Fatal("took a lock that is held")
	} else if d := time.Since(start); d < 150*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %v, want about the 200ms deadline", d)
	}
	// Another name is independent.
	o, err := r.Lock(ctx, "netns-4026532281-198.51.100.2")
	if err != nil {
		t.Fatalf("other name: %v", err)
	}
	o.Unlock()
	// A waiter gets it when it is let go.
	got := make(chan error, 1)
	go func() {
		l2, err := r.Lock(ctx, "netns-4026532281-198.51.100.1")
		if err == nil {
			l2.Unlock()
		}
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	l.Unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken when the lock was let go")
	}
	if err := r.RemoveLock(ctx, "netns-4026532281-198.51.100.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r.Dir(), locksDir, "netns-4026532281-198.51.100.1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file still there after RemoveLock: %v", err)
	}
	for _, bad := range []string{"", "../x", "a/b", "a b"} {
		if _, err := r.Lock(ctx, bad); err == nil {
			t.Errorf("Lock(%q) accepted", bad)
		}
	}
}

// TestLockShared: shared holders do not exclude each other; an exclusive
// taker waits for all of them, and while it holds the lock a shared taker
// waits; Remove takes the file away with the lock.
func TestLockShared(t *testing.T) {
	r := openTest(t)
	ctx := t.Context()
	const name = "netns-4026532281-mount-4026532282-9a3f"
	a, err := r.LockShared(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.LockShared(ctx, name)
	if err != nil {
		t.Fatalf("second shared holder: %v", err)
	}
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	if _, err := r.Lock(short(), name); err == nil {
		t.Fatal("took exclusively a lock held shared")
	}
	a.Unlock()
	got := make(chan *Lock, 1)
	go func() {
		l, err := r.Lock(ctx, name)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	time.Sleep(50 * time.Millisecond)
	b.Unlock()
	var x *Lock
	select {
	case x = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("exclusive waiter not woken when the shared holders let go")
	}
	if _, err := r.LockShared(short(), name); err == nil {
		t.Fatal("took shared a lock held exclusively")
	}
	if !r.Held(name) || r.Held(name+"-other") {
		t.Errorf("Held = %v for the held lock, %v for another", r.Held(name), r.Held(name+"-other"))
	}
	if err := x.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r.Dir(), locksDir, name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file still there after Remove: %v", err)
	}
	if r.Held(name) {
		t.Error("Held after Remove")
	}
	if l, err := r.LockShared(short(), name); err != nil {
		t.Errorf("shared after Remove: %v", err)
	} else {
		if r.Held(name) {
			t.Error("Held while held shared")
		}
		l.Unlock()
	}
}

func BenchmarkRegistryView200(b *testing.B) {
	r := openTest(b)
	err := r.Update(func(s *State) error {
		for i := range 200 {
			e := testEntry(fmt.Sprintf("4026532280:%d", 1000+i))
			e.Target.NetNS.Ino = uint64(4026530000 + i)
			s.Put(e)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := r.View(func(*State) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// Every Put and Remove changes the Stamp; reading does not.
func TestStamp(t *testing.T) {
	r, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stamp := func() Stamp {
		t.Helper()
		s, err := r.Stamp()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	e := testEntry("a")
	steps := []struct {
		name string
		op   func() error
		same bool
	}{
		{"put", func() error { return r.Put(e) }, false},
		{"view", func() error { return r.View(func(*State) error { return nil }) }, true},
		{"put again", func() error { return r.Put(e) }, false},
		{"remove", func() error { _, err := r.Remove("a"); return err }, false},
		{"remove missing", func() error { _, err := r.Remove("a"); return err }, true},
	}
	for _, st := range steps {
		before := stamp()
		time.Sleep(2 * stampTick) // past the coarse clock's tick
		if err := st.op(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		after := stamp()
		if (after == before) != st.same {
			t.Errorf("%s: stamp %v -> %v, want same=%v", st.name, before, after, st.same)
		}
		if after.Fresh(time.Now()) != (time.Since(after.Changed) < stampTick) {
			t.Errorf("%s: Fresh wrong", st.name)
		}
	}
}
