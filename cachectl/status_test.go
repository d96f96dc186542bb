package cachectl

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/routing"
)

func TestDrift(t *testing.T) {
	a := netip.MustParseAddr
	rec := registry.Route{Iface: "eth0", Source: "198.51.100.2"}
	now := routing.Route{Dst: a("198.51.100.1"), Iface: "eth0", Source: a("198.51.100.2")}
	tests := []struct {
		name string
		was  registry.Route
		now  routing.Route
		want []string
	}{
		{name: "same", was: rec, now: now},
		// A rebuilt entry (registry recovered from mountinfo) does not know
		// its route: nothing to compare, no drift.
		{name: "route not recorded (rebuilt entry)", was: registry.Route{}, now: now},
		{name: "same, other table", was: registry.Route{Iface: "eth0", Source: "198.51.100.2", Table: 100}, now: now},
		{name: "interface", was: rec, now: with(now, func(r *routing.Route) { r.Iface = "eth1" }),
			want: []string{"interface eth0 -> eth1"}},
		{name: "gateway added", was: rec, now: with(now, func(r *routing.Route) { r.Gateway = a("192.0.2.1") }),
			want: []string{"gateway none -> 192.0.2.1"}},
		{name: "gateway removed", was: registry.Route{Iface: "eth0", Gateway: "192.0.2.1", Source: "198.51.100.2"}, now: now,
			want: []string{"gateway 192.0.2.1 -> none"}},
		{name: "same gateway", was: registry.Route{Iface: "eth0", Gateway: "192.0.2.1", Source: "198.51.100.2"},
			now: with(now, func(r *routing.Route) { r.Gateway = a("192.0.2.1") })},
		{name: "source", was: rec, now: with(now, func(r *routing.Route) { r.Source = a("198.51.100.3") }),
			want: []string{"source 198.51.100.2 -> 198.51.100.3"}},
		{name: "everything, IPv6",
			was:  registry.Route{Iface: "eth0", Gateway: "2001:db8::1", Source: "2001:db8::2"},
			now:  routing.Route{Iface: "eth1", Gateway: a("2001:db8:1::1"), Source: a("2001:db8:1::2")},
			want: []string{"interface eth0 -> eth1", "gateway 2001:db8::1 -> 2001:db8:1::1", "source 2001:db8::2 -> 2001:db8:1::2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := drift(tt.was, tt.now); !slices.Equal(got, tt.want) {
				t.Errorf("drift = %q, want %q", got, tt.want)
			}
		})
	}
}

func with(r routing.Route, edit func(*routing.Route)) routing.Route {
	edit(&r)
	return r
}

func TestVerdict(t *testing.T) {
	yes, no := true, false
	ok := &nsmount.Health{}
	tests := []struct {
		name   string
		ms     MountStatus
		want   string
		advice string // substring
	}{
		{name: "not probed, no drift", ms: MountStatus{}, want: "unknown"},
		{name: "healthy", ms: MountStatus{Health: ok, Reachable: &yes}, want: "ok"},
		{name: "healthy, not reachability-checked", ms: MountStatus{Health: ok}, want: "ok"},
		{name: "hung", ms: MountStatus{Health: &nsmount.Health{Hung: true}, Reachable: &no, Drift: []string{"x"}},
			want: "hung", advice: "does not answer"},
		{name: "ESTALE", ms: MountStatus{Health: &nsmount.Health{Errno: unix.ESTALE}, Drift: []string{"x"}},
			want: "stale", advice: "nsmount remount"},
		{name: "other errno", ms: MountStatus{Health: &nsmount.Health{Errno: unix.EIO, Error: "statfs: input/output error"}},
			want: "broken", advice: "the mount fails: statfs: input/output error"},
		{name: "EBADHANDLE (another server at the address)", ms: MountStatus{Health: &nsmount.Health{Errno: nsmount.EBADHANDLE, Error: "getattr /data: errno 521"}, Reachable: &yes},
			want: "stale", advice: "EBADHANDLE: the server no longer knows"},
		{name: "EIO, the server answers", ms: MountStatus{Health: &nsmount.Health{Errno: unix.EIO, Error: "getattr /data: input/output error"}, Reachable: &yes},
			want: "broken", advice: "nsmount remount"},
		{name: "EIO, the server does not answer", ms: MountStatus{Health: &nsmount.Health{Errno: unix.EIO, Error: "getattr /data: input/output error"}, Reachable: &no, ReachError: "connection refused"},
			want: "unreachable", advice: "(EIO) and the server's NFS port does not answer"},
		{name: "EACCES, the server answers", ms: MountStatus{Health: &nsmount.Health{Errno: unix.EACCES, Error: "getattr /data: permission denied"}, Reachable: &yes},
			want: "broken", advice: "the mount fails: getattr /data: permission denied"},
		{name: "probe failed without errno", ms: MountStatus{Health: &nsmount.Health{Error: "helper: exit status 1"}},
			want: "broken", advice: "helper: exit status 1"},
		{name: "port does not answer", ms: MountStatus{Health: ok, Reachable: &no, ReachError: "connect: connection refused", Drift: []string{"x"}},
			want: "unreachable", advice: "connection refused"},
		{name: "drift beats a healthy probe", ms: MountStatus{Health: ok, Reachable: &yes, Drift: []string{"interface eth0 -> eth1"}},
			want: "drift", advice: "route changed"},
		{name: "drift, not probed", ms: MountStatus{Drift: []string{"source a -> b"}}, want: "drift"},
		{name: "no route", ms: MountStatus{RouteError: "network is unreachable"},
			want: "unreachable", advice: "no route from the container's network: network is unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, advice := verdict(&tt.ms)
			if got != tt.want || !strings.Contains(advice, tt.advice) {
				t.Errorf("verdict = %q, %q; want %q, advice containing %q", got, advice, tt.want, tt.advice)
			}
			if (got == "ok" || got == "unknown") != (advice == "") {
				t.Errorf("verdict %q with advice %q", got, advice)
			}
		})
	}
}

