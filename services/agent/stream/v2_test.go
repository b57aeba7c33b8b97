package stream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Rolling upgrade: every pairing of a v1 and a v2 agent copies the image
// byte for byte with the same digest, at the highest common version.
func TestMixedVersions(t *testing.T) {
	pki := newTestPKI(t)
	v2 := startServer(t, pki, nil)
	v1 := startServer(t, pki, func(c *ServerConfig) { c.MaxVersion = 1 })
	const cs = 64 << 10
	src, extents := testImage(77, 3<<20+999, cs, true)
	send := map[string]func(context.Context, SendRequest) (Result, error){
		"v1 source": sendV1,
		"v2 source": Send,
	}
	cases := []struct {
		source string
		dest   *testServer
		want   int
	}{
		{"v1 source", v2, 1},
		{"v2 source", v1, 1},
		{"v2 source", v2, 2},
		{"v1 source", v1, 1},
	}
	for i, tc := range cases {
		destName := "v2 destination"
		if tc.dest == v1 {
			destName = "v1 destination"
		}
		t.Run(tc.source+" to "+destName, func(t *testing.T) {
			id := fmt.Sprintf("mixed-%d", i)
			dst := newMemImage(len(src))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			prep, err := tc.dest.srv.PrepareSession(ctx, PrepareRequest{TransferID: id, ImageName: "v/" + id,
				Image: dst, Checkpoints: &MemCheckpointStore{}, ChunkSize: cs})
			if err != nil {
				t.Fatal(err)
			}
			logger, _ := newTestLogger(t)
			res, err := send[tc.source](ctx, SendRequest{Addr: tc.dest.addr, TLSConfig: pki.client, TransferID: id,
				Ticket: prep.Ticket, Source: &memSource{data: src}, Extents: extents, ChunkSize: cs,
				Streams: 3, Compression: CompressionZstd, Retry: fastRetry(), Logger: logger})
			if err != nil {
				t.Fatal(err)
			}
			cr, err := prep.Session.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := expectedDigest(t, src, extents, cs)
			if res.Digest != want || cr.Digest != want {
				t.Fatalf("digests: source %s destination %s want %s", res.Digest, cr.Digest, want)
			}
			if !bytes.Equal(dst.snapshot(), src) {
				t.Fatal("destination differs")
			}
			if tc.source == "v2 source" && res.Version != tc.want {
				t.Fatalf("spoke v%d, want v%d", res.Version, tc.want)
			}
		})
	}
}

// handDest is a v2 destination driven by the test: it accepts connections,
// grants the credit it is told to, reports every chunk it receives and
// acknowledges only what the test acknowledges.
type handDest struct {
	t      *testing.T
	addr   string
	window uint64
	chunks chan recvChunk

	mu      sync.Mutex
	conns   []*handDestConn
	acks    ackState
	digests map[uint64][32]byte
	lengths map[uint64]uint64
}

type handDestConn struct {
	id int
	c  *tls.Conn
	mu sync.Mutex
	bw *bufio.Writer
}

type recvChunk struct {
	seq  uint64
	cost uint64
	conn *handDestConn
}

func (c *handDestConn) write(f Frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := WriteFrameV(c.bw, 2, f); err != nil {
		return err
	}
	return c.bw.Flush()
}

func startHandDest(t *testing.T, pki *testPKI, window uint64) *handDest {
	t.Helper()
	cfg := pki.server.Clone()
	cfg.NextProtos = []string{ALPNv2}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	hd := &handDest{t: t, addr: ln.Addr().String(), window: window, chunks: make(chan recvChunk, 1024),
		digests: map[uint64][32]byte{}, lengths: map[uint64]uint64{}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		hd.mu.Lock()
		for _, c := range hd.conns {
			c.c.Close()
		}
		hd.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { hd.serve(c.(*tls.Conn)) })
		}
	})
	return hd
}

