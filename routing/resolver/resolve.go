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
	"io"
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
// or, when no nameserver answered at all, routing.ErrTimeout (or
// routing.ErrRefused / routing.ErrNoRoute when every try failed that way).
var (
	// ErrNotFound: no source knows an address of the name (NXDOMAIN, or
	// no address, for the candidate names).
	ErrNotFound = errors.New("name not found")
	// ErrServerFailure: the nameservers answered, but with SERVFAIL,
	// REFUSED or another error code instead of an answer.
	ErrServerFailure = errors.New("server failure")
)

// Sources of a Resolution.
const (
	SourceLiteral = "literal" // the name is an IP address
	SourceHosts   = "hosts"   // the container's /etc/hosts
	SourceDNS     = "dns"     // the container's nameservers
)

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
	// Addrs are the addresses, IPv4 ones first, in answer order
	// (getaddrinfo sorts them by RFC 6724 afterwards; nsmount's own
	// choice of address is the router's).
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
	// Result is "NOERROR 2 answers", "NXDOMAIN", "SERVFAIL", "REFUSED"
	// (or another RCODE), "truncated", "timeout", "lame answer (...)",
	// or the network error.
	Result string `json:"result"`
	// RTT is how long the query took.
	RTT time.Duration `json:"rtt"`
}

// Resolve resolves name like glibc's getaddrinfo (AF_UNSPEC, "hosts: files
// dns") would in the container: an IP address literal is returned as is;
// then /etc/hosts; then DNS, with these rules, read from glibc 2.36
// (res_search, res_query, res_send's send_dg, nss_dns's
// gethostbyname4_r) and checked against it:
//
//   - Candidates (res_search): a name ending in a dot is tried only as
//     is. A name with at least ndots dots is tried as is first; if that
//     fails, whatever the failure, the search list follows. A shorter
//     name tries the search list first and the name as is last.
//   - For each candidate, the A and AAAA queries go together to one
//     nameserver at a time (one UDP socket, both outstanding), in
//     resolv.conf order (rotate: starting at the next server for each
//     resolution), for Conf.Attempts rounds, each try bounded by
//     Conf.Timeout and ctx. A UDP answer with TC set is asked again over
//     TCP; a FORMERR to a query with EDNS is asked again without it.
//   - Per nameserver (send_dg): an answer is any response but SERVFAIL,
//     NOTIMP, REFUSED and a "lame" NOERROR without records, AA or RA.
//     When either family gets an answer, this nameserver's two replies
//     are the result and no other nameserver is asked: the family that
//     failed (error code or timeout) simply has no addresses. Only when
//     both fail is the next nameserver asked.
//   - The result (res_query, gaih_getanswer): the addresses of both
//     answers; without any, the first error code that is not NOERROR
//     decides: NXDOMAIN (not found) and NOERROR (no data) move on to the
//     next candidate; an answer whose records hold no address (a CNAME
//     only) ends the search, not found; another code (FORMERR...) stops
//     the search list.
//   - When no nameserver gave an answer: if the last failure code
//     received was SERVFAIL, the search list goes on; after REFUSED,
//     NOTIMP, a lame answer, or timeouts only, the search list stops
//     (the name as is is still tried if it was not yet); when no try
//     reached any nameserver (ICMP unreachable, no route) the search ends
//     at once.
//   - The error reported is that of the name tried as is first, else
//     "no data" if a candidate had it, else SERVFAIL if one had it, else
//     the last one's. Not found wraps ErrNotFound; error codes
//     ErrServerFailure; timeouts routing.ErrTimeout; unreachable
//     nameservers routing.ErrRefused or routing.ErrNoRoute.
//
// Deliberate differences from glibc: addresses are taken only from the
// records of the queried type owned by the question's name or the end of
// its CNAME chain within the answer (glibc takes every A and AAAA record
// of the answer section); every query carries EDNS0 (glibc only with
// options edns0); a truncated UDP answer is asked again over TCP for its
// family only (glibc asks both again); when one family answered and the
// other timed out, the answer is used after that one timeout (glibc first
// retries that server twice, one query at a time: 3 s with timeout:1);
// rotate moves per resolution, not per query; a root domain (".") in the
// search list is ignored; and HOSTALIASES is not read.
func (r *Resolver) Resolve(ctx context.Context, name string) (*Resolution, error) {
	res := &Resolution{Name: name, FQDN: name}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")); err == nil {
		res.Source, res.Addrs = SourceLiteral, []netip.Addr{a}
		return res, nil
	}
	if name == "" || name == "." {
		return nil, fmt.Errorf("resolve %q: empty name: %w", name, ErrNotFound)
	}
	if _, ok := dns.IsDomainName(name); !ok || strings.Contains(name, "..") || strings.HasPrefix(name, ".") {
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

	out := q.search(name)
	switch out.kind {
	case found:
		res.Source, res.FQDN, res.Server, res.Addrs = SourceDNS, out.fqdn, out.server, out.addrs
		return res, nil
	case aborted:
		if errors.Is(out.err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("resolve %q: stopped at the context's deadline: %w", name, routing.ErrTimeout)
		}
		return nil, fmt.Errorf("resolve %q: %w", name, out.err)
	case noAddress:
		return nil, fmt.Errorf("resolve %q: %s answered records but no address: %w (asked %s)", name, out.fqdn, ErrNotFound, q.asked())
	case noData, nxDomain:
		return nil, fmt.Errorf("resolve %q: %w (asked %s)", name, ErrNotFound, q.asked())
	case servFail, failed:
		return nil, fmt.Errorf("resolve %q: %s: %w", name, strings.Join(q.failures, "; "), ErrServerFailure)
	}
	return nil, fmt.Errorf("resolve %q: %w", name, out.err)
}

