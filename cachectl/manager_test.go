package cachectl

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/routing"
)

func TestEntryOf(t *testing.T) {
	a := netip.MustParseAddr
	src, err := nsmount.ParseSource("[2001:db8::1]:/export")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := nsmount.ParseOptions("vers=4.1,ro")
	if err != nil {
		t.Fatal(err)
	}
	mnt := &nsmount.Mounted{
		Target: "/data", Source: "[2001:db8::1]:/export", Address: a("2001:db8::1"),
		Route:   routing.Route{Dst: a("2001:db8::1"), Iface: "eth1", Gateway: a("2001:db8:1::1"), Source: a("2001:db8:1::2"), Table: 254},
		Version: "4.1", Params: "vers=4.1,ro,addr=2001:db8::1,clientaddr=2001:db8:1::2",
		Dev: "0:53", MountID: 531, PID: 4242, NetNS: 4026532281, MountNS: 4026532280, ClientID: "nsmount-1",
	}
	e := entryOf(mnt, nsmount.Request{Source: src, Options: opts, ResolveFrom: "container"}, MountOptions{Owner: "hook", Container: "ctr1", NetNSPath: "/run/netns/nsmD"})
	nsDev := nsfsDev()
	if nsDev == 0 {
		t.Fatal("no nsfs device (stat /proc/self/ns/net)")
	}
	want := Entry{
		ID: "4026532280:531",
		Target: Identity{PID: 4242, NetNS: NSID{Dev: nsDev, Ino: 4026532281}, MountNS: NSID{Dev: nsDev, Ino: 4026532280},
			NetNSPath: "/run/netns/nsmD", Container: "ctr1"},
		Mountpoint: "/data", MountID: 531, Dev: "0:53",
		Source: "[2001:db8::1]:/export", Server: "2001:db8::1", Address: "2001:db8::1",
		Route:      Route{Iface: "eth1", Gateway: "2001:db8:1::1", Source: "2001:db8:1::2", Table: 254},
		ClientAddr: "2001:db8:1::2",
		FSType:     "nfs", Version: "4.1", Params: mnt.Params,
		Request:  RequestRecord{Source: "[2001:db8::1]:/export", Options: "vers=4.1,ro", ResolveFrom: "container"},
		ClientID: "nsmount-1", Owner: "hook", Created: e.Created, CreatedTicks: e.CreatedTicks,
	}
	if e != want {
		t.Errorf("entryOf =\n%+v\nwant\n%+v", e, want)
	}
	if time.Since(e.Created) > time.Minute || e.Created.Location() != time.UTC {
		t.Errorf("Created %v", e.Created)
	}
	if now, _ := BootTicks(); e.CreatedTicks == 0 || e.CreatedTicks > now {
		t.Errorf("CreatedTicks %d, now %d", e.CreatedTicks, now)
	}
	// A directly connected server: no gateway recorded.
	mnt.Route.Gateway = netip.Addr{}
	if e := entryOf(mnt, nsmount.Request{Source: src, FSType: "nfs4"}, MountOptions{}); e.Route.Gateway != "" || e.FSType != "nfs4" {
		t.Errorf("gateway %q fstype %q", e.Route.Gateway, e.FSType)
	}
}

func TestKillWait(t *testing.T) {
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := killWait(cmd.Process.Pid, 5*time.Second); err != nil {
		t.Fatalf("killWait: %v", err)
	}
	// It has exited (a zombie until reaped): Wait returns at once.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Errorf("child ended with %v, want killed", err)
		}
	case <-time.After(time.Second):
		t.Error("child still running after killWait")
	}
	// An exited process is no error.
	if err := killWait(cmd.Process.Pid, time.Second); err != nil {
		t.Errorf("killWait of a reaped pid: %v", err)
	}
}

