package main

import (
	"strings"
	"testing"
)

// TestWithOptions: --with takes ganesha and containerd, in any case,
// repeated or not; anything else is a usage error naming the choices.
func TestWithOptions(t *testing.T) {
	tests := []struct {
		names   []string
		want    int
		wantErr string
	}{
		{nil, 0, ""},
		{[]string{"ganesha"}, 1, ""},
		{[]string{"Ganesha", " containerd"}, 2, ""},
		{[]string{"nfsd"}, 0, `--with "nfsd": unknown (want ganesha or containerd)`},
		{[]string{""}, 0, "unknown"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.names, ","), func(t *testing.T) {
			opts, err := withOptions(tt.names)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(opts) != tt.want {
				t.Fatalf("got %d options, %v; want %d", len(opts), err, tt.want)
			}
		})
	}
}
