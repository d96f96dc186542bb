package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Containerd2Version is the containerd release that Containerd2 builds: a
// 2.x daemon, for what Debian's 1.6 lacks (NRI with CRI).
const Containerd2Version = "v2.4.2"

// containerd2Binaries are the commands Containerd2 builds, with their
// package paths in the containerd module.
var containerd2Binaries = []string{"containerd", "containerd-shim-runc-v2"}

// Containerd2 returns a directory holding the containerd and
// containerd-shim-runc-v2 binaries of Containerd2Version, static
// (CGO_ENABLED=0), built with `go install` from the Go module proxy into
// cacheDir/containerd-VERSION on first use (about a minute with a cold
// module cache) under a lock on cacheDir/containerd-VERSION.lock, so that
// concurrent callers build once. cacheDir "" means $NSMOUNT_LAB_CACHE, else
// DefaultCacheDir. Build output goes to log (nil: discarded).
func Containerd2(ctx context.Context, cacheDir string, log io.Writer) (string, error) {
	if cacheDir == "" {
		cacheDir = Config{}.withDefaults().CacheDir
	}
	if log == nil {
		log = io.Discard
	}
	dir := filepath.Join(cacheDir, "containerd-"+Containerd2Version)
	if containerd2Complete(dir) {
		return dir, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("create cache dir: %w", err)
	}
	unlock, err := lockFile(ctx, dir+".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if containerd2Complete(dir) {
		return dir, nil // built by whoever held the lock
	}
	tmp, err := os.MkdirTemp(cacheDir, ".containerd-build-")
	if err != nil {
		return "", fmt.Errorf("create build dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	start := time.Now()
	args := []string{"install"}
	for _, b := range containerd2Binaries {
		args = append(args, "github.com/containerd/containerd/v2/cmd/"+b+"@"+Containerd2Version)
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = tmp // outside any module: @version builds need none
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOBIN="+filepath.Join(tmp, "bin"), "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build containerd %s from the module proxy: %w: %s", Containerd2Version, err, lastLines(string(out), 10))
	}
	if err := os.Chmod(filepath.Join(tmp, "bin"), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(filepath.Join(tmp, "bin"), dir); err != nil {
		return "", fmt.Errorf("store containerd %s in the cache: %w", Containerd2Version, err)
	}
	fmt.Fprintf(log, "nsmount-lab: built containerd %s in %v\n", Containerd2Version, time.Since(start).Round(time.Second))
	return dir, nil
}

// containerd2Complete reports whether dir holds every binary.
func containerd2Complete(dir string) bool {
	for _, b := range containerd2Binaries {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || !fi.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// lockFile takes an exclusive flock on path (created if needed), waiting
// until ctx ends (the cache lock, the containerd build lock). The returned function releases it; so does the kernel if
// the process dies.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
