package ocihook_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/ocihook"
)

func TestReadState(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string // want: "" parses, else a substring of the error
	}{
		{"runc", `{"ociVersion":"1.0.2-dev","id":"c1","status":"creating","pid":42,"bundle":"/run/c1","annotations":{"a":"b"}}`, ""},
		{"poststop", `{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/run/c1"}` + "\n", ""},
		{"empty", "", "OCI state on stdin: empty"},
		{"spaces", " \n\t", "OCI state on stdin: empty"},
		{"unknown-field", `{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b","rootfs":"/x"}`, `unknown field "rootfs"`},
		{"key-case", `{"ociVersion":"1.0.2","ID":"c1","status":"creating","pid":42,"bundle":"/b"}`, `unknown field "ID"`},
		{"key-twice", `{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b","id":"c2"}`, `field "id" given more than once`},
		{"annotation-twice", `{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b","annotations":{"nsmount.io/mounts":"[]","nsmount.io/mounts":"x"}}`, `field "nsmount.io/mounts" given more than once`},
		{"trailing", `{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b"} {}`, "unexpected data after the state object"},
		{"not-json", `status: creating`, "OCI state on stdin: invalid character"},
		{"no-id", `{"ociVersion":"1.0.2","status":"creating","pid":42,"bundle":"/b"}`, `container id "": empty or not printable`},
		{"id-newline", `{"ociVersion":"1.0.2","id":"c1\nforged line","status":"creating","pid":42,"bundle":"/b"}`, "not printable"},
		{"id-space", `{"ociVersion":"1.0.2","id":"c1 c2","status":"creating","pid":42,"bundle":"/b"}`, "not printable"},
		{"id-bad-utf8", "{\"ociVersion\":\"1.0.2\",\"id\":\"c1\xff\",\"status\":\"creating\",\"pid\":42,\"bundle\":\"/b\"}", "not printable"},
		{"bundle-relative", `{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"b"}`, `bundle "b": want a clean absolute path`},
		{"bundle-unclean", `{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/run/../b"}`, `bundle "/run/../b": want a clean absolute path`},
		{"oversized", `{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b"}` + strings.Repeat(" ", ocihook.MaxStateSize), "larger than 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ocihook.ReadState(strings.NewReader(tc.in))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("error: %v", err)
			case tc.want == "":
				if s.ID != "c1" || s.Bundle != "/run/c1" {
					t.Errorf("state %+v", s)
				}
			case err == nil:
				t.Fatalf("parsed %+v, want error containing %q", s, tc.want)
			case !strings.Contains(err.Error(), tc.want) || nsmount.ExitCode(err) != 3 || strings.Contains(err.Error(), "\n"):
				t.Errorf("error %q (exit %d), want one line containing %q, exit 3", err, nsmount.ExitCode(err), tc.want)
			}
		})
	}
}

func TestStage(t *testing.T) {
	for status, want := range map[specs.ContainerState]ocihook.Stage{
		specs.StateCreating: ocihook.CreateRuntime,
		specs.StateStopped:  ocihook.Poststop,
		specs.StateRunning:  "",
		"":                  "",
	} {
		got, err := ocihook.StageOf(status)
		if got != want || (want == "") != (err != nil) || err != nil && !errors.Is(err, nsmount.ErrInvalidArgument) {
			t.Errorf("StageOf(%q) = %q, %v; want %q", status, got, err, want)
		}
	}
	for s, want := range map[string]ocihook.Stage{"createRuntime": ocihook.CreateRuntime, "poststop": ocihook.Poststop, "prestart": "", "": "", "Poststop": ""} {
		got, err := ocihook.ParseStage(s)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("ParseStage(%q) = %q, %v; want %q", s, got, err, want)
		}
	}
}

