package ocihook_test

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/integration/ocihook"
	"github.com/nsmount/nsmount/nsmount/internal/fuzzseed"
)

// FuzzParseState: any OCI state either parses into one with a printable
// container ID and a clean absolute bundle (or none), that encodes and
// parses back to itself, or fails with a one-line invalid argument error.
func FuzzParseState(f *testing.F) {
	fuzzseed.AddFiles(f, "testdata/states/*.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ocihook.ParseState(data)
		if err != nil {
			fuzzseed.CheckInvalid(t, err)
			return
		}
		if s.ID == "" || strings.ContainsAny(s.ID, " \t\n\r\x00") || s.Bundle != "" && (!filepath.IsAbs(s.Bundle) || filepath.Clean(s.Bundle) != s.Bundle) {
			t.Fatalf("accepted state %+v", s)
		}
		if _, err := ocihook.StageOf(s.Status); err != nil {
			fuzzseed.CheckInvalid(t, err)
		}
		enc, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ocihook.ParseState(enc)
		if len(s.Annotations) == 0 && err == nil && len(back.Annotations) == 0 {
			back.Annotations = s.Annotations // {} is written as nothing
		}
		if err != nil || !reflect.DeepEqual(back, s) {
			t.Fatalf("state %+v encodes as %s, which parses to %+v, %v", s, enc, back, err)
		}
	})
}

// FuzzParseSpec: any bundle config.json either parses, and then what the
// hook reads of it (the annotation, the sandbox marks, root.path joined to
// the bundle) is well-formed or a one-line invalid argument error, or it
// fails with one.
func FuzzParseSpec(f *testing.F) {
	fuzzseed.AddFiles(f, "testdata/configs/*.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := ocihook.ParseSpec(data)
		if err != nil {
			fuzzseed.CheckInvalid(t, err)
			return
		}
		ocihook.IsSandbox(spec.Annotations)
		if v, ok := spec.Annotations[admission.MountsAnnotation]; ok {
			if _, err := admission.ParseMountsAnnotation(v); err != nil {
				fuzzseed.CheckInvalid(t, err)
			}
		}
		for _, bundle := range []string{"/run/b", ""} {
			root, err := ocihook.Rootfs(bundle, spec)
			if err != nil {
				fuzzseed.CheckInvalid(t, err)
				continue
			}
			if !filepath.IsAbs(root) || filepath.Clean(root) != root {
				t.Fatalf("Rootfs(%q) = %q: want a clean absolute path", bundle, root)
			}
			if _, err := nsmount.OpenPIDRootfs(-1, root); !errors.Is(err, nsmount.ErrInvalidArgument) {
				t.Fatalf("rootfs %q is not what OpenPIDRootfs takes: %v", root, err)
			}
		}
	})
}
