package kernel

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/moby/sys/mountinfo"
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

// MountStatsTexts reads pid's /proc/PID/mountstats (which shows the
// mount namespace of the process) and its mountinfo, read before and after
// it; when the two mountinfo readings differ (a mount came or went
// meanwhile), all three are read again (three tries, then the last reading
// is used). Package nfsstat parses them.
func (p Proc) MountStatsTexts(pid int) (mountinfo, mountstats []byte, err error) {
	var before []byte
	for try := 0; try < 3; try++ {
		if before, err = p.read(strconv.Itoa(pid), "mountinfo"); err != nil {
			return nil, nil, err
		}
		if mountstats, err = p.read(strconv.Itoa(pid), "mountstats"); err != nil {
			return nil, nil, err
		}
		if mountinfo, err = p.read(strconv.Itoa(pid), "mountinfo"); err != nil {
			return nil, nil, err
		}
		if bytes.Equal(before, mountinfo) {
			break
		}
	}
	return mountinfo, mountstats, nil
}
