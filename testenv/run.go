package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ExitMarker starts the console line on which the guest reports the
// script's exit status, e.g. "NSMOUNT-LAB-EXIT=0".
const ExitMarker = "NSMOUNT-LAB-EXIT="

// ErrTimeout is wrapped by Run's error when the VM ran out of time.
var ErrTimeout = errors.New("lab run timed out")

// ErrNoExit is wrapped by Run's error when the VM stopped without reporting
// an exit status (a kernel panic, a crashed /init, qemu failing).
var ErrNoExit = errors.New("lab VM ended without an exit status")

// consoleTail is how many console lines a Run error quotes.
const consoleTail = 40

// Result is the outcome of one Run.
type Result struct {
	// ExitCode is the script's exit status as the guest reported it
	// (124 when the guest-side timeout stopped it, shortly before the
	// run's Timeout).
	ExitCode int
	// Output is the whole console output, lines ending in "\n".
	Output string
	// Duration is the wall time from starting qemu to its end.
	Duration time.Duration
}

// Check is one "LAB-CHECK" line a script printed (see lab_check).
type Check struct {
	Name   string
	Passed bool
	Detail string // failure detail; empty for passed checks
}

// Checks returns the checks in the order the script printed them. It reads
// lines "LAB-CHECK PASS name" and "LAB-CHECK FAIL name: detail".
func (r *Result) Checks() []Check {
	return ParseChecks(r.Output)
}

// ParseChecks extracts the LAB-CHECK lines of console output.
func ParseChecks(output string) []Check {
	var checks []Check
	for _, line := range strings.Split(output, "\n") {
		i := strings.Index(line, "LAB-CHECK ")
		if i < 0 {
			continue
		}
		rest := line[i+len("LAB-CHECK "):]
		switch {
		case strings.HasPrefix(rest, "PASS "):
			checks = append(checks, Check{Name: strings.TrimSpace(rest[len("PASS "):]), Passed: true})
		case strings.HasPrefix(rest, "FAIL "):
			name, detail, _ := strings.Cut(rest[len("FAIL "):], ": ")
			checks = append(checks, Check{Name: strings.TrimSpace(name), Detail: strings.TrimSpace(detail)})
		}
	}
	return checks
}

// Run boots a fresh VM that runs script (a dash script; the helpers of
// lab.sh are already sourced) and streams the console to out (nil:
// discard) line by line. It returns the script's exit status in Result.
// The error is non-nil when the lab itself failed: qemu could not start,
// the run timed out (ErrTimeout) or the VM ended without reporting
// (ErrNoExit); it then quotes the last console lines, and the partial
// Result is returned too. qemu never outlives Run.
func (l *Lab) Run(ctx context.Context, script string, out io.Writer, opts ...RunOption) (*Result, error) {
	rc, err := l.runConfig(opts)
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = io.Discard
	}
	if l.labCpio == nil {
		return nil, errors.New("lab is closed")
	}
	if err := l.guestFileSets(ctx, &rc); err != nil {
		return nil, err
	}
	select {
	case l.sem <- struct{}{}:
	default:
		fmt.Fprintf(rc.log, "nsmount-lab: waiting for a VM slot: this lab runs %d VMs already\n", maxVMs)
		select {
		case l.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a VM slot: %w", ctx.Err())
		}
	}
	defer func() { <-l.sem }()
	release, err := acquireSlot(ctx, l.cfg.CacheDir, rc.log)
	if err != nil {
		return nil, err
	}
	defer release()
	dir, err := os.MkdirTemp("", "nsmount-lab-run-")
	if err != nil {
		return nil, fmt.Errorf("creating run dir: %w", err)
	}
	defer os.RemoveAll(dir)
	initrd, err := l.writeRunArchive(ctx, dir, script, rc)
	if err != nil {
		return nil, err
	}
	return l.runQemu(ctx, initrd, rc, out)
}

// runConfig applies opts to the lab's defaults.
func (l *Lab) runConfig(opts []RunOption) (runConfig, error) {
	rc := runConfig{memory: l.cfg.Memory, vcpus: l.cfg.VCPUs, timeout: l.cfg.Timeout}
	for _, o := range opts {
		o(&rc)
	}
	if rc.log == nil {
		rc.log = io.Discard
	}
	if rc.containerd && !rc.memorySet {
		rc.memory = max(rc.memory, containerdMemory)
	}
	if rc.memory < 1 || rc.vcpus < 1 {
		return rc, fmt.Errorf("lab run with %d MiB and %d vCPUs: both must be at least 1", rc.memory, rc.vcpus)
	}
	if rc.timeout <= 0 {
		return rc, fmt.Errorf("lab run with timeout %v: want a positive duration", rc.timeout)
	}
	return rc, nil
}

