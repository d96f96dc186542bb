package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseBench(t *testing.T) {
	out := "noise\n[ 1.2] BENCH\tnsmount mount v4.2\t20\t78000000\t65000000\t78100000\t92000000\nBENCH\tnsenter + mount.nfs v4.2\t20\t120000000\t113000000\t117000000\t163000000\n"
	res, err := parseBench(out)
	if err != nil || len(res) != 2 {
		t.Fatalf("parseBench = %v, %v", res, err)
	}
	if res[0].name != "nsmount mount v4.2" || res[0].n != 20 || res[0].med != 78100*time.Microsecond {
		t.Errorf("first result = %+v", res[0])
	}
	for _, bad := range []string{"BENCH\tx\t1\t2", "BENCH\tx\tone\t1\t1\t1\t1"} {
		if _, err := parseBench(bad); err == nil {
			t.Errorf("parseBench(%q) succeeded", bad)
		}
	}
}

// TestBenchSteps reads the steps from the embedded bench.sh: every
// bench_step call has a literal name, and no name repeats.
func TestBenchSteps(t *testing.T) {
	steps := benchSteps(benchScript)
	if calls := strings.Count(benchScript, "\nbench_step "); len(steps) != calls || calls < 4 {
		t.Fatalf("benchSteps found %d steps %q; bench.sh has %d bench_step calls", len(steps), steps, calls)
	}
	for i, s := range steps {
		if slices.Contains(steps[:i], s) {
			t.Errorf("step %q twice", s)
		}
	}
	if got := benchSteps("bench_step \"a\"\nbench_step \"$X runs\"\n  bench_step \"b\"\nbench_step \"c\"\n"); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("benchSteps = %q, want [a c]", got)
	}
}

// benchConsole is a bench run's console up to the middle of its third step.
var benchConsole = []string{
	"nsmount-lab: init at 2.20s",
	"BENCH-STEP one",
	"lab: netns srv1",
	"BENCH-STEP two",
	"BENCH\tnsmount mount v4.2\t20\t78000000\t65000000\t78100000\t92000000",
	"BENCH\tnsenter + mount.nfs v4.2\t20\t120000000\t113000000\t117000000\t163000000",
	"BENCH\tnsmount route (address)\t20\t50000000\t40000000\t58500000\t60000000",
	"NOTE nsenter + mount.nfs by name: fails",
	"BENCH-STEP three",
	"BENCH-PROGRESS 50 of 200 containers mounted",
	"lab: something hangs",
}

// TestBenchReportStreams: each figure, ratio, note and progress line is
// printed when its console line arrives, also when lines come in pieces.
func TestBenchReportStreams(t *testing.T) {
	tests := []struct {
		line string   // console line written
		want []string // what the output has after it, in order
	}{
		{benchConsole[0], nil},
		{benchConsole[1], []string{"] one\n"}},
		{benchConsole[2], nil},
		{benchConsole[3], []string{"] two\n"}},
		{benchConsole[4], []string{"measurement", "nsmount mount v4.2", "78.1"}},
		{benchConsole[5], []string{"nsenter + mount.nfs v4.2", "117.0", "ratio nsmount mount v4.2", ": 0.67 (medians)"}},
		{benchConsole[6], []string{"nsmount route (address)", "ratio nsmount route (address)", ": 0.50 (medians)"}},
		{benchConsole[7], []string{"nsenter + mount.nfs by name: fails\n"}},
		{benchConsole[8], []string{"] three\n"}},
		{benchConsole[9], []string{"]   50 of 200 containers mounted\n"}},
	}
	var out bytes.Buffer
	r := newBenchReport(&out, nil, []string{"one", "two", "three", "four"}, time.Now())
	for _, tt := range tests {
		before := out.Len()
		// In two pieces: nothing is printed before the line is complete.
		half := len(tt.line) / 2
		r.Write([]byte(tt.line[:half]))
		if out.Len() != before {
			t.Fatalf("printed %q before line %q was complete", out.String()[before:], tt.line)
		}
		r.Write([]byte(tt.line[half:] + "\n"))
		got := out.String()[before:]
		rest := got
		for _, w := range tt.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Fatalf("after %q the output has %q, want %q (in order %q)", tt.line, got, w, tt.want)
			}
			rest = rest[i+len(w):]
		}
		if tt.want == nil && got != "" {
			t.Errorf("after %q printed %q, want nothing", tt.line, got)
		}
	}
	if strings.Count(out.String(), "ratio nsmount mount v4.2 ") != 1 {
		t.Errorf("a ratio printed more than once:\n%s", out.String())
	}
	if r.err != nil {
		t.Error(r.err)
	}
}

