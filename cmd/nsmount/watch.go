//go:build !nsmount_split

package main

import (
	"context"
	"time"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/metrics"
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
		asJSON, keepConns, allOps, noKernelLog     bool
		metricsAddr                                string
		lf                                         logFlags
	)
	cmd := &cobra.Command{
		Use:   "watch [flags]",
		Short: shortOf("watch"),
		Long: `watch runs until interrupted (or for --for). It subscribes to route, address
and link changes inside every network namespace that has nsmount mounts and
re-checks those mounts at once on a change, and every --interval anyway; it
probes every mount every --probe-interval (bounded by --timeout, in a helper
process that is killed if the server hangs). A mount whose route changed, or
that answers ESTALE, is remounted (as nsmount remount); a server that does
not answer within --timeout is reported dead. Each mount is handled on its
own, so a hung server never delays the others.

It also reads the kernel log (/dev/kmsg; --no-kernel-log turns it off): a
"server X not responding", "timed out", "OK", NFSv4 state manager failure
or hung task line is attributed to the mounts it is about (or reported as
ambiguous), which are checked at once. With --metrics-address, Prometheus
metrics are served at /metrics (and "ok" at /healthz).

One log line per event on stdout (log/slog: --log-format text or json; the
message is the event's kind).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			o := cachectl.WatchOptions{Interval: interval, ProbeInterval: probeInterval, Timeout: timeout}
			if !noKernelLog {
				o.Kernel = openKernelLog(ctx, log)
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
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "route check period (route events trigger a check at once)")
	cmd.Flags().DurationVar(&probeInterval, "probe-interval", 5*time.Second, "health probe period")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "bound for one probe: a server silent that long is reported dead")
	cmd.Flags().DurationVar(&duration, "for", 0, "stop after this long (default: until interrupted)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per event (the same as --log-format json)")
	cmd.Flags().BoolVar(&keepConns, "keep-connections", false, "after a route change to the same address, do not reset the NFS client's connection to it before remounting")
	cmd.Flags().StringVar(&metricsAddr, "metrics-address", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477)")
	cmd.Flags().BoolVar(&allOps, "all-ops", false, "metrics: every NFS operation with requests, not only the usual ones")
	cmd.Flags().BoolVar(&noKernelLog, "no-kernel-log", false, "do not read the kernel log (no watchdog)")
	lf.register(cmd)
	return cmd
}
