package resolver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nsmount/nsmount/routing"
	"github.com/nsmount/nsmount/routing/resolver"
)

// The interop lab: real DNS servers in one namespace, the resolvers (this
// package's and glibc's getaddrinfo, through getent) in another.
//
//	nsmD-c (client) ---------------- nsmD-s (DNS servers)
//	nsmD-cv 203.0.113.2/24           nsmD-sv 203.0.113.53/24: dnsmasq "one"
//	                                         203.0.113.54: dnsmasq "two"
//	                                         203.0.113.55: rcode server
//
// Only these two namespaces hold 203.0.113.0/24.
const interopClientNS, interopServerNS = "nsmD-c", "nsmD-s"

var (
	dnsmasqOne = netip.MustParseAddrPort("203.0.113.53:53")
	dnsmasqTwo = netip.MustParseAddrPort("203.0.113.54:53")
	rcodeSrv   = netip.MustParseAddrPort("203.0.113.55:53")
)

// dnsmasq "one" has no upstream server: it answers its --address names
// (REFUSED for the family it has no address of) and REFUSED for every other
// name (dnsmasq 2.90), except t.example.test, whose AAAA it forwards to a
// port nobody listens on, so that it never answers.
var dnsmasqOneArgs = []string{
	"--address=/nfs.example.test/198.51.100.10",
	"--address=/both.example.test/198.51.100.11",
	"--address=/both.example.test/2001:db8::11",
	"--address=/v6.example.test/2001:db8::12",
	"--address=/t.example.test/198.51.100.13",
	"--server=/t.example.test/127.0.0.1#5399",
	"--address=/gone.example.test/", // NXDOMAIN
}

// dnsmasq "two" knows nfs.example.test with both families, and
// only-two.example.test.
var dnsmasqTwoArgs = []string{
	"--address=/nfs.example.test/198.51.100.20",
	"--address=/nfs.example.test/2001:db8::20",
	"--address=/only-two.example.test/198.51.100.21",
}

// rcodeRules are the answers of the rcode server, for what dnsmasq cannot
// be made to answer: per name, the A and the AAAA answer, each an address,
// an RCODE name, "CNAME TARGET" (the CNAME alone), or "LAME" (NOERROR
// without records, AA or RA); names under a key starting with "*." match
// too. Unknown names get NXDOMAIN.
var rcodeRules = map[string][2]string{
	"sf.example.test":   {"SERVFAIL", "SERVFAIL"},
	"sf6.example.test":  {"198.51.100.14", "SERVFAIL"},
	"ni.example.test":   {"198.51.100.15", "NOTIMP"},
	"nfs.example.test":  {"198.51.100.10", "NOERROR"},
	"lame.example.test": {"LAME", "LAME"},
	"*.sf.test":         {"SERVFAIL", "SERVFAIL"},
	"*.cname.test":      {"CNAME nowhere.example.test", "CNAME nowhere.example.test"},
	"*.lame.test":       {"LAME", "LAME"},
}

// setupInterop builds the namespaces, starts the servers, and returns the
// client side; all is removed when the test ends.
func setupInterop(t *testing.T) routing.InNetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and mount namespaces")
	}
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Fatalf("dnsmasq not installed (testenv/install-deps.sh installs dnsmasq-base): %v", err)
	}
	addNetNS(t, interopClientNS)
	addNetNS(t, interopServerNS)
	for _, ns := range []string{interopClientNS, interopServerNS} {
		ip(t, "-n", ns, "link", "set", "lo", "up")
	}
	ip(t, "link", "add", "nsmD-cv", "netns", interopClientNS, "type", "veth", "peer", "name", "nsmD-sv", "netns", interopServerNS)
	ip(t, "-n", interopClientNS, "addr", "add", "203.0.113.2/24", "dev", "nsmD-cv")
	for _, s := range []netip.AddrPort{dnsmasqOne, dnsmasqTwo, rcodeSrv} {
		ip(t, "-n", interopServerNS, "addr", "add", s.Addr().String()+"/24", "dev", "nsmD-sv")
	}
	ip(t, "-n", interopClientNS, "link", "set", "nsmD-cv", "up")
	ip(t, "-n", interopServerNS, "link", "set", "nsmD-sv", "up")

	startDnsmasq(t, interopServerNS, dnsmasqOne.Addr(), dnsmasqOneArgs...)
	startDnsmasq(t, interopServerNS, dnsmasqTwo.Addr(), dnsmasqTwoArgs...)
	err := inNetNS(t, interopServerNS)(func() error {
		pc, err := net.ListenPacket("udp", rcodeSrv.String())
		if err != nil {
			return err
		}
		srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(serveRcodes)}
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
		return nil
	})
	if err != nil {
		t.Fatalf("starting the rcode server: %v", err)
	}
	client := inNetNS(t, interopClientNS)
	for _, s := range []netip.AddrPort{dnsmasqOne, dnsmasqTwo, rcodeSrv} {
		waitDNS(t, client, s)
	}
	return client
}

