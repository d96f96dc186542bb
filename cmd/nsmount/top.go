//go:build !nsmount_split

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/cachectl/metrics"
	"github.com/nsmount/nsmount/cachectl/nfsstat"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
)

// topOps is how many operations top shows per mount without --all-ops.
const topOps = 4

func newTopCommand() *cobra.Command {
	var (
		interval time.Duration
		asJSON   bool
		allOps   bool
		count    int
	)
	cmd := &cobra.Command{
		Use:   "top [--interval D] [--json] [--all-ops] [--count N]",
		Short: shortOf("top"),
		Long: `top reads the NFS client statistics of nsmount's mounts (per superblock, as
the kernel counts them: /proc/PID/mountstats of each mount namespace) twice,
--interval apart, and shows per container and mount the operations per
second, busiest mount first, with each operation's average round trip,
average execution time (queue and retries included) and errors. It redraws
every --interval until interrupted (or --count frames); with --json it
prints one sample as JSON and exits. It changes nothing (the registry is
read, not reconciled).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval <= 0 {
				return usageError{fmt.Errorf("--interval %s: want a positive duration", interval)}
			}
			dir, _ := cmd.Flags().GetString("state-dir")
			reg, err := registry.Open(dir)
			if err != nil {
				return err
			}
			r, err := nfsstat.NewReader(nfsstat.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			ctx := cmd.Context()
			read := func() (*nfsstat.Snapshot, error) {
				var s *registry.State
				if err := reg.View(func(st *registry.State) error { s = st; return nil }); err != nil {
					return nil, err
				}
				rctx, cancel := context.WithTimeout(ctx, metrics.DefaultDeadline)
				defer cancel()
				return r.Read(rctx, s), nil
			}
			prev, err := read()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			tty := isTerminal(out)
			for frame := 0; ; frame++ {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
				cur, err := read()
				if err != nil {
					return err
				}
				rows := topRows(nfsstat.Rates(prev, cur), allOps || asJSON)
				if asJSON {
					return writeJSON(out, topSample{Taken: cur.Taken, Interval: interval.String(), Mounts: rows, Failures: cur.Failures})
				}
				if tty {
					fmt.Fprint(out, "\x1b[H\x1b[2J")
				} else if frame > 0 {
					fmt.Fprintln(out)
				}
				printTop(out, cur, rows, interval)
				prev = cur
				if count > 0 && frame+1 >= count {
					return nil
				}
			}
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "time between the two readings (and between redraws)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one sample as JSON and exit")
	cmd.Flags().BoolVar(&allOps, "all-ops", false, fmt.Sprintf("every operation with requests, not only the %d busiest per mount", topOps))
	cmd.Flags().IntVar(&count, "count", 0, "stop after this many frames (default: until interrupted)")
	return cmd
}

// topSample is top's JSON output.
type topSample struct {
	Taken    time.Time         `json:"taken"`
	Interval string            `json:"interval"`
	Mounts   []topRow          `json:"mounts"`
	Failures []nfsstat.Failure `json:"failures,omitempty"`
}

// topRow is one superblock's activity, with who mounted it.
type topRow struct {
	// Containers are the containers (or "pid N") that mount it; Mounts
	// their mount points, in the same order.
	Containers []string         `json:"containers"`
	Mounts     []string         `json:"mounts"`
	Source     string           `json:"source"`
	NetNS      nsmount.NSID     `json:"netns"`
	Dev        string           `json:"dev"`
	PerSecond  float64          `json:"per_second"`
	ReadBPS    float64          `json:"read_bytes_per_second"`
	WriteBPS   float64          `json:"write_bytes_per_second"`
	Ops        []nfsstat.OpRate `json:"ops"`
}

func topRows(rates []nfsstat.Rate, allOps bool) []topRow {
	rows := make([]topRow, 0, len(rates))
	for _, r := range rates {
		row := topRow{NetNS: r.NetNS, Dev: r.Dev, PerSecond: r.PerSecond, ReadBPS: r.ReadBPS, WriteBPS: r.WriteBPS, Ops: r.Ops}
		if !allOps && len(row.Ops) > topOps {
			row.Ops = row.Ops[:topOps]
		}
		for _, e := range r.Entries {
			row.Containers = append(row.Containers, containerName(e))
			row.Mounts = append(row.Mounts, e.Mountpoint)
			row.Source = e.Source
		}
		rows = append(rows, row)
	}
	return rows
}

// containerName names an entry's container: its ID (shortened as
// container runtimes show it), else its process.
func containerName(e registry.Entry) string {
	id := e.Target.Container
	switch {
	case len(id) == 64 && strings.Trim(id, "0123456789abcdef") == "":
		return id[:12]
	case id != "":
		return id
	case e.Target.PID > 0:
		return fmt.Sprintf("pid %d", e.Target.PID)
	}
	return "netns " + e.Target.NetNS.String()
}

func printTop(out io.Writer, snap *nfsstat.Snapshot, rows []topRow, interval time.Duration) {
	fmt.Fprintf(out, "nsmount top: %s, NFS operations per second over %s, busiest mount first\n", snap.Taken.Format("15:04:05"), interval)
	for _, f := range snap.Failures {
		fmt.Fprintf(out, "not read: mount namespace %s: %s\n", f.MountNS, oneLine(f.Error))
	}
	if len(rows) == 0 {
		fmt.Fprintln(out, "no nsmount mounts")
		return
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CONTAINER\tMOUNT\tSOURCE\tNETNS\tDEV\tOP\tOPS/S\tAVG RTT\tAVG EXEC\tERRORS")
	for _, r := range rows {
		head := fmt.Sprintf("%s\t%s\t%s\t%s\t%s", strings.Join(r.Containers, ","), strings.Join(r.Mounts, ","), r.Source, r.NetNS, r.Dev)
		if len(r.Ops) == 0 {
			fmt.Fprintf(w, "%s\t-\t0.0\t\t\t\n", head)
		}
		for i, op := range r.Ops {
			if i > 0 {
				head = "\t\t\t\t"
			}
			fmt.Fprintf(w, "%s\t%s\t%.1f\t%s\t%s\t%d\n", head, op.Name, op.PerSecond, ms(op.AvgRTT), ms(op.AvgExecute), op.Errors)
		}
	}
	w.Flush()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

// isTerminal reports whether w is a terminal (top then redraws in place).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
