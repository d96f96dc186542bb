package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cmd/nsmount/internal/packed"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/spf13/cobra"
)

// The defaults of --namespace and --address (containerd's own; a test of
// the full build checks them against nsmount/containerd, which the split
// build's light part does not link).
const (
	containerdNamespace = "default"
	containerdAddress   = "/run/containerd/containerd.sock"
)

// targetFlags name the container to act in.
type targetFlags struct {
	pid       int
	netns     string
	mntns     string
	container string
	namespace string
	address   string
}

func (f *targetFlags) register(cmd *cobra.Command) {
	cmd.Flags().IntVar(&f.pid, "pid", 0, "target: a process in the container (held by a pidfd)")
	cmd.Flags().StringVar(&f.netns, "netns", "", "target: network namespace path (with --mntns)")
	cmd.Flags().StringVar(&f.mntns, "mntns", "", "target: mount namespace path (with --netns)")
	cmd.Flags().StringVar(&f.container, "container", "", "target: a containerd container ID (its running task)")
	cmd.Flags().StringVar(&f.namespace, "namespace", containerdNamespace, "containerd namespace of --container")
	cmd.Flags().StringVar(&f.address, "address", containerdAddress, "containerd socket for --container")
}

// open opens the target that the flags name, for one command (its work
// that can block on a server runs on threads: see nsmount.InThread). The
// command's context (and containerd.DefaultTimeout) bounds the talk with
// containerd.
func (f *targetFlags) open(cmd *cobra.Command) (*nsmount.Target, error) {
	t, err := f.openTarget(cmd)
	if err != nil {
		return nil, err
	}
	t.SetIsolation(nsmount.InThread)
	return t, nil
}

func (f *targetFlags) openTarget(cmd *cobra.Command) (*nsmount.Target, error) {
	paths := f.netns != "" || f.mntns != ""
	if !cmd.Flags().Changed("container") && (cmd.Flags().Changed("namespace") || cmd.Flags().Changed("address")) {
		return nil, usageError{fmt.Errorf("--namespace and --address need --container")}
	}
	switch {
	case cmd.Flags().Changed("container") && (f.pid != 0 || paths):
		return nil, usageError{fmt.Errorf("--container, --pid and --netns/--mntns are mutually exclusive")}
	case cmd.Flags().Changed("container"):
		return openContainer(cmd.Context(), f.address, f.namespace, f.container)
	case f.pid != 0 && paths:
		return nil, usageError{fmt.Errorf("--pid and --netns/--mntns are mutually exclusive")}
	case f.pid != 0:
		return nsmount.OpenPID(f.pid)
	case f.netns != "" && f.mntns != "":
		return nsmount.OpenPaths(f.netns, f.mntns)
	case paths:
		return nil, usageError{fmt.Errorf("--netns and --mntns must be given together")}
	}
	return nil, usageError{fmt.Errorf("no target: give --pid PID, --container ID, or --netns PATH --mntns PATH")}
}

// requestFlags are the flags that shape a mount decision, shared by mount
// and route so that route explains exactly what mount would do.
type requestFlags struct {
	fstype, opts, from string
	probeTimeout       time.Duration
}

func (f *requestFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.fstype, "type", "t", "nfs", "filesystem type: nfs or nfs4")
	cmd.Flags().StringVarP(&f.opts, "options", "o", "", "mount options, comma-separated (as mount.nfs; nosuid,nodev by default)")
	cmd.Flags().StringVar(&f.from, "resolve-from", nsmount.ResolveFromContainer, "resolve SERVER with the container's resolver (container), or the host's (host)")
	cmd.Flags().DurationVar(&f.probeTimeout, "timeout", nsmount.DefaultProbeTimeout, "bound for each server reachability check")
}

// request parses SERVER:/EXPORT and the flags into a request.
func (f *requestFlags) request(source string) (nsmount.Request, error) {
	src, err := nsmount.ParseSource(source)
	if err != nil {
		return nsmount.Request{}, err
	}
	options, err := nsmount.ParseOptions(f.opts)
	if err != nil {
		return nsmount.Request{}, err
	}
	return nsmount.Request{Source: src, FSType: f.fstype, Options: options, ResolveFrom: f.from, ProbeTimeout: f.probeTimeout}, nil
}

// newRootCommand is the command tree of a binary that runs on its own.
func newRootCommand() *cobra.Command { return newRoot(packed.Launcher{}) }

// newRoot is the command tree; l says whether this binary runs from
// inside the product binary (a split build) and what it is.
func newRoot(l packed.Launcher) *cobra.Command {
	root := &cobra.Command{
		Use:           "nsmount",
		Short:         "Mount NFS into a container from the container's own network",
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().String("state-dir", stateDirDefault(), "registry of nsmount's mounts (env NSMOUNT_STATE_DIR)")
	root.AddCommand(newMountCommand(), newUmountCommand(), newListCommand(), newRouteCommand(),
		newStatusCommand(), newFlushCommand(), newRemountCommand(), newHookCommand(), newInstallCommand(), newVersionCommand())
	addLongLived(root, l)
	return root
}

func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("want %s, got %d argument(s)", names, len(args))}
		}
		return nil
	}
}

