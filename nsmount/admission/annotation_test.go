package admission_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
)

// annotationWant is the expected outcome of each vector in
// testdata/annotations: for good_*.json the requests, one line each, as
// formatRequest prints them; for fail_*.json a substring of the error.
var annotationWant = map[string]string{
	"good_minimal.json": "0 192.0.2.1:/export nfs [] /data required=true mkdir=false",
	"good_empty.json":   "",
	"good_full.json": "0 nfs.example.test:/export/a nfs4 [vers=4.2,ro,nolock] /data required=false mkdir=true\n" +
		"1 [2001:db8::1]:/ nfs [] /mnt/v6 required=true mkdir=false\n" +
		"2 198.51.100.1:/export nfs [vers=3,nolock,noexec] /mnt/v3 required=true mkdir=false",
	"good_max.json": "16 requests",

	"fail_not_list.json":         `nsmount.io/mounts: want a JSON list of mounts, found "{"`,
	"fail_unknown_field.json":    `nsmount.io/mounts[0]: unknown field "bogus" (want export, mkdir, options, required, server, target, type)`,
	"fail_key_case.json":         `nsmount.io/mounts[0]: unknown field "Server"`,
	"fail_dup_key.json":          `nsmount.io/mounts[0].server: given more than once`,
	"fail_trailing_list.json":    `nsmount.io/mounts: unexpected data after the list`,
	"fail_trailing_garbage.json": `nsmount.io/mounts: unexpected data after the list`,
	"fail_required_string.json":  `nsmount.io/mounts[0].required: want a boolean, found a string`,
	"fail_options_null.json":     `nsmount.io/mounts[0].options: want a string, found null`,
	"fail_options_list.json":     `nsmount.io/mounts[0].options: want a string, found "["`,
	"fail_missing_target.json":   `nsmount.io/mounts[0].target: missing`,
	"fail_export_relative.json":  `nsmount.io/mounts[0].export: "export": must be an absolute path`,
	"fail_export_dotdot.json":    `nsmount.io/mounts[0].export: "/export/../etc": must be a clean path ("/etc")`,
	"fail_target_root.json":      `nsmount.io/mounts[0].target: "/": mounting over the container's root is not allowed`,
	"fail_target_unclean.json":   `nsmount.io/mounts[0].target: "/data/": must be a clean path ("/data")`,
	"fail_target_control.json":   `nsmount.io/mounts[0].target: "/da\x00ta": control character`,
	"fail_dup_target.json":       `nsmount.io/mounts[1].target: "/data": already the target of entry 0`,
	"fail_server_brackets.json":  `nsmount.io/mounts[0].server: "[2001:db8::1]": IPv6 address must be given without brackets`,
	"fail_server_space.json":     `nsmount.io/mounts[0].server: "nfs server": neither an IP address nor a host name`,
	"fail_server_colon.json":     `nsmount.io/mounts[0].server: "nfs:2049": not an IP address`,
	"fail_server_empty.json":     `nsmount.io/mounts[0].server: "": empty`,
	"fail_server_zoned.json":     `nsmount.io/mounts[0].server: "fe80::1%eth0": zoned address: name a network, not a link`,
	"fail_type.json":             `nsmount.io/mounts[0].type: "nfs3": want nfs or nfs4`,
	"fail_options_addr.json":     `nsmount.io/mounts[0].options: option "addr" is not allowed`,
	"fail_options_vers.json":     `nsmount.io/mounts[0].options: unsupported NFS version "5"`,
	"fail_options_empty.json":    `nsmount.io/mounts[0].options: invalid mount options "ro,,nolock": empty option`,
	"fail_nfs4_v3.json":          `nsmount.io/mounts[0].options: type nfs4 cannot mount NFS version 3`,
	"fail_too_many.json":         `nsmount.io/mounts: more than 16 mounts`,
	"fail_syntax.json":           `nsmount.io/mounts[0].server: invalid JSON at byte 11: invalid character`,
	"fail_truncated.json":        `nsmount.io/mounts[0]: unexpected end of JSON`,
	"fail_entry_string.json":     `nsmount.io/mounts[0]: want an object, found a string`,
	"fail_empty_value.json":      `nsmount.io/mounts: unexpected end of JSON`,
}

func formatRequest(v admission.VolumeRequest) string {
	return fmt.Sprintf("%d %s %s [%s] %s required=%v mkdir=%v", v.Index, v.Source, v.FSType, v.Options, v.Target, v.Required, v.Mkdir)
}