func (hd *handDest) serve(tc *tls.Conn) {
	defer tc.Close()
	fr := newFrameReader(tc, 1<<20)
	fr.version = 2
	f, err := fr.next()
	if err != nil {
		return
	}
	if _, ok := f.(*Hello); !ok {
		return
	}
	hd.mu.Lock()
	c := &handDestConn{id: len(hd.conns), c: tc, bw: bufio.NewWriter(tc)}
	hd.conns = append(hd.conns, c)
	hd.mu.Unlock()
	if c.write(&HelloOK{ChunkSize: 16 << 10, Window: hd.window, MaxAhead: 4096}) != nil {
		return
	}
	for {
		f, err := fr.next()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *Chunk:
			hd.mu.Lock()
			hd.digests[f.Seq], hd.lengths[f.Seq] = f.Digest, f.Length
			hd.mu.Unlock()
			hd.chunks <- recvChunk{seq: f.Seq, cost: frameCost(f), conn: c}
		case *Done:
			folder, _ := newDigestFolder(0, 0, nil, 1<<20)
			hd.mu.Lock()
			for seq, d := range hd.digests {
				folder.add(seq, hd.lengths[seq], d)
			}
			hd.mu.Unlock()
			_ = c.write(&DoneOK{TotalChunks: f.TotalChunks, Digest: folder.sum()})
			return
		}
	}
}

// ack records seqs as written and sends the Acks frame on c.
func (hd *handDest) ack(c *handDestConn, seqs ...uint64) {
	hd.mu.Lock()
	for _, s := range seqs {
		hd.acks.add(s)
	}
	f := hd.acks.frame(hd.window)
	hd.mu.Unlock()
	if err := c.write(f); err != nil {
		hd.t.Logf("ack: %v", err)
	}
}

// collect gathers the chunks received until none came for quiet.
func (hd *handDest) collect(quiet time.Duration) []recvChunk {
	var got []recvChunk
	for {
		select {
		case r := <-hd.chunks:
			got = append(got, r)
		case <-time.After(quiet):
			return got
		}
	}
}

