package testenv

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

//go:embed guest/init guest/lab.sh guest/ct.sh guest/nfsd.sh guest/ganesha.sh
var guestFiles embed.FS

// Environment variables read by New for fields left empty in Config.
const (
	EnvCache   = "NSMOUNT_LAB_CACHE"   // Config.CacheDir
	EnvKernel  = "NSMOUNT_LAB_KERNEL"  // Config.KernelVersion
	EnvAccel   = "NSMOUNT_LAB_ACCEL"   // Config.Accel
	EnvNsmount = "NSMOUNT_LAB_NSMOUNT" // Config.Nsmount
	EnvLabBin  = "NSMOUNT_LAB_BIN"     // Config.LabBin
	EnvLab     = "NSMOUNT_LAB"         // "off" makes Shared skip lab tests
)

// DefaultCacheDir holds kernels and base archives unless configured otherwise.
const DefaultCacheDir = "/var/cache/nsmount-lab"

// Config configures a Lab. The zero value is usable.
type Config struct {
	// CacheDir keeps downloaded kernels and built base archives.
	// Default: $NSMOUNT_LAB_CACHE, else /var/cache/nsmount-lab.
	CacheDir string
	// KernelVersion pins the Debian kernel, e.g. "6.1.0-56-cloud-amd64".
	// Default: $NSMOUNT_LAB_KERNEL (when KernelPackage is not set), else
	// what KernelPackage depends on (apt-cache depends).
	KernelVersion string
	// KernelPackage is the metapackage that names the kernel when
	// KernelVersion is not set (default DefaultKernelPackage).
	KernelPackage string
	// Accel is the qemu accelerator: "tcg" (default) or "kvm".
	// Default: $NSMOUNT_LAB_ACCEL, else "tcg".
	Accel string
	// Memory is the guest RAM in MiB (default 768).
	Memory int
	// VCPUs is the guest's number of virtual CPUs (default 1). Under TCG
	// two gave boots no gain on a 2-core host.
	VCPUs int
	// Timeout bounds one Run (default 5 minutes). The guest stops the
	// script somewhat earlier, so that it can still report.
	Timeout time.Duration
	// Nsmount is the path of a static nsmount binary to install in the
	// guest at /usr/bin/nsmount. Default: $NSMOUNT_LAB_NSMOUNT, else
	// ./cmd/nsmount of this module built with CGO_ENABLED=0.
	Nsmount string
	// LabBin is the path of a static nsmount-lab binary to install in the
	// guest at /usr/bin/nsmount-lab (for its dns subcommand). Default:
	// $NSMOUNT_LAB_BIN, else ./cmd/nsmount-lab of this module built with
	// CGO_ENABLED=0.
	LabBin string
	// Log receives progress messages of New (default: discarded).
	Log io.Writer
}

// withDefaults fills unset fields from the environment and defaults.
func (c Config) withDefaults() Config {
	env := func(v *string, name, def string) {
		if *v == "" {
			*v = os.Getenv(name)
		}
		if *v == "" {
			*v = def
		}
	}
	env(&c.CacheDir, EnvCache, DefaultCacheDir)
	if c.KernelPackage == "" {
		env(&c.KernelVersion, EnvKernel, "")
		c.KernelPackage = DefaultKernelPackage
	}
	env(&c.Accel, EnvAccel, "tcg")
	env(&c.Nsmount, EnvNsmount, "")
	env(&c.LabBin, EnvLabBin, "")
	if c.Memory == 0 {
		c.Memory = 768
	}
	if c.VCPUs == 0 {
		c.VCPUs = 1
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Minute
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return c
}

// Lab boots throwaway VMs that run scenario scripts. It is safe for
// concurrent use; at most maxVMs VMs run at once.
type Lab struct {
	cfg       Config
	kernel    *kernel
	base      string            // cached base archive
	baseFiles map[string]string // guest path -> host path of the base's programs and libraries
	labCpio   []byte            // /init, helpers, nsmount and nsmount-lab
	sem       chan struct{}
	started   func(pid int) // test hook: called with each qemu's PID
}

// maxVMs bounds concurrent VMs per Lab; more only slow each other down.
const maxVMs = 2

// New prepares a lab: it fetches the kernel (cached), builds or reuses the
// cached base initramfs, builds nsmount and nsmount-lab and packs the
// per-lab archive.
func New(ctx context.Context, cfg Config) (*Lab, error) {
	cfg = cfg.withDefaults()
	if cfg.Accel != "tcg" && cfg.Accel != "kvm" {
		return nil, fmt.Errorf("unknown accelerator %q (want tcg or kvm)", cfg.Accel)
	}
	if cfg.Memory < 1 || cfg.VCPUs < 1 {
		return nil, fmt.Errorf("lab with %d MiB and %d vCPUs: both must be at least 1", cfg.Memory, cfg.VCPUs)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return nil, fmt.Errorf("qemu-system-x86_64 not found (apt-get install qemu-system-x86): %w", err)
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating cache dir: %w", err)
	}
	l := &Lab{cfg: cfg, sem: make(chan struct{}, maxVMs)}
	if err := l.prepareCache(ctx); err != nil {
		return nil, err
	}
	nsm, labBin := cfg.Nsmount, cfg.LabBin
	if nsm == "" || labBin == "" {
		tmp, err := os.MkdirTemp("", "nsmount-lab-build-")
		if err != nil {
			return nil, fmt.Errorf("creating build dir: %w", err)
		}
		defer os.RemoveAll(tmp)
		for _, b := range []struct {
			path *string
			name string
		}{{&nsm, "nsmount"}, {&labBin, "nsmount-lab"}} {
			if *b.path != "" {
				continue
			}
			start := time.Now()
			if *b.path, err = buildCommand(ctx, tmp, b.name); err != nil {
				return nil, err
			}
			fmt.Fprintf(cfg.Log, "nsmount-lab: built %s in %v\n", b.name, time.Since(start).Round(time.Millisecond))
		}
	}
	var buf bytes.Buffer
	if err := writeLabArchive(&buf, nsm, labBin); err != nil {
		return nil, err
	}
	l.labCpio = buf.Bytes()
	return l, nil
}

// prepareCache fetches the kernel and builds the base archive under the
// cache lock.
func (l *Lab) prepareCache(ctx context.Context) error {
	unlock, err := lockCache(ctx, l.cfg.CacheDir)
	if err != nil {
		return err
	}
	defer unlock()
	ver := l.cfg.KernelVersion
	if ver == "" {
		if ver, err = resolveKernelVersion(ctx, l.cfg.KernelPackage); err != nil {
			return err
		}
	}
	if l.kernel, err = fetchKernel(ctx, l.cfg.CacheDir, ver, l.cfg.Log); err != nil {
		return err
	}
	in, err := collectBase(ctx, l.kernel)
	if err != nil {
		return err
	}
	h, err := in.hash()
	if err != nil {
		return err
	}
	l.baseFiles = in.tools
	l.base = filepath.Join(l.cfg.CacheDir, fmt.Sprintf("base-%s-%s.cpio", ver, h))
	if _, err := os.Stat(l.base); err == nil {
		return nil
	}
	start := time.Now()
	f, err := os.CreateTemp(l.cfg.CacheDir, ".base-*.cpio")
	if err != nil {
		return fmt.Errorf("creating base archive: %w", err)
	}
	defer os.Remove(f.Name())
	if err := in.writeBase(ctx, f); err != nil {
		f.Close()
		return fmt.Errorf("writing base archive: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("writing base archive: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing base archive: %w", err)
	}
	if err := os.Rename(f.Name(), l.base); err != nil {
		return fmt.Errorf("storing base archive: %w", err)
	}
	fmt.Fprintf(l.cfg.Log, "nsmount-lab: built base initramfs %s in %v\n", filepath.Base(l.base), time.Since(start).Round(time.Millisecond))
	return nil
}

// KernelVersion returns the version of the guest kernel.
func (l *Lab) KernelVersion() string { return l.kernel.version }

// Close releases the lab; later Runs fail. Runs must have returned. Each
// Run removes its own temporary files, so nothing is left on disk.
func (l *Lab) Close() error {
	l.labCpio = nil
	return nil
}

// moduleRoot returns the directory of this module's go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok {
		dir := filepath.Dir(filepath.Dir(file))
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(data), "module github.com/nsmount/nsmount\n") {
			return dir, nil
		}
	}
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding module root: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("finding module root: not inside the nsmount module (set Config.Nsmount)")
	}
	return filepath.Dir(gomod), nil
}

