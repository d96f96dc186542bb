package nriconn

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socketWatch ends a wait between two attempts early when an entry of the
// socket's name appears in its directory (the runtime is back, and made
// its socket anew), so that the plugin registers at once rather than up to
// MaxDelay later: containers the runtime creates before the plugin is
// registered get nothing from it. It reads inotify events of the
// directory (through Go's poller: an inotify fd is pollable).
type socketWatch struct {
	f         *os.File
	dir, name string
}

// newSocketWatch returns a watch for socket, or nil when inotify is not
// available (the waits then last their whole delay).
func newSocketWatch(socket string) *socketWatch {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil
	}
	return &socketWatch{f: os.NewFile(uintptr(fd), "inotify"), dir: filepath.Dir(socket), name: filepath.Base(socket)}
}

// close releases the watch.
func (w *socketWatch) close() {
	if w != nil {
		w.f.Close()
	}
}

// settle is how long a wait goes on after the socket's name appeared: a
// socket exists from bind(2), and takes connections from listen(2) on.
const settle = 10 * time.Millisecond

// wait returns after d, when ctx ends, or shortly (settle) after the
// socket's name is created in (or moved into) its directory, whichever
// comes first.
func (w *socketWatch) wait(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	if w == nil || w.arm() != nil {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return
	}
	stop := context.AfterFunc(ctx, func() { w.f.SetReadDeadline(time.Now()) })
	defer stop()
	w.f.SetReadDeadline(deadline)
	buf := make([]byte, 16*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for ctx.Err() == nil {
		n, err := w.f.Read(buf)
		if err != nil {
			return // the deadline, or ctx
		}
		if w.names(buf[:n]) {
			t := time.NewTimer(settle)
			defer t.Stop()
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			return
		}
	}
}

// arm (re)adds the watch of the directory: a directory made anew needs a
// new watch, and adding an existing one changes nothing.
func (w *socketWatch) arm() error {
	_, err := unix.InotifyAddWatch(int(w.f.Fd()), w.dir, unix.IN_CREATE|unix.IN_MOVED_TO)
	return err
}

// names reports whether the events in buf name the socket.
func (w *socketWatch) names(buf []byte) bool {
	for len(buf) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(buf) {
			return false
		}
		name := buf[unix.SizeofInotifyEvent:end]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if string(name) == w.name {
			return true
		}
		buf = buf[end:]
	}
	return false
}