// TestBenchReportStopped: a stopped run names its step, the reason, the
// last console lines, everything measured and the steps not reached.
func TestBenchReportStopped(t *testing.T) {
	tests := []struct {
		name    string
		console []string
		verbose bool
		want    []string
		notWant []string
	}{
		{
			name:    "mid-run",
			console: benchConsole,
			want: []string{
				`STOPPED in step 3 of 4, "three", after `, ": timed out\n",
				"last console lines:", "  | lab: something hangs\n",
				"measured before the stop:", "nsmount mount v4.2", "nsenter + mount.nfs v4.2", "nsmount route (address)",
				"ratio nsmount mount v4.2", "nsenter + mount.nfs by name: fails",
				"not reached: four\n",
			},
		},
		{
			name:    "verbose shows no tail",
			console: benchConsole,
			verbose: true,
			want:    []string{`STOPPED in step 3 of 4`, "measured before the stop:"},
			notWant: []string{"last console lines:"},
		},
		{
			name:    "before the first step",
			console: []string{"nsmount-lab: init at 2.20s", "Kernel panic"},
			want:    []string{"STOPPED before the script's first step after", "  | Kernel panic", "nothing was measured before the stop", "not reached: one; two; three; four\n"},
		},
		{
			name:    "unknown step",
			console: []string{"BENCH-STEP surprise", "partial line without newline"},
			want:    []string{`STOPPED in step "surprise", after`, "  | partial line without newline"},
			notWant: []string{"not reached"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, console bytes.Buffer
			r := newBenchReport(&out, nil, []string{"one", "two", "three", "four"}, time.Now())
			if tt.verbose {
				r.console = &console
			}
			r.Write([]byte(strings.Join(tt.console, "\n")))
			before := out.Len()
			r.stopped("timed out")
			got := out.String()[before:]
			rest := got
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("summary lacks %q (in order); got:\n%s", w, got)
				}
				rest = rest[i+len(w):]
			}
			for _, w := range tt.notWant {
				if strings.Contains(got, w) {
					t.Errorf("summary has %q:\n%s", w, got)
				}
			}
			if tt.verbose && !strings.Contains(console.String(), tt.console[len(tt.console)-1]) {
				t.Errorf("console copy lacks the last line: %q", console.String())
			}
		})
	}
}

// TestBenchGoals: a goal is printed once its measurements are there, met
// or MISSED against its bound, and the summary counts them.
func TestBenchGoals(t *testing.T) {
	ms := func(name string, v float64) benchResult {
		d := time.Duration(v * 1e6)
		return benchResult{name: name, n: 1, mean: d, min: d, med: d, max: d}
	}
	results := []benchResult{
		ms("nsenter + mount.nfs v4.2", 120),
		ms("nsmount mount v4.2", 78),                        // 0.65: met
		ms("nsmount mount v4.2, before the containers", 80), // 2a's and 2b's base
		ms("nsmount mount v4.2, 100 other mounts", 100),     // 1.25: missed
		ms("nsmount status --no-probe, 100 mounts", 320),
		{name: "watch goroutines at the start", n: 1, med: 20, count: true},
		{name: "watch goroutines after 1000 cycles", n: 1, med: 21, count: true},
	}
	var out bytes.Buffer
	printGoals(&out, results, map[string]bool{})
	for _, want := range []string{
		"goal 1   mount <= 0.7 x nsenter + mount.nfs: 0.65, met",
		"goal 2a  mount with 100 other tracked mounts <= 1.2 x alone: 1.25, MISSED",
		"goal 3a  status --no-probe, 100 mounts <= 500 ms: 320 ms, met",
		"goal 6b  watch, 1000 mount/umount cycles: goroutines grow <= 10%: 1.05, met",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("goals lack %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "goal 2b") {
		t.Errorf("a goal without its measurements was printed:\n%s", out.String())
	}
	sum := goalSummary(results)
	if !strings.HasPrefix(sum, "goals: 3 met, 1 missed (2a), 8 not measured") {
		t.Errorf("summary %q", sum)
	}
	r, ok, err := parseBenchLine("BENCH-COUNT\twatch fds at the start\t17")
	if !ok || err != nil || !r.count || r.med != 17 {
		t.Errorf("count line = %+v, %v, %v", r, ok, err)
	}
}

// TestBenchRunsSteps: every bench VM's script has literal, distinct steps,
// also across the scripts.
func TestBenchRunsSteps(t *testing.T) {
	var all []string
	for _, r := range benchRuns {
		steps := benchSteps(r.script)
		if len(steps) == 0 || len(steps) != strings.Count(r.script, "\nbench_step \"") {
			t.Errorf("script with steps %q: some bench_step is not literal", steps)
		}
		for _, s := range steps {
			if slices.Contains(all, s) {
				t.Errorf("step %q twice", s)
			}
			all = append(all, s)
		}
	}
}
