package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// transferSetup describes one transfer for runTransfer.
type transferSetup struct {
	id       string
	src      []byte
	extents  []Extent
	dst      *memImage
	store    CheckpointStore
	cs       uint64
	mutate   func(*SendRequest)
	imageRef string
}

// runTransfer prepares a session on ts (resuming from its checkpoint if
// any) and runs Send; it returns both sides' results.
func runTransfer(t *testing.T, ctx context.Context, ts *testServer, pki *testPKI, tr transferSetup) (Result, CommitResult, PrepareResponse, error) {
	t.Helper()
	if tr.store == nil {
		tr.store = &MemCheckpointStore{}
	}
	if tr.imageRef == "" {
		tr.imageRef = "volumes/" + tr.id
	}
	prep, err := ts.srv.PrepareSession(ctx, PrepareRequest{
		TransferID: tr.id, ImageName: tr.imageRef, Image: tr.dst, Checkpoints: tr.store, ChunkSize: tr.cs,
	})
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	req := SendRequest{
		Addr: ts.addr, TLSConfig: pki.client, TransferID: tr.id, Ticket: prep.Ticket,
		Source: &memSource{data: tr.src}, Extents: tr.extents, ChunkSize: tr.cs,
		Retry: fastRetry(), IOTimeout: 5 * time.Second,
	}
	req.Logger, _ = newTestLogger(t)
	if prep.Resumed {
		cp := prep.Checkpoint
		req.ResumeFrom = &cp
	}
	if tr.mutate != nil {
		tr.mutate(&req)
	}
	res, err := Send(ctx, req)
	if err != nil {
		return res, CommitResult{}, prep, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cr, werr := prep.Session.Wait(wctx)
	if werr != nil {
		t.Fatalf("send succeeded but session: %v", werr)
	}
	return res, cr, prep, nil
}

func TestSendCopiesImages(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	const kib = 1 << 10
	cases := []struct {
		name    string
		size    int
		cs      uint64
		streams int
		comp    Compression
		holes   bool
	}{
		{"empty", 0, 64 * kib, 4, CompressionNone, true},
		{"one byte", 1, 64 * kib, 4, CompressionNone, false},
		{"exact chunks", 1 << 20, 64 * kib, 4, CompressionNone, true},
		{"ragged size", 3<<20 + 12345, 64 * kib, 4, CompressionNone, true},
		{"ragged size zstd", 3<<20 + 12345, 64 * kib, 3, CompressionZstd, true},
		{"single stream", 2<<20 + 1, 128 * kib, 1, CompressionNone, true},
		{"many streams small chunks", 1<<20 + 777, 4 * kib, 8, CompressionZstd, true},
		{"default chunk size", 9<<20 + 3, 0, 4, CompressionNone, true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cs := tc.cs
			if cs == 0 {
				cs = DefaultChunkSize
			}
			src, extents := testImage(uint64(i+1), tc.size, cs, tc.holes)
			dst := newMemImage(tc.size)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, cr, _, err := runTransfer(t, ctx, ts, pki, transferSetup{
				id: fmt.Sprintf("copy-%d", i), src: src, extents: extents, dst: dst, cs: tc.cs,
				mutate: func(r *SendRequest) { r.Streams, r.Compression = tc.streams, tc.comp },
			})
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			if !bytes.Equal(dst.snapshot(), src) {
				t.Fatal("destination differs from source")
			}
			want := expectedDigest(t, src, extents, cs)
			if res.Digest != want || cr.Digest != want {
				t.Fatalf("digests: source %s, destination %s, expected %s", res.Digest, cr.Digest, want)
			}
			if res.TotalChunks != cr.TotalChunks || res.ChunksSent != res.TotalChunks {
				t.Fatalf("chunks: %+v vs %+v", res, cr)
			}
			var dataBytes uint64
			for _, e := range extents {
				if !e.Zero {
					dataBytes += e.Length
				}
			}
			if res.BytesRead != dataBytes {
				t.Fatalf("read %d bytes, data extents hold %d (zero extents must not be read)", res.BytesRead, dataBytes)
			}
			if tc.comp == CompressionNone && res.BytesSent > dataBytes {
				t.Fatalf("sent %d payload bytes for %d data bytes", res.BytesSent, dataBytes)
			}
			if tc.size > 0 && res.ZeroChunks == 0 {
				t.Fatal("expected zero chunks for the zero runs")
			}
		})
	}
}

