package main

// `nsmount-lab cni`: CNI driven through libcni, as a container runtime does,
// for lab scripts.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/spf13/cobra"
)

// cniCmd is `nsmount-lab cni`: runs a CNI network configuration list with
// libcni, as a container runtime would.
func cniCmd() *cobra.Command {
	var confList, binDir, cacheDir, netns, ifName string
	c := &cobra.Command{
		Use:   "cni add|check|del --conf FILE --netns PATH CONTAINER-ID",
		Short: "Run a CNI conflist (ADD, CHECK or DEL) for a container, through libcni",
		Long: `cni runs the plugins of a CNI network configuration list for one
container, as a container runtime does. ADD prints the result (JSON).
--netns "" runs DEL without a netns (after it is gone).`,
		Args:      cobra.ExactArgs(2),
		ValidArgs: []string{"add", "check", "del"},
		RunE: func(c *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(c.Context(), time.Minute)
			defer cancel()
			list, err := libcni.ConfListFromFile(confList)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, nil)
			rt := &libcni.RuntimeConf{ContainerID: args[1], NetNS: netns, IfName: ifName}
			switch args[0] {
			case "add":
				res, err := cni.AddNetworkList(ctx, list, rt)
				if err != nil {
					return &exitError{code: 1, err: fmt.Errorf("ADD: %w", err)}
				}
				return json.NewEncoder(os.Stdout).Encode(res)
			case "check":
				err = cni.CheckNetworkList(ctx, list, rt)
			case "del":
				err = cni.DelNetworkList(ctx, list, rt)
			default:
				return fmt.Errorf("unknown CNI command %q (want add, check or del)", args[0])
			}
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("%s: %w", strings.ToUpper(args[0]), err)}
			}
			return nil
		},
	}
	c.Flags().StringVar(&confList, "conf", "", "network configuration list (.conflist)")
	c.Flags().StringVar(&binDir, "bin-dir", "/usr/lib/cni", "CNI plugin directory")
	c.Flags().StringVar(&cacheDir, "cache-dir", filepath.Join("/run/lab", "cni-cache"), "libcni cache directory")
	c.Flags().StringVar(&netns, "netns", "", "the container's network namespace path")
	c.Flags().StringVar(&ifName, "ifname", "eth0", "interface name in the container")
	c.MarkFlagRequired("conf")
	return c
}
