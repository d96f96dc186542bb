package admission_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/internal/fuzzseed"
)

// FuzzParseMountsAnnotation: any annotation value either parses into
// requests that hold the documented invariants, and that parse back to the
// same requests when written out again, or fails with a one-line invalid
// argument error.
func FuzzParseMountsAnnotation(f *testing.F) {
	fuzzseed.AddFiles(f, "testdata/annotations/*.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		vols, err := admission.ParseMountsAnnotation(string(data))
		if err != nil {
			fuzzseed.CheckInvalid(t, err)
			return
		}
		if len(vols) > admission.MaxAnnotationMounts {
			t.Fatalf("%d requests, more than %d", len(vols), admission.MaxAnnotationMounts)
		}
		targets := map[string]bool{}
		var again []map[string]any
		for i, v := range vols {
			if v.Index != i || targets[v.Target] || v.Target == "/" || !strings.HasPrefix(v.Target, "/") || !strings.HasPrefix(v.Source.Export, "/") {
				t.Fatalf("request %d breaks an invariant: %+v", i, v)
			}
			targets[v.Target] = true
			if v.FSType != "nfs" && v.FSType != "nfs4" {
				t.Fatalf("request %d: type %q", i, v.FSType)
			}
			if err := nsmount.ValidateMount(v.FSType, v.Source, v.Options); err != nil {
				t.Fatalf("request %d: accepted, but the mount would refuse it: %v", i, err)
			}
			if req := v.Request(); req.Target != v.Target || req.Source != v.Source || req.ResolveFrom != nsmount.ResolveFromContainer {
				t.Fatalf("request %d: Request() = %+v", i, req)
			}
			again = append(again, map[string]any{
				"server": v.Source.Server, "export": v.Source.Export, "target": v.Target, "type": v.FSType,
				"options": v.Options.String(), "required": v.Required, "mkdir": v.Mkdir,
			})
		}
		if len(vols) == 0 {
			return
		}
		text, err := json.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		back, err := admission.ParseMountsAnnotation(string(text))
		if err != nil {
			t.Fatalf("written out again, %s does not parse: %v", text, err)
		}
		if !reflect.DeepEqual(back, vols) {
			t.Fatalf("round trip changed the requests:\n%+v\n%+v", vols, back)
		}
	})
}

// fuzzVolumes are the requests each fuzzed policy is asked about.
var fuzzVolumes = []string{
	`[{"server":"192.0.2.1","export":"/export","target":"/data"}]`,
	`[{"server":"nfs.lab.test","export":"/export/a","target":"/mnt/x","options":"vers=4.2,ro,nolock"}]`,
	`[{"server":"2001:db8:a::1","export":"/","target":"/mnt/v6","type":"nfs4","options":"suid"}]`,
	`[{"server":"x.storage.lab.test","export":"/export","target":"/data","options":"rw,hard,timeo=600,noexec"}]`,
}

// FuzzParsePolicy: any policy text either parses into a policy whose every
// decision holds the documented invariants (nosuid and nodev always
// enforced, enforced options last, an admission that names its rule and
// networks), or fails with a one-line invalid argument error.
func FuzzParsePolicy(f *testing.F) {
	fuzzseed.AddFiles(f, "testdata/policies/*.json")
	var vols []admission.VolumeRequest
	for _, s := range fuzzVolumes {
		v, err := admission.ParseMountsAnnotation(s)
		if err != nil {
			f.Fatal(err)
		}
		vols = append(vols, v...)
	}
	addrs := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8:a::1"), netip.MustParseAddr("198.51.100.7"), {}}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := admission.ParsePolicy(data)
		if err != nil {
			fuzzseed.CheckInvalid(t, err)
			return
		}
		for _, v := range vols {
			req, adm, err := p.Check(v)
			if err != nil {
				if !errors.Is(err, nsmount.ErrDenied) || strings.ContainsAny(err.Error(), "\n\r") || adm != nil {
					t.Fatalf("Check(%s) = %v, %v: want one line of class denied, no admission", v, adm, err)
				}
				continue
			}
			if adm == nil || adm.Rule == "" || len(adm.Networks) == 0 {
				t.Fatalf("Check(%s) allowed with admission %+v: want a rule and its networks", v, adm)
			}
			if req.Target != v.Target || req.Source != v.Source {
				t.Fatalf("Check(%s) changed what is mounted where: %+v", v, req)
			}
			for _, o := range []nsmount.Option{{Key: "nosuid"}, {Key: "nodev"}} {
				if !slices.Contains(req.Options, o) {
					t.Fatalf("Check(%s) allowed options %s without %s", v, req.Options, o)
				}
			}
			if err := nsmount.ValidateMount(req.FSType, req.Source, req.Options); err != nil {
				t.Fatalf("Check(%s) allowed options %s that the mount refuses: %v", v, req.Options, err)
			}
			for _, a := range addrs {
				if err := adm.Allows(a); err != nil && !errors.Is(err, nsmount.ErrDenied) {
					t.Fatalf("Allows(%v) = %v: want nil or denied", a, err)
				}
			}
		}
	})
}
