package cachectl

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
)

// What a mount's health probe, with its server's answer to an NFS NULL
// call where the probe alone cannot tell, says about the mount. Measured
// in the lab (6.1 client; kernel nfsd and NFS-Ganesha 4.3; getattr and
// statfs of the mount root, hard and soft mounts, v4.2 and v3 alike):
//
//	server change                            probe       NULL call (TCP)
//	re-export with another fsid              ESTALE      answers
//	nfsd replaced by Ganesha, same address   EBADHANDLE  answers
//	Ganesha replaced by nfsd, same address   EBADHANDLE  answers
//	export withdrawn (exportfs -u)           EACCES      answers
//	superblock shut down (6.12, see flush)   EIO         answers
//	nfsd stopped, nothing listens            hung; EIO (soft)  refused
//	server's link down, blackhole route      hung        no route, EINVAL
//
// ESTALE and EBADHANDLE come from the server itself: it answers, and no
// longer knows the mount's file handles (forgot them, or never issued
// them). A new mount gets new handles: remount. Any other errno may come
// from the client alone (a soft mount's timeout is EIO too), so the
// server is asked: no answer is a dead server; an answer with EIO is a
// superblock that fails while its server works, which a new superblock
// cures; an answer with anything else (EACCES: the export is gone) is a
// mount a remount cannot mend: reported, left alone.

// Diagnoses.
const (
	// DiagOK: the mount answered.
	DiagOK = "ok"
	// DiagStale: the server answers but no longer knows the mount's file
	// handles (ESTALE, EBADHANDLE).
	DiagStale = "stale"
	// DiagBroken: the mount fails while its server answers.
	DiagBroken = "broken"
	// DiagDead: the server does not answer.
	DiagDead = "dead"
)

// Diagnosis is what one probe says about a mount: a plain value that watch
// acts on and status prints.
type Diagnosis struct {
	// Kind is DiagOK, DiagStale, DiagBroken or DiagDead.
	Kind string `json:"kind"`
	// Remount: a new mount of the same export is expected to work where
	// this one fails (for DiagDead: if the server can be reached another
	// way, which the remount's own checks find out).
	Remount bool `json:"remount"`
	// Why explains the diagnosis for people.
	Why string `json:"why,omitempty"`
}

// serverReply is the server's answer to an NFS NULL call from the
// mount's network namespace: Asked false when nobody asked, Err nil when
// it answered.
type serverReply struct {
	Asked bool
	Err   error
}

// handleErrno reports whether errno is the server's "I do not know this
// file handle".
func handleErrno(errno syscall.Errno) bool {
	return errno == unix.ESTALE || errno == nsmount.EBADHANDLE
}

// needsServer reports whether h alone cannot tell a failing mount from a
// dead server: the server must be asked (an NFS NULL call).
func needsServer(h nsmount.Health) bool {
	return h.Errno != 0 && !handleErrno(h.Errno)
}

// errnoName names errno as Health.String does.
func errnoName(errno syscall.Errno) string {
	return nsmount.Health{Errno: errno}.String()
}

// diagnose classifies a probe h of a mount, with the server's reply to a
// NULL call when needsServer(h) (see the table above).
func diagnose(h nsmount.Health, server serverReply) Diagnosis {
	switch {
	case h.OK():
		return Diagnosis{Kind: DiagOK}
	case h.Hung:
		return Diagnosis{Kind: DiagDead, Remount: true, Why: "the mount does not answer (" + h.Error + ")"}
	case h.Errno == unix.ESTALE:
		return Diagnosis{Kind: DiagStale, Remount: true, Why: "ESTALE: the server answers but no longer knows the mount's file handles (re-exported, or another server at the address)"}
	case h.Errno == nsmount.EBADHANDLE:
		return Diagnosis{Kind: DiagStale, Remount: true, Why: "EBADHANDLE (errno 521): the server answers but rejects the mount's file handles as not its own (another NFS server at the address, e.g. kernel nfsd replaced by NFS-Ganesha)"}
	case h.Errno == 0:
		return Diagnosis{Kind: DiagBroken, Why: "the probe failed: " + h.Error}
	case !server.Asked:
		return Diagnosis{Kind: DiagBroken, Why: fmt.Sprintf("%s (the server was not asked whether it answers)", errnoName(h.Errno))}
	case server.Err != nil:
		return Diagnosis{Kind: DiagDead, Remount: true, Why: fmt.Sprintf("%s, and the server does not answer: %v", errnoName(h.Errno), server.Err)}
	case h.Errno == unix.EIO:
		return Diagnosis{Kind: DiagBroken, Remount: true, Why: "EIO while the server answers an NFS NULL call: the superblock fails, not the server (a new mount gets one of its own)"}
	}
	why := "a remount is not expected to help"
	if h.Errno == unix.EACCES || h.Errno == unix.EPERM {
		why = "the export was withdrawn, or this client is no longer allowed: a remount would fail the same way"
	}
	return Diagnosis{Kind: DiagBroken, Why: fmt.Sprintf("%s while the server answers an NFS NULL call: %s", errnoName(h.Errno), why)}
}
