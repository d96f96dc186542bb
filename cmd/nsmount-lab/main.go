// Command nsmount-lab runs nsmount scenario scripts in throwaway VMs (the
// nested-VM lab of package testenv).
//
//	nsmount-lab run [--kernel VER|--kernel-package META] [--cache DIR] [--timeout D] [--memory MB] [--vcpus N] [--nsmount PATH] [--with ganesha|containerd]... SCRIPT|-
//	nsmount-lab fetch [--kernel VER|--kernel-package META] [--cache DIR] [--nsmount PATH]
//	nsmount-lab demo [--kernel VER|--kernel-package META] [--cache DIR] [--timeout D] [--memory MB] [--vcpus N] [--nsmount PATH]
//	nsmount-lab dns --listen ADDR:PORT [--listen ...] [--tcp-only|--truncate] [--silent] NAME=IP...
//	nsmount-lab get [--timeout D] URL
//	nsmount-lab proxy --listen ADDR:PORT --to ADDR:PORT
//
// run streams the VM console to stdout and exits with the script's exit
// status; 125 means the lab could not start or the VM failed, 124 that the
// run timed out. --with installs more in the guest: NFS-Ganesha (for
// lab_ganesha) or containerd, runc and CNI plugins (for lab_containerd). dns is a DNS server for scenarios (lab_dns runs it in the
// guest); get is a plain HTTP GET for them (the guest's static busybox
// wget crashes); proxy is a TCP proxy that freezes its connections on
// SIGUSR1 (lab_proxy), a fault injector in front of a real server.
package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nsmount/nsmount/testenv"
	"github.com/spf13/cobra"
)

// Exit codes for lab failures, apart from the script's own status.
const (
	exitTimeout = 124
	exitLab     = 125
	exitUsage   = 2
)

//go:embed demo.sh
var demoScript string

// exitError carries a process exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := rootCmd().ExecuteContext(ctx)
	stop()
	var ee *exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "nsmount-lab:", ee.err)
		}
		os.Exit(ee.code)
	default:
		fmt.Fprintln(os.Stderr, "nsmount-lab:", err)
		os.Exit(2) // usage
	}
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "nsmount-lab",
		Short:         "Run nsmount scenario scripts in throwaway VMs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// labFlags adds the lab's flags to c, bound to a Config of c's own; a
	// timeout other than 0 adds the flags of commands that boot a VM, with
	// that default.
	labFlags := func(c *cobra.Command, timeout time.Duration) *testenv.Config {
		cfg := &testenv.Config{}
		c.Flags().StringVar(&cfg.KernelVersion, "kernel", "", "Debian kernel version, e.g. 6.1.0-56-cloud-amd64 (default: $NSMOUNT_LAB_KERNEL or the current cloud kernel)")
		c.Flags().StringVar(&cfg.KernelPackage, "kernel-package", "", "Debian metapackage naming the kernel when --kernel is not given, e.g. "+testenv.NewerKernelPackage+" (default "+testenv.DefaultKernelPackage+")")
		c.Flags().StringVar(&cfg.CacheDir, "cache", "", "cache directory (default: $NSMOUNT_LAB_CACHE or "+testenv.DefaultCacheDir+")")
		c.Flags().StringVar(&cfg.Nsmount, "nsmount", "", "static nsmount binary (default: $NSMOUNT_LAB_NSMOUNT or build ./cmd/nsmount)")
		if timeout != 0 {
			c.Flags().DurationVar(&cfg.Timeout, "timeout", timeout, "bound for the whole VM run")
			c.Flags().IntVar(&cfg.Memory, "memory", 768, "guest RAM in MiB")
			c.Flags().IntVar(&cfg.VCPUs, "vcpus", 1, "guest virtual CPUs (qemu -smp)")
		}
		return cfg
	}
	run := &cobra.Command{
		Use:   "run [flags] SCRIPT|-",
		Short: "Boot a VM, run SCRIPT in it and exit with its status",
		Args:  cobra.ExactArgs(1),
	}
	runCfg := labFlags(run, 5*time.Minute)
	var with []string
	run.Flags().StringSliceVar(&with, "with", nil, "install more in the guest: ganesha (NFS-Ganesha, for lab_ganesha), containerd (containerd, runc, CNI plugins, for lab_containerd; 1536 MiB unless --memory); repeat or separate with commas")
	run.RunE = func(c *cobra.Command, args []string) error {
		opts, err := withOptions(with)
		if err != nil {
			return &exitError{code: exitUsage, err: err}
		}
		if c.Flags().Changed("memory") {
			opts = append(opts, testenv.WithMemory(runCfg.Memory))
		}
		script, err := readScript(args[0])
		if err != nil {
			return &exitError{code: exitLab, err: err}
		}
		return runScript(c.Context(), *runCfg, script, opts...)
	}
	fetch := &cobra.Command{
		Use:   "fetch",
		Short: "Fetch the kernels, build the initramfs archives and containerd " + testenv.Containerd2Version + ", fetch NFS-Ganesha (CI warm-up)",
		Long: `fetch prepares what the tests use: the lab of the given kernel, or without
--kernel and --kernel-package both the default kernel's and the newer
kernel's (` + testenv.NewerKernelPackage + `), containerd ` + testenv.Containerd2Version + `
and Debian's NFS-Ganesha (--with ganesha).`,
		Args: cobra.NoArgs,
	}
	fetchCfg := labFlags(fetch, 0)
	fetch.RunE = func(c *cobra.Command, _ []string) error {
		cfg := *fetchCfg
		cfgs := []testenv.Config{cfg}
		if cfg.KernelVersion == "" && cfg.KernelPackage == "" {
			newer := cfg
			newer.KernelPackage = testenv.NewerKernelPackage
			cfgs = append(cfgs, newer)
		}
		for _, cfg := range cfgs {
			lab, err := newLab(c.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Printf("lab ready: kernel %s\n", lab.KernelVersion())
			if err := lab.Close(); err != nil {
				return err
			}
		}
		dir, err := testenv.Containerd2(c.Context(), cfg.CacheDir, os.Stderr)
		if err != nil {
			return &exitError{code: exitLab, err: err}
		}
		fmt.Printf("containerd %s ready: %s\n", testenv.Containerd2Version, dir)
		files, err := testenv.GaneshaGuestFiles(c.Context(), cfg.CacheDir, os.Stderr)
		if err != nil {
			return &exitError{code: exitLab, err: err}
		}
		fmt.Printf("NFS-Ganesha ready: %d guest files\n", len(files))
		return nil
	}
	demo := &cobra.Command{
		Use:   "demo",
		Short: "Run the built-in demo: nsmount mounts into a container",
		Args:  cobra.NoArgs,
	}
	demoCfg := labFlags(demo, 5*time.Minute)
	demo.RunE = func(c *cobra.Command, _ []string) error {
		return runScript(c.Context(), *demoCfg, demoScript)
	}
	var verbose bool
	bench := &cobra.Command{
		Use:   "bench",
		Short: "Time nsmount route and mount against nsenter + mount.nfs, recovery under watch, and status with 200 tracked mounts, in one lab VM",
		Long: `bench runs the benchmark scenario in one lab VM and prints each figure
as soon as the guest has measured it. If the run stops early (timeout,
failure, interrupt), it says in which step and repeats what was measured.`,
		Args: cobra.NoArgs,
	}
	benchCfg := labFlags(bench, benchTimeout)
	bench.RunE = func(c *cobra.Command, _ []string) error {
		return runBench(c.Context(), *benchCfg, verbose)
	}
	bench.Flags().BoolVarP(&verbose, "verbose", "v", false, "stream the VM console to stderr")
	root.AddCommand(run, fetch, demo, bench, dnsCmd(), timeCmd(), criCmd(), ctrCmd(), cniCmd(), csiCmd(), getCmd(), proxyCmd())
	return root
}

