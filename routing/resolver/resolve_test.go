package resolver_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/routing"
	"github.com/nsmount/nsmount/routing/resolver"
	"github.com/nsmount/nsmount/testenv"
)

// The resolver lab: a "container" netns and a DNS server netns.
//
//	nsmt-d1 (client) ------------------ nsmt-d2 (DNS servers)
//	nsmt-dv1 192.0.2.2/24               nsmt-dv2 192.0.2.1/24: answers
//	         2001:db8::2/64                      2001:db8::1/64: answers
//	                                             192.0.2.3, .7: silent
//	                                             192.0.2.4: truncates UDP
//	                                             192.0.2.5: answers
//
// Only these two namespaces hold 192.0.2.0/24: an answer proves the query
// left from inside nsmt-d1.
const (
	dnsClientNS, dnsServerNS = "nsmt-d1", "nsmt-d2"
)

var (
	dnsGood    = netip.MustParseAddrPort("192.0.2.1:53")
	dnsGood2   = netip.MustParseAddrPort("192.0.2.5:53")
	dnsGood6   = netip.MustParseAddrPort("[2001:db8::1]:53")
	dnsSilent  = netip.MustParseAddrPort("192.0.2.3:53")
	dnsSilent2 = netip.MustParseAddrPort("192.0.2.7:53")
	dnsTrunc   = netip.MustParseAddrPort("192.0.2.4:53")
	dnsClosed  = netip.MustParseAddrPort("192.0.2.1:54") // nothing listens
)

// setupDNSLab builds the namespaces and starts the servers; everything is
// removed when the test ends.
func setupDNSLab(t *testing.T) routing.InNetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	addNetNS(t, dnsClientNS)
	addNetNS(t, dnsServerNS)
	for _, ns := range []string{dnsClientNS, dnsServerNS} {
		ip(t, "-n", ns, "link", "set", "lo", "up")
	}
	ip(t, "link", "add", "nsmt-dv1", "netns", dnsClientNS, "type", "veth", "peer", "name", "nsmt-dv2", "netns", dnsServerNS)
	ip(t, "-n", dnsClientNS, "addr", "add", "192.0.2.2/24", "dev", "nsmt-dv1")
	ip(t, "-n", dnsClientNS, "addr", "add", "2001:db8::2/64", "dev", "nsmt-dv1", "nodad")
	for _, a := range []string{"192.0.2.1/24", "192.0.2.3/24", "192.0.2.4/24", "192.0.2.5/24", "192.0.2.7/24"} {
		ip(t, "-n", dnsServerNS, "addr", "add", a, "dev", "nsmt-dv2")
	}
	ip(t, "-n", dnsServerNS, "addr", "add", "2001:db8::1/64", "dev", "nsmt-dv2", "nodad")
	ip(t, "-n", dnsClientNS, "link", "set", "nsmt-dv1", "up")
	ip(t, "-n", dnsServerNS, "link", "set", "nsmt-dv2", "up")

	a := netip.MustParseAddr
	records := map[string][]netip.Addr{
		"web.lab.test":    {a("192.0.2.10"), a("2001:db8::10")},
		"WEB.lab":         {a("192.0.2.99")}, // "web.lab" as is
		"v6only.lab.test": {a("2001:db8::6")},
		"multi.lab.test":  {a("192.0.2.11"), a("192.0.2.12")},
		"empty.lab.test":  {}, // exists, no address: NOERROR, 0 answers
		"empty.b.test":    {a("192.0.2.20")},
	}
	cnames := map[string]string{"www.lab.test": "web.lab.test", "alias.lab.test": "www.lab.test"}
	cfgs := []testenv.DNSConfig{
		{Listen: []string{dnsGood.String(), dnsGood2.String(), dnsGood6.String()}, Addrs: records, CNAMEs: cnames},
		{Listen: []string{dnsSilent.String(), dnsSilent2.String()}, Silent: true},
		{Listen: []string{dnsTrunc.String()}, Addrs: records, Truncate: true},
	}
	err := inNetNS(t, dnsServerNS)(func() error {
		for _, cfg := range cfgs {
			// The listening sockets are created here, in nsmt-d2.
			s, err := testenv.StartDNS(cfg)
			if err != nil {
				return err
			}
			t.Cleanup(func() { s.Close() })
		}
		return nil
	})
	if err != nil {
		t.Fatalf("starting DNS servers in %s: %v", dnsServerNS, err)
	}
	return inNetNS(t, dnsClientNS)
}

// conf is a resolv.conf for the tests: short timeouts.
func testConf(servers []netip.AddrPort, search ...string) *resolver.ResolvConf {
	return &resolver.ResolvConf{Nameservers: servers, Search: search, Ndots: 1, Timeout: 2 * time.Second, Attempts: 2}
}

