package resolver_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/routing/resolver"
)

// resolvConfTest is a resolv.conf and what it parses to.
type resolvConfTest struct {
	name string
	in   string
	want *resolver.ResolvConf
}

// resolvConfTests are the vectors of TestParseResolvConf, and seeds of
// FuzzParseResolvConf.
func resolvConfTests() []resolvConfTest {
	ap := netip.MustParseAddrPort
	def := resolver.DefaultResolvConf()
	// conf returns the defaults with f applied.
	conf := func(f func(c *resolver.ResolvConf)) *resolver.ResolvConf {
		c := resolver.DefaultResolvConf()
		f(c)
		return c
	}
	return []resolvConfTest{
		{"empty", "", def},
		{"comments only", "# nameserver 192.0.2.1\n; nameserver 192.0.2.2\n", def},
		{"typical", "nameserver 192.0.2.53\nsearch lab.test\n", conf(func(c *resolver.ResolvConf) {
			c.Nameservers = []netip.AddrPort{ap("192.0.2.53:53")}
			c.Search = []string{"lab.test"}
		})},
		{"ipv6 and zone", "nameserver 2001:db8::53\nnameserver fe80::1%eth0\n", conf(func(c *resolver.ResolvConf) {
			c.Nameservers = []netip.AddrPort{ap("[2001:db8::53]:53"), ap("[fe80::1%eth0]:53")}
		})},
		{"at most three nameservers", "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\nnameserver 192.0.2.4\n", conf(func(c *resolver.ResolvConf) {
			c.Nameservers = []netip.AddrPort{ap("192.0.2.1:53"), ap("192.0.2.2:53"), ap("192.0.2.3:53")}
		})},
		{"bad nameserver skipped, not counted", "nameserver bogus\nnameserver 192.0.2.1 # main\nnameserver\n", conf(func(c *resolver.ResolvConf) {
			c.Nameservers = []netip.AddrPort{ap("192.0.2.1:53")}
		})},
		{"comment glued to address", "nameserver 192.0.2.1#x\n", conf(func(c *resolver.ResolvConf) {
			c.Nameservers = []netip.AddrPort{ap("192.0.2.1:53")}
		})},
		{"tabs and CRLF", "nameserver\t192.0.2.1\r\nsearch\ta.test\tb.test\r\n", conf(func(c *resolver.ResolvConf) {
			c.Nameservers = []netip.AddrPort{ap("192.0.2.1:53")}
			c.Search = []string{"a.test", "b.test"}
		})},
		{"last of search and domain wins", "search a.test b.test\ndomain c.test\n", conf(func(c *resolver.ResolvConf) {
			c.Search = []string{"c.test"}
		})},
		{"search after domain", "domain c.test\nsearch a.test. b.test\n", conf(func(c *resolver.ResolvConf) {
			c.Search = []string{"a.test", "b.test"}
		})},
		{"keyword needs a blank", "nameserver192.0.2.1\nsearchx a.test\n", def},
		{"keyword not at line start", " nameserver 192.0.2.1\n", def},
		{"options", "options ndots:3 timeout:2 attempts:4 rotate\n", conf(func(c *resolver.ResolvConf) {
			c.Ndots, c.Timeout, c.Attempts, c.Rotate = 3, 2*time.Second, 4, true
		})},
		{"options capped", "options ndots:99 timeout:600 attempts:99999999999999999999\n", conf(func(c *resolver.ResolvConf) {
			c.Ndots, c.Timeout, c.Attempts = 15, 30*time.Second, 5
		})},
		{"options on several lines", "options ndots:2\noptions rotate\n", conf(func(c *resolver.ResolvConf) {
			c.Ndots, c.Rotate = 2, true
		})},
		{"option garbage ignored", "options ndots: ndots:x timeout edns0 inet6 attempts:3x\n", conf(func(c *resolver.ResolvConf) {
			c.Attempts = 3
		})},
		{"zero timeout and attempts raised to 1", "options timeout:0 attempts:0 ndots:0\n", conf(func(c *resolver.ResolvConf) {
			c.Timeout, c.Attempts, c.Ndots = time.Second, 1, 0
		})},
		{"garbage lines", "hello world\n\x01\x02\xff\nnameserver 192.0.2.9\n=== ===\n", conf(func(c *resolver.ResolvConf) {
			c.Nameservers = []netip.AddrPort{ap("192.0.2.9:53")}
		})},
		{"no final newline", "nameserver 192.0.2.9", conf(func(c *resolver.ResolvConf) {
			c.Nameservers = []netip.AddrPort{ap("192.0.2.9:53")}
		})},
	}
}

