package kernel_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/nsmount"
)

// TestResetConnections destroys, in a fresh netns, exactly the TCP
// connections to the given server (IPv4 and IPv6): their owner sees the
// connection aborted; a connection to another port of the same address is
// left alone.
func TestResetConnections(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace")
	}
	child := exec.Command("unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 600")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	pid := child.Process.Pid
	for i := 0; ; i++ {
		if c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(c)) == "sleep" {
			break
		}
		if i > 500 {
			t.Fatal("child not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	tg, err := nsmount.OpenPID(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	for _, tc := range []struct{ name, server, other string }{
		{"IPv4", "127.0.0.1:2049", "127.0.0.1:20490"},
		{"IPv6", "[::1]:2049", "[::1]:20490"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var conns []net.Conn
			var lns []net.Listener
			defer func() {
				for _, c := range conns {
					c.Close()
				}
				for _, l := range lns {
					l.Close()
				}
			}()
			// Two connections to the server, one to another port.
			err := tg.Do(nsmount.NetNS, func() error {
				for _, a := range []string{tc.server, tc.other} {
					l, err := net.Listen("tcp", a)
					if err != nil {
						return err
					}
					lns = append(lns, l)
				}
				for _, a := range []string{tc.server, tc.server, tc.other} {
					c, err := net.Dial("tcp", a)
					if err != nil {
						return err
					}
					conns = append(conns, c)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			n, err := kernel.ResetConnections(t.Context(), tg, netip.MustParseAddrPort(tc.server))
			if err != nil || n != 2 {
				t.Fatalf("ResetConnections = %d, %v; want 2 destroyed", n, err)
			}
			for i, c := range conns {
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				_, err := c.Read(make([]byte, 1))
				aborted := errors.Is(err, syscall.ECONNABORTED)
				if want := i < 2; aborted != want {
					t.Errorf("connection %d to %s: read %v, want aborted %v", i, c.RemoteAddr(), err, want)
				}
			}
		})
	}
}
