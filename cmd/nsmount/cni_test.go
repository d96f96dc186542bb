package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount/integration/cni"
	"github.com/nsmount/nsmount/routing/resolver"
	"github.com/nsmount/nsmount/testenv"
)

func TestCNIExit(t *testing.T) {
	for _, tt := range []struct {
		code uint
		want int
	}{
		{types.ErrInvalidNetworkConfig, 3}, {types.ErrDecodingFailure, 3}, {types.ErrIncompatibleCNIVersion, 3},
		{types.ErrInvalidEnvironmentVariables, 3}, {types.ErrInvalidNetNS, 4}, {106, 6}, {109, 9},
		{types.ErrIOFailure, 1}, {types.ErrInternal, 1},
	} {
		if got := cniExit(types.NewError(tt.code, "x", "")); got != tt.want {
			t.Errorf("cniExit(code %d) = %d, want %d", tt.code, got, tt.want)
		}
	}
}

// The host CNI lab: real Debian CNI plugins run by libcni in a "node" netns
// of our own, so the bridge and every host-side veth live there and never
// in the host's root netns.
//
//	nsmC-node: bridge nsmC-br0 (no address), ports: nsmC-s1 and the
//	           containers' veths (made by the bridge plugin)
//	nsmC-srv:  eth0 198.51.100.2/24 (TCP 2049), 198.51.100.3/24 (DNS :53)
//	nsmC-cN:   the containers: eth0 from host-local, 198.51.100.100-199
const (
	cniNode, cniSrv = "nsmC-node", "nsmC-srv"
	cniBridge       = "nsmC-br0"
	cniNet          = "nsmC-net"
	debianCNI       = "/usr/lib/cni"
)

// inNS runs fn on a fresh goroutine whose OS thread entered h and is never
// unlocked (it ends with the goroutine); never on the main thread, which
// the runtime cannot end.
func inNS(h netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	var run func()
	run = func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			done := make(chan struct{})
			go func() {
				defer close(done)
				run()
			}()
			<-done
			runtime.UnlockOSThread()
			return
		}
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}
	go run()
	return <-errc
}

// nodeExec runs the plugins inside the node netns (forked from a thread
// that entered it) and keeps each plugin's last output per command.
type nodeExec struct {
	*invoke.DefaultExec
	node netns.NsHandle
	mu   sync.Mutex
	out  map[string][]byte // "bridge ADD" -> stdout
}

func (e *nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var out []byte
	err := inNS(e.node, func() error {
		var err error
		out, err = e.DefaultExec.ExecPlugin(ctx, pluginPath, stdin, environ)
		return err
	})
	cmd := ""
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "CNI_COMMAND="); ok {
			cmd = v
		}
	}
	e.mu.Lock()
	e.out[filepath.Base(pluginPath)+" "+cmd] = out
	e.mu.Unlock()
	return out, err
}

func (e *nodeExec) output(key string) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.out[key]
}

type cniLab struct {
	dir, bin, state, ipam string
	exec                  *nodeExec
	stderr                *syncBuffer
	cni                   *libcni.CNIConfig
	lo                    *libcni.PluginConfig
}

