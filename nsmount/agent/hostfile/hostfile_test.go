package hostfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

const (
	policyA = `{"version": 1, "allow": [{"name": "a", "servers": ["192.0.2.1"], "networks": ["192.0.2.0/24"], "exports": ["/export"], "targets": ["/data"]}]}`
	policyB = `{"version": 1, "allow": [{"name": "b", "servers": ["192.0.2.2"], "networks": ["192.0.2.0/24"], "exports": ["/export"], "targets": ["/data"]}]}`
)

// configMap writes text as a Kubernetes ConfigMap volume holds a key:
// NAME -> ..data/NAME, ..data -> a timestamped directory swapped by rename.
func configMap(t *testing.T, dir, name, text string, mode os.FileMode) {
	t.Helper()
	gen, err := os.MkdirTemp(dir, "..2026_12_01_")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gen, name), []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(gen, name), mode)
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMirrorPolicy walks a policy through its life: every step changes
// the source (or the copy) and says what the copy must hold afterwards.
func TestMirrorPolicy(t *testing.T) {
	cm := t.TempDir()
	src := filepath.Join(cm, "policy.json")
	dst := filepath.Join(t.TempDir(), "opt", "policy.json")
	for _, step := range []struct {
		name    string
		do      func(t *testing.T)
		err     string // an error containing this
		changed bool
		want    string // the copy's content; "" none
	}{
		{name: "no policy: no copy", do: func(*testing.T) {}},
		{name: "first policy copied", do: func(t *testing.T) { configMap(t, cm, "policy.json", policyA, 0o444) }, changed: true, want: policyA},
		{name: "unchanged: not written again", do: func(*testing.T) {}, want: policyA},
		{name: "new policy (the ConfigMap's ..data swapped)", do: func(t *testing.T) { configMap(t, cm, "policy.json", policyB, 0o444) }, changed: true, want: policyB},
		{name: "bad JSON: the last good one kept", do: func(t *testing.T) { configMap(t, cm, "policy.json", `{"version": 1, "allow": [`, 0o444) },
			err: "kept the last good one: policy " + src + ": invalid JSON", want: policyB},
		{name: "unknown key: kept", do: func(t *testing.T) { configMap(t, cm, "policy.json", `{"version": 1, "alow": []}`, 0o444) },
			err: "kept the last good one", want: policyB},
		{name: "writable by others: kept", do: func(t *testing.T) { configMap(t, cm, "policy.json", policyA, 0o666) },
			err: "writable by group or others", want: policyB},
		{name: "good again", do: func(t *testing.T) { configMap(t, cm, "policy.json", policyA, 0o444) }, changed: true, want: policyA},
		{name: "the copy's mode changed: rewritten", do: func(t *testing.T) { os.Chmod(dst, 0o666) }, changed: true, want: policyA},
		{name: "the copy edited: rewritten", do: func(t *testing.T) { os.WriteFile(dst, []byte(policyB), 0o644) }, changed: true, want: policyA},
		{name: "the copy removed: rewritten", do: func(t *testing.T) { os.Remove(dst) }, changed: true, want: policyA},
		{name: "the policy removed: the copy too (deny by default)", do: func(t *testing.T) { os.Remove(src) }, changed: true},
		{name: "still none", do: func(*testing.T) {}},
	} {
		t.Run(step.name, func(t *testing.T) {
			step.do(t)
			res, err := MirrorPolicy(src, dst)
			switch {
			case step.err != "" && (err == nil || !strings.Contains(err.Error(), step.err)):
				t.Errorf("MirrorPolicy = %v, want an error with %q", err, step.err)
			case step.err == "" && err != nil:
				t.Errorf("MirrorPolicy: %v", err)
			case err == nil && res.Changed != step.changed:
				t.Errorf("changed %v, want %v", res.Changed, step.changed)
			case err == nil && (res.Digest == "") != (step.want == ""):
				t.Errorf("digest %q for a copy %q", res.Digest, step.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error on several lines: %q", err)
			}
			checkFile(t, dst, step.want, PolicyMode)
		})
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// checkFile checks path's content (want "": no file), mode and owner.
func checkFile(t *testing.T, path, want string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(path)
	if want == "" {
		if !os.IsNotExist(err) {
			t.Errorf("%s: %v, %q; want no file", path, err, data)
		}
		return
	}
	if err != nil || string(data) != want {
		t.Fatalf("%s: %v, %q; want %q", path, err, data, want)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != mode {
		t.Errorf("%s: mode %v, want %v", path, fi.Mode(), mode)
	}
	if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && (st.Uid != 0 || st.Gid != 0) {
		t.Errorf("%s: owner %d:%d, want root", path, st.Uid, st.Gid)
	}
}

// TestInstall: the binary is copied with mode 0755 into a directory made
// for it, not written again when it is there already, and a reader
// opening it meanwhile always gets one whole version.
func TestInstall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "opt", "bin")
	src := filepath.Join(t.TempDir(), "nsmount")
	v1, v2 := bytes.Repeat([]byte{1}, 4<<20), bytes.Repeat([]byte{2}, 4<<20)
	os.WriteFile(src, v1, 0o700)
	for _, step := range []struct {
		name    string
		content []byte
		changed bool
	}{
		{"first install", v1, true},
		{"the same again", v1, false},
		{"a new version", v2, true},
	} {
		t.Run(step.name, func(t *testing.T) {
			os.WriteFile(src, step.content, 0o700)
			res, err := Install(src, dir)
			if err != nil {
				t.Fatal(err)
			}
			if res.Changed != step.changed || res.Path != filepath.Join(dir, BinaryName) || res.Size != int64(len(step.content)) || !strings.HasPrefix(res.Digest, "sha256:") {
				t.Errorf("Install = %+v, want changed %v", res, step.changed)
			}
			checkFile(t, res.Path, string(step.content), BinaryMode)
		})
	}

	// A hook starting during installs reads v1 or v2, never a mix.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var torn, reads atomic.Int64
	wg.Go(func() {
		for !stop.Load() {
			data, err := os.ReadFile(filepath.Join(dir, BinaryName))
			if err != nil || !bytes.Equal(data, v1) && !bytes.Equal(data, v2) {
				torn.Add(1)
			}
			reads.Add(1)
		}
	})
	for i := range 20 {
		os.WriteFile(src, [][]byte{v1, v2}[i%2], 0o700)
		if _, err := Install(src, dir); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if torn.Load() != 0 {
		t.Errorf("%d of %d reads during installs saw no whole binary", torn.Load(), reads.Load())
	}
	if _, err := Install(filepath.Join(t.TempDir(), "missing"), dir); err == nil || !strings.HasPrefix(err.Error(), "install: read ") {
		t.Errorf("Install of a missing file: %v", err)
	}
}
