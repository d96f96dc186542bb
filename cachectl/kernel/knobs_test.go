package kernel_test

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/nsmount/nsmount/cachectl/kernel"
)

// TestRetirePlan: the superblocks of one client (version, address, port)
// are shut down only when all of them are nsmount's; those already down
// are left alone.
func TestRetirePlan(t *testing.T) {
	vols, err := kernel.ParseVolumes([]byte(`NV SERVER   PORT DEV          FSID                              FSC
v4 cb00710b  802 0:40         1:0                               no
v4 cb00710b  802 0:41         1:0                               no
v4 cb00710b  801 0:42         1:0                               no
v3 cb00710b  802 0:43         1:0                               no
v4 cb00710a  802 0:44         1:0                               no
`))
	if err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddrPort("203.0.113.11:2050")
	client := kernel.ClientVolumes(vols, server, "v4")
	var devs []string
	for _, v := range client {
		devs = append(devs, v.Dev)
	}
	if !slices.Equal(devs, []string{"0:40", "0:41"}) {
		t.Fatalf("the client's superblocks: %v, want 0:40 0:41 (not another port, version or address)", devs)
	}
	for _, tc := range []struct {
		name       string
		down, mine map[string]bool
		want       []string
		foreign    bool
	}{
		{"all nsmount's", nil, map[string]bool{"0:40": true, "0:41": true}, []string{"0:40", "0:41"}, false},
		{"one down already", map[string]bool{"0:40": true}, map[string]bool{"0:41": true}, []string{"0:41"}, false},
		{"all down", map[string]bool{"0:40": true, "0:41": true}, nil, nil, false},
		{"a foreign one", nil, map[string]bool{"0:40": true}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kernel.RetirePlan(client, tc.down, tc.mine)
			if tc.foreign != errors.Is(err, kernel.ErrForeignSuperblock) || (!tc.foreign && err != nil) {
				t.Fatalf("err = %v, foreign %v", err, tc.foreign)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("plan %v, want %v", got, tc.want)
			}
		})
	}
}
