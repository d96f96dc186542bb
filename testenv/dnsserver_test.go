package testenv

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseDNSRecords(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		args       []string
		wantAddrs  map[string][]netip.Addr
		wantCNAMEs map[string]string
		wantErr    string
	}{
		{args: nil},
		{
			args:      []string{"Web.Lab.Test.=192.0.2.1", "web.lab.test=2001:db8::1", "web.lab.test=::ffff:192.0.2.2"},
			wantAddrs: map[string][]netip.Addr{"web.lab.test": {a("192.0.2.1"), a("2001:db8::1"), a("192.0.2.2")}},
		},
		{
			args:       []string{"www=web.lab.test."},
			wantCNAMEs: map[string]string{"www": "web.lab.test"},
		},
		{args: []string{"web"}, wantErr: "want NAME=IP"},
		{args: []string{"=192.0.2.1"}, wantErr: "want NAME=IP"},
		{args: []string{"web="}, wantErr: "want NAME=IP"},
		{args: []string{"www=a", "www=b"}, wantErr: "already an alias of a"},
	}
	for _, tt := range tests {
		var cfg DNSConfig
		err := ParseDNSRecords(&cfg, tt.args)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseDNSRecords(%q) = %v, want error with %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseDNSRecords(%q): %v", tt.args, err)
			continue
		}
		if !reflect.DeepEqual(cfg.Addrs, tt.wantAddrs) || !reflect.DeepEqual(cfg.CNAMEs, tt.wantCNAMEs) {
			t.Errorf("ParseDNSRecords(%q) = %v %v, want %v %v", tt.args, cfg.Addrs, cfg.CNAMEs, tt.wantAddrs, tt.wantCNAMEs)
		}
	}
}
