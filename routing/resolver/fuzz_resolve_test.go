package resolver

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/routing"
)

// FuzzResolve drives Resolve's whole DNS path, sockets included, with
// untrusted replies: a server on 127.0.0.1:53 (UDP and TCP) in a network
// namespace of its own, made for the fuzz run and gone with it, answers
// each query with the fuzzed bytes for its type (a for A, aaaa for AAAA):
// their 12-byte header with the query's ID and one question, then the
// query's question, then the rest of the bytes (records, whose compression
// pointers to offset 12 name the asked name). Over UDP a REFUSED follows,
// so that a reply the client skips costs no timeout. Nothing panics, Resolve ends
// in bounded time, its addresses are valid and distinct, and its errors
// have a class.
func FuzzResolve(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root: creates a network namespace")
	}
	in := anonNetNS(f)
	srv := startFuzzDNS(f, in)
	const qlen = 12 + 18 + 4 // header, "nfs.example.test." and type and class
	for _, v := range answerVectors() {
		if len(v.a) < qlen || len(v.aaaa) < qlen {
			continue
		}
		strip := func(b []byte) []byte { return slices.Concat(b[:12], b[qlen:]) }
		for _, name := range []string{answerName, "nfs", answerName + "."} {
			f.Add(name, strip(v.a), strip(v.aaaa))
		}
	}
	f.Add("10.0.0.1", []byte{}, []byte{})
	f.Add("nfs", []byte{0x12}, []byte{})
	conf := &ResolvConf{
		Nameservers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")},
		Search:      []string{"example.test"}, Ndots: 1, Timeout: 50 * time.Millisecond, Attempts: 1,
	}
	f.Fuzz(func(t *testing.T, name string, a, aaaa []byte) {
		srv.set(a, aaaa)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		start := time.Now()
		res, err := (&Resolver{Conf: conf, In: in}).Resolve(ctx, name)
		// At most two candidates, each a UDP pair, FORMERR retries and
		// TCP retries of 50 ms.
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("Resolve(%q) took %v", name, d)
		}
		if err != nil {
			if res != nil {
				t.Errorf("Resolve(%q) = %+v and %v", name, res, err)
			}
			for _, class := range []error{ErrNotFound, ErrServerFailure, routing.ErrTimeout, routing.ErrRefused, routing.ErrNoRoute} {
				if errors.Is(err, class) {
					return
				}
			}
			t.Fatalf("Resolve(%q): %v: no error class", name, err)
		}
		if len(res.Addrs) == 0 {
			t.Fatalf("Resolve(%q) = %+v: no address", name, res)
		}
		for i, addr := range res.Addrs {
			if !addr.IsValid() || addr.Zone() != "" && res.Source != SourceLiteral || slices.Contains(res.Addrs[:i], addr) {
				t.Errorf("Resolve(%q) addresses %v", name, res.Addrs)
			}
		}
		if res.Source == SourceDNS && res.Server != conf.Nameservers[0] {
			t.Errorf("Resolve(%q) answered by %v", name, res.Server)
		}
	})
}

// anonNetNS makes a network namespace with lo up that has no name (it ends
// when the last socket in it and the handle closed at the end of the test
// are gone), and returns a routing.InNetNS for it.
func anonNetNS(tb testing.TB) routing.InNetNS {
	tb.Helper()
	var h netns.NsHandle
	err := onDyingThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return err
		}
		var err error
		if h, err = netns.Get(); err != nil {
			return err
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		if h.IsOpen() {
			h.Close()
		}
		tb.Fatalf("making a network namespace: %v", err)
	}
	tb.Cleanup(func() { h.Close() })
	return func(fn func() error) error {
		return onDyingThread(func() error {
			if err := netns.Set(h); err != nil {
				return err
			}
			return fn()
		})
	}
}

// onDyingThread runs fn on a goroutine locked to an OS thread that is never
// unlocked, so the thread ends with the goroutine instead of going back to
// the pool in whatever namespace fn left it; never on the main thread,
// which the runtime cannot end.
func onDyingThread(fn func() error) error {
	errc := make(chan error, 1)
	var run func()
	run = func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// Hold the main thread so that a new goroutine runs
			// elsewhere, and give it back unchanged.
			done := make(chan struct{})
			go func() {
				defer close(done)
				run()
			}()
			<-done
			runtime.UnlockOSThread()
			return
		}
		// Deliberately no UnlockOSThread.
		errc <- fn()
	}
	go run()
	return <-errc
}

// fuzzDNS answers every query with the current fuzz input for its type.
type fuzzDNS struct {
	mu      sync.Mutex
	a, aaaa []byte
}

func (s *fuzzDNS) set(a, aaaa []byte) {
	s.mu.Lock()
	s.a, s.aaaa = a, aaaa
	s.mu.Unlock()
}

// reply builds the reply to the query q (as packed by the client).
func (s *fuzzDNS) reply(q []byte) []byte {
	var m dns.Msg
	if m.Unpack(q) != nil || len(m.Question) != 1 {
		return nil
	}
	s.mu.Lock()
	in := s.a
	if m.Question[0].Qtype == dns.TypeAAAA {
		in = s.aaaa
	}
	s.mu.Unlock()
	if len(in) < 12 {
		return slices.Clone(in)
	}
	// The question as sent: the name (uncompressed) and type and class.
	end := 12
	for end < len(q) && q[end] != 0 {
		end += int(q[end]) + 1
	}
	end += 5
	if end > len(q) {
		return nil
	}
	out := slices.Concat(in[:12], q[12:end], in[12:])
	copy(out, q[:2])                       // ID
	binary.BigEndian.PutUint16(out[4:], 1) // QDCOUNT
	return out
}

// refusal returns a REFUSED reply to the query q.
func refusal(q []byte) []byte {
	var m dns.Msg
	if m.Unpack(q) != nil {
		return nil
	}
	r := new(dns.Msg)
	r.SetRcode(&m, dns.RcodeRefused)
	b, err := r.Pack()
	if err != nil {
		return nil
	}
	return b
}

// startFuzzDNS serves fuzzDNS on 127.0.0.1:53, UDP and TCP, in the
// namespace in enters, until the test ends.
func startFuzzDNS(tb testing.TB, in routing.InNetNS) *fuzzDNS {
	tb.Helper()
	s := &fuzzDNS{}
	var pc net.PacketConn
	var l net.Listener
	err := in(func() error {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:53"); err != nil {
			return err
		}
		l, err = net.Listen("tcp", "127.0.0.1:53")
		return err
	})
	if err != nil {
		tb.Fatalf("fuzz DNS server: %v", err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		pc.Close()
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := s.reply(buf[:n]); out != nil {
				pc.WriteTo(out, from)
			}
			// Then REFUSED: the answer when the fuzzed reply is not
			// taken (the client skips it and would wait for its
			// timeout), a late duplicate when it is.
			if refused := refusal(buf[:n]); refused != nil {
				pc.WriteTo(refused, from)
			}
		}
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				var size [2]byte
				if _, err := io.ReadFull(c, size[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(size[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				out := s.reply(q)
				if len(out) > 65535 {
					return
				}
				c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...))
			})
		}
	})
	return s
}