// startDnsmasq runs dnsmasq in the namespace ns, bound to addr only, with no
// upstream server, no hosts file, no cache and private pid and lease files;
// it is killed when the test ends, and its log is shown if the test failed.
func startDnsmasq(t *testing.T, ns string, addr netip.Addr, args ...string) {
	t.Helper()
	dir := t.TempDir()
	argv := append([]string{
		"--net=/run/netns/" + ns, "dnsmasq",
		"--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
		"--listen-address=" + addr.String(), "--bind-interfaces", "--except-interface=lo",
		"--pid-file=" + filepath.Join(dir, "pid"), "--dhcp-leasefile=" + filepath.Join(dir, "leases"),
		"--cache-size=0", "--user=root", "--group=root", "--log-queries", "--log-facility=-",
	}, args...)
	cmd := exec.Command("nsenter", argv...) // nsenter execs dnsmasq: one process
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("dnsmasq %s log:\n%s", addr, log.String())
		}
	})
}

// waitDNS waits until server answers a query from the client namespace.
func waitDNS(t *testing.T, in routing.InNetNS, server netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		in(func() error {
			m := new(dns.Msg)
			m.SetQuestion("ready.test.", dns.TypeA)
			_, _, err = (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(m, server.String())
			return nil
		})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("DNS server %s did not start: %v", server, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serveRcodes answers by rcodeRules.
func serveRcodes(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	q := req.Question[0]
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	rule, ok := rcodeRules[name]
	if !ok {
		if _, parent, cut := strings.Cut(name, "."); cut {
			rule, ok = rcodeRules["*."+parent]
		}
	}
	if !ok {
		m.Rcode = dns.RcodeNameError
		w.WriteMsg(m)
		return
	}
	v := rule[0]
	if q.Qtype == dns.TypeAAAA {
		v = rule[1]
	}
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 60}
	if target, ok := strings.CutPrefix(v, "CNAME "); ok {
		hdr.Rrtype = dns.TypeCNAME
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr, Target: dns.Fqdn(target)})
	} else if v == "LAME" {
		m.RecursionAvailable = false
	} else if a, err := netip.ParseAddr(v); err == nil {
		if q.Qtype == dns.TypeA && a.Is4() {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		} else if q.Qtype == dns.TypeAAAA && a.Is6() {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	} else {
		m.Rcode = dns.StringToRcode[v]
	}
	w.WriteMsg(m)
}

// getentAhosts resolves name with glibc's getaddrinfo (AF_UNSPEC) in the
// client namespace, with resolvConf as /etc/resolv.conf and "hosts: dns"
// as nsswitch.conf, both bind-mounted in a private mount namespace (the
// host's files are never touched). It returns the addresses, sorted, and
// whether getent found the name.
func getentAhosts(t *testing.T, resolvConf, name string) ([]netip.Addr, bool, time.Duration) {
	t.Helper()
	dir := t.TempDir()
	rc, nss := filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "nsswitch.conf")
	if err := os.WriteFile(rc, []byte(resolvConf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nss, []byte("hosts: dns\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+interopClientNS,
		"unshare", "--mount", "--propagation", "private", "sh", "-ec",
		`mount --bind "$1" /etc/resolv.conf; mount --bind "$2" /etc/nsswitch.conf; exec getent ahosts "$3"`,
		"sh", rc, nss, name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	took := time.Since(start)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 && len(out) == 0 && stderr.Len() == 0 {
		return nil, false, took // getent: key not found
	}
	if err != nil {
		t.Fatalf("getent ahosts %s: %v: %s", name, err, stderr.String())
	}
	var addrs []netip.Addr
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err != nil {
			t.Fatalf("getent ahosts %s: line %q", name, line)
		}
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return addrs, true, took
}

// TestResolveLikeGetaddrinfo resolves names against real dnsmasq (and the
// rcode server for answers dnsmasq cannot give) with this package and with
// glibc's getaddrinfo, and wants the same addresses from both.
func TestResolveLikeGetaddrinfo(t *testing.T) {
	client := setupInterop(t)
	a := netip.MustParseAddr
	conf := func(servers []netip.AddrPort, lines ...string) string {
		var b strings.Builder
		for _, s := range servers {
			fmt.Fprintf(&b, "nameserver %s\n", s.Addr())
		}
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
		return b.String()
	}
	one, two, rc := []netip.AddrPort{dnsmasqOne}, []netip.AddrPort{dnsmasqOne, dnsmasqTwo}, []netip.AddrPort{rcodeSrv}
	const fast = "options timeout:1 attempts:1"
	tests := []struct {
		name    string
		conf    string
		ask     string
		want    []netip.Addr // sorted; nil: not found
		wantErr error
	}{
		{name: "dnsmasq: A, AAAA REFUSED", conf: conf(one, fast), ask: "nfs.example.test", want: []netip.Addr{a("198.51.100.10")}},
		{name: "dnsmasq: AAAA, A REFUSED", conf: conf(one, fast), ask: "v6.example.test", want: []netip.Addr{a("2001:db8::12")}},
		{name: "dnsmasq: both families", conf: conf(one, fast), ask: "both.example.test", want: []netip.Addr{a("198.51.100.11"), a("2001:db8::11")}},
		{name: "dnsmasq: NXDOMAIN", conf: conf(one, fast), ask: "gone.example.test", wantErr: resolver.ErrNotFound},
		{name: "dnsmasq: REFUSED for both", conf: conf(one, fast), ask: "other.example.test", wantErr: resolver.ErrServerFailure},
		{name: "dnsmasq: A, AAAA never answered", conf: conf(one, fast), ask: "t.example.test", want: []netip.Addr{a("198.51.100.13")}},
		{name: "SERVFAIL for both", conf: conf(rc, fast), ask: "sf.example.test", wantErr: resolver.ErrServerFailure},
		{name: "A, AAAA SERVFAIL", conf: conf(rc, fast), ask: "sf6.example.test", want: []netip.Addr{a("198.51.100.14")}},
		{name: "A, AAAA NOTIMP", conf: conf(rc, fast), ask: "ni.example.test", want: []netip.Addr{a("198.51.100.15")}},
		{
			// The first nameserver refuses both: the second is asked.
			name: "two dnsmasqs: first REFUSED for both", conf: conf(two, fast), ask: "only-two.example.test",
			want: []netip.Addr{a("198.51.100.21")},
		},
		{
			// The first nameserver answered A: its answer stands, the
			// second is not asked for AAAA.
			name: "two dnsmasqs: first answers A, refuses AAAA", conf: conf(two, fast), ask: "nfs.example.test",
			want: []netip.Addr{a("198.51.100.10")},
		},
		{name: "dnsmasq: search list", conf: conf(one, fast, "search example.test"), ask: "nfs", want: []netip.Addr{a("198.51.100.10")}},
		{
			// REFUSED for nfs.a.test ends the search list; "nfs" as is
			// is REFUSED too. nfs.example.test is never asked.
			name: "dnsmasq: REFUSED ends the search list", conf: conf(one, fast, "search a.test example.test"), ask: "nfs",
			wantErr: resolver.ErrServerFailure,
		},
		{
			// SERVFAIL for nfs.sf.test: the search list goes on.
			name: "SERVFAIL continues the search list", conf: conf(rc, fast, "search sf.test example.test"), ask: "nfs",
			want: []netip.Addr{a("198.51.100.10")},
		},
		{
			// An answer with a CNAME and no address is the answer:
			// not found, nfs.example.test is never asked.
			name: "CNAME without address ends the search", conf: conf(rc, fast, "search cname.test example.test"), ask: "nfs",
			wantErr: resolver.ErrNotFound,
		},
		{name: "lame answers", conf: conf(rc, fast), ask: "lame.example.test", wantErr: resolver.ErrServerFailure},
		{
			// Lame answers for nfs.lame.test end the search list; "nfs"
			// as is: NXDOMAIN.
			name: "lame answers end the search list", conf: conf(rc, fast, "search lame.test example.test"), ask: "nfs",
			wantErr: resolver.ErrNotFound,
		},
		{
			name: "NXDOMAIN then REFUSED", conf: conf(one, fast, "search gone.example.test example.test"), ask: "x",
			wantErr: resolver.ErrServerFailure,
		},
	}
	var mu sync.Mutex
	var report []string
	t.Cleanup(func() { t.Logf("glibc getaddrinfo:\n%s", strings.Join(report, "\n")) })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			glibc, ok, took := getentAhosts(t, tt.conf, tt.ask)
			mu.Lock()
			report = append(report, fmt.Sprintf("  %-45s %-22s -> %v (found %v, %v)", tt.name, tt.ask, glibc, ok, took.Round(10*time.Millisecond)))
			mu.Unlock()
			if !slices.Equal(glibc, tt.want) || ok != (tt.want != nil) {
				t.Errorf("glibc getaddrinfo(%q) = %v (found %v), want %v: the expectation is wrong", tt.ask, glibc, ok, tt.want)
			}
			c, err := resolver.ParseResolvConf(strings.NewReader(tt.conf))
			if err != nil {
				t.Fatal(err)
			}
			res, err := (&resolver.Resolver{Conf: c, In: client}).Resolve(t.Context(), tt.ask)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve(%q) = %+v, %v; want %v", tt.ask, res, err, tt.wantErr)
				}
				t.Logf("Resolve(%q): %v", tt.ask, err)
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%q): %v", tt.ask, err)
			}
			got := slices.Clone(res.Addrs)
			slices.SortFunc(got, netip.Addr.Compare)
			if !slices.Equal(got, glibc) {
				t.Errorf("Resolve(%q) = %v, glibc's getaddrinfo %v", tt.ask, got, glibc)
			}
			for _, q := range res.Queries {
				t.Logf("  %s %s @%s %s: %s", q.Type, q.Name, q.Server, q.Transport, q.Result)
			}
		})
	}
}
