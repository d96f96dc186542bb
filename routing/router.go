// Package routing answers "how would this container reach that server?" from
// inside the container's network namespace: the route the kernel would use
// (out interface, gateway, preferred source address, honouring policy rules
// and VRFs because the kernel itself is asked) and whether the server answers
// there.
//
// A Router holds a netlink handle whose socket was opened inside the target
// network namespace, so route lookups need no thread switching afterwards
// (the vishvananda/netlink Handle pattern). Probes open their sockets on a
// thread that has entered the namespace; a socket keeps the namespace it was
// created in.
//
// Which addresses a server name stands for, as the container resolves it,
// is the question of package routing/resolver.
package routing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Errors that classify why a server is unreachable. Returned errors wrap one
// of them.
var (
	// ErrNoRoute: the namespace has no route to the address.
	ErrNoRoute = errors.New("no route")
	// ErrRefused: the server actively refused the connection.
	ErrRefused = errors.New("connection refused")
	// ErrTimeout: nothing answered within the deadline.
	ErrTimeout = errors.New("timed out")
)

// InNetNS runs fn on a thread that has entered the target network namespace.
// nsmount.Target provides one; tests may pass a function that runs fn in the
// current namespace.
type InNetNS func(fn func() error) error

// Route is the kernel's answer to "ip route get DST" inside a namespace.
type Route struct {
	// Dst is the destination that was looked up.
	Dst netip.Addr `json:"dst"`
	// Iface is the out interface name.
	Iface string `json:"iface"`
	// Gateway is the next hop; invalid for a directly connected destination.
	Gateway netip.Addr `json:"gateway,omitzero"`
	// Source is the preferred source address: the address the namespace's
	// connections to Dst use, and the NFSv4 callback address (clientaddr).
	Source netip.Addr `json:"source"`
	// Table is the routing table that matched.
	Table int `json:"table"`
}

// String formats the route like ip-route(8).
func (r Route) String() string {
	s := r.Dst.String()
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	return s + " dev " + r.Iface + " src " + r.Source.String()
}

// Router answers routing questions from inside one network namespace.
type Router struct {
	h  *netlink.Handle
	in InNetNS
}

// NewRouter opens a netlink handle inside the namespace that in enters.
func NewRouter(in InNetNS) (*Router, error) {
	var h *netlink.Handle
	err := in(func() error {
		var err error
		// NewHandle with no namespace arguments opens its sockets in the
		// calling thread's namespace: the target's.
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open netlink handle in target netns: %w", err)
	}
	return &Router{h: h, in: in}, nil
}

// Close releases the netlink handle.
func (r *Router) Close() error {
	if r.h != nil {
		r.h.Close()
		r.h = nil
	}
	return nil
}

// Lookup returns the route the namespace would use to reach dst.
// Equivalent to: ip route get DST.
func (r *Router) Lookup(dst netip.Addr) (Route, error) {
	routes, err := r.h.RouteGet(dst.AsSlice())
	if err != nil {
		switch {
		case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH), errors.Is(err, unix.ESRCH):
			return Route{}, fmt.Errorf("route to %s: %w", dst, ErrNoRoute)
		case errors.Is(err, unix.EINVAL):
			// The kernel answers a blackhole route with EINVAL...
			return Route{}, fmt.Errorf("route to %s is blackhole: %w", dst, ErrNoRoute)
		case errors.Is(err, unix.EACCES):
			// ...and a prohibit route with EACCES.
			return Route{}, fmt.Errorf("route to %s is prohibit: %w", dst, ErrNoRoute)
		}
		return Route{}, fmt.Errorf("route to %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return Route{}, fmt.Errorf("route to %s: %w", dst, ErrNoRoute)
	}
	rt := routes[0]
	if rt.Type == unix.RTN_UNREACHABLE || rt.Type == unix.RTN_BLACKHOLE || rt.Type == unix.RTN_PROHIBIT {
		return Route{}, fmt.Errorf("route to %s is %s: %w", dst, routeType(rt.Type), ErrNoRoute)
	}
	out := Route{Dst: dst, Table: rt.Table}
	if gw, ok := netip.AddrFromSlice(rt.Gw); ok {
		out.Gateway = gw.Unmap()
	}
	link, err := r.h.LinkByIndex(rt.LinkIndex)
	if err != nil {
		return Route{}, fmt.Errorf("route to %s: interface %d: %w", dst, rt.LinkIndex, err)
	}
	out.Iface = link.Attrs().Name
	if src, ok := netip.AddrFromSlice(rt.Src); ok {
		out.Source = src.Unmap()
	} else if out.Source, err = r.firstAddr(link, dst); err != nil {
		return Route{}, err
	}
	return out, nil
}

// firstAddr returns the first global address of dst's family on link, for
// routes that name no preferred source.
func (r *Router) firstAddr(link netlink.Link, dst netip.Addr) (netip.Addr, error) {
	family := netlink.FAMILY_V4
	if dst.Is6() && !dst.Is4In6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := r.h.AddrList(link, family)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && a.Scope == unix.RT_SCOPE_UNIVERSE {
			return ip.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("route to %s: no source address on %s: %w", dst, link.Attrs().Name, ErrNoRoute)
}

func routeType(t int) string {
	switch t {
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	}
	return fmt.Sprintf("type %d", t)
}

// Probe opens a TCP connection to dst from inside the namespace and closes
// it, waiting at most timeout (and no longer than ctx allows). The error
// wraps ErrNoRoute, ErrRefused or ErrTimeout when it is one of those.
func (r *Router) Probe(ctx context.Context, dst netip.AddrPort, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := r.dialTCP(ctx, dst)
	if err == nil {
		conn.Close()
		return nil
	}
	return fmt.Errorf("tcp connect to %s: %w", dst, Classify(ctx, err))
}

// Classify maps an error of a socket made inside the namespace (dial,
// write or read, bounded by ctx) to one of the package's error classes:
// it wraps ErrRefused, ErrNoRoute or ErrTimeout, or returns err unchanged.
// The DNS client (package resolver) classifies its queries with it.
func Classify(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		return fmt.Errorf("%w", ErrRefused)
	case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH), errors.Is(err, unix.EADDRNOTAVAIL):
		return fmt.Errorf("%w (%v)", ErrNoRoute, unwrapErrno(err))
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), ctx.Err() != nil, errors.Is(err, unix.ETIMEDOUT):
		return fmt.Errorf("no answer: %w", ErrTimeout)
	}
	return err
}

func unwrapErrno(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// dialTCP connects to dst over TCP from inside the namespace, until ctx is
// done. The socket is created on the namespace's thread; the non-blocking
// connect then completes on the runtime's poller.
func (r *Router) dialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	var conn net.Conn
	err := r.in(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	return conn, err
}