// sendToHand runs Send against hd in the background.
func sendToHand(t *testing.T, pki *testPKI, hd *handDest, n int, mutate func(*SendRequest)) (<-chan error, []byte) {
	t.Helper()
	const cs = 16 << 10
	src := make([]byte, n*cs)
	fillRandom(newRand(uint64(n)), src)
	logger, _ := newTestLogger(t)
	req := SendRequest{Addr: hd.addr, TLSConfig: pki.client, TransferID: "hand", Ticket: "t",
		Source: &memSource{data: src}, Extents: []Extent{{Length: uint64(len(src))}}, ChunkSize: cs,
		Streams: 3, Retry: fastRetry(), IOTimeout: 10 * time.Second, Logger: logger}
	if mutate != nil {
		mutate(&req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() {
		_, err := Send(ctx, req)
		done <- err
	}()
	return done, src
}

func waitSend(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("send did not finish")
	}
}

// The source never has more chunk bytes unacknowledged than the credit the
// destination granted, and fills it: each round the destination holds its
// acks until nothing more arrives, then acknowledges everything.
func TestCreditWindowRespected(t *testing.T) {
	pki := newTestPKI(t)
	const n, cost = 48, HeaderLen + ChunkFixedLen + 16<<10
	const window = 5*cost + cost/2
	hd := startHandDest(t, pki, window)
	done, _ := sendToHand(t, pki, hd, n, nil)
	seen := map[uint64]bool{}
	for rounds := 0; len(seen) < n; rounds++ {
		if rounds > 4*n {
			t.Fatalf("stalled with %d of %d chunks", len(seen), n)
		}
		got := hd.collect(150 * time.Millisecond)
		var inFlight uint64
		for _, r := range got {
			inFlight += r.cost
			seen[r.seq] = true
		}
		if inFlight > window {
			t.Fatalf("%d bytes unacknowledged, credit %d", inFlight, window)
		}
		if len(seen) < n && inFlight+cost <= window {
			t.Fatalf("round %d: only %d bytes in flight under a credit of %d: the window is not filled", rounds, inFlight, window)
		}
		if len(got) > 0 {
			var seqs []uint64
			for _, r := range got {
				seqs = append(seqs, r.seq)
			}
			hd.ack(got[0].conn, seqs...)
		}
	}
	waitSend(t, done)
}

// Selective acks free credit and spare resends: with chunk 0 never
// acknowledged until the end, the source keeps sending beyond it, and no
// chunk arrives twice.
func TestSelectiveAcks(t *testing.T) {
	pki := newTestPKI(t)
	const n, cost = 40, HeaderLen + ChunkFixedLen + 16<<10
	hd := startHandDest(t, pki, 4*cost)
	done, _ := sendToHand(t, pki, hd, n, nil)
	count := map[uint64]int{}
	var last *handDestConn
	for rounds := 0; len(count) < n; rounds++ {
		if rounds > 4*n {
			t.Fatalf("stalled with %d of %d chunks: %v", len(count), n, count)
		}
		got := hd.collect(150 * time.Millisecond)
		var seqs []uint64
		for _, r := range got {
			count[r.seq]++
			if r.seq != 0 {
				seqs = append(seqs, r.seq)
			}
			last = r.conn
		}
		if len(seqs) > 0 {
			hd.ack(last, seqs...)
		}
	}
	hd.mu.Lock()
	wm, ranges := hd.acks.next, len(hd.acks.ranges)
	hd.mu.Unlock()
	if wm != 0 || ranges != 1 {
		t.Fatalf("watermark %d with %d ranges; chunk 0 should hold the watermark", wm, ranges)
	}
	hd.ack(last, 0)
	waitSend(t, done)
	for seq, c := range count {
		if c != 1 {
			t.Errorf("seq %d received %d times", seq, c)
		}
	}
}

// A dropped connection's unacknowledged chunks go back to the shared queue:
// another open connection sends them, before the dropped one could
// reconnect.
func TestRequeueAfterDroppedConnection(t *testing.T) {
	pki := newTestPKI(t)
	const n, cost = 256, HeaderLen + ChunkFixedLen + 16<<10
	hd := startHandDest(t, pki, 8*cost)
	done, src := sendToHand(t, pki, hd, n, func(r *SendRequest) {
		r.Streams = 2
		r.Retry = RetryPolicy{MaxAttempts: 3, InitialBackoff: 20 * time.Second, MaxBackoff: 20 * time.Second}
	})
	_ = src
	// Acknowledge rounds until both connections carry unacknowledged
	// chunks (the first one up may take the whole credit at first).
	var byConn map[*handDestConn][]uint64
	for round := 0; ; round++ {
		if round > 30 {
			t.Fatalf("chunks keep coming on one connection: %v", byConn)
		}
		byConn = map[*handDestConn][]uint64{}
		got := hd.collect(200 * time.Millisecond)
		for _, r := range got {
			byConn[r.conn] = append(byConn[r.conn], r.seq)
		}
		if len(byConn) == 2 {
			break
		}
		for c, seqs := range byConn {
			hd.ack(c, seqs...)
		}
	}
	var victim, other *handDestConn
	for c := range byConn {
		if victim == nil || c.id < victim.id {
			victim = c
		}
	}
	for c := range byConn {
		if c != victim {
			other = c
		}
	}
	dropped := byConn[victim]
	victim.c.Close()
	// Acknowledge what the surviving connection carried: the credit it
	// frees and the requeued chunks must go out on it.
	hd.ack(other, byConn[other]...)
	start := time.Now()
	resent := map[uint64]bool{}
	for len(resent) < len(dropped) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("chunks %v of the dropped connection not resent (got %v)", dropped, resent)
		}
		for _, r := range hd.collect(100 * time.Millisecond) {
			if r.conn == victim {
				t.Fatal("a chunk arrived on the dropped connection")
			}
			if slices.Contains(dropped, r.seq) {
				if r.conn != other {
					t.Fatalf("seq %d resent on a new connection %d, not the open one", r.seq, r.conn.id)
				}
				resent[r.seq] = true
			}
			hd.ack(r.conn, r.seq)
		}
	}
	// Let the rest finish.
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return
		case r := <-hd.chunks:
			hd.ack(r.conn, r.seq)
		case <-time.After(30 * time.Second):
			t.Fatal("send did not finish")
		}
	}
}

