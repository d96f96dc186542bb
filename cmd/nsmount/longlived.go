package main

import (
	"os"

	"github.com/nsmount/nsmount/cmd/nsmount/internal/packed"
)

// longLived are the commands that link the daemons' libraries (gRPC and
// protobuf, NRI, the CSI spec, the Prometheus client, containerd's API):
// the long-lived ones, and top. In the split build (make build) they run
// from the full binary that the product binary carries (split.go); the
// rest, and every mount helper, run from the product binary itself, which
// does not link those libraries and so starts in about half the time.
// `--container` (containerd's API) also runs from the full binary.
var longLived = []struct{ name, short string }{
	{"watch", "Keep nsmount's mounts right: remount on route change or ESTALE, report dead servers"},
	{"top", "Show which container issues which NFS operations: per mount, per-operation rates, busiest first"},
	{"nri", "NRI plugin: mount the NFS volumes that pod and container annotations ask for"},
	{"csi", "CSI node plugin nfs.nsmount.io: NFS volumes mounted from the pod's own network"},
	{"agent", "The node agent: NRI plugin, CSI node service, watch with metrics, in one process"},
}

// shortOf returns the one-line description of long-lived command name.
func shortOf(name string) string {
	for _, c := range longLived {
		if c.name == name {
			return c.short
		}
	}
	panic("no long-lived command " + name)
}

// selfPath is the path of the nsmount binary that the user runs: the
// product binary's when this one runs from inside it (l), else this one's.
// Hooks are given it.
func selfPath(l packed.Launcher) (string, error) {
	if l.Path != "" {
		return l.Path, nil
	}
	return os.Executable()
}
