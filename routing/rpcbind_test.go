package routing

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
)

func TestPortOfUaddr(t *testing.T) {
	tests := []struct {
		uaddr string
		want  uint16
		ok    bool
	}{
		{"2001:db8::1.8.1", 2049, true},
		{"198.51.100.1.0.111", 111, true},
		{"::.78.80", 20048, true},
		{"2001:db8::1", 0, false},
		{"x.300.1", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, err := portOfUaddr(tt.uaddr)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("portOfUaddr(%q) = %d, %v; want %d, ok=%v", tt.uaddr, got, err, tt.want, tt.ok)
		}
	}
}

// fakePortmapper answers one RPC call on c with result, echoing the xid,
// and returns the call's (prog, vers, proc).
func fakePortmapper(t *testing.T, c net.Conn, result []byte) [3]uint32 {
	t.Helper()
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Error(err)
		return [3]uint32{}
	}
	call := make([]byte, binary.BigEndian.Uint32(hdr[:])&^0x80000000)
	io.ReadFull(c, call)
	w := func(i int) uint32 { return binary.BigEndian.Uint32(call[4*i:]) }
	reply := append(xdrUint32(w(0), 1, 0, 0, 0, 0), result...)
	c.Write(append(xdrUint32(0x80000000|uint32(len(reply))), reply...))
	return [3]uint32{w(3), w(4), w(5)}
}

func TestGetPort(t *testing.T) {
	tests := []struct {
		name     string
		server   string
		result   []byte
		wantCall [3]uint32
		want     uint16
	}{
		{"ipv4 portmap v2", "198.51.100.1", xdrUint32(20048), [3]uint32{ProgPortmap, 2, 3}, 20048},
		{"ipv4 not registered", "198.51.100.1", xdrUint32(0), [3]uint32{ProgPortmap, 2, 3}, 0},
		{"ipv6 rpcbind v4 getaddr", "2001:db8::1", xdrString("2001:db8::1.78.80"), [3]uint32{ProgPortmap, 4, 3}, 20048},
		{"ipv6 not registered", "2001:db8::1", xdrString(""), [3]uint32{ProgPortmap, 4, 3}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			got := make(chan [3]uint32, 1)
			go func() { got <- fakePortmapper(t, server, tt.result); server.Close() }()
			port, err := getPort(client, netip.MustParseAddr(tt.server), ProgMount, 3)
			if err != nil || port != tt.want {
				t.Errorf("getPort = %d, %v; want %d", port, err, tt.want)
			}
			if call := <-got; call != tt.wantCall {
				t.Errorf("call = %v, want %v", call, tt.wantCall)
			}
		})
	}
}

func TestXDRString(t *testing.T) {
	if got := xdrString("tcp6"); !bytes.Equal(got, []byte{0, 0, 0, 4, 't', 'c', 'p', '6'}) {
		t.Errorf("xdrString(tcp6) = %v", got)
	}
	if got := len(xdrString("abcde")); got != 12 {
		t.Errorf("len(xdrString(abcde)) = %d, want 12", got)
	}
}

// replier answers one RPC call on c with a reply that reply makes from
// the call's xid, and returns the call's (prog, vers, proc).
func replier(t *testing.T, c net.Conn, reply func(xid uint32) []byte) [3]uint32 {
	t.Helper()
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return [3]uint32{}
	}
	call := make([]byte, binary.BigEndian.Uint32(hdr[:])&^0x80000000)
	io.ReadFull(c, call)
	w := func(i int) uint32 { return binary.BigEndian.Uint32(call[4*i:]) }
	if r := reply(w(0)); r != nil {
		c.Write(append(xdrUint32(0x80000000|uint32(len(r))), r...))
	}
	return [3]uint32{w(3), w(4), w(5)}
}

func TestNFSNull(t *testing.T) {
	tests := []struct {
		name  string
		vers  uint32
		reply func(xid uint32) []byte
		ok    bool
	}{
		{"v4 answers", 4, func(xid uint32) []byte { return xdrUint32(xid, 1, 0, 0, 0, 0) }, true},
		{"v3 answers", 3, func(xid uint32) []byte { return xdrUint32(xid, 1, 0, 0, 0, 0) }, true},
		{"program unavailable", 4, func(xid uint32) []byte { return xdrUint32(xid, 1, 0, 0, 0, 1) }, false},
		{"version mismatch", 4, func(xid uint32) []byte { return xdrUint32(xid, 1, 0, 0, 0, 2, 2, 3) }, false},
		{"call denied", 4, func(xid uint32) []byte { return xdrUint32(xid, 1, 1, 1, 0, 0) }, false},
		{"wrong xid", 4, func(xid uint32) []byte { return xdrUint32(xid+1, 1, 0, 0, 0, 0) }, false},
		{"closed without a reply", 4, func(uint32) []byte { return nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			got := make(chan [3]uint32, 1)
			go func() { got <- replier(t, server, tt.reply); server.Close() }()
			err := nfsNull(client, tt.vers)
			if (err == nil) != tt.ok {
				t.Errorf("nfsNull = %v, want ok=%v", err, tt.ok)
			}
			if call := <-got; call != [3]uint32{ProgNFS, tt.vers, 0} {
				t.Errorf("call = %v, want NFS v%d NULL", call, tt.vers)
			}
		})
	}
}