// result is what the DNS said about one candidate name.
type result struct {
	kind   outcome
	fqdn   string         // the candidate, without trailing dot
	server netip.AddrPort // who answered (found)
	addrs  []netip.Addr   // found
	err    error          // timedOut, unreachable, aborted: what happened
}

// done reports whether r ends the search: an answer res_search returns
// (found, noAddress), or the context ended.
func (r result) done() bool {
	return r.kind == found || r.kind == noAddress || r.kind == aborted
}

// search tries the candidate names in res_search's order and returns the
// first that ends the search, or the failure glibc would report.
func (q *querier) search(name string) result {
	trailing := strings.HasSuffix(name, ".")
	base := strings.TrimSuffix(name, ".")
	var asIsFirst, noDataRes, servFailRes *result
	triedAsIs := false
	if strings.Count(base, ".") >= q.conf.Ndots || trailing {
		r := q.lookup(base)
		if r.done() || trailing {
			return r
		}
		asIsFirst, triedAsIs = &r, true
	}
	var last result
list:
	for _, d := range q.conf.Search {
		if d = strings.Trim(d, "."); d == "" {
			continue
		}
		r := q.lookup(base + "." + d)
		if r.done() || r.kind == unreachable {
			return r
		}
		last = r
		switch r.kind {
		case noData:
			if noDataRes == nil {
				noDataRes = &r
			}
		case nxDomain:
		case servFail:
			if servFailRes == nil {
				servFailRes = &r
			}
		default: // failed, timedOut
			break list
		}
	}
	if !triedAsIs {
		r := q.lookup(base)
		if r.done() {
			return r
		}
		last = r
	}
	switch {
	case asIsFirst != nil:
		return *asIsFirst
	case noDataRes != nil:
		return *noDataRes
	case servFailRes != nil:
		return *servFailRes
	}
	return last
}

