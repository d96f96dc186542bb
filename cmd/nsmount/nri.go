//go:build !nsmount_split

package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/nri/pkg/api"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cmd/nsmount/internal/packed"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/integration/nri"
)

func newNRICommand(l packed.Launcher) *cobra.Command {
	var (
		c  nri.Config
		lf logFlags
	)
	cmd := &cobra.Command{
		Use:   "nri [--socket PATH] [--plugin-name NAME] [--plugin-idx NN] [--policy PATH] [--log FILE] [--nsmount PATH]",
		Short: shortOf("nri"),
		Long: `nri runs an NRI plugin (containerd >= 1.7, CRI-O) that gives NFS mounts to
the containers whose annotations ask for them. The annotation that applies
to a container is the first of:
  the container's own annotation ` + admission.MountsAnnotation + `,
  the pod annotation ` + nri.PodContainerMountsPrefix + `<container name>,
  the pod annotation ` + admission.MountsAnnotation + ` (every container of the pod).
At CreateContainer it is parsed and checked against the policy: a bad
annotation or a refused required mount fails the creation. Then the
container gets the annotation and nsmount hook as its createRuntime and
poststop OCI hooks, which mount (with the container's PID, in its network
and mount namespaces) and tear down. When a container or pod stops or is
removed, nsmount forgets its registry entries, unmounts what is left and
flushes stale NFS state of the pod's network namespace (warnings only).
What the plugin does is logged on stderr and, with --log, in FILE, where
the hooks write too. It runs until the runtime closes the connection, or
SIGTERM/SIGINT.`,
		Example: `  nsmount nri --policy /etc/nsmount/policy.json --log /var/log/nsmount-nri.log`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.StateDir, _ = cmd.Flags().GetString("state-dir")
			if !cmd.Flags().Changed("nsmount") {
				exe, err := selfPath(l)
				if err != nil {
					return fmt.Errorf("find nsmount's own path for the hooks: %w (give --nsmount)", err)
				}
				c.Nsmount = exe
			}
			if err := validateNRI(&c); err != nil {
				return err
			}
			if l.Helper != "" {
				m, err := cachectl.Open(cachectl.Config{StateDir: c.StateDir, Helper: l.Helper})
				if err != nil {
					return err
				}
				c.Manager = m
			}
			out := cmd.ErrOrStderr()
			if c.Log != "" {
				f, err := os.OpenFile(c.Log, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o640)
				if err != nil {
					return fmt.Errorf("open --log: %w", err)
				}
				defer f.Close()
				out = io.MultiWriter(out, f)
			}
			log, err := lf.logger(out)
			if err != nil {
				return err
			}
			c.Logger = log
			return nri.Run(cmd.Context(), c)
		},
	}
	cmd.Flags().StringVar(&c.Socket, "socket", api.DefaultSocketPath, "NRI socket of the runtime (ignored when the runtime started the plugin)")
	cmd.Flags().StringVar(&c.Name, "plugin-name", "nsmount", "plugin name to register with (unless the runtime started the plugin)")
	cmd.Flags().StringVar(&c.Idx, "plugin-idx", "10", "plugin index to register with, two digits (unless the runtime started the plugin)")
	cmd.Flags().StringVar(&c.Policy, "policy", admission.DefaultPolicyPath, "host policy file deciding what annotations may mount (missing: every mount is denied)")
	cmd.Flags().StringVar(&c.Log, "log", "", "also append what the plugin and its hooks do to FILE")
	cmd.Flags().StringVar(&c.Nsmount, "nsmount", "", "path of the nsmount binary that the runtime runs as hook (default: this binary)")
	lf.register(cmd)
	return cmd
}

// validateNRI checks the settings that end up in the hooks' command lines.
func validateNRI(c *nri.Config) error {
	abs := func(flag, p string) error {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return usageError{fmt.Errorf("--%s %q: want a clean absolute path", flag, p)}
		}
		return nil
	}
	for _, f := range []struct{ flag, path string }{{"nsmount", c.Nsmount}, {"policy", c.Policy}, {"state-dir", c.StateDir}} {
		if err := abs(f.flag, f.path); err != nil {
			return err
		}
	}
	if c.Log != "" {
		if err := abs("log", c.Log); err != nil {
			return err
		}
	}
	if err := api.CheckPluginIndex(c.Idx); err != nil || c.Name == "" || strings.ContainsFunc(c.Name, func(r rune) bool { return r <= ' ' || r == '/' || r == 0x7f }) {
		return usageError{fmt.Errorf("--plugin-idx %q --plugin-name %q: want two digits and a name", c.Idx, c.Name)}
	}
	if fi, err := os.Stat(c.Nsmount); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("--nsmount %s: not an executable file", c.Nsmount))
	}
	return nil
}
