// Package kerneltest builds fake procfs trees for tests of code that reads
// the kernel's NFS client state through kernel.Proc, and holds real kernel
// text captured in the lab VM.
package kerneltest

import (
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/nsmount"
	"golang.org/x/sys/unix"
)

// RealVolumes, RealServers and RealMountinfo are real kernel text, captured in the lab VM (Debian 6.1.0-56-cloud-amd64):
// one container netns with NFSv4.2 and v3 mounts of 198.51.100.1:/export and
// NFSv4.1 and v3 (proto=tcp6) mounts of [2001:db8::1]:/export. The volumes
// lines end in "no " (the kernel pads the FSC column).
const (
	RealVolumes = "NV SERVER   PORT DEV          FSID                              FSC\n" +
		"v4 c6336401  801 0:33         1:0                               no \n" +
		"v3 c6336401  801 0:32         1:0                               no \n" +
		"v4 20010db8000000000000000000000001  801 0:35         1:0                               no \n" +
		"v3 20010db8000000000000000000000001  801 0:34         1:0                               no \n"
	RealServers = "NV SERVER   PORT USE HOSTNAME\n" +
		"v4 c6336401  801   1 198.51.100.1\n" +
		"v3 c6336401  801   1 198.51.100.1\n" +
		"v4 20010db8000000000000000000000001  801   1 2001:db8::1\n" +
		"v3 20010db8000000000000000000000001  801   1 2001:db8::1\n"
	RealMountinfo = "59 47 0:33 / /m4 rw,relatime - nfs4 198.51.100.1:/export rw,vers=4.2,rsize=131072,wsize=131072,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=198.51.100.2,local_lock=none,addr=198.51.100.1\n" +
		"57 47 0:32 / /m3 rw,relatime - nfs 198.51.100.1:/export rw,vers=3,rsize=131072,wsize=131072,namlen=255,hard,nolock,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=198.51.100.1,mountvers=3,mountproto=tcp,local_lock=all,addr=198.51.100.1\n" +
		"61 47 0:35 / /m6 rw,relatime - nfs4 [2001:db8::1]:/export rw,vers=4.1,rsize=131072,wsize=131072,namlen=255,hard,proto=tcp6,timeo=600,retrans=2,sec=sys,clientaddr=2001:db8::2,local_lock=none,addr=2001:db8::1\n" +
		"58 47 0:34 / /m63 rw,relatime - nfs [2001:db8::1]:/export rw,vers=3,rsize=131072,wsize=131072,namlen=255,hard,nolock,proto=tcp6,timeo=600,retrans=2,sec=sys,mountaddr=2001:db8::1,mountvers=3,mountproto=tcp6,local_lock=all,addr=2001:db8::1\n"
)

// The lab captures in testdata/ (capture.sh there made them): a container
// with NFSv4.2 (noac, hard,timeo=10,retrans=1), NFSv3 and NFSv4.1
// (nconnect=4) mounts of 198.51.100.10:/export, on 6.1 and 6.12, before,
// during and after an outage.
//
//go:embed testdata/*.txt
var captured embed.FS

// Captured returns the lab capture testdata/name (e.g.
// "mountstats-6.1.txt").
func Captured(t testing.TB, name string) []byte {
	t.Helper()
	b, err := captured.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RootMountinfo is the non-NFS part of a mount table.
const RootMountinfo = "47 1 0:26 / / rw,relatime - tmpfs tmpfs rw,size=65536k\n" +
	"48 47 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"

// StatLine is a real /proc/PID/stat line with comm and starttime (field
// 22) substituted.
func StatLine(pid int, comm string, start uint64) string {
	return fmt.Sprintf("%d (%s) S 14293 14293 5190 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 %d 3133440 380 18446744073709551615 94176092893184 94176092913065 140730176171344 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n", pid, comm, start)
}

// Procfs is a procfs tree in a temp dir, for kernel.Proc{Root: dir}. Namespace
// files are regular files under .ns/ (a name procfs never has), hard-linked
// into /PID/ns/: processes that share a namespace share an inode, and Proc.NS
// stats them as it stats real nsfs files.
type Procfs struct {
	t    *testing.T
	root string
}

// New makes an empty fake procfs in a temp dir of t.
func New(t *testing.T) *Procfs {
	t.Helper()
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, ".ns"), 0o700); err != nil {
		t.Fatal(err)
	}
	return &Procfs{t: t, root: root}
}

