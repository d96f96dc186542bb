package kernel_test

import (
	"testing"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/kernel/kerneltest"
)

// The nfsfs tables captured with the mountstats of nfsstat's parser tests: three clients of
// one address (v3, v4.2, v4.1), named as the mounts named the server.
func TestParseNFSFSCaptured(t *testing.T) {
	for _, k := range []string{"6.1", "6.12"} {
		t.Run(k, func(t *testing.T) {
			vols, err := kernel.ParseVolumes(kerneltest.Captured(t, "nfsfs-volumes-"+k+".txt"))
			if err != nil || len(vols) != 3 {
				t.Fatalf("volumes %+v, %v", vols, err)
			}
			cls, err := kernel.ParseClients(kerneltest.Captured(t, "nfsfs-servers-"+k+".txt"))
			if err != nil || len(cls) != 3 {
				t.Fatalf("clients %+v, %v", cls, err)
			}
			for _, c := range cls {
				if c.Hostname != "198.51.100.10" || c.Server.String() != "198.51.100.10" || c.Port != 2049 {
					t.Errorf("client %+v", c)
				}
			}
		})
	}
}