// queryLog summarises Queries as "NAME TYPE SERVER TRANSPORT RESULT".
func queryLog(qs []resolver.Query) []string {
	var out []string
	for _, q := range qs {
		out = append(out, fmt.Sprintf("%s %s %s %s %s", q.Name, q.Type, q.Server, q.Transport, q.Result))
	}
	return out
}

func TestResolve(t *testing.T) {
	in := setupDNSLab(t)
	a := netip.MustParseAddr
	hosts, err := resolver.ParseHosts(strings.NewReader("192.0.2.30 files.lab.test files\n2001:db8::30 files\n"))
	if err != nil {
		t.Fatal(err)
	}
	good := []netip.AddrPort{dnsGood}
	tests := []struct {
		name       string
		conf       *resolver.ResolvConf
		ask        string
		wantSource string
		wantFQDN   string
		wantServer netip.AddrPort
		wantAddrs  []netip.Addr
		wantLog    []string // nil: not checked
	}{
		{
			name: "literal", conf: testConf(good), ask: "198.51.100.1",
			wantSource: "literal", wantFQDN: "198.51.100.1", wantAddrs: []netip.Addr{a("198.51.100.1")}, wantLog: []string{},
		},
		{
			name: "literal IPv6", conf: testConf(good), ask: "[2001:db8::5]",
			wantSource: "literal", wantFQDN: "[2001:db8::5]", wantAddrs: []netip.Addr{a("2001:db8::5")}, wantLog: []string{},
		},
		{
			name: "hosts first", conf: testConf(good, "lab.test"), ask: "FILES",
			wantSource: "hosts", wantFQDN: "FILES", wantAddrs: []netip.Addr{a("192.0.2.30"), a("2001:db8::30")}, wantLog: []string{},
		},
		{
			name: "absolute name", conf: testConf(good, "b.test"), ask: "web.lab.test.",
			wantSource: "dns", wantFQDN: "web.lab.test", wantServer: dnsGood,
			wantAddrs: []netip.Addr{a("192.0.2.10"), a("2001:db8::10")},
			wantLog: []string{
				"web.lab.test A 192.0.2.1:53 udp NOERROR 1 answers",
				"web.lab.test AAAA 192.0.2.1:53 udp NOERROR 1 answers",
			},
		},
		{
			name: "short name: search list, then as is", conf: testConf(good, "a.test", "lab.test"), ask: "web",
			wantSource: "dns", wantFQDN: "web.lab.test", wantServer: dnsGood,
			wantAddrs: []netip.Addr{a("192.0.2.10"), a("2001:db8::10")},
			wantLog: []string{
				"web.a.test A 192.0.2.1:53 udp NXDOMAIN",
				"web.a.test AAAA 192.0.2.1:53 udp NXDOMAIN",
				"web.lab.test A 192.0.2.1:53 udp NOERROR 1 answers",
				"web.lab.test AAAA 192.0.2.1:53 udp NOERROR 1 answers",
			},
		},
		{
			name: "dots >= ndots: as is first", conf: testConf(good, "test"), ask: "web.lab",
			wantSource: "dns", wantFQDN: "web.lab", wantServer: dnsGood,
			wantAddrs: []netip.Addr{a("192.0.2.99")},
			wantLog: []string{
				"web.lab A 192.0.2.1:53 udp NOERROR 1 answers",
				"web.lab AAAA 192.0.2.1:53 udp NOERROR 0 answers",
			},
		},
		{
			name: "dots < ndots: search list first",
			conf: func() *resolver.ResolvConf { c := testConf(good, "test"); c.Ndots = 2; return c }(),
			ask:  "web.lab", wantSource: "dns", wantFQDN: "web.lab.test", wantServer: dnsGood,
			wantAddrs: []netip.Addr{a("192.0.2.10"), a("2001:db8::10")},
			wantLog: []string{
				"web.lab.test A 192.0.2.1:53 udp NOERROR 1 answers",
				"web.lab.test AAAA 192.0.2.1:53 udp NOERROR 1 answers",
			},
		},
		{
			name: "no data moves to the next candidate", conf: testConf(good, "lab.test", "b.test"), ask: "empty",
			wantSource: "dns", wantFQDN: "empty.b.test", wantServer: dnsGood, wantAddrs: []netip.Addr{a("192.0.2.20")},
			wantLog: []string{
				"empty.lab.test A 192.0.2.1:53 udp NOERROR 0 answers",
				"empty.lab.test AAAA 192.0.2.1:53 udp NOERROR 0 answers",
				"empty.b.test A 192.0.2.1:53 udp NOERROR 1 answers",
				"empty.b.test AAAA 192.0.2.1:53 udp NOERROR 0 answers",
			},
		},
		{
			name: "case-insensitive", conf: testConf(good), ask: "Web.LAB.test",
			wantSource: "dns", wantFQDN: "Web.LAB.test", wantServer: dnsGood, wantAddrs: []netip.Addr{a("192.0.2.10"), a("2001:db8::10")},
		},
		{
			name: "AAAA only", conf: testConf(good, "lab.test"), ask: "v6only",
			wantSource: "dns", wantFQDN: "v6only.lab.test", wantServer: dnsGood, wantAddrs: []netip.Addr{a("2001:db8::6")},
		},
		{
			name: "several addresses", conf: testConf(good, "lab.test"), ask: "multi",
			wantSource: "dns", wantFQDN: "multi.lab.test", wantServer: dnsGood, wantAddrs: []netip.Addr{a("192.0.2.11"), a("192.0.2.12")},
		},
		{
			name: "CNAME chain", conf: testConf(good, "lab.test"), ask: "alias",
			wantSource: "dns", wantFQDN: "alias.lab.test", wantServer: dnsGood, wantAddrs: []netip.Addr{a("192.0.2.10"), a("2001:db8::10")},
			wantLog: []string{
				"alias.lab.test A 192.0.2.1:53 udp NOERROR 1 answers",
				"alias.lab.test AAAA 192.0.2.1:53 udp NOERROR 1 answers",
			},
		},
		{
			name: "truncated UDP answer asked again over TCP", conf: testConf([]netip.AddrPort{dnsTrunc}), ask: "web.lab.test",
			wantSource: "dns", wantFQDN: "web.lab.test", wantServer: dnsTrunc, wantAddrs: []netip.Addr{a("192.0.2.10"), a("2001:db8::10")},
			wantLog: []string{
				"web.lab.test A 192.0.2.4:53 udp truncated",
				"web.lab.test AAAA 192.0.2.4:53 udp truncated",
				"web.lab.test A 192.0.2.4:53 tcp NOERROR 1 answers",
				"web.lab.test AAAA 192.0.2.4:53 tcp NOERROR 1 answers",
			},
		},
		{
			name: "IPv6 nameserver", conf: testConf([]netip.AddrPort{dnsGood6}), ask: "web.lab.test",
			wantSource: "dns", wantFQDN: "web.lab.test", wantServer: dnsGood6, wantAddrs: []netip.Addr{a("192.0.2.10"), a("2001:db8::10")},
		},
		{
			name: "first nameserver silent",
			conf: &resolver.ResolvConf{Nameservers: []netip.AddrPort{dnsSilent, dnsGood}, Ndots: 1, Timeout: time.Second, Attempts: 1},
			ask:  "web.lab.test", wantSource: "dns", wantFQDN: "web.lab.test", wantServer: dnsGood,
			wantAddrs: []netip.Addr{a("192.0.2.10"), a("2001:db8::10")},
			wantLog: []string{
				"web.lab.test A 192.0.2.3:53 udp timeout",
				"web.lab.test AAAA 192.0.2.3:53 udp timeout",
				"web.lab.test A 192.0.2.1:53 udp NOERROR 1 answers",
				"web.lab.test AAAA 192.0.2.1:53 udp NOERROR 1 answers",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &resolver.Resolver{Conf: tt.conf, Hosts: hosts, In: in}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			got, err := r.Resolve(ctx, tt.ask)
			if err != nil {
				t.Fatalf("Resolve(%q): %v", tt.ask, err)
			}
			if got.Name != tt.ask || got.Source != tt.wantSource || got.FQDN != tt.wantFQDN || got.Server != tt.wantServer {
				t.Errorf("Resolve(%q) = name %q source %q fqdn %q server %v; want %q %q %q %v",
					tt.ask, got.Name, got.Source, got.FQDN, got.Server, tt.ask, tt.wantSource, tt.wantFQDN, tt.wantServer)
			}
			if !reflect.DeepEqual(got.Addrs, tt.wantAddrs) {
				t.Errorf("Resolve(%q) addrs %v, want %v", tt.ask, got.Addrs, tt.wantAddrs)
			}
			log := queryLog(got.Queries)
			if tt.wantLog != nil && !reflect.DeepEqual(log, tt.wantLog) && !(len(log) == 0 && len(tt.wantLog) == 0) {
				t.Errorf("Resolve(%q) queries:\n  %s\nwant:\n  %s", tt.ask, strings.Join(log, "\n  "), strings.Join(tt.wantLog, "\n  "))
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	in := setupDNSLab(t)
	tests := []struct {
		name    string
		conf    *resolver.ResolvConf
		ask     string
		wantErr error
		wantMsg string
		bound   time.Duration // generous upper bound for the call
	}{
		{
			name: "NXDOMAIN everywhere", conf: testConf([]netip.AddrPort{dnsGood}, "a.test", "lab.test"), ask: "nope",
			wantErr: resolver.ErrNotFound,
			wantMsg: `resolve "nope": name not found (asked 192.0.2.1:53 for nope.a.test, nope.lab.test, nope)`,
			bound:   10 * time.Second,
		},
		{
			name: "all nameservers silent",
			conf: &resolver.ResolvConf{Nameservers: []netip.AddrPort{dnsSilent, dnsSilent2}, Search: []string{"lab.test"}, Ndots: 1, Timeout: time.Second, Attempts: 2},
			ask:  "web", wantErr: routing.ErrTimeout,
			wantMsg: `resolve "web": no answer from 192.0.2.3:53, 192.0.2.7:53 within 2 attempts of 1s: timed out`,
			// 4 tries of 1s (A and AAAA together) for web.lab.test, which
			// ends the search list, and 4 for "web" as is.
			bound: 12 * time.Second,
		},
		{
			name: "port closed",
			conf: &resolver.ResolvConf{Nameservers: []netip.AddrPort{dnsClosed}, Ndots: 1, Timeout: time.Second, Attempts: 1},
			ask:  "web.lab.test", wantErr: routing.ErrRefused,
			wantMsg: `resolve "web.lab.test": no answer from 192.0.2.1:54 within 1 attempt: connection refused`,
			bound:   10 * time.Second,
		},
		{
			name: "no route", conf: testConf([]netip.AddrPort{netip.MustParseAddrPort("203.0.113.53:53")}), ask: "web.lab.test.",
			wantErr: routing.ErrNoRoute, bound: 10 * time.Second,
		},
		{
			name: "invalid name", conf: testConf([]netip.AddrPort{dnsGood}), ask: "a..b",
			wantErr: resolver.ErrNotFound, bound: 10 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &resolver.Resolver{Conf: tt.conf, In: in}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			start := time.Now()
			got, err := r.Resolve(ctx, tt.ask)
			if d := time.Since(start); d > tt.bound {
				t.Errorf("Resolve(%q) took %v, more than %v", tt.ask, d, tt.bound)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Resolve(%q) = %+v, %v; want %v", tt.ask, got, err, tt.wantErr)
			}
			if tt.wantMsg != "" && err.Error() != tt.wantMsg {
				t.Errorf("error\n %q\nwant\n %q", err, tt.wantMsg)
			}
			t.Logf("error: %v", err)
		})
	}
}

func TestResolveContext(t *testing.T) {
	in := setupDNSLab(t)
	r := &resolver.Resolver{
		Conf: &resolver.ResolvConf{Nameservers: []netip.AddrPort{dnsSilent}, Ndots: 1, Timeout: 30 * time.Second, Attempts: 5},
		In:   in,
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.Resolve(ctx, "web.lab.test")
	if !errors.Is(err, routing.ErrTimeout) {
		t.Fatalf("Resolve with a 300ms context = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Resolve ignored its context: took %v", d)
	}

	ctx, cancel = context.WithCancel(t.Context())
	time.AfterFunc(300*time.Millisecond, cancel)
	start = time.Now()
	_, err = r.Resolve(ctx, "web.lab.test")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Resolve with a cancelled context = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Resolve ignored cancellation: took %v", d)
	}
}

func TestResolveRotate(t *testing.T) {
	in := setupDNSLab(t)
	conf := testConf([]netip.AddrPort{dnsGood, dnsGood2})
	for _, rotate := range []bool{false, true} {
		conf.Rotate = rotate
		r := &resolver.Resolver{Conf: conf, In: in}
		var firsts []netip.AddrPort
		for range 4 {
			res, err := r.Resolve(t.Context(), "web.lab.test")
			if err != nil {
				t.Fatal(err)
			}
			firsts = append(firsts, res.Queries[0].Server, res.Queries[1].Server)
		}
		want := []netip.AddrPort{dnsGood, dnsGood, dnsGood, dnsGood, dnsGood, dnsGood, dnsGood, dnsGood}
		if rotate {
			want = []netip.AddrPort{dnsGood, dnsGood, dnsGood2, dnsGood2, dnsGood, dnsGood, dnsGood2, dnsGood2}
		}
		if !reflect.DeepEqual(firsts, want) {
			t.Errorf("rotate %v: servers of A and AAAA per resolution %v, want %v", rotate, firsts, want)
		}
	}
}

func TestResolveNoNamespace(t *testing.T) {
	// Neither hosts nor literal: without In, nothing is sent anywhere.
	r := &resolver.Resolver{Conf: testConf([]netip.AddrPort{dnsGood})}
	if _, err := r.Resolve(t.Context(), "web.lab.test"); err == nil {
		t.Fatal("Resolve without In succeeded")
	}
	res, err := r.Resolve(t.Context(), "192.0.2.1")
	if err != nil || res.Source != resolver.SourceLiteral {
		t.Fatalf("literal without In: %+v, %v", res, err)
	}
}
