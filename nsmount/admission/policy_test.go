package admission_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
)

// policyWant is the expected outcome of each vector in testdata/policies:
// "" for good_*.json (loads), a substring of the error for fail_*.json.
var policyWant = map[string]string{
	"good_example.json":            "",
	"good_deny_all.json":           "",
	"good_minimal.json":            "",
	"good_csi.json":                "",
	"fail_csi_no_namespaces.json":  "allow[0].csi.namespaces: missing or empty",
	"fail_csi_namespace_bad.json":  `allow[0].csi.namespaces[1] "Team_B": want a Kubernetes namespace name`,
	"fail_version.json":            "version 2: want 1",
	"fail_no_version.json":         "version 0: want 1",
	"fail_unknown_field.json":      `invalid JSON: json: unknown field "deny"`,
	"fail_rule_unknown_field.json": `invalid JSON: json: unknown field "server"`,
	"fail_trailing.json":           "unexpected data after the policy object",
	"fail_no_networks.json":        "allow[0].networks: missing or empty (at least one is needed: a container resolves names itself, so only the address it connects to can be checked)",
	"fail_no_servers.json":         "allow[0].servers: missing or empty",
	"fail_network_hostbits.json":   `allow[0].networks[0] "192.0.2.1/24": host bits set (did you mean 192.0.2.0/24?)`,
	"fail_network_bad.json":        `allow[0].networks[0] "192.0.2.0": want a CIDR`,
	"fail_server_pattern.json":     `allow[0].servers[0] "nfs*.lab.test": want a host name, *.SUFFIX, an IP address or *`,
	"fail_export_pattern.json":     `allow[0].exports[0] "/export/*/data": want a clean absolute path, or PATH/* for any path below it`,
	"fail_export_relative.json":    `allow[0].exports[0] "export/*": want a clean absolute path`,
	"fail_target_root.json":        `allow[0].targets[0] "/": the container's root can never be a mount target`,
	"fail_option_suid.json":        `allow[0].options[0] "suid": can never be allowed: nosuid is enforced`,
	"fail_option_dev.json":         `allow[0].options[0] "dev": can never be allowed: nodev is enforced`,
	"fail_option_addr.json":        `allow[0].options[0] "addr": chosen by nsmount, never allowed`,
	"fail_option_value.json":       `allow[0].options[0] "vers=3": want an option name`,
	"fail_option_exec.json":        `allow[0].options[0] "exec": can never be allowed: noexec is enforced`,
	"fail_enforce_suid.json":       `enforce_options[0] "suid": conflicts with enforced "nosuid"`,
	"fail_enforce_conflict.json":   `allow[0].enforce_options[0] "rw": conflicts with enforced "ro"`,
	"fail_enforce_two.json":        `allow[0].enforce_options[0] "ro,noexec": want one option, KEY or KEY=VALUE`,
	"fail_not_object.json":         "invalid JSON: json: cannot unmarshal array",
	"fail_key_case.json":           `invalid JSON: unknown field "Servers"`,
	"fail_key_twice.json":          `invalid JSON: field "allow" given more than once`,
}

