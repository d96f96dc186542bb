// Package resolver resolves a host name the way the container's own
// getaddrinfo would: from the container's /etc/hosts and /etc/resolv.conf
// (read safely through its root, parsed with glibc's rules) and with DNS
// queries sent from inside its network namespace, never through Go's
// process-wide resolver or the host's files.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/nsmount/nsmount/routing"
)

// Resolution errors. Resolve's errors wrap ErrNotFound, ErrServerFailure,
// or, when no nameserver answered at all, routing.ErrTimeout (or routing.ErrRefused /
// routing.ErrNoRoute when every try failed that way).
var (
	// ErrNotFound: no source knows the name (NXDOMAIN or no address for
	// every candidate name).
	ErrNotFound = errors.New("name not found")
	// ErrServerFailure: the nameservers answered, but only with
	// SERVFAIL, REFUSED or another error code.
	ErrServerFailure = errors.New("server failure")
)

// Sources of a Resolution.
const (
	SourceLiteral = "literal" // the name is an IP address
	SourceHosts   = "hosts"   // the container's /etc/hosts
	SourceDNS     = "dns"     // the container's nameservers
)

// maxCNAMEs bounds the CNAME chain followed inside one response.
const maxCNAMEs = 16

// Resolver resolves host names as a container would: its files, its
// nameservers, queried from inside its netns.
//
// Resolve never uses Go's process-wide resolver (which caches the host's
// files): /etc/hosts is Hosts, the DNS client is its own, and every query
// socket is created by In, so inside the container's network namespace,
// and reaches the nameservers the container would reach.
//
// A Resolver is safe for concurrent use. Do not copy it after first use.
type Resolver struct {
	// Conf is the container's resolv.conf; nil means DefaultResolvConf.
	Conf *ResolvConf
	// Hosts is the container's /etc/hosts; nil means empty.
	Hosts *Hosts
	// In runs a function inside the container's network namespace; query
	// sockets are created there.
	In routing.InNetNS

	next atomic.Uint32 // rotate: where the next resolution starts
}

// Resolution says how a name was resolved.
type Resolution struct {
	// Name is the name as asked.
	Name string `json:"name"`
	// FQDN is the name that answered (a search-list candidate, without
	// the trailing dot); for hosts and literals, Name.
	FQDN string `json:"fqdn"`
	// Source is SourceLiteral, SourceHosts or SourceDNS.
	Source string `json:"source"`
	// Server is the nameserver that answered (Source "dns").
	Server netip.AddrPort `json:"server,omitzero"`
	// Addrs are the addresses, IPv4 ones first, in answer order.
	Addrs []netip.Addr `json:"addrs"`
	// Queries are the DNS queries made, in order, successful or not.
	Queries []Query `json:"queries,omitempty"`
}

// Query is one DNS query sent to one nameserver.
type Query struct {
	// Name is the name asked, without the trailing dot.
	Name string `json:"name"`
	// Type is "A" or "AAAA".
	Type string `json:"type"`
	// Server is the nameserver asked.
	Server netip.AddrPort `json:"server"`
	// Transport is "udp" or "tcp".
	Transport string `json:"transport"`
	// Result is "NOERROR 2 answers", "NXDOMAIN", "SERVFAIL", "REFUSED",
	// "truncated", "timeout", or the network error.
	Result string `json:"result"`
	// RTT is how long the query took.
	RTT time.Duration `json:"rtt"`
}

