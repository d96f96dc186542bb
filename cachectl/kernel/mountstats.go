package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// NFSStats is the NFS client's statistics of one superblock, one NFS record
// of /proc/PID/mountstats matched to its mount in mountinfo. The kernel
// counts per superblock (and per network namespace, since a superblock
// belongs to one): every mount of a superblock shows the same numbers, and
// two containers mounting the same server and export from different
// network namespaces are counted apart.
type NFSStats struct {
	// Dev is the superblock's device number ("major:minor") and MountID
	// the mount the record was matched to, both from mountinfo.
	Dev     string `json:"dev"`
	MountID uint64 `json:"mount_id"`
	// Mountpoint and Source are as the reading process sees them
	// (relative to its root, unescaped).
	Mountpoint string `json:"mountpoint"`
	Source     string `json:"source"`
	// FSType is nfs or nfs4; Version the vers= option ("3", "4.2").
	FSType  string        `json:"fstype"`
	Version string        `json:"version,omitempty"`
	Age     time.Duration `json:"age"`
	Bytes   NFSBytes      `json:"bytes"`
	// Ops are the per-operation counters, in the kernel's order.
	Ops []NFSOp `json:"ops"`
	// Xprts are the RPC transports (several with nconnect).
	Xprts []NFSXprt `json:"xprts"`
}

// NFSBytes is the "bytes:" line of a record.
type NFSBytes struct {
	// NormalRead and NormalWrite are what applications read and wrote
	// through read(2) and write(2), cache hits included; DirectRead and
	// DirectWrite the same with O_DIRECT.
	NormalRead  uint64 `json:"normal_read"`
	NormalWrite uint64 `json:"normal_write"`
	DirectRead  uint64 `json:"direct_read"`
	DirectWrite uint64 `json:"direct_write"`
	// ServerRead and ServerWrite are the bytes read from and written to
	// the server (READ and WRITE payloads).
	ServerRead  uint64 `json:"server_read"`
	ServerWrite uint64 `json:"server_write"`
	ReadPages   uint64 `json:"read_pages"`
	WritePages  uint64 `json:"write_pages"`
}

// NFSOp is one operation's line of the per-op statistics. The kernel
// counts an RPC when it completes: a request that waits for a server that
// does not answer shows in none of these until it is answered (measured on
// 6.1 and 6.12: major timeouts rise only after the server is back).
type NFSOp struct {
	// Name is the operation (GETATTR, READ, ...).
	Name          string `json:"name"`
	Requests      uint64 `json:"requests"`
	Transmissions uint64 `json:"transmissions"`
	MajorTimeouts uint64 `json:"major_timeouts"`
	BytesSent     uint64 `json:"bytes_sent"`
	BytesReceived uint64 `json:"bytes_received"`
	// Queue is the total time requests waited to be sent, RTT the total
	// time from sending to the reply, Execute the total time from the
	// request's start to its end (millisecond resolution).
	Queue   time.Duration `json:"queue"`
	RTT     time.Duration `json:"rtt"`
	Execute time.Duration `json:"execute"`
	// Errors counts requests that ended with an error status (Linux 5.8+;
	// 0 before).
	Errors uint64 `json:"errors"`
}

// NFSXprt is one RPC transport's "xprt:" line.
type NFSXprt struct {
	Protocol string `json:"protocol"`
	// Connects counts connection attempts; Sends and Receives RPC
	// messages sent and replies received. A request that is retransmitted
	// is sent twice, so Sends minus Receives only grows over a mount's
	// life.
	Connects uint64 `json:"connects"`
	Sends    uint64 `json:"sends"`
	Receives uint64 `json:"receives"`
	BadXIDs  uint64 `json:"bad_xids"`
	// Idle is the time since the transport last completed a request
	// (seconds resolution): it grows while requests wait for a server that
	// does not answer.
	Idle time.Duration `json:"idle"`
}

// Transport sums s's transports: the counters added up, Idle the least.
func (s *NFSStats) Transport() NFSXprt {
	var t NFSXprt
	for i, x := range s.Xprts {
		t.Protocol = x.Protocol
		t.Connects += x.Connects
		t.Sends += x.Sends
		t.Receives += x.Receives
		t.BadXIDs += x.BadXIDs
		if i == 0 || x.Idle < t.Idle {
			t.Idle = x.Idle
		}
	}
	return t
}

// MajorTimeouts sums the major timeouts of s's operations.
func (s *NFSStats) MajorTimeouts() uint64 {
	var n uint64
	for _, op := range s.Ops {
		n += op.MajorTimeouts
	}
	return n
}

// Op returns s's operation name, if listed.
func (s *NFSStats) Op(name string) (NFSOp, bool) {
	for _, op := range s.Ops {
		if op.Name == name {
			return op, true
		}
	}
	return NFSOp{}, false
}

// RecordError is an NFS record of a mountstats text that could not be
// parsed. The other records are parsed regardless.
type RecordError struct {
	Mountpoint string
	Source     string
	Err        error
}

func (e *RecordError) Error() string {
	return fmt.Sprintf("mountstats of %s at %s: %v", e.Source, e.Mountpoint, e.Err)
}

func (e *RecordError) Unwrap() error { return e.Err }

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