func TestParseResolvConf(t *testing.T) {
	for _, tt := range resolvConfTests() {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolver.ParseResolvConf(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("ParseResolvConf: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseResolvConf(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseResolvConfDefaults(t *testing.T) {
	c, err := resolver.ParseResolvConf(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	want := resolver.ResolvConf{Nameservers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")}, Ndots: 1, Timeout: 5 * time.Second, Attempts: 2}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("defaults %+v, want %+v", *c, want)
	}
}

func TestParseNotText(t *testing.T) {
	_, err := resolver.ParseResolvConf(strings.NewReader("nameserver 192.0.2.1\nsearch a\x00b\n"))
	if err == nil || !strings.Contains(err.Error(), "NUL") || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("ParseResolvConf with NUL = %v, want a NUL error at line 2", err)
	}
	_, err = resolver.ParseHosts(strings.NewReader("\x7fELF\x02\x01\x01\x00\x00"))
	if err == nil || !strings.Contains(err.Error(), "not a text file") {
		t.Errorf("ParseHosts of a binary = %v, want a not-text error", err)
	}
}

// hostsFile is the hosts file of TestHosts, and a seed of FuzzParseHosts.
const hostsFile = `# comment
127.0.0.1	localhost
::1		localhost ip6-localhost   # trailing comment
192.0.2.10 Web.Lab.Test web www # alias list
2001:db8::10 web.lab.test
192.0.2.11 web.lab.test
192.0.2.10 web
bogus name.test
fe80::1%eth0 zoned.test
192.0.2.12
192.0.2.13 dotted.test.
#192.0.2.14 commented.test
` + "192.0.2.15 nbsp\u00a0joined vt\vsplit\n192.0.2.16 CAF\u00c9.test\n"

// hostsTests are the names looked up in hostsFile, with their addresses.
var hostsTests = func() []struct {
	name string
	want []netip.Addr
} {
	a := netip.MustParseAddr
	return []struct {
		name string
		want []netip.Addr
	}{
		{"localhost", []netip.Addr{a("127.0.0.1"), a("::1")}},
		{"ip6-localhost", []netip.Addr{a("::1")}},
		{"web.lab.test", []netip.Addr{a("192.0.2.10"), a("2001:db8::10"), a("192.0.2.11")}},
		{"WEB.LAB.TEST.", []netip.Addr{a("192.0.2.10"), a("2001:db8::10"), a("192.0.2.11")}},
		{"web", []netip.Addr{a("192.0.2.10")}},
		{"www", []netip.Addr{a("192.0.2.10")}},
		{"dotted.test", []netip.Addr{a("192.0.2.13")}},
		{"name.test", nil},
		{"zoned.test", nil},
		{"commented.test", nil},
		{"alias", nil},
		// Only C white space separates (fuzzing found U+00A0 did), and
		// only ASCII letters fold, as in glibc's nss_files.
		{"nbsp", nil},
		{"nbsp\u00a0joined", []netip.Addr{a("192.0.2.15")}},
		{"split", []netip.Addr{a("192.0.2.15")}},
		{"CAF\u00c9.TEST", []netip.Addr{a("192.0.2.16")}},
		{"caf\u00e9.test", nil},
		{"", nil},
	}
}()

func TestHosts(t *testing.T) {
	h, err := resolver.ParseHosts(strings.NewReader(hostsFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range hostsTests {
		if got := h.Lookup(tt.name); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Lookup(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
	var nilHosts *resolver.Hosts
	if got := nilHosts.Lookup("localhost"); got != nil {
		t.Errorf("nil Hosts Lookup = %v", got)
	}
}

// containerRoot makes a temporary directory tree with the given files
// (path -> content; content "->X" makes a symlink to X) and returns an
// O_PATH descriptor of it, like nsmount's Target root.
func containerRoot(t *testing.T, files map[string]string) (string, *os.File) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), dir)
	t.Cleanup(func() { f.Close() })
	return dir, f
}

func TestReadResolverFiles(t *testing.T) {
	t.Run("both", func(t *testing.T) {
		_, root := containerRoot(t, map[string]string{
			"etc/resolv.conf": "nameserver 192.0.2.53\nsearch lab.test\noptions ndots:2\n",
			"etc/hosts":       "192.0.2.10 web\n",
		})
		c, h, err := resolver.ReadResolverFiles(root)
		if err != nil {
			t.Fatal(err)
		}
		if c.Nameservers[0] != netip.MustParseAddrPort("192.0.2.53:53") || c.Ndots != 2 || c.Search[0] != "lab.test" {
			t.Errorf("conf %+v", c)
		}
		if got := h.Lookup("web"); len(got) != 1 {
			t.Errorf("hosts web = %v", got)
		}
	})
	t.Run("missing files", func(t *testing.T) {
		_, root := containerRoot(t, nil)
		c, h, err := resolver.ReadResolverFiles(root)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(c, resolver.DefaultResolvConf()) {
			t.Errorf("conf %+v, want defaults", c)
		}
		if h == nil || h.Lookup("localhost") != nil {
			t.Errorf("hosts %v, want empty", h)
		}
	})
	t.Run("dangling symlink is missing", func(t *testing.T) {
		_, root := containerRoot(t, map[string]string{"etc/resolv.conf": "->/run/nowhere"})
		c, _, err := resolver.ReadResolverFiles(root)
		if err != nil || !reflect.DeepEqual(c, resolver.DefaultResolvConf()) {
			t.Errorf("got %+v, %v; want defaults", c, err)
		}
	})
	t.Run("escaping symlinks stay inside the root", func(t *testing.T) {
		// From the host's root, these would name host files.
		for _, target := range []string{"/../../../../../../run/systemd/resolve/resolv.conf", "../../../../../../../run/systemd/resolve/resolv.conf"} {
			_, root := containerRoot(t, map[string]string{
				"etc/resolv.conf":                 "->" + target,
				"etc/hosts":                       "->/../../../../etc/hosts2",
				"etc/hosts2":                      "192.0.2.78 inside\n",
				"run/systemd/resolve/resolv.conf": "nameserver 192.0.2.77\n",
			})
			c, h, err := resolver.ReadResolverFiles(root)
			if err != nil {
				t.Fatalf("symlink to %s: %v", target, err)
			}
			if c.Nameservers[0] != netip.MustParseAddrPort("192.0.2.77:53") {
				t.Errorf("symlink to %s: %+v, want the root's own file", target, c)
			}
			if h.Lookup("inside") == nil {
				t.Errorf("hosts symlink did not resolve inside the root")
			}
		}
	})
	t.Run("symlink to itself", func(t *testing.T) {
		_, root := containerRoot(t, map[string]string{"etc/resolv.conf": "->/../../../../../etc/resolv.conf"})
		_, _, err := resolver.ReadResolverFiles(root)
		if !errors.Is(err, syscall.ELOOP) {
			t.Errorf("ReadResolverFiles = %v, want ELOOP", err)
		}
	})
	t.Run("too large, fast", func(t *testing.T) {
		dir, root := containerRoot(t, map[string]string{"etc/hosts": ""})
		f, err := os.Create(filepath.Join(dir, "etc/resolv.conf"))
		if err != nil {
			t.Fatal(err)
		}
		// 10 MB of real data, not a sparse file.
		line := strings.Repeat("# padding padding padding padding padding padding padding\n", 1000)
		for written := 0; written < 10<<20; written += len(line) {
			if _, err := f.WriteString(line); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
		st, _ := os.Stat(f.Name())
		start := time.Now()
		_, _, err = resolver.ReadResolverFiles(root)
		if err == nil || !strings.Contains(err.Error(), "resolv.conf is too large") || !strings.Contains(err.Error(), "max 65536") {
			t.Fatalf("ReadResolverFiles of %d bytes = %v, want too large", st.Size(), err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("refusing a 10 MB file took %v", d)
		}
		t.Logf("error: %v", err)
	})
	t.Run("hosts too large", func(t *testing.T) {
		_, root := containerRoot(t, map[string]string{"etc/hosts": strings.Repeat("x", 65537)})
		_, _, err := resolver.ReadResolverFiles(root)
		if err == nil || !strings.Contains(err.Error(), "hosts is too large (65537 bytes, max 65536)") {
			t.Errorf("ReadResolverFiles = %v, want hosts too large", err)
		}
	})
	t.Run("exactly 64 KiB", func(t *testing.T) {
		_, root := containerRoot(t, map[string]string{"etc/hosts": strings.Repeat("#", 65535) + "\n"})
		if _, _, err := resolver.ReadResolverFiles(root); err != nil {
			t.Errorf("ReadResolverFiles of a 64 KiB hosts: %v", err)
		}
	})
	t.Run("FIFO does not block", func(t *testing.T) {
		dir, root := containerRoot(t, map[string]string{"etc/hosts": ""})
		if err := unix.Mkfifo(filepath.Join(dir, "etc/resolv.conf"), 0o644); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, _, err := resolver.ReadResolverFiles(root)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file (FIFO)") {
				t.Errorf("ReadResolverFiles with a FIFO = %v, want not a regular file", err)
			}
		case <-time.After(10 * time.Second):
			// Unblock the reader so the test can end.
			w, _ := os.OpenFile(filepath.Join(dir, "etc/resolv.conf"), os.O_WRONLY|unix.O_NONBLOCK, 0)
			if w != nil {
				w.Close()
			}
			t.Fatal("ReadResolverFiles blocked on a FIFO")
		}
	})
	t.Run("device refused", func(t *testing.T) {
		_, root := containerRoot(t, map[string]string{"etc/hosts": "->/dev/null"})
		// /dev/null inside the temp root does not exist: make one.
		_, _, err := resolver.ReadResolverFiles(root)
		if err != nil {
			t.Fatalf("dangling /dev/null symlink: %v, want empty hosts", err)
		}
		if os.Geteuid() != 0 {
			return
		}
		dir, root := containerRoot(t, nil)
		os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
		if err := unix.Mknod(filepath.Join(dir, "etc/hosts"), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3))); err != nil {
			t.Skipf("mknod: %v", err)
		}
		_, _, err = resolver.ReadResolverFiles(root)
		if err == nil || !strings.Contains(err.Error(), "character device") {
			t.Errorf("ReadResolverFiles with a device = %v, want not a regular file", err)
		}
	})
	t.Run("directory refused", func(t *testing.T) {
		_, root := containerRoot(t, map[string]string{"etc/resolv.conf/x": ""})
		_, _, err := resolver.ReadResolverFiles(root)
		if err == nil || !strings.Contains(err.Error(), "directory") {
			t.Errorf("ReadResolverFiles with a directory = %v", err)
		}
	})
}
