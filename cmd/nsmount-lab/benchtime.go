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
		n             int
		name, after   string
		other, othern string
	)
	cmd := &cobra.Command{
		Use:   "time [-n N] [--name NAME] [--after CMD] [--versus CMD --versus-name NAME] -- CMD [ARG...]",
		Short: "Run CMD N times and print its timing (used in the lab guest)",
		Long: `time runs CMD N times one after another and prints one line:
BENCH<TAB>NAME<TAB>N<TAB>MEAN_NS<TAB>MIN_NS<TAB>MEDIAN_NS<TAB>MAX_NS.
--after runs a shell command after each run, untimed (e.g. an unmount).
--versus times a second shell command N times too, the two interleaved in
the order A B B A A B ... so that a VM that gets faster or slower over
the runs favours neither, and prints its line after CMD's.
A failing CMD stops it with CMD's output.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if n < 1 {
				return &exitError{code: exitUsage, err: fmt.Errorf("-n must be at least 1")}
			}
			if (other == "") != (othern == "") {
				return &exitError{code: exitUsage, err: fmt.Errorf("--versus and --versus-name go together")}
			}
			if name == "" {
				name = strings.Join(args, " ")
			}
			type subject struct {
				name  string
				args  []string
				times []time.Duration
			}
			subjects := []*subject{{name: name, args: args}}
			if other != "" {
				subjects = append(subjects, &subject{name: othern, args: []string{"/bin/sh", "-c", other}})
			}
			for i := 0; i < n; i++ {
				order := subjects
				if i%2 == 1 && len(subjects) == 2 {
					order = []*subject{subjects[1], subjects[0]}
				}
				for _, sub := range order {
					start := time.Now()
					out, err := exec.CommandContext(c.Context(), sub.args[0], sub.args[1:]...).CombinedOutput()
					d := time.Since(start)
					if err != nil {
						return fmt.Errorf("%s: run %d: %v: %s", sub.name, i+1, err, strings.TrimSpace(string(out)))
					}
					sub.times = append(sub.times, d)
					if after != "" {
						if out, err := exec.CommandContext(c.Context(), "/bin/sh", "-c", after).CombinedOutput(); err != nil {
							return fmt.Errorf("%s: after run %d: %v: %s", sub.name, i+1, err, strings.TrimSpace(string(out)))
						}
					}
				}
			}
			for _, sub := range subjects {
				fmt.Fprintln(c.OutOrStdout(), benchLine(sub.name, sub.times))
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 10, "number of runs")
	cmd.Flags().StringVar(&name, "name", "", "name of the measurement")
	cmd.Flags().StringVar(&after, "after", "", "shell command run after each run, untimed")
	cmd.Flags().StringVar(&other, "versus", "", "a second shell command, timed as often, its runs interleaved with CMD's")
	cmd.Flags().StringVar(&othern, "versus-name", "", "name of the --versus measurement")
	return cmd
}

// benchLine is the BENCH line of the runs times (at least one) of name.
func benchLine(name string, times []time.Duration) string {
	times = slices.Clone(times)
	slices.Sort(times)
	var sum time.Duration
	for _, d := range times {
		sum += d
	}
	n := len(times)
	return fmt.Sprintf("%s%s\t%d\t%d\t%d\t%d\t%d", benchPrefix, name, n, int64(sum)/int64(n), int64(times[0]), int64(times[n/2]), int64(times[n-1]))
}
