//go:build !nsmount_split

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/containerd/nri/pkg/api"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cmd/nsmount/internal/packed"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/integration/csi"
	"github.com/nsmount/nsmount/nsmount/integration/csi/csinri"
)

func newCSICommand(l packed.Launcher) *cobra.Command {
	var c csi.Config
	var endpoint, kubeletDir, nriSocket, logFile string
	var n csinri.Config
	cmd := &cobra.Command{
		Use:   "csi --endpoint unix:///PATH --node-id NAME [--policy PATH] [--kubelet-dir DIR] [--nri-socket PATH]",
		Short: shortOf("csi"),
		Long: `csi serves the CSI Identity and Node services of the driver ` + csi.DriverName + `
on a unix socket, for kubelet (through node-driver-registrar). No controller,
no staging. NodePublishVolume checks the volume (volume attributes server,
export, options; the CSIDriver needs podInfoOnMount: true) against the host
policy (rules with "csi") and records it; the mount is made from the pod's
network namespace once its sandbox exists. With --nri-socket, csi also
registers with the container runtime over NRI: RunPodSandbox mounts the
pod's volumes, CreateContainer waits for them. Without it, a pod's volumes
are mounted when it is found running (by its UID in the processes'
cgroups) at a NodePublishVolume. It runs until SIGTERM/SIGINT; mounts stay.`,
		Example: `  nsmount csi --endpoint unix:///var/lib/kubelet/plugins/nfs.nsmount.io/csi.sock \
    --node-id "$NODE_NAME" --nri-socket /var/run/nri/nri.sock`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.StateDir, _ = cmd.Flags().GetString("state-dir")
			if c.NodeID == "" {
				return usageError{fmt.Errorf("--node-id is required")}
			}
			if endpoint == "" {
				return usageError{fmt.Errorf("--endpoint is required")}
			}
			for _, f := range []struct{ flag, path string }{{"policy", c.Policy}, {"kubelet-dir", kubeletDir}, {"mount-ns", c.MountNS}, {"nri-socket", nriSocket}, {"log", logFile}} {
				if f.path != "" && (!filepath.IsAbs(f.path) || filepath.Clean(f.path) != f.path) {
					return usageError{fmt.Errorf("--%s %q: want a clean absolute path", f.flag, f.path)}
				}
			}
			if nriSocket != "" {
				if err := api.CheckPluginIndex(n.Idx); err != nil || n.Name == "" {
					return usageError{fmt.Errorf("--nri-plugin-idx %q --nri-plugin-name %q: want two digits and a name", n.Idx, n.Name)}
				}
			}
			out := cmd.ErrOrStderr()
			if logFile != "" {
				f, err := os.OpenFile(logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o640)
				if err != nil {
					return fmt.Errorf("open --log: %w", err)
				}
				defer f.Close()
				out = io.MultiWriter(out, f)
			}
			c.Logger = slog.New(slog.NewTextHandler(out, nil))
			c.TargetRoot = kubeletDir
			c.Version = buildVersion()
			if l.Helper != "" {
				m, err := cachectl.Open(cachectl.Config{StateDir: c.StateDir, Helper: l.Helper})
				if err != nil {
					return err
				}
				c.Manager = m
			}
			return runCSI(cmd.Context(), c, endpoint, nriSocket, n)
		},
	}
	f := cmd.Flags()
	f.StringVar(&endpoint, "endpoint", "", "CSI socket to serve, unix:///PATH")
	f.StringVar(&c.NodeID, "node-id", "", "node ID NodeGetInfo reports (the Kubernetes node name)")
	f.StringVar(&c.Policy, "policy", admission.DefaultPolicyPath, "host policy file (missing: every volume is denied)")
	f.StringVar(&kubeletDir, "kubelet-dir", "/var/lib/kubelet", "kubelet's root directory: target paths must be below it (\"\": anywhere)")
	f.StringVar(&c.MountNS, "mount-ns", csi.DefaultMountNS, "the host's mount namespace, where kubelet's target paths are")
	f.StringVar(&nriSocket, "nri-socket", "", "also register with the runtime's NRI socket for the pod sandbox events")
	f.StringVar(&n.Name, "nri-plugin-name", "nsmount-csi", "NRI plugin name")
	f.StringVar(&n.Idx, "nri-plugin-idx", "11", "NRI plugin index, two digits")
	f.DurationVar(&n.Wait, "wait", csinri.DefaultWait, "how long CreateContainer waits for the pod's mounts (below the runtime's NRI request timeout)")
	f.DurationVar(&c.ProbeTimeout, "timeout", nsmount.DefaultProbeTimeout, "bound for each server reachability check")
	f.DurationVar(&c.MountTimeout, "mount-timeout", nsmount.DefaultMountTimeout, "bound for one mount or unmount")
	f.DurationVar(&c.StatsTimeout, "stats-timeout", csi.DefaultStatsTimeout, "bound for the probe of NodeGetVolumeStats and NodeGetVolumeHealth")
	f.BoolVar(&c.NoDiscovery, "no-discovery", false, "never look for a pod's sandbox in the processes' cgroups")
	f.StringVar(&logFile, "log", "", "also append what the plugin does to FILE")
	return cmd
}

// runCSI serves the CSI services (and the NRI relay) until ctx ends or
// one of them fails.
func runCSI(ctx context.Context, c csi.Config, endpoint, nriSocket string, n csinri.Config) error {
	svc, err := csi.New(c)
	if err != nil {
		return err
	}
	lis, err := csi.Listen(endpoint)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	running := 1
	go func() { errc <- svc.Serve(ctx, lis) }()
	if nriSocket != "" {
		running++
		n.Socket, n.Logger = nriSocket, c.Logger
		go func() {
			err := csinri.New(svc, n).Run(ctx)
			if err == nil && ctx.Err() == nil {
				err = fmt.Errorf("the runtime closed the NRI connection")
			}
			errc <- err
		}()
	}
	c.Logger.Info("serving", "driver", csi.DriverName, "endpoint", endpoint, "node", c.NodeID, "nri", nriSocket, "version", c.Version)
	var first error
	for ; running > 0; running-- {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}
