package kernel_test

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/kernel/kerneltest"
)

// The NFS client's tables are the kernel's text, but they name what
// containers made: servers they chose, mount points they named. The
// parsers must never panic, and what they accept must be well formed.

func FuzzParseVolumes(f *testing.F) {
	f.Add([]byte(kerneltest.RealVolumes))
	f.Add([]byte("v3 00000000000000000000ffffc0000201  3a98 0:40 1:0 no\n"))
	f.Add([]byte("NV SERVER PORT DEV\nv4 zz336401  801 0:33 1:0 no\n"))
	f.Add([]byte("v4 c6336401  10000 0:33\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		vols, err := kernel.ParseVolumes(text)
		if err != nil {
			return
		}
		for _, v := range vols {
			if !v.Server.IsValid() || v.Server.Is4In6() || v.Dev == "" || strings.ContainsAny(v.Dev+v.Version, " \t\n") {
				t.Fatalf("accepted a malformed volume %+v from %q", v, text)
			}
		}
	})
}

func FuzzParseClients(f *testing.F) {
	f.Add([]byte(kerneltest.RealServers))
	f.Add([]byte("v4 c6336401 801 x h\n"))
	f.Add([]byte("v4 20010db8000000000000000000000001  801   1 2001:db8::1\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		cls, err := kernel.ParseClients(text)
		if err != nil {
			return
		}
		for _, c := range cls {
			if !c.Server.IsValid() || c.Server.Is4In6() {
				t.Fatalf("accepted a malformed client %+v from %q", c, text)
			}
		}
	})
}

func FuzzParseNFSMounts(f *testing.F) {
	f.Add([]byte(kerneltest.RootMountinfo + kerneltest.RealMountinfo))
	f.Add([]byte(`61 47 0:35 / /with\040space rw,relatime shared:1 master:2 - nfs4 [2001:db8::1]:/export rw,vers=4.1,addr=2001:db8::1` + "\n"))
	f.Add([]byte("59 47 0:33 / /m4 rw - nfs4  rw\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		mounts, err := kernel.ParseNFSMounts(text)
		if err != nil {
			return
		}
		for _, m := range mounts {
			if m.FSType != "nfs" && m.FSType != "nfs4" {
				t.Fatalf("filter let through %q", m.FSType)
			}
		}
	})
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
