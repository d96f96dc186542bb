// Package containerd finds the namespaces of a containerd container: the
// container ID, through containerd's API, to an nsmount.Target of its
// task's process. It is the only package of nsmount that talks to
// containerd; the mount core never imports it.
package containerd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	containers "github.com/containerd/containerd/api/services/containers/v1"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/task"
	"github.com/nsmount/nsmount/nsmount"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Defaults for Ref.
const (
	// DefaultAddress is containerd's default gRPC socket.
	DefaultAddress = "/run/containerd/containerd.sock"
	// DefaultNamespace is the containerd namespace that ctr and
	// nerdctl use when none is given (Kubernetes uses "k8s.io").
	DefaultNamespace = "default"
	// DefaultTimeout bounds all of Open's talk with
	// containerd: connecting and every call.
	DefaultTimeout = 5 * time.Second
)

// Ref names a container managed by containerd.
type Ref struct {
	// Address is containerd's gRPC socket; "" means
	// DefaultAddress.
	Address string
	// Namespace is the containerd namespace of the container; "" means
	// DefaultNamespace.
	Namespace string
	// ID is the container ID.
	ID string
	// Timeout bounds the talk with containerd; 0 means
	// DefaultTimeout.
	Timeout time.Duration
}

// Open opens the namespaces of the task (the running init process)
// of a containerd container, as nsmount.OpenPID does for its PID.
//
// The PID is the one containerd reports, so nsmount must run in the same PID
// namespace as containerd. Between asking containerd for the PID and opening
// it, the task could exit and its PID be reused; so the task is asked for
// again after the process is held by a pidfd, and must still be running with
// the same PID while the held process is still alive.
//
// Errors: a container that does not exist (also in another namespace) or has
// no running task wraps ErrTargetNotFound; so does a containerd that cannot
// be reached (missing socket, connection refused), since then the target
// cannot be found. An address that is not a socket wraps ErrInvalidArgument;
// a containerd that does not answer within the timeout wraps ErrTimeout.
func Open(ctx context.Context, ref Ref) (_ *nsmount.Target, retErr error) {
	if ref.ID == "" {
		return nil, nsmount.WithClass(nsmount.ErrInvalidArgument, errors.New("empty container id"))
	}
	addr := orDefaultString(ref.Address, DefaultAddress)
	ns := orDefaultString(ref.Namespace, DefaultNamespace)
	timeout := ref.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	if err := checkContainerd(ctx, addr); err != nil {
		return nil, err
	}
	// Only the containers and tasks services are needed: they are asked
	// directly over gRPC, without containerd's client library (which
	// links and initialises most of containerd's API in every nsmount
	// process, helpers included).
	conn, err := grpc.NewClient("unix://"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", addr, err)
	}
	defer conn.Close()
	c := api{containers: containers.NewContainersClient(conn), tasks: tasks.NewTasksClient(conn)}
	ctx = metadata.AppendToOutgoingContext(ctx, namespaceHeader, ns)

	name := fmt.Sprintf("container %q in namespace %q", ref.ID, ns)
	pid, err := containerPID(ctx, c, ref.ID)
	if err != nil {
		return nil, containerdError(ctx, name, addr, timeout, err)
	}
	t, err := nsmount.OpenPID(int(pid))
	if err != nil {
		if errors.Is(err, nsmount.ErrTargetNotFound) {
			return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("%s: task exited while opening it: %w", name, err))
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer func() {
		if retErr != nil {
			t.Close()
		}
	}()
	// The process held by the pidfd is alive now; if containerd still says
	// the task runs with that PID, and the process is still alive after that
	// answer, the PID named the task's process throughout.
	again, err := containerPID(ctx, c, ref.ID)
	if err != nil {
		return nil, containerdError(ctx, name, addr, timeout, err)
	}
	if again != pid {
		return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("%s: task was replaced while opening it (pid %d, now %d)", name, pid, again))
	}
	if err := t.Alive(); err != nil {
		return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("%s: task exited while opening it: %w", name, err))
	}
	t.SetName(fmt.Sprintf("container %s (pid %d)", ref.ID, pid))
	if ns != DefaultNamespace {
		t.SetName(fmt.Sprintf("container %s/%s (pid %d)", ns, ref.ID, pid))
	}
	return t, nil
}

// notRunning says why a container has no live task.
type notRunning struct{ reason string }

func (e *notRunning) Error() string { return e.reason }

// namespaceHeader is the gRPC metadata key that carries the containerd
// namespace of a call.
const namespaceHeader = "containerd-namespace"

// api is the part of containerd's API that Open uses.
type api struct {
	containers containers.ContainersClient
	tasks      tasks.TasksClient
}

// containerPID returns the PID of the container's task, which must exist and
// not be stopped.
func containerPID(ctx context.Context, c api, id string) (uint32, error) {
	if _, err := c.containers.Get(ctx, &containers.GetContainerRequest{ID: id}); err != nil {
		return 0, err
	}
	resp, err := c.tasks.Get(ctx, &tasks.GetRequest{ContainerID: id})
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return 0, &notRunning{"no task"}
		}
		return 0, err
	}
	p := resp.GetProcess()
	switch st := p.GetStatus(); st {
	case task.Status_CREATED, task.Status_RUNNING, task.Status_PAUSED, task.Status_PAUSING:
	case task.Status_STOPPED:
		return 0, &notRunning{fmt.Sprintf("task stopped with exit status %d", p.GetExitStatus())}
	default:
		return 0, &notRunning{fmt.Sprintf("task status %q", strings.ToLower(st.String()))}
	}
	if p.GetPid() == 0 {
		return 0, &notRunning{"task has no pid"}
	}
	return p.GetPid(), nil
}

// containerdError classifies an error of a containerd call about name.
func containerdError(ctx context.Context, name, addr string, timeout time.Duration, err error) error {
	var nr *notRunning
	switch {
	case errors.As(err, &nr):
		return nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("%s is not running (%s)", name, nr.reason))
	case status.Code(err) == codes.NotFound:
		return nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("%s not found", name))
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("asking containerd at %s about %s: %w", addr, name, ctx.Err())
	case ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded:
		return nsmount.WithClass(nsmount.ErrTimeout, fmt.Errorf("containerd at %s did not answer about %s within %v", addr, name, timeout))
	case status.Code(err) == codes.Unavailable:
		return nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("containerd at %s is unavailable: %w", addr, err))
	}
	return fmt.Errorf("containerd at %s: %s: %w", addr, name, err)
}

// checkContainerd checks that addr is a socket that accepts connections, so
// that a wrong --address gets a plain message rather than a gRPC one.
func checkContainerd(ctx context.Context, addr string) error {
	st, err := os.Stat(addr)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("containerd socket %s does not exist", addr))
		}
		return fmt.Errorf("containerd socket: %w", err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("containerd address %s is not a socket", addr))
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return fmt.Errorf("connect to containerd at %s: %w", addr, ctx.Err())
		}
		if ctx.Err() != nil {
			return nsmount.WithClass(nsmount.ErrTimeout, fmt.Errorf("connect to containerd at %s: timed out", addr))
		}
		var serr *os.SyscallError // "connect: connection refused", without the address again
		if errors.As(err, &serr) {
			err = serr
		}
		return nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("containerd at %s is not reachable: %w", addr, err))
	}
	return conn.Close()
}

func orDefaultString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
