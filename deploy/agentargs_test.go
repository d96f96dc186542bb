package deploy

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// allWatchValues sets every watch value and two extra flags.
const allWatchValues = `
watch:
  interval: 1m
  probeInterval: 2s
  probeTimeout: 1500ms
  probeParallel: 16
  probeRate: 2.5
  remountParallel: 4
  remountTimeout: 10s
  keepConnections: true
extraArgs: ["--all-ops", "--shutdown-timeout=20s"]
`

// TestWatchValues: the watch values and extraArgs reach the agent's command
// line after the chart's own flags, each only when set.
func TestWatchValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		file string
		sets []string
		want []string // after wantArgs(true, 9477)
	}{
		{"defaults", "", nil, nil},
		{"every value", allWatchValues, nil, []string{
			"--interval=1m", "--probe-interval=2s", "--probe-timeout=1500ms",
			"--probe-parallel=16", "--probe-rate=2.5", "--remount-parallel=4",
			"--remount-timeout=10s", "--keep-connections",
			"--all-ops", "--shutdown-timeout=20s",
		}},
		{"remount timeout with --set", "", []string{"set:watch.remountTimeout=8s"}, []string{"--remount-timeout=8s"}},
		{"parallel with --set", "", []string{"set:watch.probeParallel=32", "set:watch.remountParallel=2"},
			[]string{"--probe-parallel=32", "--remount-parallel=2"}},
		{"a large integer stays an integer", "watch: {probeParallel: 1000000}", nil, []string{"--probe-parallel=1000000"}},
		{"keepConnections false", "watch: {keepConnections: false}", nil, nil},
		{"extraArgs only", `extraArgs: ["--csi-wait=3s"]`, nil, []string{"--csi-wait=3s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, o := mustDecode(t, values(t, tc.file, tc.sets...), defaultRelease)
			spec := o.daemonSet.Spec.Template.Spec
			equal(t, "agent args", container(&spec, "agent").Args, append(wantArgs(true, 9477), tc.want...))
		})
	}
}

// TestAgentAcceptsArgs: the nsmount binary's own flag parser takes the
// agent's command line as the chart renders it with every value set, so a
// flag renamed in the binary fails here and not as a pod in
// CrashLoopBackOff. `--help` after the arguments makes the agent parse
// them and stop; a flag it does not know fails the same parse (the
// control).
func TestAgentAcceptsArgs(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "nsmount")
	build := exec.Command(goTool(t), "build", "-o", bin, "./cmd/nsmount")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/nsmount: %v\n%s", err, out)
	}
	_, o := mustDecode(t, values(t, allWatchValues), defaultRelease)
	spec := o.daemonSet.Spec.Template.Spec
	args := container(&spec, "agent").Args
	for _, tc := range []struct {
		name   string
		args   []string
		wantOK bool
	}{
		{"rendered", args, true},
		{"control: an unknown flag", append(append([]string{}, args...), "--no-such-flag=1"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(bin, append(tc.args, "--help")...).CombinedOutput()
			switch {
			case tc.wantOK && err != nil:
				t.Fatalf("nsmount %s --help: %v\n%s", strings.Join(tc.args, " "), err, out)
			case tc.wantOK && !strings.Contains(string(out), "--remount-timeout"):
				t.Fatalf("nsmount agent --help printed no flag list:\n%s", out)
			case !tc.wantOK && err == nil:
				t.Fatalf("nsmount %s --help: accepted", strings.Join(tc.args, " "))
			case !tc.wantOK && !strings.Contains(string(out), "unknown flag"):
				t.Fatalf("nsmount ... --no-such-flag=1 --help: %v, want an unknown flag error:\n%s", err, out)
			}
		})
	}
}
