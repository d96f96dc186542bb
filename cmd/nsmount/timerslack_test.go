package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadSlacks reads the timer slack of every thread of this process.
func threadSlacks(t *testing.T) map[string]int64 {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/timerslack_ns")
		if os.IsNotExist(err) {
			continue // ended meanwhile
		}
		if err != nil {
			t.Fatal(err)
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = v
	}
	return out
}

// TestRelaxTimers: every thread that exists, and one that the runtime
// creates afterwards, has the slack; the test process gets its default
// back at the end.
func TestRelaxTimers(t *testing.T) {
	if unix.Geteuid() != 0 {
		t.Fatal("needs root (CAP_SYS_NICE sets another thread's timer slack)")
	}
	// Threads of their own, parked, so that there are several to set.
	stop := make(chan struct{})
	defer close(stop)
	for range 3 {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			<-stop
		}()
	}
	time.Sleep(10 * time.Millisecond)
	const d = 7 * time.Millisecond
	if err := relaxTimers(d); err != nil {
		t.Fatal(err)
	}
	defer relaxTimers(50 * time.Microsecond) // the kernel's default
	before := threadSlacks(t)
	if len(before) < 4 {
		t.Fatalf("%d threads, want at least 4", len(before))
	}
	for tid, v := range before {
		if v != d.Nanoseconds() {
			t.Errorf("thread %s: slack %d ns, want %d", tid, v, d.Nanoseconds())
		}
	}
	// A thread created now (a locked goroutine ending takes its thread
	// with it, so the next locked one needs a new thread).
	got := make(chan int64, 1)
	go func() {
		runtime.LockOSThread() // and never unlocked: the thread ends
		b, err := os.ReadFile("/proc/thread-self/timerslack_ns")
		if err != nil {
			b, _ = os.ReadFile("/proc/" + strconv.Itoa(unix.Gettid()) + "/timerslack_ns")
		}
		v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		got <- v
	}()
	if v := <-got; v != d.Nanoseconds() {
		t.Errorf("a later thread: slack %d ns, want %d", v, d.Nanoseconds())
	}
}

// TestTopLevel: the slack is decided by the command right under the
// root, whatever the depth.
func TestTopLevel(t *testing.T) {
	root := newRootCommand()
	for _, tc := range []struct {
		args []string
		want string
		long bool
	}{
		{[]string{"mount"}, "mount", false},
		{[]string{"watch"}, "watch", true},
		{[]string{"agent"}, "agent", true},
		{[]string{"version"}, "version", false},
	} {
		cmd, _, err := root.Find(tc.args)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := topLevel(cmd).Name(); got != tc.want || isLongLived(got) != tc.long {
			t.Errorf("%v: top level %q (long-lived %v), want %q (%v)", tc.args, got, isLongLived(got), tc.want, tc.long)
		}
	}
}
