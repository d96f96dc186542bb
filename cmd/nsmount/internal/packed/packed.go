// Package packed runs the full nsmount binary that the product binary
// carries inside it, zstd-compressed (the split build, see cmd/nsmount's
// split.go): written into a sealed memfd and executed from there, as runc
// executes its own copy, so that nothing is written to disk and nothing
// can change it while it runs. The full binary is told the product
// binary's path and gets a descriptor of it, to start the product binary
// as its mount helper.
package packed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// Environment of the full binary, set by Exec and read by FromLauncher.
const (
	envFD   = "NSMOUNT_LAUNCHER_FD"
	envPath = "NSMOUNT_LAUNCHER_PATH"
)

// Exec runs the zstd-compressed executable zst in place of this process,
// with args (args[0] included) and env; it returns only on failure. The
// executable gets this process's own executable open at a descriptor and
// its path, in its environment (see FromLauncher).
func Exec(zst []byte, args, env []string) error {
	if len(zst) == 0 {
		return errors.New("this nsmount carries no full binary (a split build without its payload)")
	}
	fd, err := unix.MemfdCreate("nsmount-full", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("memfd for the full binary: %w", err)
	}
	mem := os.NewFile(uintptr(fd), "memfd:nsmount-full")
	defer mem.Close()
	zr, err := zstd.NewReader(bytes.NewReader(zst), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	if err != nil {
		return fmt.Errorf("unpack the full binary: %w", err)
	}
	_, err = zr.WriteTo(mem)
	zr.Close()
	if err != nil {
		return fmt.Errorf("unpack the full binary: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE); err != nil {
		return fmt.Errorf("seal the full binary: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find nsmount's own path: %w", err)
	}
	// Inherited across exec (no O_CLOEXEC); the full binary marks it
	// close-on-exec at once (FromLauncher).
	selfFD, err := unix.Open("/proc/self/exe", unix.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("open nsmount's own executable: %w", err)
	}
	env = append(env[:len(env):len(env)], envFD+"="+strconv.Itoa(selfFD), envPath+"="+self)
	err = unix.Exec("/proc/self/fd/"+strconv.Itoa(fd), args, env)
	unix.Close(selfFD)
	return fmt.Errorf("run the full binary: %w", err)
}

// Launcher is what the product binary tells the full binary it runs.
type Launcher struct {
	// Helper is the product binary as an executable path that stays the
	// same file while this process runs (/proc/PID/fd/N, this process's
	// PID): the mount helper to start, from this process. "" when not run
	// by a launcher.
	Helper string
	// Path is the product binary's path, for what names nsmount to others
	// (the hooks' binary). "" when not run by a launcher.
	Path string
}

// FromLauncher reads what Exec passed in the environment, and removes it
// from the environment so that no child inherits it. Without it, it
// returns the zero Launcher.
func FromLauncher() (Launcher, error) {
	v, ok := os.LookupEnv(envFD)
	if !ok {
		return Launcher{}, nil
	}
	path := os.Getenv(envPath)
	os.Unsetenv(envFD)
	os.Unsetenv(envPath)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return Launcher{}, fmt.Errorf("%s=%q: not a descriptor", envFD, v)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Launcher{}, fmt.Errorf("%s=%d: not an open regular file (%v)", envFD, fd, err)
	}
	if !filepath.IsAbs(path) {
		unix.Close(fd)
		return Launcher{}, fmt.Errorf("%s=%q: not an absolute path", envPath, path)
	}
	// Moved up, close-on-exec: a helper is started with its descriptors
	// (namespaces, root, a socket) as ExtraFiles, which the child puts at
	// 3, 4, 5... before it executes Helper; a low descriptor is one of
	// them by then (watch's remounts failed with EACCES executing
	// /proc/self/fd/4, by then the mount namespace's descriptor).
	hi, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, helperFDMin)
	unix.Close(fd)
	if err != nil {
		return Launcher{}, fmt.Errorf("%s=%d: %w", envFD, fd, err)
	}
	// Named through this process's pid, not /proc/self: a child resolves
	// the path after it has shuffled its descriptors, and Go's fork puts
	// its exec-error pipe at one past the highest ExtraFiles descriptor,
	// whatever is there: a helper started with descriptors up to N-1 saw
	// the pipe at N and failed with EACCES executing /proc/self/fd/N (1 of
	// ~250 remounts in the 50-container migration, where watch has a
	// hundred descriptors open). /proc/PID/fd/N is this process's table.
	return Launcher{Helper: "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(hi), Path: path}, nil
}

// helperFDMin is the least descriptor Launcher.Helper is kept at: above
// every ExtraFiles of a helper.
const helperFDMin = 100
