package resolver

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// The queries the answers of these tests are for.
const answerName = "nfs.example.test"

func answerQueries() [2]*dns.Msg {
	qa := newQuery(answerName, dns.TypeA, 0)
	qa.Id = 0x1234
	q6 := newQuery(answerName, dns.TypeAAAA, 0)
	q6.Id = 0x1235
	return [2]*dns.Msg{qa, q6}
}

// msgOpt changes a reply.
type msgOpt func(m *dns.Msg)

func rcode(c int) msgOpt     { return func(m *dns.Msg) { m.Rcode = c } }
func noRA() msgOpt           { return func(m *dns.Msg) { m.RecursionAvailable = false } }
func rrs(s ...string) msgOpt { return func(m *dns.Msg) { m.Answer = append(m.Answer, parseRRs(s)...) } }
func edns() msgOpt           { return func(m *dns.Msg) { m.SetEdns0(4096, false) } }

func parseRRs(s []string) []dns.RR {
	var out []dns.RR
	for _, r := range s {
		rr, err := dns.NewRR(r)
		if err != nil {
			panic(err)
		}
		out = append(out, rr)
	}
	return out
}

// packReply packs a reply to q as a recursive server would send it (RA set).
func packReply(q *dns.Msg, opts ...msgOpt) []byte {
	m := new(dns.Msg)
	m.SetReply(q)
	m.RecursionAvailable = true
	m.Compress = true // owner names point to the question's name
	for _, o := range opts {
		o(m)
	}
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	return b
}

// answerVectors are pairs of replies (to the A and the AAAA query) with
// what judge makes of them. They are the seeds of FuzzAnswer.
func answerVectors() []struct {
	name      string
	a, aaaa   []byte
	kind      outcome
	addrs     []string
	failA     string // failure of the A reply
	malformed bool   // the A reply does not unpack
} {
	qs := answerQueries()
	qa, q6 := qs[0], qs[1]
	const n = answerName + ". 60 IN "
	type vec = struct {
		name      string
		a, aaaa   []byte
		kind      outcome
		addrs     []string
		failA     string
		malformed bool
	}
	wrongID := packReply(qa, rrs(n+"A 198.51.100.10"))
	wrongID[0] ^= 0xff
	return []vec{
		{name: "both", a: packReply(qa, rrs(n+"A 198.51.100.10")), aaaa: packReply(q6, rrs(n+"AAAA 2001:db8::10")), kind: found, addrs: []string{"198.51.100.10", "2001:db8::10"}},
		{name: "A, AAAA REFUSED (dnsmasq)", a: packReply(qa, rrs(n+"A 198.51.100.10")), aaaa: packReply(q6, rcode(dns.RcodeRefused)), kind: found, addrs: []string{"198.51.100.10"}},
		{name: "REFUSED, AAAA", a: packReply(qa, rcode(dns.RcodeRefused)), aaaa: packReply(q6, rrs(n+"AAAA 2001:db8::12")), kind: found, addrs: []string{"2001:db8::12"}, failA: "REFUSED"},
		{name: "SERVFAIL both", a: packReply(qa, rcode(dns.RcodeServerFailure)), aaaa: packReply(q6, rcode(dns.RcodeServerFailure)), kind: noData, failA: "SERVFAIL"},
		{name: "NXDOMAIN", a: packReply(qa, rcode(dns.RcodeNameError)), aaaa: packReply(q6, rcode(dns.RcodeNameError)), kind: nxDomain},
		{name: "no data", a: packReply(qa), aaaa: packReply(q6, edns()), kind: noData},
		{name: "no data and NXDOMAIN", a: packReply(qa), aaaa: packReply(q6, rcode(dns.RcodeNameError)), kind: nxDomain},
		{name: "FORMERR", a: packReply(qa, rcode(dns.RcodeFormatError)), aaaa: packReply(q6, rcode(dns.RcodeFormatError)), kind: failed},
		{name: "lame", a: packReply(qa, noRA()), aaaa: packReply(q6, noRA(), edns()), kind: noData, failA: "lame answer (NOERROR without records, AA or RA)"},
		{
			name: "CNAME chain", kind: found, addrs: []string{"198.51.100.10", "2001:db8::10"},
			a:    packReply(qa, rrs(n+"CNAME b.example.test.", "b.example.test. 60 IN CNAME c.example.test.", "c.example.test. 60 IN A 198.51.100.10")),
			aaaa: packReply(q6, rrs(n+"CNAME b.example.test.", "B.Example.Test. 60 IN CNAME c.example.test.", "c.example.test. 60 IN AAAA 2001:db8::10")),
		},
		{name: "CNAME only", a: packReply(qa, rrs(n+"CNAME nowhere.test.")), aaaa: packReply(q6, rrs(n+"CNAME nowhere.test.")), kind: noAddress},
		{name: "CNAME loop", a: packReply(qa, rrs(n+"CNAME b.test.", "b.test. 60 IN CNAME "+answerName+".")), aaaa: packReply(q6), kind: noAddress},
		{
			name: "records of other names and types are not addresses", kind: found, addrs: []string{"198.51.100.10"},
			a:    packReply(qa, rrs("other.test. 60 IN A 192.0.2.66", n+"AAAA 2001:db8::66", n+"A 198.51.100.10", n+"A 198.51.100.10", n+"TXT x")),
			aaaa: packReply(q6, rrs("other.test. 60 IN AAAA 2001:db8::66", n+"A 192.0.2.66")),
		},
		{name: "class CH ignored", a: packReply(qa, rrs(n[:len(n)-3]+"CH A 192.0.2.66")), aaaa: packReply(q6), kind: noAddress},
		{name: "wrong ID", a: wrongID, aaaa: packReply(q6), kind: noData, failA: "not an answer"},
		{name: "truncated header", a: []byte{0x12, 0x34, 0x81}, aaaa: packReply(q6), kind: noData, malformed: true},
		{name: "answer to the other query", a: packReply(q6, rrs(n+"AAAA 2001:db8::10")), aaaa: packReply(q6), kind: noData, failA: "not an answer"},
	}
}

