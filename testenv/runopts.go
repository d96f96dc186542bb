package testenv

import (
	"context"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"time"
)

// guestFileSets resolves WithGanesha and WithContainerd into files; it may
// fetch (before the run takes a VM slot).
func (l *Lab) guestFileSets(ctx context.Context, rc *runConfig) error {
	if rc.containerd {
		files, err := ContainerdGuestFiles()
		if err != nil {
			return err
		}
		rc.files = append(rc.files, files...)
	}
	if rc.ganesha {
		files, err := GaneshaGuestFiles(ctx, l.cfg.CacheDir, rc.log)
		if err != nil {
			return fmt.Errorf("ganesha for the guest: %w", err)
		}
		rc.files = append(rc.files, files...)
	}
	return nil
}

// HostFile is a host file installed in the guest for one Run, beyond what
// every run has (see WithFiles).
type HostFile struct {
	// Src is the host path; symlinks are followed.
	Src string
	// Dst is the guest path; "" means the same path as Src (with /bin,
	// /sbin, /lib and /lib64 mapped to /usr, as in the guest).
	Dst string
	// Libs adds the shared libraries and dynamic loader that Src needs
	// (ldd), at their host paths.
	Libs bool
}

// RunOption configures one Run.
type RunOption func(*runConfig)

// runConfig is what RunOptions set.
type runConfig struct {
	files      []HostFile
	memory     int // MiB
	memorySet  bool
	vcpus      int
	timeout    time.Duration
	log        io.Writer // progress of the host side; never nil
	ganesha    bool      // WithGanesha
	containerd bool      // WithContainerd
}

// containerdMemory is the guest RAM (MiB) that WithContainerd gives a run
// unless WithMemory says otherwise.
const containerdMemory = 1536

// WithFiles installs host files in the guest of this run, in an archive
// unpacked after the standard ones (so a file may replace one of theirs).
// Big programs cost boot time and guest memory: give the run more with
// WithMemory.
func WithFiles(files ...HostFile) RunOption {
	return func(rc *runConfig) { rc.files = append(rc.files, files...) }
}

// WithMemory sets the guest RAM of this run, in MiB (default
// Config.Memory).
func WithMemory(mib int) RunOption {
	return func(rc *runConfig) { rc.memory, rc.memorySet = mib, true }
}

// WithContainerd installs the host's containerd, runc and CNI plugins
// (ContainerdGuestFiles) in the guest of this run, for lab_containerd, and
// gives the guest 1536 MiB of RAM unless WithMemory sets it (in any
// order).
func WithContainerd() RunOption {
	return func(rc *runConfig) { rc.containerd = true }
}

// WithLog sends the run's progress messages (e.g. that it waits for a VM
// slot) to w; by default they are discarded.
func WithLog(w io.Writer) RunOption {
	return func(rc *runConfig) { rc.log = w }
}

// WithVCPUs sets the number of virtual CPUs of this run's guest (qemu
// -smp; default Config.VCPUs). Under TCG each vCPU is a host thread; a
// VM takes one of the machine's VM slots whatever its vCPUs.
func WithVCPUs(n int) RunOption {
	return func(rc *runConfig) { rc.vcpus = n }
}

// WithTimeout sets the bound of this run (default Config.Timeout), for a
// scenario that is long by design (many containers, many cycles).
func WithTimeout(d time.Duration) RunOption {
	return func(rc *runConfig) { rc.timeout = d }
}

// writeFiles adds files (and, when asked, their libraries) to a. A file
// that the base archive already holds from the same host file (base maps
// guest paths to host paths; nil: none) is not added again.
func writeFiles(ctx context.Context, a *archive, files []HostFile, base map[string]string) error {
	seen := map[string]bool{}
	add := func(src, dst string) error {
		dst = guestPath(dst)
		if seen[dst] {
			return nil
		}
		seen[dst] = true
		real, err := filepath.EvalSymlinks(src)
		if err != nil {
			return fmt.Errorf("guest file %s: %w", src, err)
		}
		if base[dst] == real {
			return nil
		}
		return a.hostFile(real, dst)
	}
	for _, f := range files {
		dst := f.Dst
		if dst == "" {
			dst = f.Src
		}
		if err := add(f.Src, path.Clean("/"+dst)); err != nil {
			return err
		}
		if !f.Libs {
			continue
		}
		libs, err := sharedLibs(ctx, f.Src)
		if err != nil {
			return err
		}
		for _, l := range libs {
			if err := add(l, l); err != nil {
				return err
			}
		}
	}
	return nil
}