// Resolve resolves name like glibc's getaddrinfo would in the container
// (hosts: files dns): an IP address literal is returned as is; then
// /etc/hosts; then DNS. For DNS, the candidate names come from the search
// list and ndots (a name with at least ndots dots is tried as is first,
// then with each search domain; a shorter one the other way round; a name
// ending in a dot only as is). For each candidate, A and AAAA are asked of
// the nameservers in order (starting at the next one per resolution with
// rotate), each try bounded by Conf.Timeout and ctx, for Conf.Attempts
// rounds; a nameserver answering SERVFAIL, REFUSED or another error code is
// skipped. The first candidate with addresses wins; NXDOMAIN or an empty
// answer moves on to the next. When no nameserver answers a candidate, the
// search stops there with an error wrapping routing.ErrTimeout. CNAME chains in an
// answer are followed. A UDP answer with TC set is asked again over TCP.
func (r *Resolver) Resolve(ctx context.Context, name string) (*Resolution, error) {
	res := &Resolution{Name: name, FQDN: name}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")); err == nil {
		res.Source, res.Addrs = SourceLiteral, []netip.Addr{a}
		return res, nil
	}
	if name == "" || name == "." {
		return nil, fmt.Errorf("resolve %q: empty name: %w", name, ErrNotFound)
	}
	if _, ok := dns.IsDomainName(name); !ok || strings.Contains(name, "..") {
		return nil, fmt.Errorf("resolve %q: invalid name: %w", name, ErrNotFound)
	}
	if addrs := r.Hosts.Lookup(name); len(addrs) > 0 {
		res.Source, res.Addrs = SourceHosts, addrs
		return res, nil
	}
	conf := r.Conf
	if conf == nil {
		conf = DefaultResolvConf()
	}
	if len(conf.Nameservers) == 0 {
		return nil, fmt.Errorf("resolve %q: no nameserver", name)
	}
	if r.In == nil {
		return nil, fmt.Errorf("resolve %q: resolver has no network namespace", name)
	}
	q := &querier{r: r, conf: conf, ctx: ctx, res: res, udp: map[netip.AddrPort]net.Conn{}}
	defer q.close()
	servers := slices.Clone(conf.Nameservers)
	if conf.Rotate {
		start := int((r.next.Add(1) - 1) % uint32(len(servers)))
		servers = append(servers[start:], servers[:start]...)
	}
	q.servers = servers

	var failed []string // "server: RCODE for name"
	for _, cand := range candidates(name, conf) {
		addrs, server, err := q.lookup(cand)
		switch {
		case err == nil && len(addrs) > 0:
			res.Source, res.FQDN, res.Server, res.Addrs = SourceDNS, cand, server, addrs
			return res, nil
		case err == nil, errors.Is(err, errNXDomain):
			continue
		case errors.Is(err, ErrServerFailure):
			// glibc goes on with the search list after SERVFAIL.
			failed = append(failed, err.Error())
			continue
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			return nil, fmt.Errorf("resolve %q: stopped at the context's deadline: %w", name, routing.ErrTimeout)
		case ctx.Err() != nil:
			return nil, fmt.Errorf("resolve %q: %w", name, ctx.Err())
		default:
			// No nameserver answered: asking for the next candidate
			// would only wait again (glibc stops here too).
			return nil, fmt.Errorf("resolve %q: %w", name, err)
		}
	}
	asked := q.asked()
	if len(failed) > 0 {
		return nil, fmt.Errorf("resolve %q: %s: %w", name, strings.Join(failed, "; "), ErrServerFailure)
	}
	return nil, fmt.Errorf("resolve %q: %w (asked %s)", name, ErrNotFound, asked)
}

// candidates returns the absolute names (without trailing dot) to try for
// name, in glibc's res_search order.
func candidates(name string, conf *ResolvConf) []string {
	if strings.HasSuffix(name, ".") {
		return []string{strings.TrimSuffix(name, ".")}
	}
	var out []string
	asIs := strings.Count(name, ".") >= conf.Ndots
	if asIs {
		out = append(out, name)
	}
	for _, d := range conf.Search {
		if d = strings.Trim(d, "."); d != "" {
			out = append(out, name+"."+d)
		}
	}
	if !asIs {
		out = append(out, name)
	}
	return out
}

// errNXDomain: a nameserver said the candidate does not exist.
var errNXDomain = errors.New("NXDOMAIN")

// querier holds the state of one Resolve call's DNS queries.
type querier struct {
	r       *Resolver
	conf    *ResolvConf
	ctx     context.Context
	res     *Resolution
	servers []netip.AddrPort
	udp     map[netip.AddrPort]net.Conn // one UDP socket per server, made in the netns
	zones   map[string]string           // interface name -> index, in the netns
}

func (q *querier) close() {
	for _, c := range q.udp {
		c.Close()
	}
}

// asked lists the servers and names asked, for messages.
func (q *querier) asked() string {
	var servers, names []string
	for _, qq := range q.res.Queries {
		if s := qq.Server.String(); !slices.Contains(servers, s) {
			servers = append(servers, s)
		}
		if !slices.Contains(names, qq.Name) {
			names = append(names, qq.Name)
		}
	}
	if len(servers) == 0 {
		return "nothing"
	}
	return strings.Join(servers, ", ") + " for " + strings.Join(names, ", ")
}

