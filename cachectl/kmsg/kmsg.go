// Package kmsg reads the kernel log (/dev/kmsg) and recognises the lines
// that tell of NFS mounts in trouble: an RPC server not responding (still
// trying, or timed out on a soft mount), answering again (OK), the NFSv4
// state manager failing or not starting, and the hung-task detector's
// blocked tasks. It
// turns those lines into typed Messages and nothing more: which mount a
// message is about is for its reader to decide (the kernel's lines carry
// no network namespace).
//
// The records are read with github.com/euank/go-kmsg-parser. Their text is
// untrusted: a hung task's name is whatever the process called itself, and
// a server is named as the mount named it.
package kmsg

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/euank/go-kmsg-parser/kmsgparser"
)

// Kind is what a message says.
type Kind string

// The kinds of messages recognised, with the kernel's format.
const (
	// NotResponding: "PROG: server SERVER not responding, still trying"
	// (net/sunrpc/clnt.c), an RPC of a hard mount hit a major timeout.
	NotResponding Kind = "not-responding"
	// TimedOut: "PROG: server SERVER not responding, timed out", the same
	// for an RPC that gives up (soft mounts, and background RPCs such as
	// lease renewals).
	TimedOut Kind = "timed-out"
	// ServerOK: "PROG: server SERVER OK", an RPC that had reported a
	// major timeout got its answer.
	ServerOK Kind = "ok"
	// StateManagerFailed: "NFS: state manager[: SECTION] failed on NFSv4
	// server SERVER with error N" (fs/nfs/nfs4state.c).
	StateManagerFailed Kind = "state-manager-failed"
	// StateManagerNotStarted: "nfs4_schedule_state_manager: kthread_run:
	// -N" (fs/nfs/nfs4state.c): an NFSv4 client's recovery thread could
	// not be created, -4 (EINTR) when the task that asked for it had been
	// sent a fatal signal. The kernel then leaves the client's recovery
	// undone, and its mounts, new ones of that server in its network
	// namespace included, may hang (seen on 6.12 under nsmount watch, in a
	// server switch). The line names neither client nor server.
	StateManagerNotStarted Kind = "state-manager-not-started"
	// HungTask: "INFO: task NAME:PID blocked for more than N seconds."
	// (kernel/hung_task.c). Tasks waiting killably, as most NFS waits do,
	// are not reported; one waiting on a lock held by such a task, or on
	// page writeback, is.
	HungTask Kind = "hung-task"
)

// Message is one recognised kernel log line.
type Message struct {
	Kind Kind `json:"kind"`
	// Text is the line as the kernel logged it (its first line).
	Text string `json:"text"`
	// Seq is the record's sequence number; Time when the kernel logged it
	// (boot time plus the record's timestamp; the boot time is known to
	// the second).
	Seq  int       `json:"seq,omitempty"`
	Time time.Time `json:"time,omitzero"`
	// Program is the RPC program that logged a server line ("nfs",
	// "lockd", ...).
	Program string `json:"program,omitempty"`
	// Server is the server as the mount named it: the host part of the
	// mount source (a name or an address), for every kind but HungTask.
	Server string `json:"server,omitempty"`
	// Section and Errno are, for StateManagerFailed, what failed ("check
	// lease") and the error number; Errno is also, for
	// StateManagerNotStarted, the error kthread_run returned (positive).
	Section string `json:"section,omitempty"`
	Errno   int    `json:"errno,omitempty"`
	// Task, PID and Blocked are, for HungTask, the task's name, its PID
	// (in the initial PID namespace) and how long it has been blocked.
	Task    string        `json:"task,omitempty"`
	PID     int           `json:"pid,omitempty"`
	Blocked time.Duration `json:"blocked,omitempty"`
}

// Parse recognises one kernel log line (the text of a record, without the
// record's header). It reports false for any other line.
func Parse(line string) (Message, bool) {
	line, _, _ = strings.Cut(line, "\n")
	m := Message{Text: line}
	switch {
	case strings.HasPrefix(line, "INFO: task "):
		return parseHungTask(m)
	case strings.HasPrefix(line, "NFS: state manager"):
		return parseStateManager(m)
	case strings.HasPrefix(line, notStartedPrefix):
		return parseNotStarted(m)
	}
	prog, rest, ok := strings.Cut(line, ": server ")
	if !ok || !isWord(prog) {
		return Message{}, false
	}
	for _, f := range []struct {
		suffix string
		kind   Kind
	}{
		{" not responding, still trying", NotResponding},
		{" not responding, timed out", TimedOut},
		{" OK", ServerOK},
	} {
		if srv, ok := strings.CutSuffix(rest, f.suffix); ok && isServer(srv) {
			m.Kind, m.Program, m.Server = f.kind, prog, srv
			return m, true
		}
	}
	return Message{}, false
}

