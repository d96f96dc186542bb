// Package batchwork makes a short-lived nsmount process (a mount, a hook,
// a status, the CNI plugin) batch work for the scheduler from its start.
// The nsmount command imports it for that effect: its init runs among the
// first packages' (it imports only os, slices, syscall, strconv and time,
// so it is ready as soon as os is), before most of the process's
// start-up.
//
// Nobody types into such a process, and when many start at once (a node
// starting its pods) they compete for the CPU. Two settings tell the
// kernel so; threads inherit both, those the runtime creates later too:
//
//   - timer slack (PR_SET_TIMERSLACK, as systemd's TimerSlackNSec=): its
//     timed sleeps may end up to Slack late. Those commands wait for
//     seconds at most, so it does not show.
//   - SCHED_BATCH (as `chrt -b`, systemd's CPUSchedulingPolicy=batch), for
//     threads that run SCHED_OTHER: a thread that wakes up does not
//     preempt the running one, its turn comes at the end of that one's
//     slice; it is not niced, and on an idle CPU nothing changes.
//
// Go's sysmon thread gets a slack of its own, SysmonSlack. It is the
// runtime's watchdog: while its process runs or makes slow syscalls it
// sleeps 20 µs at a time, to preempt goroutines that ran 10 ms and to take
// a CPU slot back from a thread blocked in a syscall. In a process that
// lives a fraction of a second that is mostly wakeups that find nothing to
// do, and when many such processes share a CPU each wakeup is a switch of
// address space. With SysmonSlack those duties may come up to 300 ms late:
// a deadline in a command of one CPU slot (GOMAXPROCS=1) fires that late at
// worst, while a thread is blocked in the kernel (a mount on a hung server
// gives up after its timeout and at most 300 ms).
//
// Measured with ftrace sched_switch in the lab (1 vCPU, TCG), among 16
// mounts started at once, switches from one process's address space to
// another's, and among them sysmon's sleeps:
//
//	no settings, or set when the command ran   2330-2480  1380-1540
//	set here, 10 ms for every thread           1610-1740   780-890
//	and 100 ms for sysmon                        ~1070       ~240
//	the bare kernel mount (nsenter + mount)       ~550
//
// and 16 at once against one after another, in the same VMs: 1.00 set when
// the command ran, 0.96 set here (10 ms); 1.02 with 10 ms for every
// thread, 0.96 with 100 ms for sysmon. Starting is a third of a mount (24
// of ~75 ms), which is why the settings are made here.
//
// From 100 to 300 ms for sysmon (two runs in one VM each, the binaries
// interleaved, 8 of each per round): sysmon's switches among 16 mounts at
// once fell from 367-395 to 183-225, all of the mounts' threads' from
// 1625-1630 to 1383-1429, and 16 at once against one after another read
// lower with 300 ms in 7 of 8 rounds (medians of the rounds: 0.99 and 1.02
// with 100 ms, 0.97 and 0.96 with 300 ms); one after another did not get
// slower. 1 s was no clearer (0.95-1.16 in three rounds) and would make a
// deadline a second late.
//
// sysmon is still most of what 16 mounts at once cost beyond one after
// another (ftrace in one VM, 16 at once, two runs each): its sleeps were
// 213 and 271, and switches into another process's address space 926 and
// 1004 (568 for the bare kernel mount in another run); without sysmon's two
// switches per wakeup nsmount would need fewer than the kernel mount.
// Tried and not taken:
//
//   - SCHED_IDLE for sysmon: 145 and 159 sleeps, 780 and 802 switches,
//     16 at once against one after another 0.978 on average over six
//     rounds against 0.998. But a thread inherits its creator's policy,
//     and SCHED_RESET_ON_FORK does not reset SCHED_IDLE: a thread that
//     sysmon creates (to take over a CPU slot from a blocked syscall)
//     would run the command's goroutines at idle priority, which on a
//     busy node means hardly at all. Nice 19 has the same flaw.
//   - the main goroutine keeping the main thread (so that Target.Do's
//     goroutines start on their caller's thread): one more thread, no
//     fewer switches (912 and 933 against 888 and 839 without).
//   - GOMAXPROCS=2 on one CPU: 33 more threads among 16 mounts, no faster.
//
// Long-lived commands (the daemons, top) keep the kernel's defaults, and
// so does a process started under another name (a mount helper, a test).
package batchwork

import (
	"os"
	"slices"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// Slack is how late a short-lived process's timed sleeps may end.
const Slack = 10 * time.Millisecond

// SysmonSlack is how late its Go runtime's sysmon thread's sleeps may end.
const SysmonSlack = 300 * time.Millisecond

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
		// An optimisation: nothing to do if it fails.
		if Apply(Slack) == nil {
			QuietSysmon(SysmonSlack)
		}
	}
}

