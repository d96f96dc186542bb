package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// heavyPrefixes are the daemons' libraries that the split build's light
// part must not link (nor initialise): gRPC and protobuf, containerd's
// API, NRI (and its wasm runtime), the CSI spec, the Prometheus client,
// and prometheus/procfs, whose init compiles 21 regular expressions (1.2
// ms of every short command's start in the lab VM) for the mountstats
// parser that only watch, top and the agent use.
var heavyPrefixes = []string{
	"google.golang.org/grpc", "google.golang.org/protobuf", "github.com/containerd/",
	"github.com/tetratelabs/wazero", "github.com/container-storage-interface/",
	"github.com/prometheus/",
}

// TestSplitBuild builds the product binary as `make build` does (the full
// binary, zstd-compressed, embedded through -overlay into the light one)
// and checks what a user sees: it is smaller than the full binary, links
// none of the daemons' libraries, says it is the split build, and runs
// each long-lived command from the full binary: the same help, the same
// usage errors and exit codes, the same version.
func TestSplitBuild(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build: %v", err)
	}
	dir := t.TempDir()
	full, split := filepath.Join(dir, "nsmount-full"), filepath.Join(dir, "nsmount")
	build := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), goBin, append([]string{"build", "-trimpath", "-ldflags", "-s -w"}, args...)...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	build("-o", full, ".")
	data, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	zst := filepath.Join(dir, "nsmount-full.zst")
	if err := os.WriteFile(zst, enc.EncodeAll(data, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	here, err := filepath.Abs("packed/nsmount-full.zst")
	if err != nil {
		t.Fatal(err)
	}
	overlay, _ := json.Marshal(map[string]map[string]string{"Replace": {here: zst}})
	if err := os.WriteFile(filepath.Join(dir, "overlay.json"), overlay, 0o600); err != nil {
		t.Fatal(err)
	}
	build("-tags", "nsmount_split", "-overlay", filepath.Join(dir, "overlay.json"), "-o", split, ".")

	fi, _ := os.Stat(split)
	t.Logf("full %d bytes, split %d bytes (payload %d)", len(data), fi.Size(), len(enc.EncodeAll(data, nil)))
	if fi.Size() >= int64(len(data)) {
		t.Errorf("split build %d bytes, not smaller than the full binary's %d", fi.Size(), len(data))
	}

	out, err := exec.CommandContext(t.Context(), goBin, "list", "-e", "-deps", "-tags", "nsmount_split", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/nsmount/nsmount/nsmount") {
		t.Fatalf("go list -deps lists no nsmount core: this lint reads it wrong: %q", deps)
	}
	for _, d := range deps {
		for _, p := range heavyPrefixes {
			if strings.HasPrefix(d, p) {
				t.Errorf("the split build's light part links %s", d)
			}
		}
	}

	run := func(bin string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), bin, args...)
		cmd.Env = append(os.Environ(), "NSMOUNT_STATE_DIR="+filepath.Join(dir, "state"))
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return b.String(), 0
		case errors.As(err, &ee):
			return b.String(), ee.ExitCode()
		}
		t.Fatalf("%s %q: %v", bin, args, err)
		return "", 0
	}
	if v, code := run(split, "version"); code != 0 || !strings.Contains(v, "build split") {
		t.Errorf("split version: %d %q", code, v)
	}
	for _, args := range [][]string{
		{"watch", "--help"}, {"top", "--help"}, {"nri", "--help"}, {"csi", "--help"}, {"agent", "--help"},
		{"watch", "--bogus"}, {"agent", "extra"}, {"csi", "--endpoint", "unix:///x.sock"},
		{"list", "--container", "c1", "--address", filepath.Join(dir, "none.sock")},
	} {
		want, wantCode := run(full, args...)
		got, code := run(split, args...)
		if got != want || code != wantCode {
			t.Errorf("nsmount %s: split build %d %q, full binary %d %q", strings.Join(args, " "), code, got, wantCode, want)
		}
	}
	// The light commands run in the product binary itself.
	if got, code := run(split, "list", "--pid", "0"); code != 2 || !strings.Contains(got, "no target") {
		t.Errorf("split list --pid 0: %d %q", code, got)
	}
}
