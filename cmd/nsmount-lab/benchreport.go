package main

// The bench's output: console lines of the bench VM, read as they arrive,
// become figures printed at once; a run that stops early ends with where it
// stopped and what it had measured.

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Markers that bench.sh prints besides the BENCH lines of `nsmount-lab time`.
const (
	stepPrefix     = "BENCH-STEP "
	progressPrefix = "BENCH-PROGRESS "
	notePrefix     = "NOTE "
)

// ratioBase is the measurement that ratioOf's medians are divided by.
const ratioBase = "nsenter + mount.nfs v4.2"

// ratioOf are the measurements whose ratio to ratioBase is printed.
var ratioOf = []string{"nsmount route (address)", "nsmount route (dns name)", "nsmount mount v4.2", "nsmount mount v4.2 (dns name)"}

// rowFormat lays out one measurement; rows are printed one by one, as they
// arrive, so the columns have fixed widths.
const rowFormat = "%40s %5s %9s %9s %10s %9s\n"

// consoleTail is how many console lines a report keeps to show why a run
// failed.
const consoleTail = 12

// benchResult is one parsed BENCH line.
type benchResult struct {
	name                string
	n                   int
	mean, min, med, max time.Duration
}

// parseBenchLine parses the BENCH line in line, if there is one.
func parseBenchLine(line string) (r benchResult, ok bool, err error) {
	i := strings.Index(line, benchPrefix)
	if i < 0 {
		return r, false, nil
	}
	f := strings.Split(line[i+len(benchPrefix):], "\t")
	if len(f) != 6 {
		return r, true, fmt.Errorf("malformed bench line %q", line)
	}
	r.name = f[0]
	var nums [5]int64
	for j := range nums {
		v, err := strconv.ParseInt(f[j+1], 10, 64)
		if err != nil {
			return r, true, fmt.Errorf("malformed bench line %q", line)
		}
		nums[j] = v
	}
	r.n = int(nums[0])
	r.mean, r.min, r.med, r.max = time.Duration(nums[1]), time.Duration(nums[2]), time.Duration(nums[3]), time.Duration(nums[4])
	return r, true, nil
}

// parseBench extracts the BENCH lines of a whole console output.
func parseBench(out string) ([]benchResult, error) {
	var res []benchResult
	for _, line := range strings.Split(out, "\n") {
		r, ok, err := parseBenchLine(line)
		if err != nil {
			return nil, err
		}
		if ok {
			res = append(res, r)
		}
	}
	return res, nil
}

// stepLine matches a bench_step call in bench.sh.
var stepLine = regexp.MustCompile(`(?m)^bench_step "([^"$]+)"$`)

// benchSteps returns the steps of a bench script, in order: the argument
// of each `bench_step "..."` line.
func benchSteps(script string) []string {
	var steps []string
	for _, m := range stepLine.FindAllStringSubmatch(script, -1) {
		steps = append(steps, m[1])
	}
	return steps
}

// benchReport prints a bench run's figures as its console lines arrive and
// keeps them for the end. It is the io.Writer that Lab.Run streams the
// console to; it is not safe for concurrent writes.
type benchReport struct {
	out     io.Writer // steps, figures, notes, ratios
	console io.Writer // every console line as well (-v); nil: none
	start   time.Time // elapsed times count from here
	steps   []string  // the script's steps

	partial []byte // a console line without its newline yet
	step    string // the step running now; "" before the first
	stepNo  int    // its index in steps plus one; 0 if none or unknown
	results []benchResult
	notes   []string
	ratios  map[string]bool // printed already
	header  bool            // a table header was printed in this step
	tail    []string        // the last console lines
	err     error           // the first malformed BENCH line
}

// newBenchReport returns a report that prints to out and, if console is
// not nil, copies the console there.
func newBenchReport(out, console io.Writer, steps []string, start time.Time) *benchReport {
	return &benchReport{out: out, console: console, start: start, steps: steps, ratios: map[string]bool{}}
}

// Write takes console output; each complete line is handled at once.
func (r *benchReport) Write(p []byte) (int, error) {
	r.partial = append(r.partial, p...)
	for {
		i := bytes.IndexByte(r.partial, '\n')
		if i < 0 {
			break
		}
		r.line(string(r.partial[:i]))
		r.partial = r.partial[i+1:]
	}
	return len(p), nil
}

// flush handles a last line that had no newline.
func (r *benchReport) flush() {
	if len(r.partial) > 0 {
		r.line(string(r.partial))
		r.partial = nil
	}
}

// elapsed is the time since start as [m:ss].
func (r *benchReport) elapsed() string {
	d := time.Since(r.start).Round(time.Second)
	return fmt.Sprintf("[%d:%02d]", int(d.Minutes()), int(d.Seconds())%60)
}

