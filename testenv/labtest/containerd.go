package labtest

// A private containerd tied to a test's lifetime.

import (
	"context"
	"testing"
	"time"

	"github.com/nsmount/nsmount/testenv/ctrdenv"
)

// StartContainerd starts a private containerd for the test and stops it,
// with every container, task and shim it ran, when the test ends. The test
// fails (it never skips) when containerd cannot start; it needs root.
func StartContainerd(t testing.TB, cfg ctrdenv.ContainerdConfig) *ctrdenv.Containerd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := ctrdenv.NewContainerd(ctx, cfg)
	if err != nil {
		t.Fatalf("containerd for tests cannot start (install containerd and runc: testenv/install-deps.sh; needs root): %v", err)
	}
	t.Logf("containerd ready in %v at %s", c.Startup.Round(time.Millisecond), c.Address)
	t.Cleanup(func() {
		if t.Failed() && !c.Closed() {
			t.Logf("containerd log:\n%s", c.LogTail(60))
		}
		if err := c.Close(); err != nil {
			t.Errorf("stopping containerd: %v", err)
		}
	})
	return c
}