// lookup asks the nameservers for the A and AAAA records of the absolute
// name cand (without trailing dot), as glibc's res_send does: each
// nameserver in turn, Conf.Attempts rounds, until one of them gives an
// answer for either family.
func (q *querier) lookup(cand string) result {
	lastRcode := -1 // of the last failure answer received
	timeouts := 0
	var lastErr error
	for range q.conf.Attempts {
		for _, server := range q.servers {
			if err := q.ctx.Err(); err != nil {
				return result{kind: aborted, fqdn: cand, err: err}
			}
			replies := q.ask(server, cand)
			var answers [2]*dns.Msg
			pairRcode := -1
			for i, rp := range replies {
				switch {
				case rp.msg == nil:
					if errors.Is(rp.err, routing.ErrTimeout) {
						timeouts++
					} else {
						lastErr = rp.err
					}
				case failure(rp.msg) != "":
					q.fail(fmt.Sprintf("%s: %s for %s", server, failure(rp.msg), cand))
					if pairRcode < 0 {
						pairRcode = rp.msg.Rcode
					}
				default:
					answers[i] = rp.msg
				}
			}
			if answers[0] != nil || answers[1] != nil {
				kind, addrs := judge(cand, answers)
				if kind == failed {
					for _, m := range answers {
						if m != nil && m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
							q.fail(fmt.Sprintf("%s: %s for %s", server, rcodeName(m.Rcode), cand))
						}
					}
				}
				return result{kind: kind, fqdn: cand, server: server, addrs: addrs}
			}
			if pairRcode >= 0 {
				lastRcode = pairRcode
			}
		}
	}
	if err := q.ctx.Err(); err != nil {
		return result{kind: aborted, fqdn: cand, err: err}
	}
	switch {
	case lastRcode == dns.RcodeServerFailure:
		return result{kind: servFail, fqdn: cand}
	case lastRcode >= 0:
		return result{kind: failed, fqdn: cand}
	}
	names := make([]string, len(q.servers))
	for i, s := range q.servers {
		names[i] = s.String()
	}
	attempts := "attempts"
	if q.conf.Attempts == 1 {
		attempts = "attempt"
	}
	if timeouts == 0 && lastErr != nil {
		// Every try failed at once (ICMP unreachable, no route).
		return result{kind: unreachable, fqdn: cand, err: fmt.Errorf("no answer from %s within %d %s: %w", strings.Join(names, ", "), q.conf.Attempts, attempts, lastErr)}
	}
	return result{kind: timedOut, fqdn: cand, err: fmt.Errorf("no answer from %s within %d %s of %v: %w", strings.Join(names, ", "), q.conf.Attempts, attempts, q.conf.Timeout, routing.ErrTimeout)}
}

// querier holds the state of one Resolve call's DNS queries.
type querier struct {
	r        *Resolver
	conf     *ResolvConf
	ctx      context.Context
	res      *Resolution
	servers  []netip.AddrPort
	udp      map[netip.AddrPort]net.Conn // one UDP socket per server, made in the netns
	failures []string                    // "server: RCODE for name", for messages
}

func (q *querier) close() {
	for _, c := range q.udp {
		c.Close()
	}
}

