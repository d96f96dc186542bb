package nsmount

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// The work that can block on an NFS server (creating a superblock, unmounting)
// runs in a helper process: this same binary, re-executed with argv[0] set to
// helperName. The parent passes it the target's namespace descriptors and a
// JSON request, and kills it when the deadline passes. A thread stuck in the
// kernel cannot be cancelled from Go, but a process can be killed, so a hung
// server never hangs nsmount or whoever embeds it, and nothing is left
// attached: a superblock whose creation is interrupted is never mounted.

// helperName is argv[0] of the helper process.
const helperName = "nsmount-helper"

// Descriptor numbers in the helper (ExtraFiles start at 3).
const (
	helperNetNS = 3
	helperMntNS = 4
	helperRoot  = 5 // present only when helperRequest.HasRoot
)

// killGrace bounds the wait for a killed helper to be reaped.
const killGrace = 3 * time.Second

type helperRequest struct {
	Op      string    `json:"op"` // "mount" or "umount"
	Spec    mountSpec `json:"spec,omitzero"`
	Target  string    `json:"target"`
	Mkdir   bool      `json:"mkdir,omitempty"`
	HasRoot bool      `json:"has_root,omitempty"`
	Umount  int       `json:"umount_flags,omitempty"`
	// MountID names the mount for "umount-id".
	MountID uint64 `json:"mount_id,omitempty"`
}

type helperResponse struct {
	Dev     string `json:"dev,omitempty"`
	MountID uint64 `json:"mount_id,omitempty"`
	// ClientID is the netns's NFSv4 client identity; ClientIDSet reports
	// that this mount set it.
	ClientID    string `json:"client_id,omitempty"`
	ClientIDSet bool   `json:"client_id_set,omitempty"`
	Vers        string `json:"vers,omitempty"`
	Params      string `json:"params,omitempty"`
	Error       string `json:"error,omitempty"`
	// Errno is the errno behind Error (0: none), Class its error class
	// ("" for none): both survive the pipe (see helperResponse.err).
	Errno   int    `json:"errno,omitempty"`
	Class   string `json:"class,omitempty"`
	Elapsed string `json:"elapsed,omitempty"`
	// Stats is a probe's statfs.
	Stats *FSStats `json:"stats,omitempty"`
}

// RunHelper turns the process into nsmount's namespace helper when it was
// started as one, and never returns in that case. Every program that mounts
// through this package must call it first thing in main (and tests in
// TestMain); it returns at once otherwise.
func RunHelper() {
	if filepath.Base(os.Args[0]) != helperName {
		return
	}
	if len(os.Args) > 1 && os.Args[1] == proberServeArg {
		os.Exit(proberServe(3))
	}
	os.Exit(helperMain(os.Stdin, os.Stdout))
}

func helperMain(in io.Reader, out io.Writer) int {
	var req helperRequest
	resp := helperResponse{}
	start := time.Now()
	err := json.NewDecoder(io.LimitReader(in, 1<<20)).Decode(&req)
	if err == nil {
		err = helperRun(&req, &resp)
	}
	if err != nil {
		resp.setErr(err)
	}
	resp.Elapsed = time.Since(start).String()
	if err := json.NewEncoder(out).Encode(resp); err != nil {
		return 1
	}
	return 0
}

func helperRun(req *helperRequest, resp *helperResponse) error {
	t := &Target{
		netns: os.NewFile(helperNetNS, "netns"),
		mntns: os.NewFile(helperMntNS, "mntns"),
		desc:  "target",
	}
	defer t.Close()
	if req.HasRoot {
		t.root = os.NewFile(helperRoot, "root")
	}
	return t.inside(req, resp, nil)
}

// inside runs req in t's network and mount namespaces, on a fresh locked
// thread (Target.Do), filling in resp. gate, if set, must let an attaching
// operation (mount, replace) go ahead right before it attaches anything.
func (t *Target) inside(req *helperRequest, resp *helperResponse, gate *commitGate) error {
	// The host's /proc, opened before entering: the container may have none.
	proc, err := openPath("/proc")
	if err != nil {
		return err
	}
	defer proc.Close()
	var root *os.File
	if t.root != nil {
		if root, err = dupCloexec(t.root); err != nil {
			return fmt.Errorf("dup root of %s: %w", t, err)
		}
	}
	return t.Do(NetNS|MountNS, func() error {
		if root == nil {
			if root, err = openPath("/"); err != nil {
				return err
			}
		}
		defer root.Close()
		switch req.Op {
		case "mount":
			return mountInside(req, root, proc, resp, gate)
		case "umount":
			return umountInside(req, root, proc, resp)
		case "umount-id":
			return umountIDInside(req, root, proc)
		case "mount-id":
			return mountIDInside(req, root, proc, resp)
		case "replace":
			return replaceInside(req, root, proc, resp, gate)
		case "probe":
			return probeInside(req, root, resp)
		}
		return fmt.Errorf("unknown helper op %q", req.Op)
	})
}

