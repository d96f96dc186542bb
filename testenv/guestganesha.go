package testenv

// NFS-Ganesha for lab guests: Debian's nfs-ganesha and nfs-ganesha-vfs,
// downloaded with apt-get into the cache and extracted there (nothing is
// installed on the host), with the libraries they need.

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
	"sort"
	"strings"
	"time"
)

// GaneshaPackages are the Debian packages a guest's NFS-Ganesha comes from:
// the daemon with its core library, and the VFS FSAL (the plugin that
// exports a local directory). Their library dependencies that the host
// lacks are downloaded with them.
var GaneshaPackages = []string{"nfs-ganesha", "nfs-ganesha-vfs"}

// ganeshaRoots are the files of the packages a guest needs, as paths in the
// extracted packages (= guest paths); their libraries follow (ldd). The
// FSAL is a plugin that ganesha.nfsd loads with dlopen from its default
// Plugins_Dir, so ldd of the daemon does not name it.
var ganeshaRoots = []string{
	"/usr/bin/ganesha.nfsd",
	"/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so",
}

// ganeshaLibDirs are the library directories of the extracted packages,
// searched before the host's (the daemon's RUNPATH, and the multiarch
// directories of libntirpc, liburcu and libwbclient).
var ganeshaLibDirs = []string{"/usr/lib/ganesha", "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"}

// GaneshaGuestFiles returns the files a guest needs to run NFS-Ganesha
// with the VFS FSAL: /usr/bin/ganesha.nfsd, its core library, the FSAL
// plugin and every shared library they need (ldd), each at its Debian
// path. The packages (GaneshaPackages, and those of their library
// dependencies that the host has not installed, found with apt-cache
// depends) are downloaded with apt-get download and extracted into
// cacheDir/ganesha-VERSION on first use, VERSION being apt's candidate for
// nfs-ganesha, under a lock on cacheDir/ganesha-VERSION.lock so that
// concurrent callers fetch once; libraries the host has come from the host.
// cacheDir "" means $NSMOUNT_LAB_CACHE, else DefaultCacheDir. Progress goes
// to log (nil: discarded).
//
// The daemon links libdbus but needs no D-Bus daemon: with no system bus
// it logs that it cannot connect and serves without its D-Bus interface
// (lab_ganesha stops it with a signal, not over D-Bus).
func GaneshaGuestFiles(ctx context.Context, cacheDir string, log io.Writer) ([]HostFile, error) {
	dir, err := fetchGanesha(ctx, cacheDir, log)
	if err != nil {
		return nil, err
	}
	return ganeshaFiles(ctx, filepath.Join(dir, "root"))
}

// WithGanesha installs NFS-Ganesha (GaneshaGuestFiles, from the lab's
// cache) in the guest of this run, for lab_ganesha. The first run fetches
// the packages (a few seconds), before it waits for a VM slot.
func WithGanesha() RunOption {
	return func(rc *runConfig) { rc.ganesha = true }
}

// GaneshaVersion returns apt's candidate version of nfs-ganesha, the
// version GaneshaGuestFiles fetches.
func GaneshaVersion(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "policy", GaneshaPackages[0]).Output()
	if err != nil {
		return "", fmt.Errorf("running apt-cache policy %s: %w", GaneshaPackages[0], err)
	}
	v, err := parseAptCandidate(out)
	if err != nil {
		return "", fmt.Errorf("%s: %w (apt-get update?)", GaneshaPackages[0], err)
	}
	return v, nil
}

// parseAptCandidate returns the "Candidate:" version of apt-cache policy
// output.
func parseAptCandidate(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Candidate: ")
		if !ok {
			continue
		}
		if v = strings.TrimSpace(v); v == "" || v == "(none)" {
			return "", errors.New("no candidate version in apt's package lists")
		}
		return v, nil
	}
	return "", errors.New("no candidate version in apt-cache policy output")
}

// parseAptDependsPackages returns the packages that apt-cache depends
// output (for one package) lists as Depends or PreDepends, first
// alternatives only ("|Depends:" marks a group whose later alternatives
// follow on indented lines); virtual packages ("<name>") are left out.
func parseAptDependsPackages(out []byte) []string {
	var deps []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		line = strings.TrimPrefix(line, "|")
		var dep string
		var ok bool
		if dep, ok = strings.CutPrefix(line, "Depends: "); !ok {
			if dep, ok = strings.CutPrefix(line, "PreDepends: "); !ok {
				continue
			}
		}
		dep = strings.TrimSpace(dep)
		if dep == "" || strings.HasPrefix(dep, "<") {
			continue
		}
		dep, _, _ = strings.Cut(dep, ":") // libfoo:amd64
		deps = append(deps, dep)
	}
	return deps
}

// ganeshaComplete reports whether dir holds a finished extraction.
func ganeshaComplete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "packages"))
	return err == nil
}

