package cni_test

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/cni"
	"github.com/nsmount/nsmount/routing/resolver"
)

func TestParseConfig(t *testing.T) {
	const head = `{"cniVersion":"1.0.0","name":"n","type":"nsmount-cni",`
	tests := []struct {
		name, conf string
		err        string // "" means valid
		check      func(t *testing.T, c *cni.Config)
	}{
		{name: "minimal", conf: head + `"servers":["198.51.100.1"]}`, check: func(t *testing.T, c *cni.Config) {
			if c.StateDir != "/run/nsmount" || c.Timeout != 5*time.Second || c.Required || c.DNS != nil || c.PrevResult != nil || c.Name != "n" || c.CNIVersion != "1.0.0" {
				t.Errorf("defaults: %+v", c)
			}
			if c.Servers[0] != (cni.ServerAddr{Host: "198.51.100.1", Port: 2049}) {
				t.Errorf("servers %v", c.Servers)
			}
		}},
		{name: "full", conf: head + `"servers":["nfs:2050","[2001:db8::1]"],"timeout":"250ms","stateDir":"/run/x","required":true,
			"dns":{"nameservers":["192.0.2.53","2001:db8::53"],"domain":"d.test","search":["a.test","b.test"],"options":["ndots:2","timeout:1"]},
			"runtimeConfig":{},"args":{"cni":{}},
			"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"198.51.100.5/24","interface":0}]}}`,
			check: func(t *testing.T, c *cni.Config) {
				if c.Timeout != 250*time.Millisecond || c.StateDir != "/run/x" || !c.Required || len(c.Servers) != 2 || c.Servers[1].Host != "2001:db8::1" {
					t.Errorf("parsed %+v", c)
				}
				want := &resolver.ResolvConf{
					Nameservers: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53"), netip.MustParseAddrPort("[2001:db8::53]:53")},
					Search:      []string{"a.test", "b.test"}, Ndots: 2, Timeout: time.Second, Attempts: 2,
				}
				if !reflect.DeepEqual(c.DNS, want) {
					t.Errorf("dns %+v, want %+v", c.DNS, want)
				}
				r, err := types100.GetResult(c.PrevResult)
				if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.String() != "198.51.100.5/24" {
					t.Errorf("prevResult %v, %v", c.PrevResult, err)
				}
			}},
		{name: "prevResult-0.4.0", conf: `{"cniVersion":"0.4.0","name":"n","type":"nsmount-cni","servers":["nfs"],
			"prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"198.51.100.5/24","interface":0}]}}`,
			check: func(t *testing.T, c *cni.Config) {
				if c.PrevResult == nil || c.PrevResult.Version() != "0.4.0" {
					t.Errorf("prevResult %v", c.PrevResult)
				}
			}},
		{name: "unknown field", conf: head + `"servers":["nfs"],"server":"x"}`, err: `unknown field "server"`},
		{name: "key case", conf: head + `"servers":["nfs"],"StateDir":"/etc"}`, err: `unknown field "StateDir"`},
		{name: "key twice", conf: head + `"servers":["nfs"],"servers":["198.51.100.1"]}`, err: `field "servers" given more than once`},
		{name: "key twice in prevResult", conf: head + `"servers":["nfs"],"prevResult":{"cniVersion":"1.0.0","ips":[],"ips":[]}}`, err: `field "ips" given more than once`},
		{name: "unknown dns field", conf: head + `"servers":["nfs"],"dns":{"nameserver":["192.0.2.53"]}}`, err: `unknown field "nameserver"`},
		{name: "not json", conf: `{"servers":`, err: "nsmount-cni config: unexpected EOF"},
		{name: "trailing data", conf: head + `"servers":["nfs"]} {}`, err: "data after the JSON object"},
		{name: "no servers", conf: head + `"servers":[]}`, err: `"servers" is empty`},
		{name: "servers missing", conf: head + `"timeout":"1s"}`, err: `"servers" is empty`},
		{name: "too many servers", conf: head + `"servers":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]}`, err: "17 servers: at most 16"},
		{name: "bad server", conf: head + `"servers":["nfs..test"]}`, err: `invalid server "nfs..test"`},
		{name: "bad port", conf: head + `"servers":["nfs:0"]}`, err: `port "0" is not 1-65535`},
		{name: "duplicate server", conf: head + `"servers":["198.51.100.1","198.51.100.1:2049"]}`, err: "listed twice"},
		{name: "bad timeout", conf: head + `"servers":["nfs"],"timeout":"forever"}`, err: `timeout "forever"`},
		{name: "zero timeout", conf: head + `"servers":["nfs"],"timeout":"0s"}`, err: `timeout "0s"`},
		{name: "sub-millisecond timeout", conf: head + `"servers":["nfs"],"timeout":"1ns"}`, err: `timeout "1ns"`},
		{name: "huge timeout", conf: head + `"servers":["nfs"],"timeout":"2h"}`, err: `timeout "2h"`},
		{name: "relative stateDir", conf: head + `"servers":["nfs"],"stateDir":"run/x"}`, err: `stateDir "run/x"`},
		{name: "unclean stateDir", conf: head + `"servers":["nfs"],"stateDir":"/run/../etc"}`, err: `stateDir "/run/../etc"`},
		{name: "root stateDir", conf: head + `"servers":["nfs"],"stateDir":"/"}`, err: `stateDir "/"`},
		{name: "bad nameserver", conf: head + `"servers":["nfs"],"dns":{"nameservers":["ns1"]}}`, err: `nameserver "ns1": not an IP address`},
		{name: "newline in search", conf: head + `"servers":["nfs"],"dns":{"nameservers":["192.0.2.53"],"search":["a\nnameserver 1.2.3.4"]}}`, err: "search"},
		{name: "bad prevResult", conf: head + `"servers":["nfs"],"prevResult":{"ips":"x"}}`, err: "prevResult"},
		{name: "servers not a list", conf: head + `"servers":"nfs"}`, err: "cannot unmarshal string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := cni.ParseConfig([]byte(tt.conf))
			if tt.err == "" {
				if err != nil {
					t.Fatalf("parse: %v", err)
				}
				tt.check(t, c)
				return
			}
			var te *types.Error
			if !errors.As(err, &te) || !strings.Contains(te.Msg, tt.err) || (te.Code != types.ErrInvalidNetworkConfig && te.Code != types.ErrDecodingFailure) || strings.Contains(te.Msg, "\n") {
				t.Fatalf("parse = %v; want a one-line CNI config error containing %q", err, tt.err)
			}
		})
	}
}

func TestError(t *testing.T) {
	for _, tt := range []struct {
		err  error
		code uint
	}{
		{nsmount.ErrUnreachable, 106}, {nsmount.ErrTargetNotFound, 104}, {nsmount.ErrInvalidArgument, types.ErrInvalidNetworkConfig},
		{errors.New("x"), types.ErrInternal}, {types.NewError(types.ErrInvalidNetNS, "gone", ""), types.ErrInvalidNetNS},
		{nsmount.WithClass(nsmount.ErrDenied, errors.New("two\nlines")), 111},
	} {
		var te *types.Error
		if !errors.As(cni.Error(tt.err), &te) || te.Code != tt.code || strings.Contains(te.Msg, "\n") {
			t.Errorf("Error(%v) = %v, want one line with code %d", tt.err, te, tt.code)
		}
	}
}
