package nsmount

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A Prober probes mounts as ProbeMount does, but in long-lived helper
// processes instead of one process per probe. Starting a helper costs
// about 40 ms of CPU under TCG, more than the probe itself: a watch that
// probes 200 mounts every 5 s through ProbeMount needs more than a core
// for that alone. A Prober starts one helper and sends it every probe
// (the target's namespace and root descriptors over a Unix socket); the
// helper runs each on a thread of its own, so probes do not wait for each
// other.
//
// A probe that passes its timeout is reported hung, as ProbeMount does,
// and its helper is retired: it takes no new probes (the next probe starts
// a fresh helper), finishes those it has, and is killed once none is left
// or the last of their deadlines has passed. The thread stuck on a hung
// server dies with it, so a hung server costs the Prober one timeout and
// one helper start, never a stuck thread in the caller, and other probes
// never wait for it.
//
// A Prober is safe for concurrent use. The zero value is not usable: use
// NewProber.
type Prober struct {
	helper string // the executable started as helper; "": this binary
	mu     sync.Mutex
	cur    *proberProc // takes new probes; nil: started on demand
	live   map[*proberProc]bool
	closed bool
	// started counts the helpers ever started (for tests and metrics).
	started int
}

// NewProber returns a Prober that starts helper as its helpers (as
// Target.SetHelper: "" means this binary), the first one with the first
// probe.
func NewProber(helper string) *Prober {
	return &Prober{helper: helper, live: map[*proberProc]bool{}}
}

// Started returns how many helper processes the Prober has started.
func (p *Prober) Started() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

// Close kills the Prober's helpers; probes still running fail.
func (p *Prober) Close() error {
	p.mu.Lock()
	p.closed = true
	procs := make([]*proberProc, 0, len(p.live))
	for pp := range p.live {
		procs = append(procs, pp)
	}
	p.cur = nil
	p.mu.Unlock()
	for _, pp := range procs {
		pp.kill()
	}
	return nil
}

// Probe probes the NFS mount at target in t (see ProbeMount: the same
// request, answer and errors).
func (p *Prober) Probe(ctx context.Context, t *Target, target string, mountID uint64, timeout time.Duration) (Health, error) {
	timeout = orDefault(timeout, DefaultProbeMountTimeout)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if t.netns == nil || t.mntns == nil {
		return Health{}, errors.New("target is closed")
	}
	start := time.Now()
	pp, err := p.proc()
	if err != nil {
		return Health{}, err
	}
	resp, err := pp.call(ctx, t, helperRequest{Op: "probe", Target: target, MountID: mountID})
	if errors.Is(err, ErrTimeout) {
		p.retire(pp)
	}
	return healthOf(resp, err, timeout, time.Since(start))
}

// proc returns the helper that takes new probes, starting one if needed.
func (p *Prober) proc() (*proberProc, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("prober is closed")
	}
	if p.cur != nil && !p.cur.exited() {
		return p.cur, nil
	}
	pp, err := startProberProc(p.helper, func(pp *proberProc) {
		p.mu.Lock()
		delete(p.live, pp)
		if p.cur == pp {
			p.cur = nil
		}
		p.mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	p.cur = pp
	p.live[pp] = true
	p.started++
	return pp, nil
}

// retire stops pp from taking new probes; it is killed once its probes
// are done.
func (p *Prober) retire(pp *proberProc) {
	p.mu.Lock()
	if p.cur == pp {
		p.cur = nil
	}
	p.mu.Unlock()
	pp.retire()
}

// proberMessage is one request or response on a Prober's socket.
type proberMessage struct {
	ID   uint64          `json:"id"`
	Req  *helperRequest  `json:"req,omitempty"`
	Resp *helperResponse `json:"resp,omitempty"`
}

// proberMaxMessage bounds a message on a Prober's socket.
const proberMaxMessage = 64 << 10

// proberProc is one long-lived probe helper.
type proberProc struct {
	sock int // our end of the SOCK_SEQPACKET pair
	// sockMu is held shared by each send on sock and exclusively by its
	// close: a send never goes to a descriptor number closed meanwhile,
	// and perhaps by then another socket of this process.
	sockMu sync.RWMutex
	cmd    *exec.Cmd
	reaped chan struct{} // closed once the process is reaped
	gone   func(*proberProc)

	mu       sync.Mutex
	next     uint64
	waiting  map[uint64]chan *helperResponse
	retiring bool
	dead     bool // the socket failed or the process was killed
	closed   bool // sock is closed (set holding both sockMu and mu)
}

// startProberProc starts exe ("": this binary) as a helper in serve mode;
// gone is called once it has exited.
func startProberProc(exe string, gone func(*proberProc)) (*proberProc, error) {
	if exe == "" {
		exe = "/proc/self/exe"
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("prober socket: %w", err)
	}
	child := os.NewFile(uintptr(fds[1]), "prober")
	pp := &proberProc{sock: fds[0], reaped: make(chan struct{}), gone: gone, waiting: map[uint64]chan *helperResponse{}}
	pp.cmd = &exec.Cmd{
		Path:        exe,
		Args:        []string{helperName, proberServeArg},
		ExtraFiles:  []*os.File{child},
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	}
	// Pdeathsig fires when the forking thread exits: it stays locked
	// until the helper is reaped (as callHelper's does).
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := pp.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		pp.cmd.Wait()
		close(pp.reaped)
	}()
	err = <-started
	child.Close()
	if err != nil {
		unix.Close(pp.sock)
		return nil, fmt.Errorf("start prober helper: %w", err)
	}
	go pp.read()
	return pp, nil
}

