package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// DNSConfig configures a test DNS server (StartDNS, ServeDNS, and
// `nsmount-lab dns` in the lab guest).
type DNSConfig struct {
	// Listen are the "ADDR:PORT" addresses to serve on, UDP and TCP each
	// (TCP only with TCPOnly).
	Listen []string
	// Addrs maps names to their A and AAAA records. Names are
	// case-insensitive; a trailing dot is optional.
	Addrs map[string][]netip.Addr
	// CNAMEs maps names to the name they are an alias of. The answer
	// holds the chain and the target's records, as a recursive server's
	// would.
	CNAMEs map[string]string
	// TCPOnly: no UDP socket (UDP queries get ICMP port unreachable).
	TCPOnly bool
	// Truncate: every UDP answer has TC set and no records, so clients
	// must ask again over TCP.
	Truncate bool
	// Silent: queries are read and never answered.
	Silent bool
	// Log receives one line per query (default: discarded).
	Log io.Writer
}

// DNSServer is a running test DNS server. It answers A and AAAA queries
// for its names (NOERROR with no records for other types of a known name)
// and NXDOMAIN for every other name.
type DNSServer struct {
	cfg     DNSConfig
	addrs   map[string][]netip.Addr
	cnames  map[string]string
	servers []*dns.Server
	wg      sync.WaitGroup
	logMu   sync.Mutex
	once    sync.Once
}

// StartDNS opens the listening sockets on the calling thread, so in its
// network namespace (call it inside a function run in a namespace to serve
// there), and serves in the background until Close.
func StartDNS(cfg DNSConfig) (_ *DNSServer, retErr error) {
	if len(cfg.Listen) == 0 {
		return nil, errors.New("dns server: no listen address")
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	s := &DNSServer{cfg: cfg, addrs: map[string][]netip.Addr{}, cnames: map[string]string{}}
	for name, addrs := range cfg.Addrs {
		k := dnsKey(name)
		s.addrs[k] = append(s.addrs[k], addrs...)
	}
	for name, target := range cfg.CNAMEs {
		s.cnames[dnsKey(name)] = dnsKey(target)
	}
	var closers []io.Closer
	defer func() {
		if retErr != nil {
			for _, c := range closers {
				c.Close()
			}
		}
	}()
	for _, addr := range cfg.Listen {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("dns server: listening on tcp %s: %w", addr, err)
		}
		closers = append(closers, l)
		s.servers = append(s.servers, &dns.Server{Listener: l, Handler: dns.HandlerFunc(s.serve)})
		if cfg.TCPOnly {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("dns server: listening on udp %s: %w", addr, err)
		}
		closers = append(closers, pc)
		s.servers = append(s.servers, &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve), UDPSize: 4096})
	}
	// Each server signals once started and again when it ends, so a server
	// that fails to start does not leave StartDNS waiting.
	started := make(chan struct{}, 2*len(s.servers))
	for _, srv := range s.servers {
		srv.NotifyStartedFunc = func() { started <- struct{}{} }
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.ActivateAndServe(); err != nil {
				s.logf("serving: %v", err)
			}
			started <- struct{}{}
		}()
	}
	for range s.servers {
		<-started
	}
	return s, nil
}

// ServeDNS serves cfg until ctx is done. ready, if not nil, is called once
// the sockets are open.
func ServeDNS(ctx context.Context, cfg DNSConfig, ready func()) error {
	s, err := StartDNS(cfg)
	if err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	return s.Close()
}

// Close stops the server and waits for its goroutines.
func (s *DNSServer) Close() error {
	s.once.Do(func() {
		for _, srv := range s.servers {
			srv.Shutdown()
		}
		s.wg.Wait()
	})
	return nil
}

// serve answers one query.
func (s *DNSServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	transport := w.RemoteAddr().Network()
	if len(req.Question) != 1 {
		s.logf("%s %s: %d questions: FORMERR", transport, w.RemoteAddr(), len(req.Question))
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	if s.cfg.Silent {
		s.logf("%s %s: %s %s: silent", transport, w.RemoteAddr(), dns.TypeToString[q.Qtype], q.Name)
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(4096, false)
	}
	owner := dnsKey(q.Name)
	known := false
	for range 16 {
		target, ok := s.cnames[owner]
		if !ok {
			break
		}
		known = true
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: dns.Fqdn(owner), Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: dns.Fqdn(target)})
		owner = target
	}
	addrs, ok := s.addrs[owner]
	known = known || ok
	for _, a := range addrs {
		hdr := dns.RR_Header{Name: dns.Fqdn(owner), Class: dns.ClassINET, Ttl: 60}
		switch {
		case q.Qtype == dns.TypeA && a.Is4():
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case q.Qtype == dns.TypeAAAA && a.Is6() && !a.Is4In6():
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	if !known {
		m.Rcode = dns.RcodeNameError
	}
	if s.cfg.Truncate && transport == "udp" {
		m.Truncated = true
		m.Answer = nil
	}
	s.logf("%s %s: %s %s: %s, %d answers%s", transport, w.RemoteAddr(), dns.TypeToString[q.Qtype], q.Name,
		dns.RcodeToString[m.Rcode], len(m.Answer), map[bool]string{true: ", truncated"}[m.Truncated])
	w.WriteMsg(m)
}

func (s *DNSServer) logf(format string, args ...any) {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	fmt.Fprintf(s.cfg.Log, "dns: "+format+"\n", args...)
}

// dnsKey is the map key of a name: lower case, no trailing dot.
func dnsKey(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// ParseDNSRecords parses NAME=IP and NAME=TARGET arguments (a value that
// is not an IP address makes NAME a CNAME of TARGET) into cfg. A name may
// be given several times for several addresses.
func ParseDNSRecords(cfg *DNSConfig, args []string) error {
	for _, arg := range args {
		name, val, ok := strings.Cut(arg, "=")
		if !ok || name == "" || val == "" {
			return fmt.Errorf("record %q: want NAME=IP or NAME=TARGET", arg)
		}
		if _, ok := dns.IsDomainName(name); !ok {
			return fmt.Errorf("record %q: invalid name", arg)
		}
		if a, err := netip.ParseAddr(val); err == nil {
			if cfg.Addrs == nil {
				cfg.Addrs = map[string][]netip.Addr{}
			}
			cfg.Addrs[dnsKey(name)] = append(cfg.Addrs[dnsKey(name)], a.Unmap())
			continue
		}
		if _, ok := dns.IsDomainName(val); !ok {
			return fmt.Errorf("record %q: %q is neither an IP address nor a name", arg, val)
		}
		if cfg.CNAMEs == nil {
			cfg.CNAMEs = map[string]string{}
		}
		if old, ok := cfg.CNAMEs[dnsKey(name)]; ok && old != dnsKey(val) {
			return fmt.Errorf("record %q: %s is already an alias of %s", arg, name, old)
		}
		cfg.CNAMEs[dnsKey(name)] = dnsKey(val)
	}
	return nil
}
