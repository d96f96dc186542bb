package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// buildVersion is the module version nsmount was built as ("dev" from a
// checkout).
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print nsmount's version, the Go it was built with, and the build (split or full)",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			build := "full"
			if splitBuild {
				build = "split (the long-lived commands run from the full binary inside)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "nsmount %s, %s %s/%s, build %s\n", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH, build)
			return nil
		},
	}
}
