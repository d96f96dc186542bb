package routing

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ONC RPC program numbers used by NFSv3 preflight.
const (
	// ProgPortmap is the portmapper (rpcbind), on port 111.
	ProgPortmap = 100000
	// ProgNFS is the NFS program.
	ProgNFS = 100003
	// ProgMount is the NFSv3 MOUNT protocol (rpc.mountd).
	ProgMount = 100005
)

// ErrNotRegistered: the portmapper answered, but the program is not
// registered with it.
var ErrNotRegistered = errors.New("program not registered")

// PortmapGetPort asks the portmapper at server:111, from inside the
// namespace, for the TCP port of program prog version vers (PMAPPROC_GETPORT,
// RFC 1833). It waits at most timeout.
func (r *Router) PortmapGetPort(ctx context.Context, server netip.Addr, prog, vers uint32, timeout time.Duration) (uint16, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dst := netip.AddrPortFrom(server, 111)
	conn, err := r.dialTCP(ctx, dst)
	if err != nil {
		return 0, fmt.Errorf("portmapper %s: %w", dst, Classify(ctx, err))
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	port, err := getPort(conn, server, prog, vers)
	if err != nil {
		return 0, fmt.Errorf("portmapper %s: getport %d v%d: %w", dst, prog, vers, Classify(ctx, err))
	}
	if port == 0 {
		return 0, fmt.Errorf("portmapper %s: program %d v%d over tcp: %w", dst, prog, vers, ErrNotRegistered)
	}
	return port, nil
}

// getPort asks for the TCP port of prog/vers: PMAPPROC_GETPORT (portmap v2)
// for IPv4, RPCBPROC_GETADDR (rpcbind v4, netid tcp6) for IPv6, since
// portmap v2 knows only IPv4 registrations (the kernel asks the same way).
func getPort(rw io.ReadWriter, server netip.Addr, prog, vers uint32) (uint16, error) {
	if server.Is4() {
		res, err := rpcCall(rw, ProgPortmap, 2, 3, xdrUint32(prog, vers, 6, 0))
		if err != nil {
			return 0, err
		}
		if len(res) < 4 {
			return 0, errors.New("short reply")
		}
		port := binary.BigEndian.Uint32(res)
		if port > 65535 {
			return 0, fmt.Errorf("bad port %d", port)
		}
		return uint16(port), nil
	}
	args := append(xdrUint32(prog, vers), xdrString("tcp6")...)
	args = append(args, xdrString("")...) // r_addr
	args = append(args, xdrString("")...) // r_owner
	res, err := rpcCall(rw, ProgPortmap, 4, 3, args)
	if err != nil {
		return 0, err
	}
	if len(res) < 4 {
		return 0, errors.New("short reply")
	}
	n := binary.BigEndian.Uint32(res)
	if n == 0 {
		return 0, nil // not registered
	}
	if n > 128 || len(res) < 4+int(n) {
		return 0, errors.New("bad universal address")
	}
	return portOfUaddr(string(res[4 : 4+n]))
}

// portOfUaddr extracts the port of an RPC universal address
// ("2001:db8::1.8.1" is port 8*256+1).
func portOfUaddr(uaddr string) (uint16, error) {
	i := strings.LastIndexByte(uaddr, '.')
	j := strings.LastIndexByte(uaddr[:max(i, 0)], '.')
	if i < 0 || j < 0 {
		return 0, fmt.Errorf("bad universal address %q", uaddr)
	}
	hi, err1 := strconv.ParseUint(uaddr[j+1:i], 10, 8)
	lo, err2 := strconv.ParseUint(uaddr[i+1:], 10, 8)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad universal address %q", uaddr)
	}
	return uint16(hi<<8 | lo), nil
}

func xdrUint32(vs ...uint32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.BigEndian.PutUint32(b[4*i:], v)
	}
	return b
}

func xdrString(s string) []byte {
	b := make([]byte, 4+(len(s)+3)&^3)
	binary.BigEndian.PutUint32(b, uint32(len(s)))
	copy(b[4:], s)
	return b
}

// rpcCall makes one ONC RPC call (AUTH_NONE) over a record-marked stream
// and returns the result body of a successful reply.
func rpcCall(rw io.ReadWriter, prog, vers, proc uint32, args []byte) ([]byte, error) {
	var xidb [4]byte
	rand.Read(xidb[:])
	xid := binary.BigEndian.Uint32(xidb[:])
	call := append(xdrUint32(xid, 0, 2, prog, vers, proc, 0, 0, 0, 0), args...)
	msg := append(xdrUint32(0x80000000|uint32(len(call))), call...) // last fragment
	if _, err := rw.Write(msg); err != nil {
		return nil, err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:]) &^ 0x80000000
	if n < 24 || n > 4096 {
		return nil, fmt.Errorf("bad reply length %d", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rw, body); err != nil {
		return nil, err
	}
	word := func(i int) uint32 { return binary.BigEndian.Uint32(body[4*i:]) }
	switch {
	case word(0) != xid:
		return nil, errors.New("reply xid mismatch")
	case word(1) != 1:
		return nil, errors.New("not an RPC reply")
	case word(2) != 0:
		return nil, errors.New("RPC call denied")
	}
	verfLen := (word(4) + 3) &^ 3
	i := 5 + int(verfLen/4)
	if len(body) < 4*(i+1) {
		return nil, errors.New("short reply")
	}
	if st := word(i); st != 0 {
		return nil, fmt.Errorf("RPC accept status %d", st)
	}
	return body[4*(i+1):], nil
}
