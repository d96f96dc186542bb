package cachectl

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// testEntry is a full entry as Manager.Mount records it.
func testEntry(id string) registry.Entry {
	return registry.Entry{
		ID: id,
		Target: registry.Identity{
			PID: 4242, PIDStart: 324581,
			NetNS: nsmount.NSID{Dev: 4, Ino: 4026532281}, MountNS: nsmount.NSID{Dev: 4, Ino: 4026532280},
			Container: "ctr-" + id,
		},
		Mountpoint: "/data", MountID: 530, Dev: "0:53",
		Source: "198.51.100.1:/export", Server: "198.51.100.1", Address: "198.51.100.1",
		Route:      registry.Route{Iface: "eth0", Source: "198.51.100.2"},
		ClientAddr: "198.51.100.2",
		FSType:     "nfs", Version: "4.2",
		Params:   "vers=4.2,addr=198.51.100.1,clientaddr=198.51.100.2",
		Request:  registry.RequestRecord{Source: "198.51.100.1:/export", FSType: "nfs", Options: "vers=4.2"},
		ClientID: "nsmount-0b6c", Owner: "cli",
		Created: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
	}
}

// openManager opens a Manager on a fresh registry that reads proc.
func openManager(t testing.TB, proc kernel.Proc) *Manager {
	t.Helper()
	m, err := Open(Config{StateDir: filepath.Join(t.TempDir(), "nsmDreg"), Proc: proc})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func viewState(t testing.TB, r *registry.Registry) *registry.State {
	t.Helper()
	var got *registry.State
	if err := r.View(func(s *registry.State) error { got = s; return nil }); err != nil {
		t.Fatalf("View: %v", err)
	}
	return got
}

func ids(s *registry.State) []string {
	var out []string
	for _, e := range s.Entries {
		out = append(out, e.ID)
	}
	return out
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	case err != nil && strings.Contains(err.Error(), "\n"):
		t.Fatalf("error has a newline: %q", err)
	}
}
