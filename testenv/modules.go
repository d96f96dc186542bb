package testenv

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
)

// labModules are the kernel modules the guest loads, before dependencies.
var labModules = []string{"nfs", "nfsv3", "nfsv4", "nfsd", "veth", "bridge"}

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

// indexModules maps module names to .ko paths under a kernel module tree
// (lib/modules/KVER).
func indexModules(modDir string) (map[string]string, error) {
	idx := make(map[string]string)
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			idx[normModName(strings.TrimSuffix(d.Name(), ".ko"))] = p
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

// ResolveModules returns the .ko paths of roots and their dependencies under
// modDir (lib/modules/KVER of an extracted kernel package), in load order.
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
		return ModuleDepends(p)
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