// exited reports whether pp can no longer take probes.
func (pp *proberProc) exited() bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.dead || pp.retiring
}

// call sends req with t's descriptors and waits for the answer until ctx
// is done (then ErrTimeout).
func (pp *proberProc) call(ctx context.Context, t *Target, req helperRequest) (*helperResponse, error) {
	files := []int{int(t.netns.Fd()), int(t.mntns.Fd())}
	if t.root != nil {
		req.HasRoot = true
		files = append(files, int(t.root.Fd()))
	}
	pp.mu.Lock()
	if pp.dead {
		pp.mu.Unlock()
		return nil, errors.New("prober helper has exited")
	}
	pp.next++
	id := pp.next
	ch := make(chan *helperResponse, 1)
	pp.waiting[id] = ch
	pp.mu.Unlock()
	body, err := json.Marshal(proberMessage{ID: id, Req: &req})
	if err == nil {
		pp.sockMu.RLock()
		if pp.closed {
			err = errors.New("prober helper has exited")
		} else {
			err = unix.Sendmsg(pp.sock, body, unix.UnixRights(files...), nil, 0)
		}
		pp.sockMu.RUnlock()
		runtime.KeepAlive(t)
	}
	if err != nil {
		pp.done(id)
		return nil, fmt.Errorf("send probe to prober helper: %w", err)
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return nil, errors.New("prober helper exited during the probe")
		}
		pp.done(id)
		if resp.Error != "" {
			return resp, resp.err()
		}
		return resp, nil
	case <-ctx.Done():
		pp.done(id)
		return nil, withClass(ErrTimeout, fmt.Errorf("%s in %s did not finish in time, its helper retired: %w", req.Op, t, context.Cause(ctx)))
	}
}

// done forgets probe id; a retiring helper with nothing left is killed.
func (pp *proberProc) done(id uint64) {
	pp.mu.Lock()
	delete(pp.waiting, id)
	last := pp.retiring && len(pp.waiting) == 0
	pp.mu.Unlock()
	if last {
		pp.kill()
	}
}

// retire takes pp out of service; it is killed now if it has nothing
// left, else once its last probe is answered or abandoned.
func (pp *proberProc) retire() {
	pp.mu.Lock()
	pp.retiring = true
	last := len(pp.waiting) == 0
	pp.mu.Unlock()
	if last {
		pp.kill()
	}
}

// kill ends the helper (once) and waits, a bounded time, for it to be
// reaped.
func (pp *proberProc) kill() {
	pp.mu.Lock()
	if pp.dead {
		pp.mu.Unlock()
		return
	}
	pp.dead = true
	pp.mu.Unlock()
	pp.cmd.Process.Kill()
	pp.mu.Lock()
	if !pp.closed {
		unix.Shutdown(pp.sock, unix.SHUT_RDWR) // ends read
	}
	pp.mu.Unlock()
	select {
	case <-pp.reaped:
	case <-time.After(killGrace):
		// Unkillable for now (uninterruptible sleep): reaped later by its
		// goroutine.
	}
}

