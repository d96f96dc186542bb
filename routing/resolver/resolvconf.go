package resolver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Limits and defaults of resolv.conf(5) as glibc applies them.
const (
	// MaxNameservers is how many nameserver lines are used (glibc MAXNS);
	// later ones are ignored.
	MaxNameservers = 3
	// MaxNdots caps options ndots:N (glibc RES_MAXNDOTS).
	MaxNdots = 15
	// MaxTimeout caps options timeout:N (glibc RES_MAXRETRANS seconds).
	MaxTimeout = 30 * time.Second
	// MaxAttempts caps options attempts:N (glibc RES_MAXRETRY).
	MaxAttempts = 5

	defaultNdots    = 1
	defaultTimeout  = 5 * time.Second
	defaultAttempts = 2
)

// ResolvConf is the part of a resolv.conf(5) that decides how a name is
// resolved, read the way glibc reads it.
type ResolvConf struct {
	// Nameservers are the servers to ask, in file order, at most
	// MaxNameservers, port 53. An IPv6 link-local server may carry a zone
	// (fe80::1%eth0); the zone names an interface of the container's
	// network namespace. Without any nameserver line: 127.0.0.1:53.
	Nameservers []netip.AddrPort
	// Search is the search list (from the last "search" or "domain" line).
	Search []string
	// Ndots: a name with at least this many dots is tried as is before
	// the search list (default 1, at most MaxNdots).
	Ndots int
	// Timeout bounds each try of one query to one server (default 5s, at
	// most MaxTimeout).
	Timeout time.Duration
	// Attempts is how many rounds over all nameservers are made (default
	// 2, at most MaxAttempts).
	Attempts int
	// Rotate: each resolution starts at the next nameserver instead of the
	// first (options rotate).
	Rotate bool
}

// DefaultResolvConf returns what glibc uses without a resolv.conf: the
// local nameserver 127.0.0.1:53, no search list, ndots 1, timeout 5s,
// 2 attempts.
func DefaultResolvConf() *ResolvConf {
	return &ResolvConf{
		Nameservers: []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 53)},
		Ndots:       defaultNdots,
		Timeout:     defaultTimeout,
		Attempts:    defaultAttempts,
	}
}

// ParseResolvConf reads a resolv.conf(5) like glibc's resolver does:
// nameserver (IPv4, IPv6, IPv6 with a zone), domain, search and options
// ndots:N, timeout:N, attempts:N and rotate. Comment lines (# or ;),
// unknown keywords, unknown options and malformed values are ignored, as
// glibc ignores them. Input that is not text (it contains a NUL byte) is an
// error.
func ParseResolvConf(r io.Reader) (*ResolvConf, error) {
	c := DefaultResolvConf()
	c.Nameservers = nil
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxResolverFile+1)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if i := bytes.IndexByte(line, 0); i >= 0 {
			return nil, fmt.Errorf("parsing resolv.conf: line %d: NUL byte: not a text file", n)
		}
		parseResolvLine(c, string(line))
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("parsing resolv.conf: line longer than %d bytes", maxResolverFile)
		}
		return nil, fmt.Errorf("parsing resolv.conf: %w", err)
	}
	if len(c.Nameservers) == 0 {
		c.Nameservers = DefaultResolvConf().Nameservers
	}
	return c, nil
}

// parseResolvLine applies one line of resolv.conf to c.
func parseResolvLine(c *ResolvConf, line string) {
	if line == "" || line[0] == '#' || line[0] == ';' {
		return
	}
	// glibc matches the keyword at the start of the line, followed by a
	// space or tab.
	i := strings.IndexAny(line, " \t")
	if i < 0 {
		return
	}
	keyword, rest := line[:i], line[i+1:]
	fields := strings.FieldsFunc(rest, func(r rune) bool { return r == ' ' || r == '\t' || r == '\r' })
	switch keyword {
	case "nameserver":
		if len(fields) == 0 || len(c.Nameservers) >= MaxNameservers {
			return
		}
		// glibc stops the address at a comment character.
		s := fields[0]
		if i := strings.IndexAny(s, "#;"); i >= 0 {
			s = s[:i]
		}
		a, err := netip.ParseAddr(s)
		if err != nil || (a.Zone() != "" && !a.Is6()) {
			return
		}
		c.Nameservers = append(c.Nameservers, netip.AddrPortFrom(a, 53))
	case "domain":
		if len(fields) == 0 {
			return
		}
		// "domain ." names the root: no search domain (found by
		// FuzzParseResolvConf; glibc's search list ignores "." too).
		c.Search = nil
		if d := strings.TrimRight(fields[0], "."); d != "" {
			c.Search = []string{d}
		}
	case "search":
		if len(fields) == 0 {
			return
		}
		c.Search = c.Search[:0:0]
		for _, d := range fields {
			// "." or ".." names the root: no search domain (found by
			// FuzzParseResolvConf).
			if d = strings.TrimRight(d, "."); d != "" {
				c.Search = append(c.Search, d)
			}
		}
	case "options":
		for _, o := range fields {
			parseResolvOption(c, o)
		}
	}
}

// parseResolvOption applies one word of an options line.
func parseResolvOption(c *ResolvConf, o string) {
	if o == "rotate" {
		c.Rotate = true
		return
	}
	name, val, ok := strings.Cut(o, ":")
	if !ok {
		return
	}
	// glibc reads the number with atoi: leading digits count, garbage
	// after them does not.
	end := 0
	for end < len(val) && val[end] >= '0' && val[end] <= '9' {
		end++
	}
	if end == 0 {
		return
	}
	n, err := strconv.Atoi(val[:end])
	if err != nil {
		n = 1 << 30 // too many digits: capped below
	}
	switch name {
	case "ndots":
		c.Ndots = min(n, MaxNdots)
	case "timeout":
		// glibc would take 0; a try that cannot wait is useless, so the
		// minimum is 1s.
		c.Timeout = time.Duration(min(max(n, 1), int(MaxTimeout/time.Second))) * time.Second
	case "attempts":
		c.Attempts = min(max(n, 1), MaxAttempts)
	}
}
