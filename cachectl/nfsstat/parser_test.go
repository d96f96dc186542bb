package nfsstat_test

import (
	"errors"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/kernel/kerneltest"
	"github.com/nsmount/nsmount/cachectl/nfsstat"
)

func newParser(t testing.TB) *nfsstat.Parser {
	t.Helper()
	p, err := nfsstat.NewParser()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// parseMatched parses a captured mountstats text and matches it to the
// mountinfo captured with it.
func parseMatched(t *testing.T, mountstats, mountinfo string) ([]kernel.NFSStats, []error) {
	t.Helper()
	mounts, err := kernel.ParseNFSMounts(kerneltest.Captured(t, mountinfo))
	if err != nil {
		t.Fatal(err)
	}
	stats, errs := newParser(t).Parse(kerneltest.Captured(t, mountstats))
	return kernel.MatchMounts(stats, mounts), errs
}

// want is what a test expects of one superblock's statistics.
type want struct {
	mountpoint, dev, fstype, version string
	getattr                          kernel.NFSOp
	xprts                            int
	sends, receives, connects        uint64
	majors                           uint64
	serverWrite                      uint64
	idle                             time.Duration
}

func TestParseMountStatsReal(t *testing.T) {
	getattr := func(req, trans, major, sent, recv, queue, rtt, exec, errs uint64) kernel.NFSOp {
		ms := func(n uint64) time.Duration { return time.Duration(n) * time.Millisecond }
		return kernel.NFSOp{Name: "GETATTR", Requests: req, Transmissions: trans, MajorTimeouts: major, BytesSent: sent, BytesReceived: recv, Queue: ms(queue), RTT: ms(rtt), Execute: ms(exec), Errors: errs}
	}
	tests := []struct {
		name, mountstats, mountinfo string
		want                        []want
	}{
		{
			name:       "6.1: v4.2 noac, v3, v4.1 nconnect=4",
			mountstats: "mountstats-6.1.txt", mountinfo: "mountinfo-6.1.txt",
			want: []want{
				{"/data", "0:40", "nfs4", "4.2", getattr(19, 19, 0, 2872, 4560, 0, 8, 9, 0), 1, 53, 53, 2, 0, 262150, 0},
				{"/v3", "0:41", "nfs", "3", getattr(5, 5, 0, 424, 560, 0, 2, 2, 0), 1, 23, 23, 2, 0, 262150, 0},
				{"/mnt", "0:42", "nfs4", "4.1", getattr(3, 3, 0, 444, 720, 0, 1, 1, 0), 4, 38, 38, 8, 0, 262150, 0},
			},
		},
		{
			name:       "6.12: v4.2 noac, v3, v4.1 nconnect=4",
			mountstats: "mountstats-6.12.txt", mountinfo: "mountinfo-6.12.txt",
			want: []want{
				{"/data", "0:42", "nfs4", "4.2", getattr(19, 19, 0, 2872, 4560, 0, 9, 11, 0), 1, 53, 53, 2, 0, 262150, 0},
				{"/v3", "0:43", "nfs", "3", getattr(5, 5, 0, 424, 560, 0, 2, 3, 0), 1, 22, 22, 2, 0, 262150, 0},
				{"/mnt", "0:44", "nfs4", "4.1", getattr(3, 3, 0, 444, 720, 0, 1, 2, 0), 4, 38, 38, 8, 0, 262150, 0},
			},
		},
		{
			// 16 s into a blackholed route: the stuck GETATTR is in no
			// per-op counter; the transport sent without receiving.
			name:       "6.1 during an outage: requests sent, no reply, no major timeout counted",
			mountstats: "mountstats-outage-6.1.txt", mountinfo: "mountinfo-6.1.txt",
			want: []want{
				{"/data", "0:40", "nfs4", "4.2", getattr(19, 19, 0, 2872, 4560, 0, 8, 9, 0), 1, 55, 53, 2, 0, 262150, 15 * time.Second},
				{"/v3", "0:41", "nfs", "3", getattr(5, 5, 0, 424, 560, 0, 2, 2, 0), 1, 23, 23, 2, 0, 262150, 15 * time.Second},
				{"/mnt", "0:42", "nfs4", "4.1", getattr(3, 3, 0, 444, 720, 0, 1, 1, 0), 4, 39, 38, 8, 0, 262150, 15 * time.Second},
			},
		},
		{
			// After the route came back: the GETATTRs that waited are
			// counted now, with their major timeouts and queue time.
			name:       "6.1 after the outage: major timeouts counted on completion",
			mountstats: "mountstats-after-6.1.txt", mountinfo: "mountinfo-6.1.txt",
			want: []want{
				{"/data", "0:40", "nfs4", "4.2", getattr(21, 22, 9, 3328, 5040, 18343, 9, 18354, 0), 1, 63, 60, 6, 26, 262150, 2 * time.Second},
				{"/v3", "0:41", "nfs", "3", getattr(5, 5, 0, 424, 560, 0, 2, 2, 0), 1, 23, 23, 2, 0, 262150, 52 * time.Second},
				{"/mnt", "0:42", "nfs4", "4.1", getattr(3, 3, 0, 444, 720, 0, 1, 1, 0), 4, 55, 55, 20, 0, 1310726, 3 * time.Second},
			},
		},
		{
			// 6.12 failed the hard mount's stuck GETATTR with an error
			// during the outage (the blackhole route makes connect fail
			// with EINVAL, 8751 connects).
			name:       "6.12 during an outage: a reconnect storm",
			mountstats: "mountstats-outage-6.12.txt", mountinfo: "mountinfo-6.12.txt",
			want: []want{
				{"/data", "0:42", "nfs4", "4.2", getattr(20, 20, 5, 3020, 4560, 1, 9, 10260, 1), 1, 55, 53, 8751, 9, 262150, 0},
				{"/v3", "0:43", "nfs", "3", getattr(5, 5, 0, 424, 560, 0, 2, 3, 0), 1, 22, 22, 2, 0, 262150, 15 * time.Second},
				{"/mnt", "0:44", "nfs4", "4.1", getattr(3, 3, 0, 444, 720, 0, 1, 2, 0), 4, 40, 38, 9, 0, 262150, 0},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, errs := parseMatched(t, tt.mountstats, tt.mountinfo)
			if len(errs) > 0 {
				t.Fatalf("errors: %v", errs)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d superblocks, want %d: %+v", len(got), len(tt.want), got)
			}
			for i, w := range tt.want {
				s := got[i]
				if s.Mountpoint != w.mountpoint || s.Dev != w.dev || s.FSType != w.fstype || s.Version != w.version || s.Source != "198.51.100.10:/export" {
					t.Errorf("superblock %d: %s %s %s vers %s source %s, want %s %s %s vers %s", i, s.Mountpoint, s.Dev, s.FSType, s.Version, s.Source, w.mountpoint, w.dev, w.fstype, w.version)
				}
				if op, ok := s.Op("GETATTR"); !ok || op != w.getattr {
					t.Errorf("%s GETATTR = %+v, want %+v", w.mountpoint, op, w.getattr)
				}
				x := s.Transport()
				if len(s.Xprts) != w.xprts || x.Sends != w.sends || x.Receives != w.receives || x.Connects != w.connects || x.Idle != w.idle || x.Protocol != "tcp" {
					t.Errorf("%s transport: %d xprts %+v, want %d sends %d receives %d connects %d idle %s", w.mountpoint, len(s.Xprts), x, w.xprts, w.sends, w.receives, w.connects, w.idle)
				}
				if s.MajorTimeouts() != w.majors {
					t.Errorf("%s major timeouts %d, want %d", w.mountpoint, s.MajorTimeouts(), w.majors)
				}
				if s.Bytes.ServerWrite != w.serverWrite {
					t.Errorf("%s server write %d, want %d", w.mountpoint, s.Bytes.ServerWrite, w.serverWrite)
				}
			}
		})
	}
}

// record returns the record of mountstats text whose mount point is mp.
func record(t *testing.T, text, mp string) string {
	t.Helper()
	for _, r := range strings.SplitAfter(text, "\n\n") {
		if strings.Contains(r, " mounted on "+mp+" ") {
			return r
		}
	}
	t.Fatalf("no record for %s", mp)
	return ""
}

func TestParseMountStatsIsolatesFailures(t *testing.T) {
	parser := newParser(t)
	real := string(kerneltest.Captured(t, "mountstats-6.1.txt"))
	data, v3 := record(t, real, "/data"), record(t, real, "/v3")
	tests := []struct {
		name     string
		text     string
		wantMPs  []string // parsed, in order
		wantErrs []string // mount points of the records that failed
	}{
		{"real", real, []string{"/data", "/v3", "/mnt"}, nil},
		{"unknown transport between good records", data + strings.Replace(v3, "xprt:\ttcp", "xprt:\ttcp-tls", 1) + record(t, real, "/mnt"), []string{"/data", "/mnt"}, []string{"/v3"}},
		{"an events line with a field more", strings.Replace(data, "events:\t18 2", "events:\t18 2 7", 1) + v3, []string{"/v3"}, []string{"/data"}},
		{"a per-op line cut short", data + strings.Replace(v3, "GETATTR: 5 5 0", "GETATTR: 5", 1), []string{"/data"}, []string{"/v3"}},
		{"garbage before the first record", "garbage\n\tbytes: x\n" + data, []string{"/data"}, nil},
		{"a header without statvers", "device s:/e mounted on /x with fstype nfs4\n" + data, []string{"/data"}, nil},
		{"a broken header: its lines stay with it", "device a mounted on /b with fstype\n\tbytes:\t1\n" + data, []string{"/data"}, nil},
		{"escaped mount point", strings.Replace(data, "on /data ", `on /my\040data `, 1), []string{"/my data"}, nil},
		{"empty", "", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stats, errs := parser.Parse([]byte(tt.text))
			var mps []string
			for _, s := range stats {
				mps = append(mps, s.Mountpoint)
			}
			if strings.Join(mps, ",") != strings.Join(tt.wantMPs, ",") {
				t.Errorf("parsed %v, want %v", mps, tt.wantMPs)
			}
			var failed []string
			for _, err := range errs {
				var re *kernel.RecordError
				if !errors.As(err, &re) {
					t.Fatalf("error %v is not a *RecordError", err)
				}
				failed = append(failed, re.Mountpoint)
			}
			if strings.Join(failed, ",") != strings.Join(tt.wantErrs, ",") {
				t.Errorf("failed %v, want %v (%v)", failed, tt.wantErrs, errs)
			}
		})
	}
}

