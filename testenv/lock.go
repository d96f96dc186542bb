package testenv

// Locks on files in the cache directory, shared across processes (go test
// runs the test binaries of several packages at once).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lockCache takes an exclusive lock on the cache directory, so that several
// processes (go test runs packages in parallel) do not fetch or build the
// same files at once. The returned function releases the lock.
func lockCache(ctx context.Context, cacheDir string) (func(), error) {
	return lockFile(ctx, filepath.Join(cacheDir, ".lock"))
}

// lockFile takes an exclusive flock on path (created if needed), waiting
// until ctx ends (the cache lock, the containerd build lock). The returned
// function releases it; so does the kernel if the process dies.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