// buildCommand builds ./cmd/NAME statically into dir.
func buildCommand(ctx context.Context, dir, name string) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %w: %s", name, err, lastLines(string(msg), 10))
	}
	return out, nil
}

// writeLabArchive writes the per-lab archive: /init, the helper library,
// nsmount and nsmount-lab.
func writeLabArchive(w io.Writer, nsmount, labBin string) error {
	a := newArchive(w)
	files := []struct{ src, dst string }{
		{"guest/init", "/init"},
		{"guest/lab.sh", "/usr/lib/nsmount-lab/lab.sh"},
		{"guest/ct.sh", "/usr/lib/nsmount-lab/ct.sh"},
		{"guest/nfsd.sh", "/usr/lib/nsmount-lab/nfsd.sh"},
		{"guest/ganesha.sh", "/usr/lib/nsmount-lab/ganesha.sh"},
	}
	for _, gf := range files {
		data, err := guestFiles.ReadFile(gf.src)
		if err != nil {
			return err
		}
		if err := a.file(gf.dst, data, 0o755); err != nil {
			return fmt.Errorf("writing lab archive: %w", err)
		}
	}
	if err := a.hostFile(nsmount, "/usr/bin/nsmount"); err != nil {
		return fmt.Errorf("writing lab archive: %w", err)
	}
	if err := a.hostFile(labBin, "/usr/bin/nsmount-lab"); err != nil {
		return fmt.Errorf("writing lab archive: %w", err)
	}
	if err := a.close(); err != nil {
		return fmt.Errorf("writing lab archive: %w", err)
	}
	return nil
}

// writeRunArchive concatenates the base and lab archives with a third one
// holding the run's extra files and the script, into a new file in dir.
func (l *Lab) writeRunArchive(ctx context.Context, dir, script string, rc runConfig) (string, error) {
	name := filepath.Join(dir, "initrd")
	f, err := os.Create(name)
	if err != nil {
		return "", fmt.Errorf("creating initrd: %w", err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	src, err := os.Open(l.base)
	if err != nil {
		return "", fmt.Errorf("reading base archive: %w", err)
	}
	_, err = io.Copy(bw, src)
	src.Close()
	if err != nil {
		return "", fmt.Errorf("copying base archive: %w", err)
	}
	if _, err := bw.Write(l.labCpio); err != nil {
		return "", fmt.Errorf("writing initrd: %w", err)
	}
	a := newArchive(bw)
	if err := writeFiles(ctx, a, rc.files, l.baseFiles); err != nil {
		return "", err
	}
	if err := a.file("/lab/script.sh", []byte(script), 0o755); err != nil {
		return "", err
	}
	if err := a.close(); err != nil {
		return "", err
	}
	if err := bw.Flush(); err != nil {
		return "", fmt.Errorf("writing initrd: %w", err)
	}
	return name, f.Close()
}
