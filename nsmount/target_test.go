package nsmount_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
)

// The test process's own namespaces, read before any test runs Target.Do.
var hostNetNS, hostMntNS = func() (string, string) {
	n, _ := os.Readlink("/proc/self/ns/net")
	m, _ := os.Readlink("/proc/self/ns/mnt")
	return n, m
}()

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates namespaces and mounts")
	}
}

// startTarget starts a process in fresh mount (private propagation), network
// and UTS namespaces, as a container would be, and returns its pid. The
// process is killed and reaped when the test ends.
func startTarget(t *testing.T) int {
	t.Helper()
	requireRoot(t)
	// No Pdeathsig: it fires when the forking OS thread exits, and threads
	// that ran Target.Do exit by design.
	cmd := exec.Command("unshare", "--mount", "--net", "--uts", "--propagation", "private", "sleep", "600")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start target: %v", err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	self := nsLink(t, "/proc/self/ns/net")
	deadline := time.Now().Add(5 * time.Second)
	for {
		// unshare execs sleep once the namespaces and propagation are set.
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		net, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if strings.TrimSpace(string(comm)) == "sleep" && net != "" && net != self {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("target %d did not enter its namespaces (comm %q, net %q): %s", pid, comm, net, stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// openTarget starts a target process and opens it.
func openTarget(t *testing.T) (*nsmount.Target, int) {
	t.Helper()
	pid := startTarget(t)
	tgt, err := nsmount.OpenPID(pid)
	if err != nil {
		t.Fatalf("OpenPID(%d): %v", pid, err)
	}
	t.Cleanup(func() { tgt.Close() })
	return tgt, pid
}

// nsLink returns a namespace link's text, e.g. "net:[4026531840]".
func nsLink(t *testing.T, path string) string {
	t.Helper()
	s, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// tempDir returns a fresh directory with symlinks resolved, so that it
// matches mountinfo's mount points.
func tempDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// mountedAt reports whether mountinfo text lists a mount at dir, and its type.
func mountedAt(t *testing.T, mountinfoPath, dir string) (string, bool) {
	t.Helper()
	f, err := os.Open(mountinfoPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mounts, err := mountinfo.GetMountsFromReader(f, mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatalf("parse %s: %v", mountinfoPath, err)
	}
	if len(mounts) == 0 {
		return "", false
	}
	return mounts[0].FSType, true
}

// mountTmpfsIn mounts a tmpfs at dir inside tgt's mount namespace and
// unmounts it when the test ends (if it is still there).
func mountTmpfsIn(t *testing.T, tgt *nsmount.Target, dir string) {
	t.Helper()
	err := tgt.Do(nsmount.MountNS|nsmount.NetNS, func() error {
		return unix.Mount("nsmt-tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=64k")
	})
	if err != nil {
		t.Fatalf("mount tmpfs at %s in %s: %v", dir, tgt, err)
	}
	t.Cleanup(func() {
		tgt.Do(nsmount.MountNS, func() error { return unix.Unmount(dir, unix.MNT_DETACH) })
	})
}

func TestOpenPIDInodes(t *testing.T) {
	tgt, pid := openTarget(t)
	if got, want := tgt.NetNSInode(), nsInode(t, fmt.Sprintf("/proc/%d/ns/net", pid)); got != want || got == 0 {
		t.Errorf("NetNSInode = %d, want %d", got, want)
	}
	if got, want := tgt.MountNSInode(), nsInode(t, fmt.Sprintf("/proc/%d/ns/mnt", pid)); got != want || got == 0 {
		t.Errorf("MountNSInode = %d, want %d", got, want)
	}
	if tgt.NetNSInode() == nsInode(t, "/proc/self/ns/net") {
		t.Error("target netns inode equals the test's own")
	}
	if tgt.PID() != pid {
		t.Errorf("PID = %d, want %d", tgt.PID(), pid)
	}
}

func TestDoEntersNamespaces(t *testing.T) {
	tgt, pid := openTarget(t)
	targetNet := nsLink(t, fmt.Sprintf("/proc/%d/ns/net", pid))
	targetMnt := nsLink(t, fmt.Sprintf("/proc/%d/ns/mnt", pid))
	hostNet := nsLink(t, "/proc/thread-self/ns/net")
	hostMnt := nsLink(t, "/proc/thread-self/ns/mnt")

	tests := []struct {
		name             string
		which            nsmount.Namespaces
		wantNet, wantMnt string
	}{
		{"net", nsmount.NetNS, targetNet, hostMnt},
		{"mnt", nsmount.MountNS, hostNet, targetMnt},
		{"net and mnt", nsmount.NetNS | nsmount.MountNS, targetNet, targetMnt},
		{"none", 0, hostNet, hostMnt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotNet, gotMnt string
			err := tgt.Do(tt.which, func() error {
				var err error
				if gotNet, err = os.Readlink("/proc/thread-self/ns/net"); err != nil {
					return err
				}
				gotMnt, err = os.Readlink("/proc/thread-self/ns/mnt")
				return err
			})
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			if gotNet != tt.wantNet || gotMnt != tt.wantMnt {
				t.Errorf("inside Do: net %s mnt %s; want net %s mnt %s", gotNet, gotMnt, tt.wantNet, tt.wantMnt)
			}
			// The caller's own thread never moves.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if n, m := nsLink(t, "/proc/thread-self/ns/net"), nsLink(t, "/proc/thread-self/ns/mnt"); n != hostNet || m != hostMnt {
				t.Errorf("caller's thread is now in net %s mnt %s", n, m)
			}
		})
	}
}

func TestDoMountIsInTargetOnly(t *testing.T) {
	tgt, pid := openTarget(t)
	dir := tempDir(t)
	mountTmpfsIn(t, tgt, dir)

	if fstype, ok := mountedAt(t, fmt.Sprintf("/proc/%d/mountinfo", pid), dir); !ok || fstype != "tmpfs" {
		t.Errorf("target's mountinfo: mount at %s = %q, %v; want tmpfs", dir, fstype, ok)
	}
	// /proc/self/mountinfo is the main thread's view; ask this thread.
	runtime.LockOSThread()
	if mnt := nsLink(t, "/proc/thread-self/ns/mnt"); mnt != hostMntNS {
		t.Fatalf("test goroutine's thread is in mount namespace %s, not the host's %s", mnt, hostMntNS)
	}
	fstype, leaked := mountedAt(t, "/proc/thread-self/mountinfo", dir)
	runtime.UnlockOSThread()
	if leaked {
		t.Errorf("host mountinfo lists a %s mount at %s: the mount leaked to the host", fstype, dir)
	}
	if err := tgt.Do(nsmount.MountNS|nsmount.NetNS, func() error { return unix.Unmount(dir, 0) }); err != nil {
		t.Fatalf("unmount inside target: %v", err)
	}
	if _, ok := mountedAt(t, fmt.Sprintf("/proc/%d/mountinfo", pid), dir); ok {
		t.Errorf("mount at %s still in target after unmount", dir)
	}
}

// threadsAway lists the test process's threads that are not in the
// process's own namespaces (hostNetNS, hostMntNS).
func threadsAway() []string {
	tasks, _ := filepath.Glob("/proc/self/task/*")
	var away []string
	for _, task := range tasks {
		for _, ns := range []struct{ file, want string }{{"net", hostNetNS}, {"mnt", hostMntNS}} {
			if l, err := os.Readlink(task + "/ns/" + ns.file); err == nil && l != ns.want {
				away = append(away, filepath.Base(task)+":"+l)
			}
		}
	}
	return away
}

// waitNoThreadAway waits for the threads that ran Target.Do to exit: Do
// returns before its thread has finished exiting.
func waitNoThreadAway(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		away := threadsAway()
		if len(away) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads of the test process (main thread is %d) still in other namespaces after Do returned: %v", os.Getpid(), away)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// threadsIn lists the test process's threads that are in the namespace
// whose link text is net or mnt.
func threadsIn(net, mnt string) []string {
	tasks, _ := filepath.Glob("/proc/self/task/*")
	var in []string
	for _, task := range tasks {
		for _, ns := range []struct{ file, want string }{{"net", net}, {"mnt", mnt}} {
			// A thread may exit between the glob and the readlink.
			if l, err := os.Readlink(task + "/ns/" + ns.file); err == nil && l == ns.want {
				in = append(in, filepath.Base(task)+":"+ns.file)
			}
		}
	}
	return in
}

func TestDoConcurrentLeavesNoThreadBehind(t *testing.T) {
	tgt, pid := openTarget(t)
	targetNet := nsLink(t, fmt.Sprintf("/proc/%d/ns/net", pid))
	targetMnt := nsLink(t, fmt.Sprintf("/proc/%d/ns/mnt", pid))

	// Sanity check of threadsIn: a thread inside Do is seen.
	if err := tgt.Do(nsmount.NetNS|nsmount.MountNS, func() error {
		if len(threadsIn(targetNet, targetMnt)) == 0 {
			return errors.New("threadsIn does not see the thread running Do")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		which := nsmount.NetNS
		if i%2 == 1 {
			which |= nsmount.MountNS
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- tgt.Do(which, func() error {
				got, err := os.Readlink("/proc/thread-self/ns/net")
				if err != nil {
					return err
				}
				if got != targetNet {
					return fmt.Errorf("call %d: in %s, want %s", i, got, targetNet)
				}
				time.Sleep(time.Millisecond) // overlap the calls
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	waitNoThreadAway(t)
	if left := threadsIn(targetNet, targetMnt); len(left) != 0 {
		t.Fatalf("threads still in the target's namespaces: %v", left)
	}
}

// TestDoNeverKeepsMainThread: a goroutine that exits locked to the main
// thread does not end it (the runtime cannot) but wedges it, so Do must never
// enter the target's namespaces on the main thread. Otherwise the process's
// main thread (what /proc/self/ns and /proc/self/mountinfo show) stays in the
// container's namespaces for good and keeps them alive.
func TestDoNeverKeepsMainThread(t *testing.T) {
	tgt, _ := openTarget(t)
	waitNoThreadAway(t)
	for i := range 200 {
		which := nsmount.NetNS
		if i%2 == 1 {
			which |= nsmount.MountNS
		}
		if err := tgt.Do(which, func() error { return nil }); err != nil {
			t.Fatal(err)
		}
		main := fmt.Sprintf("/proc/self/task/%d/ns/", os.Getpid())
		if n, m := nsLink(t, main+"net"), nsLink(t, main+"mnt"); n != hostNetNS || m != hostMntNS {
			t.Fatalf("after %d Do calls the main thread is in net %s mnt %s, not the host's net %s mnt %s", i+1, n, m, hostNetNS, hostMntNS)
		}
	}
	waitNoThreadAway(t)
}

// TestDoThreadAfterwards: a thread that entered only the target's network
// namespace goes back to the process's own and stays, for the pool; one
// that entered the mount namespace ends. Neither is the main thread.
func TestDoThreadAfterwards(t *testing.T) {
	tgt, _ := openTarget(t)
	tests := []struct {
		name      string
		which     nsmount.Namespaces
		fn        func() error
		wantAlive bool
	}{
		{"net", nsmount.NetNS, func() error { return nil }, true},
		{"net, fn fails", nsmount.NetNS, func() error { return errors.New("nsmt-fail") }, true},
		{"net, fn panics", nsmount.NetNS, func() error { panic("nsmt-boom") }, true},
		{"net and mnt", nsmount.NetNS | nsmount.MountNS, func() error { return nil }, false},
		{"mnt", nsmount.MountNS, func() error { return nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tid int
			tgt.Do(tt.which, func() error {
				tid = unix.Gettid()
				return tt.fn()
			})
			if tid == os.Getpid() {
				t.Fatal("fn ran on the main thread")
			}
			task := fmt.Sprintf("/proc/self/task/%d/ns/", tid)
			if !tt.wantAlive {
				deadline := time.Now().Add(5 * time.Second)
				for {
					if _, err := os.Lstat(task); errors.Is(err, os.ErrNotExist) {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("thread %d that entered the mount namespace still exists", tid)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			// A thread that is ending is gone within moments (see above).
			time.Sleep(50 * time.Millisecond)
			n, err := os.Readlink(task + "net")
			if err != nil {
				t.Fatalf("thread %d that visited the network namespace is gone: %v", tid, err)
			}
			if m, _ := os.Readlink(task + "mnt"); n != hostNetNS || m != hostMntNS {
				t.Fatalf("thread %d is in net %s mnt %s after Do, want the process's net %s mnt %s", tid, n, m, hostNetNS, hostMntNS)
			}
		})
	}
}

func TestDoPanicIsError(t *testing.T) {
	tgt, _ := openTarget(t)
	err := tgt.Do(nsmount.NetNS, func() error { panic("nsmt-boom") })
	if err == nil || !strings.Contains(err.Error(), "nsmt-boom") {
		t.Fatalf("Do with a panicking fn = %v, want an error naming the panic", err)
	}
	// The target is still usable afterwards.
	if err := tgt.Do(nsmount.NetNS, func() error { return nil }); err != nil {
		t.Fatalf("Do after panic: %v", err)
	}
}

func TestDoReturnsFnError(t *testing.T) {
	tgt, _ := openTarget(t)
	want := errors.New("nsmt-fn-error")
	if err := tgt.Do(nsmount.NetNS|nsmount.MountNS, func() error { return want }); !errors.Is(err, want) {
		t.Fatalf("Do = %v, want %v", err, want)
	}
}

func TestDoClosedTarget(t *testing.T) {
	tgt, _ := openTarget(t)
	tgt.Close()
	tgt.Close() // twice is fine
	called := false
	for _, which := range []nsmount.Namespaces{nsmount.NetNS, nsmount.MountNS} {
		if err := tgt.Do(which, func() error { called = true; return nil }); err == nil {
			t.Errorf("Do(%d) on a closed target succeeded", which)
		}
	}
	if called {
		t.Error("fn ran for a closed target")
	}
}

func TestOpenPIDErrors(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		pid     int
		wantErr error
	}{
		{"zero", 0, nsmount.ErrInvalidArgument},
		{"negative", -1, nsmount.ErrInvalidArgument},
		{"exited and reaped", dead.Process.Pid, nsmount.ErrTargetNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tgt, err := nsmount.OpenPID(tt.pid)
			if err == nil {
				tgt.Close()
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("OpenPID(%d) = %v, want %v", tt.pid, err, tt.wantErr)
			}
		})
	}
}

func TestOpenPaths(t *testing.T) {
	requireRoot(t)
	pid := startTarget(t)
	netPath := fmt.Sprintf("/proc/%d/ns/net", pid)
	mntPath := fmt.Sprintf("/proc/%d/ns/mnt", pid)
	regular := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing")

	tests := []struct {
		name     string
		net, mnt string
		wantErr  error
	}{
		{"ok", netPath, mntPath, nil},
		{"mnt ns as netns", mntPath, mntPath, nsmount.ErrInvalidArgument},
		{"net ns as mntns", netPath, netPath, nsmount.ErrInvalidArgument},
		{"regular file", regular, mntPath, nsmount.ErrInvalidArgument},
		{"empty netns", "", mntPath, nsmount.ErrInvalidArgument},
		{"empty mntns", netPath, "", nsmount.ErrInvalidArgument},
		{"missing netns", missing, mntPath, nsmount.ErrTargetNotFound},
		{"missing mntns", netPath, missing, nsmount.ErrTargetNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tgt, err := nsmount.OpenPaths(tt.net, tt.mnt)
			if tt.wantErr != nil {
				if err == nil {
					tgt.Close()
				}
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("OpenPaths(%q, %q) = %v, want %v", tt.net, tt.mnt, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenPaths: %v", err)
			}
			defer tgt.Close()
			if tgt.PID() != 0 {
				t.Errorf("PID = %d, want 0 for a target opened by paths", tgt.PID())
			}
			if got, want := tgt.NetNSInode(), nsInode(t, netPath); got != want {
				t.Errorf("NetNSInode = %d, want %d", got, want)
			}
			if got, want := tgt.MountNSInode(), nsInode(t, mntPath); got != want {
				t.Errorf("MountNSInode = %d, want %d", got, want)
			}
			want := nsLink(t, netPath)
			var got string
			if err := tgt.Do(nsmount.NetNS|nsmount.MountNS, func() (err error) {
				got, err = os.Readlink("/proc/thread-self/ns/net")
				return err
			}); err != nil || got != want {
				t.Errorf("Do: in %q, %v; want %q", got, err, want)
			}
		})
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestOpenCloseNoFDLeak(t *testing.T) {
	pid := startTarget(t)
	netPath := fmt.Sprintf("/proc/%d/ns/net", pid)
	mntPath := fmt.Sprintf("/proc/%d/ns/mnt", pid)
	cycle := func() {
		tgt, err := nsmount.OpenPID(pid)
		if err != nil {
			t.Fatalf("OpenPID: %v", err)
		}
		tgt.Close()
		if tgt, err = nsmount.OpenPaths(netPath, mntPath); err != nil {
			t.Fatalf("OpenPaths: %v", err)
		}
		tgt.Close()
		// Failing opens must not leak either.
		if _, err = nsmount.OpenPaths(netPath, netPath); err == nil {
			t.Fatal("OpenPaths(net, net) succeeded")
		}
	}
	cycle() // let the runtime open whatever it opens once
	before := countFDs(t)
	for range 100 {
		cycle()
	}
	if after := countFDs(t); after != before {
		t.Errorf("open file descriptors: %d before 100 Open/Close cycles, %d after", before, after)
	}
}

func TestUnmountThroughHelper(t *testing.T) {
	tgt, pid := openTarget(t)
	mounted := tempDir(t)
	mountTmpfsIn(t, tgt, mounted)
	plain := tempDir(t)
	ctx := context.Background()

	tests := []struct {
		name    string
		path    string
		wantErr error
	}{
		{"tmpfs is not NFS", mounted, nsmount.ErrNotMounted},
		{"plain directory", plain, nsmount.ErrNotMounted},
		{"missing path", filepath.Join(plain, "missing"), nsmount.ErrUnsafePath},
		{"relative path", "relative/dir", nsmount.ErrInvalidArgument},
		{"container root", "/", nsmount.ErrUnsafePath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := nsmount.Unmount(ctx, tgt, tt.path, nsmount.UnmountOptions{Timeout: 20 * time.Second})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Unmount(%q) = %v, want %v", tt.path, err, tt.wantErr)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Unmount took %v", d)
			}
		})
	}
	if fstype, ok := mountedAt(t, fmt.Sprintf("/proc/%d/mountinfo", pid), mounted); !ok || fstype != "tmpfs" {
		t.Errorf("after Unmount attempts: mount at %s = %q, %v; want the tmpfs still there", mounted, fstype, ok)
	}
}

func TestUnmountTimeout(t *testing.T) {
	tgt, _ := openTarget(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := nsmount.Unmount(ctx, tgt, tempDir(t), nsmount.UnmountOptions{})
	if !errors.Is(err, nsmount.ErrTimeout) {
		t.Fatalf("Unmount with a cancelled context = %v, want ErrTimeout", err)
	}
}

func setLoUp(t *testing.T, pid int) {
	t.Helper()
	out, err := exec.Command("nsenter", "--target", fmt.Sprint(pid), "--net", "ip", "link", "set", "lo", "up").CombinedOutput()
	if err != nil {
		t.Fatalf("set lo up in target %d: %v: %s", pid, err, out)
	}
}

func TestMountUnreachable(t *testing.T) {
	tests := []struct {
		name   string
		loUp   bool
		source string
	}{
		{"lo down IPv4", false, "198.51.100.1:/export"},
		{"lo up IPv4", true, "198.51.100.1:/export"},
		{"lo down IPv6", false, "[2001:db8::1]:/export"},
		{"lo up IPv6", true, "[2001:db8::1]:/export"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tgt, pid := openTarget(t)
			if tt.loUp {
				setLoUp(t, pid)
			}
			src, err := nsmount.ParseSource(tt.source)
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(tempDir(t), "mnt")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			m, err := nsmount.Mount(ctx, tgt, nsmount.Request{Source: src, Target: dir, Mkdir: true, ProbeTimeout: 2 * time.Second})
			if !errors.Is(err, nsmount.ErrUnreachable) {
				t.Fatalf("Mount(%s) = %+v, %v; want ErrUnreachable", tt.source, m, err)
			}
			if nsmount.ExitCode(err) != 6 {
				t.Errorf("ExitCode = %d, want 6", nsmount.ExitCode(err))
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Mount took %v to find there is no route", d)
			}
			if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("mount point %s was created for a failed mount (%v)", dir, err)
			}
			entries, err := nsmount.List(tgt)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if len(entries) != 0 {
				t.Errorf("NFS mounts in target after failed Mount: %+v", entries)
			}
		})
	}
}

func TestMountInvalidRequest(t *testing.T) {
	tgt, _ := openTarget(t)
	dir := tempDir(t)
	ip := nsmount.Source{Server: "198.51.100.1", Export: "/export"}
	tests := []struct {
		name string
		req  nsmount.Request
	}{
		{"bad proto", nsmount.Request{Source: ip, Target: dir, Options: nsmount.Options{{Key: "proto", Value: "sctp", HasValue: true}}}},
		{"bad resolve-from", nsmount.Request{Source: nsmount.Source{Server: "nfs.example.test", Export: "/export"}, Target: dir, ResolveFrom: "neighbour"}},
		{"addr option", nsmount.Request{Source: ip, Target: dir, Options: nsmount.Options{{Key: "addr", Value: "198.51.100.2", HasValue: true}}}},
		{"unsupported fstype", nsmount.Request{Source: ip, FSType: "cifs", Target: dir}},
		{"nfs4 vers=3", nsmount.Request{Source: ip, FSType: "nfs4", Target: dir, Options: nsmount.Options{{Key: "vers", Value: "3", HasValue: true}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := nsmount.Mount(context.Background(), tgt, tt.req)
			if !errors.Is(err, nsmount.ErrInvalidArgument) {
				t.Fatalf("Mount = %+v, %v; want ErrInvalidArgument", m, err)
			}
		})
	}
}

// A target that was opened stays the same namespaces after its process is
// gone: the descriptors pin them.
func TestTargetOutlivesProcess(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command("unshare", "--net", "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	self := nsLink(t, "/proc/self/ns/net")
	var want string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		want, _ = os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if strings.TrimSpace(string(comm)) == "sleep" && want != "" && want != self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("target did not start")
		}
	}
	tgt, err := nsmount.OpenPID(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	cmd.Process.Kill()
	cmd.Wait()
	var got string
	if err := tgt.Do(nsmount.NetNS, func() (err error) {
		got, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatalf("Do after the process exited: %v", err)
	}
	if got != want {
		t.Errorf("Do entered %s, want the original %s", got, want)
	}
}

// TestHelperSurvivesThreadExit: helpers are started with Pdeathsig, which
// fires when the forking OS thread exits, not the process. Threads do exit
// here: every Do ends its thread. A helper forked from a thread that a
// later Do then takes and ends was killed mid-request (status probes came
// back "signal: killed" under load). Each probe of a tmpfs must get the
// helper's own answer, "not an NFS mount", while Do calls end threads.
func TestHelperSurvivesThreadExit(t *testing.T) {
	tgt, _ := openTarget(t)
	dir := tempDir(t)
	mountTmpfsIn(t, tgt, dir)
	ctx := context.Background()

	stop := make(chan struct{})
	var churn sync.WaitGroup
	for range 4 {
		churn.Add(1)
		go func() {
			defer churn.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := tgt.Do(nsmount.NetNS, func() error { return nil }); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	const n = 40
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := nsmount.ProbeMount(ctx, tgt, dir, 0, 20*time.Second)
			errs <- err
		}()
	}
	wg.Wait()
	close(stop)
	churn.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, nsmount.ErrNotMounted) {
			t.Errorf("ProbeMount of a tmpfs = %v, want ErrNotMounted", err)
		}
	}
	waitNoThreadAway(t)
}

// TestSetHelper: a target starts the executable SetHelper names as its
// helper (here a copy of this test binary, which is a helper too, and a
// path that does not exist); the default is this binary.
func TestSetHelper(t *testing.T) {
	tgt, _ := openTarget(t)
	plain := tempDir(t)
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "helper")
	if err := os.WriteFile(cp, self, 0o700); err != nil {
		t.Fatal(err)
	}
	opts := nsmount.UnmountOptions{Timeout: 20 * time.Second}
	for _, tc := range []struct {
		helper  string
		wantErr error // of the unmount of a plain directory
		wantMsg string
	}{
		{"", nsmount.ErrNotMounted, ""},
		{cp, nsmount.ErrNotMounted, ""},
		{"/nonexistent/nsmount", nil, "/nonexistent/nsmount"},
	} {
		tgt.SetHelper(tc.helper)
		_, err := nsmount.Unmount(context.Background(), tgt, plain, opts)
		switch {
		case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
			t.Errorf("helper %q: Unmount = %v, want %v (the helper ran)", tc.helper, err, tc.wantErr)
		case tc.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.wantMsg)):
			t.Errorf("helper %q: Unmount = %v, want an error naming it", tc.helper, err)
		}
	}
}