// lookup asks for A and AAAA records of the absolute name cand. It returns
// the addresses and the server that gave them; errNXDomain; an error
// wrapping ErrServerFailure; or the error of a query nobody answered.
func (q *querier) lookup(cand string) ([]netip.Addr, netip.AddrPort, error) {
	var addrs []netip.Addr
	var from netip.AddrPort
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		msg, server, err := q.exchange(cand, qtype)
		if err != nil {
			return nil, netip.AddrPort{}, err
		}
		if msg.Rcode == dns.RcodeNameError {
			return nil, netip.AddrPort{}, errNXDomain
		}
		found := answerAddrs(msg, cand, qtype)
		if len(found) > 0 && !from.IsValid() {
			from = server
		}
		addrs = append(addrs, found...)
	}
	return addrs, from, nil
}

// exchange asks the servers for cand's qtype records: Conf.Attempts rounds
// over the servers, each try bounded by Conf.Timeout and the context. It
// returns the first NOERROR or NXDOMAIN answer.
func (q *querier) exchange(cand string, qtype uint16) (*dns.Msg, netip.AddrPort, error) {
	var lastErr error
	var failures []string
	timeouts := 0
	for range q.conf.Attempts {
		for _, server := range q.servers {
			if err := q.ctx.Err(); err != nil {
				return nil, server, err
			}
			msg, err := q.try(server, cand, qtype)
			if err != nil {
				if errors.Is(err, routing.ErrTimeout) {
					timeouts++
				}
				lastErr = err
				continue
			}
			switch msg.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
				return msg, server, nil
			}
			f := fmt.Sprintf("%s: %s for %s", server, dns.RcodeToString[msg.Rcode], cand)
			if !slices.Contains(failures, f) {
				failures = append(failures, f)
			}
		}
	}
	if len(failures) > 0 && timeouts == 0 {
		return nil, netip.AddrPort{}, fmt.Errorf("%s: %w", strings.Join(failures, "; "), ErrServerFailure)
	}
	var names []string
	for _, s := range q.servers {
		names = append(names, s.String())
	}
	attempts := "attempts"
	if q.conf.Attempts == 1 {
		attempts = "attempt"
	}
	if timeouts == 0 && lastErr != nil {
		// Every try failed at once (ICMP unreachable...): say so.
		return nil, netip.AddrPort{}, fmt.Errorf("no answer from %s within %d %s: %w", strings.Join(names, ", "), q.conf.Attempts, attempts, lastErr)
	}
	return nil, netip.AddrPort{}, fmt.Errorf("no answer from %s within %d %s of %v: %w", strings.Join(names, ", "), q.conf.Attempts, attempts, q.conf.Timeout, routing.ErrTimeout)
}

// try sends one query to one server over UDP, and again over TCP if the
// answer is truncated. Each transport gets Conf.Timeout (within the
// context). Every query is recorded in the Resolution.
func (q *querier) try(server netip.AddrPort, cand string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(cand), qtype)
	m.SetEdns0(4096, false)
	msg, err := q.send(server, "udp", m)
	if err != nil || !msg.Truncated {
		return msg, err
	}
	m.Id = dns.Id()
	return q.send(server, "tcp", m)
}

// send makes one exchange of m with server over transport, and records it.
func (q *querier) send(server netip.AddrPort, transport string, m *dns.Msg) (*dns.Msg, error) {
	start := time.Now()
	rec := Query{Name: strings.TrimSuffix(m.Question[0].Name, "."), Type: dns.TypeToString[m.Question[0].Qtype], Server: server, Transport: transport}
	msg, err := q.sendRaw(server, transport, m)
	// A server that does not know EDNS may answer FORMERR: ask again
	// without it (RFC 6891, 7).
	if err == nil && msg.Rcode == dns.RcodeFormatError && m.IsEdns0() != nil {
		m2 := m.Copy()
		m2.Extra = nil
		m2.Id = dns.Id()
		msg, err = q.sendRaw(server, transport, m2)
	}
	rec.RTT = time.Since(start)
	switch {
	case err != nil && errors.Is(err, routing.ErrTimeout):
		rec.Result = "timeout"
	case err != nil:
		rec.Result = err.Error()
	case msg.Truncated && transport == "udp":
		rec.Result = "truncated"
	case msg.Rcode == dns.RcodeSuccess:
		rec.Result = fmt.Sprintf("NOERROR %d answers", len(answerAddrs(msg, rec.Name, m.Question[0].Qtype)))
	default:
		rec.Result = dns.RcodeToString[msg.Rcode]
	}
	q.res.Queries = append(q.res.Queries, rec)
	return msg, err
}

