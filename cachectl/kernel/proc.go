// Package kernel observes the Linux NFS client's state from procfs: which
// processes are in which network and mount namespaces, each network
// namespace's NFS superblocks and clients (/proc/PID/net/nfsfs), the NFS
// mounts of each mount namespace (/proc/PID/mountinfo) and the text of
// their client statistics (/proc/PID/mountstats, per superblock; its types
// are here, package nfsstat parses it), and the processes that hold a
// superblock open. It reads; it changes nothing (the knobs that
// change state are in knobs.go, and the Manager decides when to use them).
package kernel

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/nsmount/nsmount/nsmount"
	"golang.org/x/sys/unix"
)

// maxProcRead bounds what is read from one /proc file.
const maxProcRead = 16 << 20

// Proc reads the kernel's view of processes, namespaces and NFS client state
// from a procfs. The zero value reads /proc.
type Proc struct {
	// Root is the procfs mount; "" means /proc.
	Root string
}

func (p Proc) path(elem ...string) string {
	root := p.Root
	if root == "" {
		root = "/proc"
	}
	return filepath.Join(append([]string{root}, elem...)...)
}

// Namespaces is one pass over every process: which processes are in which
// mount and network namespaces.
type Namespaces struct {
	// MountNS maps each mount namespace to the processes in it; NetNS
	// likewise for network namespaces. PIDs are ascending.
	MountNS map[nsmount.NSID][]int
	NetNS   map[nsmount.NSID][]int
	// NetOf maps a mount namespace to the network namespace of its first
	// process.
	NetOf map[nsmount.NSID]nsmount.NSID
	// Init is the network namespace of PID 1 (the host's).
	Init nsmount.NSID
}

// Scan lists the namespaces of every process. Processes that exit during
// the scan are skipped.
func (p Proc) Scan() (*Namespaces, error) {
	pids, err := p.PIDs()
	if err != nil {
		return nil, err
	}
	ns := &Namespaces{MountNS: map[nsmount.NSID][]int{}, NetNS: map[nsmount.NSID][]int{}, NetOf: map[nsmount.NSID]nsmount.NSID{}}
	for _, pid := range pids {
		mnt, err1 := p.NS(pid, "mnt")
		net, err2 := p.NS(pid, "net")
		if err1 != nil || err2 != nil {
			continue // exited, or a kernel thread
		}
		if pid == 1 {
			ns.Init = net
		}
		if _, ok := ns.NetOf[mnt]; !ok {
			ns.NetOf[mnt] = net
		}
		ns.MountNS[mnt] = append(ns.MountNS[mnt], pid)
		ns.NetNS[net] = append(ns.NetNS[net], pid)
	}
	if ns.Init == (nsmount.NSID{}) {
		// PID 1 unreadable (some sandboxes deny it even to root): take
		// nsmount's own netns as the host's, so that the host's NFS mounts
		// are never mistaken for a container's (rebuild, flush).
		if self, err := nsmount.NSOfPath("/proc/self/ns/net"); err == nil {
			ns.Init = self
		}
	}
	return ns, nil
}

// PIDs lists the processes, ascending.
func (p Proc) PIDs() ([]int, error) {
	d, err := os.Open(p.path())
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", p.path(), err)
	}
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids, nil
}

// NS returns the namespace of type kind ("net", "mnt") of pid.
func (p Proc) NS(pid int, kind string) (nsmount.NSID, error) {
	var st unix.Stat_t
	if err := unix.Stat(p.path(strconv.Itoa(pid), "ns", kind), &st); err != nil {
		return nsmount.NSID{}, &os.PathError{Op: "stat", Path: p.path(strconv.Itoa(pid), "ns", kind), Err: err}
	}
	return nsmount.NSID{Dev: st.Dev, Ino: st.Ino}, nil
}