// guestTimeout is how long the guest lets the script run: the run timeout
// minus time for booting and reporting.
func guestTimeout(d time.Duration) int {
	s := int((d - 20*time.Second) / time.Second)
	return max(s, 5)
}

// qemuArgs returns the qemu command line for one run.
func (l *Lab) qemuArgs(initrd string, rc runConfig) []string {
	accel := "tcg,thread=multi"
	cpu := "qemu64"
	if l.cfg.Accel == "kvm" {
		accel, cpu = "kvm", "host"
	}
	appendLine := fmt.Sprintf("console=ttyS0 quiet panic=-1 reboot=t tsc=reliable no_timer_check rdinit=/init lab.timeout=%d",
		guestTimeout(rc.timeout))
	return []string{
		"-accel", accel, "-cpu", cpu, "-m", strconv.Itoa(rc.memory), "-smp", strconv.Itoa(rc.vcpus), "-M", "pc",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-kernel", l.kernel.vmlinuz(), "-initrd", initrd, "-append", appendLine,
	}
}

// runQemu runs the VM until it powers off or ctx ends.
func (l *Lab) runQemu(ctx context.Context, initrd string, rc runConfig, out io.Writer) (*Result, error) {
	cmd := exec.Command("qemu-system-x86_64", l.qemuArgs(initrd, rc)...)
	// Own process group, killed as a whole; SIGKILL if this process dies.
	// The thread that forks stays locked until qemu is reaped, because
	// Pdeathsig fires when the forking thread exits.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer stdin.Close()
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("creating console pipe: %w", err)
	}
	defer pr.Close()
	cmd.Stdout = pw

	started := make(chan error, 1)
	exited := make(chan error, 1)
	start := time.Now()
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		pw.Close()
		return nil, fmt.Errorf("starting qemu: %w", err)
	}
	pw.Close()
	if l.started != nil {
		l.started(cmd.Process.Pid)
	}
	kill := func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	reaped := false
	defer func() {
		if !reaped {
			kill()
			<-exited
		}
	}()

	res := &Result{ExitCode: -1}
	var all strings.Builder
	var tail []string
	lines := make(chan string)
	go func() {
		defer close(lines)
		br := bufio.NewReader(pr)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				lines <- strings.TrimRight(line, "\r\n")
			}
			if err != nil {
				return
			}
		}
	}()
	// After qemu ends, drain the pipe (it closes when qemu and its
	// group are gone); then report.
	timer := time.NewTimer(rc.timeout)
	defer timer.Stop()
	var timedOut, sawExit bool
	var ctxErr error
	var waitErr error
	exitedCh := exited
	var grace <-chan time.Time
loop:
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				break loop
			}
			line = strings.ReplaceAll(line, "\r", "")
			fmt.Fprintln(out, line)
			all.WriteString(line + "\n")
			tail = append(tail, line)
			if len(tail) > consoleTail {
				tail = tail[1:]
			}
			if i := strings.Index(line, ExitMarker); i >= 0 && !sawExit {
				f := strings.Fields(line[i+len(ExitMarker):])
				if len(f) > 0 {
					if n, err := strconv.Atoi(f[0]); err == nil {
						res.ExitCode, sawExit = n, true
						// poweroff -f follows; do not wait for long.
						grace = time.After(10 * time.Second)
					}
				}
			}
		case waitErr = <-exitedCh:
			reaped = true
			exitedCh = nil
			kill() // stray children holding the pipe
		case <-grace:
			kill()
			grace = nil
		case <-timer.C:
			if !sawExit {
				timedOut = true
			}
			kill()
		case <-ctx.Done():
			if !sawExit {
				ctxErr = ctx.Err()
			}
			kill()
			ctx = context.Background() // fire once
		}
	}
	if !reaped {
		waitErr = <-exited
		reaped = true
	}
	res.Duration = time.Since(start)
	res.Output = all.String()
	switch {
	case sawExit:
		return res, nil
	case ctxErr != nil:
		return res, fmt.Errorf("lab run stopped: %w; last console lines:\n%s", ctxErr, strings.Join(tail, "\n"))
	case timedOut:
		return res, fmt.Errorf("%w after %v; last console lines:\n%s", ErrTimeout, res.Duration.Round(time.Second), strings.Join(tail, "\n"))
	default:
		return res, fmt.Errorf("%w (qemu: %v, %s); last console lines:\n%s", ErrNoExit, waitErr, strings.TrimSpace(stderr.String()), strings.Join(tail, "\n"))
	}
}
