//go:build !nsmount_split

package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/spf13/cobra"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cmd/nsmount/internal/packed"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/agent"
	"github.com/nsmount/nsmount/nsmount/integration/csi"
	"github.com/nsmount/nsmount/nsmount/integration/csi/csinri"
)

func newAgentCommand(l packed.Launcher) *cobra.Command {
	var (
		c           agent.Config
		sc          csi.Config
		csiEndpoint string
		csiWait     time.Duration
		lf          logFlags
	)
	cmd := &cobra.Command{
		Use:   "agent [flags]",
		Short: shortOf("agent"),
		Long: `agent is nsmount's one long-running process on a node (a Kubernetes
DaemonSet's pod). It registers once with the container runtime over NRI
(--nri-socket) and serves both the annotation path (at CreateContainer it
checks a pod's nsmount.io/mounts annotations against the policy and adds
nsmount hook, --hook-binary, as the container's OCI hooks) and, with
--csi-endpoint, the CSI node service ` + csi.DriverName + ` (NodePublishVolume
records a volume; the mount is made from the pod's network namespace at
RunPodSandbox, and CreateContainer waits for it). It runs watch (route
changes, ESTALE, dead servers; the kernel-log watchdog) and serves its
metrics at http://--metrics-address/metrics, and /healthz.

It mirrors the policy (--policy, e.g. a ConfigMap's) to --hook-policy on the
host, where the hooks read it, at start and whenever it changes; a policy
that does not load is reported and the last good one stays in force. The
agent decides by that copy too.

When the runtime restarts, the agent registers again as soon as it is back
(at once, then every 100 ms doubling to 2 s) and catches up on the
runtime's Synchronize; CSI, watch and metrics go on serving meanwhile.
SIGTERM or SIGINT stops it: no more events or calls are taken, the work in
flight gets --shutdown-timeout to end, every mount stays in place, and it
exits 0. The next agent finds the mounts in the registry (--state-dir).`,
		Example: `  nsmount agent --policy /etc/nsmount/policy.json --state-dir /run/nsmount \
    --nri-socket /var/run/nri/nri.sock --hook-binary /opt/nsmount/bin/nsmount \
    --hook-policy /opt/nsmount/policy.json --metrics-address :9477 --log-format json \
    --csi-endpoint unix:///csi/csi.sock --node-id "$NODE_NAME"`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.StateDir, _ = cmd.Flags().GetString("state-dir")
			if !cmd.Flags().Changed("hook-binary") {
				exe, err := selfPath(l)
				if err != nil {
					return fmt.Errorf("find nsmount's own path for the hooks: %w (give --hook-binary)", err)
				}
				c.HookBinary = exe
			}
			c.Helper = l.Helper
			for _, f := range []struct{ flag, path string }{{"state-dir", c.StateDir}, {"policy", c.Policy}, {"hook-binary", c.HookBinary},
				{"hook-policy", c.HookPolicy}, {"hook-log", c.HookLog}, {"nri-socket", c.NRI.Socket}, {"kubelet-dir", sc.TargetRoot}, {"mount-ns", sc.MountNS}} {
				if f.path != "" && (!filepath.IsAbs(f.path) || filepath.Clean(f.path) != f.path) {
					return usageError{fmt.Errorf("--%s %q: want a clean absolute path", f.flag, f.path)}
				}
			}
			if err := api.CheckPluginIndex(c.NRI.Idx); err != nil || c.NRI.Name == "" {
				return usageError{fmt.Errorf("--nri-plugin-idx %q --nri-plugin-name %q: want two digits and a name", c.NRI.Idx, c.NRI.Name)}
			}
			if err := checkWatchFlags(c.Watch); err != nil {
				return err
			}
			switch {
			case csiEndpoint != "" && sc.NodeID == "":
				return usageError{fmt.Errorf("--csi-endpoint needs --node-id")}
			case csiEndpoint == "" && cmd.Flags().Changed("node-id"):
				return usageError{fmt.Errorf("--node-id needs --csi-endpoint")}
			case csiEndpoint != "":
				c.CSI = &agent.CSIConfig{Endpoint: csiEndpoint, Service: sc, Wait: csiWait}
			}
			log, err := lf.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			c.Logger, c.Version = log, buildVersion()
			a, err := agent.New(c)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Policy, "policy", admission.DefaultPolicyPath, "host policy file as deployed (missing: every mount is denied)")
	f.StringVar(&c.HookPolicy, "hook-policy", "", "mirror the policy to this file for the hooks (on the host), and decide by the copy (\"\": read --policy)")
	f.DurationVar(&c.PolicyInterval, "policy-interval", agent.DefaultPolicyInterval, "how often --policy is read for a change")
	f.StringVar(&c.HookBinary, "hook-binary", "", "the nsmount binary runc runs as hook, on the host (default: this binary)")
	f.StringVar(&c.HookLog, "hook-log", "", "file the hooks append their lines to (on the host)")
	f.StringVar(&c.NRI.Socket, "nri-socket", api.DefaultSocketPath, "NRI socket of the container runtime")
	f.StringVar(&c.NRI.Name, "nri-plugin-name", agent.DefaultNRIName, "NRI plugin name to register as")
	f.StringVar(&c.NRI.Idx, "nri-plugin-idx", agent.DefaultNRIIdx, "NRI plugin index to register with, two digits")
	f.StringVar(&csiEndpoint, "csi-endpoint", "", "serve the CSI node service "+csi.DriverName+" on this socket, unix:///PATH (\"\": no CSI)")
	f.StringVar(&sc.NodeID, "node-id", "", "with --csi-endpoint: node ID NodeGetInfo reports (the Kubernetes node name)")
	f.StringVar(&sc.TargetRoot, "kubelet-dir", "/var/lib/kubelet", "kubelet's root directory: CSI target paths must be below it (\"\": anywhere)")
	f.StringVar(&sc.MountNS, "mount-ns", csi.DefaultMountNS, "the host's mount namespace, where kubelet's target paths are")
	f.DurationVar(&csiWait, "csi-wait", csinri.DefaultWait, "how long CreateContainer waits for the pod's CSI mounts (below the runtime's NRI request timeout)")
	f.DurationVar(&sc.ProbeTimeout, "timeout", nsmount.DefaultProbeTimeout, "bound for each server reachability check of a CSI mount")
	f.DurationVar(&sc.MountTimeout, "mount-timeout", nsmount.DefaultMountTimeout, "bound for one CSI mount or unmount")
	f.DurationVar(&sc.StatsTimeout, "stats-timeout", csi.DefaultStatsTimeout, "bound for the probe of NodeGetVolumeStats and NodeGetVolumeHealth")
	f.BoolVar(&sc.NoDiscovery, "no-discovery", false, "never look for a pod's sandbox in the processes' cgroups")
	f.DurationVar(&c.Watch.Interval, "interval", 30*time.Second, "watch: safety net, every route checked and the registry reconciled with the kernel this often (route events, registry changes and mounts found gone act at once)")
	f.DurationVar(&c.Watch.ProbeInterval, "probe-interval", 5*time.Second, "watch: health probe period")
	f.DurationVar(&c.Watch.Timeout, "probe-timeout", 3*time.Second, "watch: bound for one probe (a server silent that long is reported dead)")
	f.IntVar(&c.Watch.ProbeParallel, "probe-parallel", 8, "watch: probes at once")
	f.Float64Var(&c.Watch.ProbeRate, "probe-rate", 20, "watch: probes started per second in their turn, at most")
	f.IntVar(&c.Watch.RemountParallel, "remount-parallel", cachectl.DefaultRemountParallel, "watch: remounts at once")
	f.DurationVar(&c.Watch.RemountTimeout, "remount-timeout", nsmount.DefaultMountTimeout, "watch: bound for the new mount of a remount (one that times out on a stuck NFS client has the next remount retire it)")
	f.BoolVar(&c.NoKernelLog, "no-kernel-log", false, "do not read the kernel log (no watchdog)")
	f.BoolVar(&c.KeepConnections, "keep-connections", false, "watch: leave the NFS client of a mount's server alone (no connection reset after a route change, no retiring a client a remount timed out on)")
	f.StringVar(&c.MetricsAddress, "metrics-address", "", "serve Prometheus metrics at http://ADDR/metrics and health at /healthz (e.g. :9477)")
	f.BoolVar(&c.AllOps, "all-ops", false, "metrics: every NFS operation with requests, not only the usual ones")
	f.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", agent.DefaultShutdownTimeout, "on SIGTERM, how long the work in flight may take before it is abandoned (mounts stay either way)")
	lf.register(cmd)
	return cmd
}
