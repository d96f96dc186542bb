package cachectl

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/routing"
)

// The classification table, row by row: what watch does with each probe
// outcome the lab measured (see diagnose.go).
func TestDiagnose(t *testing.T) {
	answered := serverReply{Asked: true}
	refused := serverReply{Asked: true, Err: routing.ErrRefused}
	noRoute := serverReply{Asked: true, Err: routing.ErrNoRoute}
	silent := serverReply{Asked: true, Err: routing.ErrTimeout}
	notAsked := serverReply{}
	errno := func(e unix.Errno) nsmount.Health {
		return nsmount.Health{Errno: e, Error: "getattr /data: " + e.Error()}
	}
	tests := []struct {
		name        string
		h           nsmount.Health
		server      serverReply
		needsServer bool
		kind        string
		remount     bool
		why         string // substring
	}{
		{"answers", nsmount.Health{}, notAsked, false, DiagOK, false, ""},
		{"hung (server gone, blackhole, link down)", nsmount.Health{Hung: true, Error: "no answer in 3s"}, notAsked, false, DiagDead, true, "no answer in 3s"},
		{"ESTALE (re-export)", errno(unix.ESTALE), notAsked, false, DiagStale, true, "ESTALE"},
		{"EBADHANDLE (nfsd replaced by Ganesha)", errno(nsmount.EBADHANDLE), notAsked, false, DiagStale, true, "errno 521"},
		{"EIO, server answers (superblock shut down)", errno(unix.EIO), answered, true, DiagBroken, true, "superblock fails"},
		{"EIO, refused (soft mount, nfsd stopped)", errno(unix.EIO), refused, true, DiagDead, true, "connection refused"},
		{"EIO, no route", errno(unix.EIO), noRoute, true, DiagDead, true, "no route"},
		{"EIO, silent", errno(unix.EIO), silent, true, DiagDead, true, "timed out"},
		{"EIO, not asked", errno(unix.EIO), notAsked, true, DiagBroken, false, "not asked"},
		{"EACCES, server answers (export withdrawn)", errno(unix.EACCES), answered, true, DiagBroken, false, "withdrawn"},
		{"EACCES, refused", errno(unix.EACCES), refused, true, DiagDead, true, "EACCES"},
		{"ETIMEDOUT (softerr), server answers", errno(unix.ETIMEDOUT), answered, true, DiagBroken, false, "not expected to help"},
		{"kernel-internal errno", errno(528), answered, true, DiagBroken, false, "errno 528"},
		{"probe failed without errno", nsmount.Health{Error: "helper failed"}, notAsked, false, DiagBroken, false, "helper failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := needsServer(tt.h); got != tt.needsServer {
				t.Errorf("needsServer = %v, want %v", got, tt.needsServer)
			}
			d := diagnose(tt.h, tt.server)
			if d.Kind != tt.kind || d.Remount != tt.remount || !strings.Contains(d.Why, tt.why) {
				t.Errorf("diagnose = %+v; want %s, remount %v, why containing %q", d, tt.kind, tt.remount, tt.why)
			}
		})
	}
}
