package ocihook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
	"github.com/nsmount/nsmount/nsmount/internal/jsonkeys"
)

// Bounds of what the hook reads.
const (
	// MaxStateSize bounds the OCI state read from stdin.
	MaxStateSize = 1 << 20
	// MaxConfigSize bounds the bundle's config.json.
	MaxConfigSize = 4 << 20
)

// Stage is an OCI hook stage that nsmount acts at.
type Stage string

// The stages.
const (
	// CreateRuntime mounts, in the container's namespaces, before its
	// process starts.
	CreateRuntime Stage = "createRuntime"
	// Poststop tears down after the container's process is gone.
	Poststop Stage = "poststop"
)

// ParseStage parses a stage name given by the user.
func ParseStage(s string) (Stage, error) {
	switch st := Stage(s); st {
	case CreateRuntime, Poststop:
		return st, nil
	}
	return "", invalid("stage %q: want %s or %s", s, CreateRuntime, Poststop)
}

// StageOf derives the hook stage from the state's status: creating is
// createRuntime, stopped is poststop; any other is an invalid argument
// (give the stage).
func StageOf(status specs.ContainerState) (Stage, error) {
	switch status {
	case specs.StateCreating:
		return CreateRuntime, nil
	case specs.StateStopped:
		return Poststop, nil
	}
	return "", invalid("cannot tell the hook stage from status %q: give --stage", status)
}

// ReadState reads the OCI state that the runtime writes to a hook's stdin
// (untrusted until parsed): see ParseState. At most MaxStateSize+1 bytes
// are read.
func ReadState(r io.Reader) (*specs.State, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxStateSize+1))
	if err != nil {
		return nil, fmt.Errorf("read OCI state from stdin: %w", err)
	}
	return ParseState(data)
}

// ParseState parses an OCI state: one JSON object of at most MaxStateSize
// bytes, with no unknown field, no key in another case or given twice
// (annotations included), nothing after it, a printable
// container ID, and a bundle that is a clean absolute path (or none).
// Errors are nsmount.ErrInvalidArgument, one line.
func ParseState(data []byte) (*specs.State, error) {
	bad := func(format string, args ...any) (*specs.State, error) {
		return nil, invalid("OCI state on stdin: "+format, args...)
	}
	switch {
	case len(data) > MaxStateSize:
		return bad("larger than %d bytes", MaxStateSize)
	case len(bytes.TrimSpace(data)) == 0:
		return bad("empty (run as an OCI runtime hook)")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s specs.State
	if err := dec.Decode(&s); err != nil {
		return bad("%s", report.OneLine(err.Error()))
	}
	if _, err := dec.Token(); err != io.EOF {
		return bad("unexpected data after the state object")
	}
	// The decoder took keys in any case, and the last of a repeated key.
	if err := jsonkeys.Check(data, stateKeys, false); err != nil {
		return bad("%v", err)
	}
	switch {
	case !printable(s.ID):
		return bad("container id %q: empty or not printable", s.ID)
	case s.Bundle != "" && (!filepath.IsAbs(s.Bundle) || filepath.Clean(s.Bundle) != s.Bundle):
		return bad("bundle %q: want a clean absolute path", s.Bundle)
	}
	return &s, nil
}

// stateKeys are the keys of an OCI state, as the runtime spec writes them.
var stateKeys = map[string]bool{"ociVersion": true, "id": true, "status": true, "pid": true, "bundle": true, "annotations": true}

// printable reports whether s is non-empty valid UTF-8 without spaces or
// control characters: a container ID that prints on one line.
func printable(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f || r == 0xfffd })
}

// ReadBundleSpec reads bundle/config.json: a regular file reached without
// following a symlink, of at most MaxConfigSize bytes; see ParseSpec.
func ReadBundleSpec(bundle string) (*specs.Spec, error) {
	if bundle == "" {
		return nil, invalid("OCI state has no bundle")
	}
	dir, err := os.OpenFile(bundle, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open bundle: %w", err)
	}
	defer dir.Close()
	name := filepath.Join(bundle, "config.json")
	fd, err := unix.Openat2(int(dir.Fd()), "config.json", &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, invalid("%s: not a regular file", name)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	spec, err := ParseSpec(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return spec, nil
}

// ParseSpec parses a bundle's config.json, of at most MaxConfigSize
// bytes. It is lenient as runtimes are (unknown fields are ignored): only
// the annotations and root.path are used. Errors are
// nsmount.ErrInvalidArgument, one line.
func ParseSpec(data []byte) (*specs.Spec, error) {
	if len(data) > MaxConfigSize {
		return nil, invalid("larger than %d bytes", MaxConfigSize)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, invalid("%s", report.OneLine(err.Error()))
	}
	return &spec, nil
}

// Rootfs returns the container's root directory: root.path, relative to
// the bundle unless absolute, cleaned.
func Rootfs(bundle string, spec *specs.Spec) (string, error) {
	if spec.Root == nil || spec.Root.Path == "" {
		return "", invalid("config.json has no root.path")
	}
	p := spec.Root.Path
	if !filepath.IsAbs(p) {
		if bundle == "" {
			return "", invalid("config.json root.path %q is relative, and the OCI state has no bundle", p)
		}
		p = filepath.Join(bundle, p)
	}
	return filepath.Clean(p), nil
}

// sandboxAnnotations mark a CRI pod's sandbox container, by runtime.
var sandboxAnnotations = map[string]string{
	"io.kubernetes.cri.container-type":  "sandbox", // containerd
	"io.kubernetes.cri-o.ContainerType": "sandbox", // CRI-O
}

// IsSandbox reports whether annotations are those of a CRI pod's sandbox
// (pause) container.
func IsSandbox(annotations map[string]string) bool {
	for k, v := range sandboxAnnotations {
		if annotations[k] == v {
			return true
		}
	}
	return false
}

// invalid is an nsmount.ErrInvalidArgument with a formatted message.
func invalid(format string, args ...any) error {
	return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf(format, args...))
}
