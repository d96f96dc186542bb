package resolver_test

import (
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/routing"
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// addNetNS creates a named network namespace and deletes it when the test
// ends.
func addNetNS(t *testing.T, name string) {
	t.Helper()
	// A namespace left by a killed earlier run would make "add" fail.
	exec.Command("ip", "netns", "del", name).Run()
	ip(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
}

// inNetNS returns a routing.InNetNS for the named namespace.
func inNetNS(t *testing.T, name string) routing.InNetNS {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	return inNetNSHandle(h)
}

// inNetNSHandle returns a routing.InNetNS for the namespace h. Like
// nsmount.Target.Do, it runs fn on a fresh goroutine whose OS thread is
// locked and never unlocked, so the thread dies with the goroutine instead
// of going back to the pool inside the namespace; never on the main thread,
// which the runtime cannot end.
func inNetNSHandle(h netns.NsHandle) routing.InNetNS {
	var run func(fn func() error, errc chan<- error)
	run = func(fn func() error, errc chan<- error) {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// A goroutine exiting locked to the main thread wedges it
			// instead of ending it: hold the main thread so that a new
			// goroutine runs elsewhere, and give it back unchanged.
			done := make(chan struct{})
			go func() {
				defer close(done)
				run(fn, errc)
			}()
			<-done
			runtime.UnlockOSThread()
			return
		}
		// Deliberately no UnlockOSThread.
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}
	return func(fn func() error) error {
		errc := make(chan error, 1)
		go run(fn, errc)
		return <-errc
	}
}
