package main

// The guest side of the bench: a stopwatch for commands.

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// benchPrefix starts the result lines that `nsmount-lab time` prints.
const benchPrefix = "BENCH\t"

// timeCmd is `nsmount-lab time`: a stopwatch for the guest, which has no
// clock finer than a centisecond in its shell tools.
func timeCmd() *cobra.Command {
	var (
		n     int
		name  string
		after string
	)
	cmd := &cobra.Command{
		Use:   "time [-n N] [--name NAME] [--after CMD] -- CMD [ARG...]",
		Short: "Run CMD N times and print its timing (used in the lab guest)",
		Long: `time runs CMD N times one after another and prints one line:
BENCH<TAB>NAME<TAB>N<TAB>MEAN_NS<TAB>MIN_NS<TAB>MEDIAN_NS<TAB>MAX_NS.
--after runs a shell command after each run, untimed (e.g. an unmount).
A failing CMD stops it with CMD's output.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if n < 1 {
				return &exitError{code: exitUsage, err: fmt.Errorf("-n must be at least 1")}
			}
			if name == "" {
				name = strings.Join(args, " ")
			}
			times := make([]time.Duration, 0, n)
			for i := 0; i < n; i++ {
				start := time.Now()
				out, err := exec.CommandContext(c.Context(), args[0], args[1:]...).CombinedOutput()
				d := time.Since(start)
				if err != nil {
					return fmt.Errorf("%s: run %d: %v: %s", name, i+1, err, strings.TrimSpace(string(out)))
				}
				times = append(times, d)
				if after != "" {
					if out, err := exec.CommandContext(c.Context(), "/bin/sh", "-c", after).CombinedOutput(); err != nil {
						return fmt.Errorf("%s: after run %d: %v: %s", name, i+1, err, strings.TrimSpace(string(out)))
					}
				}
			}
			slices.Sort(times)
			var sum time.Duration
			for _, d := range times {
				sum += d
			}
			fmt.Printf("%s%s\t%d\t%d\t%d\t%d\t%d\n", benchPrefix, name, n, int64(sum)/int64(n), int64(times[0]), int64(times[n/2]), int64(times[n-1]))
			return nil
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 10, "number of runs")
	cmd.Flags().StringVar(&name, "name", "", "name of the measurement")
	cmd.Flags().StringVar(&after, "after", "", "shell command run after each run, untimed")
	return cmd
}