// readPair reads the two replies as the client does: nil for one that
// does not answer its query or is a failure.
func readPair(qs [2]*dns.Msg, bufs [2][]byte) (answers [2]*dns.Msg, fails [2]string, errs [2]error) {
	for i, b := range bufs {
		m, err := readAnswer(b, qs[i])
		errs[i] = err
		if err != nil {
			continue
		}
		if fails[i] = failure(m); fails[i] == "" {
			answers[i] = m
		}
	}
	return answers, fails, errs
}

func TestJudge(t *testing.T) {
	qs := answerQueries()
	for _, tt := range answerVectors() {
		t.Run(tt.name, func(t *testing.T) {
			answers, fails, errs := readPair(qs, [2][]byte{tt.a, tt.aaaa})
			switch {
			case tt.malformed:
				if !strings.Contains(errs[0].Error(), "malformed") {
					t.Errorf("readAnswer(A) = %v, want malformed", errs[0])
				}
			case tt.failA == "not an answer":
				if errs[0] != errNotAnswer {
					t.Errorf("readAnswer(A) = %v, want %v", errs[0], errNotAnswer)
				}
			case errs[0] != nil:
				t.Fatalf("readAnswer(A): %v", errs[0])
			case fails[0] != tt.failA:
				t.Errorf("failure(A) = %q, want %q", fails[0], tt.failA)
			}
			kind, addrs := judge(answerName, answers)
			var got []string
			for _, a := range addrs {
				got = append(got, a.String())
			}
			if kind != tt.kind || !slices.Equal(got, tt.addrs) {
				t.Errorf("judge = %v %v, want %v %v", kind, got, tt.kind, tt.addrs)
			}
		})
	}
}

// FuzzAnswer: the replies to the A and the AAAA query, as received from
// the container's nameserver (untrusted), go through the client's whole
// answer handling: unpacking, the ID and question checks, the failure
// codes, CNAME chain following and address extraction. Nothing panics;
// an accepted reply answers its query; the addresses found are of the
// queried family, without duplicates, each from a class IN record of the
// queried type in the answer section, owned by the name or a name its
// CNAME chain reaches.
func FuzzAnswer(f *testing.F) {
	for _, v := range answerVectors() {
		f.Add(v.a, v.aaaa)
	}
	qs := answerQueries()
	f.Fuzz(func(t *testing.T, a, aaaa []byte) {
		answers, _, errs := readPair(qs, [2][]byte{a, aaaa})
		var from [2][]netip.Addr
		for i, m := range answers {
			if m == nil {
				continue
			}
			if errs[i] != nil || m.Id != qs[i].Id || !m.Response || len(m.Question) != 1 ||
				!strings.EqualFold(m.Question[0].Name, qs[i].Question[0].Name) || m.Question[0].Qtype != qtypes[i] {
				t.Fatalf("reply %d accepted for the wrong query: %v", i, m)
			}
			if m.Rcode == dns.RcodeSuccess {
				from[i] = answerAddrs(m, answerName, qtypes[i])
			}
			reach := chainNames(m, answerName)
			for _, addr := range from[i] {
				if (qtypes[i] == dns.TypeA) != addr.Is4() {
					t.Errorf("%s reply gave %v", dns.TypeToString[qtypes[i]], addr)
				}
				if !hasRecord(m, qtypes[i], addr, reach) {
					t.Errorf("%v is not in a record of the answer section for %v", addr, reach)
				}
			}
		}
		kind, addrs := judge(answerName, answers)
		if (kind == found) != (len(addrs) > 0) {
			t.Errorf("judge = %v with %v", kind, addrs)
		}
		if want := slices.Concat(from[0], from[1]); kind == found && !slices.Equal(addrs, want) {
			t.Errorf("judge addresses %v, want %v", addrs, want)
		}
		for i, x := range addrs {
			if slices.Contains(addrs[:i], x) {
				t.Errorf("duplicate address %v in %v", x, addrs)
			}
		}
	})
}

// chainNames returns the lower-case names the CNAME chain from name reaches
// in m's answer section (name included), however long.
func chainNames(m *dns.Msg, name string) []string {
	names := []string{strings.ToLower(dns.Fqdn(name))}
	for grew := true; grew; {
		grew = false
		for _, rr := range m.Answer {
			c, ok := rr.(*dns.CNAME)
			if !ok || c.Hdr.Class != dns.ClassINET || !slices.Contains(names, strings.ToLower(c.Hdr.Name)) {
				continue
			}
			if t := strings.ToLower(c.Target); !slices.Contains(names, t) {
				names, grew = append(names, t), true
			}
		}
	}
	return names
}

// hasRecord reports whether m's answer section has a class IN record of
// qtype for addr owned by one of names.
func hasRecord(m *dns.Msg, qtype uint16, addr netip.Addr, names []string) bool {
	for _, rr := range m.Answer {
		h := rr.Header()
		if h.Rrtype != qtype || h.Class != dns.ClassINET || !slices.Contains(names, strings.ToLower(h.Name)) {
			continue
		}
		switch v := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(v.A.To4()); ok && a == addr {
				return true
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(v.AAAA); ok && a == addr {
				return true
			}
		}
	}
	return false
}
