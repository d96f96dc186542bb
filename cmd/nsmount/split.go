//go:build nsmount_split

package main

import (
	"context"
	_ "embed"
	"os"

	"github.com/spf13/cobra"

	"github.com/nsmount/nsmount/cmd/nsmount/internal/packed"
	"github.com/nsmount/nsmount/nsmount"
)

// fullBinary is the full nsmount binary, zstd-compressed: `make build`
// builds it (without the nsmount_split tag) into packed/ before it builds
// this one.
//
//go:embed packed/nsmount-full.zst
var fullBinary []byte

// splitBuild reports whether this is the split build's light part.
const splitBuild = true

// addLongLived adds the long-lived commands, each run from the full
// binary with this process's arguments, flags and help included.
func addLongLived(root *cobra.Command, _ packed.Launcher) {
	for _, c := range longLived {
		root.AddCommand(&cobra.Command{
			Use:                c.name,
			Short:              c.short,
			DisableFlagParsing: true,
			RunE:               func(*cobra.Command, []string) error { return runFull() },
		})
	}
}

// openContainer runs this command again from the full binary, which links
// containerd's API.
func openContainer(context.Context, string, string, string) (*nsmount.Target, error) {
	return nil, runFull()
}

// runFull runs this process's command line from the full binary, in its
// place. It returns only on failure.
func runFull() error {
	return packed.Exec(fullBinary, os.Args, os.Environ())
}
