package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/spf13/cobra"
)

func stateDirDefault() string {
	if d := os.Getenv("NSMOUNT_STATE_DIR"); d != "" {
		return d
	}
	return registry.DefaultDir
}

// newManager opens the registry named by --state-dir, for one command:
// the work that can block on a server runs on threads of this short-lived
// process (no helper to start).
func newManager(cmd *cobra.Command) (*cachectl.Manager, error) {
	dir, _ := cmd.Flags().GetString("state-dir")
	return cachectl.Open(cachectl.Config{StateDir: dir, Isolation: nsmount.InThread})
}

// warn prints one line on stderr.
func warn(cmd *cobra.Command, s string) {
	fmt.Fprintf(cmd.ErrOrStderr(), "nsmount: %s\n", oneLine(s))
}

// printNotices prints what the Manager noticed on its own (a corrupt
// registry rebuilt), one line each on stderr.
func printNotices(cmd *cobra.Command, mgr *cachectl.Manager) {
	for _, n := range mgr.Notices() {
		warn(cmd, n)
	}
}

// printFlush prints a flush's actions and outcome, one line each; verb is
// "did" or "would do".
func printFlush(out io.Writer, rep *cachectl.FlushReport, verb string) {
	if rep == nil {
		return
	}
	for _, g := range rep.Gone {
		fmt.Fprintf(out, "forgotten: %s at %s: %s\n", g.Entry.Source, g.Entry.Mountpoint, oneLine(g.Why))
	}
	for _, a := range rep.Actions {
		fmt.Fprintf(out, "%s: %s\n", verb, oneLine(a.String()))
	}
	for _, n := range rep.Notes {
		fmt.Fprintln(out, oneLine(n))
	}
}

// netnsOf returns the network namespace of the target named by tf, or nil
// when no target flag is given (all namespaces).
func netnsOf(cmd *cobra.Command, tf *targetFlags) (*nsmount.NSID, error) {
	if tf.pid == 0 && tf.netns == "" && tf.mntns == "" && tf.container == "" {
		return nil, nil
	}
	t, err := tf.open(cmd)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	id := t.NetNS()
	return &id, nil
}

