package cni_test

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/cni"
)

// cniErrorOf returns the CNI error inside err, failing the test without one.
func cniErrorOf(t *testing.T, err error) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T): want a CNI error", err, err)
	}
	if strings.Contains(te.Msg, "\n") {
		t.Errorf("CNI error message spans lines: %q", te.Msg)
	}
	return te
}

// TestPlugin runs ADD, CHECK and DEL in real namespaces, as the runtime
// would call them through the command: a client netns and a server netns
// on a veth pair; the server listens on 198.51.100.2:2049 only.
//
//	nsmC-p1 eth0 198.51.100.1/24 ---- nsmC-p2 eth0 198.51.100.2/24
func TestPlugin(t *testing.T) {
	client := clientAndServer(t, "nsmC-p")

	state := filepath.Join(cniTempDir(t), "state")
	const prev = `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"x"}],"ips":[{"address":"198.51.100.1/24","interface":0}]}`
	conf := func(servers string, extra string) []byte {
		return []byte(`{"cniVersion":"1.0.0","name":"nsmC-net","type":"nsmount-cni","timeout":"500ms","stateDir":"` + state + `","servers":[` + servers + `]` + extra + `}`)
	}
	args := func(id, netns string, stdin []byte) *skel.CmdArgs {
		return &skel.CmdArgs{ContainerID: id, Netns: netns, IfName: "eth0", StdinData: stdin}
	}
	ctx := t.Context()

	t.Run("add-check-drift-del-twice", func(t *testing.T) {
		stdin := conf(`"198.51.100.2","203.0.113.1"`, ","+prev)
		res, err := cni.Add(ctx, args("nsmC-a", client, stdin))
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		r, err := types100.GetResult(res.Result)
		if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.String() != "198.51.100.1/24" || res.Result.Version() != "1.0.0" {
			t.Errorf("ADD result %+v (%v); want prevResult unchanged, version 1.0.0", res.Result, err)
		}
		if len(res.Events) != 1 || !strings.HasPrefix(res.Events[0], "warning: server 203.0.113.1:2049 from netns "+client) || !strings.HasSuffix(res.Events[0], "(recorded as unreachable)") {
			t.Errorf("ADD events %q; want one warning for the unreachable server", res.Events)
		}
		rec, err := cni.ReadRecord(state, "nsmC-a", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if rec.NetNSPath != client || rec.NetNS != inode(t, client) || rec.Network != "nsmC-net" || len(rec.Servers) != 2 || !rec.Servers[0].Reachable || rec.Servers[1].Reachable {
			t.Errorf("record %+v", rec)
		}
		if _, err := cni.Check(ctx, args("nsmC-a", client, stdin)); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		_, err = cni.Check(ctx, args("nsmC-a", client, conf(`"198.51.100.2"`, "")))
		if te := cniErrorOf(t, err); te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "servers changed since ADD: recorded 198.51.100.2:2049,203.0.113.1:2049, configured 198.51.100.2:2049") {
			t.Errorf("CHECK with other servers: %v", err)
		}
		run(t, "ip", "-n", "nsmC-p1", "addr", "add", "198.51.100.250/24", "dev", "eth0")
		run(t, "ip", "-n", "nsmC-p1", "route", "add", "198.51.100.2/32", "dev", "eth0", "src", "198.51.100.250")
		t.Cleanup(func() { exec.Command("ip", "-n", "nsmC-p1", "route", "del", "198.51.100.2/32").Run() })
		_, err = cni.Check(ctx, args("nsmC-a", client, stdin))
		if te := cniErrorOf(t, err); te.Code != 106 || !strings.Contains(te.Msg, "routes changed since ADD") ||
			!strings.Contains(te.Msg, "was 198.51.100.2 dev eth0 src 198.51.100.1") || !strings.Contains(te.Msg, "now 198.51.100.2 dev eth0 src 198.51.100.250") {
			t.Errorf("CHECK after a route change: %v; want code 106 naming the old and new route", err)
		}
		for i := range 2 {
			res, err := cni.Del(ctx, args("nsmC-a", client, stdin))
			if err != nil || res.Teardown == nil {
				t.Fatalf("DEL %d: %+v, %v", i+1, res, err)
			}
			for _, e := range res.Events {
				if strings.HasPrefix(e, "warning:") {
					t.Errorf("DEL %d warned: %s", i+1, e)
				}
			}
			if _, err := cni.ReadRecord(state, "nsmC-a", "eth0"); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("record after DEL %d: %v; want none", i+1, err)
			}
		}
	})

	t.Run("required-unreachable", func(t *testing.T) {
		_, err := cni.Add(ctx, args("nsmC-b", client, conf(`"198.51.100.2","198.51.100.2:2050"`, `,"required":true,`+prev)))
		if te := cniErrorOf(t, err); te.Code != 106 || !strings.Contains(te.Msg, "required server 198.51.100.2:2050") || !strings.Contains(te.Msg, "connection refused") {
			t.Errorf("ADD: %v; want code 106, the server and the reason", err)
		}
		if _, err := cni.ReadRecord(state, "nsmC-b", "eth0"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("record after a failed ADD: %v; want none", err)
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name, netns string
			stdin       []byte
			code        uint
			msg         string
		}{
			{"no-prevresult", client, conf(`"198.51.100.2"`, ""), types.ErrInvalidNetworkConfig, "chained plugin: no prevResult"},
			{"bad-config", client, conf(`"198.51.100.2"`, `,"sever":1,`+prev), types.ErrInvalidNetworkConfig, `unknown field "sever"`},
			{"no-netns", "", conf(`"198.51.100.2"`, ","+prev), types.ErrInvalidNetNS, "empty network namespace path"},
			{"missing-netns", "/run/netns/nsmC-missing", conf(`"198.51.100.2"`, ","+prev), types.ErrInvalidNetNS, "nsmC-missing"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := cni.Add(ctx, args("nsmC-c", tc.netns, tc.stdin))
				if te := cniErrorOf(t, err); te.Code != tc.code || !strings.Contains(te.Msg, tc.msg) {
					t.Errorf("ADD: %v; want code %d with %q", err, tc.code, tc.msg)
				}
			})
		}
		if _, err := cni.Check(ctx, args("nsmC-c", client, conf(`"198.51.100.2"`, ""))); cniErrorOf(t, err).Code != 104 {
			t.Errorf("CHECK without a record: %v; want code 104 (not found)", err)
		}
	})

	t.Run("del-netns-gone-and-bad-config", func(t *testing.T) {
		path := cniTestNS(t, "nsmC-p3")
		stdin := conf(`"198.51.100.2"`, ","+prev)
		if _, err := cni.Add(ctx, args("nsmC-d", path, stdin)); err == nil {
			// No route from nsmC-p3: still recorded, as unreachable.
		} else {
			t.Fatalf("ADD: %v", err)
		}
		run(t, "ip", "netns", "del", "nsmC-p3")
		// A configuration that does not parse: its stateDir still finds
		// the record.
		res, err := cni.Del(ctx, args("nsmC-d", path, []byte(`{"stateDir":"`+state+`","bogus":true}`)))
		if err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if len(res.Events) == 0 || !strings.Contains(res.Events[0], "warning: DEL with a bad configuration, using stateDir "+state+": ") {
			t.Errorf("DEL events %q; want the bad configuration warned", res.Events)
		}
		if _, err := cni.ReadRecord(state, "nsmC-d", "eth0"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("record after DEL: %v; want none", err)
		}
		if _, err := cni.Del(ctx, args("nsmC-d", "", stdin)); err != nil {
			t.Errorf("DEL again with an empty netns: %v", err)
		}
	})
}

func TestRecordedOrphanServers(t *testing.T) {
	a := netip.MustParseAddr
	rec := &cni.Record{Servers: []cni.ServerCheck{{Address: a("198.51.100.2")}, {Address: a("::ffff:198.51.100.2")}, {}, {Address: a("2001:db8::1")}}}
	if got := cni.RecordedAddrs(rec); len(got) != 2 || got[0] != a("198.51.100.2") || got[1] != a("2001:db8::1") {
		t.Errorf("RecordedAddrs = %v; want 198.51.100.2 and 2001:db8::1, once each", got)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	id, err := nsmount.NSOfPath(path)
	if err != nil {
		t.Fatal(err)
	}
	return id.Ino
}