func parseStateManager(m Message) (Message, bool) {
	rest := strings.TrimPrefix(m.Text, "NFS: state manager")
	i := strings.LastIndex(rest, " failed on NFSv4 server ")
	if i < 0 {
		return Message{}, false
	}
	section, tail := rest[:i], rest[i+len(" failed on NFSv4 server "):]
	if section != "" {
		var ok bool
		if section, ok = strings.CutPrefix(section, ": "); !ok || section == "" {
			return Message{}, false
		}
	}
	srv, errno, ok := strings.Cut(tail, " with error ")
	if !ok || !isServer(srv) {
		return Message{}, false
	}
	n, err := strconv.Atoi(errno)
	if err != nil || strconv.Itoa(n) != errno {
		return Message{}, false
	}
	m.Kind, m.Section, m.Server, m.Errno = StateManagerFailed, section, srv, n
	return m, true
}

// notStartedPrefix begins a StateManagerNotStarted line.
const notStartedPrefix = "nfs4_schedule_state_manager: kthread_run: -"

func parseNotStarted(m Message) (Message, bool) {
	errno := strings.TrimPrefix(m.Text, notStartedPrefix)
	n, err := strconv.Atoi(errno)
	if err != nil || n <= 0 || strconv.Itoa(n) != errno {
		return Message{}, false
	}
	m.Kind, m.Errno = StateManagerNotStarted, n
	return m, true
}

func parseHungTask(m Message) (Message, bool) {
	rest := strings.TrimPrefix(m.Text, "INFO: task ")
	rest, ok := strings.CutSuffix(rest, " seconds.")
	if !ok {
		return Message{}, false
	}
	i := strings.LastIndex(rest, " blocked for more than ")
	if i < 0 {
		return Message{}, false
	}
	task, secs := rest[:i], rest[i+len(" blocked for more than "):]
	// The name may hold ':' itself: the PID follows the last one.
	j := strings.LastIndexByte(task, ':')
	if j < 0 {
		return Message{}, false
	}
	pid, err := strconv.Atoi(task[j+1:])
	if err != nil || pid <= 0 || strconv.Itoa(pid) != task[j+1:] {
		return Message{}, false
	}
	s, err := strconv.ParseInt(secs, 10, 64)
	if err != nil || s < 0 || s > int64(365*24*time.Hour/time.Second) || strconv.FormatInt(s, 10) != secs {
		return Message{}, false
	}
	m.Kind, m.Task, m.PID, m.Blocked = HungTask, task[:j], pid, time.Duration(s)*time.Second
	return m, true
}

// isWord reports whether s is an RPC program name.
func isWord(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// isServer reports whether s can be a server name or address as the
// kernel prints it.
func isServer(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// Reader reads new records of the kernel log.
type Reader struct {
	p      kmsgparser.Parser
	log    *slog.Logger
	closed *atomic.Bool
}

// Open opens /dev/kmsg (reading it needs CAP_SYSLOG, or
// kernel.dmesg_restrict=0) and skips what was logged before: a Reader
// sees what the kernel logs from now on. log, if not nil, receives the
// reader's warnings (records lost because the log wrapped around).
func Open(log *slog.Logger) (*Reader, error) {
	p, err := kmsgparser.NewParser()
	if err != nil {
		return nil, fmt.Errorf("open kernel log: %w", err)
	}
	if err := p.SeekEnd(); err != nil {
		p.Close()
		return nil, fmt.Errorf("open kernel log: seek to the end: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reader{p: p, log: log, closed: new(atomic.Bool)}
	p.SetLogger(logger{log, r.closed})
	return r, nil
}

// Run sends the recognised messages to out until ctx is done or the log
// cannot be read, then closes the log (not out). A slow reader of out
// slows Run down; the kernel keeps what it logs meanwhile in its ring
// buffer, which may wrap around (a warning).
func (r *Reader) Run(ctx context.Context, out chan<- Message) error {
	records := r.p.Parse()
	defer func() {
		r.closed.Store(true) // the parser's read error is expected now
		r.p.Close()
		for range records {
			// the parser's goroutine ends once it sees the log closed
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case rec, ok := <-records:
			if !ok {
				return fmt.Errorf("kernel log: reading stopped")
			}
			m, ok := Parse(rec.Message)
			if !ok {
				continue
			}
			m.Seq, m.Time = rec.SequenceNumber, rec.Timestamp
			select {
			case out <- m:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// logger passes the kmsg parser's warnings and errors on, until the
// Reader closes the log.
type logger struct {
	log    *slog.Logger
	closed *atomic.Bool
}

func (l logger) Warningf(format string, args ...any) { l.warn(format, args) }
func (l logger) Errorf(format string, args ...any)   { l.warn(format, args) }
func (l logger) Infof(string, ...any)                {}

func (l logger) warn(format string, args []any) {
	if !l.closed.Load() {
		l.log.Warn("kernel log: " + fmt.Sprintf(format, args...))
	}
}
