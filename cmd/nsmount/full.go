//go:build !nsmount_split

package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/nsmount/nsmount/cmd/nsmount/internal/packed"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/containerd"
)

// splitBuild reports whether this is the split build's light part.
const splitBuild = false

// addLongLived adds the long-lived commands, linked into this binary.
func addLongLived(root *cobra.Command, l packed.Launcher) {
	root.AddCommand(newWatchCommand(l), newTopCommand(), newNRICommand(l), newCSICommand(l), newAgentCommand(l))
}

// openContainer opens containerd container id's running task as a target.
func openContainer(ctx context.Context, address, namespace, id string) (*nsmount.Target, error) {
	return containerd.Open(ctx, containerd.Ref{Address: address, Namespace: namespace, ID: id})
}
