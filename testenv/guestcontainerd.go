package testenv

// Containerd for lab guests: the host's Debian containerd 1.6 set and a
// containerd 2.x built into the cache, as files a run installs.

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"
)

// ContainerdGuestFiles are the host's containerd (Debian 1.6), its runc shim,
// runc, and the CNI plugins bridge, host-local and loopback (in
// /usr/lib/cni, as in Debian), with their libraries: what a guest needs to
// run containers through containerd and to network them with CNI.
// Guest memory of 1536 MiB leaves room for them.
func ContainerdGuestFiles() ([]HostFile, error) {
	var files []HostFile
	for _, name := range []string{"containerd", "containerd-shim-runc-v2", "runc"} {
		p, err := lookTool(name)
		if err != nil {
			return nil, fmt.Errorf("%w (install containerd and runc: testenv/install-deps.sh)", err)
		}
		files = append(files, HostFile{Src: p, Dst: "/usr/bin/" + name, Libs: true})
	}
	for _, name := range []string{"bridge", "host-local", "loopback"} {
		p := filepath.Join("/usr/lib/cni", name)
		if _, err := filepath.EvalSymlinks(p); err != nil {
			return nil, fmt.Errorf("CNI plugin %s not found (install containernetworking-plugins: testenv/install-deps.sh): %w", p, err)
		}
		files = append(files, HostFile{Src: p, Dst: "/usr/lib/cni/" + name, Libs: true})
	}
	return files, nil
}

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
