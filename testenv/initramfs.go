package testenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// archive builds an uncompressed newc cpio archive for the kernel's
// initramfs unpacker. It creates parent directories on demand and writes
// every path at most once.
type archive struct {
	w    *cpio.Writer
	bw   *bufio.Writer
	n    int64 // bytes written so far, for padding
	seen map[string]bool
}

// countWriter counts bytes written through it.
type countWriter struct {
	w io.Writer
	n *int64
}

func (c countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	*c.n += int64(n)
	return n, err
}

// newArchive starts an archive written to w.
func newArchive(w io.Writer) *archive {
	a := &archive{bw: bufio.NewWriterSize(w, 1<<20), seen: make(map[string]bool)}
	a.w = cpio.NewWriter(countWriter{a.bw, &a.n})
	return a
}

// guestPath cleans p and maps the merged-/usr top-level directories
// (/bin, /sbin, /lib, /lib64) to their /usr counterparts, which is where the
// guest keeps the files.
func guestPath(p string) string {
	p = path.Clean("/" + p)
	for _, top := range []string{"/bin", "/sbin", "/lib", "/lib64"} {
		if p == top || strings.HasPrefix(p, top+"/") {
			return "/usr" + p
		}
	}
	return p
}

// name returns the archive name (no leading slash) of a guest path.
func archName(p string) string {
	return strings.TrimPrefix(p, "/")
}

// dir adds directory p and its parents.
func (a *archive) dir(p string) error {
	p = path.Clean(p)
	if p == "/" || p == "." || a.seen[p] {
		return nil
	}
	if err := a.dir(path.Dir(p)); err != nil {
		return err
	}
	a.seen[p] = true
	return a.w.WriteHeader(&cpio.Header{Name: archName(p), Mode: cpio.TypeDir | 0o755})
}

// symlink adds a symbolic link at p pointing to target.
func (a *archive) symlink(p, target string) error {
	return a.entry(p, cpio.TypeSymlink|0o777, []byte(target))
}

// file adds a regular file at p with the given content and permissions.
func (a *archive) file(p string, data []byte, perm os.FileMode) error {
	return a.entry(p, cpio.TypeReg|cpio.FileMode(perm.Perm()), data)
}

// entry adds a non-directory entry at p (once; later additions of the same
// path are ignored), creating its parent directories first.
func (a *archive) entry(p string, mode cpio.FileMode, data []byte) error {
	p = path.Clean(p)
	if a.seen[p] {
		return nil
	}
	if err := a.dir(path.Dir(p)); err != nil {
		return err
	}
	a.seen[p] = true
	if err := a.w.WriteHeader(&cpio.Header{Name: archName(p), Mode: mode, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := a.w.Write(data)
	return err
}

// hostFile copies the host file src (following symlinks) to guest path dst.
func (a *archive) hostFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	return a.file(dst, data, st.Mode())
}

// close writes the trailer and pads the archive to 512 bytes, so that
// archives can be concatenated.
func (a *archive) close() error {
	if err := a.w.Close(); err != nil {
		return fmt.Errorf("closing cpio archive: %w", err)
	}
	if pad := (512 - a.n%512) % 512; pad > 0 {
		if _, err := a.bw.Write(make([]byte, pad)); err != nil {
			return err
		}
	}
	return a.bw.Flush()
}

// hostTool is a host program copied into the guest.
type hostTool struct {
	name  string   // command name, looked up in the host's PATH
	links []string // extra guest names (in the same directory) for the program
}

// hostTools are the real programs the guest uses instead of busybox applets.
var hostTools = []hostTool{
	{name: "dash", links: []string{"sh"}},
	{name: "ip"},
	{name: "mount"}, {name: "umount"}, {name: "nsenter"}, {name: "unshare"}, {name: "pivot_root"}, {name: "flock"},
	{name: "rpc.nfsd"}, {name: "rpc.mountd"}, {name: "exportfs"}, {name: "nfsdcld"},
	{name: "rpcbind"}, {name: "rpcinfo"}, {name: "rpc.statd"}, {name: "sm-notify"}, {name: "showmount"},
	{name: "mount.nfs", links: []string{"mount.nfs4", "umount.nfs", "umount.nfs4"}},
}

// hostPATH is searched for host tools, so that sbin programs are found even
// when the caller's PATH lacks them.
var hostPATH = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// lookTool finds a host program by name.
func lookTool(name string) (string, error) {
	for _, d := range hostPATH {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("host program %s not found (install busybox-static, dash, iproute2, util-linux, nfs-kernel-server, nfs-common, rpcbind): %w", name, err)
	}
	return p, nil
}

// sharedLibs returns the shared libraries and dynamic loader of an ELF
// program as listed by ldd. Static programs have none.
func sharedLibs(ctx context.Context, prog string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", prog).Output()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) {
			return nil, nil
		}
		if ee, ok := err.(*exec.ExitError); ok && bytes.Contains(ee.Stderr, []byte("not a dynamic executable")) {
			return nil, nil
		}
		return nil, fmt.Errorf("running ldd %s: %w", prog, err)
	}
	return parseLdd(out), nil
}

