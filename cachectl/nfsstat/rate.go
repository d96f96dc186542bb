package nfsstat

import (
	"sort"
	"time"

	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// OpRate is one operation's activity between two readings.
type OpRate struct {
	Name string `json:"name"`
	// Requests is how many completed; PerSecond the same per second.
	Requests  uint64  `json:"requests"`
	PerSecond float64 `json:"per_second"`
	// AvgRTT and AvgExecute are the mean round trip and the mean time from
	// start to end of the requests that completed (millisecond
	// resolution in the kernel).
	AvgRTT     time.Duration `json:"avg_rtt"`
	AvgExecute time.Duration `json:"avg_execute"`
	// Errors and MajorTimeouts are counted when a request completes.
	Errors        uint64 `json:"errors"`
	MajorTimeouts uint64 `json:"major_timeouts"`
}

// Rate is one superblock's activity between two readings.
type Rate struct {
	NetNS   nsmount.NSID     `json:"netns"`
	Dev     string           `json:"dev"`
	Entries []registry.Entry `json:"entries"`
	// Interval is the time between the readings.
	Interval time.Duration `json:"interval"`
	// PerSecond is the requests of every operation per second; Ops the
	// operations with requests, busiest first.
	PerSecond float64  `json:"per_second"`
	Ops       []OpRate `json:"ops"`
	// ReadBPS and WriteBPS are bytes read from and written to the server
	// per second.
	ReadBPS  float64 `json:"read_bytes_per_second"`
	WriteBPS float64 `json:"write_bytes_per_second"`
}

// Rates compares two readings: per superblock of cur that prev also has
// (the same network namespace, device and mount age: a device number
// reused by a new superblock is not compared with the old one), the
// activity in between. Busiest superblock first; only operations with
// requests, busiest first; superblocks without any are kept.
func Rates(prev, cur *Snapshot) []Rate {
	interval := cur.Taken.Sub(prev.Taken)
	if interval <= 0 {
		return nil
	}
	secs := interval.Seconds()
	type key struct {
		ino uint64
		dev string
	}
	before := map[key]*Superblock{}
	for i := range prev.Superblocks {
		sb := &prev.Superblocks[i]
		before[key{sb.NetNS.Ino, sb.Dev}] = sb
	}
	var out []Rate
	for _, sb := range cur.Superblocks {
		old, ok := before[key{sb.NetNS.Ino, sb.Dev}]
		if !ok || sb.Stats.Age < old.Stats.Age {
			continue
		}
		r := Rate{NetNS: sb.NetNS, Dev: sb.Dev, Entries: sb.Entries, Interval: interval}
		for _, op := range sb.Stats.Ops {
			was, _ := old.Stats.Op(op.Name)
			n := delta(op.Requests, was.Requests)
			if n == 0 {
				continue
			}
			or := OpRate{
				Name:          op.Name,
				Requests:      n,
				PerSecond:     float64(n) / secs,
				AvgRTT:        (op.RTT - min(was.RTT, op.RTT)) / time.Duration(n),
				AvgExecute:    (op.Execute - min(was.Execute, op.Execute)) / time.Duration(n),
				Errors:        delta(op.Errors, was.Errors),
				MajorTimeouts: delta(op.MajorTimeouts, was.MajorTimeouts),
			}
			r.PerSecond += or.PerSecond
			r.Ops = append(r.Ops, or)
		}
		sort.SliceStable(r.Ops, func(i, j int) bool { return r.Ops[i].Requests > r.Ops[j].Requests })
		r.ReadBPS = float64(delta(sb.Stats.Bytes.ServerRead, old.Stats.Bytes.ServerRead)) / secs
		r.WriteBPS = float64(delta(sb.Stats.Bytes.ServerWrite, old.Stats.Bytes.ServerWrite)) / secs
		out = append(out, r)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].PerSecond > out[j].PerSecond })
	return out
}

// delta is b-a for counters, 0 if the counter went back.
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return 0
	}
	return cur - prev
}
