package kernel_test

import (
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
