package kmsg_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kmsg"
)

// records reads a /dev/kmsg capture (raw records, "PRIO,SEQ,TS,FLAGS;TEXT")
// and returns the texts.
func records(t testing.TB, name string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		_, text, ok := strings.Cut(sc.Text(), ";")
		if !ok {
			t.Fatalf("%s: not a kmsg record: %q", name, sc.Text())
		}
		out = append(out, text)
	}
	return out
}

func TestParseCaptured(t *testing.T) {
	tests := []struct {
		file string
		want []kmsg.Kind
	}{
		// 6.1: a blackholed route, then the route back.
		{"kmsg-outage-6.1.txt", []kmsg.Kind{kmsg.NotResponding, kmsg.ServerOK}},
		// 6.12: the same, the NFSv4 state manager failing on the
		// blackhole's EINVAL (rate-limited to 10 lines), then, with the
		// server's replies blackholed, a lease renewal timing out.
		{"kmsg-outage-6.12.txt", append(append([]kmsg.Kind{kmsg.NotResponding}, repeat(kmsg.StateManagerFailed, 10)...), repeat(kmsg.TimedOut, 6)...)},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			var got []kmsg.Kind
			for _, text := range records(t, tt.file) {
				m, ok := kmsg.Parse(text)
				if !ok {
					continue
				}
				if m.Server != "198.51.100.10" {
					t.Errorf("%q: server %q", text, m.Server)
				}
				got = append(got, m.Kind)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("kinds %v, want %v", got, tt.want)
			}
		})
	}
}

func repeat(k kmsg.Kind, n int) []kmsg.Kind {
	out := make([]kmsg.Kind, n)
	for i := range out {
		out[i] = k
	}
	return out
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		line string
		want *kmsg.Message // nil: not recognised
	}{
		{"not responding", "nfs: server 198.51.100.10 not responding, still trying",
			&kmsg.Message{Kind: kmsg.NotResponding, Program: "nfs", Server: "198.51.100.10"}},
		{"timed out, a name", "nfs: server nfs.lab.test not responding, timed out",
			&kmsg.Message{Kind: kmsg.TimedOut, Program: "nfs", Server: "nfs.lab.test"}},
		{"ok, IPv6", "nfs: server 2001:db8::1 OK",
			&kmsg.Message{Kind: kmsg.ServerOK, Program: "nfs", Server: "2001:db8::1"}},
		{"lockd", "lockd: server 198.51.100.1 not responding, still trying",
			&kmsg.Message{Kind: kmsg.NotResponding, Program: "lockd", Server: "198.51.100.1"}},
		{"with the record's dictionary lines", "nfs: server 198.51.100.10 OK\n SUBSYSTEM=nfs",
			&kmsg.Message{Kind: kmsg.ServerOK, Program: "nfs", Server: "198.51.100.10"}},
		{"state manager", "NFS: state manager: check lease failed on NFSv4 server 198.51.100.10 with error 22",
			&kmsg.Message{Kind: kmsg.StateManagerFailed, Section: "check lease", Server: "198.51.100.10", Errno: 22}},
		{"state manager, no section", "NFS: state manager failed on NFSv4 server srv with error 5",
			&kmsg.Message{Kind: kmsg.StateManagerFailed, Server: "srv", Errno: 5}},
		{"state manager not started", "nfs4_schedule_state_manager: kthread_run: -4",
			&kmsg.Message{Kind: kmsg.StateManagerNotStarted, Errno: 4}},
		{"state manager not started, no sign", "nfs4_schedule_state_manager: kthread_run: 4", nil},
		{"state manager not started, -0", "nfs4_schedule_state_manager: kthread_run: -0", nil},
		{"state manager not started, trailing text", "nfs4_schedule_state_manager: kthread_run: -4 x", nil},
		{"hung task", "INFO: task sync:512 blocked for more than 5 seconds.",
			&kmsg.Message{Kind: kmsg.HungTask, Task: "sync", PID: 512, Blocked: 5 * time.Second}},
		{"hung task whose name imitates the line", "INFO: task a:1 blocked:77 blocked for more than 120 seconds.",
			&kmsg.Message{Kind: kmsg.HungTask, Task: "a:1 blocked", PID: 77, Blocked: 120 * time.Second}},
		{"hung task, escaped name", `INFO: task kworker/u2:1\x0a:9 blocked for more than 122 seconds.`,
			&kmsg.Message{Kind: kmsg.HungTask, Task: `kworker/u2:1\x0a`, PID: 9, Blocked: 122 * time.Second}},
		{"suppressed count", "nfs4_state_manager: 30078 callbacks suppressed", nil},
		{"server with a space", "nfs: server a b OK", nil},
		{"empty server", "nfs: server  OK", nil},
		{"program with a space", "my prog: server s OK", nil},
		{"hung task, PID not a number", "INFO: task x:y blocked for more than 5 seconds.", nil},
		{"hung task, PID 0", "INFO: task x:0 blocked for more than 5 seconds.", nil},
		{"hung task, PID with a sign", "INFO: task x:+5 blocked for more than 5 seconds.", nil},
		{"hung task, no period", "INFO: task x:5 blocked for more than 5 seconds", nil},
		{"state manager, errno not a number", "NFS: state manager failed on NFSv4 server s with error x", nil},
		{"state manager, empty section", "NFS: state manager:  failed on NFSv4 server s with error 5", nil},
		{"other", "nfs: server 198.51.100.10 is fine", nil},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := kmsg.Parse(tt.line)
			if tt.want == nil {
				if ok {
					t.Fatalf("recognised %+v", got)
				}
				return
			}
			if !ok {
				t.Fatal("not recognised")
			}
			want := *tt.want
			want.Text, _, _ = strings.Cut(tt.line, "\n")
			if got != want {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestReadKernelLog writes a line to /dev/kmsg (root only) and reads it
// back through a Reader.
func TestReadKernelLog(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: writes to /dev/kmsg")
	}
	r, err := kmsg.Open(nil)
	if err != nil {
		t.Skipf("no kernel log here: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := make(chan kmsg.Message, 4)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, out) }()
	w, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("cannot write the kernel log: %v", err)
	}
	defer w.Close()
	line := fmt.Sprintf("nfs: server nsmO-test-%d.invalid OK", os.Getpid())
	if _, err := w.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-out:
		if m.Kind != kmsg.ServerOK || m.Text != line || m.Seq == 0 || time.Since(m.Time) > time.Minute || time.Since(m.Time) < -time.Minute {
			t.Errorf("read %+v", m)
		}
	case err := <-done:
		t.Fatalf("reader ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the line did not come back in 10s")
	}
	// Run returns once ctx is done, the log closed under its reader.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return 5s after its context ended")
	}
}