func TestParsePolicyVectors(t *testing.T) {
	files, err := filepath.Glob("testdata/policies/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no vectors in testdata/policies: %v", err)
	}
	seen := map[string]bool{}
	for _, file := range files {
		name := filepath.Base(file)
		seen[name] = true
		t.Run(strings.TrimSuffix(name, ".json"), func(t *testing.T) {
			want, ok := policyWant[name]
			if !ok {
				t.Fatalf("no expectation for %s in policyWant", name)
			}
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			_, err = admission.ParsePolicy(data)
			if strings.HasPrefix(name, "good_") {
				if err != nil {
					t.Fatalf("error: %v", err)
				}
				return
			}
			switch {
			case err == nil:
				t.Fatalf("loaded, want error containing %q", want)
			case !strings.Contains(err.Error(), want):
				t.Errorf("error %q\nwant it to contain %q", err, want)
			case !errors.Is(err, nsmount.ErrInvalidArgument):
				t.Errorf("error %q is not ErrInvalidArgument", err)
			case strings.Contains(err.Error(), "\n"):
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
	for name := range policyWant {
		if !seen[name] {
			t.Errorf("policyWant has %s, but testdata/policies does not", name)
		}
	}
}

// writePolicy writes data to a new policy file with mode perm.
func writePolicy(t *testing.T, data []byte, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(p, data, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil { // not subject to umask
		t.Fatal(err)
	}
	return p
}

func loadExample(t *testing.T) *admission.Policy {
	t.Helper()
	data, err := os.ReadFile("testdata/policies/good_example.json")
	if err != nil {
		t.Fatal(err)
	}
	p, err := admission.LoadPolicy(writePolicy(t, data, 0o644))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadPolicyFile(t *testing.T) {
	good, err := os.ReadFile("testdata/policies/good_minimal.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		path func(t *testing.T) string
		want string // "" loads
	}{
		{"mode-0600", func(t *testing.T) string { return writePolicy(t, good, 0o600) }, ""},
		{"group-writable", func(t *testing.T) string { return writePolicy(t, good, 0o664) }, "writable by group or others (mode 0664)"},
		{"world-writable", func(t *testing.T) string { return writePolicy(t, good, 0o646) }, "writable by group or others (mode 0646)"},
		{"directory", func(t *testing.T) string { return t.TempDir() }, "not a regular file"},
		{"fifo", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "policy.json")
			if err := unix.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
			return p
		}, "not a regular file"},
		{"oversized", func(t *testing.T) string {
			return writePolicy(t, append([]byte(`{"version":1}`), make([]byte, 1<<20)...), 0o644)
		}, "larger than 1048576 bytes"},
		{"malformed", func(t *testing.T) string { return writePolicy(t, []byte(`{"version":1,`), 0o644) }, "invalid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path(t)
			_, err := admission.LoadPolicy(path)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("error: %v", err)
			case tc.want == "":
			case err == nil:
				t.Fatalf("loaded, want error containing %q", tc.want)
			case !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "policy "+path+": "):
				t.Errorf("error %q\nwant it to start with the path and contain %q", err, tc.want)
			case !errors.Is(err, nsmount.ErrInvalidArgument):
				t.Errorf("error %q is not ErrInvalidArgument", err)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		_, err := admission.LoadPolicy(filepath.Join(t.TempDir(), "none.json"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error %v, want fs.ErrNotExist", err)
		}
	})
}

func volume(t *testing.T, entry string) admission.VolumeRequest {
	t.Helper()
	vols, err := admission.ParseMountsAnnotation("[" + entry + "]")
	if err != nil {
		t.Fatalf("annotation %s: %v", entry, err)
	}
	return vols[0]
}

func TestPolicyCheck(t *testing.T) {
	p := loadExample(t)
	for _, tc := range []struct {
		name, entry string
		want        string // options of the allowed request, or "denied: " and a substring of the error
	}{
		{"literal", `{"server":"192.0.2.1","export":"/export","target":"/data"}`, "nosuid,nodev,noexec"},
		{"name", `{"server":"nfs.lab.test","export":"/export/team","target":"/mnt/x","options":"vers=4.2,nolock"}`, "vers=4.2,nolock,nosuid,nodev,noexec"},
		{"name-case-dot", `{"server":"NFS.Lab.Test.","export":"/export","target":"/data"}`, "nosuid,nodev,noexec"},
		{"suffix", `{"server":"a.b.storage.lab.test","export":"/export","target":"/data"}`, "nosuid,nodev,noexec"},
		{"restrictive-always-allowed", `{"server":"192.0.2.1","export":"/export","target":"/data","options":"ro,nosuid,noexec"}`, "ro,nosuid,nodev,noexec"},
		{"allowed-rw", `{"server":"192.0.2.1","export":"/export","target":"/data","options":"rw"}`, "rw,nosuid,nodev,noexec"},
		{"archive-vers", `{"server":"203.0.113.5","export":"/archive/2024","target":"/archive","options":"vers=4.2"}`, "nosuid,nodev,noexec,ro,vers=4.2"},
		{"archive-ro-given", `{"server":"archive.example.test","export":"/archive/x","target":"/archive","options":"ro"}`, "nosuid,nodev,noexec,ro,vers=4.2"},

		{"suffix-apex", `{"server":"storage.lab.test","export":"/export","target":"/data"}`, `denied: export "/export" of server "storage.lab.test" is not allowed (rule 1 "read-only archive")`},
		{"unknown-server", `{"server":"evil.example.test","export":"/archive/x","target":"/data"}`, `denied: target "/data" is not allowed (rule 1 "read-only archive")`},
		{"literal-outside", `{"server":"198.51.100.1","export":"/export","target":"/data"}`, `denied: server address 198.51.100.1 is outside the allowed networks (rule 1 "read-only archive")`},
		{"suid", `{"server":"192.0.2.1","export":"/export","target":"/data","options":"suid"}`, `denied: option "suid" is not allowed: nosuid is enforced (rule 0 "lab")`},
		{"dev", `{"server":"192.0.2.1","export":"/export","target":"/data","options":"dev"}`, `denied: option "dev" is not allowed: nodev is enforced`},
		{"exec", `{"server":"192.0.2.1","export":"/export","target":"/data","options":"exec"}`, `denied: option "exec" is not allowed: noexec is enforced`},
		{"rw-under-ro", `{"server":"203.0.113.5","export":"/archive/x","target":"/archive","options":"rw"}`, `denied: option "rw" is not allowed: ro is enforced (rule 1 "read-only archive")`},
		{"other-vers", `{"server":"203.0.113.5","export":"/archive/x","target":"/archive","options":"vers=3"}`, `denied: option "vers=3" is not allowed: vers=4.2 is enforced`},
		{"alias-vers", `{"server":"203.0.113.5","export":"/archive/x","target":"/archive","options":"nfsvers=4.2"}`, `denied: option "nfsvers" is not allowed`},
		{"option-not-listed", `{"server":"192.0.2.1","export":"/export","target":"/data","options":"port=2049"}`, `denied: option "port" is not allowed (rule 0 "lab")`},
		{"export", `{"server":"192.0.2.1","export":"/etc","target":"/data"}`, `denied: export "/etc" of server "192.0.2.1" is not allowed (rule 0 "lab")`},
		{"export-prefix-only", `{"server":"192.0.2.1","export":"/exported","target":"/data"}`, `denied: export "/exported"`},
		{"target", `{"server":"192.0.2.1","export":"/export","target":"/etc"}`, `denied: target "/etc" is not allowed (rule 0 "lab")`},
		{"target-pattern-base", `{"server":"192.0.2.1","export":"/export","target":"/mnt"}`, `denied: target "/mnt" is not allowed`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, adm, err := p.Check(volume(t, tc.entry))
			if want, denied := strings.CutPrefix(tc.want, "denied: "); denied {
				switch {
				case err == nil:
					t.Fatalf("allowed with options %s, want denied: %s", req.Options, want)
				case !strings.Contains(err.Error(), want):
					t.Errorf("error %q\nwant it to contain %q", err, want)
				case !errors.Is(err, nsmount.ErrDenied) || nsmount.ExitCode(err) != 11:
					t.Errorf("error %q is not ErrDenied (exit %d)", err, nsmount.ExitCode(err))
				case !strings.HasPrefix(err.Error(), "denied by policy "):
					t.Errorf("error %q does not say it is the policy", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("denied: %v", err)
			}
			if got := req.Options.String(); got != tc.want {
				t.Errorf("options %q, want %q", got, tc.want)
			}
			if adm == nil || adm.Rule != `rule 0 "lab"` && !strings.HasPrefix(adm.Rule, "rule ") || len(adm.Networks) == 0 {
				t.Errorf("allowed request has admission %+v, want its rule and networks", adm)
			}
			if adm != nil && adm.Options != req.Options.String() {
				t.Errorf("admission records options %q, request has %q", adm.Options, req.Options)
			}
		})
	}
}

func TestPolicyCheckUnclean(t *testing.T) {
	p := loadExample(t)
	for _, v := range []admission.VolumeRequest{
		{Source: nsmount.Source{Server: "192.0.2.1", Export: "/export/../etc"}, FSType: "nfs", Target: "/data"},
		{Source: nsmount.Source{Server: "192.0.2.1", Export: "/export"}, FSType: "nfs", Target: "/mnt/../etc"},
		{Source: nsmount.Source{Server: "192.0.2.1", Export: "/export//"}, FSType: "nfs", Target: "/data"},
	} {
		if _, _, err := p.Check(v); !errors.Is(err, nsmount.ErrDenied) {
			t.Errorf("Check(%s) = %v, want denied", v, err)
		}
	}
}

func TestPolicyDenyAll(t *testing.T) {
	p, err := admission.ParsePolicy([]byte(`{"version":1}`))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = p.Check(volume(t, `{"server":"192.0.2.1","export":"/export","target":"/data"}`))
	if !errors.Is(err, nsmount.ErrDenied) || !strings.Contains(err.Error(), "no rule allows any mount (deny by default)") {
		t.Errorf("error %v, want deny by default", err)
	}
}

// TestAdmissionAllows: the admission of an allowed request checks the
// address its server resolves to, at the mount and at every later decision.
func TestAdmissionAllows(t *testing.T) {
	p := loadExample(t)
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name, entry string
		addr        netip.Addr
		want        string // "" allowed, else a substring of the denial
	}{
		{"in-network", `{"server":"nfs.lab.test","export":"/export","target":"/data"}`, a("192.0.2.77"), ""},
		{"v6-in-network", `{"server":"nfs.lab.test","export":"/export","target":"/data"}`, a("2001:db8:a::1"), ""},
		{"v4-mapped", `{"server":"nfs.lab.test","export":"/export","target":"/data"}`, a("::ffff:192.0.2.77"), ""},
		{"resolved-outside", `{"server":"nfs.lab.test","export":"/export","target":"/data"}`, a("198.51.100.7"),
			`server "nfs.lab.test" resolved to 198.51.100.7, outside the networks of rule 0 "lab"`},
		{"other-rule-network", `{"server":"nfs.lab.test","export":"/export","target":"/data"}`, a("203.0.113.5"), "outside the networks of rule 0"},
		{"zoned", `{"server":"nfs.lab.test","export":"/export","target":"/data"}`, a("2001:db8:a::1%eth0"), "outside the networks"},
		{"no-address", `{"server":"nfs.lab.test","export":"/export","target":"/data"}`, netip.Addr{}, "no address to check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, adm, err := p.Check(volume(t, tc.entry))
			if err != nil {
				t.Fatal(err)
			}
			err = adm.Allows(tc.addr)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("denied: %v", err)
			case tc.want == "":
			case err == nil:
				t.Errorf("allowed, want denied: %s", tc.want)
			case !strings.Contains(err.Error(), tc.want) || !errors.Is(err, nsmount.ErrDenied):
				t.Errorf("error %q, want ErrDenied containing %q", err, tc.want)
			}
		})
	}
}

// TestAdmissionRecorded: an admission survives a JSON round trip (it is
// recorded with the mount) and still decides the same; a missing one
// allows nothing.
func TestAdmissionRecorded(t *testing.T) {
	p := loadExample(t)
	_, adm, err := p.Check(volume(t, `{"server":"nfs.lab.test","export":"/export","target":"/data"}`))
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(adm)
	if err != nil {
		t.Fatal(err)
	}
	var back *admission.Admission
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(adm, back) {
		t.Errorf("round trip: %+v, want %+v", back, adm)
	}
	if err := back.Allows(netip.MustParseAddr("192.0.2.9")); err != nil {
		t.Errorf("recorded admission denies an address of its network: %v", err)
	}
	if err := back.Allows(netip.MustParseAddr("198.51.100.9")); !errors.Is(err, nsmount.ErrDenied) {
		t.Errorf("recorded admission allows an address outside its networks: %v", err)
	}
	if !strings.HasPrefix(adm.Digest, "sha256:") || adm.Policy == "" {
		t.Errorf("admission does not name its policy: %+v", adm)
	}
	var none *admission.Admission
	if err := none.Allows(netip.MustParseAddr("192.0.2.9")); !errors.Is(err, nsmount.ErrDenied) {
		t.Errorf("nil admission allows: %v", err)
	}
}

// TestLoadOrDeny: a missing policy file denies every mount; a file that is
// there but unusable is an error, never taken for no policy.
func TestLoadOrDeny(t *testing.T) {
	dir := t.TempDir()
	entry := `{"server":"192.0.2.1","export":"/export","target":"/data"}`
	for _, tc := range []struct {
		name  string
		path  func() string
		class error  // of LoadOrDeny's error; nil: loads
		check string // with a policy: a substring of Check's denial, "" allowed
	}{
		{name: "missing", path: func() string { return filepath.Join(dir, "missing.json") },
			check: "denied: policy " + filepath.Join(dir, "missing.json") + " does not exist (deny by default)"},
		{name: "missing-dir", path: func() string { return filepath.Join(dir, "nodir", "policy.json") },
			check: "does not exist (deny by default)"},
		{name: "good", path: func() string {
			data, err := os.ReadFile("testdata/policies/good_example.json")
			if err != nil {
				t.Fatal(err)
			}
			return writePolicy(t, data, 0o644)
		}},
		{name: "malformed", path: func() string { return writePolicy(t, []byte(`{"version": 1, "allow": [{}]}`), 0o644) }, class: nsmount.ErrInvalidArgument},
		{name: "group-writable", path: func() string { return writePolicy(t, []byte(`{"version": 1}`), 0o664) }, class: nsmount.ErrInvalidArgument},
		{name: "directory", path: func() string { return dir }, class: nsmount.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := admission.LoadOrDeny(tc.path())
			if tc.class != nil {
				if !errors.Is(err, tc.class) || p != nil {
					t.Fatalf("LoadOrDeny = %v, %v; want no policy and %v", p, err, tc.class)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadOrDeny: %v", err)
			}
			_, adm, err := p.Check(volume(t, entry))
			switch {
			case tc.check == "" && err != nil:
				t.Errorf("Check: %v", err)
			case tc.check != "" && (!errors.Is(err, nsmount.ErrDenied) || !strings.Contains(err.Error(), tc.check) || adm != nil):
				t.Errorf("Check = %v, %v; want denied with %q", adm, err, tc.check)
			}
		})
	}
	if _, err := admission.LoadOrDeny(filepath.Join(writePolicy(t, nil, 0o644), "x")); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadOrDeny below a file: %v; want an error that is not not-exist", err)
	}
}
