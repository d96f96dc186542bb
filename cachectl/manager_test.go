package cachectl

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/registry"
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
	netns := nsmount.NSID{Dev: 4, Ino: 4026532281}
	mntns := nsmount.NSID{Dev: 4, Ino: 4026532280}
	plan := &nsmount.Plan{NFSPort: 2049}
	e := entryOf(mnt, plan, MountRequest{Request: nsmount.Request{Source: src, Options: opts, ResolveFrom: "container"}, Owner: "hook", Container: "ctr1", NetNSPath: "/run/netns/nsmD"}, netns, mntns)
	want := registry.Entry{
		ID: "4026532280:531",
		Target: registry.Identity{PID: 4242, NetNS: netns, MountNS: mntns,
			NetNSPath: "/run/netns/nsmD", Container: "ctr1"},
		Mountpoint: "/data", MountID: 531, Dev: "0:53",
		Source: "[2001:db8::1]:/export", Server: "2001:db8::1", Address: "2001:db8::1",
		Route:      registry.Route{Iface: "eth1", Gateway: "2001:db8:1::1", Source: "2001:db8:1::2", Table: 254},
		ClientAddr: "2001:db8:1::2",
		FSType:     "nfs", Version: "4.1", Params: mnt.Params,
		Request:  registry.RequestRecord{Source: "[2001:db8::1]:/export", Options: "vers=4.1,ro", ResolveFrom: "container"},
		ClientID: "nsmount-1", Owner: "hook", Created: e.Created, CreatedTicks: e.CreatedTicks, Port: 2049,
	}
	if !reflect.DeepEqual(e, want) {
		t.Errorf("entryOf =\n%+v\nwant\n%+v", e, want)
	}
	if time.Since(e.Created) > time.Minute || e.Created.Location() != time.UTC {
		t.Errorf("Created %v", e.Created)
	}
	if now, _ := kernel.BootTicks(); e.CreatedTicks == 0 || e.CreatedTicks > now {
		t.Errorf("CreatedTicks %d, now %d", e.CreatedTicks, now)
	}
	// A directly connected server: no gateway recorded.
	mnt.Route.Gateway = netip.Addr{}
	if e := entryOf(mnt, plan, MountRequest{Request: nsmount.Request{Source: src, FSType: "nfs4"}}, netns, mntns); e.Route.Gateway != "" || e.FSType != "nfs4" {
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
		entries []registry.Entry
		o       FlushOptions
		actions []string
		remain  []string
		forgot  []string
	}{
		{
			name: "everything, no registry",
			o:    FlushOptions{},
			actions: []string{
				"0:50 umount 530", "0:50 umount 610", "0:51 umount 611", held("holder"), "0:53 umount 531",
			},
			// Grouped by network namespace and server (the unit a flush
			// locks), servers in address order.
			remain: []string{"0:50", "0:51", w.heldDev, "0:53"},
		},
		{
			name:    "one server in one netns, tracked mount kept",
			entries: []registry.Entry{w.entry("live", nil)},
			o:       FlushOptions{NetNS: &w.c1Net, Server: w.srv4},
			actions: []string{"0:51 umount 611"},
			remain:  []string{"0:51"},
		},
		{
			name:    "kill the holder; gone entries forgotten",
			entries: []registry.Entry{w.entry("live", nil), w.entry("unmounted", func(e *registry.Entry) { e.MountID = 540 })},
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
			m := openManager(t, w.f.Proc())
			err := m.Registry().Update(func(s *registry.State) error { s.Entries = tt.entries; return nil })
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
			var forgot []string
			for _, g := range rep.Gone {
				forgot = append(forgot, fmt.Sprintf("registry: forgot %s at %s: %s", g.Entry.Source, g.Entry.Mountpoint, g.Why))
			}
			if !slices.Equal(forgot, tt.forgot) {
				t.Errorf("forgot %q, want %q", forgot, tt.forgot)
			}
			// Reconciled entries are gone from the registry; live ones stay.
			var want []string
			for _, e := range tt.entries {
				if e.ID == "live" {
					want = append(want, e.ID)
				}
			}
			if got := ids(viewState(t, m.Registry())); !slices.Equal(got, want) {
				t.Errorf("registry after Flush: %v, want %v", got, want)
			}
		})
	}
}
