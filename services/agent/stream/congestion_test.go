//go:build linux

package stream

import (
	"context"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// congestionOf reads the algorithm of a connection's socket.
func congestionOf(t *testing.T, c net.Conn) string {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var algo string
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		algo, gerr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return strings.TrimRight(algo, "\x00")
}

// Both ends get the configured algorithm (the accepted socket from its
// listener), an algorithm the kernel lacks falls back to cubic, and
// "default" leaves the kernel's.
func TestCongestionControl(t *testing.T) {
	avail, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
	if err != nil {
		t.Skipf("no congestion control list: %v", err)
	}
	kernel, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	have := strings.Fields(string(avail))
	want := "cubic"
	for _, a := range []string{"reno", "bbr"} {
		if slices.Contains(have, a) && a != strings.TrimSpace(string(kernel)) {
			want = a // one that differs from the default, so the test can fail
		}
	}
	cases := []struct{ algo, want string }{
		{want, want},
		{"no-such-algorithm", "cubic"},
		{"default", strings.TrimSpace(string(kernel))},
	}
	for _, tc := range cases {
		t.Run(tc.algo, func(t *testing.T) {
			lc := net.ListenConfig{Control: CongestionControl(tc.algo)}
			ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				c, _ := ln.Accept()
				accepted <- c
			}()
			d := net.Dialer{Control: CongestionControl(tc.algo)}
			c, err := d.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s := <-accepted
			if s == nil {
				t.Fatal("accept failed")
			}
			defer s.Close()
			if got := congestionOf(t, c); got != tc.want {
				t.Errorf("dialled socket uses %q, want %q", got, tc.want)
			}
			if got := congestionOf(t, s); got != tc.want {
				t.Errorf("accepted socket uses %q, want %q", got, tc.want)
			}
		})
	}
}
