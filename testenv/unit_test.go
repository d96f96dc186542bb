package testenv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/ulikunitz/xz"
)

func TestParseModinfoDepends(t *testing.T) {
	tests := []struct {
		name    string
		modinfo string
		want    []string
	}{
		{"none", "license=GPL\x00depends=\x00vermagic=6.1\x00", nil},
		{"one", "depends=sunrpc\x00", []string{"sunrpc"}},
		{"several", "alias=fs-nfs\x00depends=sunrpc,fscache,netfs,lockd\x00intree=Y\x00", []string{"sunrpc", "fscache", "netfs", "lockd"}},
		{"dashes normalized", "depends=dns-resolver\x00", []string{"dns_resolver"}},
		{"missing key", "license=GPL\x00", nil},
		{"key as value is not a key", "description=depends=x\x00", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseModinfoDepends([]byte(tt.modinfo)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestModuleClosure(t *testing.T) {
	graph := map[string][]string{
		"nfs":    {"sunrpc", "lockd", "fscache"},
		"nfsv4":  {"nfs", "sunrpc", "dns_resolver"},
		"lockd":  {"sunrpc", "grace"},
		"sunrpc": nil, "grace": nil, "fscache": {"netfs"}, "netfs": nil, "dns_resolver": nil, "veth": nil,
		"a": {"b"}, "b": {"a"},
	}
	deps := func(n string) ([]string, error) {
		d, ok := graph[n]
		if !ok {
			return nil, errors.New("no module " + n)
		}
		return d, nil
	}
	tests := []struct {
		name    string
		roots   []string
		want    []string
		wantErr string
	}{
		{"leaf", []string{"veth"}, []string{"veth"}, ""},
		{"deps first, sorted", []string{"nfsv4"}, []string{"dns_resolver", "netfs", "fscache", "grace", "sunrpc", "lockd", "nfs", "nfsv4"}, ""},
		{"shared deps once", []string{"nfs", "nfsv4", "veth"}, []string{"netfs", "fscache", "grace", "sunrpc", "lockd", "nfs", "dns_resolver", "nfsv4", "veth"}, ""},
		{"cycle", []string{"a"}, nil, "cycle: a -> b -> a"},
		{"missing", []string{"nope"}, nil, "no module nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := moduleClosure(tt.roots, deps)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// cachedModDir returns the module tree of a kernel in the lab cache, if one
// has been fetched.
// cachedModDirs returns the module trees of the kernels in the lab cache
// (6.1 with plain modules, 6.12 with .ko.xz once fetched).
func cachedModDirs(t *testing.T) []string {
	t.Helper()
	dir := os.Getenv(EnvCache)
	if dir == "" {
		dir = DefaultCacheDir
	}
	dirs, _ := filepath.Glob(filepath.Join(dir, "kernel-*", "lib", "modules", "*"))
	if len(dirs) == 0 {
		t.Skipf("no kernel in the lab cache %s yet (run nsmount-lab fetch or the lab tests first)", dir)
	}
	return dirs
}

func TestResolveModulesRealKernel(t *testing.T) {
	for _, modDir := range cachedModDirs(t) {
		t.Run(filepath.Base(modDir), func(t *testing.T) { testResolveModules(t, modDir) })
	}
}

func testResolveModules(t *testing.T, modDir string) {
	paths, err := ResolveModules(modDir, labModules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	pos := map[string]int{}
	for i, p := range paths {
		if !strings.HasSuffix(p, ".ko") {
			t.Errorf("%s: not a plain module", p)
		}
		n := normModName(strings.TrimSuffix(filepath.Base(p), ".ko"))
		names = append(names, n)
		pos[n] = i
	}
	t.Logf("load order: %s", strings.Join(names, " "))
	for _, want := range []string{"sunrpc", "grace", "lockd", "nfs", "nfsv3", "nfsv4", "nfsd", "veth", "auth_rpcgss", "nfs_acl"} {
		if _, ok := pos[want]; !ok {
			t.Errorf("module %s missing from closure", want)
		}
	}
	for i, p := range paths {
		deps, err := ModuleDepends(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deps {
			if j, ok := pos[d]; !ok || j >= i {
				t.Errorf("%s depends on %s, which is not loaded before it", names[i], d)
			}
		}
	}
	data, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	stripped, err := StripModuleSignature(data)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.HasSuffix(data, []byte(sigMagic)) && len(stripped) >= len(data) {
		t.Errorf("signed module %s not shortened", paths[0])
	}
}

// signed appends a fake module signature of n bytes to body.
func signed(body string, n int) []byte {
	b := []byte(body)
	b = append(b, bytes.Repeat([]byte{0xAA}, n)...)
	info := make([]byte, moduleSigInfoLen)
	info[2] = 2 // PKEY_ID_PKCS7
	binary.BigEndian.PutUint32(info[8:], uint32(n))
	b = append(b, info...)
	return append(b, sigMagic...)
}

func TestStripModuleSignature(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    string
		wantErr bool
	}{
		{"unsigned", []byte("\x7fELF body"), "\x7fELF body", false},
		{"signed", signed("\x7fELF body", 40), "\x7fELF body", false},
		{"empty signature", signed("\x7fELF", 0), "\x7fELF", false},
		{"marker only", []byte(sigMagic), "", true},
		{"length too big", append(append([]byte("x"), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0}...), sigMagic...), "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := StripModuleSignature(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestArchiveRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	a := newArchive(&buf)
	steps := []error{
		a.symlink("/bin", "usr/bin"),
		a.file("/usr/bin/tool", []byte("#!/bin/sh\necho hi\n"), 0o755),
		a.file("/usr/bin/tool", []byte("duplicate is ignored"), 0o644),
		a.symlink("/usr/bin/sh", "dash"),
		a.dir("/var/lib/nfs"),
		a.file("/etc/hosts", []byte("127.0.0.1 localhost\n"), 0o644),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%512 != 0 {
		t.Errorf("archive length %d not padded to 512", buf.Len())
	}
	type entry struct {
		name, link, data string
		mode             cpio.FileMode
	}
	var got []entry
	r := cpio.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, entry{h.Name, h.Linkname, string(data), h.Mode})
	}
	want := []entry{
		{"bin", "usr/bin", "", cpio.TypeSymlink | 0o777},
		{"usr", "", "", cpio.TypeDir | 0o755},
		{"usr/bin", "", "", cpio.TypeDir | 0o755},
		{"usr/bin/tool", "", "#!/bin/sh\necho hi\n", cpio.TypeReg | 0o755},
		{"usr/bin/sh", "dash", "", cpio.TypeSymlink | 0o777},
		{"var", "", "", cpio.TypeDir | 0o755},
		{"var/lib", "", "", cpio.TypeDir | 0o755},
		{"var/lib/nfs", "", "", cpio.TypeDir | 0o755},
		{"etc", "", "", cpio.TypeDir | 0o755},
		{"etc/hosts", "", "127.0.0.1 localhost\n", cpio.TypeReg | 0o644},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
}

func TestGuestPath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"},
		{"/lib64/ld-linux-x86-64.so.2", "/usr/lib64/ld-linux-x86-64.so.2"},
		{"/sbin/rpc.nfsd", "/usr/sbin/rpc.nfsd"},
		{"/bin", "/usr/bin"},
		{"/usr/bin/mount", "/usr/bin/mount"},
		{"/binx/y", "/binx/y"},
		{"etc//hosts", "/etc/hosts"},
	}
	for _, tt := range tests {
		if got := guestPath(tt.in); got != tt.want {
			t.Errorf("guestPath(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseLdd(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffc8b3f2000)\n" +
		"\tlibtirpc.so.3 => /lib/x86_64-linux-gnu/libtirpc.so.3 (0x00007f)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n" +
		"\tlibmissing.so => not found\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
	want := []string{"/lib/x86_64-linux-gnu/libtirpc.so.3", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if got := parseLdd([]byte(out)); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParseAptDepends(t *testing.T) {
	tests := []struct {
		name, out, want string
		wantErr         bool
	}{
		{"debian 12", "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n", "6.1.0-56-cloud-amd64", false},
		{"skips virtual", "linux-image-cloud-amd64\n  Depends: <linux-image-virtual>\n  Depends: linux-image-6.12.9-cloud-amd64\n", "6.12.9-cloud-amd64", false},
		{"none", "linux-image-cloud-amd64\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseAptDepends([]byte(tt.out))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("got %q, %v; want %q, err %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseChecks(t *testing.T) {
	out := "boot noise\n" +
		"LAB-CHECK PASS mount-v4\n" +
		"[   7.1] LAB-CHECK FAIL reroute: exit 1: cat: can't open '/data/x'\n" +
		"LAB-CHECK FAIL bare\n" +
		"LAB-CHECK SKIP ignored\n" +
		"LAB-CHECK PASS with-colon: is part of the name\n"
	want := []Check{
		{Name: "mount-v4", Passed: true},
		{Name: "reroute", Detail: "exit 1: cat: can't open '/data/x'"},
		{Name: "bare"},
		{Name: "with-colon: is part of the name", Passed: true},
	}
	got := (&Result{Output: out}).Checks()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestGuestTimeout(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{{"5m", 280}, {"30s", 10}, {"10s", 5}, {"1s", 5}}
	for _, tt := range tests {
		d, _ := time.ParseDuration(tt.in)
		if got := guestTimeout(d); got != tt.want {
			t.Errorf("guestTimeout(%s) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

// TestQemuMachineSize: guest RAM and vCPUs come from Config (defaults 768
// MiB, 1 vCPU) unless a run's options say otherwise; nonsense is refused.
func TestQemuMachineSize(t *testing.T) {
	tests := []struct {
		name             string
		cfg              Config
		opts             []RunOption
		wantMem, wantCPU string
		wantErr          bool
	}{
		{"defaults", Config{}, nil, "768", "1", false},
		{"config", Config{Memory: 1024, VCPUs: 2}, nil, "1024", "2", false},
		{"run options", Config{}, []RunOption{WithVCPUs(2), WithMemory(1536)}, "1536", "2", false},
		{"run option over config", Config{VCPUs: 2}, []RunOption{WithVCPUs(1)}, "768", "1", false},
		{"zero vCPUs", Config{}, []RunOption{WithVCPUs(0)}, "", "", true},
		{"negative memory", Config{}, []RunOption{WithMemory(-1)}, "", "", true},
		{"containerd raises memory", Config{}, []RunOption{WithContainerd()}, "1536", "1", false},
		{"containerd keeps more", Config{Memory: 2048}, []RunOption{WithContainerd()}, "2048", "1", false},
		{"containerd after memory", Config{}, []RunOption{WithMemory(1024), WithContainerd()}, "1024", "1", false},
		{"containerd before memory", Config{}, []RunOption{WithContainerd(), WithMemory(1024)}, "1024", "1", false},
		{"ganesha keeps the default", Config{}, []RunOption{WithGanesha()}, "768", "1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &Lab{cfg: tt.cfg.withDefaults(), kernel: &kernel{version: "6.1.0-0-cloud-amd64", dir: "/k"}}
			rc, err := l.runConfig(tt.opts)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("runConfig = %+v, want an error", rc)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			args := l.qemuArgs("/initrd", rc)
			flag := func(name string) string {
				i := slices.Index(args, name)
				if i < 0 || i+1 == len(args) {
					t.Fatalf("no %s in %q", name, args)
				}
				return args[i+1]
			}
			if got := flag("-m"); got != tt.wantMem {
				t.Errorf("-m %s, want %s", got, tt.wantMem)
			}
			if got := flag("-smp"); got != tt.wantCPU {
				t.Errorf("-smp %s, want %s", got, tt.wantCPU)
			}
		})
	}
}

// TestPlainModule decompresses a .ko.xz beside itself once, and leaves a
// plain .ko alone.
func TestPlainModule(t *testing.T) {
	dir := t.TempDir()
	image := []byte("\x7fELF not really a module")
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(image); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	xzPath := filepath.Join(dir, "nfs.ko.xz")
	if err := os.WriteFile(xzPath, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		p, err := plainModule(xzPath)
		if err != nil {
			t.Fatal(err)
		}
		if p != filepath.Join(dir, "nfs.ko") {
			t.Fatalf("run %d: plainModule = %s", i, p)
		}
		if got, _ := os.ReadFile(p); !bytes.Equal(got, image) {
			t.Errorf("run %d: decompressed %q", i, got)
		}
	}
	if p, err := plainModule(filepath.Join(dir, "nfs.ko")); err != nil || p != filepath.Join(dir, "nfs.ko") {
		t.Errorf("plain: %s, %v", p, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bad.ko.xz"), []byte("not xz"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := plainModule(filepath.Join(dir, "bad.ko.xz")); err == nil || !strings.Contains(err.Error(), "decompress") {
		t.Errorf("corrupt .ko.xz: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.ko")); !os.IsNotExist(err) {
		t.Errorf("corrupt .ko.xz left bad.ko: %v", err)
	}
	for _, tt := range []struct {
		file, name string
		ok         bool
	}{{"nfs.ko", "nfs", true}, {"nfs_layout-nfsv41_files.ko.xz", "nfs_layout_nfsv41_files", true}, {"modules.dep", "", false}, {"x.ko.zst", "", false}} {
		if name, ok := moduleName(tt.file); name != tt.name || ok != tt.ok {
			t.Errorf("moduleName(%q) = %q, %v", tt.file, name, ok)
		}
	}
}

func TestParseAptCandidate(t *testing.T) {
	tests := []struct {
		name, out, want string
		wantErr         bool
	}{
		{"debian 12", "nfs-ganesha:\n  Installed: (none)\n  Candidate: 4.3-2\n  Version table:\n     4.3-2 500\n", "4.3-2", false},
		{"epoch", "libwbclient0:\n  Installed: (none)\n  Candidate: 2:4.17.12+dfsg-0+deb12u4\n", "2:4.17.12+dfsg-0+deb12u4", false},
		{"no candidate", "nfs-ganesha:\n  Installed: (none)\n  Candidate: (none)\n", "", true},
		{"unknown package", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseAptCandidate([]byte(tt.out))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("got %q, %v; want %q, err %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestParseAptDependsPackages reads apt-cache depends output as Debian 12
// prints it for nfs-ganesha and libdbus-1-3: first alternatives only,
// virtual packages and other relations left out.
func TestParseAptDependsPackages(t *testing.T) {
	out := "nfs-ganesha\n  Depends: dbus\n  Depends: libntirpc4.3\n  Depends: liburcu8\n" +
		"  Recommends: nfs-ganesha-vfs\n  Suggests: nfs-ganesha-doc\n" +
		"libdbus-1-3\n  Depends: libc6\n  Depends: libsystemd0\n    libelogind0\n" +
		"  |Depends: libfoo1\n  Depends: libbar1\n  PreDepends: libzstd1:amd64\n  Depends: <libvirtual>\n  Breaks: samba-libs\n"
	want := []string{"dbus", "libntirpc4.3", "liburcu8", "libc6", "libsystemd0", "libfoo1", "libbar1", "libzstd1"}
	if got := parseAptDependsPackages([]byte(out)); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestLddNotFound(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffc8b3f2000)\n" +
		"\tlibntirpc.so.4.3 => not found\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n" +
		"\tliburcu-bp.so.8 => not found\n"
	want := []string{"libntirpc.so.4.3", "liburcu-bp.so.8"}
	if got := lddNotFound([]byte(out)); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := lddNotFound([]byte("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n")); got != nil {
		t.Errorf("got %q, want none", got)
	}
}

// TestWriteFilesSkipsBase: a file the base archive holds from the same host
// file is not packed again; one from another host file, or at another guest
// path, is.
func TestWriteFilesSkipsBase(t *testing.T) {
	dir := t.TempDir()
	same := filepath.Join(dir, "libsame.so.1")
	other := filepath.Join(dir, "libother.so.1")
	for _, p := range []string{same, other} {
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := map[string]string{
		"/usr/lib/x86_64-linux-gnu/libsame.so.1":  same,
		"/usr/lib/x86_64-linux-gnu/libother.so.1": "/somewhere/else",
	}
	var buf bytes.Buffer
	a := newArchive(&buf)
	err := writeFiles(t.Context(), a, []HostFile{
		{Src: same, Dst: "/lib/x86_64-linux-gnu/libsame.so.1"},
		{Src: other, Dst: "/lib/x86_64-linux-gnu/libother.so.1"},
		{Src: same, Dst: "/usr/lib/ganesha/libsame.so.1"},
	}, base)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	var got []string
	r := cpio.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Mode.IsRegular() {
			got = append(got, "/"+h.Name)
		}
	}
	want := []string{"/usr/lib/x86_64-linux-gnu/libother.so.1", "/usr/lib/ganesha/libsame.so.1"}
	if !slices.Equal(got, want) {
		t.Errorf("packed %q, want %q", got, want)
	}
}