// fail notes a failure answer for the error message.
func (q *querier) fail(f string) {
	if !slices.Contains(q.failures, f) {
		q.failures = append(q.failures, f)
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

// reply is what one query got: an answer to it (any RCODE), or the error
// why none came (wrapping routing.ErrTimeout when none came in time).
type reply struct {
	msg *dns.Msg
	err error
	rtt time.Duration
}

// ask sends the A and AAAA queries for cand to server together over UDP and
// returns the replies, A first. A truncated answer is asked again over TCP,
// a FORMERR to a query with EDNS again without it. Every query is recorded
// in the Resolution.
func (q *querier) ask(server netip.AddrPort, cand string) [2]reply {
	qa := newQuery(cand, dns.TypeA, 0)
	msgs := [2]*dns.Msg{qa, newQuery(cand, dns.TypeAAAA, qa.Id)}
	replies := q.exchangeUDP(server, msgs)
	for i := range replies {
		q.record(server, "udp", msgs[i], replies[i])
	}
	for i := range replies {
		m := msgs[i]
		if rp := replies[i]; rp.msg != nil && rp.msg.Rcode == dns.RcodeFormatError && m.IsEdns0() != nil {
			// A server that does not know EDNS may answer FORMERR: ask
			// again without it (RFC 6891, 7).
			m = m.Copy()
			m.Extra, m.Id = nil, dns.Id()
			replies[i] = q.exchangeUDP1(server, m)
			q.record(server, "udp", m, replies[i])
		}
		if rp := replies[i]; rp.msg != nil && rp.msg.Truncated {
			m = m.Copy()
			m.Id = dns.Id()
			replies[i] = q.exchangeTCP(server, m)
			q.record(server, "tcp", m, replies[i])
		}
	}
	return replies
}

// record adds the query m to server and its reply to the Resolution.
func (q *querier) record(server netip.AddrPort, transport string, m *dns.Msg, rp reply) {
	rec := Query{Name: strings.TrimSuffix(m.Question[0].Name, "."), Type: dns.TypeToString[m.Question[0].Qtype], Server: server, Transport: transport, RTT: rp.rtt}
	switch {
	case rp.err != nil && errors.Is(rp.err, routing.ErrTimeout):
		rec.Result = "timeout"
	case rp.err != nil:
		rec.Result = rp.err.Error()
	case rp.msg.Truncated && transport == "udp":
		rec.Result = "truncated"
	case failure(rp.msg) != "" && rp.msg.Rcode == dns.RcodeSuccess:
		rec.Result = failure(rp.msg)
	case rp.msg.Rcode == dns.RcodeSuccess:
		rec.Result = fmt.Sprintf("NOERROR %d answers", len(answerAddrs(rp.msg, rec.Name, m.Question[0].Qtype)))
	default:
		rec.Result = rcodeName(rp.msg.Rcode)
	}
	q.res.Queries = append(q.res.Queries, rec)
}

// exchangeUDP1 sends one query over UDP and waits for its answer.
func (q *querier) exchangeUDP1(server netip.AddrPort, m *dns.Msg) reply {
	return q.exchangeUDP(server, [2]*dns.Msg{m})[0]
}

// exchangeUDP writes the queries in msgs (a nil one is skipped) on the UDP
// socket for server and reads until each has its answer, within
// Conf.Timeout and the context. Datagrams that do not unpack or answer
// none of the queries are skipped.
func (q *querier) exchangeUDP(server netip.AddrPort, msgs [2]*dns.Msg) [2]reply {
	var replies [2]reply
	start := time.Now()
	failAll := func(err error) [2]reply {
		for i := range replies {
			if replies[i].msg == nil {
				replies[i] = reply{err: err, rtt: time.Since(start)}
			}
		}
		return replies
	}
	ctx, cancel := context.WithTimeout(q.ctx, q.conf.Timeout)
	defer cancel()
	conn, err := q.conn(ctx, server, "udp")
	if err != nil {
		return failAll(routing.Classify(ctx, err))
	}
	stop := interruptible(ctx, conn)
	defer stop()
	pending := 0
	for _, m := range msgs {
		if m == nil {
			continue
		}
		buf, err := m.Pack()
		if err != nil {
			return failAll(fmt.Errorf("packing query: %w", err))
		}
		if _, err := conn.Write(buf); err != nil {
			return failAll(routing.Classify(ctx, err))
		}
		pending++
	}
	buf := make([]byte, 65535)
	for pending > 0 {
		n, err := conn.Read(buf)
		if err != nil {
			return failAll(routing.Classify(ctx, err))
		}
		for i, m := range msgs {
			if m == nil || replies[i].msg != nil {
				continue
			}
			if msg, err := readAnswer(buf[:n], m); err == nil {
				replies[i] = reply{msg: msg, rtt: time.Since(start)}
				pending--
				break
			}
		}
	}
	return replies
}

// exchangeTCP sends m to server over a new TCP connection and reads its
// answer, within Conf.Timeout and the context.
func (q *querier) exchangeTCP(server netip.AddrPort, m *dns.Msg) reply {
	start := time.Now()
	ctx, cancel := context.WithTimeout(q.ctx, q.conf.Timeout)
	defer cancel()
	fail := func(err error) reply { return reply{err: err, rtt: time.Since(start)} }
	conn, err := q.conn(ctx, server, "tcp")
	if err != nil {
		return fail(routing.Classify(ctx, err))
	}
	defer conn.Close()
	stop := interruptible(ctx, conn)
	defer stop()
	buf, err := m.Pack()
	if err != nil {
		return fail(fmt.Errorf("packing query: %w", err))
	}
	if _, err := conn.Write(append([]byte{byte(len(buf) >> 8), byte(len(buf))}, buf...)); err != nil {
		return fail(routing.Classify(ctx, err))
	}
	var size [2]byte
	if _, err := io.ReadFull(conn, size[:]); err != nil {
		return fail(routing.Classify(ctx, err))
	}
	buf = make([]byte, int(size[0])<<8|int(size[1]))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return fail(routing.Classify(ctx, err))
	}
	msg, err := readAnswer(buf, m)
	if err != nil {
		return fail(fmt.Errorf("tcp answer: %w", err))
	}
	return reply{msg: msg, rtt: time.Since(start)}
}

// interruptible bounds conn's I/O by ctx: its deadline, and its
// cancellation before that. The returned stop must be called before conn
// is used again.
func interruptible(ctx context.Context, conn net.Conn) (stop func()) {
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	fired := make(chan struct{})
	after := context.AfterFunc(ctx, func() {
		conn.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !after() {
			<-fired // the UDP socket is reused: no late deadline change
		}
	}
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
		addr, err := zoned(server)
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
func zoned(server netip.AddrPort) (string, error) {
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