func newStatusCommand() *cobra.Command {
	var (
		tf              targetFlags
		asJSON, noProbe bool
		timeout         time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status [flags]",
		Short: "Show nsmount's mounts, their route now against then, their health, and stale NFS client state",
		Long: `status reconciles nsmount's registry with the kernel (entries whose mount or
namespace is gone are reported and removed), then shows for each mount the
route from the container's network now against the route it was mounted
through, whether the server answers, and whether the mount still works
(ESTALE, EIO, hung); and for each network namespace the kernel's NFS clients
and superblocks: a superblock that no nsmount mount uses any more is stale,
and a new mount of that server would silently share its old connection.
status names where it is still mounted and which processes hold it open.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := netnsOf(cmd, &tf)
			if err != nil {
				return err
			}
			mgr, err := newManager(cmd)
			if err != nil {
				return err
			}
			rep, err := mgr.Status(cmd.Context(), cachectl.StatusOptions{NetNS: ns, Probe: !noProbe, Timeout: timeout})
			printNotices(cmd, mgr)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), rep)
			}
			return printStatus(cmd, rep)
		},
	}
	tf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().BoolVar(&noProbe, "no-probe", false, "do not contact servers (local state only)")
	cmd.Flags().DurationVar(&timeout, "timeout", nsmount.DefaultProbeMountTimeout, "bound for each server probe")
	return cmd
}

func printStatus(cmd *cobra.Command, rep *cachectl.Report) error {
	out := cmd.OutOrStdout()
	for _, g := range rep.Gone {
		fmt.Fprintf(out, "forgotten: %s at %s: %s\n", g.Entry.Source, g.Entry.Mountpoint, g.Why)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TARGET\tSOURCE\tADDRESS\tNETNS\tDEV\tVIA THEN\tVIA NOW\tHEALTH\tVERDICT")
	for _, m := range rep.Mounts {
		e := m.Entry
		then := routeText(e.Route.Iface, e.Route.Gateway, e.Route.Source)
		now := "-"
		if m.RouteNow != nil {
			gw := ""
			if m.RouteNow.Gateway.IsValid() {
				gw = m.RouteNow.Gateway.String()
			}
			now = routeText(m.RouteNow.Iface, gw, m.RouteNow.Source.String())
		} else if m.RouteError != "" {
			now = "none"
		}
		health := "-"
		if m.Health != nil {
			health = m.Health.String()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Mountpoint, e.Source, e.Address, e.Target.NetNS, e.Dev, then, now, health, m.Verdict)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, m := range rep.Mounts {
		if m.Advice != "" {
			fmt.Fprintf(out, "  %s: %s\n", m.Entry.Mountpoint, m.Advice)
		}
		if len(m.Drift) > 0 {
			fmt.Fprintf(out, "  %s: route drift: %s\n", m.Entry.Mountpoint, strings.Join(m.Drift, ", "))
		}
	}
	for _, st := range rep.NetNS {
		id := st.ClientID
		switch {
		case id == "":
			id = "none (derived from the hostname)"
		case st.ClientIDRecorded:
			id += " (as recorded at mount)"
		}
		fmt.Fprintf(out, "netns %s (pid %d): NFSv4 client identity %s\n", st.NetNS, st.PID, id)
		for _, c := range st.Clients {
			fmt.Fprintf(out, "  nfs_client %s server %s port %d, %d users\n", c.Version, c.Server, c.Port, c.Use)
		}
		for _, sb := range st.Superblocks {
			state := "in use by nsmount"
			switch {
			case sb.Stale:
				state = "STALE"
			case sb.Shutdown:
				state = "shut down"
			}
			fmt.Fprintf(out, "  superblock %s %s server %s: %s\n", sb.Dev, sb.Version, sb.Server, state)
			if sb.Shutdown {
				fmt.Fprintf(out, "    why: %s\n", sb.Why)
			}
			if !sb.Stale {
				continue
			}
			fmt.Fprintf(out, "    why: %s\n", sb.Why)
			fmt.Fprintf(out, "    effect: a new mount of %s in this netns shares this superblock's NFS client: its old connection, route and identity\n", sb.Server)
			for _, h := range sb.Holders {
				fmt.Fprintf(out, "    held open by pid %d (%s): %s %s\n", h.PID, h.Comm, h.What, h.Path)
			}
			hint := "add --kill to end the processes holding it"
			if sb.CanShutdown {
				hint += ", or --shutdown to cut them off"
			}
			fmt.Fprintf(out, "    fix: nsmount flush --pid %d --server %s (%s)\n", st.PID, sb.Server, hint)
		}
	}
	for _, sb := range rep.Orphans {
		fmt.Fprintf(out, "orphan superblock %s server %s: STALE\n    why: %s\n", sb.Dev, sb.Server, sb.Why)
		for _, m := range sb.Mounts {
			fmt.Fprintf(out, "    mounted at %s in mount namespace %s (pid %d)\n", m.Mountpoint, m.MountNS, m.PID)
		}
		for _, h := range sb.Holders {
			fmt.Fprintf(out, "    held open by pid %d (%s): %s %s\n", h.PID, h.Comm, h.What, h.Path)
		}
		fmt.Fprintf(out, "    fix: nsmount flush --server %s\n", sb.Server)
	}
	return nil
}

func routeText(iface, gw, src string) string {
	s := "dev " + iface
	if gw != "" {
		s += " via " + gw
	}
	return s + " src " + src
}

func newFlushCommand() *cobra.Command {
	var (
		tf             targetFlags
		server         string
		kill, down     bool
		dryRun, asJSON bool
		timeout        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "flush [flags]",
		Short: "Remove stale NFS client state: unmount stale copies, name (or --kill) their holders",
		Long: `flush removes NFS superblocks that no nsmount mount uses any more, in the
target's network namespace (or every network namespace but the host's, and
orphans: superblocks of network namespaces with no process left, kept alive
by a copy of their mount in another mount namespace): it
unmounts the copies that other mount namespaces still hold (never lazily: a
copy with open files is busy and stays), ends the processes that hold them open
only with --kill, and checks that the superblock is gone. The kernel frees an
nfs_client with its last superblock: the next mount of that server gets a new
client, connection and route. With --shutdown (Linux 6.6+), a stale
superblock that processes hold open is shut down instead
(/sys/fs/nfs/DEV/shutdown, in its netns): nobody is ended, every access
through it fails with EIO from then on, and its nfs_client is released at
once. Every action is printed; --dry-run only plans.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := netnsOf(cmd, &tf)
			if err != nil {
				return err
			}
			var addr netip.Addr
			if server != "" {
				if addr, err = netip.ParseAddr(server); err != nil {
					return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("--server %q: an IP address is needed (as in nsmount status)", server))
				}
			}
			mgr, err := newManager(cmd)
			if err != nil {
				return err
			}
			rep, err := mgr.Flush(cmd.Context(), cachectl.FlushOptions{NetNS: ns, Orphans: ns == nil, Server: addr.Unmap(), Kill: kill, Shutdown: down, DryRun: dryRun, Timeout: timeout})
			printNotices(cmd, mgr)
			if err != nil {
				return err
			}
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				out := cmd.OutOrStdout()
				verb := "did"
				if dryRun {
					verb = "would do"
				}
				printFlush(out, rep, verb)
				if len(rep.Actions) == 0 {
					fmt.Fprintln(out, "no stale NFS client state")
				}
				for _, d := range rep.Flushed {
					fmt.Fprintf(out, "flushed superblock %s\n", d)
				}
			}
			if len(rep.Remaining) > 0 && !dryRun {
				return nsmount.WithClass(nsmount.ErrStaleState, fmt.Errorf("%d stale superblock(s) remain: %s", len(rep.Remaining), rep.Remaining[0].Why))
			}
			return nil
		},
	}
	tf.register(cmd)
	cmd.Flags().StringVar(&server, "server", "", "only superblocks of this server address")
	cmd.Flags().BoolVar(&kill, "kill", false, "end (SIGKILL) processes that hold stale superblocks open")
	cmd.Flags().BoolVar(&down, "shutdown", false, "shut down stale superblocks held open instead (Linux 6.6+): their holders get EIO, none is ended")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan, change nothing")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", nsmount.DefaultMountTimeout, "bound for each unmount")
	return cmd
}