// StartTime returns pid's start time (clock ticks since boot, field 22 of
// /proc/PID/stat): with the PID it identifies a process across PID reuse.
func (p Proc) StartTime(pid int) (uint64, error) {
	b, err := p.read(strconv.Itoa(pid), "stat")
	if err != nil {
		return 0, err
	}
	// comm (field 2) may contain spaces and parentheses: skip to the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// userHZ is the unit of process start times in /proc/PID/stat (USER_HZ:
// 100 on every architecture Linux containers run on).
const userHZ = 100

// BootTicks returns the time since boot in the unit of StartTime, so that
// "started before now" is StartTime(pid) <= BootTicks(). Both read
// CLOCK_BOOTTIME (process start times do since Linux 5.5), through the
// caller's time namespace.
func BootTicks() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, fmt.Errorf("read CLOCK_BOOTTIME: %w", err)
	}
	return uint64(ts.Nano()) / (uint64(time.Second) / userHZ), nil
}

// Comm returns pid's command name, or "?".
func (p Proc) Comm(pid int) string {
	b, err := p.read(strconv.Itoa(pid), "comm")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func (p Proc) read(elem ...string) ([]byte, error) {
	f, err := os.Open(p.path(elem...))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxProcRead))
}

// NFSMounts returns the NFS mounts in pid's mount namespace.
func (p Proc) NFSMounts(pid int) ([]*mountinfo.Info, error) {
	b, err := p.read(strconv.Itoa(pid), "mountinfo")
	if err != nil {
		return nil, err
	}
	return ParseNFSMounts(b)
}

// ParseNFSMounts returns the NFS mounts (nfs, nfs4) of a mountinfo text.
// A mount table can hold paths and sources a container chose: the text is
// parsed by moby's mountinfo (escapes, optional fields), never split by
// hand.
func ParseNFSMounts(text []byte) ([]*mountinfo.Info, error) {
	return mountinfo.GetMountsFromReader(bytes.NewReader(text), mountinfo.FSTypeFilter("nfs", "nfs4"))
}

// Volume is one NFS superblock of a network namespace, a line of
// /proc/PID/net/nfsfs/volumes.
type Volume struct {
	// Version is the NFS major version ("v3", "v4").
	Version string `json:"version"`
	// Server is the server address the superblock's client talks to.
	Server netip.Addr `json:"server"`
	Port   uint16     `json:"port"`
	// Dev is the superblock's device number, "major:minor".
	Dev  string `json:"dev"`
	FSID string `json:"fsid"`
}

// Client is one nfs_client of a network namespace, a line of
// /proc/PID/net/nfsfs/servers.
type Client struct {
	Version  string     `json:"version"`
	Server   netip.Addr `json:"server"`
	Port     uint16     `json:"port"`
	Use      int        `json:"use"`
	Hostname string     `json:"hostname"`
}

// Volumes returns the NFS superblocks of pid's network namespace. A
// namespace where NFS was never used has no nfsfs files: no volumes.
func (p Proc) Volumes(pid int) ([]Volume, error) {
	b, err := p.read(strconv.Itoa(pid), "net", "nfsfs", "volumes")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseVolumes(b)
}

// Clients returns the nfs_client structures of pid's network namespace.
func (p Proc) Clients(pid int) ([]Client, error) {
	b, err := p.read(strconv.Itoa(pid), "net", "nfsfs", "servers")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseClients(b)
}

// ParseVolumes parses the text of /proc/net/nfsfs/volumes:
//
//	NV SERVER   PORT DEV          FSID                              FSC
//	v4 c6336464  801 0:53         a0f2c6c4e59a44ba:9b3ee2e4f3e1b0a0  no
func ParseVolumes(text []byte) ([]Volume, error) {
	var out []Volume
	err := parseTable(text, 4, func(f []string) error {
		addr, port, err := parseHexAddrPort(f[1], f[2])
		if err != nil {
			return err
		}
		v := Volume{Version: f[0], Server: addr, Port: port, Dev: f[3]}
		if len(f) > 4 {
			v.FSID = f[4]
		}
		out = append(out, v)
		return nil
	})
	return out, err
}

