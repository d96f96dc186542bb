// Package batchwork makes a short-lived nsmount process (a mount, a hook,
// a status, the CNI plugin) batch work for the scheduler from its start.
// The nsmount command imports it for that effect: its init runs early
// among the packages' (it imports little), before most of the process's
// start-up.
//
// Nobody types into such a process, and when many start at once (a node
// starting its pods) they compete for the CPU. Two settings tell the
// kernel so; threads inherit both, those the runtime creates later too:
//
//   - timer slack (PR_SET_TIMERSLACK, as systemd's TimerSlackNSec=): its
//     timed sleeps may end up to Slack late. Those commands wait for
//     seconds at most, so it does not show; what it buys is Go's sysmon
//     thread, which wakes every 20 µs while the process runs or makes slow
//     syscalls. Measured in the lab (1 vCPU, TCG): 130-170 of a mount's
//     ~320 context switches were sysmon's sleeps and the preemptions they
//     caused, 34 with the slack.
//   - SCHED_BATCH (as `chrt -b`, systemd's CPUSchedulingPolicy=batch), for
//     threads that run SCHED_OTHER: a thread that wakes up does not
//     preempt the running one, its turn comes at the end of that one's
//     slice; it is not niced, and on an idle CPU nothing changes.
//
// Why from the start: a process spends a third of a mount's time starting
// (exec, the runtime, the packages' init), and sysmon is busiest then.
// Among 16 mounts started at once on one vCPU, set at the start rather
// than when the command ran, sysmon's switches to and from another process
// went from ~1500 to ~780, and 16 at once went from 1.00 to 0.96 times as
// long as one after another, in the same VM.
//
// Long-lived commands (the daemons, top) keep the kernel's defaults, and
// so does a process started under another name (a mount helper, a test).
package batchwork

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Slack is how late a short-lived process's timed sleeps may end.
const Slack = 10 * time.Millisecond

// Names a short-lived process may be started as: the command, and its CNI
// plugin (a link named so in a CNI bin directory).
const (
	commandName   = "nsmount"
	cniPluginName = "nsmount-cni"
)

// longLived are the commands that run until stopped.
var longLived = []string{"watch", "top", "nri", "csi", "agent"}

func init() {
	if ShortLived(os.Args) {
		Apply(Slack) // an optimisation: nothing to do if it fails
	}
}

// LongLived reports whether name is one of nsmount's long-lived commands.
func LongLived(name string) bool {
	for _, l := range longLived {
		if name == l {
			return true
		}
	}
	return false
}

// ShortLived reports whether a process with the command line args is a
// short-lived nsmount: started as nsmount with no argument naming a
// long-lived command (wherever it is: a command line that merely looks
// like one keeps the defaults, the safe side), or as its CNI plugin.
func ShortLived(args []string) bool {
	if len(args) == 0 {
		return false
	}
	switch base(args[0]) {
	case cniPluginName:
		return true
	case commandName:
		for _, a := range args[1:] {
			if LongLived(a) {
				return false
			}
		}
		return true
	}
	return false
}

// base is path/filepath.Base for an argv[0] (that package is left out
// to keep this one's init early).
func base(p string) string {
	return p[strings.LastIndexByte(p, '/')+1:]
}

// Apply makes every thread of this process batch work: timer slack d, and
// SCHED_BATCH if it runs SCHED_OTHER (a real-time or idle policy that an
// operator gave it is kept). The calling thread is set through prctl, the
// others through /proc/TID/timerslack_ns (that needs CAP_SYS_NICE) and
// sched_setattr.
func Apply(d time.Duration) error {
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(d.Nanoseconds()), 0, 0, 0); err != nil {
		return fmt.Errorf("set timer slack: %w", err)
	}
	val := []byte(strconv.FormatInt(d.Nanoseconds(), 10))
	// A thread that was being created while the list was read may have
	// inherited the old settings: read the list again until it holds no
	// thread not yet set (the runtime creates few threads).
	done := map[int]bool{}
	for range 3 {
		names, err := threads()
		if err != nil {
			return fmt.Errorf("list threads: %w", err)
		}
		fresh := false
		for _, name := range names {
			tid, err := strconv.Atoi(name)
			if err != nil || done[tid] {
				continue
			}
			fresh, done[tid] = true, true
			if tid != unix.Gettid() {
				if err := os.WriteFile("/proc/"+name+"/timerslack_ns", val, 0); err != nil {
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

// threads lists the thread IDs of this process.
func threads() ([]string, error) {
	f, err := os.Open("/proc/self/task")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
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
