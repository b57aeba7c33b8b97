package stream

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// CongestionControl returns a socket Control function (net.Dialer,
// net.ListenConfig) that sets the TCP congestion control algorithm algo on
// every socket, falling back to cubic when the kernel does not offer algo
// (its module is absent, or not in net.ipv4.tcp_allowed_congestion_control
// for unprivileged users), and leaving the kernel's default when neither
// can be set. Sockets a listener accepts inherit its algorithm. algo ""
// or "default" leaves the kernel's default: nil is returned.
func CongestionControl(algo string) func(network, address string, c syscall.RawConn) error {
	if algo == "" || algo == "default" {
		return nil
	}
	return func(network, _ string, c syscall.RawConn) error {
		if network != "tcp" && network != "tcp4" && network != "tcp6" {
			return nil
		}
		return c.Control(func(fd uintptr) {
			// An algorithm that cannot be set is not a reason to fail the
			// connection: the kernel's default stays.
			if unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, algo) != nil && algo != "cubic" {
				_ = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, "cubic")
			}
		})
	}
}
