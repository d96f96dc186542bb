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

// benchGoal is one of the goals the bench checks (issue 11), on the
// medians of its measurements: the ratio of two, or one in milliseconds.
type benchGoal struct {
	id   string
	name string  // what is promised, for people
	of   string  // the measurement
	per  string  // the one it is divided by; "": of itself, in ms
	max  float64 // the most the ratio (or the ms) may be
}

// benchGoals are checked as soon as their measurements arrive.
var benchGoals = []benchGoal{
	{"1", "mount <= 0.7 x nsenter + mount.nfs", "nsmount mount v4.2", ratioBase, 0.7},
	{"2a", "mount with 100 other tracked mounts <= 1.2 x alone", "nsmount mount v4.2, 100 other mounts", "nsmount mount v4.2, before the containers", 1.2},
	{"2b", "mount with 200 other tracked mounts <= 1.2 x alone", "nsmount mount v4.2, 200 other mounts", "nsmount mount v4.2, before the containers", 1.2},
	{"3a", "status --no-probe, 100 mounts <= 500 ms", "nsmount status --no-probe, 100 mounts", "", 500},
	{"3b", "status with probes, 100 mounts <= 2000 ms", "nsmount status, 100 mounts", "", 2000},
	{"4a", "16 mounts at once <= 1.0 x one after another (1 vCPU)", "16 mounts at once", "16 mounts one after another", 1.0},
	{"4b", "16 mounts at once <= 1.0 x one after another (2 vCPUs)", "16 mounts at once (2 vCPUs)", "16 mounts one after another (2 vCPUs)", 1.0},
	{"5a", "route change: the mount reads the new server <= 1000 ms (6.1)", "route change to another server at the same address, under watch", "", 1000},
	{"5b", "route change: the mount reads the new server <= 1000 ms (6.12)", "route change to another server at the same address, under watch (6.12)", "", 1000},
	{"6a", "watch, 1000 mount/umount cycles: anonymous RSS grows <= 10%", "watch anonymous RSS after 1000 cycles", "watch anonymous RSS at the start", 1.1},
	{"6b", "watch, 1000 mount/umount cycles: goroutines grow <= 10%", "watch goroutines after 1000 cycles", "watch goroutines at the start", 1.1},
	{"6c", "watch, 1000 mount/umount cycles: fds grow <= 10%", "watch fds after 1000 cycles", "watch fds at the start", 1.1},
}

// goalValue is a goal's value if its measurements are there.
func goalValue(g benchGoal, byName map[string]benchResult) (float64, bool) {
	of, ok := byName[g.of]
	if !ok {
		return 0, false
	}
	if g.per == "" {
		return float64(of.med) / 1e6, true
	}
	per, ok := byName[g.per]
	if !ok || per.med <= 0 {
		return 0, false
	}
	return float64(of.med) / float64(per.med), true
}

// printGoals prints the goals that results allow and done does not list
// yet, and adds them to done.
func printGoals(out io.Writer, results []benchResult, done map[string]bool) {
	byName := map[string]benchResult{}
	for _, res := range results {
		byName[res.name] = res
	}
	for _, g := range benchGoals {
		v, ok := goalValue(g, byName)
		if !ok || done[g.id] {
			continue
		}
		done[g.id] = true
		fmt.Fprintln(out, goalLine(g, v))
	}
}

// goalLine says whether g holds with value v.
func goalLine(g benchGoal, v float64) string {
	verdict := "met"
	if v > g.max {
		verdict = "MISSED"
	}
	if g.per == "" {
		return fmt.Sprintf("goal %-3s %s: %.0f ms, %s", g.id, g.name, v, verdict)
	}
	return fmt.Sprintf("goal %-3s %s: %.2f, %s", g.id, g.name, v, verdict)
}

// goalSummary says how many goals results meet, miss, or do not measure.
func goalSummary(results []benchResult) string {
	byName := map[string]benchResult{}
	for _, res := range results {
		byName[res.name] = res
	}
	var met, missed, none []string
	for _, g := range benchGoals {
		v, ok := goalValue(g, byName)
		switch {
		case !ok:
			none = append(none, g.id)
		case v > g.max:
			missed = append(missed, g.id)
		default:
			met = append(met, g.id)
		}
	}
	s := fmt.Sprintf("goals: %d met, %d missed", len(met), len(missed))
	if len(missed) > 0 {
		s += " (" + strings.Join(missed, ", ") + ")"
	}
	if len(none) > 0 {
		s += fmt.Sprintf(", %d not measured (%s)", len(none), strings.Join(none, ", "))
	}
	return s
}

// rowFormat lays out one measurement; rows are printed one by one, as they
// arrive, so the columns have fixed widths.
const rowFormat = "%40s %5s %9s %9s %10s %9s\n"

// consoleTail is how many console lines a report keeps to show why a run
// failed.
const consoleTail = 12

// countPrefix starts a line with a count rather than a time (a process's
// RSS, fds, goroutines): BENCH-COUNT<TAB>NAME<TAB>VALUE.
const countPrefix = "BENCH-COUNT\t"

// benchResult is one parsed BENCH line.
type benchResult struct {
	name                string
	n                   int
	mean, min, med, max time.Duration // for a count, each is the value
	count               bool
}

// parseBenchLine parses the BENCH or BENCH-COUNT line in line, if there
// is one.
func parseBenchLine(line string) (r benchResult, ok bool, err error) {
	if i := strings.Index(line, countPrefix); i >= 0 {
		name, val, found := strings.Cut(line[i+len(countPrefix):], "\t")
		v, perr := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
		if !found || perr != nil || name == "" {
			return r, true, fmt.Errorf("malformed count line %q", line)
		}
		d := time.Duration(v)
		return benchResult{name: name, n: 1, mean: d, min: d, med: d, max: d, count: true}, true, nil
	}
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
	goals   map[string]bool // printed already
	header  bool            // a table header was printed in this step
	tail    []string        // the last console lines
	err     error           // the first malformed BENCH line
}

// newBenchReport returns a report that prints to out and, if console is
// not nil, copies the console there.
func newBenchReport(out, console io.Writer, steps []string, start time.Time) *benchReport {
	return &benchReport{out: out, console: console, start: start, steps: steps, ratios: map[string]bool{}, goals: map[string]bool{}}
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
	printGoals(r.out, r.results, r.goals)
}

// printRow prints one measurement in rowFormat.
func printRow(out io.Writer, res benchResult) {
	if res.count {
		fmt.Fprintf(out, rowFormat, res.name, "1", "", "", strconv.FormatInt(int64(res.med), 10)+" #", "")
		return
	}
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
			printGoals(r.out, r.results, map[string]bool{})
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
