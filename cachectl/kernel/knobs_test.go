package kernel_test

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/nsmount/nsmount/cachectl/kernel"
)

// TestRetirePlan: the superblocks of one client (version, address, port,
// and for nsmount's own the NFSv4 minor version) are shut down only when
// all of them are nsmount's; those already down are left alone.
func TestRetirePlan(t *testing.T) {
	vols, err := kernel.ParseVolumes([]byte(`NV SERVER   PORT DEV          FSID                              FSC
v4 cb00710b  802 0:40         1:0                               no
v4 cb00710b  802 0:41         1:0                               no
v4 cb00710b  801 0:42         1:0                               no
v3 cb00710b  802 0:43         1:0                               no
v4 cb00710a  802 0:44         1:0                               no
v4 cb00710b  802 0:45         1:0                               no
`))
	if err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddrPort("203.0.113.11:2050")
	devs := func(vols []kernel.Volume) []string {
		var out []string
		for _, v := range vols {
			out = append(out, v.Dev)
		}
		return out
	}
	// 0:40 and 0:41 are nsmount's NFSv4.2 mounts, 0:45 its NFSv4.1 one: the
	// kernel's client for 4.1 is another one.
	mine := map[string]string{"0:40": "4.2", "0:41": "4.2", "0:43": "3", "0:45": "4.1"}
	for _, tc := range []struct {
		name    string
		version string
		mine    map[string]string
		want    []string
	}{
		{"4.2 leaves the 4.1 superblock", "4.2", mine, []string{"0:40", "0:41"}},
		{"4.1 leaves the 4.2 superblocks", "4.1", mine, []string{"0:45"}},
		{"4: minor version not known, every v4 one", "4", mine, []string{"0:40", "0:41", "0:45"}},
		{"an entry's minor version not known", "4.2", map[string]string{"0:40": "4.2", "0:41": "4", "0:45": ""}, []string{"0:40", "0:41", "0:45"}},
		{"a foreign superblock counts", "4.2", map[string]string{"0:40": "4.2"}, []string{"0:40", "0:41", "0:45"}},
		{"v3", "3", mine, []string{"0:43"}},
	} {
		t.Run("client/"+tc.name, func(t *testing.T) {
			if got := devs(kernel.ClientVolumes(vols, server, tc.version, tc.mine)); !slices.Equal(got, tc.want) {
				t.Errorf("the client's superblocks: %v, want %v (not another port, version, minor version or address)", got, tc.want)
			}
		})
	}
	client := kernel.ClientVolumes(vols, server, "4.2", mine)
	for _, tc := range []struct {
		name    string
		down    map[string]bool
		mine    map[string]string
		want    []string
		foreign bool
	}{
		{"all nsmount's", nil, map[string]string{"0:40": "4.2", "0:41": "4.2"}, []string{"0:40", "0:41"}, false},
		{"one down already", map[string]bool{"0:40": true}, map[string]string{"0:41": "4.2"}, []string{"0:41"}, false},
		{"all down", map[string]bool{"0:40": true, "0:41": true}, nil, nil, false},
		{"a foreign one", nil, map[string]string{"0:40": "4.2"}, nil, true},
	} {
		t.Run("plan/"+tc.name, func(t *testing.T) {
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
