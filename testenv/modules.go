package testenv

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ulikunitz/xz"
)

// labModules are the kernel modules the guest loads, before dependencies:
// the NFS client and server, veth and bridge for the scenarios' networks,
// and tcp_diag (with inet_diag) for sock_diag, which nsmount uses to reset
// an NFS client's connections after a route change (as `ss -K`).
var labModules = []string{"nfs", "nfsv3", "nfsv4", "nfsd", "veth", "bridge", "tcp_diag"}

// sigMagic ends a kernel module that carries an appended signature.
const sigMagic = "~Module signature appended~\n"

// moduleSigInfoLen is the size of struct module_signature, which sits right
// before sigMagic and ends with the big-endian signature length.
const moduleSigInfoLen = 12

// StripModuleSignature returns the module image without its appended
// signature. Images without a signature are returned unchanged.
func StripModuleSignature(ko []byte) ([]byte, error) {
	if !bytes.HasSuffix(ko, []byte(sigMagic)) {
		return ko, nil
	}
	end := len(ko) - len(sigMagic)
	if end < moduleSigInfoLen {
		return nil, errors.New("module signature trailer truncated")
	}
	sigLen := int(binary.BigEndian.Uint32(ko[end-4 : end]))
	end -= moduleSigInfoLen
	if sigLen > end {
		return nil, fmt.Errorf("module signature length %d exceeds image", sigLen)
	}
	return ko[:end-sigLen], nil
}

// ModuleDepends returns the "depends=" list of a module's .modinfo section.
func ModuleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading .modinfo of %s: %w", path, err)
	}
	return parseModinfoDepends(data), nil
}

// parseModinfoDepends extracts the dependency names from the NUL-separated
// key=value strings of a .modinfo section.
func parseModinfoDepends(modinfo []byte) []string {
	var deps []string
	for _, kv := range bytes.Split(modinfo, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, normModName(d))
			}
		}
	}
	return deps
}

// normModName maps a module or file name to the kernel's canonical module
// name, which uses underscores.
func normModName(s string) string {
	return strings.ReplaceAll(s, "-", "_")
}

// moduleName returns the module name of a module file: plain ".ko" (Debian
// 12's 6.1) or xz-compressed ".ko.xz" (its 6.12, CONFIG_MODULE_COMPRESS_XZ).
func moduleName(file string) (string, bool) {
	for _, suffix := range []string{".ko", ".ko.xz"} {
		if n, ok := strings.CutSuffix(file, suffix); ok {
			return normModName(n), true
		}
	}
	return "", false
}

// indexModules maps module names to module file paths (.ko or .ko.xz)
// under a kernel module tree (lib/modules/KVER).
func indexModules(modDir string) (map[string]string, error) {
	idx := make(map[string]string)
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := moduleName(d.Name()); ok && !d.IsDir() {
			idx[name] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("indexing modules in %s: %w", modDir, err)
	}
	return idx, nil
}

// depFunc returns the dependencies of a module by name.
type depFunc func(name string) ([]string, error)

// moduleClosure returns roots and all their dependencies, ordered so that
// every module comes after the modules it depends on (load order). Modules
// of equal rank are sorted by name so the order is deterministic.
func moduleClosure(roots []string, deps depFunc) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := make(map[string]int)
	var order []string
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(path, name), " -> "))
		}
		state[name] = visiting
		ds, err := deps(name)
		if err != nil {
			return err
		}
		ds = append([]string(nil), ds...)
		sort.Strings(ds)
		for _, d := range ds {
			if err := visit(d, append(path, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, r := range roots {
		if err := visit(normModName(r), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// plainModule returns the path of module file p uncompressed: p itself, or
// for a .ko.xz the .ko beside it, decompressed on first use (into a temporary
// file renamed into place: a partial file is never used). The guest's
// busybox insmod loads plain images only.
func plainModule(p string) (string, error) {
	plain, ok := strings.CutSuffix(p, ".xz")
	if !ok {
		return p, nil
	}
	if _, err := os.Stat(plain); err == nil {
		return plain, nil
	}
	in, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer in.Close()
	r, err := xz.NewReader(in)
	if err != nil {
		return "", fmt.Errorf("decompress %s: %w", p, err)
	}
	out, err := os.CreateTemp(filepath.Dir(p), ".ko-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(out.Name())
	if _, err := io.Copy(out, io.LimitReader(r, maxModuleSize)); err != nil {
		out.Close()
		return "", fmt.Errorf("decompress %s: %w", p, err)
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(out.Name(), plain); err != nil {
		return "", fmt.Errorf("decompress %s: %w", p, err)
	}
	return plain, nil
}

// maxModuleSize bounds a decompressed module (the largest lab module,
// nfsd, is under 2 MiB).
const maxModuleSize = 64 << 20

// ResolveModules returns the plain .ko paths of roots and their
// dependencies under modDir (lib/modules/KVER of an extracted kernel
// package), in load order; compressed modules are decompressed beside
// their .ko.xz.
func ResolveModules(modDir string, roots []string) ([]string, error) {
	idx, err := indexModules(modDir)
	if err != nil {
		return nil, err
	}
	deps := func(name string) ([]string, error) {
		p, ok := idx[name]
		if !ok {
			return nil, fmt.Errorf("module %s not found in %s", name, modDir)
		}
		plain, err := plainModule(p)
		if err != nil {
			return nil, err
		}
		idx[name] = plain
		return ModuleDepends(plain)
	}
	names, err := moduleClosure(roots, deps)
	if err != nil {
		return nil, err
	}
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = idx[n]
	}
	return paths, nil
}
