package main

import (
	"testing"

	"github.com/nsmount/nsmount/cmd/nsmount/internal/batchwork"
)

// TestBatchWorkNames: the process that batchwork makes batch work from its
// start is the one this command tree runs as short-lived: every command
// but the long-lived ones, and the CNI plugin.
func TestBatchWorkNames(t *testing.T) {
	root := newRootCommand()
	for _, c := range root.Commands() {
		_, long := longLivedShort(c.Name())
		if got := batchwork.LongLived(c.Name()); got != long {
			t.Errorf("command %s: batchwork.LongLived %v, long-lived here %v", c.Name(), got, long)
		}
		if got := batchwork.ShortLived([]string{"/usr/bin/nsmount", c.Name()}); got == long {
			t.Errorf("command %s: batchwork.ShortLived %v, long-lived here %v", c.Name(), got, long)
		}
	}
	for _, c := range longLived {
		if !batchwork.LongLived(c.name) {
			t.Errorf("long-lived command %s is not long-lived for batchwork", c.name)
		}
	}
	if !batchwork.ShortLived([]string{"/opt/cni/bin/" + cniPluginName}) {
		t.Errorf("the CNI plugin (%s) is not short-lived for batchwork", cniPluginName)
	}
}