func newMountCommand() *cobra.Command {
	var (
		tf            targetFlags
		rf            requestFlags
		mkdir, asJSON bool
		mountTimeout  time.Duration
		stale         string
		kill, down    bool
		timings       bool
	)
	cmd := &cobra.Command{
		Use:   "mount [flags] SERVER:/EXPORT TARGET",
		Short: "Mount an NFS export at TARGET inside the container",
		Example: `  nsmount mount --pid 4242 198.51.100.1:/export /data
  nsmount mount --pid 4242 -t nfs -o vers=3,nolock 198.51.100.1:/export /data
  nsmount mount --netns /run/netns/c1 --mntns /proc/4242/ns/mnt '[2001:db8::1]:/export' /data`,
		Args: exactArgs(2, "SERVER:/EXPORT TARGET"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := rf.request(args[0])
			if err != nil {
				return err
			}
			req.Target, req.Mkdir, req.MountTimeout = args[1], mkdir, mountTimeout
			t, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer t.Close()
			mgr, err := newManager(cmd)
			if err != nil {
				return err
			}
			res, err := mgr.Mount(cmd.Context(), t, cachectl.MountRequest{
				Request: req, Stale: cachectl.StalePolicy(stale), Kill: kill, Shutdown: down,
				Owner: cachectl.OwnerCLI, NetNSPath: tf.netns, MountNSPath: tf.mntns,
			})
			printNotices(cmd, mgr)
			if res != nil {
				printFlush(cmd.ErrOrStderr(), res.Flushed, "did")
				for _, w := range res.Warnings {
					warn(cmd, w)
				}
			}
			if err != nil {
				return err
			}
			m := res.Mounted
			if timings {
				var b strings.Builder
				for _, p := range res.Phases {
					fmt.Fprintf(&b, " %s %.1fms", p.Name, float64(p.Took.Microseconds())/1000)
				}
				warn(cmd, fmt.Sprintf("timings:%s (in the helper %.1fms)", b.String(), float64(m.InHelper.Microseconds())/1000))
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), m)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mounted %s on %s in %s (nfs %s, dev %s, address %s, route %s)\n", m.Source, m.Target, t, m.Version, m.Dev, m.Address, m.Route)
			return nil
		},
	}
	tf.register(cmd)
	rf.register(cmd)
	cmd.Flags().BoolVar(&mkdir, "mkdir", false, "create a missing TARGET directory inside the container")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().DurationVar(&mountTimeout, "mount-timeout", nsmount.DefaultMountTimeout, "bound for the mount itself")
	cmd.Flags().StringVar(&stale, "stale", string(cachectl.StaleFlush), "stale NFS state of the same server in the container's netns: flush (unmount stale copies, refuse if some remain), refuse, or share (inherit it knowingly)")
	cmd.Flags().BoolVar(&kill, "kill", false, "with --stale flush: end processes that hold stale superblocks open")
	cmd.Flags().BoolVar(&down, "shutdown", false, "with --stale flush: shut down stale superblocks held open (Linux 6.6+; their holders get EIO, none is ended)")
	cmd.Flags().BoolVar(&timings, "timings", false, "print how long each step took (plan, lock, stale, mount, record) on stderr")
	return cmd
}

func newUmountCommand() *cobra.Command {
	var (
		tf          targetFlags
		lazy, force bool
		asJSON      bool
		timeout     time.Duration
	)
	cmd := &cobra.Command{
		Use:     "umount [flags] TARGET",
		Aliases: []string{"unmount"},
		Short:   "Unmount the NFS mount at TARGET inside the container",
		Args:    exactArgs(1, "TARGET"),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer t.Close()
			mgr, err := newManager(cmd)
			if err != nil {
				return err
			}
			_, err = mgr.Unmount(cmd.Context(), t, args[0], nsmount.UnmountOptions{Lazy: lazy, Force: force, Timeout: timeout})
			printNotices(cmd, mgr)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), map[string]string{"unmounted": args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unmounted %s in %s\n", args[0], t)
			return nil
		},
	}
	tf.register(cmd)
	cmd.Flags().BoolVarP(&lazy, "lazy", "l", false, "detach now, clean up when no longer busy (MNT_DETACH)")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "abort pending requests to an unresponsive server (MNT_FORCE)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", nsmount.DefaultMountTimeout, "bound for the unmount")
	return cmd
}

func newListCommand() *cobra.Command {
	var (
		tf     targetFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list [flags]",
		Short: "List the NFS mounts in the container's mount namespace",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer t.Close()
			mounts, err := nsmount.List(t)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), mounts)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TARGET\tSOURCE\tTYPE\tDEV\tADDR\tCLIENTADDR\tIN-NETNS")
			for _, m := range mounts {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", m.Target, m.Source, m.FSType, m.Dev, dash(m.Address), dash(m.ClientAddr), m.InNetNS)
			}
			return w.Flush()
		},
	}
	tf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the mounts as JSON")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