// parseLdd extracts absolute library paths from ldd output.
func parseLdd(out []byte) []string {
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs
}

// baseInputs lists everything that goes into the base archive, so that it
// can be hashed before it is built.
type baseInputs struct {
	kernel  *kernel
	modules []string          // .ko paths in load order
	busybox string            // static busybox
	tools   map[string]string // guest path -> host path of programs and libraries
	links   map[string]string // guest path -> symlink target
	etc     map[string][]byte // guest path -> content of config files
}

// collectBase finds the host programs, their libraries and the modules.
func collectBase(ctx context.Context, k *kernel) (*baseInputs, error) {
	in := &baseInputs{kernel: k, tools: map[string]string{}, links: map[string]string{}, etc: map[string][]byte{}}
	var err error
	if in.modules, err = ResolveModules(k.modDir(), labModules); err != nil {
		return nil, err
	}
	if in.busybox, err = lookTool("busybox"); err != nil {
		return nil, err
	}
	for _, t := range hostTools {
		p, err := lookTool(t.name)
		if err != nil {
			return nil, err
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", p, err)
		}
		gdir := guestPath(filepath.Dir(real))
		in.tools[path.Join(gdir, t.name)] = real
		for _, l := range t.links {
			in.links[path.Join(gdir, l)] = t.name
		}
		libs, err := sharedLibs(ctx, real)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			rl, err := filepath.EvalSymlinks(l)
			if err != nil {
				return nil, fmt.Errorf("resolving library %s: %w", l, err)
			}
			in.tools[guestPath(l)] = rl
		}
	}
	for name, content := range etcFiles {
		in.etc[name] = []byte(content)
	}
	for _, name := range []string{"/etc/services", "/etc/protocols", "/etc/netconfig"} {
		if data, err := os.ReadFile(name); err == nil {
			in.etc[name] = data
		}
	}
	return in, nil
}

