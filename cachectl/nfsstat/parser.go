package nfsstat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/cachectl/kernel"
)

// record is one mount's part of a mountstats text: its header line
// ("device SOURCE mounted on PATH with fstype TYPE [statvers=V]") and the
// lines after it.
type record struct {
	source, mountpoint, fstype string
	stats                      bool // has statvers=: statistics follow
	text                       []byte
}

// splitRecords cuts a mountstats text into records. Lines before the first
// header are dropped; a header that does not parse starts a record that
// is then skipped (its lines do not leak into its neighbours).
func splitRecords(text []byte) []record {
	var out []record
	cur := -1
	for len(text) > 0 {
		line, rest, _ := bytes.Cut(text, []byte("\n"))
		text = rest
		if bytes.HasPrefix(line, []byte("device ")) || bytes.HasPrefix(line, []byte("no device ")) {
			out = append(out, parseHeader(string(line)))
			cur = len(out) - 1
		}
		if cur >= 0 {
			out[cur].text = append(append(out[cur].text, line...), '\n')
		}
	}
	return out
}

// parseHeader parses a record's header line. The kernel escapes space,
// tab, newline and backslash in the source and mount point (\040 ...), so
// the line splits on spaces. An unparsable header gives a record without
// fstype.
func parseHeader(line string) record {
	f := strings.Split(line, " ")
	var r record
	if f[0] == "no" {
		// A mount without a device name: "no device mounted on ...".
		f = append([]string{"device", ""}, f[2:]...)
	}
	if len(f) < 8 || len(f) > 9 || f[2] != "mounted" || f[3] != "on" || f[5] != "with" || f[6] != "fstype" {
		return r
	}
	r.source, r.mountpoint, r.fstype = unescapeOctal(f[1]), unescapeOctal(f[4]), f[7]
	if len(f) == 9 {
		if !strings.HasPrefix(f[8], "statvers=") {
			return record{}
		}
		r.stats = true
	}
	return r
}

// unescapeOctal undoes the kernel's \NNN escapes (seq_escape).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Parser parses mountstats texts with prometheus/procfs. procfs reads
// files only (it has no reader API, as of v0.23), so the parser keeps a
// private directory in which DIR/1/mountstats is a symlink to an
// in-memory file (memfd) that every parse rewrites: after NewParser,
// parsing touches no filesystem (on the ext4 /tmp of the development
// machine, a temp file per parse cost 12-30 ms; this costs about 0.1 ms
// per record). It is safe for concurrent use; parses take turns. Close
// removes the directory.
type Parser struct {
	mu     sync.Mutex
	dir    string
	mem    *os.File
	proc   procfs.Proc
	closed bool
}

// NewParser makes the parser's directory (in os.TempDir) and in-memory
// file.
func NewParser() (_ *Parser, retErr error) {
	dir, err := os.MkdirTemp("", "nsmount-mountstats-")
	if err != nil {
		return nil, fmt.Errorf("mountstats parser: %w", err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(dir)
		}
	}()
	fd, err := unix.MemfdCreate("nsmount-mountstats", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("mountstats parser: memfd_create: %w", err)
	}
	mem := os.NewFile(uintptr(fd), "nsmount-mountstats")
	defer func() {
		if retErr != nil {
			mem.Close()
		}
	}()
	if err := os.Mkdir(filepath.Join(dir, "1"), 0o700); err != nil {
		return nil, fmt.Errorf("mountstats parser: %w", err)
	}
	if err := os.Symlink(fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd), filepath.Join(dir, "1", "mountstats")); err != nil {
		return nil, fmt.Errorf("mountstats parser: %w", err)
	}
	fs, err := procfs.NewFS(dir)
	if err != nil {
		return nil, fmt.Errorf("mountstats parser: %w", err)
	}
	p, err := fs.Proc(1)
	if err != nil {
		return nil, fmt.Errorf("mountstats parser: %w", err)
	}
	return &Parser{dir: dir, mem: mem, proc: p}, nil
}

// Close removes the parser's directory and in-memory file.
func (p *Parser) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	err := os.RemoveAll(p.dir)
	if cerr := p.mem.Close(); err == nil {
		err = cerr
	}
	return err
}

