package cni_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/cni"
	"github.com/nsmount/nsmount/routing"
)

func TestParseServerAddr(t *testing.T) {
	tests := []struct {
		in   string
		want cni.ServerAddr
		err  string
	}{
		{in: "198.51.100.1", want: cni.ServerAddr{Host: "198.51.100.1", Port: 2049}},
		{in: "198.51.100.1:20049", want: cni.ServerAddr{Host: "198.51.100.1", Port: 20049}},
		{in: "2001:db8::1", want: cni.ServerAddr{Host: "2001:db8::1", Port: 2049}},
		{in: "[2001:db8::1]", want: cni.ServerAddr{Host: "2001:db8::1", Port: 2049}},
		{in: "[2001:db8::1]:2050", want: cni.ServerAddr{Host: "2001:db8::1", Port: 2050}},
		{in: "::ffff:198.51.100.1", want: cni.ServerAddr{Host: "198.51.100.1", Port: 2049}},
		{in: "nfs", want: cni.ServerAddr{Host: "nfs", Port: 2049}},
		{in: "nfs.example.test.:2049", want: cni.ServerAddr{Host: "nfs.example.test.", Port: 2049}},
		{in: "", err: "empty"},
		{in: "nfs:0", err: "is not 1-65535"},
		{in: "nfs:65536", err: "is not 1-65535"},
		{in: "nfs:", err: "is not 1-65535"},
		{in: "nfs:x", err: "is not 1-65535"},
		{in: "nfs..test", err: "neither an IP address nor a host name"},
		{in: "-nfs", err: "neither an IP address nor a host name"},
		{in: "nfs/x", err: "neither an IP address nor a host name"},
		{in: "nfs x", err: "space or control character"},
		{in: "nfs\n", err: "space or control character"},
		{in: "[2001:db8::1", err: "unterminated"},
		{in: "[198.51.100.1]:2049", err: "not an IPv6 address in brackets"},
		{in: "[2001:db8::1]x", err: "garbage after"},
		{in: "2001:db8::1:2049:x", err: "must be in brackets"},
		{in: "fe80::1%eth0", err: "zoned"},
		{in: strings.Repeat("a", 300), err: "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := cni.ParseServerAddr(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, nsmount.ErrInvalidArgument) {
					t.Fatalf("ParseServerAddr(%q) = %v, %v; want an invalid argument error containing %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseServerAddr(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestServerAddrString(t *testing.T) {
	for _, tt := range []struct {
		s    cni.ServerAddr
		want string
	}{
		{cni.ServerAddr{Host: "198.51.100.1", Port: 2049}, "198.51.100.1:2049"},
		{cni.ServerAddr{Host: "2001:db8::1", Port: 2049}, "[2001:db8::1]:2049"},
		{cni.ServerAddr{Host: "nfs", Port: 20049}, "nfs:20049"},
	} {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.s, got, tt.want)
		}
	}
}

// cniTempDir makes a temporary directory named with this package's test
// prefix, removed when the test ends.
func cniTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nsmC-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestRecordFiles(t *testing.T) {
	state := filepath.Join(cniTempDir(t), "state")
	// A container ID that would be a path if used as a file name.
	id, ifname := "../../etc/passwd", "eth0"
	path := cni.RecordPath(state, id, ifname)
	if filepath.Dir(path) != filepath.Join(state, "cni") || strings.Contains(filepath.Base(path), "passwd") {
		t.Fatalf("record path %s: want a hash name under %s/cni", path, state)
	}
	if other := cni.RecordPath(state, id, "eth1"); other == path {
		t.Fatalf("eth0 and eth1 share the record path %s", path)
	}

	_, err := cni.ReadRecord(state, id, ifname)
	if !errors.Is(err, os.ErrNotExist) || !errors.Is(err, nsmount.ErrTargetNotFound) {
		t.Fatalf("reading a missing record: %v; want not-exist and target-not-found", err)
	}
	if err := cni.RemoveRecord(state, id, ifname); err != nil {
		t.Fatalf("removing a missing record: %v", err)
	}

	rec := &cni.Record{
		ContainerID: id, IfName: ifname, Network: "nsmC-net", NetNSPath: "/run/netns/x", NetNS: 4026531840,
		Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Servers: []cni.ServerCheck{{
			Server: "198.51.100.1:2049", Port: 2049, Address: netip.MustParseAddr("198.51.100.1"), Reachable: true,
			Route: &routing.Route{Dst: netip.MustParseAddr("198.51.100.1"), Iface: "eth0", Source: netip.MustParseAddr("198.51.100.2"), Table: 254},
		}},
	}
	for range 2 { // the second write replaces the first
		if err := cni.WriteRecord(state, rec); err != nil {
			t.Fatalf("WriteRecord: %v", err)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 || entries[0].Name() != filepath.Base(path) {
		t.Fatalf("state dir holds %v; want only %s (no temporary files)", entries, filepath.Base(path))
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("record file: %v, %v; want mode 0600", st, err)
	}
	got, err := cni.ReadRecord(state, id, ifname)
	if err != nil {
		t.Fatalf("ReadRecord: %v", err)
	}
	if got.ContainerID != id || got.NetNS != rec.NetNS || len(got.Servers) != 1 || *got.Servers[0].Route != *rec.Servers[0].Route || !got.Time.Equal(rec.Time) {
		t.Fatalf("read back %+v; want %+v", got, rec)
	}

	// A file that claims another attachment is refused.
	if err := os.Rename(path, cni.RecordPath(state, "other", ifname)); err != nil {
		t.Fatal(err)
	}
	if _, err := cni.ReadRecord(state, "other", ifname); err == nil || !strings.Contains(err.Error(), "it is for container") {
		t.Fatalf("reading a record under another key: %v; want a mismatch error", err)
	}
	for range 2 {
		if err := cni.RemoveRecord(state, "other", ifname); err != nil {
			t.Fatalf("RemoveRecord: %v", err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 0 {
		t.Fatalf("state dir holds %v after removal", entries)
	}
}

// cniTestNS creates the named netns and deletes it when the test ends,
// unless the test deleted it already.
func cniTestNS(t *testing.T, name string) string {
	t.Helper()
	exec.Command("ip", "netns", "del", name).Run() // left by a killed run
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if _, err := os.Stat("/run/netns/" + name); err != nil {
			return // deleted by the test
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return "/run/netns/" + name
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// clientAndServer makes a client netns PREFIX1 and a server netns PREFIX2
// on a veth pair, the server listening (accepting and closing) on
// 198.51.100.2:2049 only, and returns the client's path. All is removed
// when the test ends.
//
//	PREFIX1 eth0 198.51.100.1/24 ---- PREFIX2 eth0 198.51.100.2/24
func clientAndServer(t *testing.T, prefix string) (client string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network namespaces")
	}
	c, sv := prefix+"1", prefix+"2"
	client, server := cniTestNS(t, c), cniTestNS(t, sv)
	run(t, "ip", "link", "add", "eth0", "netns", c, "type", "veth", "peer", "name", "eth0", "netns", sv)
	run(t, "ip", "-n", c, "addr", "add", "198.51.100.1/24", "dev", "eth0")
	run(t, "ip", "-n", sv, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	run(t, "ip", "-n", c, "link", "set", "eth0", "up")
	run(t, "ip", "-n", sv, "link", "set", "eth0", "up")
	srv, err := nsmount.OpenNetNS(server)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var l net.Listener
	if err := srv.Do(nsmount.NetNS, func() (err error) {
		l, err = net.Listen("tcp", "198.51.100.2:2049")
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", server, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return client
}

// TestCheckServers: a client netns and a server netns on a veth pair; the
// server listens on 198.51.100.2:2049 only.
//
//	nsmC-u1 eth0 198.51.100.1/24 ---- nsmC-u2 eth0 198.51.100.2/24
func TestCheckServers(t *testing.T) {
	client := clientAndServer(t, "nsmC-u")

	tg, err := nsmount.OpenNetNS(client)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	parse := func(s string) cni.ServerAddr {
		sa, err := cni.ParseServerAddr(s)
		if err != nil {
			t.Fatal(err)
		}
		return sa
	}
	servers := []cni.ServerAddr{parse("198.51.100.2"), parse("198.51.100.2:2050"), parse("203.0.113.1"), parse("nfs")}
	start := time.Now()
	checks := cni.CheckServers(context.Background(), tg, servers, nil, time.Second)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("CheckServers took %v; want well under its bounds", took)
	}
	want := []struct {
		reachable bool
		class     error
		text      string
	}{
		{reachable: true},
		{class: nsmount.ErrUnreachable, text: "connection refused"},
		{class: nsmount.ErrUnreachable, text: "no route"},
		{class: nsmount.ErrInvalidArgument, text: "no DNS nameserver"},
	}
	for i, w := range want {
		c := checks[i]
		if c.Reachable != w.reachable || (w.class != nil && !errors.Is(c.Err(), w.class)) || !strings.Contains(c.Error, w.text) {
			t.Errorf("server %s: reachable %v, error %v; want reachable %v, class %v, %q", c.Server, c.Reachable, c.Err(), w.reachable, w.class, w.text)
		}
	}
	if r := checks[0].Route; r == nil || r.Iface != "eth0" || r.Source != netip.MustParseAddr("198.51.100.1") || r.Gateway.IsValid() {
		t.Errorf("route of a reachable server: %+v; want dev eth0 src 198.51.100.1", r)
	}
	if checks[1].Route == nil || checks[2].Route != nil || checks[2].Address != netip.MustParseAddr("203.0.113.1") {
		t.Errorf("refused server route %v (want one), no-route server route %v address %v (want none, the address)", checks[1].Route, checks[2].Route, checks[2].Address)
	}

	// No change: no drift. Then a new source for 198.51.100.2, and a route
	// to 203.0.113.0/24 appears.
	if drift, err := cni.RouteDrift(tg, checks); err != nil || len(drift) != 0 {
		t.Fatalf("RouteDrift unchanged: %q, %v", drift, err)
	}
	run(t, "ip", "-n", "nsmC-u1", "addr", "add", "198.51.100.9/24", "dev", "eth0")
	run(t, "ip", "-n", "nsmC-u1", "route", "add", "198.51.100.2/32", "dev", "eth0", "src", "198.51.100.9")
	run(t, "ip", "-n", "nsmC-u1", "route", "add", "203.0.113.0/24", "via", "198.51.100.2")
	drift, err := cni.RouteDrift(tg, checks)
	if err != nil {
		t.Fatalf("RouteDrift: %v", err)
	}
	got := strings.Join(drift, "\n")
	for _, w := range []string{"server 198.51.100.2:2049: was 198.51.100.2 dev eth0 src 198.51.100.1 (table 254), now 198.51.100.2 dev eth0 src 198.51.100.9",
		"server 203.0.113.1:2049: had no route, now 203.0.113.1 via 198.51.100.2 dev eth0 src 198.51.100.1"} {
		if !strings.Contains(got, w) {
			t.Errorf("drift %q lacks %q", got, w)
		}
	}
	if len(drift) != 3 { // also the refused server on the same address
		t.Errorf("drift has %d lines, want 3: %q", len(drift), drift)
	}
}
