package routing

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Family restricts the address family of candidate server addresses.
type Family int

const (
	// AnyFamily accepts IPv4 and IPv6.
	AnyFamily Family = iota
	// IPv4 accepts IPv4 only (mount option proto=tcp).
	IPv4
	// IPv6 accepts IPv6 only (mount option proto=tcp6).
	IPv6
)

// String names the family as in mount options.
func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return "any"
}

func (f Family) accepts(a netip.Addr) bool {
	switch f {
	case IPv4:
		return a.Is4()
	case IPv6:
		return a.Is6()
	}
	return true
}

// Preflight says which reachability checks a candidate must pass.
type Preflight struct {
	// NFSPort is the NFS server's TCP port (2049 unless port= says so).
	NFSPort uint16
	// V3 adds the NFSv3 side services: the portmapper, and mountd at
	// MountPort (asked from the portmapper when 0).
	V3        bool
	MountPort uint16
	// Timeout bounds each check.
	Timeout time.Duration
}

// Check is one reachability check of a candidate.
type Check struct {
	// What is checked, e.g. "nfs tcp/2049".
	What string `json:"what"`
	// OK reports success; Error says why not.
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Took is how long the check took.
	Took time.Duration `json:"took_ns"`
}

// Candidate is one server address considered for a mount.
type Candidate struct {
	// Addr is the address.
	Addr netip.Addr `json:"address"`
	// Route is the route to Addr in the namespace; nil if there is none.
	Route *Route `json:"route,omitempty"`
	// Checks are the preflight checks made, in order.
	Checks []Check `json:"checks,omitempty"`
	// Rejected says why the candidate was not chosen ("" if it was, or
	// was not tried because an earlier one was chosen).
	Rejected string `json:"rejected,omitempty"`
	// Chosen marks the address used.
	Chosen bool `json:"chosen,omitempty"`

	err error
}

// Choose picks the first of addrs (in their order) that the family allows,
// that the namespace has a route to, and that passes the preflight checks.
// Every candidate considered is returned with its route, checks and the
// reason it was rejected. Without a choice, the error wraps ErrNoRoute,
// ErrRefused, ErrTimeout or ErrNotRegistered from the first rejected
// candidate, and names each candidate's reason.
func (r *Router) Choose(ctx context.Context, addrs []netip.Addr, fam Family, pf Preflight) ([]Candidate, error) {
	cands := make([]Candidate, 0, len(addrs))
	for _, a := range addrs {
		c := Candidate{Addr: a}
		if !fam.accepts(a) {
			c.Rejected = "address family excluded (" + fam.String() + " only)"
			cands = append(cands, c)
			continue
		}
		route, err := r.Lookup(a)
		if err != nil {
			c.err, c.Rejected = err, err.Error()
			cands = append(cands, c)
			continue
		}
		c.Route = &route
		if err := r.preflight(ctx, &c, pf); err != nil {
			c.err, c.Rejected = err, err.Error()
			cands = append(cands, c)
			continue
		}
		c.Chosen = true
		cands = append(cands, c)
		return cands, nil
	}
	return cands, noChoice(cands)
}

// preflight runs pf's checks against c, recording each.
func (r *Router) preflight(ctx context.Context, c *Candidate, pf Preflight) error {
	check := func(what string, fn func() error) error {
		start := time.Now()
		err := fn()
		ch := Check{What: what, OK: err == nil, Took: time.Since(start)}
		if err != nil {
			ch.Error = err.Error()
		}
		c.Checks = append(c.Checks, ch)
		return err
	}
	probe := func(port uint16) func() error {
		return func() error { return r.Probe(ctx, netip.AddrPortFrom(c.Addr, port), pf.Timeout) }
	}
	if err := check(fmt.Sprintf("nfs tcp/%d", pf.NFSPort), probe(pf.NFSPort)); err != nil {
		return err
	}
	if !pf.V3 {
		return nil
	}
	if err := check("portmapper tcp/111", probe(111)); err != nil {
		return err
	}
	port := pf.MountPort
	if port == 0 {
		err := check("portmapper: mountd v3 registered", func() error {
			var err error
			port, err = r.PortmapGetPort(ctx, c.Addr, ProgMount, 3, pf.Timeout)
			return err
		})
		if err != nil {
			return err
		}
	}
	return check(fmt.Sprintf("mountd tcp/%d", port), probe(port))
}

// noChoice builds the error for a Choose that found nothing.
func noChoice(cands []Candidate) error {
	if len(cands) == 0 {
		return errors.New("no address to try")
	}
	var first error
	reasons := make([]string, 0, len(cands))
	for _, c := range cands {
		reasons = append(reasons, c.Addr.String()+": "+c.Rejected)
		if first == nil && c.err != nil {
			first = c.err
		}
	}
	msg := strings.Join(reasons, "; ")
	if first == nil {
		return errors.New(msg)
	}
	if len(cands) == 1 {
		return first
	}
	return fmt.Errorf("%s: %w", msg, classOf(first))
}

// classOf returns the package error class that err wraps, or err.
func classOf(err error) error {
	for _, c := range []error{ErrNoRoute, ErrRefused, ErrTimeout, ErrNotRegistered} {
		if errors.Is(err, c) {
			return c
		}
	}
	return err
}