// MountStatsParser parses mountstats texts with prometheus/procfs. procfs
// reads files only (it has no reader API, as of v0.23), so the parser
// keeps a private directory in which DIR/1/mountstats is a symlink to an
// in-memory file (memfd) that every parse rewrites: after
// NewMountStatsParser, parsing touches no filesystem (on the ext4 /tmp of
// the development machine, a temp file per parse cost 12-30 ms; this costs
// about 0.1 ms per record). It is safe for concurrent use; parses take
// turns. Close removes the directory.
type MountStatsParser struct {
	mu     sync.Mutex
	dir    string
	mem    *os.File
	proc   procfs.Proc
	closed bool
}

// NewMountStatsParser makes the parser's directory (in os.TempDir) and
// in-memory file.
func NewMountStatsParser() (_ *MountStatsParser, retErr error) {
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
	return &MountStatsParser{dir: dir, mem: mem, proc: p}, nil
}

// Close removes the parser's directory and in-memory file.
func (p *MountStatsParser) Close() error {
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
// *RecordError while the others are kept. Dev and MountID are left empty:
// MatchMounts fills them in.
func (p *MountStatsParser) Parse(text []byte) ([]NFSStats, []error) {
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
		out := make([]NFSStats, 0, len(nfs))
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
		out  []NFSStats
		errs []error
	)
	for _, r := range nfs {
		mounts, err := p.parse(r.text)
		if err == nil && len(mounts) != 1 {
			err = fmt.Errorf("procfs found %d mounts in one record", len(mounts))
		}
		var s NFSStats
		if err == nil {
			s, err = convert(r, mounts[0])
		}
		if err != nil {
			errs = append(errs, &RecordError{Mountpoint: r.mountpoint, Source: r.source, Err: err})
			continue
		}
		out = append(out, s)
	}
	return out, errs
}

// parse has procfs parse text, through the in-memory file.
func (p *MountStatsParser) parse(text []byte) ([]*procfs.Mount, error) {
	if err := p.mem.Truncate(0); err != nil {
		return nil, err
	}
	if _, err := p.mem.WriteAt(text, 0); err != nil {
		return nil, err
	}
	return p.proc.MountStats()
}

// convert turns procfs's mount r into NFSStats.
func convert(r record, m *procfs.Mount) (NFSStats, error) {
	st, ok := m.Stats.(*procfs.MountStatsNFS)
	if !ok {
		return NFSStats{}, errors.New("no NFS statistics")
	}
	s := NFSStats{
		Mountpoint: r.mountpoint,
		Source:     r.source,
		FSType:     r.fstype,
		Version:    st.Opts["vers"],
		Age:        st.Age,
		Bytes: NFSBytes{
			NormalRead: st.Bytes.Read, NormalWrite: st.Bytes.Write,
			DirectRead: st.Bytes.DirectRead, DirectWrite: st.Bytes.DirectWrite,
			ServerRead: st.Bytes.ReadTotal, ServerWrite: st.Bytes.WriteTotal,
			ReadPages: st.Bytes.ReadPages, WritePages: st.Bytes.WritePages,
		},
	}
	for _, op := range st.Operations {
		s.Ops = append(s.Ops, NFSOp{
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
		s.Xprts = append(s.Xprts, NFSXprt{
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

// MatchMounts fills in Dev and MountID of stats (parsed from a mountstats
// text) from mounts (the NFS mounts of mountinfo read through the same
// process) and returns the stats it matched. Both files list the mount
// namespace's mounts in the same order and skip the same ones (those
// outside the reader's root), so the records are aligned in order on
// (mount point, source); a record without a partner (a mount made or
// removed between the two reads) is dropped. A superblock mounted several
// times has one record per mount, with the same numbers.
func MatchMounts(stats []NFSStats, mounts []*mountinfo.Info) []NFSStats {
	var out []NFSStats
	j := 0
	for _, s := range stats {
		k := slices.IndexFunc(mounts[j:], func(m *mountinfo.Info) bool {
			return m.Mountpoint == s.Mountpoint && m.Source == s.Source
		})
		if k < 0 {
			continue
		}
		m := mounts[j+k]
		j += k + 1
		s.Dev = fmt.Sprintf("%d:%d", m.Major, m.Minor)
		s.MountID = uint64(m.ID)
		out = append(out, s)
	}
	return out
}

// NFSMountStats reads, and parses with parser, the NFS statistics of every NFS superblock mounted in
// pid's mount namespace (/proc/PID/mountstats, which shows the mount
// namespace of the process), matched to mountinfo. mountinfo is read
// before and after mountstats; when the two differ (a mount came or went
// meanwhile), all three are read again (three tries, then the last
// reading is used). Records that do not parse are returned as errors
// (*RecordError) apart from the others. The error is for files that could
// not be read at all.
func (p Proc) NFSMountStats(pid int, parser *MountStatsParser) ([]NFSStats, []error, error) {
	var (
		before, after, text []byte
		err                 error
	)
	for try := 0; try < 3; try++ {
		if before, err = p.read(strconv.Itoa(pid), "mountinfo"); err != nil {
			return nil, nil, err
		}
		if text, err = p.read(strconv.Itoa(pid), "mountstats"); err != nil {
			return nil, nil, err
		}
		if after, err = p.read(strconv.Itoa(pid), "mountinfo"); err != nil {
			return nil, nil, err
		}
		if bytes.Equal(before, after) {
			break
		}
	}
	mounts, err := ParseNFSMounts(after)
	if err != nil {
		return nil, nil, fmt.Errorf("parse /proc/%d/mountinfo: %w", pid, err)
	}
	stats, errs := parser.Parse(text)
	return MatchMounts(stats, mounts), errs, nil
}
