package main

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nsmount/nsmount/testenv"
	"github.com/spf13/cobra"
)

//go:embed bench.sh
var benchScript string

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

// benchResult is one parsed BENCH line.
type benchResult struct {
	name                string
	n                   int
	mean, min, med, max time.Duration
}

// parseBench extracts the BENCH lines of a lab run's console.
func parseBench(out string) ([]benchResult, error) {
	var res []benchResult
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, benchPrefix)
		if i < 0 {
			continue
		}
		f := strings.Split(line[i+len(benchPrefix):], "\t")
		if len(f) != 6 {
			return nil, fmt.Errorf("malformed bench line %q", line)
		}
		r := benchResult{name: f[0]}
		var nums [5]int64
		for j := range nums {
			v, err := strconv.ParseInt(f[j+1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("malformed bench line %q", line)
			}
			nums[j] = v
		}
		r.n = int(nums[0])
		r.mean, r.min, r.med, r.max = time.Duration(nums[1]), time.Duration(nums[2]), time.Duration(nums[3]), time.Duration(nums[4])
		res = append(res, r)
	}
	return res, nil
}

// runBench runs the benchmark scenario in one VM and prints a table with
// the ratios of nsmount to nsenter + mount.nfs.
func runBench(ctx context.Context, cfg testenv.Config, verbose bool) error {
	var console io.Writer = io.Discard
	if verbose {
		console = os.Stderr
	}
	res, err := runInLab(ctx, cfg, benchScript, console)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return &exitError{code: res.ExitCode, err: fmt.Errorf("bench script failed (status %d); rerun with -v for the console", res.ExitCode)}
	}
	results, err := parseBench(res.Output)
	if err != nil {
		return err
	}
	if err := printBench(os.Stdout, results); err != nil {
		return err
	}
	for _, line := range strings.Split(res.Output, "\n") {
		if i := strings.Index(line, "NOTE "); i >= 0 {
			fmt.Println(strings.TrimSpace(line[i+len("NOTE "):]))
		}
	}
	return nil
}

func printBench(out io.Writer, results []benchResult) error {
	if len(results) == 0 {
		return errors.New("bench printed no results")
	}
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "measurement\truns\tmean ms\tmin ms\tmedian ms\tmax ms\t")
	byName := map[string]benchResult{}
	for _, r := range results {
		byName[r.name] = r
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t\n", r.name, r.n, ms(r.mean), ms(r.min), ms(r.med), ms(r.max))
	}
	w.Flush()
	base, ok := byName["nsenter + mount.nfs v4.2"]
	if !ok {
		return nil
	}
	fmt.Fprintln(out)
	for _, name := range []string{"nsmount route (address)", "nsmount route (dns name)", "nsmount mount v4.2", "nsmount mount v4.2 (dns name)"} {
		if r, ok := byName[name]; ok {
			fmt.Fprintf(out, "ratio %-30s / nsenter + mount.nfs v4.2: %.2f (medians)\n", name, float64(r.med)/float64(base.med))
		}
	}
	return nil
}