func TestParseMountsAnnotationVectors(t *testing.T) {
	files, err := filepath.Glob("testdata/annotations/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no vectors in testdata/annotations: %v", err)
	}
	seen := map[string]bool{}
	for _, file := range files {
		name := filepath.Base(file)
		seen[name] = true
		t.Run(strings.TrimSuffix(name, ".json"), func(t *testing.T) {
			want, ok := annotationWant[name]
			if !ok {
				t.Fatalf("no expectation for %s in annotationWant", name)
			}
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			vols, err := admission.ParseMountsAnnotation(string(data))
			checkParse(t, strings.HasPrefix(name, "good_"), want, vols, err)
		})
	}
	for name := range annotationWant {
		if !seen[name] {
			t.Errorf("annotationWant has %s, but testdata/annotations does not", name)
		}
	}
}

func checkParse(t *testing.T, good bool, want string, vols []admission.VolumeRequest, err error) {
	t.Helper()
	if !good {
		if err == nil {
			t.Fatalf("parsed, want error containing %q", want)
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q\nwant it to contain %q", err, want)
		}
		if !errors.Is(err, nsmount.ErrInvalidArgument) || nsmount.ExitCode(err) != 3 {
			t.Errorf("error %q is not ErrInvalidArgument (exit %d)", err, nsmount.ExitCode(err))
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("error spans lines: %q", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("error: %v", err)
	}
	var lines []string
	for _, v := range vols {
		lines = append(lines, formatRequest(v))
	}
	got := strings.Join(lines, "\n")
	if strings.HasSuffix(want, " requests") {
		got = fmt.Sprintf("%d requests", len(vols))
	}
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestParseMountsAnnotationBounds(t *testing.T) {
	entry := `{"server":"192.0.2.1","export":"/export","target":"/data"}`
	for _, tc := range []struct {
		name, value, want string
		good              bool
	}{
		{"size-limit", "[" + entry + "]" + strings.Repeat(" ", admission.MaxAnnotationSize-len(entry)-2), "0 192.0.2.1:/export nfs [] /data required=true mkdir=false", true},
		{"oversized", "[" + entry + "]" + strings.Repeat(" ", admission.MaxAnnotationSize-len(entry)-1), "nsmount.io/mounts: 65537 bytes, more than the limit of 65536", false},
		{"long-target", `[{"server":"192.0.2.1","export":"/e","target":"/` + strings.Repeat("a", 4096) + `"}]`, "nsmount.io/mounts[0].target: ", false},
		{"long-export", `[{"server":"192.0.2.1","export":"/` + strings.Repeat("a", 4096) + `","target":"/d"}]`, "longer than 4096 bytes", false},
		{"escaped-key", `[{"\u0073erver":"192.0.2.1","export":"/e","target":"/d"}]`, "0 192.0.2.1:/e nfs [] /d required=true mkdir=false", true},
		{"number", `[{"server":"192.0.2.1","export":"/e","target":"/d","required":1}]`, "nsmount.io/mounts[0].required: want a boolean, found a number", false},
		{"nested-list", `[[]]`, "nsmount.io/mounts[0]: want an object, found \"[\"", false},
		{"ipv4-mapped", `[{"server":"::ffff:192.0.2.1","export":"/e","target":"/d"}]`, "0 [::ffff:192.0.2.1]:/e nfs [] /d required=true mkdir=false", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vols, err := admission.ParseMountsAnnotation(tc.value)
			checkParse(t, tc.good, tc.want, vols, err)
		})
	}
}

func TestVolumeRequestRequest(t *testing.T) {
	vols, err := admission.ParseMountsAnnotation(`[{"server":"nfs.example.test","export":"/a","target":"/data","type":"nfs4","options":"vers=4.1,ro","mkdir":true}]`)
	if err != nil {
		t.Fatal(err)
	}
	req := vols[0].Request()
	if req.Source.String() != "nfs.example.test:/a" || req.FSType != "nfs4" || req.Options.String() != "vers=4.1,ro" ||
		req.Target != "/data" || !req.Mkdir || req.ResolveFrom != nsmount.ResolveFromContainer {
		t.Errorf("Request() = %+v", req)
	}
	req.Options[0].Value = "3"
	if vols[0].Options[0].Value != "4.1" {
		t.Error("Request() shares its options with the VolumeRequest")
	}
}
