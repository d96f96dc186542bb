package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// shortLivedSlack is how late the kernel may wake a short-lived command's
// timed sleeps (timer slack, as systemd's TimerSlackNSec= sets for a
// service). Those commands wait for seconds at most, so 10 ms does not
// show; what it buys is Go's sysmon thread, which while a command makes
// slow syscalls polls every 20 µs: measured in the lab (1 vCPU, TCG),
// 130-170 of a mount's ~320 context switches were sysmon's sleeps and the
// preemptions they caused, 34 with this slack. When many mounts start at
// once on a node, each of those is a switch between processes.
const shortLivedSlack = 10 * time.Millisecond

// relaxTimers sets the timer slack of every thread of this process to d
// (PR_SET_TIMERSLACK for the calling thread, /proc/TID/timerslack_ns for
// the others: that needs CAP_SYS_NICE). Threads created later inherit it
// from the thread that creates them. It is an optimisation: the caller
// may ignore its error.
func relaxTimers(d time.Duration) error {
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(d.Nanoseconds()), 0, 0, 0); err != nil {
		return fmt.Errorf("set timer slack: %w", err)
	}
	self := unix.Gettid()
	val := []byte(strconv.FormatInt(d.Nanoseconds(), 10))
	// A thread that was being created while the list was read may have
	// inherited the old slack: read the list again until it holds no
	// thread not yet set (the runtime creates few threads).
	done := map[int]bool{self: true}
	for range 3 {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("list threads: %w", err)
		}
		fresh := false
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			fresh, done[tid] = true, true
			if err := os.WriteFile("/proc/"+e.Name()+"/timerslack_ns", val, 0); err != nil && !os.IsNotExist(err) {
				return fmt.Errorf("set timer slack of thread %d: %w", tid, err)
			}
		}
		if !fresh {
			return nil
		}
	}
	return nil
}

// isLongLived reports whether name is one of the long-lived commands.
func isLongLived(name string) bool {
	for _, c := range longLived {
		if c.name == name {
			return true
		}
	}
	return false
}

// topLevel is the command right under the root that cmd is or is under.
func topLevel(cmd *cobra.Command) *cobra.Command {
	for cmd.HasParent() && cmd.Parent().HasParent() {
		cmd = cmd.Parent()
	}
	return cmd
}