// fetchGanesha returns cacheDir/ganesha-VERSION, downloading and extracting
// the packages there if needed.
func fetchGanesha(ctx context.Context, cacheDir string, log io.Writer) (string, error) {
	if cacheDir == "" {
		cacheDir = Config{}.withDefaults().CacheDir
	}
	if log == nil {
		log = io.Discard
	}
	ver, err := GaneshaVersion(ctx)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cacheDir, "ganesha-"+ver)
	if ganeshaComplete(dir) {
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
	if ganeshaComplete(dir) {
		return dir, nil // fetched by whoever held the lock
	}
	start := time.Now()
	tmp, err := os.MkdirTemp(cacheDir, ".ganesha-")
	if err != nil {
		return "", fmt.Errorf("create ganesha download dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	pkgs, err := ganeshaPackageSet(ctx)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(log, "nsmount-lab: downloading %s\n", strings.Join(pkgs, " "))
	dl := exec.CommandContext(ctx, "apt-get", append([]string{"download"}, pkgs...)...)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return "", fmt.Errorf("running apt-get download %s: %w: %s", strings.Join(pkgs, " "), err, lastLines(string(out), 5))
	}
	root := filepath.Join(tmp, "x", "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	var list strings.Builder
	for _, p := range pkgs {
		debs, _ := filepath.Glob(filepath.Join(tmp, p+"_*.deb"))
		if len(debs) != 1 {
			return "", fmt.Errorf("apt-get download %s: expected one .deb, found %d", p, len(debs))
		}
		if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], root).CombinedOutput(); err != nil {
			return "", fmt.Errorf("extracting %s: %w: %s", debs[0], err, lastLines(string(out), 5))
		}
		fields, err := exec.CommandContext(ctx, "dpkg-deb", "-f", debs[0], "Version").Output()
		if err != nil {
			return "", fmt.Errorf("reading the version of %s: %w", debs[0], err)
		}
		fmt.Fprintf(&list, "%s %s\n", p, strings.TrimSpace(string(fields)))
	}
	if _, err := ganeshaFiles(ctx, root); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "x", "packages"), []byte(list.String()), 0o644); err != nil {
		return "", err
	}
	if err := os.Chmod(filepath.Join(tmp, "x"), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(filepath.Join(tmp, "x"), dir); err != nil {
		return "", fmt.Errorf("store ganesha %s in the cache: %w", ver, err)
	}
	fmt.Fprintf(log, "nsmount-lab: fetched NFS-Ganesha %s (%s) in %v\n", ver,
		strings.ReplaceAll(strings.TrimSpace(list.String()), "\n", ", "), time.Since(start).Round(time.Millisecond))
	return dir, nil
}

// ganeshaPackageSet returns GaneshaPackages and, following Depends from
// them, every library package ("lib*") that the host has not installed,
// sorted. Programs they depend on (dbus, rpcbind, nfs-common) are not
// followed: the guest has rpcbind and rpc.statd already and runs no D-Bus.
func ganeshaPackageSet(ctx context.Context) ([]string, error) {
	want := map[string]bool{}
	queue := append([]string(nil), GaneshaPackages...)
	for _, p := range GaneshaPackages {
		want[p] = true
	}
	seen := map[string]bool{}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", p).Output()
		if err != nil {
			return nil, fmt.Errorf("running apt-cache depends %s: %w", p, err)
		}
		for _, d := range parseAptDependsPackages(out) {
			if seen[d] || !strings.HasPrefix(d, "lib") || debInstalled(ctx, d) {
				continue
			}
			want[d] = true
			queue = append(queue, d)
		}
	}
	pkgs := make([]string, 0, len(want))
	for p := range want {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	return pkgs, nil
}

// debInstalled reports whether Debian package name is installed on the host.
func debInstalled(ctx context.Context, name string) bool {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${db:Status-Abbrev}", name).Output()
	return err == nil && strings.HasPrefix(string(out), "ii")
}

// ganeshaFiles lists the guest files of the extracted packages under root:
// ganeshaRoots and their libraries, those in root at their path inside it,
// the others from the host. It fails when a library is found in neither.
func ganeshaFiles(ctx context.Context, root string) ([]HostFile, error) {
	var libPath []string
	for _, d := range ganeshaLibDirs {
		libPath = append(libPath, filepath.Join(root, d))
	}
	env := append(os.Environ(), "LD_LIBRARY_PATH="+strings.Join(libPath, ":"))
	var files []HostFile
	seen := map[string]bool{}
	add := func(src string) {
		dst := src
		if rel, err := filepath.Rel(root, src); err == nil && !strings.HasPrefix(rel, "..") {
			dst = "/" + rel
		}
		if !seen[dst] {
			seen[dst] = true
			files = append(files, HostFile{Src: src, Dst: dst})
		}
	}
	for _, r := range ganeshaRoots {
		p := filepath.Join(root, r)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("ganesha package file %s: %w", r, err)
		}
		add(p)
		cmd := exec.CommandContext(ctx, "ldd", p)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("running ldd %s: %w", p, err)
		}
		if missing := lddNotFound(out); len(missing) > 0 {
			return nil, fmt.Errorf("%s needs %s, in neither the fetched packages nor the host (delete %s to fetch again)",
				r, strings.Join(missing, ", "), filepath.Dir(root))
		}
		for _, l := range parseLdd(out) {
			add(l)
		}
	}
	return files, nil
}

// lddNotFound returns the libraries ldd output says are not found.
func lddNotFound(out []byte) []string {
	var missing []string
	for _, line := range strings.Split(string(out), "\n") {
		if name, _, ok := strings.Cut(strings.TrimSpace(line), " => not found"); ok {
			missing = append(missing, name)
		}
	}
	return missing
}
