// Package ocihook is nsmount's OCI runtime hook (runc, crun): it reads the
// container's state and bundle (untrusted input, parsed strictly and
// bounded), and at createRuntime mounts what the container's
// admission.MountsAnnotation asks for, as the host policy admits it,
// through the Manager; at poststop it hands the container to the Manager's
// one teardown. What it did comes back as a Result, one line per event,
// for the command to print.
package ocihook

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
)

// UndoTimeout bounds undoing the mounts of a failed createRuntime hook,
// which goes on after the hook's own context is cancelled.
const UndoTimeout = 15 * time.Second

// Config is what a hook run needs besides the container's state.
type Config struct {
	// Policy is the host policy file; a missing one denies every mount
	// (admission.LoadOrDeny).
	Policy string
	// StateDir is the registry's directory ("" registry.DefaultDir). It
	// is opened (and created) only when there is something to mount;
	// poststop does nothing when it does not exist.
	StateDir string
	// Owner names who the registry records as the mounts' owner:
	// cachectl.OwnerHook, or cachectl.OwnerNRI when nsmount nri injected
	// the hook. Both record the policy's admission with each mount.
	Owner string
}

// Result is what one hook run did.
type Result struct {
	// Container is the container's ID, as the state gives it.
	Container string
	// Stage is the stage run.
	Stage Stage
	// Mounted are the mounts made at createRuntime and still in place.
	Mounted []*cachectl.MountResult
	// Teardown is what poststop cleaned up; nil when nothing was to be.
	Teardown *cachectl.TeardownReport
	// Events are one line per event, in order, for people: "mounted ...",
	// "warning: ...", "undone: ...".
	Events []string
}

func (r *Result) event(format string, args ...any) {
	r.Events = append(r.Events, report.OneLine(fmt.Sprintf(format, args...)))
}

// Run runs stage for the container whose state the runtime gave. The
// Result is never nil: it says what was done before an error too.
func Run(ctx context.Context, state *specs.State, stage Stage, c Config) (*Result, error) {
	res := &Result{Container: state.ID, Stage: stage}
	if c.Owner != cachectl.OwnerHook && c.Owner != cachectl.OwnerNRI {
		return res, invalid("owner %q: want %s or %s", c.Owner, cachectl.OwnerHook, cachectl.OwnerNRI)
	}
	switch stage {
	case CreateRuntime:
		return res, createRuntime(ctx, state, c, res)
	case Poststop:
		poststop(ctx, state, c, res)
		return res, nil
	}
	return res, invalid("stage %q: want %s or %s", stage, CreateRuntime, Poststop)
}

// planned is a mount the policy admitted, ready to be made.
type planned struct {
	vol admission.VolumeRequest
	req cachectl.MountRequest
}

