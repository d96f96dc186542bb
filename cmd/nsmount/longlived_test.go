package main

import (
	"testing"

	"github.com/nsmount/nsmount/cmd/nsmount/internal/batchwork"
)

// TestBatchWorkNames: the process that batchwork makes batch work from its
// start is the one this command tree runs as short-lived: every command
// but the long-lived ones, and the CNI plugin.
func TestBatchWorkNames(t *testing.T) {
	isLong := map[string]bool{}
	for _, c := range longLived {
		isLong[c.name] = true
	}
	root := newRootCommand()
	for _, c := range root.Commands() {
		long := isLong[c.Name()]
		if got := batchwork.LongLived(c.Name()); got != long {
			t.Errorf("command %s: batchwork.LongLived %v, long-lived here %v", c.Name(), got, long)
		}
		if got := batchwork.ShortLived([]string{"/usr/bin/nsmount", c.Name()}); got == long {
			t.Errorf("command %s: batchwork.ShortLived %v, long-lived here %v", c.Name(), got, long)
		}
	}
	for name := range isLong {
		if !batchwork.LongLived(name) {
			t.Errorf("long-lived command %s is not long-lived for batchwork", name)
		}
	}
	if !batchwork.ShortLived([]string{"/opt/cni/bin/" + cniPluginName}) {
		t.Errorf("the CNI plugin (%s) is not short-lived for batchwork", cniPluginName)
	}
}