// line handles one console line.
func (r *benchReport) line(line string) {
	line = strings.TrimRight(line, "\r")
	if r.console != nil {
		fmt.Fprintln(r.console, line)
	}
	r.tail = append(r.tail, line)
	if len(r.tail) > consoleTail {
		r.tail = r.tail[1:]
	}
	if res, ok, err := parseBenchLine(line); ok {
		if err != nil {
			if r.err == nil {
				r.err = err
			}
			return
		}
		r.figure(res)
		return
	}
	if i := strings.Index(line, stepPrefix); i >= 0 {
		r.startStep(strings.TrimSpace(line[i+len(stepPrefix):]))
		return
	}
	if i := strings.Index(line, progressPrefix); i >= 0 {
		fmt.Fprintf(r.out, "%s   %s\n", r.elapsed(), strings.TrimSpace(line[i+len(progressPrefix):]))
		return
	}
	if i := strings.Index(line, notePrefix); i >= 0 {
		note := strings.TrimSpace(line[i+len(notePrefix):])
		r.notes = append(r.notes, note)
		fmt.Fprintln(r.out, note)
	}
}

// startStep prints the step the script has begun.
func (r *benchReport) startStep(name string) {
	r.step, r.stepNo, r.header = name, 0, false
	for i, s := range r.steps {
		if s == name {
			r.stepNo = i + 1
		}
	}
	fmt.Fprintf(r.out, "\n%s %s\n", r.elapsed(), name)
}

// figure prints one measurement, and the ratios it completes.
func (r *benchReport) figure(res benchResult) {
	if !r.header {
		fmt.Fprintf(r.out, rowFormat, "measurement", "runs", "mean ms", "min ms", "median ms", "max ms")
		r.header = true
	}
	printRow(r.out, res)
	r.results = append(r.results, res)
	printRatios(r.out, r.results, r.ratios)
}

// printRow prints one measurement in rowFormat.
func printRow(out io.Writer, res benchResult) {
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }
	fmt.Fprintf(out, rowFormat, res.name, strconv.Itoa(res.n), ms(res.mean), ms(res.min), ms(res.med), ms(res.max))
}

// printRatios prints the ratios of ratioOf to ratioBase (medians) that
// results allow and done does not list yet, and adds them to done.
func printRatios(out io.Writer, results []benchResult, done map[string]bool) {
	byName := map[string]benchResult{}
	for _, res := range results {
		byName[res.name] = res
	}
	base, ok := byName[ratioBase]
	if !ok || base.med <= 0 {
		return
	}
	for _, name := range ratioOf {
		res, ok := byName[name]
		if !ok || done[name] {
			continue
		}
		done[name] = true
		fmt.Fprintf(out, "ratio %-30s / %s: %.2f (medians)\n", name, ratioBase, float64(res.med)/float64(base.med))
	}
}

// stopped reports a run that did not finish: where it stopped and why,
// the last console lines (unless the console was shown), everything it
// measured and the steps it did not reach.
func (r *benchReport) stopped(why string) {
	r.flush()
	where := "before the script's first step"
	switch {
	case r.stepNo > 0:
		where = fmt.Sprintf("in step %d of %d, %q,", r.stepNo, len(r.steps), r.step)
	case r.step != "":
		where = fmt.Sprintf("in step %q,", r.step)
	}
	fmt.Fprintf(r.out, "\nnsmount-lab bench: STOPPED %s after %v: %s\n", where, time.Since(r.start).Round(time.Second), why)
	if r.console == nil && len(r.tail) > 0 {
		fmt.Fprintln(r.out, "last console lines:")
		for _, l := range r.tail {
			fmt.Fprintln(r.out, "  | "+l)
		}
	}
	if len(r.results) == 0 && len(r.notes) == 0 {
		fmt.Fprintln(r.out, "nothing was measured before the stop")
	} else {
		fmt.Fprintln(r.out, "measured before the stop:")
		if len(r.results) > 0 {
			fmt.Fprintf(r.out, rowFormat, "measurement", "runs", "mean ms", "min ms", "median ms", "max ms")
			for _, res := range r.results {
				printRow(r.out, res)
			}
			printRatios(r.out, r.results, map[string]bool{})
		}
		for _, n := range r.notes {
			fmt.Fprintln(r.out, n)
		}
	}
	if left := r.notReached(); len(left) > 0 {
		fmt.Fprintf(r.out, "not reached: %s\n", strings.Join(left, "; "))
	}
}

// notReached returns the steps after the current one (all of them before
// the first; none if the current step is unknown).
func (r *benchReport) notReached() []string {
	switch {
	case r.step == "":
		return r.steps
	case r.stepNo == 0:
		return nil
	}
	return r.steps[r.stepNo:]
}
