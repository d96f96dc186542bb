package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nsmount/nsmount/nsmount"
)

// envMain makes the test binary run main: the CLI tests run the real
// command, exit codes included, without building it first.
const envMain = "NSMOUNT_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envMain) == "1" {
		main() // also the mount helper, when re-executed as one
		os.Exit(0)
	}
	nsmount.RunHelper()
	os.Exit(m.Run())
}

// runCLI runs nsmount with args and returns its stdout, stderr and exit
// code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), envMain+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("nsmount %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("nsmount %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return stdout.String(), stderr.String(), code
}
