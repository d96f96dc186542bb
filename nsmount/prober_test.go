package nsmount_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
)

// mountHungFuseIn mounts a FUSE filesystem at dir in tgt's mount namespace
// whose daemon never answers (not even FUSE_INIT): every access but the
// path walk to its root waits, killably, until /dev/fuse is closed at the
// end of the test. A stand-in for a hung NFS server on a host without NFS.
func mountHungFuseIn(t *testing.T, tgt *nsmount.Target, dir string) {
	t.Helper()
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no FUSE: %v", err)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", dev.Fd())
	err = tgt.Do(nsmount.MountNS, func() error { return unix.Mount("nsmM-hung", dir, "fuse", unix.MS_NOSUID|unix.MS_NODEV, opts) })
	if err != nil {
		dev.Close()
		t.Skipf("mount fuse at %s in %s: %v", dir, tgt, err)
	}
	t.Cleanup(func() {
		dev.Close() // aborts the connection: waiters fail with ENOTCONN
		tgt.Do(nsmount.MountNS, func() error { return unix.Unmount(dir, unix.MNT_DETACH) })
	})
}

// proberHelpers returns the PIDs of this process's children that serve a
// Prober.
func proberHelpers(t *testing.T) []int {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, p := range stats {
		b, err := os.ReadFile(p)
		i := bytes.LastIndexByte(b, ')')
		if err != nil || i < 0 {
			continue
		}
		var pid, ppid int
		var state string
		fmt.Sscanf(string(b), "%d", &pid)
		fmt.Sscanf(string(b[i+2:]), "%s %d", &state, &ppid)
		if ppid != os.Getpid() || state == "Z" {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
		if bytes.HasPrefix(cmdline, []byte("nsmount-helper\x00serve-probes")) {
			out = append(out, pid)
		}
	}
	return out
}

// waitHelpers waits (5 s at most) until exactly n Prober helpers run.
func waitHelpers(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := proberHelpers(t)
		if len(got) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("prober helpers %v, want %d", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Many probes at once go through one helper, each with the helper's own
// answer.
func TestProberConcurrent(t *testing.T) {
	tgt, _ := openTarget(t)
	dir := tempDir(t)
	mountTmpfsIn(t, tgt, dir)
	p := nsmount.NewProber("")
	defer p.Close()
	const n = 40
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, err := p.Probe(context.Background(), tgt, dir, 0, 20*time.Second)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, nsmount.ErrNotMounted) {
			t.Errorf("Probe of a tmpfs = %v, want ErrNotMounted", err)
		}
	}
	if _, err := p.Probe(context.Background(), tgt, "/nsmM-missing", 0, 20*time.Second); !errors.Is(err, nsmount.ErrUnsafePath) {
		t.Errorf("Probe of a missing target = %v, want ErrUnsafePath", err)
	}
	if got := p.Started(); got != 1 {
		t.Errorf("%d probes started %d helpers, want 1", n+1, got)
	}
	waitHelpers(t, 1)
	p.Close()
	waitHelpers(t, 0)
	if _, err := p.Probe(context.Background(), tgt, dir, 0, time.Second); err == nil {
		t.Error("Probe after Close succeeded")
	}
	waitNoThreadAway(t)
}

// A probe that hangs is reported hung at its timeout and retires its
// helper, which is killed once its other probes are done; probes of other
// mounts answer meanwhile, from a new helper.
func TestProberHungProbe(t *testing.T) {
	tgt, _ := openTarget(t)
	ok, hung := tempDir(t), tempDir(t)
	mountTmpfsIn(t, tgt, ok)
	mountHungFuseIn(t, tgt, hung)
	p := nsmount.NewProber("")
	defer p.Close()
	if _, err := p.Probe(context.Background(), tgt, ok, 0, 5*time.Second); !errors.Is(err, nsmount.ErrNotMounted) {
		t.Fatalf("Probe of a tmpfs = %v, want ErrNotMounted", err)
	}
	type result struct {
		h   nsmount.Health
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		h, err := p.Probe(context.Background(), tgt, hung, 0, 700*time.Millisecond)
		done <- result{h, err}
	}()
	// Meanwhile (the hung probe is in the first helper): others answer.
	for i := 0; i < 5; i++ {
		t0 := time.Now()
		if _, err := p.Probe(context.Background(), tgt, ok, 0, 5*time.Second); !errors.Is(err, nsmount.ErrNotMounted) {
			t.Errorf("Probe of a tmpfs beside a hung one = %v", err)
		}
		if d := time.Since(t0); d > 400*time.Millisecond {
			t.Errorf("a probe beside a hung one took %v", d)
		}
	}
	r := <-done
	if r.err != nil || !r.h.Hung {
		t.Fatalf("Probe of a hung FUSE mount = %+v, %v; want hung", r.h, r.err)
	}
	if d := time.Since(start); d < 700*time.Millisecond || d > 3*time.Second {
		t.Errorf("the hung probe returned after %v, its timeout is 700ms", d)
	}
	// The first helper, stuck in the kernel, is killed; the next probe
	// starts another.
	waitHelpers(t, 0)
	if _, err := p.Probe(context.Background(), tgt, ok, 0, 5*time.Second); !errors.Is(err, nsmount.ErrNotMounted) {
		t.Errorf("Probe after the hung one = %v", err)
	}
	if got := p.Started(); got != 2 {
		t.Errorf("helpers started: %d, want 2", got)
	}
	waitHelpers(t, 1)
}

func TestHealthString(t *testing.T) {
	tests := []struct {
		h    nsmount.Health
		want string
	}{
		{nsmount.Health{}, "ok"},
		{nsmount.Health{Hung: true, Error: "no answer in 3s"}, "hung"},
		{nsmount.Health{Errno: unix.ESTALE}, "ESTALE"},
		{nsmount.Health{Errno: nsmount.EBADHANDLE}, "EBADHANDLE"},
		{nsmount.Health{Errno: unix.EIO}, "EIO"},
		{nsmount.Health{Errno: 528}, "errno 528"},
		{nsmount.Health{Error: "helper failed"}, "error"},
	}
	for _, tt := range tests {
		if got := tt.h.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.h, got, tt.want)
		}
	}
}
