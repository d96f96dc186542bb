package resolver

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// maxCNAMEs bounds the CNAME chain followed inside one response.
const maxCNAMEs = 16

// Why a received message is not the answer to a query.
var (
	errMalformed = errors.New("malformed message")
	errNotAnswer = errors.New("not an answer to the query")
)

// newQuery returns a query for name's qtype records with a random ID,
// different from avoid (the ID of the other query sent with it).
func newQuery(name string, qtype uint16, avoid uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	for m.Id == avoid {
		m.Id = dns.Id()
	}
	m.SetEdns0(4096, false)
	return m
}

// readAnswer unpacks buf, a message received from a nameserver, and checks
// that it answers q: a response (QR set) with q's ID and q's one question
// (name compared case-insensitively, type and class). The message is
// untrusted: errMalformed when it does not unpack, errNotAnswer when it
// answers something else (a late answer to an earlier try, or a spoofed
// one).
func readAnswer(buf []byte, q *dns.Msg) (*dns.Msg, error) {
	m := new(dns.Msg)
	if err := m.Unpack(buf); err != nil {
		return nil, fmt.Errorf("%w: %w", errMalformed, err)
	}
	want := q.Question[0]
	if m.Id != q.Id || !m.Response || m.Opcode != dns.OpcodeQuery || len(m.Question) != 1 ||
		!strings.EqualFold(m.Question[0].Name, want.Name) ||
		m.Question[0].Qtype != want.Qtype || m.Question[0].Qclass != want.Qclass {
		return nil, errNotAnswer
	}
	return m, nil
}

// failure says why glibc's res_send would not take msg from this
// nameserver and asks the next one instead: the codes SERVFAIL, NOTIMP and
// REFUSED, and a "lame" answer (NOERROR without any record and with
// neither AA nor RA; an EDNS OPT record, which glibc's plain queries never
// get back, does not count). "" means msg is an answer.
func failure(msg *dns.Msg) string {
	switch msg.Rcode {
	case dns.RcodeServerFailure, dns.RcodeNotImplemented, dns.RcodeRefused:
		return rcodeName(msg.Rcode)
	case dns.RcodeSuccess:
		extra := 0
		for _, rr := range msg.Extra {
			if rr.Header().Rrtype != dns.TypeOPT {
				extra++
			}
		}
		if len(msg.Answer) == 0 && extra == 0 && !msg.Authoritative && !msg.RecursionAvailable {
			return "lame answer (NOERROR without records, AA or RA)"
		}
	}
	return ""
}

// rcodeName names an RCODE, also one miekg/dns has no name for.
func rcodeName(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rcode)
}

// answerAddrs returns the qtype addresses for name in msg's answer section:
// from name, a CNAME chain is followed within the answer (at most
// maxCNAMEs links), and the class IN records of qtype owned by the chain's
// last name are taken, in answer order, without duplicates.
func answerAddrs(msg *dns.Msg, name string, qtype uint16) []netip.Addr {
	owner := dns.Fqdn(name)
	for range maxCNAMEs {
		next := ""
		for _, rr := range msg.Answer {
			if c, ok := rr.(*dns.CNAME); ok && c.Hdr.Class == dns.ClassINET && strings.EqualFold(c.Hdr.Name, owner) {
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
		h := rr.Header()
		if h.Rrtype != qtype || h.Class != dns.ClassINET || !strings.EqualFold(h.Name, owner) {
			continue
		}
		var a netip.Addr
		switch v := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(v.A.To4())
		case *dns.AAAA:
			if len(v.AAAA) == 16 {
				a = netip.AddrFrom16([16]byte(v.AAAA))
			}
		}
		if a.IsValid() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// outcome is what the DNS said about one candidate name, in the terms of
// glibc's res_query/res_search (h_errno) that decide whether the search
// list goes on.
type outcome int

const (
	// nxDomain: the name does not exist (HOST_NOT_FOUND): next
	// candidate.
	nxDomain outcome = iota
	// found: addresses.
	found
	// noAddress: a NOERROR answer with records, none of them an address
	// of the name (a CNAME only, say). glibc's res_search takes it as
	// the answer and getaddrinfo then fails: the search ends.
	noAddress
	// noData: the name exists without addresses (NO_DATA): next
	// candidate.
	noData
	// servFail: no nameserver gave an answer, the last failure was
	// SERVFAIL (TRY_AGAIN): next candidate.
	servFail
	// failed: no nameserver gave an answer and the last failure was
	// REFUSED, NOTIMP or a lame answer, or the answer had another error
	// code such as FORMERR (TRY_AGAIN or NO_RECOVERY): the search list
	// stops, the name as is is still tried.
	failed
	// timedOut: no answer and no failure code, some tries timed out
	// (TRY_AGAIN): like failed.
	timedOut
	// unreachable: no try reached a nameserver (ICMP unreachable, no
	// route; glibc's ECONNREFUSED): the search ends at once.
	unreachable
	// aborted: the context ended.
	aborted
)

// qtypes are the query types of a pair, in order.
var qtypes = [2]uint16{dns.TypeA, dns.TypeAAAA}

// judge reads the two answers one nameserver gave for name (A, then AAAA;
// nil for one without an answer or with a failure) as glibc's
// __res_context_query and gaih_getanswer combine them: the addresses of
// both; without any, the first error code that is not NOERROR decides.
// Two nils (both failed) are no data; lookup asks the next nameserver
// instead.
func judge(name string, answers [2]*dns.Msg) (outcome, []netip.Addr) {
	var addrs []netip.Addr
	records := false
	rcode := dns.RcodeSuccess
	for i, m := range answers {
		if m == nil {
			continue
		}
		if m.Rcode == dns.RcodeSuccess {
			addrs = append(addrs, answerAddrs(m, name, qtypes[i])...)
			records = records || len(m.Answer) > 0
		}
		if rcode == dns.RcodeSuccess {
			rcode = m.Rcode
		}
	}
	switch {
	case len(addrs) > 0:
		return found, addrs
	case records:
		return noAddress, nil
	case rcode == dns.RcodeSuccess:
		return noData, nil
	case rcode == dns.RcodeNameError:
		return nxDomain, nil
	}
	return failed, nil
}
