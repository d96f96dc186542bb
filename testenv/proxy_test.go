package testenv_test

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"

	"github.com/nsmount/nsmount/testenv"
)

// TestProxyFreeze: a frozen connection stays open and forwards nothing,
// while a connection made afterwards is forwarded.
func TestProxyFreeze(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	p, err := testenv.ListenProxy("127.0.0.1:0", echo.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve = %v", err)
		}
	}()

	roundTrip := func(c net.Conn, msg string) (string, error) {
		c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Write([]byte(msg + "\n")); err != nil {
			return "", err
		}
		return bufio.NewReader(c).ReadString('\n')
	}
	old, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if got, err := roundTrip(old, "a"); got != "a\n" || err != nil {
		t.Fatalf("before the freeze: %q, %v", got, err)
	}
	if n := p.Freeze(); n != 1 {
		t.Errorf("Freeze = %d, want 1", n)
	}
	if got, err := roundTrip(old, "b"); err == nil {
		t.Errorf("a frozen connection answered %q", got)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Errorf("a frozen connection: %v, want a timeout (open, silent)", err)
	}
	fresh, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if got, err := roundTrip(fresh, "c"); got != "c\n" || err != nil {
		t.Errorf("a connection after the freeze: %q, %v", got, err)
	}
}
