package stream

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"
)

// heapPeak samples the live heap until stopped and returns the peak.
func heapPeak() (stop func() uint64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	var (
		mu   sync.Mutex
		peak = read()
		quit = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				v := read()
				mu.Lock()
				peak = max(peak, v)
				mu.Unlock()
			}
		}
	})
	return func() uint64 {
		close(quit)
		wg.Wait()
		return peak
	}
}

// BenchmarkSend copies a 256 MiB dense in-memory image over loopback TLS
// with the default settings. Besides MB/s and allocations it reports
// peak-heap-MB: the heap above the two 256 MiB images while a transfer runs
// (source and destination together, as both run in this process).
func BenchmarkSend(b *testing.B) {
	const size = 256 << 20
	for _, comp := range []Compression{CompressionNone, CompressionZstd} {
		b.Run(comp.String(), func(b *testing.B) {
			pki := newTestPKI(b)
			quiet := slog.New(slog.DiscardHandler)
			ts := startServer(b, pki, func(c *ServerConfig) { c.Logger = quiet; c.IdleTimeout = time.Minute })
			src, extents := denseImage(99, size)
			dst := newMemImage(size)
			source := &memSource{data: src}
			var st [1]metrics.Sample
			st[0].Name = "/memory/classes/heap/objects:bytes"
			metrics.Read(st[:])
			base := st[0].Value.Uint64()
			stop := heapPeak()
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				// Collect the previous transfer's garbage so the peak is
				// one transfer's working set.
				b.StopTimer()
				runtime.GC()
				b.StartTimer()
				id := fmt.Sprintf("bench-%s-%d", comp, i)
				prep, err := ts.srv.PrepareSession(context.Background(), PrepareRequest{
					TransferID: id, ImageName: "v/" + id, Image: dst, Checkpoints: &MemCheckpointStore{},
				})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Send(context.Background(), SendRequest{
					Addr: ts.addr, TLSConfig: pki.client, TransferID: id, Ticket: prep.Ticket,
					Source: source, Extents: extents, Compression: comp, Logger: quiet,
				}); err != nil {
					b.Fatal(err)
				}
				if _, err := prep.Session.Wait(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			peak := stop()
			if peak > base {
				b.ReportMetric(float64(peak-base)/(1<<20), "peak-heap-MB")
			}
		})
	}
}
