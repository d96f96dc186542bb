package agent

import (
	"context"
	"errors"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/nsmount/nsmount/nsmount/integration/csi/csinri"
	"github.com/nsmount/nsmount/nsmount/integration/nri"
)

// events is the agent's one NRI plugin: it hands each runtime event to
// the hook injection (nri.Plugin) and the CSI relay (csinri.Plugin), each
// as it needs the event, and decides nothing itself.
type events struct {
	a     *Agent
	hooks *nri.Plugin
	relay *csinri.Plugin // nil without CSI
}

var (
	_ stub.ConfigureInterface       = (*events)(nil)
	_ stub.SynchronizeInterface     = (*events)(nil)
	_ stub.RunPodInterface          = (*events)(nil)
	_ stub.StopPodInterface         = (*events)(nil)
	_ stub.RemovePodInterface       = (*events)(nil)
	_ stub.CreateContainerInterface = (*events)(nil)
	_ stub.StopContainerInterface   = (*events)(nil)
	_ stub.RemoveContainerInterface = (*events)(nil)
)

// Configure subscribes to the events the agent's parts handle: without
// CSI, the pod sandbox's start is nobody's.
func (e *events) Configure(_ context.Context, _, runtime, version string) (api.EventMask, error) {
	e.a.mu.Lock()
	e.a.health.Runtime = runtime + " " + version
	e.a.mu.Unlock()
	mask := api.MustParseEventMask("CreateContainer", "StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox")
	if e.relay != nil {
		mask.Set(api.Event_RUN_POD_SANDBOX)
	}
	return mask, nil
}

// Synchronize catches up on what the agent missed while it was not
// connected (a runtime restart, the agent's own): the CSI relay mounts the
// volumes of the running pods that are not mounted from their sandbox, the
// hook injection cleans up after the containers that went. Both work in
// the background.
func (e *events) Synchronize(ctx context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	e.a.mu.Lock()
	e.a.health.Synchronized = Synchronized{Time: time.Now(), Pods: len(pods), Containers: len(ctrs)}
	e.a.mu.Unlock()
	e.a.log.Info("synchronized with the runtime", "component", "nri", "pods", len(pods), "containers", len(ctrs))
	if e.relay != nil {
		e.relay.Synchronize(ctx, pods, ctrs)
	}
	return e.hooks.Synchronize(ctx, pods, ctrs)
}

// debug logs an event at level DEBUG, with what the parts read of it.
func (e *events) debug(event string, pod *api.PodSandbox, ctr *api.Container) {
	attrs := []any{"component", "nri", "pod", pod.GetNamespace() + "/" + pod.GetName(), "uid", pod.GetUid(), "netns", nri.PodNetNS(pod), "pid", pod.GetPid()}
	if ctr != nil {
		attrs = append(attrs, "container", ctr.GetId(), "name", ctr.GetName())
	}
	e.a.log.Debug(event, attrs...)
}

// RunPodSandbox starts mounting the pod's CSI volumes from its sandbox.
func (e *events) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	e.debug("RunPodSandbox", pod, nil)
	if e.relay == nil {
		return nil
	}
	return e.relay.RunPodSandbox(ctx, pod)
}

// CreateContainer holds the container back until the pod's CSI volumes
// are mounted (an error: kubelet retries), then adjusts it for the
// mounts its annotations ask for.
func (e *events) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	e.debug("CreateContainer", pod, ctr)
	if e.relay != nil {
		if _, _, err := e.relay.CreateContainer(ctx, pod, ctr); err != nil {
			return nil, nil, err
		}
	}
	return e.hooks.CreateContainer(ctx, pod, ctr)
}

// StopContainer cleans up after the container's hooks (in the
// background).
func (e *events) StopContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	e.debug("StopContainer", pod, ctr)
	return e.hooks.StopContainer(ctx, pod, ctr)
}

// RemoveContainer cleans up after the container's hooks (in the
// background).
func (e *events) RemoveContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	e.debug("RemoveContainer", pod, ctr)
	return e.hooks.RemoveContainer(ctx, pod, ctr)
}

// StopPodSandbox starts the cleanup after the pod's hooks (background),
// then unmounts the pod's CSI volumes while its network still reaches
// their servers (waited for up to the relay's Wait).
func (e *events) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	e.debug("StopPodSandbox", pod, nil)
	err := e.hooks.StopPodSandbox(ctx, pod)
	if e.relay != nil {
		err = errors.Join(err, e.relay.StopPodSandbox(ctx, pod))
	}
	return err
}

// RemovePodSandbox cleans up after the pod's hooks and forgets its CSI
// sandbox.
func (e *events) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	e.debug("RemovePodSandbox", pod, nil)
	err := e.hooks.RemovePodSandbox(ctx, pod)
	if e.relay != nil {
		err = errors.Join(err, e.relay.RemovePodSandbox(ctx, pod))
	}
	return err
}