// createRuntime mounts what the container's annotation asks for. Every
// request is parsed and checked against the policy before anything is
// mounted; then they are mounted in order. A required one failing undoes
// the mounts made so far and fails the hook; an optional one is skipped
// with a warning. Without the annotation (or in a pod's sandbox) nothing
// is touched: no policy, no registry.
func createRuntime(ctx context.Context, state *specs.State, c Config, res *Result) error {
	fail := func(err error) error { return fmt.Errorf("container %s: %w", state.ID, err) }
	if state.Pid <= 0 {
		return fail(invalid("OCI state has no pid"))
	}
	var spec *specs.Spec
	annotations := state.Annotations
	if annotations == nil {
		// Runtimes omit empty annotations from the state; the bundle's
		// config.json is authoritative then.
		var err error
		if spec, err = ReadBundleSpec(state.Bundle); err != nil {
			return fail(err)
		}
		annotations = spec.Annotations
	}
	value, ok := annotations[admission.MountsAnnotation]
	if !ok {
		return nil
	}
	if IsSandbox(annotations) {
		// A CRI runtime that passes pod annotations to every container
		// (containerd's pod_annotations) gives them to the pod's sandbox
		// (pause) container too: its mounts would serve nobody.
		res.event("pod sandbox: %s ignored", admission.MountsAnnotation)
		return nil
	}
	vols, err := admission.ParseMountsAnnotation(value)
	if err != nil || len(vols) == 0 {
		if err != nil {
			return fail(err)
		}
		return nil
	}
	policy, err := admission.LoadOrDeny(c.Policy)
	if err != nil {
		return fail(err)
	}
	var todo []planned
	for _, v := range vols {
		req, adm, err := policy.Check(v)
		if err != nil {
			if v.Required {
				return fail(fmt.Errorf("mount %s: %w", v, err))
			}
			res.event("warning: optional mount %s skipped: %v", v, err)
			continue
		}
		todo = append(todo, planned{vol: v, req: cachectl.MountRequest{Request: req, Admission: adm, Owner: c.Owner, Container: state.ID}})
	}
	if len(todo) == 0 {
		return nil
	}
	if spec == nil {
		if spec, err = ReadBundleSpec(state.Bundle); err != nil {
			return fail(err)
		}
	}
	rootfs, err := Rootfs(state.Bundle, spec)
	if err != nil {
		return fail(err)
	}
	mgr, err := cachectl.Open(cachectl.Config{StateDir: c.StateDir})
	if err != nil {
		return fail(err)
	}
	defer func() { res.Events = append(res.Events, report.Notices(mgr)...) }()
	t, err := nsmount.OpenPIDRootfs(state.Pid, rootfs)
	if err != nil {
		return fail(err)
	}
	defer t.Close()
	for _, p := range todo {
		m, err := mgr.Mount(ctx, t, p.req)
		if err == nil {
			res.Mounted = append(res.Mounted, m)
			res.Events = append(res.Events, report.Mounted(m)...)
			continue
		}
		var made []string
		if m != nil && m.Mounted != nil {
			made = []string{m.Mounted.Target} // mounted, but not recorded
		}
		if !p.vol.Required {
			res.event("warning: optional mount %s skipped: %v", p.vol, err)
			undo(ctx, mgr, t, made, res)
			continue
		}
		var targets []string
		for _, done := range res.Mounted {
			targets = append(targets, done.Mounted.Target)
		}
		undo(ctx, mgr, t, append(targets, made...), res)
		res.Mounted = nil
		return fail(fmt.Errorf("mount %s: %w", p.vol, err))
	}
	return nil
}

// undo unmounts targets, last first, after a mount failed. It runs on its
// own deadline: the hook's context may be what was cancelled.
func undo(ctx context.Context, mgr *cachectl.Manager, t *nsmount.Target, targets []string, res *Result) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), UndoTimeout)
	defer cancel()
	for i := len(targets) - 1; i >= 0; i-- {
		_, err := mgr.Unmount(ctx, t, targets[i], nsmount.UnmountOptions{})
		if err != nil && !errors.Is(err, nsmount.ErrNotMounted) {
			_, err = mgr.Unmount(ctx, t, targets[i], nsmount.UnmountOptions{Lazy: true})
		}
		if err != nil {
			res.event("undo: unmount %s: %v", targets[i], err)
			continue
		}
		res.event("undone: unmounted %s", targets[i])
	}
}

// poststop is the teardown after the container's process is gone, and
// with its last process its mount namespace and the mounts in it: the
// Manager forgets the container's registry entries and flushes the stale
// NFS client state of the network namespaces they were in, if those
// outlive the container (one kept by the runtime or CNI). It never fails:
// a poststop hook's failure only leaves a warning, and everything may
// already be gone; what cannot be done is a warning event.
func poststop(ctx context.Context, state *specs.State, c Config, res *Result) {
	if _, err := os.Stat(stateDir(c.StateDir)); errors.Is(err, os.ErrNotExist) {
		return // nsmount never mounted anything here
	}
	mgr, err := cachectl.Open(cachectl.Config{StateDir: c.StateDir})
	if err != nil {
		res.event("warning: %v", err)
		return
	}
	res.Teardown, err = mgr.Teardown(ctx, cachectl.TeardownRequest{Container: state.ID})
	res.Events = append(res.Events, report.Notices(mgr)...)
	if err != nil {
		res.event("warning: tear down: %v", err)
	}
	res.Events = append(res.Events, report.Teardown(res.Teardown)...)
}

// stateDir is the registry directory that cachectl.Open opens for dir.
func stateDir(dir string) string {
	if dir == "" {
		return registry.DefaultDir
	}
	return dir
}