// QuietSysmon gives the Go runtime's sysmon thread of this process a timer
// slack of d. sysmon is the process's second thread: the kernel lists a
// process's threads in the order they were created, and runtime.main
// starts sysmon before anything else can start a thread.
func QuietSysmon(d time.Duration) error {
	tids, err := threads()
	if err != nil {
		return err
	}
	if len(tids) < 2 {
		return &Error{Op: "find sysmon", Err: syscall.ESRCH}
	}
	if err := writeFile("/proc/"+strconv.Itoa(tids[1])+"/timerslack_ns", []byte(strconv.FormatInt(d.Nanoseconds(), 10))); err != nil {
		return &Error{Op: "set timer slack of sysmon", TID: tids[1], Err: err}
	}
	return nil
}

// LongLived reports whether name is one of nsmount's long-lived commands.
func LongLived(name string) bool { return slices.Contains(longLived, name) }

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

// base is path/filepath.Base for an argv[0].
func base(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// Error is a failure of Apply: what it did, to which thread (0: the
// process), and the errno.
type Error struct {
	Op  string
	TID int
	Err error
}

func (e *Error) Error() string {
	if e.TID == 0 {
		return e.Op + ": " + e.Err.Error()
	}
	return e.Op + " of thread " + strconv.Itoa(e.TID) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Scheduling policies and prctl options (sched(7), prctl(2)).
const (
	schedNormal      = 0
	schedBatch       = 3
	schedResetOnFork = 0x40000000
	prSetTimerslack  = 29
)

// Apply makes every thread of this process batch work: timer slack d, and
// SCHED_BATCH if it runs SCHED_OTHER (a real-time or idle policy that an
// operator gave it is kept, and so is its nice value). The calling thread
// is set through prctl, the others through /proc/TID/timerslack_ns (that
// needs CAP_SYS_NICE) and sched_setscheduler.
func Apply(d time.Duration) error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerslack, uintptr(d.Nanoseconds()), 0); e != 0 {
		return &Error{Op: "set timer slack", Err: e}
	}
	val := []byte(strconv.FormatInt(d.Nanoseconds(), 10))
	self := syscall.Gettid()
	// A thread that was being created while the list was read may have
	// inherited the old settings: read the list again until it holds no
	// thread not yet set (the runtime creates few threads).
	var done []int
	for range 3 {
		tids, err := threads()
		if err != nil {
			return err
		}
		fresh := false
		for _, tid := range tids {
			if slices.Contains(done, tid) {
				continue
			}
			fresh, done = true, append(done, tid)
			if tid != self {
				if err := writeFile("/proc/"+strconv.Itoa(tid)+"/timerslack_ns", val); err == syscall.ENOENT {
					continue // ended meanwhile
				} else if err != nil {
					return &Error{Op: "set timer slack", TID: tid, Err: err}
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
func threads() ([]int, error) {
	fd, err := syscall.Open("/proc/self/task", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &Error{Op: "list threads", Err: err}
	}
	defer syscall.Close(fd)
	var tids []int
	buf := make([]byte, 4096)
	for {
		n, err := syscall.ReadDirent(fd, buf)
		if err != nil {
			return nil, &Error{Op: "list threads", Err: err}
		}
		if n <= 0 {
			return tids, nil
		}
		_, _, names := syscall.ParseDirent(buf[:n], -1, nil)
		for _, name := range names {
			if tid, err := strconv.Atoi(name); err == nil {
				tids = append(tids, tid)
			}
		}
	}
}

// writeFile writes b to the existing file path.
func writeFile(path string, b []byte) error {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	_, err = syscall.Write(fd, b)
	if cerr := syscall.Close(fd); err == nil {
		err = cerr
	}
	return err
}

// batchPolicy switches thread tid from SCHED_OTHER to SCHED_BATCH (its nice
// value and reset-on-fork flag kept); another policy is left alone.
func batchPolicy(tid int) error {
	p, _, e := syscall.RawSyscall(syscall.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0)
	if e == syscall.ESRCH {
		return nil // ended meanwhile
	}
	if e != 0 {
		return &Error{Op: "scheduling policy", TID: tid, Err: e}
	}
	if p&^schedResetOnFork != schedNormal {
		return nil
	}
	var param struct{ priority int32 } // struct sched_param: 0 for SCHED_BATCH
	_, _, e = syscall.RawSyscall(syscall.SYS_SCHED_SETSCHEDULER, uintptr(tid), schedBatch|(p&schedResetOnFork), uintptr(unsafe.Pointer(&param)))
	if e != 0 && e != syscall.ESRCH {
		return &Error{Op: "SCHED_BATCH", TID: tid, Err: e}
	}
	return nil
}