// commitGate decides, between a thread that is about to attach a mount
// and a caller whose deadline passed, which one wins: a mount is either
// attached and reported, or never attached.
type commitGate struct {
	mu    sync.Mutex
	state int // 0 running, 1 committing, 2 cancelled
}

// commit reports whether the thread may attach; a nil gate always may.
func (g *commitGate) commit() bool {
	if g == nil {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == 0 {
		g.state = 1
	}
	return g.state == 1
}

// cancel stops a thread that has not started to attach; false when it has.
func (g *commitGate) cancel() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == 0 {
		g.state = 2
	}
	return g.state == 2
}

// mountInside runs on the helper's thread in the target's namespaces. The
// order matters: the target directory is resolved first (bad targets fail
// before any network traffic), then the superblock is created (fsconfig,
// talks to the server), mounted detached (fsmount), verified against this
// netns's NFS client list, and only then attached (move_mount).
func mountInside(req *helperRequest, root, proc *os.File, resp *helperResponse, gate *commitGate) error {
	target, err := openInRoot(root, req.Target, req.Mkdir)
	if err != nil {
		return err
	}
	defer target.Close()
	mfd, err := newMount(req, target, proc, resp)
	if err != nil || mfd < 0 {
		return err // mfd < 0: the legacy path mounted already
	}
	defer unix.Close(mfd) // a detached mount vanishes with its last fd
	if !gate.commit() {
		return withClass(ErrTimeout, errors.New("deadline passed before the mount was attached; not attached"))
	}
	if err := unix.MoveMount(mfd, "", int(target.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return withClass(ErrMountFailed, fmt.Errorf("attach mount at %s: %w", req.Target, err))
	}
	return nil
}

// newMount creates the superblock (trying the spec's versions in order),
// mounts it detached and verifies it against this netns's NFS client list.
// It returns the detached mount's fd, or -1 when the kernel has no new
// mount API and legacyMount mounted at target directly.
func newMount(req *helperRequest, target, proc *os.File, resp *helperResponse) (int, error) {
	var fsc *fsContext
	var err error
	for i, v := range req.Spec.Vers {
		params := req.Spec.withVers(v)
		if fsc, err = openFSContext(req.Spec.FSType); err != nil {
			if errors.Is(err, errNoNewMountAPI) {
				return -1, legacyMount(req, v, target, proc, resp)
			}
			return -1, err
		}
		// After fsopen (which loads the nfs module) and before the client
		// is created: an NFSv4 client takes the netns's identity then.
		if v != "3" && resp.ClientID == "" {
			if resp.ClientID, resp.ClientIDSet, err = ensureClientIdentity(); err != nil {
				fsc.Close()
				return -1, withClass(ErrMountFailed, fmt.Errorf("NFSv4 client identity of the target netns: %w", err))
			}
		}
		err = fsc.configure(params)
		if err == nil {
			resp.Vers, resp.Params = v, params.String()
			break
		}
		fsc.Close()
		// Like mount.nfs: fall back to an older version only when the
		// version was not chosen and the server does not speak this one.
		if i+1 < len(req.Spec.Vers) && errors.Is(err, unix.EPROTONOSUPPORT) {
			continue
		}
		return -1, fmt.Errorf("mount %s: %w", sourceOf(params), err)
	}
	defer fsc.Close()
	mfd, err := unix.Fsmount(fsc.fd, unix.FSMOUNT_CLOEXEC, int(req.Spec.Attrs))
	if err != nil {
		return -1, withClass(ErrMountFailed, fsc.kernelError("fsmount", err))
	}
	fail := func(err error) (int, error) {
		unix.Close(mfd)
		return -1, err
	}
	if resp.Dev, err = mountDev(mfd); err != nil {
		return fail(err)
	}
	if resp.MountID, err = mountID(mfd); err != nil {
		return fail(err)
	}
	ok, err := inNetNS(proc, resp.Dev)
	if err != nil {
		return fail(withClass(ErrNotVerified, fmt.Errorf("verify mount: %w", err)))
	}
	if !ok {
		return fail(withClass(ErrNotVerified, fmt.Errorf("new NFS superblock %s is not in the target netns's nfsfs/volumes: the connection was made from another network namespace; mount undone", resp.Dev)))
	}
	return mfd, nil
}

// legacyMount is the mount(2) path for kernels without fsopen(2). The mount
// point is named through the host /proc's magic link of the O_PATH fd, so it
// is still the directory resolved inside the container's root.
func legacyMount(req *helperRequest, vers string, target, proc *os.File, resp *helperResponse) error {
	params := req.Spec.withVers(vers)
	var data []string
	var source string
	for _, o := range params {
		if o.Key == "source" {
			source = o.Value
			continue
		}
		data = append(data, o.String())
	}
	flags := uintptr(0)
	for attr, flag := range map[uint64]uintptr{unix.MOUNT_ATTR_RDONLY: unix.MS_RDONLY, unix.MOUNT_ATTR_NOSUID: unix.MS_NOSUID, unix.MOUNT_ATTR_NODEV: unix.MS_NODEV, unix.MOUNT_ATTR_NOEXEC: unix.MS_NOEXEC, unix.MOUNT_ATTR_NOATIME: unix.MS_NOATIME} {
		if req.Spec.Attrs&attr != 0 {
			flags |= flag
		}
	}
	if err := unix.Fchdir(int(proc.Fd())); err != nil {
		return fmt.Errorf("chdir to host /proc: %w", err)
	}
	where := fmt.Sprintf("thread-self/fd/%d", target.Fd())
	if err := unix.Mount(source, where, req.Spec.FSType, flags, strings.Join(data, ",")); err != nil {
		return withClass(ErrMountFailed, fmt.Errorf("mount %s: %w", source, err))
	}
	resp.Vers, resp.Params = vers, params.String()
	fd, err := unix.Openat(unix.AT_FDCWD, where, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err == nil {
		resp.Dev, err = mountDev(fd)
		if err == nil {
			resp.MountID, err = mountID(fd)
		}
		unix.Close(fd)
	}
	ok := false
	if err == nil {
		ok, err = inNetNS(proc, resp.Dev)
	}
	if err != nil || !ok {
		unix.Unmount(where, unix.MNT_DETACH)
		return withClass(ErrNotVerified, fmt.Errorf("new NFS superblock %s is not in the target netns's nfsfs/volumes; mount undone (%v)", resp.Dev, err))
	}
	return nil
}

func sourceOf(params Options) string {
	s, _ := params.Get("source")
	return s
}

// umountInside unmounts the NFS mount at req.Target, resolved inside root.
// There is no umount-by-descriptor syscall (and an open descriptor would keep
// the mount busy), so the mount is identified by its mount ID, the thread
// chroots into the container's root, and the mount point path that mountinfo
// then shows (canonical, relative to that root) is unmounted without
// following symlinks: whatever happens meanwhile, it is inside the container.
func umountInside(req *helperRequest, root, proc *os.File, resp *helperResponse) error {
	m, err := nfsMountAtPath(req.Target, root, proc)
	if err != nil {
		return err
	}
	if err := unix.Unmount(m.Mountpoint, req.Umount|unix.UMOUNT_NOFOLLOW); err != nil {
		return withClass(ErrMountFailed, fmt.Errorf("umount %s (%s): %w", req.Target, m.Source, err))
	}
	resp.MountID = uint64(m.ID)
	return nil
}

// mountIDInside runs in the helper: the ID of the NFS mount at req.Target,
// found as umountInside finds it, which it leaves in place.
func mountIDInside(req *helperRequest, root, proc *os.File, resp *helperResponse) error {
	m, err := nfsMountAtPath(req.Target, root, proc)
	if err != nil {
		return err
	}
	resp.MountID = uint64(m.ID)
	return nil
}

// nfsMountAtPath resolves target inside root (symlinks stay inside it) and
// returns the NFS mount whose root it is. It chroots the calling thread to
// root, so that the mount's Mountpoint is a path there.
func nfsMountAtPath(target string, root, proc *os.File) (*mountinfo.Info, error) {
	f, err := openInRoot(root, target, false)
	if err != nil {
		return nil, err
	}
	var stx unix.Statx_t
	err = unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &stx)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("statx %s: %w", target, err)
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return nil, withClass(ErrNotMounted, fmt.Errorf("%s is not a mount point", target))
	}
	if err := unix.Fchdir(int(root.Fd())); err != nil {
		return nil, fmt.Errorf("chdir to container root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return nil, fmt.Errorf("chroot to container root: %w", err)
	}
	m, err := nfsMountAt(proc, stx.Mnt_id)
	if err != nil {
		return nil, err
	}
	if m == nil {
		return nil, withClass(ErrNotMounted, fmt.Errorf("no NFS mount at %s", target))
	}
	return m, nil
}

// callHelper runs req inside t's namespaces, where t's Isolation says (a
// helper process, by default), and waits for it until ctx is done; then it
// stops it and returns ErrTimeout.
func callHelper(ctx context.Context, t *Target, req helperRequest) (*helperResponse, error) {
	if t.netns == nil || t.mntns == nil {
		return nil, errors.New("target is closed")
	}
	if t.isolation == InThread {
		return callThread(ctx, t, req)
	}
	files := []*os.File{t.netns, t.mntns}
	if t.root != nil {
		req.HasRoot = true
		files = append(files, t.root)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	exe := t.helper
	if exe == "" {
		exe = "/proc/self/exe"
	}
	cmd := &exec.Cmd{
		Path:        exe,
		Args:        []string{helperName},
		Stdin:       bytes.NewReader(body),
		ExtraFiles:  files,
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Pdeathsig fires when the thread that forked the helper exits, and
	// threads do exit in this process (every Target.Do ends its thread).
	// So the forking goroutine keeps its thread locked, and therefore
	// alive, until the helper is reaped.
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start helper: %w", err)
	}
	select {
	case err = <-done:
	case <-ctx.Done():
		cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(killGrace):
			// Unkillable (uninterruptible sleep): give up waiting; the
			// goroutine reaps it if it ever exits.
		}
		return nil, withClass(ErrTimeout, fmt.Errorf("%s in %s did not finish in time, stopped: %w", req.Op, t, context.Cause(ctx)))
	}
	var resp helperResponse
	if jerr := json.Unmarshal(stdout.Bytes(), &resp); jerr != nil {
		msg := strings.TrimSpace(stderr.String())
		if err == nil {
			err = jerr
		}
		return nil, fmt.Errorf("helper failed: %v: %s", err, msg)
	}
	if resp.Error != "" {
		return &resp, resp.err()
	}
	return &resp, nil
}

// took is how long the helper worked on the request.
func (r *helperResponse) took() time.Duration {
	d, _ := time.ParseDuration(r.Elapsed)
	return d
}

// setErr records err in r: its message, class and errno (unless an errno
// was recorded already, as a probe does for the filesystem's answer).
func (r *helperResponse) setErr(err error) {
	r.Error = err.Error()
	r.Class = className(err)
	var errno syscall.Errno
	if r.Errno == 0 && errors.As(err, &errno) {
		r.Errno = int(errno)
	}
}

// callThread runs req on a thread of this process (Isolation InThread).
// When ctx ends first, the thread is left to finish on its own (a thread in
// the kernel cannot be stopped), but its mount, if it makes one, is never
// attached: the gate decides between the two.
func callThread(ctx context.Context, t *Target, req helperRequest) (*helperResponse, error) {
	// The thread works on its own descriptors: an abandoned thread may
	// outlive the caller's Target.
	own, err := t.dup()
	if err != nil {
		return nil, err
	}
	resp := &helperResponse{}
	gate := &commitGate{}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		defer own.Close()
		done <- own.inside(&req, resp, gate)
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		if gate.cancel() {
			return nil, withClass(ErrTimeout, fmt.Errorf("%s in %s did not finish in time, abandoned: %w", req.Op, t, context.Cause(ctx)))
		}
		err = <-done // attaching: a local operation, it ends
	}
	resp.Elapsed = time.Since(start).String()
	if err != nil {
		var errno syscall.Errno
		if resp.Errno == 0 && errors.As(err, &errno) {
			resp.Errno = int(errno)
		}
		resp.Error = err.Error()
		return resp, err
	}
	return resp, nil
}

// err rebuilds the helper's error in the parent: its message, its class
// and its errno, so that errors.Is works with both (ErrMountFailed,
// unix.EBUSY) as if the error had been made in this process.
func (r *helperResponse) err() error {
	return &helperError{msg: r.Error, class: classByName(r.Class), errno: syscall.Errno(r.Errno)}
}

// helperError is an error that crossed the helper pipe.
type helperError struct {
	msg   string
	class error         // nil: none
	errno syscall.Errno // 0: none
}

func (e *helperError) Error() string { return e.msg }

func (e *helperError) Unwrap() []error {
	var out []error
	if e.class != nil {
		out = append(out, e.class)
	}
	if e.errno != 0 {
		out = append(out, e.errno)
	}
	return out
}
