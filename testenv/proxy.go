package testenv

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// Proxy is a fault injector for lab scenarios: a TCP proxy in front of a
// real server that can freeze the connections it carries. A frozen
// connection stays open (the kernel still acknowledges what its peer sends,
// until the window closes) but nothing more is forwarded either way, while
// connections made afterwards are forwarded as usual. To an NFS client
// whose connection is frozen, its server looks alive (it accepts a new
// connection) and its own transport never answers again: a client that
// no longer makes progress, which only a client of its own gets past.
type Proxy struct {
	ln net.Listener
	to string

	mu     sync.Mutex
	conns  map[*proxied]bool
	closed bool
	done   chan struct{} // closed when the proxy shuts
	wg     sync.WaitGroup
}

// dialTimeout bounds the proxy's connection to the server it stands for.
const dialTimeout = 5 * time.Second

// proxied is one connection pair.
type proxied struct {
	client, server net.Conn
	frozen         chan struct{} // closed by Freeze
}

// ListenProxy listens on listen ("ADDR:PORT") on the calling thread, so in
// its network namespace, and will forward each connection to to.
func ListenProxy(listen, to string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	return &Proxy{ln: ln, to: to, conns: map[*proxied]bool{}, done: make(chan struct{})}, nil
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() net.Addr { return p.ln.Addr() }

// Serve accepts and forwards until ctx is done, then closes every
// connection and returns.
func (p *Proxy) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { p.ln.Close() })
	defer stop()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			p.shut()
			p.wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("proxy: %w", err)
		}
		d := net.Dialer{Timeout: dialTimeout}
		s, err := d.DialContext(ctx, "tcp", p.to)
		if err != nil {
			c.Close()
			continue
		}
		pc := &proxied{client: c, server: s, frozen: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			s.Close()
			continue
		}
		p.conns[pc] = true
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(pc, pc.server, pc.client)
		go p.pipe(pc, pc.client, pc.server)
	}
}

// pipe copies from src to dst until either end closes; once pc is frozen
// it holds what it read and reads no more.
func (p *Proxy) pipe(pc *proxied, dst, src net.Conn) {
	defer p.wg.Done()
	defer p.drop(pc)
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-pc.frozen:
			<-p.done // hold the connection open until the proxy shuts
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Freeze freezes every connection open now and returns how many.
func (p *Proxy) Freeze() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for pc := range p.conns {
		select {
		case <-pc.frozen:
		default:
			close(pc.frozen)
			n++
		}
	}
	return n
}

// drop closes both ends of pc and forgets it.
func (p *Proxy) drop(pc *proxied) {
	pc.client.Close()
	pc.server.Close()
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

// shut marks the proxy closed and closes every connection.
func (p *Proxy) shut() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.done)
	}
	conns := make([]*proxied, 0, len(p.conns))
	for pc := range p.conns {
		conns = append(conns, pc)
	}
	p.mu.Unlock()
	for _, pc := range conns {
		pc.client.Close()
		pc.server.Close()
	}
}