// A v2 destination refuses a source that ignores its credit.
func TestDestinationEnforcesCredit(t *testing.T) {
	pki := newTestPKI(t)
	blocked := make(chan struct{})
	release := sync.OnceFunc(func() { close(blocked) })
	defer release()
	ts := startServer(t, pki, func(c *ServerConfig) { c.Window = 64 << 10; c.Writers = 1 })
	prep, dst := hostileSetup(t, ts, "greedy", 1<<20)
	dst.setHook(func(off, n uint64) { <-blocked })
	h := dialHand(t, ts, pki, 2, "greedy", prep.Ticket)
	payload := make([]byte, 60<<10)
	fillRandom(newRand(3), payload)
	// 4 × 60 KiB against 64 KiB of credit (the limit is twice that plus a
	// chunk), nothing acknowledged: one chunk is being written, two wait
	// for a writer, the fourth is refused.
	for i := range 4 {
		h.mustWrite(t, dataChunk(uint64(i), uint64(i)*(64<<10), payload))
	}
	_ = h.bw.Flush()
	h.expectError(t, "exceeds the credit")
	release()
	if err := waitSession(t, prep); !errors.Is(err, ErrProtocol) {
		t.Fatalf("session: %v", err)
	}
}

// delayConn adds latency to every write of a connection, like a WAN link
// (one way): what is written is delivered d later, in order, with no cap
// on the rate. At most delayBuffer bytes wait at once (a socket buffer: a
// writer blocks beyond it, as it would on a real link).
type delayConn struct {
	net.Conn
	d      time.Duration
	mu     sync.Mutex
	room   *sync.Cond
	queued int
	q      chan delayed
	closed bool
	err    error
}

const delayBuffer = 4 << 20

type delayed struct {
	at time.Time
	b  []byte
}

func newDelayConn(c net.Conn, d time.Duration) *delayConn {
	dc := &delayConn{Conn: c, d: d, q: make(chan delayed, 1<<16)}
	dc.room = sync.NewCond(&dc.mu)
	go dc.pump()
	return dc
}

func (c *delayConn) pump() {
	defer c.Conn.Close()
	for p := range c.q {
		if w := time.Until(p.at); w > 0 {
			time.Sleep(w)
		}
		_, err := c.Conn.Write(p.b)
		c.mu.Lock()
		if err != nil {
			c.err = err
		}
		c.queued -= len(p.b)
		c.room.Broadcast()
		c.mu.Unlock()
	}
}