func TestReadBundleSpec(t *testing.T) {
	dir := t.TempDir()
	bundle := func(name string, write func(dir string)) string {
		b := filepath.Join(dir, name)
		if err := os.Mkdir(b, 0o755); err != nil {
			t.Fatal(err)
		}
		write(b)
		return b
	}
	config := func(content string) func(string) {
		return func(b string) {
			if err := os.WriteFile(filepath.Join(b, "config.json"), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	elsewhere := filepath.Join(dir, "elsewhere.json")
	os.WriteFile(elsewhere, []byte(`{"root":{"path":"/"}}`), 0o644)
	for _, tc := range []struct {
		name, bundle string
		want         string // "" reads, else a substring of the error
		class        error
	}{
		{"good", bundle("good", config(`{"ociVersion":"1.2.0","root":{"path":"rootfs"},"annotations":{"a":"b"},"unknown":1}`)), "", nil},
		{"symlink", bundle("symlink", func(b string) { os.Symlink(elsewhere, filepath.Join(b, "config.json")) }), "config.json: too many levels of symbolic links", nil},
		{"directory", bundle("directory", func(b string) { os.Mkdir(filepath.Join(b, "config.json"), 0o755) }), "config.json: not a regular file", nsmount.ErrInvalidArgument},
		{"missing", bundle("missing", func(string) {}), "no such file", nil},
		{"malformed", bundle("malformed", config(`{"root":`)), "config.json: unexpected end of JSON input", nsmount.ErrInvalidArgument},
		{"wrong-type", bundle("wrong-type", config(`{"annotations":[]}`)), "cannot unmarshal array", nsmount.ErrInvalidArgument},
		{"oversized", bundle("oversized", config(`{"x":"`+strings.Repeat("a", ocihook.MaxConfigSize)+`"}`)), "larger than 4194304 bytes", nsmount.ErrInvalidArgument},
		{"no-bundle", "", "OCI state has no bundle", nsmount.ErrInvalidArgument},
		{"no-dir", filepath.Join(dir, "nope"), "open bundle", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ocihook.ReadBundleSpec(tc.bundle)
			if tc.want == "" {
				if err != nil || spec.Annotations["a"] != "b" || spec.Root.Path != "rootfs" {
					t.Fatalf("ReadBundleSpec = %+v, %v", spec, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || tc.class != nil && !errors.Is(err, tc.class) || strings.Contains(err.Error(), "\n") {
				t.Errorf("ReadBundleSpec = %v; want one line with %q (class %v)", err, tc.want, tc.class)
			}
		})
	}
}

func TestRootfs(t *testing.T) {
	for _, tc := range []struct {
		bundle string
		root   *specs.Root
		want   string // "" an error
	}{
		{"/run/b", &specs.Root{Path: "rootfs"}, "/run/b/rootfs"},
		{"/run/b", &specs.Root{Path: "/var/lib/c/rootfs/"}, "/var/lib/c/rootfs"},
		{"/run/b", &specs.Root{Path: "../x/./rootfs"}, "/run/x/rootfs"},
		{"", &specs.Root{Path: "/abs"}, "/abs"},
		{"", &specs.Root{Path: "rootfs"}, ""},
		{"/run/b", &specs.Root{}, ""},
		{"/run/b", nil, ""},
	} {
		got, err := ocihook.Rootfs(tc.bundle, &specs.Spec{Root: tc.root})
		if got != tc.want || (tc.want == "") != (err != nil) || err != nil && !errors.Is(err, nsmount.ErrInvalidArgument) {
			t.Errorf("Rootfs(%q, %+v) = %q, %v; want %q", tc.bundle, tc.root, got, err, tc.want)
		}
	}
}

func TestIsSandbox(t *testing.T) {
	for _, tc := range []struct {
		annotations map[string]string
		want        bool
	}{
		{map[string]string{"io.kubernetes.cri.container-type": "sandbox"}, true},
		{map[string]string{"io.kubernetes.cri-o.ContainerType": "sandbox"}, true},
		{map[string]string{"io.kubernetes.cri.container-type": "container"}, false},
		{map[string]string{"io.kubernetes.cri.container-type": "Sandbox"}, false},
		{nil, false},
	} {
		if got := ocihook.IsSandbox(tc.annotations); got != tc.want {
			t.Errorf("IsSandbox(%v) = %v, want %v", tc.annotations, got, tc.want)
		}
	}
}
