// Package nriruntime runs containerd/nri's own runtime side (pkg/adaptation,
// what containerd and CRI-O embed) in the test's process, on a socket of
// the test's own: NRI plugins register with it as with a container
// runtime, the test sends pod and container events through it and gets
// the plugins' adjustments or errors back, and Restart closes it and
// starts it again on the same socket with the pods and containers it had,
// as a runtime restart does. The adaptation alone would keep the
// connections of the plugins it did not start when it stops; a runtime's
// process that ends closes them: so the adaptation listens on a socket of
// its own and the Runtime relays each plugin's connection to it, closing
// them all when it stops. It is for tests only: nothing in nsmount's
// binary links it.
package nriruntime

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
)

// Runtime is an NRI runtime side with the pods and containers it was told
// of. It is safe for concurrent use.
type Runtime struct {
	// Socket is the NRI socket plugins connect to.
	Socket string
	dir    string

	mu      sync.Mutex
	a       *adaptation.Adaptation
	ln      net.Listener          // Socket
	conns   map[net.Conn]struct{} // relayed, both ends
	relays  sync.WaitGroup
	pods    map[string]*api.PodSandbox
	ctrs    map[string]*api.Container
	synced  chan Sync
	version int
	// starting: the next sync is the adaptation's own at Start, for the
	// pre-installed plugins (there are none), before it listens.
	starting bool
}

// Sync is one synchronization of a plugin that connected.
type Sync struct {
	// Time is when the plugin had been synchronized.
	Time time.Time
	// Pods and Containers are how many the runtime reported.
	Pods, Containers int
	// Err is what the plugin answered, if it failed.
	Err error
}

