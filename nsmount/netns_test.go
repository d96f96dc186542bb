package nsmount_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
)

// TestOpenNetNS: a network namespace opened by path is a target without a
// mount namespace; what is not a network namespace is refused by class.
func TestOpenNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network namespaces")
	}
	dir, err := os.MkdirTemp("", "nsmC-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	for _, tt := range []struct {
		path  string
		class error
	}{
		{"", nsmount.ErrInvalidArgument},
		{"/run/netns/nsmC-missing", nsmount.ErrTargetNotFound},
		{file, nsmount.ErrInvalidArgument},
		{"/proc/self/ns/mnt", nsmount.ErrInvalidArgument},
	} {
		if _, err := nsmount.OpenNetNS(tt.path); !errors.Is(err, tt.class) {
			t.Errorf("OpenNetNS(%q) = %v; want %v", tt.path, err, tt.class)
		}
	}
	const name = "nsmC-u0"
	exec.Command("ip", "netns", "del", name).Run() // left by a killed run
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	path := "/run/netns/" + name
	tg, err := nsmount.OpenNetNS(path)
	if err != nil {
		t.Fatalf("OpenNetNS: %v", err)
	}
	defer tg.Close()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Ino != tg.NetNSInode() || tg.NetNS() != (nsmount.NSID{Dev: st.Dev, Ino: st.Ino}) {
		t.Fatalf("NetNS %v; the netns file has %d:%d (%v)", tg.NetNS(), st.Dev, st.Ino, err)
	}
	if !tg.MountNS().IsZero() || tg.PID() != 0 {
		t.Errorf("netns-only target has mntns %v, pid %d; want none", tg.MountNS(), tg.PID())
	}
	if _, err := nsmount.Explain(context.Background(), tg, nsmount.Request{Source: nsmount.Source{Server: "nfs", Export: "/"}}); !errors.Is(err, nsmount.ErrInvalidArgument) || !strings.Contains(err.Error(), "no mount namespace") {
		t.Fatalf("Explain by name on a netns-only target: %v; want a clear invalid argument", err)
	}
}
