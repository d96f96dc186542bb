package cni_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/cni"
	"github.com/nsmount/nsmount/nsmount/internal/fuzzseed"
)

// FuzzParseConfig: any network configuration either parses into one that
// holds the documented bounds, whose servers print and parse back to
// themselves and whose prevResult goes through what ADD does with it
// (converted, its DNS read, printed in the configuration's version), or
// fails with a one-line CNI configuration error.
func FuzzParseConfig(f *testing.F) {
	fuzzseed.AddFiles(f, "testdata/configs/*.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := cni.ParseConfig(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig && te.Code != types.ErrDecodingFailure || strings.ContainsAny(te.Msg, "\n\r") {
				t.Fatalf("error %v (%T): want a one-line CNI error of code 6 or 7", err, err)
			}
			return
		}
		if len(c.Servers) == 0 || len(c.Servers) > cni.MaxServers || c.Timeout <= 0 || c.Timeout > cni.MaxTimeout ||
			!filepath.IsAbs(c.StateDir) || filepath.Clean(c.StateDir) != c.StateDir || c.StateDir == "/" {
			t.Fatalf("parsed out of bounds: %+v", c)
		}
		for i, s := range c.Servers {
			back, err := cni.ParseServerAddr(s.String())
			if err != nil || back != s || s.Port == 0 {
				t.Fatalf("server %+v prints as %q, which parses to %+v, %v", s, s, back, err)
			}
			if slices.Contains(c.Servers[:i], s) {
				t.Fatalf("server %s listed twice", s)
			}
		}
		if c.PrevResult == nil {
			return
		}
		prev, err := types100.NewResultFromResult(c.PrevResult)
		if err != nil {
			return // ADD refuses it
		}
		if len(prev.DNS.Nameservers) > 0 {
			cni.ResolvConfOf(&prev.DNS) // a bad one is only reported
		}
		out, err := c.PrevResult.GetAsVersion(c.CNIVersion)
		if err != nil {
			return // ADD refuses it
		}
		var b bytes.Buffer
		if err := out.PrintTo(&b); err != nil {
			t.Fatalf("print the result: %v", err)
		}
	})
}

// FuzzParseServerAddr: any server either parses into a host and a port
// that print and parse back to themselves, or fails with a one-line invalid
// argument error.
func FuzzParseServerAddr(f *testing.F) {
	for _, s := range []string{"198.51.100.1", "198.51.100.1:20049", "2001:db8::1", "[2001:db8::1]:2050", "::ffff:198.51.100.1",
		"nfs", "nfs.example.test.:2049", "nfs:0", "[2001:db8::1", "[198.51.100.1]:2049", "fe80::1%eth0", "nfs x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := cni.ParseServerAddr(s)
		if err != nil {
			if !errors.Is(err, nsmount.ErrInvalidArgument) || strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error %q: want one line of class invalid argument", err)
			}
			return
		}
		back, err := cni.ParseServerAddr(a.String())
		if err != nil || back != a || a.Port == 0 || a.Host == "" {
			t.Fatalf("%q parses to %+v, which prints as %q and parses to %+v, %v", s, a, a, back, err)
		}
	})
}

// FuzzParseRecord: any record file either decodes into a record of the
// attachment asked for, which encodes and decodes to itself and whose
// recorded servers give addresses and errors, or is an error.
func FuzzParseRecord(f *testing.F) {
	fuzzseed.AddFiles(f, "testdata/records/*.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := cni.ParseRecord(data, "c1", "eth0")
		if err != nil {
			return
		}
		if rec.ContainerID != "c1" || rec.IfName != "eth0" {
			t.Fatalf("record of %q %q accepted for c1 eth0", rec.ContainerID, rec.IfName)
		}
		enc, err := json.Marshal(rec)
		if err != nil {
			return // values that decode but cannot be written back (a time past year 9999)
		}
		again, err := cni.ParseRecord(enc, "c1", "eth0")
		if err != nil {
			t.Fatalf("record written back does not decode: %v\n%s", err, enc)
		}
		if enc2, _ := json.Marshal(again); !bytes.Equal(enc, enc2) {
			t.Fatalf("record changes when written back:\n%s\n%s", enc, enc2)
		}
		for _, a := range cni.RecordedAddrs(rec) {
			if !a.IsValid() || a.Is4In6() {
				t.Fatalf("orphan server address %v", a)
			}
		}
		for i := range rec.Servers {
			c := &rec.Servers[i]
			if err := c.Err(); c.Reachable != (err == nil) || err != nil && !errors.Is(err, nsmount.ErrUnreachable) {
				t.Fatalf("server %+v: Err() = %v", c, err)
			}
		}
	})
}
