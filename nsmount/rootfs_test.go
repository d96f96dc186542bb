package nsmount_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/nsmount"
)

// listenInTarget gives the target's lo the address addr and accepts TCP
// connections on addr:2049 there (a socket keeps the netns it was made in),
// so that the preflight check of a mount passes. Nothing leaves the netns.
func listenInTarget(t *testing.T, tgt *nsmount.Target, pid int, addr string) {
	t.Helper()
	setLoUp(t, pid)
	out, err := exec.Command("nsenter", "--target", fmt.Sprint(pid), "--net", "ip", "addr", "add", addr+"/32", "dev", "lo").CombinedOutput()
	if err != nil {
		t.Fatalf("add %s to lo of target %d: %v: %s", addr, pid, err, out)
	}
	var ln net.Listener
	err = tgt.Do(nsmount.NetNS, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(addr, "2049"))
		return err
	})
	if err != nil {
		t.Fatalf("listen in target: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// rootfsIn makes a container root directory with /etc/hosts naming addr
// nfs.rootfs.test; the host's /etc/hosts does not know that name.
func rootfsIn(t *testing.T, addr string) string {
	t.Helper()
	rootfs := filepath.Join(tempDir(t), "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf("127.0.0.1 localhost\n%s nfs.rootfs.test\n", addr)
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "hosts"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return rootfs
}

func TestOpenPIDRootfs(t *testing.T) {
	pid := startTarget(t)
	rootfs := rootfsIn(t, "192.0.2.9")
	tgt, err := nsmount.OpenPIDRootfs(pid, rootfs)
	if err != nil {
		t.Fatalf("OpenPIDRootfs: %v", err)
	}
	defer tgt.Close()
	if !strings.Contains(tgt.String(), rootfs) || tgt.PID() != pid {
		t.Errorf("target %q (pid %d), want pid %d and rootfs %s", tgt, tgt.PID(), pid, rootfs)
	}

	// Names are resolved with the rootfs's files, not the process root's.
	plan, err := nsmount.Explain(context.Background(), tgt, nsmount.Request{Source: nsmount.Source{Server: "nfs.rootfs.test", Export: "/e"}})
	if !errors.Is(err, nsmount.ErrUnreachable) {
		t.Fatalf("Explain = %v, want ErrUnreachable (no route)", err)
	}
	if r := plan.Resolution; r == nil || r.Source != "hosts" || len(r.Addrs) != 1 || r.Addrs[0] != netip.MustParseAddr("192.0.2.9") {
		t.Errorf("resolution %+v, want 192.0.2.9 from the rootfs's hosts", r)
	}

	// Targets are resolved inside rootfs: /etc is rootfs/etc there.
	if err := nsmount.Unmount(context.Background(), tgt, "/etc", nsmount.UnmountOptions{}); !errors.Is(err, nsmount.ErrNotMounted) {
		t.Errorf("Unmount(/etc) = %v, want ErrNotMounted", err)
	}
	if err := nsmount.Unmount(context.Background(), tgt, "/proc", nsmount.UnmountOptions{}); !errors.Is(err, nsmount.ErrUnsafePath) {
		t.Errorf("Unmount(/proc) = %v, want ErrUnsafePath (no /proc in the rootfs)", err)
	}

	for _, tc := range []struct {
		name, rootfs string
		want         error
	}{
		{"relative", "rootfs", nsmount.ErrInvalidArgument},
		{"unclean", rootfs + "/../rootfs", nsmount.ErrInvalidArgument},
		{"missing", rootfs + "-missing", nsmount.ErrTargetNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tgt, err := nsmount.OpenPIDRootfs(pid, tc.rootfs)
			if tgt != nil {
				tgt.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("OpenPIDRootfs(%q) = %v, want %v", tc.rootfs, err, tc.want)
			}
		})
	}
}

// TestMountVerify: Request.Verify sees the plan after the server was
// resolved and checked, and a refusal stops the mount before the helper
// runs (no mount point is created).
func TestMountVerify(t *testing.T) {
	pid := startTarget(t)
	rootfs := rootfsIn(t, "192.0.2.9")
	tgt, err := nsmount.OpenPIDRootfs(pid, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	listenInTarget(t, tgt, pid, "192.0.2.9")
	src := nsmount.Source{Server: "nfs.rootfs.test", Export: "/export"}
	denied := errors.New("refused by test")

	var seen netip.Addr
	req := nsmount.Request{Source: src, Target: "/data", Mkdir: true, ProbeTimeout: 2 * time.Second,
		Verify: func(p *nsmount.Plan) error { seen = p.Address; return denied }}
	if _, err := nsmount.Mount(context.Background(), tgt, req); !errors.Is(err, denied) {
		t.Fatalf("Mount = %v, want the Verify error", err)
	}
	if seen != netip.MustParseAddr("192.0.2.9") {
		t.Errorf("Verify saw address %v, want 192.0.2.9", seen)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount point created although Verify refused (%v)", err)
	}

	// Approved, the helper runs: it creates the mount point inside rootfs;
	// the host kernel has no NFS, so the mount itself fails there.
	req.Verify = func(*nsmount.Plan) error { return nil }
	_, err = nsmount.Mount(context.Background(), tgt, req)
	if !errors.Is(err, nsmount.ErrMountFailed) {
		t.Fatalf("Mount = %v, want ErrMountFailed (no NFS in the host kernel)", err)
	}
	t.Logf("approved mount: %v", err)
	if fi, err := os.Lstat(filepath.Join(rootfs, "data")); err != nil || !fi.IsDir() {
		t.Errorf("mount point not created inside rootfs: %v", err)
	}
}
