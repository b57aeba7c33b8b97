//go:build functional

package amqp

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
)

// go test -tags functional -run '^$' -bench . ./rpc/amqp (TRANSPORT_URL set)

func benchTransport(b *testing.B, prefetch int) (*Transport, string) {
	url := transportURL(b)
	opts := DefaultOptions()
	opts.Prefetch = prefetch
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	tr := newTransport(b, url, opts)
	q := uniq("ferry.bench")
	cleanupQueues(b, url, q)
	return tr, q
}

// Persistent 1 KiB casts to a quorum queue, each waiting for its confirm.
func BenchmarkCast(b *testing.B) {
	run := func(b *testing.B, parallel bool) {
		tr, q := benchTransport(b, 10)
		ctx := context.Background()
		if err := tr.DeclareQueue(ctx, q, []string{q}); err != nil {
			b.Fatal(err)
		}
		body := map[string]string{"pad": string(make([]byte, 1024))}
		cast := func() bool {
			if err := tr.Cast(ctx, rpc.Target(q), "bench.cast", body); err != nil {
				b.Error(err)
				return false
			}
			return true
		}
		start := time.Now()
		if parallel {
			b.SetParallelism(8) // 8 × GOMAXPROCS goroutines
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if !cast() {
						return
					}
				}
			})
		} else {
			for b.Loop() {
				if !cast() {
					break
				}
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	}
	b.Run("sequential", func(b *testing.B) { run(b, false) })
	b.Run("parallel", func(b *testing.B) { run(b, true) })
}

// Call round trips to a consumer on another connection of the same process.
func BenchmarkCall(b *testing.B) {
	tr, q := benchTransport(b, 10)
	consume(b, tr, q, func(_ context.Context, env rpc.Envelope) (any, error) {
		return env.Body, nil
	})
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		var r numBody
		if err := tr.Call(ctx, rpc.Target(q), "bench.call", numBody{1}, &r); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}