// ParseClients parses the text of /proc/net/nfsfs/servers:
//
//	NV SERVER   PORT USE HOSTNAME
//	v4 c6336464  801   1 198.51.100.100
func ParseClients(text []byte) ([]Client, error) {
	var out []Client
	err := parseTable(text, 5, func(f []string) error {
		addr, port, err := parseHexAddrPort(f[1], f[2])
		if err != nil {
			return err
		}
		use, err := strconv.Atoi(f[3])
		if err != nil {
			return fmt.Errorf("USE %q: %w", f[3], err)
		}
		out = append(out, Client{Version: f[0], Server: addr, Port: port, Use: use, Hostname: f[4]})
		return nil
	})
	return out, err
}

func parseTable(text []byte, minFields int, row func([]string) error) error {
	sc := bufio.NewScanner(bytes.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] == "NV" {
			continue
		}
		if len(f) < minFields {
			return fmt.Errorf("line %d: %d fields, want at least %d", n, len(f), minFields)
		}
		if err := row(f); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
	}
	return sc.Err()
}

// parseHexAddrPort decodes the kernel's RPC_DISPLAY_HEX_ADDR/PORT: the
// address bytes in network order as hex (8 digits for IPv4, 32 for IPv6).
func parseHexAddrPort(a, p string) (netip.Addr, uint16, error) {
	b, err := hex.DecodeString(a)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("server address %q: %w", a, err)
	}
	addr, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("server address %q: %d bytes", a, len(b))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("port %q: %w", p, err)
	}
	return addr.Unmap(), uint16(port), nil
}

// Holder is a process that keeps a superblock alive through an open file,
// its working directory or its root.
type Holder struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
	// What is "fd N", "cwd" or "root"; Path is the path the kernel shows
	// for it (with " (deleted)" or as seen before a lazy unmount).
	What string `json:"what"`
	Path string `json:"path"`
}

// Holders finds the processes that hold any of devs ("major:minor") through
// an open file, cwd or root. It stats through /proc/PID/fd with
// AT_STATX_DONT_SYNC, which uses cached attributes and never waits for an
// NFS server.
func (p Proc) Holders(devs map[string]bool) (map[string][]Holder, error) {
	out := map[string][]Holder{}
	if len(devs) == 0 {
		return out, nil
	}
	pids, err := p.PIDs()
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	for _, pid := range pids {
		if pid == self {
			continue
		}
		dir := p.path(strconv.Itoa(pid))
		check := func(what, link string) {
			dev, ok := devOf(link)
			if !ok || !devs[dev] {
				return
			}
			path, _ := os.Readlink(link)
			out[dev] = append(out[dev], Holder{PID: pid, Comm: p.Comm(pid), What: what, Path: path})
		}
		check("cwd", filepath.Join(dir, "cwd"))
		check("root", filepath.Join(dir, "root"))
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			check("fd "+fd.Name(), filepath.Join(dir, "fd", fd.Name()))
		}
	}
	return out, nil
}

func devOf(path string) (string, bool) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_DONT_SYNC|unix.AT_NO_AUTOMOUNT, unix.STATX_TYPE, &stx); err != nil {
		return "", false
	}
	return fmt.Sprintf("%d:%d", stx.Dev_major, stx.Dev_minor), true
}

// VolumesIn returns the NFS superblocks of t's network namespace, read by a
// thread inside it (for a target without a process, opened by path).
func VolumesIn(t *nsmount.Target) ([]Volume, error) {
	var vols []Volume
	err := t.Do(nsmount.NetNS, func() error {
		var err error
		vols, err = volumesHere()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nfs volumes of %s: %w", t, err)
	}
	return vols, nil
}

// volumesHere returns the NFS superblocks of the calling thread's network
// namespace (it must be locked to it).
func volumesHere() ([]Volume, error) {
	f, err := os.Open("/proc/thread-self/net/nfsfs/volumes")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxProcRead))
	if err != nil {
		return nil, err
	}
	return ParseVolumes(b)
}
