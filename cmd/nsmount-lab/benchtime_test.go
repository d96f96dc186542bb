package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTimeVersus: with --versus the two commands run interleaved A B B A
// A B ..., and each gets its own BENCH line with its own number of runs.
func TestTimeVersus(t *testing.T) {
	log := filepath.Join(t.TempDir(), "order")
	cmd := timeCmd()
	cmd.SetArgs([]string{"-n", "4", "--name", "A", "--versus", "echo B >>" + log, "--versus-name", "B",
		"--", "/bin/sh", "-c", "echo A >>" + log})
	var out bytes.Buffer
	cmd.SetOut(&out)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	order, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(strings.Fields(string(order)), ""), "ABBAABBA"; got != want {
		t.Errorf("order %s, want %s", got, want)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		res, ok, err := parseBenchLine(line)
		if !ok || err != nil {
			t.Fatalf("not a BENCH line: %q (%v)", line, err)
		}
		if res.n != 4 {
			t.Errorf("%s: %d runs, want 4", res.name, res.n)
		}
		names = append(names, res.name)
	}
	if got := strings.Join(names, ","); got != "A,B" {
		t.Errorf("lines for %s, want A,B", got)
	}
}

func TestTimeVersusNeedsName(t *testing.T) {
	cmd := timeCmd()
	cmd.SetArgs([]string{"-n", "1", "--versus", "true", "--", "true"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil {
		t.Fatal("--versus without --versus-name: no error")
	}
}
