package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/nsmount"
)

// Bounds of what the hook reads.
const (
	// maxStateSize bounds the OCI state read from stdin.
	maxStateSize = 1 << 20
	// maxConfigSize bounds the bundle's config.json.
	maxConfigSize = 4 << 20
	// undoTimeout bounds undoing the mounts of a failed createRuntime hook,
	// which goes on after the hook's own context is cancelled.
	undoTimeout = 15 * time.Second
)

// Hook stages.
const (
	stageCreateRuntime = "createRuntime"
	stagePoststop      = "poststop"
)

func newHookCommand() *cobra.Command {
	var stage, policyPath, logPath, owner string
	cmd := &cobra.Command{
		Use:   "hook [--stage createRuntime|poststop] [--policy PATH] [--log FILE] [--owner hook|nri]",
		Short: "OCI runtime hook: mount the NFS volumes a container's annotation asks for",
		Long: `hook is an OCI runtime hook (runc, crun). It reads the container's state
(JSON) on stdin. At createRuntime it mounts what the container's
` + nsmount.MountsAnnotation + ` annotation asks for, as the host policy allows, into the
container's namespaces, before the container's process starts. A required
mount that fails fails the container (its mounts made so far are undone);
an optional one is skipped with a warning. At poststop it tears down.
Without the annotation it does nothing. One line per mount goes to stderr
(runc shows it only when the hook fails) and, with --log, to FILE.`,
		Example: `  "hooks": {
    "createRuntime": [{"path": "/usr/local/bin/nsmount", "args": ["nsmount", "hook", "--stage", "createRuntime"]}],
    "poststop":      [{"path": "/usr/local/bin/nsmount", "args": ["nsmount", "hook", "--stage", "poststop"]}]
  }`,
		Args: exactArgs(0, "no arguments (the OCI state comes on stdin)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if owner != "hook" && owner != "nri" {
				return usageError{fmt.Errorf("--owner %q: want hook or nri", owner)}
			}
			state, err := readState(cmd.InOrStdin())
			if err != nil {
				return err
			}
			stage := stage
			if stage == "" {
				if stage, err = stageOf(state.Status); err != nil {
					return err
				}
			}
			h := &hook{id: state.ID, out: cmd.ErrOrStderr(), logPath: logPath, owner: owner}
			defer h.close()
			h.stateDir, _ = cmd.Flags().GetString("state-dir")
			switch stage {
			case stageCreateRuntime:
				err = h.createRuntime(cmd.Context(), state, policyPath)
			case stagePoststop:
				err = h.teardown(cmd.Context(), state)
			default:
				return usageError{fmt.Errorf("--stage %q: want %s or %s", stage, stageCreateRuntime, stagePoststop)}
			}
			if err != nil {
				h.logLine("nsmount: " + oneLine(err.Error()))
			}
			return err
		},
	}
	cmd.Flags().StringVar(&stage, "stage", "", "hook stage: createRuntime or poststop (default: from the state's status)")
	cmd.Flags().StringVar(&policyPath, "policy", nsmount.DefaultPolicyPath, "host policy file deciding what annotations may mount")
	cmd.Flags().StringVar(&logPath, "log", "", "also append what the hook does to FILE")
	cmd.Flags().StringVar(&owner, "owner", "hook", "who the registry names as the mounts' owner: hook, or nri when nsmount nri injected the hook")
	return cmd
}

// stageOf derives the hook stage from the state's status.
func stageOf(status specs.ContainerState) (string, error) {
	switch status {
	case specs.StateCreating:
		return stageCreateRuntime, nil
	case specs.StateStopped:
		return stagePoststop, nil
	}
	return "", usageError{fmt.Errorf("cannot tell the hook stage from status %q: give --stage", status)}
}