func TestZeroExtentsZeroTheDestination(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	const size, cs = 1 << 20, 64 << 10
	src, extents := testImage(42, size, cs, false) // every byte listed
	dst := newMemImage(size)
	for i := range dst.data {
		dst.data[i] = 0xAA // stale content from the base snapshot
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, _, err := runTransfer(t, ctx, ts, pki, transferSetup{id: "zeroes", src: src, extents: extents, dst: dst, cs: cs}); err != nil {
		t.Fatal(err)
	}
	got := dst.snapshot()
	for _, e := range extents {
		if e.Zero && !bytes.Equal(got[e.Offset:e.Offset+e.Length], make([]byte, e.Length)) {
			t.Fatalf("zero extent %+v not zeroed", e)
		}
	}
	if !bytes.Equal(got, src) {
		t.Fatal("destination differs from source")
	}
	if _, zeroes, _ := dst.counts(); zeroes == 0 {
		t.Fatal("no WriteZeroes call")
	}
}

func TestBandwidthLimit(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	const size = 4 << 20
	src := make([]byte, size)
	fillRandom(newRand(7), src)
	dst := newMemImage(size)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, _, _, err := runTransfer(t, ctx, ts, pki, transferSetup{
		id: "limited", src: src, extents: []Extent{{Offset: 0, Length: size}}, dst: dst, cs: 256 << 10,
		mutate: func(r *SendRequest) { r.BandwidthLimit = 8 << 20 },
	})
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Fatalf("4 MiB at 8 MiB/s took %v, want ≥ 0.4s", el)
	}
	if !bytes.Equal(dst.snapshot(), src) {
		t.Fatal("destination differs")
	}
}

func TestCancelStopsPromptly(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	const size = 32 << 20
	src := make([]byte, size)
	fillRandom(newRand(8), src)
	dst := newMemImage(size)
	prep, err := ts.srv.PrepareSession(context.Background(), PrepareRequest{
		TransferID: "cancel", ImageName: "v/cancel", Image: dst, Checkpoints: &MemCheckpointStore{}, ChunkSize: 1 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err = Send(ctx, SendRequest{
		Addr: ts.addr, TLSConfig: pki.client, TransferID: "cancel", Ticket: prep.Ticket,
		Source: &memSource{data: src}, Extents: []Extent{{Length: size}}, ChunkSize: 1 << 20,
		BandwidthLimit: 2 << 20, Retry: fastRetry(),
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("cancel took %v to stop the transfer", el)
	}
}

func TestProgressReported(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	const size = 2 << 20
	src := make([]byte, size)
	fillRandom(newRand(9), src)
	var mu sync.Mutex
	var reports []Progress
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, _, err := runTransfer(t, ctx, ts, pki, transferSetup{
		id: "progress", src: src, extents: []Extent{{Length: size}}, dst: newMemImage(size), cs: 64 << 10,
		mutate: func(r *SendRequest) {
			r.BandwidthLimit = 8 << 20
			r.ProgressInterval = 50 * time.Millisecond
			r.Progress = func(p Progress) { mu.Lock(); reports = append(reports, p); mu.Unlock() }
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) < 2 {
		t.Fatalf("%d progress reports", len(reports))
	}
	last := reports[len(reports)-1]
	if last.BytesDone != size {
		t.Fatalf("final progress %+v", last)
	}
	var sawRate bool
	for _, p := range reports {
		sawRate = sawRate || p.BytesPerSecond > 0
		if p.BytesTotal != size {
			t.Fatalf("progress %+v: total is not the extents' %d bytes", p, size)
		}
	}
	if !sawRate {
		t.Fatal("no rate reported")
	}
}

// flakyDialer closes the first `drops` connections after `after` bytes
// written, mid-chunk.
type flakyDialer struct {
	after int64
	drops atomic.Int32
}

func (d *flakyDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if d.drops.Add(-1) >= 0 {
		return &dropConn{Conn: c, left: d.after}, nil
	}
	return c, nil
}

type dropConn struct {
	net.Conn
	mu   sync.Mutex
	left int64
}

func (c *dropConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if int64(len(p)) > c.left {
		n, _ := c.Conn.Write(p[:c.left])
		c.left = 0
		c.Conn.Close()
		return n, net.ErrClosed
	}
	c.left -= int64(len(p))
	return c.Conn.Write(p)
}

func TestDroppedConnectionIsRetried(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	const size = 4<<20 + 5
	src, extents := testImage(11, size, 128<<10, true)
	dst := newMemImage(size)
	fd := &flakyDialer{after: 700 << 10}
	fd.drops.Store(3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, cr, _, err := runTransfer(t, ctx, ts, pki, transferSetup{
		id: "flaky", src: src, extents: extents, dst: dst, cs: 128 << 10,
		mutate: func(r *SendRequest) { r.Dial = fd.dial; r.Streams = 2 },
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reconnects == 0 {
		t.Fatal("no reconnect happened")
	}
	if !bytes.Equal(dst.snapshot(), src) || res.Digest != cr.Digest {
		t.Fatal("copy differs after reconnects")
	}
	ts.log.waitFor(t, "stream dropped", time.Second)
}