// Proc returns the kernel.Proc that reads this tree.
func (f *Procfs) Proc() kernel.Proc { return kernel.Proc{Root: f.root} }

// Root returns the tree's directory.
func (f *Procfs) Root() string { return f.root }

// NSPath returns the file of namespace name, creating it (a path that
// names the namespace, as a bind mount of an nsfs file would).
func (f *Procfs) NSPath(name string) string {
	f.t.Helper()
	p := filepath.Join(f.root, ".ns", name)
	if _, err := os.Stat(p); os.IsNotExist(err) {
		f.Write(p, name)
	}
	return p
}

// NS returns the NSID of namespace name, creating it.
func (f *Procfs) NS(name string) nsmount.NSID {
	f.t.Helper()
	id, err := nsmount.NSOfPath(f.NSPath(name))
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

// Process is what a fake process shows.
type Process struct {
	Mnt, Net  string // namespace names
	Comm      string
	Start     uint64
	Mountinfo string // "" = no mountinfo file (the process exited)
	// Mountstats is /PID/mountstats ("" = none).
	Mountstats string
	Volumes    string // "" and Servers "" = no nfsfs dir
	Servers    string
	// FDs maps an fd number to the file it points to.
	FDs map[int]string
}

// Add adds process pid.
func (f *Procfs) Add(pid int, p Process) {
	f.t.Helper()
	dir := filepath.Join(f.root, strconv.Itoa(pid))
	if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o700); err != nil {
		f.t.Fatal(err)
	}
	for kind, name := range map[string]string{"mnt": p.Mnt, "net": p.Net} {
		if name == "" {
			continue
		}
		if err := os.Link(f.NSPath(name), filepath.Join(dir, "ns", kind)); err != nil {
			f.t.Fatal(err)
		}
	}
	comm := p.Comm
	if comm == "" {
		comm = "sleep"
	}
	f.Write(filepath.Join(dir, "comm"), comm+"\n")
	f.Write(filepath.Join(dir, "stat"), StatLine(pid, comm, p.Start))
	if p.Mountinfo != "" {
		f.Write(filepath.Join(dir, "mountinfo"), p.Mountinfo)
	}
	if p.Mountstats != "" {
		f.Write(filepath.Join(dir, "mountstats"), p.Mountstats)
	}
	if p.Volumes != "" || p.Servers != "" {
		os.MkdirAll(filepath.Join(dir, "net", "nfsfs"), 0o700)
		f.Write(filepath.Join(dir, "net", "nfsfs", "volumes"), p.Volumes)
		f.Write(filepath.Join(dir, "net", "nfsfs", "servers"), p.Servers)
	}
	if len(p.FDs) > 0 {
		os.MkdirAll(filepath.Join(dir, "fd"), 0o700)
		for fd, target := range p.FDs {
			if err := os.Symlink(target, filepath.Join(dir, "fd", strconv.Itoa(fd))); err != nil {
				f.t.Fatal(err)
			}
		}
	}
}

// Write writes a file of the tree (path is absolute, under Root).
func (f *Procfs) Write(path, text string) {
	f.t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

// DevOf returns "major:minor" of the filesystem of path, as holders are
// matched to superblocks.
func DevOf(path string) (string, bool) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &stx); err != nil {
		return "", false
	}
	return fmt.Sprintf("%d:%d", stx.Dev_major, stx.Dev_minor), true
}