// read delivers the helper's answers until its socket ends.
func (pp *proberProc) read() {
	buf := make([]byte, proberMaxMessage)
	for {
		n, _, _, _, err := unix.Recvmsg(pp.sock, buf, nil, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			break
		}
		var msg proberMessage
		if json.Unmarshal(buf[:n], &msg) != nil || msg.Resp == nil {
			continue
		}
		pp.mu.Lock()
		ch := pp.waiting[msg.ID]
		pp.mu.Unlock()
		if ch != nil {
			ch <- msg.Resp
		}
	}
	pp.sockMu.Lock() // after the sends in flight (a shut-down or dead peer ends them)
	pp.mu.Lock()
	pp.dead = true
	for id, ch := range pp.waiting {
		close(ch)
		delete(pp.waiting, id)
	}
	pp.closed = true
	unix.Close(pp.sock)
	pp.mu.Unlock()
	pp.sockMu.Unlock()
	pp.cmd.Process.Kill()
	go func() {
		<-pp.reaped
		pp.gone(pp)
	}()
}

// proberServeArg is argv[1] of a helper that serves a Prober.
const proberServeArg = "serve-probes"

// proberServe is the helper's side of a Prober: it reads requests with
// their descriptors from the socket at fd, runs each on a goroutine of
// its own (Target.inside: a thread in the target's namespaces) and writes
// each answer back, until the socket ends. Only probes are served.
func proberServe(fd int) int {
	var wmu sync.Mutex
	reply := func(id uint64, resp *helperResponse) {
		body, err := json.Marshal(proberMessage{ID: id, Resp: resp})
		if err != nil {
			return
		}
		wmu.Lock()
		defer wmu.Unlock()
		unix.Sendmsg(fd, body, nil, nil, 0)
	}
	buf := make([]byte, proberMaxMessage)
	oob := make([]byte, unix.CmsgSpace(3*4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return 0
		}
		var files []int
		if scms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, scm := range scms {
				if fds, err := unix.ParseUnixRights(&scm); err == nil {
					files = append(files, fds...)
				}
			}
		}
		var msg proberMessage
		if err := json.Unmarshal(buf[:n], &msg); err != nil || msg.Req == nil {
			closeAll(files)
			continue
		}
		go func() {
			resp := &helperResponse{}
			start := time.Now()
			err := proberRun(msg.Req, files, resp)
			if err != nil {
				resp.setErr(err)
			}
			resp.Elapsed = time.Since(start).String()
			reply(msg.ID, resp)
		}()
	}
}

// proberRun runs one probe request with its descriptors (netns, mntns
// and, with HasRoot, the root), which it closes.
func proberRun(req *helperRequest, files []int, resp *helperResponse) error {
	want := 2
	if req.HasRoot {
		want = 3
	}
	if len(files) != want {
		closeAll(files)
		return fmt.Errorf("prober: %d descriptors with the request, want %d", len(files), want)
	}
	t := &Target{netns: os.NewFile(uintptr(files[0]), "netns"), mntns: os.NewFile(uintptr(files[1]), "mntns"), desc: "target"}
	if req.HasRoot {
		t.root = os.NewFile(uintptr(files[2]), "root")
	}
	defer t.Close()
	if req.Op != "probe" {
		return fmt.Errorf("prober serves probes only, not %q", req.Op)
	}
	if t.root != nil {
		// The root descriptor leads into the target's mount namespace
		// by itself (as /proc/PID/root does), and a probe needs nothing
		// of the network namespace: no thread to make and no namespace
		// to enter, which is most of a probe's cost. A goroutine stuck
		// here dies with the helper.
		return probeInside(req, t.root, resp)
	}
	return t.inside(req, resp, nil)
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// healthOf turns a probe helper's answer into a Health: a timeout is a
// hung server, an errno the filesystem's answer; other errors are failures
// to probe at all.
func healthOf(resp *helperResponse, err error, timeout, elapsed time.Duration) (Health, error) {
	h := Health{Elapsed: elapsed}
	switch {
	case errors.Is(err, ErrTimeout):
		h.Hung = true
		h.Error = fmt.Sprintf("no answer in %s", timeout)
		return h, nil
	case err != nil && resp != nil && resp.Errno != 0:
		h.Errno = syscall.Errno(resp.Errno)
		h.Error = err.Error()
		return h, nil
	case err == nil:
		h.Stats = resp.Stats
	}
	return h, err
}