// syncBuffer collects the plugins' stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func cmd(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// addNS creates a named netns (lo up) and deletes it when the test ends,
// unless the test deleted it already.
func addNS(t *testing.T, name string) string {
	t.Helper()
	exec.Command("ip", "netns", "del", name).Run() // left by a killed run
	cmd(t, "ip", "netns", "add", name)
	path := "/run/netns/" + name
	t.Cleanup(func() {
		if _, err := os.Stat(path); err != nil {
			return
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	cmd(t, "ip", "-n", name, "link", "set", "lo", "up")
	return path
}

func nsHandle(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func setupCNILab(t *testing.T) *cniLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network namespaces and runs CNI plugins")
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(debianCNI, p)); err != nil {
			t.Fatalf("CNI plugin %s missing (install containernetworking-plugins: testenv/install-deps.sh): %v", p, err)
		}
	}
	dir, err := os.MkdirTemp("", "nsmC-cni-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l := &cniLab{dir: dir, bin: filepath.Join(dir, "bin"), state: filepath.Join(dir, "state"), ipam: filepath.Join(dir, "ipam")}
	for _, d := range []string{l.bin, filepath.Join(dir, "cache")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The nsmount binary, built now, as the plugin.
	build := exec.Command("go", "build", "-o", filepath.Join(l.bin, "nsmount"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	links := map[string]string{cniPluginName: "nsmount"}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		links[p] = filepath.Join(debianCNI, p)
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(l.bin, name)); err != nil {
			t.Fatal(err)
		}
	}

	addNS(t, cniNode)
	addNS(t, cniSrv)
	cmd(t, "ip", "-n", cniNode, "link", "add", cniBridge, "type", "bridge")
	cmd(t, "ip", "-n", cniNode, "link", "set", cniBridge, "up")
	cmd(t, "ip", "link", "add", "nsmC-s1", "netns", cniNode, "type", "veth", "peer", "name", "eth0", "netns", cniSrv)
	cmd(t, "ip", "-n", cniNode, "link", "set", "nsmC-s1", "master", cniBridge, "up")
	cmd(t, "ip", "-n", cniSrv, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	cmd(t, "ip", "-n", cniSrv, "addr", "add", "198.51.100.3/24", "dev", "eth0")
	cmd(t, "ip", "-n", cniSrv, "link", "set", "eth0", "up")

	srv := nsHandle(t, cniSrv)
	var ln net.Listener
	var dns *testenv.DNSServer
	err = inNS(srv, func() error {
		var err error
		if ln, err = net.Listen("tcp", "198.51.100.2:2049"); err != nil {
			return err
		}
		dns, err = testenv.StartDNS(testenv.DNSConfig{
			Listen: []string{"198.51.100.3:53"},
			Addrs: map[string][]netip.Addr{
				"nfs.nsmc.test": {netip.MustParseAddr("198.51.100.2")},
			},
		})
		return err
	})
	if err != nil {
		t.Fatalf("servers in %s: %v", cniSrv, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		dns.Close()
	})

	l.stderr = &syncBuffer{}
	l.exec = &nodeExec{DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: l.stderr}}, node: nsHandle(t, cniNode), out: map[string][]byte{}}
	l.cni = libcni.NewCNIConfigWithCacheDir([]string{l.bin}, filepath.Join(dir, "cache"), l.exec)
	l.lo, err = libcni.ConfFromBytes([]byte(`{"cniVersion":"1.0.0","name":"nsmC-lo","type":"loopback"}`))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// list builds the network: bridge + host-local, then nsmount-cni with the
// given settings (stateDir and timeout filled in unless set). bridgeDNS
// puts a "dns" in the bridge's config, which it passes on in its result.
func (l *cniLab) list(t *testing.T, version string, bridgeDNS bool, nsm map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	bridge := map[string]any{
		"type": "bridge", "bridge": cniBridge, "isGateway": false, "isDefaultGateway": false, "ipMasq": false,
		"ipam": map[string]any{
			"type": "host-local", "dataDir": l.ipam,
			"ranges": [][]map[string]string{{{"subnet": "198.51.100.0/24", "rangeStart": "198.51.100.100", "rangeEnd": "198.51.100.199"}}},
		},
	}
	if bridgeDNS {
		bridge["dns"] = map[string]any{"nameservers": []string{"198.51.100.3"}, "search": []string{"nsmc.test"}}
	}
	nsm["type"] = cniPluginName
	if _, ok := nsm["stateDir"]; !ok {
		nsm["stateDir"] = l.state
	}
	if _, ok := nsm["timeout"]; !ok {
		nsm["timeout"] = "1s"
	}
	data, err := json.Marshal(map[string]any{"cniVersion": version, "name": cniNet, "plugins": []any{bridge, nsm}})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("conflist: %v", err)
	}
	return list
}

func rtConf(id, netnsPath string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netnsPath, IfName: "eth0"}
}

// attach runs the loopback network and then list for a container, as a
// runtime would.
func (l *cniLab) attach(t *testing.T, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	t.Helper()
	if _, err := l.cni.AddNetwork(t.Context(), l.lo, rt); err != nil {
		t.Fatalf("loopback ADD: %v", err)
	}
	return l.cni.AddNetworkList(t.Context(), list, rt)
}

// detach runs DEL as a runtime would: the network, then loopback.
func (l *cniLab) detach(t *testing.T, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) {
	t.Helper()
	if err := l.cni.DelNetworkList(t.Context(), list, rt); err != nil {
		t.Fatalf("DEL %s (netns %q): %v", rt.ContainerID, rt.NetNS, err)
	}
	if err := l.cni.DelNetwork(t.Context(), l.lo, rt); err != nil {
		t.Fatalf("loopback DEL: %v", err)
	}
}

func (l *cniLab) record(t *testing.T, id string) *cni.Record {
	t.Helper()
	rec, err := cni.ReadRecord(l.state, id, "eth0")
	if err != nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	return rec
}

func (l *cniLab) noRecord(t *testing.T, id string) {
	t.Helper()
	if _, err := cni.ReadRecord(l.state, id, "eth0"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record of %s: %v; want none", id, err)
	}
}

// samePassThrough checks that nsmount-cni printed the result the bridge
// printed: the same version, interfaces, IPs, routes and DNS. (Not the same
// bytes: the Debian bridge prints an empty "dns": {}, which the CNI library
// of nsmount-cni leaves out.)
func (l *cniLab) samePassThrough(t *testing.T, cniVersion string) {
	t.Helper()
	parse := func(plugin string) *types100.Result {
		out := l.exec.output(plugin + " ADD")
		var v struct {
			CNIVersion string `json:"cniVersion"`
		}
		if err := json.Unmarshal(out, &v); err != nil || v.CNIVersion != cniVersion {
			t.Fatalf("%s printed %s (%v); want a %s result", plugin, out, err, cniVersion)
		}
		res, err := version.NewResult(cniVersion, out)
		if err != nil {
			t.Fatalf("%s result: %v", plugin, err)
		}
		r, err := types100.NewResultFromResult(res)
		if err != nil {
			t.Fatalf("%s result: %v", plugin, err)
		}
		return r
	}
	bridge, ours := parse("bridge"), parse(cniPluginName)
	if !reflect.DeepEqual(bridge, ours) || len(ours.IPs) == 0 || len(ours.Interfaces) == 0 {
		t.Fatalf("nsmount-cni changed the result:\nbridge:      %s\nnsmount-cni: %s", l.exec.output("bridge ADD"), l.exec.output(cniPluginName+" ADD"))
	}
}

// runPlugin runs nsmount-cni by hand, as a runtime would, and returns the
// CNI error it printed (zero without one) and its exit status.
func (l *cniLab) runPlugin(t *testing.T, command, id, netnsPath, conf string) (types.Error, int) {
	t.Helper()
	c := exec.Command(filepath.Join(l.bin, cniPluginName))
	c.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+id, "CNI_NETNS="+netnsPath, "CNI_IFNAME=eth0", "CNI_PATH="+l.bin)
	c.Stdin = strings.NewReader(conf)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	status := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		status = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", cniPluginName, err)
	}
	var te types.Error
	if status != 0 {
		if err := json.Unmarshal(stdout.Bytes(), &te); err != nil || te.Msg == "" || strings.Contains(te.Msg, "\n") {
			t.Fatalf("%s %s exited %d and printed %q (%v); want a CNI error JSON with a one-line msg", cniPluginName, command, status, stdout.String(), err)
		}
	}
	t.Logf("%s %s: exit %d, %s%s", cniPluginName, command, status, stdout.String(), stderr.String())
	return te, status
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// cniErr returns the CNI error inside err, failing the test without one.
func cniErr(t *testing.T, err error) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T): want a CNI error", err, err)
	}
	return te
}