// readState reads the OCI state from r: one JSON object of at most
// maxStateSize bytes, with no unknown fields and nothing after it.
func readState(r io.Reader) (*specs.State, error) {
	bad := func(format string, args ...any) (*specs.State, error) {
		return nil, invalid("OCI state on stdin: "+format, args...)
	}
	data, err := io.ReadAll(io.LimitReader(r, maxStateSize+1))
	if err != nil {
		return nil, fmt.Errorf("read OCI state from stdin: %w", err)
	}
	switch {
	case len(data) > maxStateSize:
		return bad("larger than %d bytes", maxStateSize)
	case len(bytes.TrimSpace(data)) == 0:
		return bad("empty (run as an OCI runtime hook)")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s specs.State
	if err := dec.Decode(&s); err != nil {
		return bad("%s", oneLine(err.Error()))
	}
	if _, err := dec.Token(); err != io.EOF {
		return bad("unexpected data after the state object")
	}
	switch {
	case s.ID == "" || strings.ContainsFunc(s.ID, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return bad("container id %q: empty or not printable", s.ID)
	case s.Bundle != "" && (!filepath.IsAbs(s.Bundle) || filepath.Clean(s.Bundle) != s.Bundle):
		return bad("bundle %q: want a clean absolute path", s.Bundle)
	}
	return &s, nil
}

// hook reports what one hook run does, one line per event, on stderr and
// in the --log file. The file is opened at the first line, so a hook with
// nothing to do touches nothing; a log that cannot be written is reported
// on stderr and does not stop the mounts.
type hook struct {
	id      string
	out     io.Writer
	logPath string   // "" without --log
	log     *os.File // opened on first use
	owner   string   // the registry entries' owner

	// stateDir is the registry; opened (and created) on first use, so a
	// container without the annotation touches nothing.
	stateDir string
	mgr      *cachectl.Manager
}

// manager opens the registry on first use.
func (h *hook) manager() (*cachectl.Manager, error) {
	if h.mgr == nil {
		report := func(s string) { h.printf("%s", s) }
		reg, err := cachectl.Open(h.stateDir, cachectl.WithReporter(report))
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", h.id, err)
		}
		h.mgr = &cachectl.Manager{Registry: reg, Report: report}
	}
	return h.mgr, nil
}

func (h *hook) printf(format string, args ...any) {
	line := "nsmount: container " + h.id + ": " + oneLine(fmt.Sprintf(format, args...))
	fmt.Fprintln(h.out, line)
	h.logLine(line)
}

func (h *hook) logLine(line string) {
	if h.logPath == "" {
		return
	}
	if h.log == nil {
		f, err := os.OpenFile(h.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o640)
		if err != nil {
			fmt.Fprintf(h.out, "nsmount: container %s: warning: hook log: %s\n", h.id, oneLine(err.Error()))
			h.logPath = ""
			return
		}
		h.log = f
	}
	fmt.Fprintf(h.log, "%s %s\n", time.Now().UTC().Format(time.RFC3339), line)
}

func (h *hook) close() {
	if h.log != nil {
		h.log.Close()
	}
}

// planned is a mount allowed by the policy, ready to be made.
type planned struct {
	vol nsmount.VolumeRequest
	req nsmount.Request
}

// createRuntime mounts what the container's annotation asks for. Every
// request is parsed and checked against the policy before anything is
// mounted; then they are mounted in order. A required one failing undoes the
// mounts made so far and fails the hook.
func (h *hook) createRuntime(ctx context.Context, state *specs.State, policyPath string) error {
	if state.Pid <= 0 {
		return invalid("container %s: OCI state has no pid", state.ID)
	}
	var spec *specs.Spec
	annotations := state.Annotations
	if annotations == nil {
		// Runtimes omit empty annotations from the state; the bundle's
		// config.json is authoritative then.
		var err error
		if spec, err = readBundleSpec(state.Bundle); err != nil {
			return fmt.Errorf("container %s: %w", state.ID, err)
		}
		annotations = spec.Annotations
	}
	value, ok := annotations[nsmount.MountsAnnotation]
	if !ok {
		return nil
	}
	if isSandbox(annotations) {
		// A CRI runtime that passes pod annotations to every container
		// (containerd's pod_annotations) gives them to the pod's sandbox
		// (pause) container too: its mounts would serve nobody.
		h.printf("pod sandbox: %s ignored", nsmount.MountsAnnotation)
		return nil
	}
	vols, err := nsmount.ParseMountsAnnotation(value)
	if err != nil {
		return fmt.Errorf("container %s: %w", state.ID, err)
	}
	if len(vols) == 0 {
		return nil
	}
	check, err := loadChecker(policyPath)
	if err != nil {
		return fmt.Errorf("container %s: %w", state.ID, err)
	}
	var todo []planned
	for _, v := range vols {
		req, err := check(v)
		if err != nil {
			if v.Required {
				return fmt.Errorf("container %s: mount %s: %w", state.ID, v, err)
			}
			h.printf("warning: optional mount %s skipped: %v", v, err)
			continue
		}
		todo = append(todo, planned{vol: v, req: req})
	}
	if len(todo) == 0 {
		return nil
	}
	if spec == nil {
		if spec, err = readBundleSpec(state.Bundle); err != nil {
			return fmt.Errorf("container %s: %w", state.ID, err)
		}
	}
	rootfs, err := rootfsOf(state.Bundle, spec)
	if err != nil {
		return fmt.Errorf("container %s: %w", state.ID, err)
	}
	mgr, err := h.manager()
	if err != nil {
		return err
	}
	t, err := nsmount.OpenPIDRootfs(state.Pid, rootfs)
	if err != nil {
		return fmt.Errorf("container %s: %w", state.ID, err)
	}
	defer t.Close()
	var done []string
	for _, p := range todo {
		m, err := mgr.Mount(ctx, t, p.req, cachectl.MountOptions{Owner: h.owner, Container: state.ID})
		if err != nil {
			if !p.vol.Required {
				h.printf("warning: optional mount %s skipped: %v", p.vol, err)
				continue
			}
			h.undo(ctx, t, done)
			return fmt.Errorf("container %s: mount %s: %w", state.ID, p.vol, err)
		}
		done = append(done, m.Target)
		h.printf("mounted %s on %s (nfs %s, dev %s, address %s, route %s)", m.Source, m.Target, m.Version, m.Dev, m.Address, m.Route)
	}
	return nil
}

// undo unmounts targets in reverse order after a required mount failed.
// It runs on its own deadline: the hook's context may be what was cancelled.
func (h *hook) undo(ctx context.Context, t *nsmount.Target, targets []string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	for i := len(targets) - 1; i >= 0; i-- {
		err := h.mgr.Unmount(ctx, t, targets[i], nsmount.UnmountOptions{})
		if err != nil && !errors.Is(err, nsmount.ErrNotMounted) {
			err = h.mgr.Unmount(ctx, t, targets[i], nsmount.UnmountOptions{Lazy: true})
		}
		if err != nil {
			h.printf("undo: unmount %s: %v", targets[i], err)
			continue
		}
		h.printf("undone: unmounted %s", targets[i])
	}
}

// loadChecker loads the policy. A missing policy file denies every mount
// (deny by default); an unreadable or malformed one is an error.
func loadChecker(path string) (func(nsmount.VolumeRequest) (nsmount.Request, error), error) {
	p, err := nsmount.LoadPolicy(path)
	if errors.Is(err, fs.ErrNotExist) {
		return func(nsmount.VolumeRequest) (nsmount.Request, error) {
			return nsmount.Request{}, nsmount.WithClass(nsmount.ErrDenied, fmt.Errorf("denied: policy %s does not exist (deny by default)", path))
		}, nil
	}
	if err != nil {
		return nil, err
	}
	return p.Check, nil
}

// readBundleSpec reads bundle/config.json: a regular file (no symlink) of at
// most maxConfigSize bytes.
func readBundleSpec(bundle string) (*specs.Spec, error) {
	if bundle == "" {
		return nil, invalid("OCI state has no bundle")
	}
	dir, err := os.OpenFile(bundle, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open bundle: %w", err)
	}
	defer dir.Close()
	fd, err := unix.Openat2(int(dir.Fd()), "config.json", &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(bundle, "config.json"), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(bundle, "config.json"))
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, invalid("%s: not a regular file", f.Name())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	if len(data) > maxConfigSize {
		return nil, invalid("%s: larger than %d bytes", f.Name(), maxConfigSize)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, invalid("%s: %s", f.Name(), oneLine(err.Error()))
	}
	return &spec, nil
}

// rootfsOf returns the container's root directory: root.path, relative to
// the bundle unless absolute.
func rootfsOf(bundle string, spec *specs.Spec) (string, error) {
	if spec.Root == nil || spec.Root.Path == "" {
		return "", invalid("config.json has no root.path")
	}
	p := spec.Root.Path
	if !filepath.IsAbs(p) {
		p = filepath.Join(bundle, p)
	}
	return filepath.Clean(p), nil
}

// teardown is the poststop stage: the container's process is gone, and with
// its last process its mount namespace and the mounts in it. What can remain
// is NFS client state in a network namespace that outlives the container
// (one kept by the runtime or CNI): superblocks of its mounts held by copies
// elsewhere. teardown forgets the container's registry entries and flushes
// the stale state of the network namespaces they were in, if those still
// have a process to read them through. It reports what it did and never
// fails the runtime for what it cannot remove (a poststop hook's failure
// only leaves a warning, and everything may already be gone).
func (h *hook) teardown(ctx context.Context, state *specs.State) error {
	if _, err := os.Stat(h.stateDir); errors.Is(err, os.ErrNotExist) {
		return nil // nsmount never mounted anything here
	}
	if _, err := h.manager(); err != nil {
		h.printf("warning: %v", err)
		return nil
	}
	nets := map[cachectl.NSID]bool{}
	err := h.mgr.Registry.View(func(s *cachectl.State) error {
		for _, e := range s.Entries {
			if e.Target.Container == state.ID {
				nets[e.Target.NetNS] = true
			}
		}
		return nil
	})
	if err != nil {
		h.printf("warning: read registry: %v", err)
	}
	if _, err := h.mgr.Reconcile(); err != nil {
		h.printf("warning: reconcile registry: %v", err)
	}
	for ns := range nets {
		rep, err := h.mgr.Flush(ctx, cachectl.FlushOptions{NetNS: &ns})
		switch {
		case err != nil:
			h.printf("warning: flush netns %s: %v", ns, err)
		case len(rep.Remaining) > 0:
			h.printf("warning: %d stale NFS superblock(s) remain in netns %s: %s", len(rep.Remaining), ns, rep.Remaining[0].Why)
		}
	}
	return nil
}

// sandboxAnnotations mark a CRI pod's sandbox container, by runtime.
var sandboxAnnotations = map[string]string{
	"io.kubernetes.cri.container-type":  "sandbox", // containerd
	"io.kubernetes.cri-o.ContainerType": "sandbox", // CRI-O
}

// isSandbox reports whether annotations are those of a CRI pod sandbox.
func isSandbox(annotations map[string]string) bool {
	for k, v := range sandboxAnnotations {
		if annotations[k] == v {
			return true
		}
	}
	return false
}

// invalid is an ErrInvalidArgument with a formatted message.
func invalid(format string, args ...any) error {
	return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf(format, args...))
}