// Parse parses the NFS records (fstype nfs or nfs4, with statistics) of a
// /proc/PID/mountstats text. procfs fails a whole text on one line it does
// not know (a format a newer kernel changed, garbage); when it does, each
// record is parsed on its own, and those that fail are returned as
// *kernel.RecordError while the others are kept. Dev and MountID are left
// empty: kernel.MatchMounts fills them in.
func (p *Parser) Parse(text []byte) ([]kernel.NFSStats, []error) {
	var nfs []record
	var all []byte
	for _, r := range splitRecords(text) {
		if r.stats && (r.fstype == "nfs" || r.fstype == "nfs4") {
			nfs = append(nfs, r)
			all = append(all, r.text...)
		}
	}
	if len(nfs) == 0 {
		return nil, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, []error{errors.New("mountstats parser is closed")}
	}
	if mounts, err := p.parse(all); err == nil && len(mounts) == len(nfs) {
		out := make([]kernel.NFSStats, 0, len(nfs))
		for i, m := range mounts {
			s, err := convert(nfs[i], m)
			if err != nil {
				break // per record below
			}
			out = append(out, s)
		}
		if len(out) == len(nfs) {
			return out, nil
		}
	}
	var (
		out  []kernel.NFSStats
		errs []error
	)
	for _, r := range nfs {
		mounts, err := p.parse(r.text)
		if err == nil && len(mounts) != 1 {
			err = fmt.Errorf("procfs found %d mounts in one record", len(mounts))
		}
		var s kernel.NFSStats
		if err == nil {
			s, err = convert(r, mounts[0])
		}
		if err != nil {
			errs = append(errs, &kernel.RecordError{Mountpoint: r.mountpoint, Source: r.source, Err: err})
			continue
		}
		out = append(out, s)
	}
	return out, errs
}

// parse has procfs parse text, through the in-memory file.
func (p *Parser) parse(text []byte) ([]*procfs.Mount, error) {
	if err := p.mem.Truncate(0); err != nil {
		return nil, err
	}
	if _, err := p.mem.WriteAt(text, 0); err != nil {
		return nil, err
	}
	return p.proc.MountStats()
}

// convert turns procfs's mount r into kernel.NFSStats.
func convert(r record, m *procfs.Mount) (kernel.NFSStats, error) {
	st, ok := m.Stats.(*procfs.MountStatsNFS)
	if !ok {
		return kernel.NFSStats{}, errors.New("no NFS statistics")
	}
	s := kernel.NFSStats{
		Mountpoint: r.mountpoint,
		Source:     r.source,
		FSType:     r.fstype,
		Version:    st.Opts["vers"],
		Age:        st.Age,
		Bytes: kernel.NFSBytes{
			NormalRead: st.Bytes.Read, NormalWrite: st.Bytes.Write,
			DirectRead: st.Bytes.DirectRead, DirectWrite: st.Bytes.DirectWrite,
			ServerRead: st.Bytes.ReadTotal, ServerWrite: st.Bytes.WriteTotal,
			ReadPages: st.Bytes.ReadPages, WritePages: st.Bytes.WritePages,
		},
	}
	for _, op := range st.Operations {
		s.Ops = append(s.Ops, kernel.NFSOp{
			Name:          op.Operation,
			Requests:      op.Requests,
			Transmissions: op.Transmissions,
			MajorTimeouts: op.MajorTimeouts,
			BytesSent:     op.BytesSent,
			BytesReceived: op.BytesReceived,
			Queue:         ms(op.CumulativeQueueMilliseconds),
			RTT:           ms(op.CumulativeTotalResponseMilliseconds),
			Execute:       ms(op.CumulativeTotalRequestMilliseconds),
			Errors:        op.Errors,
		})
	}
	for _, x := range st.Transport {
		s.Xprts = append(s.Xprts, kernel.NFSXprt{
			Protocol: x.Protocol,
			Connects: x.Connect,
			Sends:    x.Sends,
			Receives: x.Receives,
			BadXIDs:  x.BadTransactionIDs,
			Idle:     time.Duration(min(x.IdleTimeSeconds, 1<<32)) * time.Second,
		})
	}
	return s, nil
}

func ms(n uint64) time.Duration {
	if n > uint64(1<<63-1)/uint64(time.Millisecond) {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(n) * time.Millisecond
}

// ReadMountStats reads, and parses with parser, the NFS statistics of
// every NFS superblock mounted in pid's mount namespace
// (kernel.Proc.MountStatsTexts), matched to mountinfo. Records that do not
// parse are returned as errors (*kernel.RecordError) apart from the
// others. The error is for files that could not be read at all.
func ReadMountStats(p kernel.Proc, pid int, parser *Parser) ([]kernel.NFSStats, []error, error) {
	info, text, err := p.MountStatsTexts(pid)
	if err != nil {
		return nil, nil, err
	}
	mounts, err := kernel.ParseNFSMounts(info)
	if err != nil {
		return nil, nil, fmt.Errorf("parse /proc/%d/mountinfo: %w", pid, err)
	}
	stats, errs := parser.Parse(text)
	return kernel.MatchMounts(stats, mounts), errs, nil
}
