package routing

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// SubscribeChanges opens a netlink socket in the calling thread's network
// namespace subscribed to route, address and link changes (IPv4 and IPv6),
// with a 1 s receive timeout so a reader can notice cancellation. The
// socket keeps its namespace: call it inside Target.Do, read it anywhere.
// Equivalent to: ip monitor route address link.
func SubscribeChanges() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return -1, fmt.Errorf("netlink socket: %w", err)
	}
	groups := uint32(unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR | unix.RTMGRP_LINK)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netlink subscribe: %w", err)
	}
	tv := unix.Timeval{Sec: 1}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netlink receive timeout: %w", err)
	}
	return fd, nil
}
