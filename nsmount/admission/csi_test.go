package admission_test

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
)

const kubeletTarget = "/var/lib/kubelet/pods/4f0c1f4e-9a39-4b5e-8e57-0c4a4e1f6a01/volumes/kubernetes.io~csi/data/mount"

func loadCSIPolicy(t *testing.T) *admission.Policy {
	t.Helper()
	data, err := os.ReadFile("testdata/policies/good_csi.json")
	if err != nil {
		t.Fatal(err)
	}
	p, err := admission.ParsePolicy(data)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func csiVolume(t *testing.T, source, options, namespace string, ephemeral bool) admission.CSIVolume {
	t.Helper()
	src, err := nsmount.ParseSource(source)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := nsmount.ParseOptions(options)
	if err != nil {
		t.Fatal(err)
	}
	return admission.CSIVolume{Source: src, FSType: "nfs", Options: opts, Target: kubeletTarget, Namespace: namespace, Ephemeral: ephemeral}
}

// TestPolicyCheckCSI: CSI volumes are admitted only by rules with "csi",
// by the pod's namespace, inline ones only with "ephemeral"; the rule's
// targets are never matched against kubelet's path.
func TestPolicyCheckCSI(t *testing.T) {
	p := loadCSIPolicy(t)
	for _, tc := range []struct {
		name              string
		source, options   string
		namespace         string
		ephemeral         bool
		want              string // options of the allowed request, or "denied: " and a substring of the error
		wantRule, wantNet string
	}{
		{"pv by name", "nfs.team-a.svc.cluster.local:/export/a", "vers=4.2,hard", "team-a", false, "vers=4.2,hard,nosuid,nodev", `rule 0 "team-a"`, "192.0.2.0/24"},
		{"pv by address, below the export", "192.0.2.10:/export/a/db", "", "team-a", false, "nosuid,nodev", `rule 0 "team-a"`, "192.0.2.0/24"},
		{"read-only", "192.0.2.10:/export/a", "ro", "team-a", false, "ro,nosuid,nodev", `rule 0 "team-a"`, ""},
		{"inline, CSI-only rule", "198.51.100.1:/scratch", "vers=4.1", "anyone", true, "vers=4.1,nosuid,nodev,noexec", `rule 1 "scratch, CSI only"`, "198.51.100.0/24"},
		{"pv, CSI-only rule", "scratch.example.test:/scratch", "", "kube-system", false, "nosuid,nodev,noexec", `rule 1 "scratch, CSI only"`, ""},

		{"other namespace", "192.0.2.10:/export/a", "", "team-b", false, `denied: CSI volumes of pods in namespace "team-b" are not allowed (rule 0 "team-a")`, "", ""},
		{"inline where only PVs are", "192.0.2.10:/export/a", "", "team-a", true, `denied: inline (ephemeral) CSI volumes are not allowed (rule 0 "team-a")`, "", ""},
		{"address outside", "203.0.113.1:/scratch", "", "team-a", false, `denied: server address 203.0.113.1 is outside the allowed networks (rule 1 "scratch, CSI only")`, "", ""},
		{"export", "192.0.2.10:/etc", "", "team-a", false, `denied: export "/etc" of server "192.0.2.10" is not allowed`, "", ""},
		{"option", "192.0.2.10:/export/a", "nolock", "team-a", false, `denied: option "nolock" is not allowed (rule 0 "team-a")`, "", ""},
		{"exec under noexec", "198.51.100.1:/scratch", "exec", "x", true, `denied: option "exec" is not allowed: noexec is enforced`, "", ""},
		{"suid", "192.0.2.10:/export/a", "suid", "team-a", false, `denied: option "suid" is not allowed: nosuid is enforced`, "", ""},
		{"no namespace", "192.0.2.10:/export/a", "", "", false, "denied: a CSI volume without its pod's namespace is never allowed", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, adm, err := p.CheckCSI(csiVolume(t, tc.source, tc.options, tc.namespace, tc.ephemeral))
			if want, denied := strings.CutPrefix(tc.want, "denied: "); denied {
				switch {
				case err == nil:
					t.Fatalf("allowed with options %s, want denied: %s", req.Options, want)
				case !strings.Contains(err.Error(), want):
					t.Errorf("error %q\nwant it to contain %q", err, want)
				case !errors.Is(err, nsmount.ErrDenied):
					t.Errorf("error %q is not ErrDenied", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("denied: %v", err)
			}
			if got := req.Options.String(); got != tc.want {
				t.Errorf("options %q, want %q", got, tc.want)
			}
			if req.Target != kubeletTarget || req.Mkdir || req.ResolveFrom != nsmount.ResolveFromContainer {
				t.Errorf("request target %q mkdir %v resolve-from %q, want kubelet's path, no mkdir, from the container", req.Target, req.Mkdir, req.ResolveFrom)
			}
			if adm.Rule != tc.wantRule || adm.Namespace != tc.namespace || adm.Target != kubeletTarget || adm.Options != req.Options.String() {
				t.Errorf("admission %+v: want rule %s, namespace %q, kubelet's target, the request's options", adm, tc.wantRule, tc.namespace)
			}
			if tc.wantNet != "" && (len(adm.Networks) != 1 || adm.Networks[0] != netip.MustParsePrefix(tc.wantNet)) {
				t.Errorf("admission networks %v, want [%s]", adm.Networks, tc.wantNet)
			}
		})
	}
}

// TestPolicyCSIRules: which policies admit what. A rule without "csi"
// never admits a CSI volume, whatever its targets; a CSI-only rule (no
// targets) never admits an annotation's mount.
func TestPolicyCSIRules(t *testing.T) {
	annotation := `{"server":"198.51.100.1","export":"/scratch","target":"/data"}`
	vol := admission.CSIVolume{Source: nsmount.Source{Server: "198.51.100.1", Export: "/scratch"}, FSType: "nfs", Target: kubeletTarget, Namespace: "team-a"}
	for _, tc := range []struct {
		name               string
		policy             string
		wantCheck, wantCSI string // "" allowed, else a substring of the error
		wantParse          string // a substring of the parse error
	}{
		{"annotation rule only", `{"version":1,"allow":[{"servers":["*"],"networks":["198.51.100.0/24"],"exports":["/scratch"],"targets":["/*"]}]}`,
			"", `no rule admits CSI volumes (deny by default; a rule needs "csi")`, ""},
		{"CSI only", `{"version":1,"allow":[{"servers":["*"],"networks":["198.51.100.0/24"],"exports":["/scratch"],"csi":{"namespaces":["*"]}}]}`,
			`target "/data" is not allowed: the rule admits CSI volumes only`, "", ""},
		{"both", `{"version":1,"allow":[{"servers":["*"],"networks":["198.51.100.0/24"],"exports":["/scratch"],"targets":["/data"],"csi":{"namespaces":["team-a"]}}]}`,
			"", "", ""},
		{"no targets, no csi", `{"version":1,"allow":[{"servers":["*"],"networks":["198.51.100.0/24"],"exports":["/scratch"]}]}`,
			"", "", "allow[0].targets: missing or empty"},
		{"unknown key in csi", `{"version":1,"allow":[{"servers":["*"],"networks":["198.51.100.0/24"],"exports":["/scratch"],"csi":{"namespace":["a"]}}]}`,
			"", "", `unknown field "namespace"`},
		{"csi key twice", `{"version":1,"allow":[{"servers":["*"],"networks":["198.51.100.0/24"],"exports":["/scratch"],"csi":{"namespaces":["a"],"namespaces":["*"]}}]}`,
			"", "", `field "namespaces" given more than once`},
		{"csi not an object", `{"version":1,"allow":[{"servers":["*"],"networks":["198.51.100.0/24"],"exports":["/scratch"],"csi":true}]}`,
			"", "", "invalid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := admission.ParsePolicy([]byte(tc.policy))
			if tc.wantParse != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantParse) || !errors.Is(err, nsmount.ErrInvalidArgument) {
					t.Fatalf("ParsePolicy = %v, want ErrInvalidArgument containing %q", err, tc.wantParse)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = p.Check(volume(t, annotation))
			checkOutcome(t, "Check", err, tc.wantCheck)
			_, _, err = p.CheckCSI(vol)
			checkOutcome(t, "CheckCSI", err, tc.wantCSI)
		})
	}
}

func checkOutcome(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s: %v, want allowed", what, err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, nsmount.ErrDenied)):
		t.Errorf("%s: %v, want denied with %q", what, err, want)
	}
}

func TestPolicyCSIMissingFile(t *testing.T) {
	p, err := admission.LoadOrDeny(t.TempDir() + "/none.json")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = p.CheckCSI(admission.CSIVolume{Source: nsmount.Source{Server: "198.51.100.1", Export: "/x"}, Namespace: "a"})
	if !errors.Is(err, nsmount.ErrDenied) || !strings.Contains(err.Error(), "deny by default") {
		t.Errorf("CheckCSI with no policy file: %v, want denied by default", err)
	}
}

func TestValidNamespace(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"default", true}, {"team-a", true}, {"a", true}, {"0a1", true}, {strings.Repeat("a", 63), true},
		{"", false}, {"-a", false}, {"a-", false}, {"Team", false}, {"team_a", false}, {"a.b", false}, {strings.Repeat("a", 64), false}, {"*", false},
	} {
		if got := admission.ValidNamespace(tc.s); got != tc.want {
			t.Errorf("ValidNamespace(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}
