package nsmount

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// containerRoot builds a fake container root in a temp dir and returns its
// path, an O_PATH fd of it, and a sibling directory that exists only outside
// the root.
//
//	root/data/            directory
//	root/file             regular file
//	root/toroot -> /
//	root/up -> ../../../..
//	root/abs -> /data
//	root/hostesc -> /../../..<outside>   (absolute host path of the sibling)
//	root/loop1 -> /loop2, root/loop2 -> loop1
//	outside/              sibling of root
func containerRoot(t *testing.T) (dir string, root *os.File, outside string) {
	t.Helper()
	base := t.TempDir()
	dir = filepath.Join(base, "root")
	outside = filepath.Join(base, "outside")
	for _, d := range []string{dir, outside, filepath.Join(dir, "data")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{
		"toroot":  "/",
		"up":      "../../../..",
		"abs":     "/data",
		"hostesc": "/../../.." + outside,
		"loop1":   "/loop2",
		"loop2":   "loop1",
	} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	// Sanity: on the host, hostesc really leads to the outside directory.
	if st, err := os.Stat(filepath.Join(dir, "hostesc")); err != nil || !st.IsDir() {
		t.Fatalf("fixture: hostesc does not resolve to %s on the host: %v", outside, err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	root = os.NewFile(uintptr(fd), dir)
	t.Cleanup(func() { root.Close() })
	return dir, root, outside
}

func statIno(t *testing.T, f *os.File) (dev, ino uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Dev, st.Ino
}

func pathIno(t *testing.T, p string) (dev, ino uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Dev, st.Ino
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names
}

func TestOpenInRoot(t *testing.T) {
	dir, root, outside := containerRoot(t)
	tests := []struct {
		name    string
		path    string
		mkdir   bool
		want    string // host path whose inode the result must have
		wantErr error
	}{
		{name: "directory", path: "/data", want: "data"},
		{name: "unclean path", path: "//data/./", want: "data"},
		{name: "dotdot above root", path: "/../../data", want: "data"},
		{name: "absolute symlink stays in root", path: "/abs", want: "data"},
		{name: "symlink to root", path: "/toroot", wantErr: ErrUnsafePath},
		{name: "dotdot symlink to root", path: "/up", wantErr: ErrUnsafePath},
		{name: "dotdot symlink with mkdir", path: "/up", mkdir: true, wantErr: ErrUnsafePath},
		{name: "root", path: "/", wantErr: ErrUnsafePath},
		{name: "dotdot to root", path: "/data/..", wantErr: ErrUnsafePath},
		{name: "regular file", path: "/file", wantErr: ErrUnsafePath},
		{name: "below regular file", path: "/file/x", wantErr: ErrUnsafePath},
		{name: "missing", path: "/missing", wantErr: ErrUnsafePath},
		{name: "relative", path: "relative", wantErr: ErrInvalidArgument},
		{name: "relative with mkdir", path: "data/x", mkdir: true, wantErr: ErrInvalidArgument},
		{name: "empty", path: "", wantErr: ErrInvalidArgument},
		{name: "host escape via absolute symlink", path: "/hostesc", wantErr: ErrUnsafePath},
		{name: "symlink loop", path: "/loop1", wantErr: ErrUnsafePath},
		{name: "symlink loop with mkdir", path: "/loop1/x", mkdir: true, wantErr: ErrUnsafePath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := openInRoot(root, tt.path, tt.mkdir)
			if tt.wantErr != nil {
				if f != nil {
					f.Close()
				}
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("openInRoot(%q, mkdir=%v) = %v; want %v", tt.path, tt.mkdir, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("openInRoot(%q): %v", tt.path, err)
			}
			defer f.Close()
			gotDev, gotIno := statIno(t, f)
			wantDev, wantIno := pathIno(t, filepath.Join(dir, tt.want))
			if gotDev != wantDev || gotIno != wantIno {
				t.Errorf("openInRoot(%q) opened %d:%d, want %s (%d:%d)", tt.path, gotDev, gotIno, tt.want, wantDev, wantIno)
			}
		})
	}
	if names := dirEntries(t, outside); len(names) != 0 {
		t.Errorf("directory outside the root gained entries: %q", names)
	}
}

func TestOpenInRootRootMessage(t *testing.T) {
	_, root, _ := containerRoot(t)
	for _, p := range []string{"/toroot", "/up", "/"} {
		_, err := openInRoot(root, p, false)
		if err == nil || !errors.Is(err, ErrUnsafePath) {
			t.Fatalf("openInRoot(%q) = %v, want ErrUnsafePath", p, err)
		}
		if want := "resolves to the container's root"; !strings.Contains(err.Error(), want) {
			t.Errorf("openInRoot(%q) error %q does not say %q", p, err, want)
		}
	}
}

func TestOpenInRootMkdir(t *testing.T) {
	tests := []struct {
		name    string
		path    string
		created string // directory that must exist inside the root afterwards
	}{
		{"single", "/new", "new"},
		{"nested", "/a/b/c", "a/b/c"},
		{"through absolute symlink", "/abs/sub/dir", "data/sub/dir"},
		{"existing parent", "/data/x", "data/x"},
		{"dotdot above root", "/../../top", "top"},
		{"through symlink to root", "/toroot/x", "x"},
		{"through dotdot symlink", "/up/y", "y"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, root, outside := containerRoot(t)
			f, err := openInRoot(root, tt.path, true)
			if err != nil {
				t.Fatalf("openInRoot(%q, mkdir): %v", tt.path, err)
			}
			defer f.Close()
			want := filepath.Join(dir, tt.created)
			st, err := os.Lstat(want)
			if err != nil || !st.IsDir() {
				t.Fatalf("%s not created inside the root: %v", want, err)
			}
			gotDev, gotIno := statIno(t, f)
			wantDev, wantIno := pathIno(t, want)
			if gotDev != wantDev || gotIno != wantIno {
				t.Errorf("returned fd is not %s", want)
			}
			if names := dirEntries(t, outside); len(names) != 0 {
				t.Errorf("directory outside the root gained entries: %q", names)
			}
		})
	}
}

// TestOpenInRootMkdirHostEscape: a symlink whose target exists only outside
// the root is dangling inside it. Even with mkdir it is refused (as mkdir -p
// refuses), and nothing is created, outside the root or in it. Once the
// directory exists inside the root, the symlink leads there.
func TestOpenInRootMkdirHostEscape(t *testing.T) {
	for _, p := range []string{"/hostesc", "/hostesc/sub"} {
		t.Run(p, func(t *testing.T) {
			dir, root, outside := containerRoot(t)
			f, err := openInRoot(root, p, true)
			if err == nil {
				f.Close()
				t.Fatalf("openInRoot(%q, mkdir) succeeded through a dangling symlink", p)
			}
			if !errors.Is(err, ErrUnsafePath) {
				t.Errorf("openInRoot(%q, mkdir) = %v, want ErrUnsafePath", p, err)
			}
			if names := dirEntries(t, outside); len(names) != 0 {
				t.Errorf("mkdir through %s created %q OUTSIDE the root", p, names)
			}
			if _, err := os.Lstat(filepath.Join(dir, outside)); err == nil {
				t.Errorf("mkdir through %s created %s inside the root", p, outside)
			}
			// With the directory present inside the root, the symlink
			// resolves there.
			inside := filepath.Join(dir, outside)
			if err := os.MkdirAll(inside, 0o755); err != nil {
				t.Fatal(err)
			}
			f, err = openInRoot(root, p, true)
			if err != nil {
				t.Fatalf("openInRoot(%q) with the directory inside the root = %v", p, err)
			}
			defer f.Close()
			want := filepath.Join(dir, outside, strings.TrimPrefix(p, "/hostesc"))
			gotDev, gotIno := statIno(t, f)
			wantDev, wantIno := pathIno(t, want)
			if gotDev != wantDev || gotIno != wantIno {
				t.Errorf("returned fd is not %s", want)
			}
			if names := dirEntries(t, outside); len(names) != 0 {
				t.Errorf("created %q OUTSIDE the root", names)
			}
		})
	}
}

// TestUnmountBusyRetry: an unmount waits out a mount held for a moment (a
// probe's GETATTR), and reports EBUSY for one held past busyFor. It runs
// on a thread of its own in a private mount namespace.
func TestUnmountBusyRetry(t *testing.T) {
	tests := []struct {
		name    string
		holdFor time.Duration // -1: not held; 0: held throughout
		busyFor time.Duration
		want    error
	}{
		{"not held", -1, time.Second, nil},
		{"held by a probe", 80 * time.Millisecond, time.Second, nil},
		{"held by an open file", 0, 150 * time.Millisecond, unix.EBUSY},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			errc := make(chan error, 1)
			go func() {
				// The thread goes back to its mount namespace before it
				// is unlocked (it may be the main thread, which Go never
				// ends: it must not stay in the test's namespace).
				runtime.LockOSThread()
				orig, err := os.Open("/proc/thread-self/ns/mnt")
				if err != nil {
					errc <- err
					return
				}
				defer orig.Close()
				if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
					errc <- err
					return
				}
				defer func() {
					if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNS); err == nil {
						runtime.UnlockOSThread()
					}
				}()
				if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
					errc <- err
					return
				}
				if err := unix.Mount("nsmt-busy", dir, "tmpfs", 0, "size=64k"); err != nil {
					errc <- err
					return
				}
				defer unix.Unmount(dir, unix.MNT_DETACH)
				if tt.holdFor >= 0 {
					fd, err := unix.Open(dir, unix.O_PATH|unix.O_CLOEXEC, 0)
					if err != nil {
						errc <- err
						return
					}
					if tt.holdFor > 0 {
						time.AfterFunc(tt.holdFor, func() { unix.Close(fd) })
					} else {
						defer unix.Close(fd)
					}
				}
				errc <- unmountBusyRetry(dir, unix.UMOUNT_NOFOLLOW, tt.busyFor)
			}()
			if err := <-errc; !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Errorf("unmountBusyRetry = %v, want %v", err, tt.want)
			}
		})
	}
}
