package ctrdenv

// Containers: run one from the busybox image, stop its task, remove it.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// RunOptions shape a container made by RunContainer.
type RunOptions struct {
	// NetNS is the path of a network namespace to join (e.g.
	// /run/netns/NAME, made and given interfaces by the test); "" gives the
	// container a new, empty one.
	NetNS string
	// Args is the container's command; nil means "sleep 3600" (busybox).
	Args []string
	// SpecOpts are applied after the defaults (e.g. hooks, annotations).
	SpecOpts []oci.SpecOpts
	// Labels are the container's containerd labels.
	Labels map[string]string
}

// RunContainer creates a container with the busybox image, in c.Namespace,
// and starts its task in new PID, IPC, UTS, mount and network namespaces
// (or the network namespace o.NetNS). It returns the task's PID, as seen
// from the host. Close kills and removes the container.
func (c *Containerd) RunContainer(ctx context.Context, id string, o RunOptions) (_ int, retErr error) {
	img, err := c.BusyboxImage(ctx)
	if err != nil {
		return 0, err
	}
	args := o.Args
	if args == nil {
		args = []string{"sleep", "3600"}
	}
	specOpts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithProcessArgs(args...),
		oci.WithHostname(id),
		oci.WithCgroup(c.cgroup + "/" + id),
	}
	if o.NetNS != "" {
		specOpts = append(specOpts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: o.NetNS}))
	}
	specOpts = append(specOpts, o.SpecOpts...)
	c.mu.Lock()
	c.ids[id] = c.Namespace
	c.mu.Unlock()
	container, err := c.client.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithSnapshotter(c.cfg.Snapshotter),
		containerd.WithNewSnapshot(id, img),
		containerd.WithRuntime("io.containerd.runc.v2", &options.Options{BinaryName: c.cfg.Runc, Root: c.runcRoot}),
		containerd.WithContainerLabels(o.Labels),
		containerd.WithNewSpec(specOpts...),
	)
	if err != nil {
		return 0, fmt.Errorf("create container %s: %w", id, err)
	}
	defer func() {
		if retErr != nil {
			c.removeContainer(ctx, container)
		}
	}()
	task, err := container.NewTask(ctx, cio.LogFile(filepath.Join(c.Dir, id+".log")))
	if err != nil {
		return 0, fmt.Errorf("create task %s: %w", id, err)
	}
	if err := task.Start(ctx); err != nil {
		return 0, fmt.Errorf("start task %s: %w", id, err)
	}
	return int(task.Pid()), nil
}

// StopTask kills the container's task with SIGKILL and waits until it has
// exited, leaving the stopped task in place (as after a container exits).
func (c *Containerd) StopTask(ctx context.Context, id string) error {
	container, err := c.client.LoadContainer(ctx, id)
	if err != nil {
		return err
	}
	task, err := container.Task(ctx, nil)
	if err != nil {
		return err
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		return err
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill task %s: %w", id, err)
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("task %s did not exit: %w", id, ctx.Err())
	}
}

// RemoveContainer kills the container's task, deletes it (runc then runs
// the poststop hooks) and deletes the container with its snapshot.
func (c *Containerd) RemoveContainer(ctx context.Context, id string) error {
	container, err := c.client.LoadContainer(ctx, id)
	if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	if err := c.removeContainer(ctx, container); err != nil {
		return err
	}
	os.Remove(filepath.Join(c.Dir, id+".log"))
	return nil
}

// removeContainer kills and deletes the container's task and deletes the
// container with its snapshot, best effort.
func (c *Containerd) removeContainer(ctx context.Context, container containerd.Container) error {
	var errs []error
	if task, err := container.Task(ctx, nil); err == nil {
		if exited, err := task.Wait(ctx); err == nil {
			task.Kill(ctx, syscall.SIGKILL)
			select {
			case <-exited:
			case <-ctx.Done():
			}
		}
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
			errs = append(errs, fmt.Errorf("delete task %s: %w", container.ID(), err))
		}
	}
	if err := container.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		errs = append(errs, fmt.Errorf("delete container %s: %w", container.ID(), err))
	}
	return errors.Join(errs...)
}

// CgroupParent is the cgroup under which containers must be put (a CRI
// pod's cgroup_parent) so that Close removes their cgroups.
func (c *Containerd) CgroupParent() string { return c.cgroup }
