//go:build tools

package tools

import (
	_ "github.com/cavaliergopher/cpio"
	_ "github.com/moby/sys/mountinfo"
	_ "github.com/spf13/cobra"
	_ "github.com/vishvananda/netlink"
	_ "github.com/vishvananda/netns"
	_ "golang.org/x/sys/unix"
)
