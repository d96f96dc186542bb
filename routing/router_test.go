package routing_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/routing"
)

// The lab: three network namespaces, no packet ever leaves them.
//
//	nsmt-hr2 ---------------- nsmt-hr1 ---------------- nsmt-hr3
//	nsmt-hv2 192.0.2.1/24     nsmt-hv1 192.0.2.2/24
//	         2001:db8::1/64            2001:db8::2/64
//	                          nsmt-hv3 203.0.113.2/24   nsmt-hv4 203.0.113.1/24
//
// In nsmt-hr1, 198.51.100.0/24 is policy-routed (table 100) via 203.0.113.1,
// 198.51.100.99/98/97 are blackhole/prohibit/unreachable in that table,
// 2001:db8:dead::/48 is an IPv6 blackhole, and 192.0.2.77 has a permanent
// neighbour entry with a MAC nobody owns, so SYNs to it are never answered.
const (
	ns1, ns2, ns3 = "nsmt-hr1", "nsmt-hr2", "nsmt-hr3"
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// addNetNS creates a named network namespace and deletes it when the test
// ends.
func addNetNS(t *testing.T, name string) {
	t.Helper()
	// A namespace left by a killed earlier run would make "add" fail.
	exec.Command("ip", "netns", "del", name).Run()
	ip(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
}

func setupLab(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	for _, ns := range []string{ns1, ns2, ns3} {
		addNetNS(t, ns)
		ip(t, "-n", ns, "link", "set", "lo", "up")
	}
	// Both ends are created directly inside their namespaces; deleting the
	// namespaces deletes the veths.
	ip(t, "link", "add", "nsmt-hv1", "netns", ns1, "type", "veth", "peer", "name", "nsmt-hv2", "netns", ns2)
	ip(t, "link", "add", "nsmt-hv3", "netns", ns1, "type", "veth", "peer", "name", "nsmt-hv4", "netns", ns3)

	ip(t, "-n", ns1, "addr", "add", "192.0.2.2/24", "dev", "nsmt-hv1")
	ip(t, "-n", ns1, "addr", "add", "2001:db8::2/64", "dev", "nsmt-hv1", "nodad")
	ip(t, "-n", ns1, "addr", "add", "203.0.113.2/24", "dev", "nsmt-hv3")
	ip(t, "-n", ns2, "addr", "add", "192.0.2.1/24", "dev", "nsmt-hv2")
	ip(t, "-n", ns2, "addr", "add", "2001:db8::1/64", "dev", "nsmt-hv2", "nodad")
	ip(t, "-n", ns3, "addr", "add", "203.0.113.1/24", "dev", "nsmt-hv4")
	ip(t, "-n", ns1, "link", "set", "nsmt-hv1", "up")
	ip(t, "-n", ns1, "link", "set", "nsmt-hv3", "up")
	ip(t, "-n", ns2, "link", "set", "nsmt-hv2", "up")
	ip(t, "-n", ns3, "link", "set", "nsmt-hv4", "up")

	ip(t, "-n", ns1, "rule", "add", "to", "198.51.100.0/24", "table", "100")
	ip(t, "-n", ns1, "route", "add", "198.51.100.0/24", "via", "203.0.113.1", "table", "100")
	// In table 100: the rule above sends 198.51.100.0/24 there before main.
	ip(t, "-n", ns1, "route", "add", "blackhole", "198.51.100.99/32", "table", "100")
	ip(t, "-n", ns1, "route", "add", "prohibit", "198.51.100.98/32", "table", "100")
	ip(t, "-n", ns1, "route", "add", "unreachable", "198.51.100.97/32", "table", "100")
	ip(t, "-n", ns1, "-6", "route", "add", "blackhole", "2001:db8:dead::/48")
	ip(t, "-n", ns1, "neigh", "add", "192.0.2.77", "lladdr", "02:00:00:00:00:77", "dev", "nsmt-hv1", "nud", "permanent")
}

// inNetNS returns a routing.InNetNS for the named namespace. Like
// nsmount.Target.Do, it runs fn on a fresh goroutine whose OS thread is
// locked and never unlocked, so the thread dies with the goroutine instead of
// going back to the pool inside the namespace; never on the main thread,
// which the runtime cannot end.
func inNetNS(t *testing.T, name string) routing.InNetNS {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	var run func(fn func() error, errc chan<- error)
	run = func(fn func() error, errc chan<- error) {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// A goroutine exiting locked to the main thread wedges it
			// instead of ending it: hold the main thread so that a new
			// goroutine runs elsewhere, and give it back unchanged.
			done := make(chan struct{})
			go func() {
				defer close(done)
				run(fn, errc)
			}()
			<-done
			runtime.UnlockOSThread()
			return
		}
		// Deliberately no UnlockOSThread.
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}
	return func(fn func() error) error {
		errc := make(chan error, 1)
		go run(fn, errc)
		return <-errc
	}
}

func newRouter(t *testing.T, name string) *routing.Router {
	t.Helper()
	r, err := routing.NewRouter(inNetNS(t, name))
	if err != nil {
		t.Fatalf("NewRouter(%s): %v", name, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// listen starts a TCP listener inside the named namespace that accepts and
// closes connections until the test ends.
func listen(t *testing.T, name, addr string) {
	t.Helper()
	var l net.Listener
	err := inNetNS(t, name)(func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
}

func TestLookup(t *testing.T) {
	setupLab(t)
	routers := map[string]*routing.Router{ns1: newRouter(t, ns1), ns2: newRouter(t, ns2)}
	a := netip.MustParseAddr
	tests := []struct {
		name    string
		ns      string
		dst     string
		want    routing.Route
		wantErr error
	}{
		{
			name: "connected", ns: ns1, dst: "192.0.2.1",
			want: routing.Route{Iface: "nsmt-hv1", Source: a("192.0.2.2"), Table: 254},
		},
		{
			name: "connected via unanswered neighbour", ns: ns1, dst: "192.0.2.77",
			want: routing.Route{Iface: "nsmt-hv1", Source: a("192.0.2.2"), Table: 254},
		},
		{
			name: "policy rule to table 100", ns: ns1, dst: "198.51.100.7",
			want: routing.Route{Iface: "nsmt-hv3", Gateway: a("203.0.113.1"), Source: a("203.0.113.2"), Table: 100},
		},
		{
			name: "second link on-link", ns: ns1, dst: "203.0.113.99",
			want: routing.Route{Iface: "nsmt-hv3", Source: a("203.0.113.2"), Table: 254},
		},
		{
			name: "IPv6 connected", ns: ns1, dst: "2001:db8::1",
			want: routing.Route{Iface: "nsmt-hv1", Source: a("2001:db8::2"), Table: 254},
		},
		{
			name: "peer side", ns: ns2, dst: "192.0.2.2",
			want: routing.Route{Iface: "nsmt-hv2", Source: a("192.0.2.1"), Table: 254},
		},
		{name: "blackhole", ns: ns1, dst: "198.51.100.99", wantErr: routing.ErrNoRoute},
		{name: "prohibit", ns: ns1, dst: "198.51.100.98", wantErr: routing.ErrNoRoute},
		{name: "unreachable", ns: ns1, dst: "198.51.100.97", wantErr: routing.ErrNoRoute},
		{name: "IPv6 blackhole", ns: ns1, dst: "2001:db8:dead::1", wantErr: routing.ErrNoRoute},
		{name: "no route", ns: ns2, dst: "203.0.113.1", wantErr: routing.ErrNoRoute},
		{name: "rule is per namespace", ns: ns2, dst: "198.51.100.7", wantErr: routing.ErrNoRoute},
		{name: "no IPv6 route", ns: ns2, dst: "2001:db8:ffff::1", wantErr: routing.ErrNoRoute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := a(tt.dst)
			got, err := routers[tt.ns].Lookup(dst)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Lookup(%s) in %s = %+v, %v; want %v", dst, tt.ns, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Lookup(%s) in %s: %v", dst, tt.ns, err)
			}
			tt.want.Dst = dst
			if got != tt.want {
				t.Errorf("Lookup(%s) in %s = %+v, want %+v", dst, tt.ns, got, tt.want)
			}
		})
	}
}

func TestRouteString(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		r    routing.Route
		want string
	}{
		{routing.Route{Dst: a("192.0.2.1"), Iface: "eth0", Source: a("192.0.2.2")}, "192.0.2.1 dev eth0 src 192.0.2.2"},
		{routing.Route{Dst: a("198.51.100.7"), Iface: "eth1", Gateway: a("203.0.113.1"), Source: a("203.0.113.2")}, "198.51.100.7 via 203.0.113.1 dev eth1 src 203.0.113.2"},
		{routing.Route{Dst: a("2001:db8::1"), Iface: "eth0", Source: a("2001:db8::2")}, "2001:db8::1 dev eth0 src 2001:db8::2"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestProbe(t *testing.T) {
	setupLab(t)
	listen(t, ns2, "192.0.2.1:2049")
	listen(t, ns2, "[2001:db8::1]:2049")
	r1, r2 := newRouter(t, ns1), newRouter(t, ns2)
	ap := netip.MustParseAddrPort

	tests := []struct {
		name    string
		r       *routing.Router
		dst     string
		timeout time.Duration
		wantErr error // nil: must connect
	}{
		{name: "listening", r: r1, dst: "192.0.2.1:2049", timeout: 5 * time.Second},
		{name: "listening IPv6", r: r1, dst: "[2001:db8::1]:2049", timeout: 5 * time.Second},
		{name: "refused", r: r1, dst: "192.0.2.1:2050", timeout: 5 * time.Second, wantErr: routing.ErrRefused},
		{name: "refused IPv6", r: r1, dst: "[2001:db8::1]:2050", timeout: 5 * time.Second, wantErr: routing.ErrRefused},
		{name: "no route", r: r2, dst: "203.0.113.1:2049", timeout: 5 * time.Second, wantErr: routing.ErrNoRoute},
		{name: "no route IPv6", r: r2, dst: "[2001:db8:ffff::1]:2049", timeout: 5 * time.Second, wantErr: routing.ErrNoRoute},
		{name: "unanswered", r: r1, dst: "192.0.2.77:2049", timeout: 300 * time.Millisecond, wantErr: routing.ErrTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := tt.r.Probe(context.Background(), ap(tt.dst), tt.timeout)
			elapsed := time.Since(start)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Probe(%s): %v", tt.dst, err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Probe(%s) = %v, want %v", tt.dst, err, tt.wantErr)
			}
			if elapsed > tt.timeout+time.Second {
				t.Errorf("Probe(%s) took %v with timeout %v", tt.dst, elapsed, tt.timeout)
			}
			if tt.wantErr == routing.ErrTimeout && elapsed < tt.timeout-50*time.Millisecond {
				t.Errorf("Probe(%s) timed out after %v, before its timeout %v", tt.dst, elapsed, tt.timeout)
			}
		})
	}
}

func TestProbeContextCancelled(t *testing.T) {
	setupLab(t)
	r := newRouter(t, ns1)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := r.Probe(ctx, netip.MustParseAddrPort("192.0.2.77:2049"), time.Minute)
	if !errors.Is(err, routing.ErrTimeout) {
		t.Fatalf("Probe with a 200ms context = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Probe ignored its context: took %v", d)
	}
}

func TestNewRouterError(t *testing.T) {
	want := errors.New("nsmt-enter-failed")
	r, err := routing.NewRouter(func(func() error) error { return want })
	if !errors.Is(err, want) {
		t.Fatalf("NewRouter = %v, %v; want an error wrapping %v", r, err, want)
	}
}

func TestRouterCloseTwice(t *testing.T) {
	setupLab(t)
	r, err := routing.NewRouter(inNetNS(t, ns1))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestNFSNullInNetNS(t *testing.T) {
	setupLab(t)
	listen(t, ns2, "192.0.2.1:2049") // accepts and closes: not an NFS server
	r1, r2 := newRouter(t, ns1), newRouter(t, ns2)
	ap := netip.MustParseAddrPort
	tests := []struct {
		name    string
		r       *routing.Router
		dst     string
		wantErr error // nil: any error but these three
	}{
		{name: "refused", r: r1, dst: "192.0.2.1:2050", wantErr: routing.ErrRefused},
		{name: "no route", r: r2, dst: "203.0.113.1:2049", wantErr: routing.ErrNoRoute},
		{name: "unanswered", r: r1, dst: "192.0.2.77:2049", wantErr: routing.ErrTimeout},
		{name: "not an NFS server", r: r1, dst: "192.0.2.1:2049"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := tt.r.NFSNull(context.Background(), ap(tt.dst), 4, 300*time.Millisecond)
			if err == nil {
				t.Fatalf("NFSNull(%s) answered", tt.dst)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("NFSNull(%s) = %v, want %v", tt.dst, err, tt.wantErr)
			}
			if tt.wantErr == nil && (errors.Is(err, routing.ErrRefused) || errors.Is(err, routing.ErrNoRoute) || errors.Is(err, routing.ErrTimeout)) {
				t.Fatalf("NFSNull(%s) = %v, want a failed exchange", tt.dst, err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("NFSNull(%s) took %v with a 300ms timeout", tt.dst, d)
			}
		})
	}
}
