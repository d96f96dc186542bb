package batchwork

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadState is what Apply sets on a thread.
type threadState struct {
	slack  int64 // ns
	policy uint32
}

// threadStates reads the timer slack and scheduling policy of every
// thread of this process (a thread that ends meanwhile is left out).
func threadStates(t *testing.T) map[string]threadState {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]threadState{}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		b, err := os.ReadFile("/proc/" + e.Name() + "/timerslack_ns")
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		slack, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		attr, err := unix.SchedGetAttr(tid, 0)
		if err == unix.ESRCH {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = threadState{slack, attr.Policy}
	}
	return out
}

// restoreDefaults gives every thread of the test process the kernel's
// defaults back: 50 µs of slack, SCHED_OTHER.
func restoreDefaults(t *testing.T) {
	ents, _ := os.ReadDir("/proc/self/task")
	for _, e := range ents {
		os.WriteFile("/proc/"+e.Name()+"/timerslack_ns", []byte("50000"), 0)
		tid, _ := strconv.Atoi(e.Name())
		if attr, err := unix.SchedGetAttr(tid, 0); err == nil && attr.Policy == unix.SCHED_BATCH {
			attr.Policy, attr.Flags = unix.SCHED_NORMAL, 0
			unix.SchedSetAttr(tid, attr, 0)
		}
	}
	unix.Prctl(unix.PR_SET_TIMERSLACK, 50000, 0, 0, 0)
}

// TestApply: every thread that exists, and one that the runtime
// creates afterwards, has the slack and SCHED_BATCH, with its nice value
// kept; the test process gets the defaults back at the end.
func TestApply(t *testing.T) {
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
	nice, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(d); err != nil {
		t.Fatal(err)
	}
	defer restoreDefaults(t)
	if n, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err != nil || n != nice {
		t.Errorf("nice %d (%v) after, %d before", n, err, nice)
	}
	states := threadStates(t)
	if len(states) < 4 {
		t.Fatalf("%d threads, want at least 4", len(states))
	}
	for tid, st := range states {
		if st != (threadState{d.Nanoseconds(), unix.SCHED_BATCH}) {
			t.Errorf("thread %s: slack %d ns, policy %d; want %d, SCHED_BATCH", tid, st.slack, st.policy, d.Nanoseconds())
		}
	}
	// A thread created now (a locked goroutine ending takes its thread
	// with it, so the next locked one needs a new thread).
	type later struct {
		slack  int64
		policy uint32
	}
	got := make(chan later, 1)
	go func() {
		runtime.LockOSThread() // and never unlocked: the thread ends
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(unix.Gettid()) + "/timerslack_ns")
		v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		var p uint32
		if attr, err := unix.SchedGetAttr(0, 0); err == nil {
			p = attr.Policy
		}
		got <- later{v, p}
	}()
	if l := <-got; l.slack != d.Nanoseconds() || l.policy != unix.SCHED_BATCH {
		t.Errorf("a later thread: slack %d ns, policy %d; want %d, SCHED_BATCH", l.slack, l.policy, d.Nanoseconds())
	}
}

