package testenv

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// acquireSlot takes one of maxVMs machine-wide VM slots: a flock on a file
// in the cache directory. Labs in different processes (go test runs test
// binaries of several packages at once) share the machine's cores, so the
// bound must hold across them, not only within one Lab. The slot is released
// by the returned function, or by the kernel if the process dies.
//
// If no slot is free at once, it says so on log, and again once it has one.
func acquireSlot(ctx context.Context, cacheDir string, log io.Writer) (release func(), err error) {
	var waitStart time.Time
	for {
		for i := 0; i < maxVMs; i++ {
			name := filepath.Join(cacheDir, fmt.Sprintf("vm-slot-%d.lock", i))
			f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
			if err != nil {
				return nil, fmt.Errorf("open VM slot: %w", err)
			}
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
				if !waitStart.IsZero() {
					fmt.Fprintf(log, "nsmount-lab: got a VM slot after %v\n", time.Since(waitStart).Round(time.Second))
				}
				return func() { f.Close() }, nil
			}
			f.Close()
		}
		if waitStart.IsZero() {
			waitStart = time.Now()
			fmt.Fprintf(log, "nsmount-lab: waiting for a VM slot: %d VMs already run on this machine (locks %s)\n",
				maxVMs, filepath.Join(cacheDir, "vm-slot-*.lock"))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a VM slot: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