func TestParseStalePolicy(t *testing.T) {
	tests := []struct {
		in      string
		want    StalePolicy
		wantErr bool
	}{
		{"", StaleFlush, false},
		{"flush", StaleFlush, false},
		{"refuse", StaleRefuse, false},
		{"share", StaleShare, false},
		{"Flush", "", true},
		{" flush", "", true},
		{"kill", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseStalePolicy(tt.in)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Fatalf("ParseStalePolicy(%q) = %q, %v", tt.in, got, err)
			}
			if err == nil {
				return
			}
			if !errors.Is(err, nsmount.ErrInvalidArgument) {
				t.Errorf("error %v is not ErrInvalidArgument", err)
			}
			if want := `stale policy "` + tt.in + `": want flush, refuse or share`; err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
		})
	}
}

func TestActionString(t *testing.T) {
	base := Action{NetNS: nsmount.NSID{Dev: 4, Ino: 4026532281}, Dev: "0:51", Server: netip.MustParseAddr("2001:db8::1")}
	mount := &MountRef{MountNS: nsmount.NSID{Dev: 4, Ino: 4026532290}, PID: 200, MountID: 611, Mountpoint: "/old"}
	holder := &kernel.Holder{PID: 300, Comm: "my app", What: "fd 3", Path: "/data/f (deleted)"}
	const prefix = "netns 4026532281 superblock 0:51 (server 2001:db8::1): "
	tests := []struct {
		kind  string
		edit  func(*Action)
		want  string
		field string
	}{
		{kind: "umount", edit: func(a *Action) { a.Mount = mount },
			want: prefix + "umount /old (mount 611) in mount namespace 4026532290 (pid 200)"},
		{kind: "umount", edit: func(a *Action) { a.Mount, a.Error = mount, "busy: files are open on it" },
			want: prefix + "umount /old (mount 611) in mount namespace 4026532290 (pid 200): busy: files are open on it"},
		{kind: "kill", edit: func(a *Action) { a.Holder = holder },
			want: prefix + "kill pid 300 (my app), holding fd 3 /data/f (deleted)"},
		{kind: "holder", edit: func(a *Action) { a.Holder = holder },
			want: prefix + "left pid 300 (my app) holding fd 3 /data/f (deleted) (use --kill to end it)"},
		{kind: "shutdown", want: prefix + "shut down the superblock (/sys/fs/nfs/0:51/shutdown)"},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			a := base
			a.Kind = tt.kind
			if tt.edit != nil {
				tt.edit(&a)
			}
			if got := a.String(); got != tt.want {
				t.Errorf("String =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestPlanFlush(t *testing.T) {
	netns := nsmount.NSID{Dev: 4, Ino: 4026532281}
	sb := Superblock{
		Volume:  kernel.Volume{Dev: "0:51", Server: netip.MustParseAddr("198.51.100.1")},
		Mounts:  []MountRef{{PID: 200, MountID: 611, Mountpoint: "/old"}, {PID: 201, MountID: 612, Mountpoint: "/old2"}},
		Holders: []kernel.Holder{{PID: 300, What: "fd 3"}, {PID: 301, What: "cwd"}},
		Stale:   true,
	}
	knob := sb
	knob.CanShutdown = true
	tests := []struct {
		name string
		pid  int
		sb   Superblock
		o    FlushOptions
		want []string
	}{
		{name: "holders named", pid: 100, sb: sb, want: []string{"holder fd 3", "holder cwd", "umount /old", "umount /old2"}},
		{name: "kill", pid: 100, sb: sb, o: FlushOptions{Kill: true}, want: []string{"kill fd 3", "kill cwd", "umount /old", "umount /old2"}},
		{name: "shutdown asked, no knob (6.1)", pid: 100, sb: sb, o: FlushOptions{Shutdown: true}, want: []string{"holder fd 3", "holder cwd", "umount /old", "umount /old2"}},
		{name: "knob, not asked", pid: 100, sb: knob, want: []string{"holder fd 3", "holder cwd", "umount /old", "umount /old2"}},
		{name: "shutdown", pid: 100, sb: knob, o: FlushOptions{Shutdown: true}, want: []string{"holder fd 3", "holder cwd", "umount /old", "umount /old2", "shutdown pid 100"}},
		{name: "kill wins over shutdown", pid: 100, sb: knob, o: FlushOptions{Kill: true, Shutdown: true}, want: []string{"kill fd 3", "kill cwd", "umount /old", "umount /old2"}},
		{name: "orphan: no netns to reach the knob", sb: knob, o: FlushOptions{Shutdown: true}, want: []string{"holder fd 3", "holder cwd", "umount /old", "umount /old2"}},
		{name: "nothing to do", pid: 100, sb: Superblock{Volume: kernel.Volume{Dev: "0:51"}}, o: FlushOptions{Kill: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, a := range planFlush(netns, tt.pid, tt.sb, tt.o) {
				s := a.Kind
				switch {
				case a.Holder != nil:
					s += " " + a.Holder.What
				case a.Mount != nil:
					s += " " + a.Mount.Mountpoint
				default:
					s += fmt.Sprintf(" pid %d", a.PID)
				}
				got = append(got, s)
				if a.NetNS != netns || a.Dev != "0:51" || a.Server != tt.sb.Server || a.Done {
					t.Errorf("action %+v", a)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("plan %q, want %q", got, tt.want)
			}
		})
	}
	// The holder's hint names --shutdown only where the kernel has it.
	for _, tt := range []struct {
		sb   Superblock
		want string
	}{{sb, "(use --kill to end it)"}, {knob, "(use --kill to end it, or --shutdown to cut it off)"}} {
		if a := planFlush(netns, 100, tt.sb, FlushOptions{})[0]; !strings.HasSuffix(a.String(), tt.want) {
			t.Errorf("holder action %q, want suffix %q", a.String(), tt.want)
		}
	}
}

func TestStaleError(t *testing.T) {
	err := staleError(netip.MustParseAddr("198.51.100.1"), []Superblock{
		{Volume: kernel.Volume{Dev: "0:51"}, Why: "mounted at /old", Holders: []kernel.Holder{{PID: 300, Comm: "sleep", What: "fd 3", Path: "/data/f"}}},
		{Volume: kernel.Volume{Dev: "0:52"}, Why: "mounted nowhere"},
	})
	msg := err.Error()
	for _, want := range []string{
		"stale NFS state for 198.51.100.1",
		"superblock 0:51: mounted at /old; held open by pid 300 (sleep) fd 3 /data/f | superblock 0:52: mounted nowhere",
		"nsmount flush",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error has a newline: %q", msg)
	}
}

// TestStatusProbesRecordedPort (defect 5): status checks the NFS port the
// mount was made with (port=), not always 2049. A process in a fresh netns
// listens on 127.0.0.1:20490 there; the entry that records port 20490 is
// reachable, the same entry without a port (2049) is not.
func TestStatusProbesRecordedPort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace")
	}
	child := exec.Command("unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 600")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	pid := child.Process.Pid
	var tg *nsmount.Target
	for i := 0; ; i++ {
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "sleep" {
			var err error
			if tg, err = nsmount.OpenPID(pid); err != nil {
				t.Fatal(err)
			}
			break
		}
		if i > 500 {
			t.Fatal("child not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer tg.Close()
	var ln net.Listener
	if err := tg.Do(nsmount.NetNS, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:20490")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	start, err := kernel.Proc{}.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		port uint16
		want bool
	}{{20490, true}, {0, false}} {
		t.Run(fmt.Sprint("port ", tc.port), func(t *testing.T) {
			m := openManager(t, kernel.Proc{})
			e := testEntry("x")
			e.Target = registry.Identity{PID: pid, PIDStart: start, NetNS: tg.NetNS(), MountNS: tg.MountNS()}
			e.Address, e.Port, e.Created = "127.0.0.1", tc.port, time.Now().Add(-time.Hour)
			e.Route = registry.Route{}
			// The host has no NFS: the entry's mount cannot exist, so
			// Status would forget it; its per-mount check is asked
			// directly.
			w, err := m.observe()
			if err != nil {
				t.Fatal(err)
			}
			ms := m.mountStatus(t.Context(), w, e, StatusOptions{Probe: true, Timeout: 2 * time.Second})
			if ms.Reachable == nil {
				t.Fatalf("status %+v, want a probed mount", ms)
			}
			if got := *ms.Reachable; got != tc.want {
				t.Errorf("reachable %v (%s), want %v", got, ms.ReachError, tc.want)
			}
		})
	}
}
