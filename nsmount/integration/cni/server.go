package cni

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/routing"
	"github.com/nsmount/nsmount/routing/resolver"
)

// ServerAddr is an NFS server to reach: a host name or IP address and the
// TCP port of its NFS service.
type ServerAddr struct {
	// Host is a host name or an IP address (IPv6 without brackets).
	Host string
	// Port is the NFS TCP port.
	Port uint16
}

// String formats the server as HOST:PORT, an IPv6 address in brackets.
func (s ServerAddr) String() string {
	host := s.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(s.Port))
}

// maxServerLen bounds a server as written in the configuration.
const maxServerLen = 260

// ParseServerAddr parses "HOST[:PORT]": a host name, an IPv4 address or an
// IPv6 address (in brackets when a port follows: [2001:db8::1]:2049), and an
// optional port (default nsmount.DefaultNFSPort). Errors are
// nsmount.ErrInvalidArgument.
func ParseServerAddr(s string) (ServerAddr, error) {
	bad := func(why string) (ServerAddr, error) {
		return ServerAddr{}, nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("invalid server %q: %s (want HOST[:PORT])", s, why))
	}
	if s == "" {
		return bad("empty")
	}
	if len(s) > maxServerLen {
		return bad("too long")
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r <= 0x20 || r == 0x7f }) {
		return bad("space or control character")
	}
	// A bare IPv6 address has colons but no port.
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return bad("zoned address")
		}
		return ServerAddr{Host: a.Unmap().String(), Port: nsmount.DefaultNFSPort}, nil
	}
	host, port := s, uint16(nsmount.DefaultNFSPort)
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return bad("unterminated IPv6 literal")
		}
		host, s = s[1:end], s[end+1:]
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() || a.Zone() != "" {
			return bad("not an IPv6 address in brackets")
		}
		if s != "" && !strings.HasPrefix(s, ":") {
			return bad("garbage after IPv6 literal")
		}
		if s != "" {
			p, err := parsePort(s[1:])
			if err != nil {
				return bad(err.Error())
			}
			port = p
		}
		return ServerAddr{Host: host, Port: port}, nil
	}
	if h, p, ok := strings.Cut(s, ":"); ok {
		if strings.Contains(p, ":") {
			return bad("IPv6 address with a port must be in brackets")
		}
		n, err := parsePort(p)
		if err != nil {
			return bad(err.Error())
		}
		host, port = h, n
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return ServerAddr{Host: a.Unmap().String(), Port: port}, nil
	}
	if !nsmount.ValidHostname(host) {
		return bad("neither an IP address nor a host name")
	}
	return ServerAddr{Host: host, Port: port}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q is not 1-65535", s)
	}
	return uint16(n), nil
}

// ServerCheck is how a network namespace reaches one NFS server: the
// resolution of its name, the address chosen, its route, and whether the
// NFS port answered.
type ServerCheck struct {
	// Server is the server as given, HOST:PORT.
	Server string `json:"server"`
	// Port is the NFS TCP port probed.
	Port uint16 `json:"port"`
	// Resolution is how the host name was resolved (also for a literal).
	Resolution *resolver.Resolution `json:"resolution,omitempty"`
	// Candidates are the addresses considered, with routes and checks.
	Candidates []routing.Candidate `json:"candidates,omitempty"`
	// Address is the address chosen; for an unreachable server the first
	// one that had a route (or the first one), so that a later check can
	// compare its route.
	Address netip.Addr `json:"address,omitzero"`
	// Route is the route to Address in the namespace (nil: none).
	Route *routing.Route `json:"route,omitempty"`
	// Reachable reports that the NFS port of Address answered.
	Reachable bool `json:"reachable"`
	// Error says why the server is not reachable.
	Error string `json:"error,omitempty"`

	err error // the classed error behind Error, in the process that checked
}

// Err returns why the server is unreachable (nil if it is reachable), with
// its error class, for checks made by this process; for a decoded check, an
// error of class nsmount.ErrUnreachable with the recorded text.
func (c *ServerCheck) Err() error {
	switch {
	case c.Reachable:
		return nil
	case c.err != nil:
		return c.err
	}
	return nsmount.WithClass(nsmount.ErrUnreachable, errors.New(c.Error))
}

