//go:build bench

package bench

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// The wan namespace's delay line. This kernel has neither sch_netem nor
// fq, so the delay is added at the packet level, TCP kept end to end: the
// wan namespace routes the agents' data addresses into a TUN device; this
// helper (the test binary run again in the wan namespace) reads each IP
// packet, holds it FERRY_DELAYLINE_MS and writes it back into the device,
// where a rule (iif dly) routes it on to its veth. Every packet crosses
// once per direction, so the round trip gains twice the delay. The device
// carries the kernel's segmentation offload (IFF_VNET_HDR, TUNSETOFFLOAD):
// a TSO burst of up to 64 KiB is one read and one write, so the helper
// costs a few system calls per 64 KiB, not per 1,500-byte packet; the
// veths past it segment as a NIC would, and htb on them sees every byte.
// The delay is constant, so a FIFO keeps the order.

const (
	tunSetIff     = 0x400454ca
	tunSetOffload = 0x400454d0
	iffTun        = 0x0001
	iffNoPI       = 0x1000
	iffVnetHdr    = 0x4000
	tunFCsum      = 0x01
	tunFTSO4      = 0x02
	tunFTSO6      = 0x04
)

// TestDelayLineHelper is not a test: delayLine starts the test binary with
// FERRY_DELAYLINE_DEV set to run it.
func TestDelayLineHelper(t *testing.T) {
	dev := os.Getenv("FERRY_DELAYLINE_DEV")
	if dev == "" {
		t.Skip("the delay line helper runs only when the WAN bench starts it")
	}
	ms, err := strconv.Atoi(os.Getenv("FERRY_DELAYLINE_MS"))
	if err != nil {
		t.Fatal(err)
	}
	if err := runDelayLine(dev, time.Duration(ms)*time.Millisecond); err != nil {
		fmt.Fprintln(os.Stderr, "delay line:", err)
		os.Exit(1)
	}
}

type heldPacket struct {
	due time.Time
	buf []byte
}

func runDelayLine(dev string, delay time.Duration) error {
	fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	var ifr [40]byte
	copy(ifr[:16], dev)
	*(*uint16)(unsafe.Pointer(&ifr[16])) = iffTun | iffNoPI | iffVnetHdr
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), tunSetIff, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return fmt.Errorf("TUNSETIFF %s: %w", dev, e)
	}
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), tunSetOffload, tunFCsum|tunFTSO4|tunFTSO6); e != 0 {
		return fmt.Errorf("TUNSETOFFLOAD: %w", e)
	}
	fmt.Println("ready")
	os.Stdout.Sync()
	// Buffers are made as needed and kept (a 1 Gbit/s × 25 ms line holds
	// ~3 MiB).
	q := make(chan heldPacket, 4096)
	free := make(chan []byte, 4096)
	errc := make(chan error, 2)
	go func() {
		for p := range q {
			if d := time.Until(p.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := syscall.Write(fd, p.buf); err != nil && err != syscall.EINVAL && err != syscall.EIO {
				errc <- fmt.Errorf("write: %w", err)
				return
			}
			select {
			case free <- p.buf[:cap(p.buf)]:
			default:
			}
		}
	}()
	go func() {
		for {
			var buf []byte
			select {
			case buf = <-free:
			default:
				buf = make([]byte, 65536+10)
			}
			n, err := syscall.Read(fd, buf)
			if err != nil {
				if err == syscall.EINTR || err == syscall.EAGAIN {
					free <- buf
					continue
				}
				errc <- fmt.Errorf("read: %w", err)
				return
			}
			q <- heldPacket{due: time.Now().Add(delay), buf: buf[:n]}
		}
	}()
	return <-errc
}
