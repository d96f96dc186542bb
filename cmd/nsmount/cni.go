package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/nsmount/nsmount/nsmount/integration/cni"
)

// cniPluginName is the program name (argv[0] base name) under which nsmount
// runs as a CNI plugin, and the "type" of its network configuration.
const cniPluginName = cni.PluginName

// cniExit maps CNI error codes to exit statuses: nsmount's own (3 for a bad
// configuration or environment, 4 for a missing netns or record, 100+N for
// nsmount error class N), 1 for the rest.
func cniExit(e *types.Error) int {
	switch {
	case e.Code >= 100 && e.Code < 200:
		return int(e.Code - 100)
	case e.Code == types.ErrInvalidNetNS:
		return 4
	case e.Code >= types.ErrIncompatibleCNIVersion && e.Code <= types.ErrInvalidNetworkConfig && e.Code != types.ErrIOFailure:
		return 3
	}
	return 1
}

// runCNIPlugin runs the process as the CNI plugin and exits. The result or
// the CNI error JSON goes to stdout, warnings and what DEL flushed to
// stderr.
func runCNIPlugin() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	funcs := skel.CNIFuncs{
		Add:   cniCommand(ctx, cni.Add, os.Stdout, os.Stderr),
		Check: cniCommand(ctx, cni.Check, os.Stdout, os.Stderr),
		Del:   cniCommand(ctx, cni.Del, os.Stdout, os.Stderr),
	}
	err := skel.PluginMainFuncsWithError(funcs, cni.Versions,
		"nsmount-cni: CNI chained plugin of nsmount: checks and records how the container's netns reaches its NFS servers")
	stop()
	if err != nil {
		err.Msg = oneLine(err.Msg)
		if perr := err.Print(); perr != nil {
			fmt.Fprintf(os.Stderr, "nsmount-cni: %s\n", err.Msg)
		}
		os.Exit(cniExit(err))
	}
	os.Exit(0)
}

// cniCommand adapts a command of package cni to the skeleton: its events
// go to stderr, its result (ADD's) to stdout.
func cniCommand(ctx context.Context, run func(context.Context, *skel.CmdArgs) (*cni.Result, error), stdout, stderr io.Writer) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		res, err := run(ctx, args)
		if res != nil {
			for _, e := range res.Events {
				fmt.Fprintf(stderr, "nsmount-cni: %s\n", oneLine(e))
			}
		}
		if err != nil {
			return err
		}
		if res.Result != nil {
			return res.Result.PrintTo(stdout)
		}
		return nil
	}
}