// sendRaw writes m and reads the matching answer, within Conf.Timeout and
// the context.
func (q *querier) sendRaw(server netip.AddrPort, transport string, m *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(q.ctx, q.conf.Timeout)
	defer cancel()
	conn, err := q.conn(ctx, server, transport)
	if err != nil {
		return nil, routing.Classify(ctx, err)
	}
	if transport == "tcp" {
		defer conn.Close()
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	// A context cancelled before its deadline interrupts the I/O too.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		conn.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired // the UDP socket is reused: no late deadline change
		}
	}()
	dc := &dns.Conn{Conn: conn, UDPSize: 4096}
	if err := dc.WriteMsg(m); err != nil {
		return nil, routing.Classify(ctx, err)
	}
	for {
		msg, err := dc.ReadMsg()
		if err != nil {
			if transport == "udp" && !isNetErr(err) {
				continue // a malformed datagram is no answer: keep waiting
			}
			return nil, routing.Classify(ctx, err)
		}
		// Late answers to an earlier try on the same socket, or spoofed
		// ones, do not match the ID and question: skip them.
		if msg.Id != m.Id || !msg.Response || len(msg.Question) != 1 ||
			!strings.EqualFold(msg.Question[0].Name, m.Question[0].Name) || msg.Question[0].Qtype != m.Question[0].Qtype {
			if transport == "tcp" {
				return nil, errors.New("tcp answer does not match the query")
			}
			continue
		}
		return msg, nil
	}
}

// isNetErr reports whether err comes from the socket rather than from
// unpacking a message.
func isNetErr(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe)
}

// conn returns the UDP socket for server (made once per resolution) or a
// new TCP connection. Sockets are created inside the container's netns.
func (q *querier) conn(ctx context.Context, server netip.AddrPort, transport string) (net.Conn, error) {
	if transport == "udp" {
		if c := q.udp[server]; c != nil {
			return c, nil
		}
	}
	var conn net.Conn
	err := q.r.In(func() error {
		addr, err := q.zoned(server)
		if err != nil {
			return err
		}
		// The socket is created here, on the thread in the netns, and
		// keeps that netns when used from any thread later.
		conn, err = (&net.Dialer{}).DialContext(ctx, transport, addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	if transport == "udp" {
		q.udp[server] = conn
	}
	return conn, nil
}

// zoned formats server for Dial. An interface name as zone is turned into
// its index here, inside the netns, because Go's own name-to-index cache is
// process-wide and may come from another namespace.
func (q *querier) zoned(server netip.AddrPort) (string, error) {
	zone := server.Addr().Zone()
	if zone == "" {
		return server.String(), nil
	}
	if _, err := strconv.Atoi(zone); err != nil {
		ifi, err := net.InterfaceByName(zone)
		if err != nil {
			return "", fmt.Errorf("nameserver %s: interface %s: %w", server, zone, err)
		}
		zone = strconv.Itoa(ifi.Index)
	}
	return netip.AddrPortFrom(server.Addr().WithZone(zone), server.Port()).String(), nil
}

// answerAddrs returns the qtype addresses for name in msg's answer
// section, following a CNAME chain within the answer.
func answerAddrs(msg *dns.Msg, name string, qtype uint16) []netip.Addr {
	owner := dns.Fqdn(name)
	for range maxCNAMEs {
		next := ""
		for _, rr := range msg.Answer {
			if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, owner) {
				next = c.Target
				break
			}
		}
		if next == "" {
			break
		}
		owner = next
	}
	var out []netip.Addr
	for _, rr := range msg.Answer {
		if !strings.EqualFold(rr.Header().Name, owner) || rr.Header().Rrtype != qtype {
			continue
		}
		var a netip.Addr
		switch v := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(v.A.To4())
		case *dns.AAAA:
			a, _ = netip.AddrFromSlice(v.AAAA.To16())
		}
		if a.IsValid() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}
