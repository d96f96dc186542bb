package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
)

// ResetConnections destroys the TCP sockets of t's network namespace whose
// peer is server (sock_diag SOCK_DESTROY, as `ss -K dst ADDR dport = PORT`
// does): the NFS client's transports to that server among them. The
// kernel's RPC client then reconnects at once, over the route the namespace
// has now, instead of waiting for a connection to an old path to time out.
// It returns how many sockets were destroyed.
//
// It needs CONFIG_INET_DIAG_DESTROY (set in Debian's kernels) and the
// inet_diag and tcp_diag modules (loaded on demand where modprobe works;
// an error naming them otherwise). Everything the superblocks of that
// server had in flight is resent to whatever answers at the address now.
func ResetConnections(ctx context.Context, t *nsmount.Target, server netip.AddrPort) (int, error) {
	n := 0
	err := t.Do(nsmount.NetNS, func() error {
		var err error
		n, err = resetConnections(server)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("reset TCP connections to %s in %s: %w", server, t, err)
	}
	return n, nil
}

// Netlink sock_diag constants (linux/sock_diag.h, linux/inet_diag.h).
const (
	sockDiagByFamily = 20
	sockDestroy      = 21
	inetDiagNoCookie = 0xffffffff
	sizeofDiagReq    = 56 // struct inet_diag_req_v2
	sizeofDiagMsg    = 72 // struct inet_diag_msg
)

// diagID is struct inet_diag_sockid.
type diagID struct {
	sport, dport uint16
	src, dst     [16]byte
	ifindex      uint32
	cookie       [2]uint32
}

// resetConnections destroys the calling thread's netns's TCP sockets to
// server.
func resetConnections(server netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return 0, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 2}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	family := uint8(unix.AF_INET)
	if server.Addr().Is6() && !server.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	ids, err := dumpTCP(fd, family, server)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		if err := destroy(fd, family, id); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // closed meanwhile
			}
			return n, err
		}
		n++
	}
	return n, nil
}

// request sends one sock_diag request for family and id.
func request(fd int, typ, flags uint16, family uint8, states uint32, id diagID, seq uint32) error {
	b := make([]byte, unix.NLMSG_HDRLEN+sizeofDiagReq)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], seq)
	r := b[unix.NLMSG_HDRLEN:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], states)
	binary.BigEndian.PutUint16(r[8:], id.sport)
	binary.BigEndian.PutUint16(r[10:], id.dport)
	copy(r[12:28], id.src[:])
	copy(r[28:44], id.dst[:])
	ne.PutUint32(r[44:], id.ifindex)
	ne.PutUint32(r[48:], id.cookie[0])
	ne.PutUint32(r[52:], id.cookie[1])
	return unix.Sendto(fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// dumpTCP lists the TCP sockets of family whose peer is server.
func dumpTCP(fd int, family uint8, server netip.AddrPort) ([]diagID, error) {
	all := diagID{cookie: [2]uint32{inetDiagNoCookie, inetDiagNoCookie}}
	if err := request(fd, sockDiagByFamily, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, family, 0xfff, all, 1); err != nil {
		return nil, fmt.Errorf("sock_diag dump: %w", err)
	}
	want := server.Addr().Unmap()
	var out []diagID
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag dump: %w", err)
		}
		msgs, err := syscallParse(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.typ {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				return nil, diagError(m.data)
			}
			if len(m.data) < sizeofDiagMsg {
				continue
			}
			var id diagID
			d := m.data
			id.sport = binary.BigEndian.Uint16(d[4:])
			id.dport = binary.BigEndian.Uint16(d[6:])
			copy(id.src[:], d[8:24])
			copy(id.dst[:], d[24:40])
			id.ifindex = binary.NativeEndian.Uint32(d[40:])
			id.cookie[0] = binary.NativeEndian.Uint32(d[44:])
			id.cookie[1] = binary.NativeEndian.Uint32(d[48:])
			var dst netip.Addr
			if d[0] == unix.AF_INET {
				dst = netip.AddrFrom4([4]byte(id.dst[:4]))
			} else {
				dst = netip.AddrFrom16(id.dst).Unmap()
			}
			if dst == want && id.dport == server.Port() {
				out = append(out, id)
			}
		}
	}
}

// destroy destroys the socket id and waits for the kernel's answer.
func destroy(fd int, family uint8, id diagID) error {
	if err := request(fd, sockDestroy, unix.NLM_F_REQUEST|unix.NLM_F_ACK, family, 0xfff, id, 2); err != nil {
		return fmt.Errorf("sock_diag destroy: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("sock_diag destroy: %w", err)
	}
	msgs, err := syscallParse(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.typ == unix.NLMSG_ERROR {
			return diagError(m.data)
		}
	}
	return nil
}

// nlMsg is one netlink message.
type nlMsg struct {
	typ  uint16
	data []byte
}

// syscallParse splits a netlink datagram into messages.
func syscallParse(b []byte) ([]nlMsg, error) {
	var out []nlMsg
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, errors.New("sock_diag: malformed netlink message")
		}
		out = append(out, nlMsg{typ: binary.NativeEndian.Uint16(b[4:]), data: b[unix.NLMSG_HDRLEN:l]})
		b = b[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(b)):]
	}
	return out, nil
}

// diagError turns an NLMSG_ERROR payload into an error (nil for an ack).
func diagError(d []byte) error {
	if len(d) < 4 {
		return errors.New("sock_diag: short error message")
	}
	code := int32(binary.NativeEndian.Uint32(d))
	if code == 0 {
		return nil
	}
	errno := unix.Errno(-code)
	switch errno {
	case unix.ENOENT:
		return fmt.Errorf("sock_diag: %w (is the tcp_diag module loaded?)", errno)
	case unix.EOPNOTSUPP:
		return fmt.Errorf("sock_diag: %w (the kernel has no CONFIG_INET_DIAG_DESTROY)", errno)
	}
	return os.NewSyscallError("sock_diag", errno)
}
