package resolver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
)

// Hosts is a parsed hosts(5) file: names (canonical names and aliases) and
// their addresses. The zero value and nil are empty.
type Hosts struct {
	addrs map[string][]netip.Addr // lower-case name without trailing dot
}

// ParseHosts reads a hosts(5) file: "ADDRESS NAME [ALIAS...]" per line,
// "#" starts a comment, fields separated by ASCII white space, IPv4 and
// IPv6 addresses. Lines whose address does
// not parse (including IPv6 with a zone, which glibc refuses too) are
// ignored. Input that is not text (it contains a NUL byte) is an error.
func ParseHosts(r io.Reader) (*Hosts, error) {
	h := &Hosts{addrs: make(map[string][]netip.Addr)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxResolverFile+1)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if bytes.IndexByte(line, 0) >= 0 {
			return nil, fmt.Errorf("parsing hosts: line %d: NUL byte: not a text file", n)
		}
		s := string(line)
		if i := strings.IndexByte(s, '#'); i >= 0 {
			s = s[:i]
		}
		// Fields are separated by C white space only, as nss_files
		// splits them (isspace): not by U+00A0 or other Unicode spaces.
		f := strings.FieldsFunc(s, isCSpace)
		if len(f) < 2 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err != nil || a.Zone() != "" {
			continue
		}
		for _, name := range f[1:] {
			k := hostKey(name)
			if k == "" {
				continue
			}
			if !slices.Contains(h.addrs[k], a) {
				h.addrs[k] = append(h.addrs[k], a)
			}
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("parsing hosts: line longer than %d bytes", maxResolverFile)
		}
		return nil, fmt.Errorf("parsing hosts: %w", err)
	}
	return h, nil
}

// Lookup returns the addresses of name in file order (IPv4 and IPv6, from
// every line that lists it), or nil. Names compare ASCII case-insensitively; a
// trailing dot is ignored.
func (h *Hosts) Lookup(name string) []netip.Addr {
	if h == nil {
		return nil
	}
	addrs := h.addrs[hostKey(name)]
	if len(addrs) == 0 {
		return nil
	}
	return append([]netip.Addr(nil), addrs...)
}

// hostKey is the map key of a name: without a trailing dot, ASCII letters
// in lower case (nss_files compares with strcasecmp, which folds no
// multi-byte character).
func hostKey(name string) string {
	b := []byte(strings.TrimSuffix(name, "."))
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// isCSpace reports whether r is white space in the C locale.
func isCSpace(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}
