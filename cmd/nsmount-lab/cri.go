package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/nsmount/nsmount/testenv/ctrdenv"
)

// criCmd is `nsmount-lab cri`: pods and containers through the CRI API of a
// containerd (2.x, CRI enabled) that a lab script started, as the kubelet
// would drive them (a tiny crictl).
func criCmd() *cobra.Command {
	var address, logDir string
	var timeout time.Duration
	root := &cobra.Command{
		Use:   "cri images|runp|create|start|stop|rm|stopp|rmp|inspect|inspectp",
		Short: "Run pods and containers through containerd's CRI API",
	}
	root.PersistentFlags().StringVar(&address, "address", "/run/containerd/containerd.sock", "containerd socket")
	root.PersistentFlags().StringVar(&logDir, "log-dir", "/run/lab/cri/logs", "pods' log directory (container output: DIR/NAME.log)")
	root.PersistentFlags().DurationVar(&timeout, "timeout", time.Minute, "bound for the whole command")

	// do runs fn with a CRI client; fn's error exits 1 with its message.
	do := func(c *cobra.Command, fn func(ctx context.Context, rt cri.RuntimeServiceClient) error) error {
		ctx, cancel := context.WithTimeout(c.Context(), timeout)
		defer cancel()
		conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return &exitError{code: 1, err: err}
		}
		defer conn.Close()
		if err := fn(ctx, cri.NewRuntimeServiceClient(conn)); err != nil {
			return &exitError{code: 1, err: fmt.Errorf("%s", strings.ReplaceAll(err.Error(), "\n", " "))}
		}
		return nil
	}
	one := func(use, short string, fn func(ctx context.Context, rt cri.RuntimeServiceClient, id string) error) *cobra.Command {
		return &cobra.Command{
			Use: use + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				return do(c, func(ctx context.Context, rt cri.RuntimeServiceClient) error { return fn(ctx, rt, args[0]) })
			},
		}
	}

	var busybox string
	images := &cobra.Command{
		Use:   "images",
		Short: "Import the pause stand-in and busybox images into the k8s.io namespace",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			bb, err := exec.LookPath(busybox)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			client, err := containerd.New(address)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			defer client.Close()
			if err := ctrdenv.ImportCRIImages(ctx, client, bb, "native"); err != nil {
				return &exitError{code: 1, err: err}
			}
			return nil
		},
	}
	images.Flags().StringVar(&busybox, "busybox", "busybox", "static busybox for the images")

	var podAnn, ctrAnn, ctrMounts []string
	var podUID, cgroupParent string
	var dnsServers, dnsSearches []string
	var attempt uint32
	runp := &cobra.Command{
		Use:   "runp [--annotation K=V]... [--uid UID] [--attempt N] [--cgroup-parent PATH] [--dns ADDR]... [--search DOMAIN]... NAME",
		Short: "Run pod sandbox NAME (namespace lab, UID uid-NAME, cgroup parent /lab); print its ID",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ann, err := keyValues(podAnn)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			return do(c, func(ctx context.Context, rt cri.RuntimeServiceClient) error {
				if err := os.MkdirAll(logDir, 0o755); err != nil {
					return err
				}
				uid := podUID
				if uid == "" {
					uid = "uid-" + args[0]
				}
				var dns *cri.DNSConfig
				if len(dnsServers) > 0 || len(dnsSearches) > 0 {
					dns = &cri.DNSConfig{Servers: dnsServers, Searches: dnsSearches}
				}
				r, err := rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: &cri.PodSandboxConfig{
					Metadata:     &cri.PodSandboxMetadata{Name: args[0], Uid: uid, Namespace: "lab", Attempt: attempt},
					Hostname:     args[0],
					LogDirectory: logDir,
					Annotations:  ann,
					DnsConfig:    dns,
					Linux:        &cri.LinuxPodSandboxConfig{CgroupParent: cgroupParent},
				}})
				if err != nil {
					return err
				}
				fmt.Println(r.PodSandboxId)
				return nil
			})
		},
	}
	runp.Flags().StringArrayVar(&podAnn, "annotation", nil, "pod annotation KEY=VALUE")
	runp.Flags().StringVar(&podUID, "uid", "", "the pod's UID (default uid-NAME)")
	runp.Flags().Uint32Var(&attempt, "attempt", 0, "the sandbox's attempt (kubelet's count of sandboxes made for the pod)")
	runp.Flags().StringArrayVar(&dnsServers, "dns", nil, "a nameserver of the pod's resolv.conf (kubelet's cluster DNS)")
	runp.Flags().StringArrayVar(&dnsSearches, "search", nil, "a search domain of the pod's resolv.conf")
	runp.Flags().StringVar(&cgroupParent, "cgroup-parent", "/lab", "the pod's cgroup parent (kubelet's: /kubepods/besteffort/podUID)")
	create := &cobra.Command{
		Use:   "create [--annotation K=V]... [--mount HOST:CONTAINER]... POD NAME [-- CMD...]",
		Short: "Create container NAME in POD (busybox; default command: sleep 3600); print its ID",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			ann, err := keyValues(ctrAnn)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			cmd := []string{"sleep", "3600"}
			if len(args) > 2 {
				cmd = args[2:]
			}
			var mounts []*cri.Mount
			for _, m := range ctrMounts {
				host, ctr, ok := strings.Cut(m, ":")
				if !ok || !filepath.IsAbs(host) || !filepath.IsAbs(ctr) {
					return &exitError{code: exitUsage, err: fmt.Errorf("--mount %q: want HOST:CONTAINER, absolute paths", m)}
				}
				// As kubelet passes a volume (propagation private).
				mounts = append(mounts, &cri.Mount{HostPath: host, ContainerPath: ctr})
			}
			return do(c, func(ctx context.Context, rt cri.RuntimeServiceClient) error {
				st, err := rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: args[0]})
				if err != nil {
					return err
				}
				pod := &cri.PodSandboxConfig{
					Metadata: st.Status.Metadata, Labels: st.Status.Labels, Annotations: st.Status.Annotations,
					LogDirectory: logDir, Linux: &cri.LinuxPodSandboxConfig{CgroupParent: "/lab"},
				}
				r, err := rt.CreateContainer(ctx, &cri.CreateContainerRequest{PodSandboxId: args[0], SandboxConfig: pod, Config: &cri.ContainerConfig{
					Metadata:    &cri.ContainerMetadata{Name: args[1]},
					Image:       &cri.ImageSpec{Image: ctrdenv.BusyboxImageName},
					Command:     cmd,
					Annotations: ann,
					Mounts:      mounts,
					LogPath:     args[1] + ".log",
				}})
				if err != nil {
					return err
				}
				fmt.Println(r.ContainerId)
				return nil
			})
		},
	}
	create.Flags().StringArrayVar(&ctrAnn, "annotation", nil, "container annotation KEY=VALUE")
	create.Flags().StringArrayVar(&ctrMounts, "mount", nil, "bind mount HOST:CONTAINER (as kubelet mounts a volume's target path)")

	root.AddCommand(images, runp, create,
		one("start", "Start container ID", func(ctx context.Context, rt cri.RuntimeServiceClient, id string) error {
			_, err := rt.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: id})
			return err
		}),
		one("stop", "Stop container ID (SIGKILL)", func(ctx context.Context, rt cri.RuntimeServiceClient, id string) error {
			_, err := rt.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: id})
			return err
		}),
		one("rm", "Remove container ID", func(ctx context.Context, rt cri.RuntimeServiceClient, id string) error {
			_, err := rt.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: id})
			return err
		}),
		one("stopp", "Stop pod ID", func(ctx context.Context, rt cri.RuntimeServiceClient, id string) error {
			_, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: id})
			return err
		}),
		one("rmp", "Remove pod ID", func(ctx context.Context, rt cri.RuntimeServiceClient, id string) error {
			_, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: id})
			return err
		}),
		one("inspect", "Print container ID's state and PID", func(ctx context.Context, rt cri.RuntimeServiceClient, id string) error {
			r, err := rt.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: id, Verbose: true})
			if err != nil {
				return err
			}
			info, err := parseInfo(r.Info)
			if err != nil {
				return err
			}
			fmt.Println(r.Status.State, info.Pid)
			return nil
		}),
		one("inspectp", "Print pod ID's state, PID and network namespace path", func(ctx context.Context, rt cri.RuntimeServiceClient, id string) error {
			r, err := rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
			if err != nil {
				return err
			}
			info, err := parseInfo(r.Info)
			if err != nil {
				return err
			}
			netns := "-"
			if info.RuntimeSpec != nil && info.RuntimeSpec.Linux != nil {
				for _, ns := range info.RuntimeSpec.Linux.Namespaces {
					if ns.Type == specs.NetworkNamespace && ns.Path != "" {
						netns = filepath.Clean(ns.Path)
					}
				}
			}
			fmt.Println(r.Status.State, info.Pid, netns)
			return nil
		}),
	)
	return root
}

// criInfo is what the lab reads of CRI's verbose status info.
type criInfo struct {
	Pid         int         `json:"pid"`
	RuntimeSpec *specs.Spec `json:"runtimeSpec"`
}

func parseInfo(info map[string]string) (criInfo, error) {
	var ci criInfo
	if err := json.Unmarshal([]byte(info["info"]), &ci); err != nil {
		return ci, fmt.Errorf("verbose status info: %w", err)
	}
	return ci, nil
}

// keyValues parses KEY=VALUE arguments.
func keyValues(list []string) (map[string]string, error) {
	m := map[string]string{}
	for _, a := range list {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--annotation %q: want KEY=VALUE", a)
		}
		m[k] = v
	}
	return m, nil
}
