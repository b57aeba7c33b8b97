//go:build !linux

package stream

import "syscall"

// CongestionControl is nil off Linux: the kernel's default stays.
func CongestionControl(string) func(network, address string, c syscall.RawConn) error { return nil }
