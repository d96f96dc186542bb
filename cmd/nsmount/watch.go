//go:build !nsmount_split

package main

import (
	"context"
	"fmt"
	"time"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/metrics"
	"github.com/nsmount/nsmount/cachectl/nfsstat"
	"github.com/nsmount/nsmount/cachectl/watchlog"
	"github.com/nsmount/nsmount/cmd/nsmount/internal/packed"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/spf13/cobra"
)

// newWatchCommand is `nsmount watch`; its helpers are l's when it runs from
// inside the product binary.
func newWatchCommand(l packed.Launcher) *cobra.Command {
	var (
		interval, probeInterval, timeout, duration time.Duration
		remountTimeout                             time.Duration
		asJSON, keepConns, allOps, noKernelLog     bool
		metricsAddr                                string
		probeParallel, remountParallel             int
		probeRate                                  float64
		lf                                         logFlags
	)
	cmd := &cobra.Command{
		Use:   "watch [flags]",
		Short: shortOf("watch"),
		Long: `watch runs until interrupted (or for --for). It probes every mount every
--probe-interval (a getattr and statfs of the mount root, bounded by
--timeout, in a long-lived helper process that is replaced if a server
hangs; at most --probe-parallel at once and --probe-rate per second). A
mount whose server answers but no longer knows its file handles (ESTALE;
EBADHANDLE, errno 521: another NFS server at the same address, e.g. kernel
nfsd replaced by NFS-Ganesha), or that fails with EIO while its server
answers an NFS NULL call, is remounted (as nsmount remount), at most
--remount-parallel at once; when one mount of an address turns out stale,
the others of that address are probed at once. A server that does not
answer within --timeout is reported dead. It subscribes to route, address
and link changes inside every network namespace that has nsmount mounts
and re-checks those mounts' routes at once on a change (a route that
drifted is followed by a remount). Every --interval, as a safety net, it
checks every route and reconciles the registry with the kernel; it reads
the registry again when it changes. A hung server never delays the others.

It also reads the kernel log (/dev/kmsg; --no-kernel-log turns it off): a
"server X not responding", "timed out", "OK", NFSv4 state manager failure
or hung task line is attributed to the mounts it is about (or reported as
ambiguous), which are probed at once. With --metrics-address, Prometheus
metrics are served at /metrics (and "ok" at /healthz).

One log line per event on stdout (log/slog: --log-format text or json; the
message is the event's kind).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := cachectl.WatchOptions{Interval: interval, ProbeInterval: probeInterval, Timeout: timeout, ProbeParallel: probeParallel, ProbeRate: probeRate, RemountParallel: remountParallel, RemountTimeout: remountTimeout}
			if err := checkWatchFlags(o); err != nil {
				return err
			}
			if asJSON {
				lf.format = "json"
			}
			log, err := lf.logger(cmd.OutOrStdout())
			if err != nil {
				return err
			}
			dir, _ := cmd.Flags().GetString("state-dir")
			mgr, err := cachectl.Open(cachectl.Config{StateDir: dir, Isolation: nsmount.InHelper, Helper: l.Helper, KeepConnections: keepConns})
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			var m *metrics.Metrics
			if metricsAddr != "" {
				if m, err = metrics.New(metrics.Config{Registry: mgr.Registry(), AllOps: allOps}); err != nil {
					return err
				}
				defer m.Close()
				if err := serveMetrics(ctx, metricsAddr, m, log); err != nil {
					return err
				}
			}
			if !noKernelLog {
				stats, err := nfsstat.NewReader(nfsstat.Options{Timeout: timeout})
				if err != nil {
					return fmt.Errorf("watchdog's statistics reader: %w", err)
				}
				defer stats.Close() // after Watch returned (done)
				o.Kernel, o.Stats = openKernelLog(ctx, log), stats
			}
			events := make(chan cachectl.WatchEvent)
			done := make(chan error, 1)
			go func() {
				done <- mgr.Watch(ctx, o, events)
			}()
			for {
				select {
				case e := <-events:
					if m != nil {
						m.Observe(e)
					}
					watchlog.Log(ctx, log, e)
				case err := <-done:
					return err
				}
			}
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", 30*time.Second, "safety net: check every route and reconcile the registry with the kernel this often (route events, registry changes and mounts found gone act at once)")
	cmd.Flags().DurationVar(&probeInterval, "probe-interval", 5*time.Second, "health probe period")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "bound for one probe: a server silent that long is reported dead")
	cmd.Flags().IntVar(&probeParallel, "probe-parallel", 8, "probes at once (a probe waiting on its server for over a second gives its place up)")
	cmd.Flags().Float64Var(&probeRate, "probe-rate", 20, "probes started per second in their turn, at most (more mounts than --probe-interval allows at that rate are probed less often; probes that evidence asks for do not wait)")
	cmd.Flags().IntVar(&remountParallel, "remount-parallel", cachectl.DefaultRemountParallel, "remounts at once (measured: see README, \"Storage migration\")")
	cmd.Flags().DurationVar(&remountTimeout, "remount-timeout", nsmount.DefaultMountTimeout, "bound for the new mount of a remount; one that times out although the server accepted a connection is reported as a stuck NFS client, which the next remount retires")
	cmd.Flags().DurationVar(&duration, "for", 0, "stop after this long (default: until interrupted)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per event (the same as --log-format json)")
	cmd.Flags().BoolVar(&keepConns, "keep-connections", false, "leave the NFS client of a mount's server alone: after a route change to the same address, do not reset its connection before remounting, and after a remount timed out on it, do not retire it")
	cmd.Flags().StringVar(&metricsAddr, "metrics-address", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477)")
	cmd.Flags().BoolVar(&allOps, "all-ops", false, "metrics: every NFS operation with requests, not only the usual ones")
	cmd.Flags().BoolVar(&noKernelLog, "no-kernel-log", false, "do not read the kernel log (no watchdog)")
	lf.register(cmd)
	return cmd
}

// checkWatchFlags refuses the watch flags that watch and agent share and
// that cachectl would otherwise replace by their defaults without a word.
func checkWatchFlags(o cachectl.WatchOptions) error {
	if o.ProbeParallel < 1 || o.RemountParallel < 1 || o.ProbeRate <= 0 || o.RemountTimeout <= 0 {
		return usageError{fmt.Errorf("--probe-parallel, --remount-parallel, --probe-rate and --remount-timeout must be positive")}
	}
	return nil
}
