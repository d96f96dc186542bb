package resolver_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/routing/resolver"
)

// FuzzParseResolvConf: any text parses (or is refused as not text) into a
// configuration within glibc's limits, and writing that configuration out
// as a resolv.conf and parsing it again gives the same one.
func FuzzParseResolvConf(f *testing.F) {
	for _, tt := range resolvConfTests() {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := resolver.ParseResolvConf(strings.NewReader(in))
		if err != nil {
			if !strings.Contains(in, "\x00") && !strings.Contains(err.Error(), "line longer than") {
				t.Fatalf("ParseResolvConf(%q): %v", in, err)
			}
			return
		}
		if n := len(c.Nameservers); n < 1 || n > resolver.MaxNameservers {
			t.Errorf("%d nameservers", n)
		}
		for _, s := range c.Nameservers {
			if !s.Addr().IsValid() || s.Port() != 53 || (s.Addr().Zone() != "" && !s.Addr().Is6()) {
				t.Errorf("nameserver %v", s)
			}
		}
		for _, d := range c.Search {
			if d == "" || strings.HasSuffix(d, ".") || strings.ContainsAny(d, " \t\n") {
				t.Errorf("search domain %q", d)
			}
		}
		if c.Ndots < 0 || c.Ndots > resolver.MaxNdots || c.Timeout < time.Second || c.Timeout > resolver.MaxTimeout ||
			c.Timeout%time.Second != 0 || c.Attempts < 1 || c.Attempts > resolver.MaxAttempts {
			t.Errorf("options out of range: %+v", c)
		}
		again, err := resolver.ParseResolvConf(strings.NewReader(formatResolvConf(c)))
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Errorf("round trip of %q:\n%s\n= %+v, %v\nwant %+v", in, formatResolvConf(c), again, err, c)
		}
	})
}

// formatResolvConf writes c as a resolv.conf.
func formatResolvConf(c *resolver.ResolvConf) string {
	var b strings.Builder
	for _, s := range c.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", s.Addr())
	}
	if len(c.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(c.Search, " "))
	}
	fmt.Fprintf(&b, "options ndots:%d timeout:%d attempts:%d\n", c.Ndots, c.Timeout/time.Second, c.Attempts)
	if c.Rotate {
		b.WriteString("options rotate\n")
	}
	return b.String()
}

// FuzzParseHosts: any text parses (or is refused as not text), and a
// lookup gives what a plain reading of hosts(5) as glibc's nss_files reads
// it gives: lines split at "\n", "#" starts a comment, fields separated by
// C white space (space, \t, \n, \v, \f, \r), the first field an address,
// names compared ASCII case-insensitively, a trailing dot ignored.
func FuzzParseHosts(f *testing.F) {
	for _, tt := range hostsTests {
		f.Add(hostsFile, tt.name)
	}
	f.Add("192.0.2.1 a\u00a0b c\n", "a")
	f.Add("192.0.2.1 CAF\u00c9\n", "caf\u00e9")
	f.Fuzz(func(t *testing.T, in, name string) {
		h, err := resolver.ParseHosts(strings.NewReader(in))
		if err != nil {
			if !strings.Contains(in, "\x00") && !strings.Contains(err.Error(), "line longer than") {
				t.Fatalf("ParseHosts(%q): %v", in, err)
			}
			return
		}
		got := h.Lookup(name)
		want := lookupHostsModel(in, name)
		if !slices.Equal(got, want) {
			t.Errorf("Lookup(%q) in %q = %v, want %v", name, in, got, want)
		}
	})
}

// lookupHostsModel looks name up in the hosts file text in, simply.
func lookupHostsModel(in, name string) []netip.Addr {
	key := asciiLower(strings.TrimSuffix(name, "."))
	if key == "" {
		return nil
	}
	var out []netip.Addr
	for line := range strings.SplitSeq(in, "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.FieldsFunc(line, func(r rune) bool { return strings.ContainsRune(" \t\n\v\f\r", r) })
		if len(f) < 2 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err != nil || a.Zone() != "" {
			continue
		}
		for _, n := range f[1:] {
			if asciiLower(strings.TrimSuffix(n, ".")) == key && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