func TestMatchMounts(t *testing.T) {
	parser := newParser(t)
	real := string(kerneltest.Captured(t, "mountstats-6.1.txt"))
	info := string(kerneltest.Captured(t, "mountinfo-6.1.txt"))
	line := func(mp string) string {
		for _, l := range strings.Split(info, "\n") {
			if strings.Contains(l, " "+mp+" ") {
				return l + "\n"
			}
		}
		t.Fatalf("no mountinfo line for %s", mp)
		return ""
	}
	data, v3 := record(t, real, "/data"), record(t, real, "/v3")
	tests := []struct {
		name      string
		stats     string
		mountinfo string
		want      []string // "mountpoint dev mountid"
	}{
		{"in order", real, info, []string{"/data 0:40 92", "/v3 0:41 94", "/mnt 0:42 93"}},
		{"a mount gone from mountinfo", data + v3, line("/v3"), []string{"/v3 0:41 94"}},
		{"a mount new in mountinfo", data, line("/data") + line("/v3"), []string{"/data 0:40 92"}},
		{
			// The same superblock mounted twice (a bind mount): one
			// record each.
			name:      "bind mount of one superblock",
			stats:     data + strings.Replace(data, "on /data ", "on /data2 ", 1),
			mountinfo: line("/data") + strings.Replace(strings.Replace(line("/data"), " /data ", " /data2 ", 1), "92 51", "97 51", 1),
			want:      []string{"/data 0:40 92", "/data2 0:40 97"},
		},
		{
			// Two mounts of one source at one path (one over the other):
			// paired in order.
			name:      "overmount",
			stats:     data + data,
			mountinfo: line("/data") + strings.Replace(strings.Replace(line("/data"), "0:40", "0:45", 1), "92 51", "98 92", 1),
			want:      []string{"/data 0:40 92", "/data 0:45 98"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mounts, err := kernel.ParseNFSMounts([]byte(tt.mountinfo))
			if err != nil {
				t.Fatal(err)
			}
			stats, errs := parser.Parse([]byte(tt.stats))
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			var got []string
			for _, s := range kernel.MatchMounts(stats, mounts) {
				got = append(got, s.Mountpoint+" "+s.Dev+" "+strconv.FormatUint(s.MountID, 10))
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func BenchmarkParseMountStats(b *testing.B) {
	parser := newParser(b)
	text := kerneltest.Captured(b, "mountstats-6.1.txt")
	for b.Loop() {
		if _, errs := parser.Parse(text); errs != nil {
			b.Fatal(errs)
		}
	}
}

// FuzzParseMountStats: mountstats carries sources and mount points that
// containers chose. Every record is parsed on its own: whatever follows
// them, the records before are parsed the same.
func FuzzParseMountStats(f *testing.F) {
	for _, name := range []string{"mountstats-6.1.txt", "mountstats-6.12.txt", "mountstats-outage-6.12.txt", "mountstats-after-6.1.txt"} {
		f.Add(kerneltest.Captured(f, name))
	}
	f.Add([]byte("device a:/b mounted on /c with fstype nfs statvers=1.1\n\txprt:\tudp 1 2\n\tper-op statistics\n\t NULL: 1 2 3 4 5 6 7 8 9 10\n"))
	f.Add([]byte("no device mounted on /x\\040y with fstype nfs4 statvers=1.0\n\tage:\t-1\n"))
	real := string(kerneltest.Captured(f, "mountstats-6.1.txt"))
	recs := strings.SplitAfter(real, "\n\n")
	prefix := []byte(recs[0] + recs[1] + "device sep mounted on /sep with fstype tmpfs\n")
	parser := newParser(f)
	good, errs := parser.Parse(prefix)
	if len(good) != 2 || len(errs) != 0 {
		f.Fatalf("prefix: %d records, %v", len(good), errs)
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		stats, errs := parser.Parse(text)
		for _, s := range stats {
			if (s.FSType != "nfs" && s.FSType != "nfs4") || s.Dev != "" {
				t.Fatalf("accepted %+v", s)
			}
		}
		for _, err := range errs {
			var re *kernel.RecordError
			if !errors.As(err, &re) {
				t.Fatalf("error %v", err)
			}
		}
		after, _ := parser.Parse(append(slices.Clip(prefix), text...))
		if len(after) < 2 || !reflect.DeepEqual(after[:2], good) {
			t.Fatalf("records before %q parsed differently", text)
		}
	})
}
