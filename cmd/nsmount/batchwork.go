package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// A short-lived command (a mount, a hook, a status) is batch work for the
// scheduler: nobody types into it, and when many start at once (a node
// starting its pods) they compete for the CPU. Two settings tell the
// kernel so; both are inherited by the threads the runtime creates later:
//
//   - timer slack (PR_SET_TIMERSLACK, as systemd's TimerSlackNSec=): its
//     timed sleeps may end up to shortLivedSlack late. Those commands wait
//     for seconds at most, so it does not show; what it buys is Go's sysmon
//     thread, which while a command makes slow syscalls wakes every 20 µs.
//     Measured in the lab (1 vCPU, TCG): 130-170 of a mount's ~320 context
//     switches were sysmon's sleeps and the preemptions they caused, 34
//     with the slack.
//   - SCHED_BATCH (as `chrt -b`, systemd's CPUSchedulingPolicy=batch), for
//     threads that run SCHED_OTHER: a thread that wakes up does not
//     preempt the running one, its turn comes at the end of that one's
//     slice; it is not niced, and on an idle CPU nothing changes. Among 16
//     mounts started at once it spares the switches between them: 16 at
//     once took 1.12 times as long as one after another without it, 1.02
//     with it, in the same VM.
//
// Long-lived commands (the daemons) keep the kernel's defaults.

// shortLivedSlack is how late a short-lived command's timed sleeps may
// end.
const shortLivedSlack = 10 * time.Millisecond

// asBatchWork makes every thread of this process batch work: timer slack
// d, and SCHED_BATCH if it runs SCHED_OTHER (a real-time or idle policy
// that an operator gave it is kept). The calling thread is set through
// prctl, the others through /proc/TID/timerslack_ns (that needs
// CAP_SYS_NICE) and sched_setattr. It is an optimisation: the caller may
// ignore its error.
func asBatchWork(d time.Duration) error {
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(d.Nanoseconds()), 0, 0, 0); err != nil {
		return fmt.Errorf("set timer slack: %w", err)
	}
	val := []byte(strconv.FormatInt(d.Nanoseconds(), 10))
	// A thread that was being created while the list was read may have
	// inherited the old settings: read the list again until it holds no
	// thread not yet set (the runtime creates few threads).
	done := map[int]bool{}
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
			if tid != unix.Gettid() {
				if err := os.WriteFile("/proc/"+e.Name()+"/timerslack_ns", val, 0); err != nil {
					if os.IsNotExist(err) {
						continue // ended meanwhile
					}
					return fmt.Errorf("set timer slack of thread %d: %w", tid, err)
				}
			}
			if err := batchPolicy(tid); err != nil {
				return err
			}
		}
		if !fresh {
			return nil
		}
	}
	return nil
}

// batchPolicy switches thread tid from SCHED_OTHER to SCHED_BATCH,
// keeping its nice value; another policy is left alone.
func batchPolicy(tid int) error {
	attr, err := unix.SchedGetAttr(tid, 0)
	if err == unix.ESRCH {
		return nil // ended meanwhile
	}
	if err != nil {
		return fmt.Errorf("scheduling policy of thread %d: %w", tid, err)
	}
	if attr.Policy != unix.SCHED_NORMAL {
		return nil
	}
	attr.Policy = unix.SCHED_BATCH
	attr.Flags = 0
	if err := unix.SchedSetAttr(tid, attr, 0); err != nil && err != unix.ESRCH {
		return fmt.Errorf("SCHED_BATCH for thread %d: %w", tid, err)
	}
	return nil
}

// topLevel is the command right under the root that cmd is or is under.
func topLevel(cmd *cobra.Command) *cobra.Command {
	for cmd.HasParent() && cmd.Parent().HasParent() {
		cmd = cmd.Parent()
	}
	return cmd
}
