// Command nsmount mounts NFS into a container from the container's own
// network and mount namespaces.
//
//	nsmount mount  --pid PID [-t nfs|nfs4] [-o OPTIONS] [--mkdir] SERVER:/EXPORT TARGET
//	nsmount umount --pid PID [--lazy] [--force] TARGET
//	nsmount list   --pid PID [--json]
//	nsmount hook   [--stage createRuntime|poststop] [--policy PATH] < OCI-STATE
//	nsmount agent  [--nri-socket PATH] [--csi-endpoint unix:///PATH --node-id NAME] [--metrics-address ADDR] ...
//	nsmount install --to DIR
//
// Instead of --pid PID, --container ID [--namespace NS] [--address SOCK]
// names a containerd container, and --netns PATH --mntns PATH namespaces.
//
// Exit codes: 0 success, 1 internal error, 2 usage, 3 invalid argument,
// 4 target not found, 5 unsafe or missing target path, 6 server unreachable,
// 7 mount failed, 8 mount not verified, 9 timed out, 10 not mounted,
// 11 denied by policy, 12 stale NFS client state.
//
// Started as nsmount-cni (a link named so in a CNI bin directory), it is a
// CNI chained plugin instead: see cni.go.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	_ "github.com/nsmount/nsmount/cmd/nsmount/internal/batchwork"
	"github.com/nsmount/nsmount/cmd/nsmount/internal/packed"
	"github.com/nsmount/nsmount/nsmount"
)

// exitUsage is the exit code for command-line mistakes.
const exitUsage = 2

// usageError marks an error in the command line itself.
type usageError struct{ error }

func main() {
	nsmount.RunHelper()
	if filepath.Base(os.Args[0]) == cniPluginName {
		runCNIPlugin()
	}
	l, err := packed.FromLauncher()
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsmount: %s\n", oneLine(err.Error()))
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = newRoot(l).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsmount: %s\n", oneLine(err.Error()))
		var uerr usageError
		if errors.As(err, &uerr) {
			os.Exit(exitUsage)
		}
		os.Exit(nsmount.ExitCode(err))
	}
}

// oneLine keeps error output to one line whatever the kernel said.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
