package routing

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// NFSNull calls the NFS program's NULL procedure (version vers: 3 or 4)
// at dst over TCP from inside the namespace, waiting at most timeout (and
// no longer than ctx allows): "does an NFS server answer at this address,
// from this container's network?" It is what tells a mount that fails
// while its server answers from a server that is gone (rpcinfo -T tcp
// ADDR nfs VERS does the same). A nil error means an NFS server answered;
// otherwise the error wraps ErrNoRoute, ErrRefused or ErrTimeout when it
// is one of those (a reply that is not a successful NFS reply is an
// error of its own).
func (r *Router) NFSNull(ctx context.Context, dst netip.AddrPort, vers uint32, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := r.dialTCP(ctx, dst)
	if err != nil {
		return fmt.Errorf("nfs v%d null call to %s: %w", vers, dst, Classify(ctx, err))
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Closing the connection when ctx ends (a cancel before the
	// deadline) unblocks the exchange.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := nfsNull(conn, vers); err != nil {
		return fmt.Errorf("nfs v%d null call to %s: %w", vers, dst, Classify(ctx, err))
	}
	return nil
}

// nfsNull makes the NULL call of NFS version vers over rw.
func nfsNull(rw io.ReadWriter, vers uint32) error {
	_, err := rpcCall(rw, ProgNFS, vers, 0, nil)
	return err
}
