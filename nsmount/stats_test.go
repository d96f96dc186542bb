package nsmount

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestStatsOf(t *testing.T) {
	tests := []struct {
		name string
		sfs  unix.Statfs_t
		want FSStats
	}{
		{"frsize", unix.Statfs_t{Bsize: 1 << 20, Frsize: 4096, Blocks: 10, Bfree: 4, Bavail: 3, Files: 100, Ffree: 90}, FSStats{Bytes: 40960, BytesFree: 16384, BytesAvail: 12288, Files: 100, FilesFree: 90}},
		{"bsize when frsize is 0", unix.Statfs_t{Bsize: 512, Blocks: 2, Bfree: 1, Bavail: 1}, FSStats{Bytes: 1024, BytesFree: 512, BytesAvail: 512}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := statsOf(&tt.sfs); *got != tt.want {
				t.Errorf("statsOf = %+v, want %+v", *got, tt.want)
			}
		})
	}
}
