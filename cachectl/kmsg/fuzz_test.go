package kmsg_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kmsg"
)

// line formats m as the kernel would have.
func line(m kmsg.Message) string {
	switch m.Kind {
	case kmsg.NotResponding:
		return fmt.Sprintf("%s: server %s not responding, still trying", m.Program, m.Server)
	case kmsg.TimedOut:
		return fmt.Sprintf("%s: server %s not responding, timed out", m.Program, m.Server)
	case kmsg.ServerOK:
		return fmt.Sprintf("%s: server %s OK", m.Program, m.Server)
	case kmsg.StateManagerFailed:
		sec := ""
		if m.Section != "" {
			sec = ": " + m.Section
		}
		return fmt.Sprintf("NFS: state manager%s failed on NFSv4 server %s with error %d", sec, m.Server, m.Errno)
	case kmsg.StateManagerNotStarted:
		return fmt.Sprintf("nfs4_schedule_state_manager: kthread_run: -%d", m.Errno)
	case kmsg.HungTask:
		return fmt.Sprintf("INFO: task %s:%d blocked for more than %d seconds.", m.Task, m.PID, m.Blocked/time.Second)
	}
	return "?"
}

// FuzzParse: kernel log lines carry names that processes and mounts chose.
// What Parse recognises must be exactly what the kernel's format gives
// back from the fields it found.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"kmsg-outage-6.1.txt", "kmsg-outage-6.12.txt"} {
		for _, text := range records(f, name) {
			f.Add(text)
		}
	}
	f.Add("INFO: task sync:512 blocked for more than 5 seconds.")
	f.Add("INFO: task a:1 blocked:77 blocked for more than 120 seconds.")
	f.Add("NFS: state manager failed on NFSv4 server s with error -5")
	f.Add("lockd: server [::1] OK\n SUBSYSTEM=x")
	f.Add("nfs4_schedule_state_manager: kthread_run: -4")
	f.Fuzz(func(t *testing.T, text string) {
		m, ok := kmsg.Parse(text)
		if !ok {
			return
		}
		first, _, _ := strings.Cut(text, "\n")
		if m.Text != first || line(m) != first {
			t.Fatalf("%q parsed as %+v, which formats as %q", text, m, line(m))
		}
		if m.Kind != kmsg.HungTask && m.Kind != kmsg.StateManagerNotStarted && (m.Server == "" || strings.ContainsAny(m.Server, " \t")) {
			t.Fatalf("%q: server %q", text, m.Server)
		}
		if m.Kind == kmsg.HungTask && m.PID <= 0 {
			t.Fatalf("%q: pid %d", text, m.PID)
		}
	})
}
