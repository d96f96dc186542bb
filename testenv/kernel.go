package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DefaultKernelPackage is the Debian metapackage that names the current
// cloud kernel (Debian 12: 6.1).
const DefaultKernelPackage = "linux-image-cloud-amd64"

// NewerKernelPackage names Debian 12's newer cloud kernel line (6.12, from
// bookworm-security): it has what 6.1 lacks (MOVE_MOUNT_BENEATH,
// /sys/fs/nfs/DEV/shutdown), and lab tests of those run on it.
const NewerKernelPackage = "linux-image-6.12-cloud-amd64"

// kernel is an extracted Debian kernel package in the cache.
type kernel struct {
	version string // e.g. 6.1.0-56-cloud-amd64
	dir     string // root of the extracted package
}

// vmlinuz returns the path of the kernel image.
func (k *kernel) vmlinuz() string {
	return filepath.Join(k.dir, "boot", "vmlinuz-"+k.version)
}

// modDir returns the module tree of the kernel.
func (k *kernel) modDir() string {
	return filepath.Join(k.dir, "lib", "modules", k.version)
}

// resolveKernelVersion asks apt which kernel the metapackage meta depends
// on.
func resolveKernelVersion(ctx context.Context, meta string) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", meta).Output()
	if err != nil {
		return "", fmt.Errorf("running apt-cache depends %s: %w", meta, err)
	}
	v, err := parseAptDepends(out)
	if err != nil {
		return "", fmt.Errorf("resolving kernel version: %w", err)
	}
	return v, nil
}

// parseAptDepends finds "Depends: linux-image-VER" in apt-cache output and
// returns VER.
func parseAptDepends(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: ")
		if !ok {
			continue
		}
		if v, ok := strings.CutPrefix(dep, "linux-image-"); ok && v != "" && v[0] >= '0' && v[0] <= '9' {
			return v, nil
		}
	}
	return "", errors.New("no linux-image-<version> dependency in apt-cache output")
}

// fetchKernel returns the extracted kernel package for version, downloading
// and extracting it into cacheDir if it is not there yet. The extraction
// goes to a temporary directory that is renamed into place, so a partial
// extraction is never used.
func fetchKernel(ctx context.Context, cacheDir, version string, log io.Writer) (*kernel, error) {
	k := &kernel{version: version, dir: filepath.Join(cacheDir, "kernel-"+version)}
	if _, err := os.Stat(k.vmlinuz()); err == nil {
		return k, nil
	}
	tmp, err := os.MkdirTemp(cacheDir, ".kernel-")
	if err != nil {
		return nil, fmt.Errorf("creating kernel download dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	pkg := "linux-image-" + version
	fmt.Fprintf(log, "nsmount-lab: downloading %s\n", pkg)
	dl := exec.CommandContext(ctx, "apt-get", "download", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("running apt-get download %s: %w: %s", pkg, err, lastLines(string(out), 5))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s: expected one .deb, found %d", pkg, len(debs))
	}
	x := filepath.Join(tmp, "x")
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], x).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("extracting %s: %w: %s", debs[0], err, lastLines(string(out), 5))
	}
	if _, err := os.Stat(filepath.Join(x, "boot", "vmlinuz-"+version)); err != nil {
		return nil, fmt.Errorf("kernel package %s has no vmlinuz: %w", pkg, err)
	}
	if err := os.Rename(x, k.dir); err != nil {
		return nil, fmt.Errorf("moving kernel into cache: %w", err)
	}
	return k, nil
}

// lastLines returns the last n non-empty lines of s joined by " | ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