// CheckServers resolves, routes and probes each server from inside t's
// network namespace, concurrently, and returns one check per server in the
// given order. A host name is resolved with conf (DNS only: no hosts file)
// over sockets created inside the namespace, within timeout; conf nil or
// without nameservers fails a name. Then, as a mount would choose, the
// first address with a route whose NFS port accepts a TCP connection is
// taken, the route lookups and probes bounded by timeout together (zero:
// nsmount.DefaultProbeTimeout).
func CheckServers(ctx context.Context, t *nsmount.Target, servers []ServerAddr, conf *resolver.ResolvConf, timeout time.Duration) []ServerCheck {
	if timeout <= 0 {
		timeout = nsmount.DefaultProbeTimeout
	}
	out := make([]ServerCheck, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Go(func() { out[i] = checkServer(ctx, t, s, conf, timeout) })
	}
	wg.Wait()
	return out
}

func checkServer(ctx context.Context, t *nsmount.Target, s ServerAddr, conf *resolver.ResolvConf, timeout time.Duration) ServerCheck {
	c := ServerCheck{Server: s.String(), Port: s.Port}
	fail := func(err error) ServerCheck {
		c.err, c.Error = err, err.Error()
		return c
	}
	inNetNS := func(fn func() error) error { return t.Do(nsmount.NetNS, fn) }
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(s.Host); err == nil {
		c.Resolution = &resolver.Resolution{Name: s.Host, FQDN: s.Host, Source: resolver.SourceLiteral, Addrs: []netip.Addr{a}}
		addrs = c.Resolution.Addrs
	} else {
		if conf == nil || len(conf.Nameservers) == 0 {
			return fail(nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("server %s: a host name, and no DNS nameserver is known for %s", s, t)))
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		r, err := (&resolver.Resolver{Conf: conf, In: inNetNS}).Resolve(rctx, s.Host)
		cancel()
		c.Resolution = r
		if err != nil {
			return fail(nsmount.WithClass(nsmount.ErrUnreachable, fmt.Errorf("server %s from %s: %w", s, t, err)))
		}
		addrs = r.Addrs
	}
	router, err := routing.NewRouter(inNetNS)
	if err != nil {
		return fail(fmt.Errorf("server %s from %s: %w", s, t, err))
	}
	defer router.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cands, err := router.Choose(cctx, addrs, routing.AnyFamily, routing.Preflight{NFSPort: s.Port, Timeout: timeout})
	c.Candidates = cands
	c.Address = addrs[0]
	for _, cand := range cands {
		if cand.Route != nil {
			c.Address, c.Route = cand.Addr, cand.Route
			break
		}
	}
	if err != nil {
		return fail(nsmount.WithClass(nsmount.ErrUnreachable, fmt.Errorf("server %s from %s: %w", s, t, err)))
	}
	chosen := cands[len(cands)-1]
	c.Address, c.Route, c.Reachable = chosen.Addr, chosen.Route, true
	return c
}

// RouteDrift looks up again, inside t's network namespace, the route to
// the address of each recorded check, and describes every difference from
// the recorded route (interface, gateway, source, table), or a route that
// appeared or disappeared. Names are not resolved again and nothing is
// probed. No difference gives no lines.
func RouteDrift(t *nsmount.Target, recorded []ServerCheck) ([]string, error) {
	router, err := routing.NewRouter(func(fn func() error) error { return t.Do(nsmount.NetNS, fn) })
	if err != nil {
		return nil, err
	}
	defer router.Close()
	var drift []string
	for _, c := range recorded {
		if !c.Address.IsValid() {
			continue
		}
		now, err := router.Lookup(c.Address)
		switch {
		case err != nil && !errors.Is(err, routing.ErrNoRoute):
			return nil, fmt.Errorf("server %s: %w", c.Server, err)
		case err != nil && c.Route != nil:
			drift = append(drift, fmt.Sprintf("server %s: was %s, now %v", c.Server, c.Route, err))
		case err == nil && c.Route == nil:
			drift = append(drift, fmt.Sprintf("server %s: had no route, now %s", c.Server, now))
		case err == nil && (now.Iface != c.Route.Iface || now.Gateway != c.Route.Gateway || now.Source != c.Route.Source || now.Table != c.Route.Table):
			drift = append(drift, fmt.Sprintf("server %s: was %s (table %d), now %s (table %d)", c.Server, c.Route, c.Route.Table, now, now.Table))
		}
	}
	return drift, nil
}
