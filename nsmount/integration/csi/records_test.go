package csi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nsmount/nsmount/nsmount"
)

func testRecord(t *testing.T, target, uid string) *Record {
	t.Helper()
	ctx := goodContext()
	ctx[KeyPodUID] = uid
	v, err := ParseVolume("vol-"+filepath.Base(target), target, mountCapability(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, ""), true, ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &Record{Volume: *v, Published: time.Unix(1700000000, 0).UTC(), State: StatePending}
}

func TestStoreRoundTrip(t *testing.T) {
	s, err := openStore(filepath.Join(t.TempDir(), "csi"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(s.dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("store dir %v, %v: want mode 0700", fi.Mode(), err)
	}
	other := "00000000-0000-4000-8000-000000000000"
	a, b, c := testRecord(t, "/tmp/a", testUID), testRecord(t, "/tmp/b", testUID), testRecord(t, "/tmp/c", other)
	c.State = StateMounted
	c.Mount = &MountState{NetNS: nsmount.NSID{Dev: 4, Ino: 4026532000}, NetNSPath: "/var/run/netns/cni-1", Entry: "4026531841:77", MountID: 77, Dev: "0:55", Address: "192.0.2.10"}
	for _, r := range []*Record{a, b, c} {
		if err := s.put(r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.get("/tmp/c")
	if err != nil || got == nil {
		t.Fatalf("get: %v, %v", got, err)
	}
	if !got.sameRequest(&c.Volume) || got.State != StateMounted || *got.Mount != *c.Mount || got.Volume.Options.String() != "vers=4.2,hard,ro" {
		t.Errorf("read back %+v (mount %+v), want %+v", got, got.Mount, c)
	}
	if r, err := s.get("/tmp/none"); r != nil || err != nil {
		t.Errorf("get of an unrecorded path: %v, %v", r, err)
	}
	pod, problems, err := s.ofPod(testUID)
	if err != nil || len(problems) != 0 || len(pod) != 2 || pod[0].Volume.TargetPath != "/tmp/a" || pod[1].Volume.TargetPath != "/tmp/b" {
		t.Errorf("ofPod = %v, %v, %v; want /tmp/a, /tmp/b", pod, problems, err)
	}
	if err := s.remove("/tmp/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.remove("/tmp/a"); err != nil {
		t.Errorf("second remove: %v", err)
	}
	all, _, _ := s.list()
	if len(all) != 2 {
		t.Errorf("%d records after a remove, want 2", len(all))
	}
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

// TestStoreRefusesBadFiles: a record file that is torn, edited, of
// another version or filed under another path's name is reported and
// never used.
func TestStoreRefusesBadFiles(t *testing.T) {
	s, err := openStore(filepath.Join(t.TempDir(), "csi"))
	if err != nil {
		t.Fatal(err)
	}
	good := testRecord(t, "/tmp/good", testUID)
	if err := s.put(good); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(s.file("/tmp/good"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, tc := range []struct {
		name, target, content, want string
	}{
		{"torn", "/tmp/torn", text[:len(text)/2], "unexpected EOF"},
		{"unknown field", "/tmp/field", strings.Replace(text, `"state"`, `"stat": 1, "state"`, 1), `unknown field "stat"`},
		{"version", "/tmp/version", strings.Replace(text, `"version": 1`, `"version": 2`, 1), "format version 2"},
		{"state", "/tmp/state", strings.Replace(text, `"state": "pending"`, `"state": "weird"`, 1), `state "weird"`},
		{"mounted without mount", "/tmp/mounted", strings.Replace(text, `"state": "pending"`, `"state": "mounted"`, 1), "no mount recorded"},
		{"bad source", "/tmp/source", strings.Replace(text, `"source": "nfs.team-a.svc.cluster.local:/export/a"`, `"source": "nfs"`, 1), "invalid source"},
		{"wrong name", "/tmp/other", text, "filed under the wrong name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(s.file(tc.target), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(s.file(tc.target))
			all, problems, err := s.list()
			if err != nil || len(all) != 1 || len(problems) != 1 || !strings.Contains(problems[0], tc.want) {
				t.Errorf("list = %d records, problems %q, %v; want the good one and a problem with %q", len(all), problems, err, tc.want)
			}
			if tc.name == "wrong name" {
				if _, err := s.get(tc.target); err == nil || !strings.Contains(err.Error(), "is for /tmp/good") {
					t.Errorf("get of a misfiled record: %v", err)
				}
			}
		})
	}
}
