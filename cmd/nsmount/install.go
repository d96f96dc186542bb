package main

import (
	"fmt"
	"path/filepath"

	"github.com/nsmount/nsmount/nsmount/agent/hostfile"
	"github.com/spf13/cobra"
)

func newInstallCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "install --to DIR",
		Short: "Copy this nsmount binary to DIR/nsmount, atomically (for runc's hooks on the host)",
		Long: `install copies the running nsmount binary to DIR/nsmount (DIR made if
missing), mode 0755, owned by root: written under a temporary name, synced
and renamed over the old one, so that a hook that runc starts meanwhile
runs the old binary or the new one, whole. A DIR/nsmount with the same
bytes is left alone. The Kubernetes chart runs it as the agent's init
container, with the host's /opt/nsmount mounted.`,
		Example: `  nsmount install --to /opt/nsmount/bin`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
				return usageError{fmt.Errorf("--to %q: want a clean absolute path", dir)}
			}
			res, err := hostfile.Install("/proc/self/exe", dir)
			if err != nil {
				return err
			}
			verb := "installed"
			if !res.Changed {
				verb = "up to date:"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (%d bytes, %s)\n", verb, res.Path, res.Size, res.Digest)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "to", "", "directory to install nsmount into (required)")
	return cmd
}
