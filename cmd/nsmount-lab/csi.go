package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// csiCmd is `nsmount-lab csi`: a CSI client that calls a node plugin as
// kubelet would (NodePublishVolume with its pod information, ...), for
// the lab scripts. A failed call exits 1 with "CODE: message" on stderr.
func csiCmd() *cobra.Command {
	var endpoint string
	var timeout time.Duration
	root := &cobra.Command{
		Use:   "csi info|publish|unpublish|stats|health",
		Short: "Call a CSI node plugin as kubelet does",
	}
	root.PersistentFlags().StringVar(&endpoint, "endpoint", "unix:///run/lab/csi/csi.sock", "the plugin's socket")
	root.PersistentFlags().DurationVar(&timeout, "timeout", time.Minute, "bound for the call")

	do := func(c *cobra.Command, fn func(ctx context.Context, id csipb.IdentityClient, node csipb.NodeClient) error) error {
		ctx, cancel := context.WithTimeout(c.Context(), timeout)
		defer cancel()
		conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return &exitError{code: 1, err: err}
		}
		defer conn.Close()
		if err := fn(ctx, csipb.NewIdentityClient(conn), csipb.NewNodeClient(conn)); err != nil {
			s := status.Convert(err)
			return &exitError{code: 1, err: fmt.Errorf("%s: %s", s.Code(), strings.ReplaceAll(s.Message(), "\n", " "))}
		}
		return nil
	}

	info := &cobra.Command{
		Use:   "info",
		Short: "Print the plugin's name, version, readiness, node ID and node capabilities",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return do(c, func(ctx context.Context, id csipb.IdentityClient, node csipb.NodeClient) error {
				pi, err := id.GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{})
				if err != nil {
					return err
				}
				pr, err := id.Probe(ctx, &csipb.ProbeRequest{})
				if err != nil {
					return err
				}
				ni, err := node.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
				if err != nil {
					return err
				}
				nc, err := node.NodeGetCapabilities(ctx, &csipb.NodeGetCapabilitiesRequest{})
				if err != nil {
					return err
				}
				var caps []string
				for _, cp := range nc.GetCapabilities() {
					caps = append(caps, cp.GetRpc().GetType().String())
				}
				fmt.Printf("name %s\nversion %s\nready %v\nnode %s\ncapabilities %s\n", pi.GetName(), pi.GetVendorVersion(), pr.GetReady().GetValue(), ni.GetNodeId(), strings.Join(caps, ","))
				return nil
			})
		},
	}

	var volID, target, fstype, mode string
	var readonly bool
	var volCtx, flags []string
	publish := &cobra.Command{
		Use:   "publish --volume-id ID --target PATH [--context K=V]... [--readonly] [--fstype nfs|nfs4] [--mount-flag F]... [--mode MODE]",
		Short: "NodePublishVolume",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			vc, err := keyValues(volCtx)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			m, ok := csipb.VolumeCapability_AccessMode_Mode_value[mode]
			if !ok {
				return &exitError{code: exitUsage, err: fmt.Errorf("--mode %q: want a CSI access mode such as MULTI_NODE_MULTI_WRITER", mode)}
			}
			return do(c, func(ctx context.Context, _ csipb.IdentityClient, node csipb.NodeClient) error {
				_, err := node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{
					VolumeId: volID, TargetPath: target, Readonly: readonly, VolumeContext: vc,
					VolumeCapability: &csipb.VolumeCapability{
						AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fstype, MountFlags: flags}},
						AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_Mode(m)},
					},
				})
				return err
			})
		},
	}
	publish.Flags().StringVar(&volID, "volume-id", "", "volume ID")
	publish.Flags().StringVar(&target, "target", "", "target path")
	publish.Flags().StringArrayVar(&volCtx, "context", nil, "volume context KEY=VALUE")
	publish.Flags().BoolVar(&readonly, "readonly", false, "read-only")
	publish.Flags().StringVar(&fstype, "fstype", "", "fs_type of the mount capability")
	publish.Flags().StringArrayVar(&flags, "mount-flag", nil, "mount flag of the capability (a PersistentVolume's mountOptions)")
	publish.Flags().StringVar(&mode, "mode", "MULTI_NODE_MULTI_WRITER", "access mode")

	pathCmd := func(use, short string, fn func(ctx context.Context, node csipb.NodeClient, id, path string) error) *cobra.Command {
		var id, p string
		cmd := &cobra.Command{
			Use: use + " --volume-id ID --target PATH", Short: short, Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error {
				return do(c, func(ctx context.Context, _ csipb.IdentityClient, node csipb.NodeClient) error {
					return fn(ctx, node, id, p)
				})
			},
		}
		cmd.Flags().StringVar(&id, "volume-id", "", "volume ID")
		cmd.Flags().StringVar(&p, "target", "", "target path")
		return cmd
	}
	root.AddCommand(info, publish,
		pathCmd("unpublish", "NodeUnpublishVolume", func(ctx context.Context, node csipb.NodeClient, id, p string) error {
			_, err := node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: p})
			return err
		}),
		pathCmd("stats", "NodeGetVolumeStats: print 'bytes TOTAL AVAILABLE USED' and 'inodes ...'", func(ctx context.Context, node csipb.NodeClient, id, p string) error {
			r, err := node.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: p})
			if err != nil {
				return err
			}
			for _, u := range r.GetUsage() {
				fmt.Printf("%s %d %d %d\n", strings.ToLower(u.GetUnit().String()), u.GetTotal(), u.GetAvailable(), u.GetUsed())
			}
			return nil
		}),
		pathCmd("health", "NodeGetVolumeHealth: print 'healthy' or 'STATUS REASON: MESSAGE' lines", func(ctx context.Context, node csipb.NodeClient, id, p string) error {
			r, err := node.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: id, VolumePublishPath: p})
			if err != nil {
				return err
			}
			if len(r.GetVolumeHealth().GetHealthStatuses()) == 0 {
				fmt.Println("healthy")
			}
			for _, h := range r.GetVolumeHealth().GetHealthStatuses() {
				fmt.Printf("%s %s: %s\n", h.GetStatus(), h.GetReason(), h.GetMessage())
			}
			return nil
		}),
	)
	return root
}
