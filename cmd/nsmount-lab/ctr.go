package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"

	"github.com/nsmount/nsmount/testenv/ctrdenv"
)

// ctrCmd is `nsmount-lab ctr`: containers through a containerd daemon that a
// lab script started, for scenarios that need real containerd and runc in
// the guest.
func ctrCmd() *cobra.Command {
	var address, ns, dir string
	var timeout time.Duration
	root := &cobra.Command{
		Use:   "ctr run|rm",
		Short: "Run and remove busybox containers through a running containerd",
	}
	root.PersistentFlags().StringVar(&address, "address", "/run/containerd/containerd.sock", "containerd socket")
	root.PersistentFlags().StringVar(&ns, "namespace", "lab", "containerd namespace (and cgroup parent)")
	root.PersistentFlags().StringVar(&dir, "dir", "/run/lab/ctr", "runc root and container logs (DIR/ID.log)")
	root.PersistentFlags().DurationVar(&timeout, "timeout", time.Minute, "bound for the whole command")
	attach := func(ctx context.Context) (*ctrdenv.Containerd, error) {
		return ctrdenv.AttachContainerd(ctx, address, ns, dir, ctrdenv.ContainerdConfig{})
	}

	var netns, hook string
	var annotations, hookArgs []string
	run := &cobra.Command{
		Use:   "run [--netns PATH] [--annotation K=V]... [--hook NSMOUNT [--hook-arg ARG]...] ID [-- CMD...]",
		Short: "Create and start container ID (busybox image; default command: sleep 3600); print its PID",
		Long: `run creates container ID from the busybox image (imported on first use),
in its own namespaces or the network namespace --netns, and starts it.
--hook adds OCI hooks createRuntime and poststop that run
"NSMOUNT hook --stage STAGE" with the --hook-arg arguments. The container's
output goes to DIR/ID.log. On failure (a failing hook, say) nothing of the
container is left and the error names the cause.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			ann := map[string]string{}
			for _, a := range annotations {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return fmt.Errorf("--annotation %q: want KEY=VALUE", a)
				}
				ann[k] = v
			}
			cd, err := attach(ctx)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			opts := ctrdenv.RunOptions{NetNS: netns}
			if len(args) > 1 {
				opts.Args = args[1:]
			}
			if len(ann) > 0 {
				opts.SpecOpts = append(opts.SpecOpts, oci.WithAnnotations(ann))
			}
			if hook != "" {
				opts.SpecOpts = append(opts.SpecOpts, withNsmountHooks(hook, hookArgs))
			}
			pid, err := cd.RunContainer(ctx, args[0], opts)
			if err != nil {
				return &exitError{code: 1, err: errors.New(strings.ReplaceAll(err.Error(), "\n", " "))}
			}
			fmt.Println(pid)
			return nil
		},
	}
	run.Flags().StringVar(&netns, "netns", "", "network namespace to join (default: a new one)")
	run.Flags().StringArrayVar(&annotations, "annotation", nil, "OCI annotation KEY=VALUE (repeatable)")
	run.Flags().StringVar(&hook, "hook", "", "path of nsmount, to run as the container's createRuntime and poststop hook")
	run.Flags().StringArrayVar(&hookArgs, "hook-arg", nil, "extra argument of the hook (repeatable)")

	rm := &cobra.Command{
		Use:   "rm ID...",
		Short: "Kill, delete (poststop hooks run) and remove containers",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			cd, err := attach(ctx)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			for _, id := range args {
				if err := cd.RemoveContainer(ctx, id); err != nil {
					return &exitError{code: 1, err: err}
				}
			}
			return nil
		},
	}
	root.AddCommand(run, rm)
	return root
}

// withNsmountHooks adds createRuntime and poststop hooks running nsmount.
func withNsmountHooks(path string, extra []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Hooks == nil {
			s.Hooks = &specs.Hooks{}
		}
		hook := func(stage string) specs.Hook {
			return specs.Hook{Path: path, Args: append([]string{"nsmount", "hook", "--stage", stage}, extra...)}
		}
		s.Hooks.CreateRuntime = append(s.Hooks.CreateRuntime, hook("createRuntime"))
		s.Hooks.Poststop = append(s.Hooks.Poststop, hook("poststop"))
		return nil
	}
}
