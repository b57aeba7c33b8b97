package stream

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"
)

// smallExtents is an incremental: n random 4 KiB writes in an image of
// size bytes, as DiffIterate would list them (sorted, merged when they
// touch).
func smallExtents(seed uint64, size, n int) []Extent {
	rng := newRand(seed)
	offs := map[uint64]bool{}
	for len(offs) < n {
		offs[uint64(rng.IntN(size/4096))*4096] = true
	}
	var sorted []uint64
	for o := range offs {
		sorted = append(sorted, o)
	}
	slices.Sort(sorted)
	var ext []Extent
	for _, o := range sorted {
		if k := len(ext) - 1; k >= 0 && ext[k].Offset+ext[k].Length == o {
			ext[k].Length += 4096
			continue
		}
		ext = append(ext, Extent{Offset: o, Length: 4096})
	}
	return ext
}

// BenchmarkV1vsV2 copies the same extents with the v1 sender as it shipped
// (sendV1, served by the v1 path of the destination) and with v2, one after
// the other in each iteration, over loopback TLS whose every connection
// delays what each side writes by `delay` (RTT = 2 × delay, no rate cap).
// It reports both durations and their ratio v2/v1: the figure to compare,
// since the machine may be shared.
func BenchmarkV1vsV2(b *testing.B) {
	const image = 256 << 20
	cases := []struct {
		name    string
		extents func() []Extent
		delay   time.Duration
	}{
		{"incremental-2048x4KiB/rtt-0", func() []Extent { return smallExtents(5, image, 2048) }, 0},
		{"incremental-2048x4KiB/rtt-10ms", func() []Extent { return smallExtents(5, image, 2048) }, 5 * time.Millisecond},
		{"incremental-2048x4KiB/rtt-50ms", func() []Extent { return smallExtents(5, image, 2048) }, 25 * time.Millisecond},
		{"dense-64MiB/rtt-0", func() []Extent { return []Extent{{Length: 64 << 20}} }, 0},
		{"dense-64MiB/rtt-10ms", func() []Extent { return []Extent{{Length: 64 << 20}} }, 5 * time.Millisecond},
	}
	pki := newTestPKI(b)
	quiet := slog.New(slog.DiscardHandler)
	src := make([]byte, image)
	fillRandom(newRand(1), src)
	dst := newMemImage(image)
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			extents := tc.extents()
			srv, err := NewServer(ServerConfig{TLSConfig: pki.server, Logger: quiet, IdleTimeout: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			served := make(chan struct{})
			go func() { defer close(served); _ = srv.Serve(ctx, delayListener{Listener: ln, d: tc.delay}) }()
			defer func() { cancel(); <-served }()
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil || tc.delay == 0 {
					return c, err
				}
				return newDelayConn(c, tc.delay), nil
			}
			run := func(i int, v string, send func(context.Context, SendRequest) (Result, error)) time.Duration {
				id := fmt.Sprintf("bench-%s-%d", v, i)
				start := time.Now()
				prep, err := srv.PrepareSession(ctx, PrepareRequest{TransferID: id, ImageName: "v/" + id, Image: dst,
					Checkpoints: &MemCheckpointStore{}})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := send(ctx, SendRequest{Addr: ln.Addr().String(), TLSConfig: pki.client, Dial: dial,
					TransferID: id, Ticket: prep.Ticket, Source: &memSource{data: src}, Extents: extents, Logger: quiet}); err != nil {
					b.Fatal(err)
				}
				if _, err := prep.Session.Wait(ctx); err != nil {
					b.Fatal(err)
				}
				return time.Since(start)
			}
			var t1, t2 time.Duration
			b.ResetTimer()
			for i := range b.N {
				t1 += run(i, "v1", sendV1)
				t2 += run(i, "v2", Send)
			}
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(t1.Seconds()/n, "v1-s/op")
			b.ReportMetric(t2.Seconds()/n, "v2-s/op")
			b.ReportMetric(t2.Seconds()/t1.Seconds(), "v2/v1")
		})
	}
}