func (c *delayConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	for c.queued > 0 && c.queued+len(p) > delayBuffer && c.err == nil && !c.closed {
		c.room.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closed {
		return 0, net.ErrClosed
	}
	c.queued += len(p)
	c.q <- delayed{at: time.Now().Add(c.d), b: bytes.Clone(p)}
	return len(p), nil
}

// Write deadlines would hit the delayed writes of the pump, not the
// Write that queued them (tls.Conn sets one to now after its close_notify):
// they are ignored.
func (c *delayConn) SetWriteDeadline(time.Time) error { return nil }

func (c *delayConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// Close lets what was written arrive (the pump closes the connection
// after the last delayed write).
func (c *delayConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	c.closed = true
	close(c.q)
	c.room.Broadcast()
	return nil
}

// delayListener delays what the destination writes (acks, HelloOK).
type delayListener struct {
	net.Listener
	d time.Duration
}

func (l delayListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil || l.d == 0 {
		return c, err
	}
	return newDelayConn(c, l.d), nil
}

var _ io.Writer = (*delayConn)(nil)

// The Hello's version decides: a client that negotiated v2 may still speak
// v1 (a hand-made v1 client with today's TLS config), but one that
// negotiated v1 cannot speak v2.
func TestHelloVersionAtMostNegotiated(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	src := make([]byte, 64<<10)
	fillRandom(newRand(4), src)
	for _, tc := range []struct {
		name         string
		alpn, speaks int
		ok           bool
	}{
		{"v1 hello after v2 negotiated", 2, 1, true},
		{"v2 hello after v1 negotiated", 1, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("hello-%d-%d", tc.alpn, tc.speaks)
			prep, dst := hostileSetup(t, ts, id, len(src))
			cfg := pki.client.Clone()
			cfg.NextProtos = offeredALPN(tc.alpn)
			c := rawConn(t, ts.addr, cfg)
			h := &handClient{c: c, bw: bufio.NewWriter(c), fr: newFrameReader(c, 0), v: uint8(tc.speaks)}
			h.mustWrite(t, &Hello{TransferID: id, Ticket: prep.Ticket})
			_ = h.bw.Flush()
			f, err := h.fr.next()
			if err != nil {
				t.Fatal(err)
			}
			if !tc.ok {
				if e, isErr := f.(*ErrorFrame); !isErr || !strings.Contains(e.Reason, "negotiated v1") {
					t.Fatalf("got %#v, want a refusal", f)
				}
				assertNoWrites(t, dst)
				return
			}
			if _, isOK := f.(*HelloOK); !isOK || h.fr.got != 1 {
				t.Fatalf("got %#v in v%d", f, h.fr.got)
			}
			h.mustWrite(t, dataChunk(0, 0, src))
			_ = h.bw.Flush()
			if f, err := h.fr.next(); err != nil || f.(*Ack).Seq != 0 {
				t.Fatalf("got %#v, %v; want the v1 ack", f, err)
			}
		})
	}
}

// ackState, fed seqs in any order, always renders a frame the decoder
// accepts, holds exactly the seqs added, and folds them into the
// watermark once contiguous.
func TestAckStateAnyOrder(t *testing.T) {
	rng := newRand(11)
	for round := range 50 {
		start := uint64(rng.IntN(100))
		n := 1 + rng.IntN(300)
		perm := rng.Perm(n)
		a := ackState{next: start}
		added := map[uint64]bool{}
		for i, p := range perm {
			seq := start + uint64(p)
			a.add(seq)
			added[seq] = true
			if i%7 == 0 {
				a.add(seq) // a resend: no change
			}
			f := a.frame(1)
			back, err := ReadFrame(bytes.NewReader(AppendFrameV(nil, 2, f)), 0)
			if err != nil {
				t.Fatalf("round %d: %v for %+v", round, err, f)
			}
			if got := back.(*Acks); got.Watermark != a.next || len(got.Ranges) != min(len(a.ranges), MaxAckRanges) {
				t.Fatalf("round %d: decoded %+v from %+v", round, got, a)
			}
			for probe := start; probe < start+uint64(n); probe++ {
				if a.has(probe) != added[probe] {
					t.Fatalf("round %d: has(%d) = %v after adding %v", round, probe, a.has(probe), perm[:i+1])
				}
			}
		}
		if a.next != start+uint64(n) || len(a.ranges) != 0 {
			t.Fatalf("round %d: all added, watermark %d (want %d), ranges %v", round, a.next, start+uint64(n), a.ranges)
		}
	}
}

// A destination that takes chunks and never acknowledges them makes the
// source drop the connection after IOTimeout, and give up after its
// retries, instead of waiting forever.
func TestMissingAcksTimeOut(t *testing.T) {
	pki := newTestPKI(t)
	hd := startHandDest(t, pki, 1<<20)
	start := time.Now()
	done, _ := sendToHand(t, pki, hd, 8, func(r *SendRequest) {
		r.Streams = 1
		r.IOTimeout = 300 * time.Millisecond
		r.Retry = RetryPolicy{MaxAttempts: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 10 * time.Millisecond}
	})
	// hd never acknowledges (its chunk channel holds what arrives).
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no ack for seq 0") {
			t.Fatalf("err = %v, want a missing ack", err)
		}
		if el := time.Since(start); el < 600*time.Millisecond {
			t.Fatalf("gave up after %v: both attempts should have waited IOTimeout", el)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("send waits forever for acks")
	}
}
