package cachectl

import "testing"

// FuzzSourceServer: the source of a mount that nsmount did not make (an
// orphan's) is whatever its maker wrote: never a panic, and an address
// only when it is one.
func FuzzSourceServer(f *testing.F) {
	for _, s := range []string{"198.51.100.1:/export", "[2001:db8::1]:/export", "nfs.example.test:/x", "[::ffff:192.0.2.1]:/", "[", "]:/", ":/", "tmpfs"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, source string) {
		a := sourceServer(source)
		if a.IsValid() && (a.Is4In6() || a.Zone() != "") {
			t.Fatalf("sourceServer(%q) = %v: mapped or zoned", source, a)
		}
	})
}