// readScript reads a script file, or stdin for "-".
func readScript(name string) (string, error) {
	var data []byte
	var err error
	if name == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return "", fmt.Errorf("reading script: %w", err)
	}
	return string(data), nil
}

// newLab creates the lab, logging progress to stderr.
func newLab(ctx context.Context, cfg testenv.Config) (*testenv.Lab, error) {
	cfg.Log = os.Stderr
	lab, err := testenv.New(ctx, cfg)
	if err != nil {
		return nil, &exitError{code: exitLab, err: fmt.Errorf("starting lab: %w", err)}
	}
	return lab, nil
}

// withNames maps the names --with takes to their run options.
var withNames = map[string]func() testenv.RunOption{
	"ganesha":    testenv.WithGanesha,
	"containerd": testenv.WithContainerd,
}

// withOptions returns the run options of --with's names.
func withOptions(names []string) ([]testenv.RunOption, error) {
	var opts []testenv.RunOption
	for _, n := range names {
		o, ok := withNames[strings.ToLower(strings.TrimSpace(n))]
		if !ok {
			return nil, fmt.Errorf("--with %q: unknown (want ganesha or containerd)", n)
		}
		opts = append(opts, o())
	}
	return opts, nil
}

// runScript runs script in a fresh VM, streaming the console to stdout.
func runScript(ctx context.Context, cfg testenv.Config, script string, opts ...testenv.RunOption) error {
	res, err := runInLab(ctx, cfg, script, os.Stdout, opts...)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "nsmount-lab: script exited with status %d after %v\n", res.ExitCode, res.Duration.Round(time.Millisecond))
	if res.ExitCode != 0 {
		return &exitError{code: res.ExitCode}
	}
	return nil
}

// runInLab starts a lab and runs script in one VM, mapping lab failures to
// their exit codes (timeout 124, anything else 125).
func runInLab(ctx context.Context, cfg testenv.Config, script string, console io.Writer, opts ...testenv.RunOption) (*testenv.Result, error) {
	lab, err := newLab(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer lab.Close()
	res, err := lab.Run(ctx, script, console, append([]testenv.RunOption{testenv.WithLog(os.Stderr)}, opts...)...)
	switch {
	case errors.Is(err, testenv.ErrTimeout):
		return nil, &exitError{code: exitTimeout, err: err}
	case err != nil:
		return nil, &exitError{code: exitLab, err: err}
	}
	return res, nil
}