// hash identifies the base archive: kernel version, module and program
// contents, config files and the archive layout version.
func (in *baseInputs) hash() (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "layout 3\nkernel %s\n", in.kernel.version)
	add := func(p string) error {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("hashing %s: %w", p, err)
		}
		defer f.Close()
		fmt.Fprintf(h, "file %s\n", p)
		_, err = io.Copy(h, f)
		return err
	}
	for _, m := range in.modules {
		if err := add(m); err != nil {
			return "", err
		}
	}
	if err := add(in.busybox); err != nil {
		return "", err
	}
	for _, g := range sortedKeys(in.tools) {
		fmt.Fprintf(h, "tool %s\n", g)
		if err := add(in.tools[g]); err != nil {
			return "", err
		}
	}
	for _, g := range sortedKeys(in.links) {
		fmt.Fprintf(h, "link %s %s\n", g, in.links[g])
	}
	for _, g := range sortedKeys(in.etc) {
		fmt.Fprintf(h, "etc %s %d\n", g, len(in.etc[g]))
		h.Write(in.etc[g])
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// guestModuleList is where the base archive lists the modules to load.
const guestModuleList = "/etc/nsmount-lab/modules"

// writeBase writes the base archive: directory skeleton, busybox with its
// applet links, the real programs and their libraries, config files and the
// kernel modules (signatures stripped) with their load order.
func (in *baseInputs) writeBase(ctx context.Context, w io.Writer) error {
	a := newArchive(w)
	for _, top := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := a.symlink("/"+top, "usr/"+top); err != nil {
			return err
		}
	}
	for _, d := range []string{"/usr/bin", "/usr/sbin", "/usr/lib64", "/proc", "/sys", "/dev", "/run", "/tmp",
		"/var/lib/nfs", "/var/log", "/srv", "/ct", "/export", "/mnt", "/root", "/newroot", "/etc/exports.d"} {
		if err := a.dir(d); err != nil {
			return err
		}
	}
	if err := a.symlink("/var/run", "../run"); err != nil {
		return err
	}
	if err := a.symlink("/etc/mtab", "../proc/self/mounts"); err != nil {
		return err
	}
	for _, g := range sortedKeys(in.tools) {
		if err := a.hostFile(in.tools[g], g); err != nil {
			return err
		}
	}
	for _, g := range sortedKeys(in.links) {
		if err := a.symlink(g, in.links[g]); err != nil {
			return err
		}
	}
	if err := a.hostFile(in.busybox, "/usr/bin/busybox"); err != nil {
		return err
	}
	applets, err := exec.CommandContext(ctx, in.busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("listing busybox applets: %w", err)
	}
	real := make(map[string]bool)
	for g := range in.tools {
		real[path.Base(g)] = true
	}
	for g := range in.links {
		real[path.Base(g)] = true
	}
	for _, ap := range strings.Fields(string(applets)) {
		if real[ap] || ap == "busybox" || strings.Contains(ap, "/") {
			continue
		}
		if err := a.symlink("/usr/bin/"+ap, "busybox"); err != nil {
			return err
		}
	}
	for _, g := range sortedKeys(in.etc) {
		if err := a.file(g, in.etc[g], 0o644); err != nil {
			return err
		}
	}
	var list strings.Builder
	rel := "/lib/modules/" + in.kernel.version + "/"
	for _, m := range in.modules {
		data, err := os.ReadFile(m)
		if err != nil {
			return fmt.Errorf("reading module: %w", err)
		}
		if data, err = StripModuleSignature(data); err != nil {
			return fmt.Errorf("stripping %s: %w", m, err)
		}
		r, err := filepath.Rel(in.kernel.modDir(), m)
		if err != nil {
			return err
		}
		g := guestPath(rel + filepath.ToSlash(r))
		if err := a.file(g, data, 0o644); err != nil {
			return err
		}
		list.WriteString(g + "\n")
	}
	if err := a.file(guestModuleList, []byte(list.String()), 0o644); err != nil {
		return err
	}
	return a.close()
}

// etcFiles are the config files the guest tools need, beyond those copied
// from the host when present (services, protocols, netconfig).
var etcFiles = map[string]string{
	"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n_rpc:x:102:65534::/run/rpcbind:/usr/sbin/nologin\n" +
		"statd:x:103:65534::/var/lib/nfs:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
	"/etc/group":         "root:x:0:\nnogroup:x:65534:\n",
	"/etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nprotocols: files\nservices: files\nrpc: files\n",
	"/etc/hosts":         "127.0.0.1 localhost\n127.0.1.1 lab\n::1 localhost ip6-localhost ip6-loopback\n",
	"/etc/hostname":      "lab\n",
	"/etc/exports":       "",
	"/etc/nfs.conf":      "[nfsd]\nthreads=4\n",
	"/etc/rpc":           "portmapper 100000 portmap sunrpc rpcbind\nnfs 100003 nfsprog\nmountd 100005 mount showmount\nnlockmgr 100021\nstatus 100024\nnfs_acl 100227\n",
	"/etc/netconfig": "udp        tpi_clts      v     inet     udp     -       -\n" +
		"tcp        tpi_cots_ord  v     inet     tcp     -       -\n" +
		"udp6       tpi_clts      v     inet6    udp     -       -\n" +
		"tcp6       tpi_cots_ord  v     inet6    tcp     -       -\n" +
		"rawip      tpi_raw       -     inet      -      -       -\n" +
		"local      tpi_cots_ord  -     loopback  -      -       -\n" +
		"unix       tpi_cots_ord  -     loopback  -      -       -\n",
}