// TestShortLived: which command lines are batch work from the start.
func TestShortLived(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"nsmount", "mount", "--pid", "1", "srv:/x", "/data"}, true},
		{[]string{"/usr/local/bin/nsmount", "status", "--json"}, true},
		{[]string{"nsmount"}, true},
		{[]string{"/opt/cni/bin/nsmount-cni"}, true},
		{[]string{"nsmount", "watch", "--interval", "1s"}, false},
		{[]string{"nsmount", "--state-dir", "/run/x", "agent"}, false},
		{[]string{"nsmount", "help", "csi"}, false}, // looks long-lived: the safe side
		{[]string{"nsmount", "top"}, false},
		{[]string{"nsmount-helper"}, false},
		{[]string{"batchwork.test", "-test.v"}, false},
		{[]string{"/usr/bin/nsmount-v2", "mount"}, false},
		{nil, false},
	} {
		if got := ShortLived(tc.args); got != tc.want {
			t.Errorf("ShortLived(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}

// TestInit runs this test binary again as "nsmount" (so that the
// package's init decides as in the product binary) and reads what the
// child's threads run with: batch work for a short-lived command line,
// sysmon's own slack for its second thread, which is sysmon (it sleeps in
// nanosleep while the child's main goroutine runs); the defaults it was
// started with for a long-lived one.
func TestInit(t *testing.T) {
	if os.Getenv("BATCHWORK_CHILD") != "" {
		return // the child's report is printed by TestMain
	}
	if unix.Geteuid() != 0 {
		t.Fatal("needs root (CAP_SYS_NICE sets another thread's timer slack)")
	}
	// The child is started from a thread with the defaults (a slack of
	// 50 µs, SCHED_OTHER), whatever other tests did to this process.
	runtime.LockOSThread() // and never unlocked: the thread ends with the test
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, 50000, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if attr.Policy != unix.SCHED_NORMAL {
		attr.Policy, attr.Flags = unix.SCHED_NORMAL, 0
		if err := unix.SchedSetAttr(0, attr, 0); err != nil {
			t.Fatal(err)
		}
	}
	batch := fmt.Sprintf("%d %d", Slack.Nanoseconds(), unix.SCHED_BATCH)
	defaults := fmt.Sprintf("50000 %d", unix.SCHED_NORMAL)
	for _, tc := range []struct {
		args         []string
		want, sysmon string
	}{
		{[]string{"nsmount", "mount"}, batch, fmt.Sprintf("%d %d", SysmonSlack.Nanoseconds(), unix.SCHED_BATCH)},
		{[]string{"nsmount", "watch"}, defaults, defaults},
	} {
		cmd := exec.Command("/proc/self/exe", "-test.run=^TestInit$")
		cmd.Args = append(tc.args, "-test.run=^TestInit$")
		cmd.Env = append(os.Environ(), "BATCHWORK_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v: %s", tc.args, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) < 3 || lines[0] != "sysmon in nanosleep: true" {
			t.Fatalf("%q: child printed %q, want sysmon seen in nanosleep, then a line per thread", tc.args, out)
		}
		for i, l := range lines[1:] {
			want := tc.want
			if i == 1 {
				want = tc.sysmon
			}
			if l != want {
				t.Errorf("%q: thread %d runs with %q (slack ns, policy), want %q; all: %q", tc.args, i, l, want, lines)
			}
		}
	}
}

// TestMain prints, in the child of TestInit, whether its second thread
// was seen in nanosleep (sysmon's sleep) while the main goroutine ran for
// 50 ms, then one line per thread in creation order: its timer slack and
// scheduling policy, as the package's init left them.
func TestMain(m *testing.M) {
	if os.Getenv("BATCHWORK_CHILD") != "" {
		tids, err := threads()
		if err != nil || len(tids) < 2 {
			fmt.Println(tids, err)
			os.Exit(1)
		}
		seen := false
		for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
			b, _ := os.ReadFile("/proc/self/task/" + strconv.Itoa(tids[1]) + "/syscall")
			if f := strings.Fields(string(b)); len(f) > 0 && f[0] == strconv.Itoa(syscall.SYS_NANOSLEEP) {
				seen = true
			}
		}
		fmt.Println("sysmon in nanosleep:", seen)
		for _, tid := range tids {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/timerslack_ns")
			attr, err := unix.SchedGetAttr(tid, 0)
			if err != nil {
				continue // ended meanwhile
			}
			fmt.Printf("%s %d\n", strings.TrimSpace(string(b)), attr.Policy)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestBatchPolicyKeepsOthers: a thread that runs another policy than
// SCHED_OTHER (here SCHED_IDLE, as an operator's `chrt -i` gives) keeps
// it.
func TestBatchPolicyKeepsOthers(t *testing.T) {
	type result struct {
		policy uint32
		err    error
	}
	got := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with it
		tid := unix.Gettid()
		attr, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			got <- result{err: err}
			return
		}
		attr.Policy, attr.Flags = unix.SCHED_IDLE, 0
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil {
			got <- result{err: err}
			return
		}
		if err := batchPolicy(tid); err != nil {
			got <- result{err: err}
			return
		}
		attr, err = unix.SchedGetAttr(tid, 0)
		if err != nil {
			got <- result{err: err}
			return
		}
		got <- result{policy: attr.Policy}
	}()
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.policy != unix.SCHED_IDLE {
		t.Errorf("policy %d after batchPolicy, want SCHED_IDLE (%d) kept", r.policy, unix.SCHED_IDLE)
	}
}