func newRemountCommand() *cobra.Command {
	var (
		tf        targetFlags
		asJSON    bool
		keepConns bool
		retire    bool
		timeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "remount [flags] TARGET",
		Short: "Re-resolve, re-route and replace an nsmount mount in place (new mount first)",
		Long: `remount redoes the decision for the nsmount mount at TARGET (the server name
resolved and the address routed from the container's network now), makes the
new mount on its own superblock (nosharecache), verifies it in the container's
netns, swaps it in, and detaches the old mount (open files in it stay usable
until closed). On kernels with MOVE_MOUNT_BENEATH (6.5+) the swap is atomic;
on older kernels the old mount is detached and the new one attached right
after (two system calls).

The new superblock shares the NFS client that the container's netns has for
the server's address. If a remount times out although the server accepts
connections, that client no longer makes progress: --retire-client first
shuts down every superblock it holds (Linux 6.6+, /sys/fs/nfs/DEV/shutdown
in the container's netns; files open on them then fail with EIO), so that
the new mount gets a client of its own.`,
		Args: exactArgs(1, "TARGET"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keepConns && retire {
				return usageError{errors.New("--keep-connections and --retire-client: choose one")}
			}
			t, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer t.Close()
			dir, _ := cmd.Flags().GetString("state-dir")
			mgr, err := cachectl.Open(cachectl.Config{StateDir: dir, Isolation: nsmount.InThread, KeepConnections: keepConns})
			if err != nil {
				return err
			}
			e, err := mgr.FindEntry(t, args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			r, err := mgr.Remount(ctx, *e, "asked", cachectl.RemountOptions{RetireClient: retire})
			printNotices(cmd, mgr)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			retired := ""
			if len(r.Retired) > 0 {
				retired = fmt.Sprintf(", after retiring the NFS client for %s (shut down %s)", r.New.Address, strings.Join(r.Retired, " "))
			} else if retire {
				retired = ", no superblock to shut down"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "remounted %s on %s in %s: was %s via %s src %s (dev %s), now %s via %s src %s (dev %s), %.3fs%s\n",
				r.New.Source, r.New.Mountpoint, t, r.Old.Address, r.Old.Route.Iface, r.Old.Route.Source, r.Old.Dev,
				r.New.Address, r.New.Route.Iface, r.New.Route.Source, r.New.Dev, r.Elapsed.Seconds(), retired)
			return nil
		},
	}
	tf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", nsmount.DefaultMountTimeout, "bound for the whole remount")
	cmd.Flags().BoolVar(&keepConns, "keep-connections", false, "after a route change to the same address, do not reset the NFS client's connection to it (the new mount then waits for the old connection to time out)")
	cmd.Flags().BoolVar(&retire, "retire-client", false, "first shut down every superblock of the container netns's NFS client for the server's address, so that the new mount gets a client of its own (Linux 6.6+; for a client a remount timed out on)")
	return cmd
}