// Start starts a runtime listening on socket; dir holds its (empty)
// directories of pre-installed plugins and their configuration.
func Start(socket, dir string) (*Runtime, error) {
	r := &Runtime{Socket: socket, dir: dir, conns: map[net.Conn]struct{}{}, pods: map[string]*api.PodSandbox{}, ctrs: map[string]*api.Container{}, synced: make(chan Sync, 64)}
	for _, d := range []string{"plugins", "conf.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := r.start(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Runtime) start() error {
	r.mu.Lock()
	r.version++
	version := r.version
	r.starting = true
	r.mu.Unlock()
	a, err := adaptation.New("nsmA-runtime", fmt.Sprintf("v0.0.%d", version), r.sync, r.update,
		adaptation.WithSocketPath(r.inner()),
		adaptation.WithPluginPath(filepath.Join(r.dir, "plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(r.dir, "conf.d")))
	if err != nil {
		return err
	}
	// Start synchronizes pre-installed plugins (none): not under r.mu.
	if err := a.Start(); err != nil {
		return err
	}
	os.Remove(r.Socket)
	ln, err := net.Listen("unix", r.Socket)
	if err != nil {
		a.Stop()
		return err
	}
	r.mu.Lock()
	r.a, r.ln = a, ln
	r.mu.Unlock()
	r.relays.Add(1)
	go r.accept(ln)
	return nil
}

// inner is the adaptation's own socket.
func (r *Runtime) inner() string { return filepath.Join(r.dir, "adaptation.sock") }

// accept relays every connection to ln to the adaptation, until ln closes.
func (r *Runtime) accept(ln net.Listener) {
	defer r.relays.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		in, err := net.Dial("unix", r.inner())
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		if r.ln != ln { // stopped meanwhile
			r.mu.Unlock()
			c.Close()
			in.Close()
			return
		}
		r.conns[c], r.conns[in] = struct{}{}, struct{}{}
		r.mu.Unlock()
		r.relays.Add(2)
		go r.copy(c, in)
		go r.copy(in, c)
	}
}

// copy copies from src to dst until either fails, then closes both.
func (r *Runtime) copy(dst, src net.Conn) {
	defer r.relays.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	r.mu.Lock()
	delete(r.conns, dst)
	delete(r.conns, src)
	r.mu.Unlock()
}

// sync synchronizes a plugin that connects with the pods and containers
// the runtime has, and reports it on Synced.
func (r *Runtime) sync(ctx context.Context, cb adaptation.SyncCB) error {
	r.mu.Lock()
	starting := r.starting
	r.starting = false
	pods := make([]*api.PodSandbox, 0, len(r.pods))
	for _, p := range r.pods {
		pods = append(pods, p)
	}
	ctrs := make([]*api.Container, 0, len(r.ctrs))
	for _, c := range r.ctrs {
		ctrs = append(ctrs, c)
	}
	r.mu.Unlock()
	_, err := cb(ctx, pods, ctrs)
	if starting {
		return err
	}
	select {
	case r.synced <- Sync{Time: time.Now(), Pods: len(pods), Containers: len(ctrs), Err: err}:
	default:
	}
	return err
}

func (r *Runtime) update(context.Context, []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) {
	return nil, nil
}

// Synced receives a Sync for every plugin that connected and was
// synchronized (the last 64 not received).
func (r *Runtime) Synced() <-chan Sync { return r.synced }

// Stop closes the runtime's socket (removing it) and its plugins'
// connections, and stops the adaptation.
func (r *Runtime) Stop() {
	r.mu.Lock()
	a, ln := r.a, r.ln
	r.a, r.ln = nil, nil
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	r.relays.Wait()
	if a != nil {
		a.Stop()
	}
}

// Restart stops the runtime and, away later, starts it again on the same
// socket, with the same pods and containers: plugins must connect again.
func (r *Runtime) Restart(away time.Duration) error {
	r.Stop()
	time.Sleep(away)
	return r.start()
}

func (r *Runtime) adaptation() (*adaptation.Adaptation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.a == nil {
		return nil, fmt.Errorf("nri runtime %s: stopped", r.Socket)
	}
	return r.a, nil
}

// RunPod relays RunPodSandbox for pod, which the runtime then has.
func (r *Runtime) RunPod(ctx context.Context, pod *api.PodSandbox) error {
	a, err := r.adaptation()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.pods[pod.Id] = pod
	r.mu.Unlock()
	return a.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: pod})
}

// CreateContainer relays CreateContainer and returns the plugins'
// adjustment; on success the runtime has the container.
func (r *Runtime) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	a, err := r.adaptation()
	if err != nil {
		return nil, err
	}
	resp, err := a.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod, Container: ctr})
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.ctrs[ctr.Id] = ctr
	r.mu.Unlock()
	return resp.GetAdjust(), nil
}

// StopContainer relays StopContainer.
func (r *Runtime) StopContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	a, err := r.adaptation()
	if err != nil {
		return err
	}
	_, err = a.StopContainer(ctx, &api.StopContainerRequest{Pod: pod, Container: ctr})
	return err
}

// RemoveContainer relays RemoveContainer; the runtime forgets the
// container.
func (r *Runtime) RemoveContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	a, err := r.adaptation()
	if err != nil {
		return err
	}
	r.mu.Lock()
	delete(r.ctrs, ctr.Id)
	r.mu.Unlock()
	return a.RemoveContainer(ctx, &api.RemoveContainerRequest{Pod: pod, Container: ctr})
}

// StopPod relays StopPodSandbox.
func (r *Runtime) StopPod(ctx context.Context, pod *api.PodSandbox) error {
	a, err := r.adaptation()
	if err != nil {
		return err
	}
	return a.StopPodSandbox(ctx, &api.StopPodSandboxRequest{Pod: pod})
}

// RemovePod relays RemovePodSandbox; the runtime forgets the pod.
func (r *Runtime) RemovePod(ctx context.Context, pod *api.PodSandbox) error {
	a, err := r.adaptation()
	if err != nil {
		return err
	}
	r.mu.Lock()
	delete(r.pods, pod.Id)
	r.mu.Unlock()
	return a.RemovePodSandbox(ctx, &api.RemovePodSandboxRequest{Pod: pod})
}