func TestCNIPlugin(t *testing.T) {
	// Registered first, so it runs last: after every netns is deleted.
	t.Cleanup(func() {
		out, _ := exec.Command("ip", "netns", "list").Output()
		if strings.Contains(string(out), "nsmC-") {
			t.Errorf("netns left: %s", out)
		}
		out, _ = exec.Command("ip", "-o", "link", "show").Output()
		if strings.Contains(string(out), "nsmC-") {
			t.Errorf("interface left in the root netns: %s", out)
		}
	})
	l := setupCNILab(t)
	a := netip.MustParseAddr

	t.Run("add-address-check-drift-del-twice", func(t *testing.T) {
		path := addNS(t, "nsmC-c1")
		list := l.list(t, "1.0.0", false, map[string]any{"servers": []string{"198.51.100.2"}})
		rt := rtConf("nsmC-c1", path)
		res, err := l.attach(t, list, rt)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		l.samePassThrough(t, "1.0.0")
		r, err := types100.GetResult(res)
		if err != nil || len(r.IPs) != 1 {
			t.Fatalf("result %v, %v", res, err)
		}
		ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
		if out, _ := exec.Command("ip", "-o", "link", "show", cniBridge).CombinedOutput(); !strings.Contains(string(out), "does not exist") {
			t.Fatalf("bridge %s in the root netns: %s", cniBridge, out)
		}

		rec := l.record(t, "nsmC-c1")
		if data, err := os.ReadFile(cni.RecordPath(l.state, "nsmC-c1", "eth0")); err == nil {
			t.Logf("record:\n%s", data)
		}
		if rec.ContainerID != "nsmC-c1" || rec.IfName != "eth0" || rec.Network != cniNet || rec.NetNSPath != path || rec.NetNS != inode(t, path) {
			t.Errorf("record context %+v; want container nsmC-c1, eth0, %s, %s inode %d", rec, cniNet, path, inode(t, path))
		}
		if len(rec.Servers) != 1 {
			t.Fatalf("record servers %+v", rec.Servers)
		}
		s := rec.Servers[0]
		if !s.Reachable || s.Server != "198.51.100.2:2049" || s.Address != a("198.51.100.2") || s.Route == nil ||
			s.Route.Iface != "eth0" || s.Route.Source != ip || s.Route.Gateway.IsValid() {
			t.Errorf("server record %+v route %v; want reachable via eth0 src %s", s, s.Route, ip)
		}

		if err := l.cni.CheckNetworkList(t.Context(), list, rt); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		// A new source address for the server's route.
		cmd(t, "ip", "-n", "nsmC-c1", "addr", "add", "198.51.100.250/24", "dev", "eth0")
		cmd(t, "ip", "-n", "nsmC-c1", "route", "add", "198.51.100.2/32", "dev", "eth0", "src", "198.51.100.250")
		err = l.cni.CheckNetworkList(t.Context(), list, rt)
		if te := cniErr(t, err); te.Code != 106 || !strings.Contains(te.Msg, "routes changed since ADD") ||
			!strings.Contains(te.Msg, "was 198.51.100.2 dev eth0 src "+ip.String()) || !strings.Contains(te.Msg, "now 198.51.100.2 dev eth0 src 198.51.100.250") {
			t.Fatalf("CHECK after a route change: %v; want code 106 naming the old and new route", err)
		}
		t.Logf("CHECK drift: %v", err)

		for i := range 2 {
			l.detach(t, list, rt)
			l.noRecord(t, "nsmC-c1")
			t.Logf("DEL %d ok", i+1)
		}
	})

	t.Run("add-name-prevresult-dns-del-empty-netns", func(t *testing.T) {
		path := addNS(t, "nsmC-c2")
		list := l.list(t, "1.0.0", true, map[string]any{"servers": []string{"nfs"}})
		rt := rtConf("nsmC-c2", path)
		if _, err := l.attach(t, list, rt); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		l.samePassThrough(t, "1.0.0")
		s := l.record(t, "nsmC-c2").Servers[0]
		if !s.Reachable || s.Resolution == nil || s.Resolution.Source != resolver.SourceDNS || s.Resolution.FQDN != "nfs.nsmc.test" ||
			s.Resolution.Server != netip.MustParseAddrPort("198.51.100.3:53") || s.Address != a("198.51.100.2") {
			t.Fatalf("server record %+v resolution %+v; want nfs.nsmc.test from 198.51.100.3:53, reachable", s, s.Resolution)
		}
		if err := l.cni.CheckNetworkList(t.Context(), list, rt); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		l.detach(t, list, rtConf("nsmC-c2", ""))
		l.noRecord(t, "nsmC-c2")
	})

	t.Run("add-name-config-dns-v040-del-after-netns-gone", func(t *testing.T) {
		path := addNS(t, "nsmC-c3")
		list := l.list(t, "0.4.0", false, map[string]any{
			"servers": []string{"nfs:2049"},
			"dns":     map[string]any{"nameservers": []string{"198.51.100.3"}, "search": []string{"nsmc.test"}},
		})
		rt := rtConf("nsmC-c3", path)
		if _, err := l.attach(t, list, rt); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		l.samePassThrough(t, "0.4.0")
		if s := l.record(t, "nsmC-c3").Servers[0]; !s.Reachable || s.Resolution == nil || s.Resolution.FQDN != "nfs.nsmc.test" {
			t.Fatalf("server record %+v; want nfs.nsmc.test reachable", s)
		}
		if err := l.cni.CheckNetworkList(t.Context(), list, rt); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		cmd(t, "ip", "netns", "del", "nsmC-c3")
		err := l.cni.CheckNetworkList(t.Context(), list, rt)
		t.Logf("CHECK with the netns gone: %v", err)
		if err == nil {
			t.Fatal("CHECK with the netns gone succeeded")
		}
		// The bridge's CHECK fails first above; nsmount-cni's own:
		conf := `{"cniVersion":"0.4.0","name":"nsmC-net","type":"nsmount-cni","servers":["nfs:2049"],"stateDir":"` + l.state + `",
			"dns":{"nameservers":["198.51.100.3"],"search":["nsmc.test"]}}`
		if te, status := l.runPlugin(t, "CHECK", "nsmC-c3", path, conf); status != 4 || te.Code != types.ErrInvalidNetNS || !strings.Contains(te.Msg, path) {
			t.Errorf("CHECK with the netns gone: exit %d, %+v; want exit 4, code 8 naming %s", status, te, path)
		}
		l.detach(t, list, rt)
		l.noRecord(t, "nsmC-c3")
	})

	t.Run("unreachable-not-required", func(t *testing.T) {
		path := addNS(t, "nsmC-c4")
		// Refused, no route, no such name, no answer (no host has
		// 198.51.100.77: ARP fails), and reachable.
		list := l.list(t, "1.0.0", true, map[string]any{"servers": []string{"198.51.100.2:2050", "203.0.113.5", "missing", "198.51.100.77", "198.51.100.2"}})
		rt := rtConf("nsmC-c4", path)
		start := time.Now()
		if _, err := l.attach(t, list, rt); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		took := time.Since(start)
		t.Logf("ADD with 4 unreachable servers, timeout 1s, took %v", took.Round(time.Millisecond))
		if took < time.Second || took > 3*time.Second {
			t.Errorf("ADD took %v; want the 1s probe timeout once (servers are checked concurrently)", took)
		}
		l.samePassThrough(t, "1.0.0")
		rec := l.record(t, "nsmC-c4")
		for i, want := range []string{"connection refused", "no route", "name not found", "no answer: timed out", ""} {
			s := rec.Servers[i]
			if s.Reachable != (want == "") || !strings.Contains(s.Error, want) {
				t.Errorf("server %s: reachable %v, error %q; want %q", s.Server, s.Reachable, s.Error, want)
			}
		}
		if rec.Servers[0].Route == nil || rec.Servers[1].Route != nil {
			t.Errorf("routes recorded: refused %v (want one), no-route %v (want none)", rec.Servers[0].Route, rec.Servers[1].Route)
		}
		if warn := l.stderr.String(); strings.Count(warn, "nsmount-cni: warning:") < 4 {
			t.Errorf("plugin stderr %q: want a warning per unreachable server", warn)
		}
		if err := l.cni.CheckNetworkList(t.Context(), list, rt); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		l.detach(t, list, rt)
		l.noRecord(t, "nsmC-c4")
	})

	t.Run("unreachable-required", func(t *testing.T) {
		path := addNS(t, "nsmC-c5")
		list := l.list(t, "1.0.0", false, map[string]any{"servers": []string{"198.51.100.2", "198.51.100.2:2050"}, "required": true})
		rt := rtConf("nsmC-c5", path)
		_, err := l.attach(t, list, rt)
		te := cniErr(t, err)
		if te.Code != 106 || !strings.Contains(te.Msg, "required server 198.51.100.2:2050") || !strings.Contains(te.Msg, "connection refused") {
			t.Fatalf("ADD: %v; want code 106, the server and the reason", err)
		}
		t.Logf("ADD: %v", err)
		l.noRecord(t, "nsmC-c5")
		l.detach(t, list, rt) // the runtime cleans up the failed ADD
	})

	t.Run("bad-config-via-libcni", func(t *testing.T) {
		path := addNS(t, "nsmC-c6")
		list := l.list(t, "1.0.0", false, map[string]any{"servers": []string{"198.51.100.2"}, "sever": "typo"})
		rt := rtConf("nsmC-c6", path)
		_, err := l.attach(t, list, rt)
		if te := cniErr(t, err); te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, `unknown field "sever"`) {
			t.Fatalf("ADD: %v; want code 7 naming the field", err)
		}
		// DEL still goes through, so the bridge's DEL runs too.
		l.detach(t, list, rt)
		if !strings.Contains(l.stderr.String(), "DEL with a bad configuration") {
			t.Errorf("no warning for DEL with a bad configuration: %q", l.stderr.String())
		}
	})

	t.Run("bad-config-direct", func(t *testing.T) {
		path := addNS(t, "nsmC-c7")
		const head = `{"cniVersion":"1.0.0","name":"nsmC-net","type":"nsmount-cni",`
		for _, tt := range []struct{ name, conf, msg string }{
			{"unknown-field", head + `"servers":["198.51.100.2"],"bogus":1}`, `unknown field "bogus"`},
			{"bad-server", head + `"servers":["nfs..test"]}`, `invalid server "nfs..test"`},
			{"bad-port", head + `"servers":["198.51.100.2:99999"]}`, `port "99999"`},
			{"no-prevresult", head + `"servers":["198.51.100.2"]}`, "chained plugin: no prevResult"},
			{"not-json", `{`, "unexpected end of JSON input"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				te, status := l.runPlugin(t, "ADD", "nsmC-c7", path, tt.conf)
				if status != 3 || (te.Code != types.ErrInvalidNetworkConfig && te.Code != types.ErrDecodingFailure) || !strings.Contains(te.Msg, tt.msg) {
					t.Errorf("exit status %d, error %+v; want 3, code 6 or 7, a message containing %q", status, te, tt.msg)
				}
			})
		}
		l.noRecord(t, "nsmC-c7")
	})

	t.Run("version", func(t *testing.T) {
		c := exec.Command(filepath.Join(l.bin, cniPluginName))
		c.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
		out, err := c.Output()
		if err != nil {
			t.Fatalf("VERSION: %v", err)
		}
		var v struct {
			Supported []string `json:"supportedVersions"`
		}
		want := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0"}
		if err := json.Unmarshal(out, &v); err != nil || !reflect.DeepEqual(v.Supported, want) {
			t.Fatalf("VERSION printed %s (%v); want %v", out, err, want)
		}
		info, err := l.cni.GetVersionInfo(t.Context(), cniPluginName)
		if err != nil || !reflect.DeepEqual(info.SupportedVersions(), want) {
			t.Fatalf("libcni GetVersionInfo: %v, %v", info, err)
		}
	})

	t.Run("nothing-left", func(t *testing.T) {
		entries, err := os.ReadDir(filepath.Join(l.state, "cni"))
		if err != nil || len(entries) != 0 {
			t.Errorf("state dir: %v, %v; want empty", entries, err)
		}
		leases, _ := os.ReadDir(filepath.Join(l.ipam, cniNet))
		for _, e := range leases {
			if e.Name() != "lock" && !strings.HasPrefix(e.Name(), "last_reserved_ip") {
				t.Errorf("host-local lease left: %s", e.Name())
			}
		}
		out, _ := exec.Command("ip", "-n", cniNode, "-o", "link", "show", "type", "veth").Output()
		if n := strings.Count(string(out), "\n"); n != 1 { // nsmC-s1 only
			t.Errorf("veths left in %s: %s", cniNode, out)
		}
		out, _ = exec.Command("ip", "netns", "list").Output()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "nsmC-c") {
				t.Errorf("container netns left: %s", line)
			}
		}
	})
}
