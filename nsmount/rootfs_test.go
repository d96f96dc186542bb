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
	if _, err := nsmount.Unmount(context.Background(), tgt, "/etc", nsmount.UnmountOptions{}); !errors.Is(err, nsmount.ErrNotMounted) {
		t.Errorf("Unmount(/etc) = %v, want ErrNotMounted", err)
	}
	if _, err := nsmount.Unmount(context.Background(), tgt, "/proc", nsmount.UnmountOptions{}); !errors.Is(err, nsmount.ErrUnsafePath) {
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

// TestExplainThenMountPlan: Explain decides (the server resolved and
// checked) without touching the container's files, so a caller can look
// at the plan (a policy, stale state) before MountPlan carries it out; only
// then is the mount point created, inside rootfs.
func TestExplainThenMountPlan(t *testing.T) {
	pid := startTarget(t)
	rootfs := rootfsIn(t, "192.0.2.9")
	tgt, err := nsmount.OpenPIDRootfs(pid, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	listenInTarget(t, tgt, pid, "192.0.2.9")
	src := nsmount.Source{Server: "nfs.rootfs.test", Export: "/export"}
	req := nsmount.Request{Source: src, Target: "/data", Mkdir: true, ProbeTimeout: 2 * time.Second}
	plan, err := nsmount.Explain(context.Background(), tgt, req)
	if err != nil {
		t.Fatalf("Explain: %v", err)
	}
	if plan.Address != netip.MustParseAddr("192.0.2.9") || plan.Mountpoint != "/data" || plan.NFSPort != 2049 {
		t.Errorf("plan address %v mount point %q port %d, want 192.0.2.9, /data, 2049", plan.Address, plan.Mountpoint, plan.NFSPort)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Explain created the mount point (%v)", err)
	}
	// A plan is for its target only.
	other := startTarget(t)
	ot, err := nsmount.OpenPID(other)
	if err != nil {
		t.Fatal(err)
	}
	defer ot.Close()
	if _, err := nsmount.MountPlan(context.Background(), ot, plan); !errors.Is(err, nsmount.ErrInvalidArgument) {
		t.Errorf("MountPlan in another netns = %v, want ErrInvalidArgument", err)
	}
	// Carried out, the helper creates the mount point inside rootfs; the
	// host kernel has no NFS, so the mount itself fails there.
	_, err = nsmount.MountPlan(context.Background(), tgt, plan)
	if !errors.Is(err, nsmount.ErrMountFailed) {
		t.Fatalf("MountPlan = %v, want ErrMountFailed (no NFS in the host kernel)", err)
	}
	t.Logf("mount: %v", err)
	if fi, err := os.Lstat(filepath.Join(rootfs, "data")); err != nil || !fi.IsDir() {
		t.Errorf("mount point not created inside rootfs: %v", err)
	}
}

// TestExplainChecksTargetFirst: what needs no network is checked before
// it (defect 8: a relative target used to be reported as a DNS failure).
// The server is a name that only a nameserver that never answers could
// resolve: any lookup would cost the resolver's timeout and fail
// ErrUnreachable.
func TestExplainChecksTargetFirst(t *testing.T) {
	pid := startTarget(t)
	rootfs := rootfsIn(t, "192.0.2.9") // resolv.conf: nameserver 127.0.0.1 (nothing listens)
	if err := os.MkdirAll(filepath.Join(rootfs, "file-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "afile"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tgt, err := nsmount.OpenPIDRootfs(pid, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	src := nsmount.Source{Server: "nfs.only-dns.test", Export: "/export"}
	for _, tc := range []struct {
		name, target string
		mkdir        bool
		want         error
		text         string
	}{
		{"relative", "relative", false, nsmount.ErrInvalidArgument, `target "relative": must be an absolute path`},
		{"missing", "/missing", false, nsmount.ErrUnsafePath, "does not exist in the container (use --mkdir)"},
		{"a file", "/afile", false, nsmount.ErrUnsafePath, "not a directory"},
		{"root", "/file-dir/../..", false, nsmount.ErrUnsafePath, "resolves to the container's root"},
		{"missing with mkdir reaches the network", "/missing", true, nsmount.ErrUnreachable, "nfs.only-dns.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nsmount.Explain(context.Background(), tgt, nsmount.Request{Source: src, Target: tc.target, Mkdir: tc.mkdir, ProbeTimeout: time.Second})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("Explain = %v, want %v saying %q", err, tc.want, tc.text)
			}
		})
	}
}