// TestFlushDryRunFixture plans flushes against a fixture procfs (a dry run
// acts on nothing, so no real process is touched).
func TestFlushDryRunFixture(t *testing.T) {
	w := newWorldFixture(t)
	held := func(kind string) string { return fmt.Sprintf("%s %s pid 300", w.heldDev, kind) }
	tests := []struct {
		name    string
		entries []Entry
		o       FlushOptions
		actions []string
		remain  []string
		forgot  []string
	}{
		{
			name: "everything, no registry",
			o:    FlushOptions{},
			actions: []string{
				"0:50 umount 530", "0:50 umount 610", "0:51 umount 611", "0:53 umount 531", held("holder"),
			},
			remain: []string{"0:50", "0:51", "0:53", w.heldDev},
		},
		{
			name:    "one server in one netns, tracked mount kept",
			entries: []Entry{w.entry("live", nil)},
			o:       FlushOptions{NetNS: &w.c1Net, Server: w.srv4},
			actions: []string{"0:51 umount 611"},
			remain:  []string{"0:51"},
		},
		{
			name:    "kill the holder; gone entries forgotten",
			entries: []Entry{w.entry("live", nil), w.entry("unmounted", func(e *Entry) { e.MountID = 540 })},
			o:       FlushOptions{Server: w.srvLazy, Kill: true},
			actions: []string{held("kill")},
			remain:  []string{w.heldDev},
			forgot:  []string{"registry: forgot 198.51.100.1:/export at /data: mount 540 (198.51.100.1:/export at /data) is no longer in mount namespace " + w.c1.String()},
		},
		{
			name: "the host's netns only when asked",
			o:    FlushOptions{NetNS: &w.hostNet},
			actions: []string{
				"0:40 umount 70",
			},
			remain: []string{"0:40"},
		},
		{name: "a netns without NFS", o: FlushOptions{NetNS: &w.c2Net}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec recorder
			m := &Manager{Registry: openTest(t), Proc: w.f.proc(), Report: rec.report}
			err := m.Registry.Update(func(s *State) error { s.Entries = tt.entries; return nil })
			if err != nil {
				t.Fatal(err)
			}
			tt.o.DryRun = true
			rep, err := m.Flush(context.Background(), tt.o)
			if err != nil {
				t.Fatal(err)
			}
			var acts []string
			for _, a := range rep.Actions {
				s := a.Dev + " " + a.Kind
				if a.Mount != nil {
					s += fmt.Sprint(" ", a.Mount.MountID)
				}
				if a.Holder != nil {
					s += fmt.Sprint(" pid ", a.Holder.PID)
				}
				acts = append(acts, s)
				if a.Done || a.Error != "" {
					t.Errorf("dry run did %+v", a)
				}
			}
			var remain []string
			for _, sb := range rep.Remaining {
				remain = append(remain, sb.Dev)
			}
			if !rep.DryRun || !slices.Equal(acts, tt.actions) || !slices.Equal(remain, tt.remain) || len(rep.Flushed) != 0 {
				t.Errorf("Flush dry run: actions %q remaining %q flushed %q; want %q, %q", acts, remain, rep.Flushed, tt.actions, tt.remain)
			}
			if got := rec.all(); !slices.Equal(got, tt.forgot) {
				t.Errorf("reported %q, want %q", got, tt.forgot)
			}
			// Reconciled entries are gone from the registry; live ones stay.
			var want []string
			for _, e := range tt.entries {
				if e.ID == "live" {
					want = append(want, e.ID)
				}
			}
			if got := ids(viewState(t, m.Registry)); !slices.Equal(got, want) {
				t.Errorf("registry after Flush: %v, want %v", got, want)
			}
		})
	}
}

// TestNsfsDev: nsid names namespaces as NSOfPath does.
func TestNsfsDev(t *testing.T) {
	self, err := NSOfPath("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if got := nsid(self.Ino); got != self {
		t.Errorf("nsid(%d) = %+v, want %+v", self.Ino, got, self)
	}
	if _, err := NSOfPath("/proc/self/ns/nsmD-missing"); !os.IsNotExist(err) {
		t.Errorf("NSOfPath of a missing file: %v", err)
	}
}
