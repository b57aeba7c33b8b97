package stream

// This file is the v1 sender as it shipped (client.go before protocol v2),
// renamed, so that the mixed-version tests run a real v1 source against a
// v2 destination. Only the shared declarations were removed and the ALPN
// pinned to what a v1 agent offered.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
)

// v1Sender is the state of one Send.
type v1Sender struct {
	req      SendRequest
	log      *slog.Logger
	tls      *tls.Config
	limiter  *rate.Limiter
	piece    int
	folder   *digestFolder
	acks     *v1AckWindow
	window   uint64
	resumeW  uint64
	baseDone uint64
	jobs     chan ChunkSpec
	total    uint64 // set by dispatch before it closes jobs
	// extentBytes is the sum of the extents' lengths, when listed.
	extentBytes uint64
	zeros       []byte

	bytesRead, bytesSent, bytesAcked, chunksAcked, zeroChunks, resent, reconnects atomic.Uint64
}

// Send runs the source side of a transfer: it plans chunks from the extents,
// skips those below the resume watermark, reads, hashes and (optionally)
// compresses them, sends them over Streams TLS connections that each
// present the ticket, retries dropped connections, and finally sends Done
// and checks the destination's digest against its own.
func sendV1(ctx context.Context, req SendRequest) (Result, error) {
	start := time.Now()
	if err := req.prepare(); err != nil {
		return Result{}, err
	}
	s, err := newV1Sender(req)
	if err != nil {
		return Result{}, err
	}
	log := s.log
	log.Info("transfer sending", "streams", req.Streams, "chunk_size", req.ChunkSize,
		"compression", req.Compression.String(), "bandwidth_limit", req.BandwidthLimit, "resume_watermark", s.resumeW)

	stopProgress := s.reportProgress(start)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.dispatch(gctx) })
	for i := range req.Streams {
		g.Go(func() error { return s.runStream(gctx, uint32(i)) })
	}
	err = g.Wait()
	stopProgress()
	res := s.result(start)
	if err != nil {
		return res, fmt.Errorf("stream: send %s: %w", req.TransferID, err)
	}
	if s.resumeW > s.total {
		return res, fmt.Errorf("stream: send %s: %w: watermark %d beyond the %d planned chunks", req.TransferID, ErrCheckpoint, s.resumeW, s.total)
	}
	w, _, _, pending, err := s.folder.snapshot()
	if err != nil || w != s.total || pending != 0 {
		return res, fmt.Errorf("stream: send %s: internal error: digest covers %d of %d chunks (%d held): %v", req.TransferID, w, s.total, pending, err)
	}
	digest := s.folder.sum()
	res.Digest = FormatDigest(digest)
	res.TotalChunks = s.total
	ok, err := s.commit(ctx, Done{TotalChunks: s.total, Digest: digest})
	res.Duration = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("stream: send %s: commit: %w", req.TransferID, err)
	}
	res.Destination = ok
	if req.Progress != nil {
		req.Progress(s.progress(start, 0, time.Since(start)))
	}
	log.Info("transfer sent", "digest", res.Digest, "chunks", res.TotalChunks, "bytes_sent", res.BytesSent,
		"duration", res.Duration, "reconnects", res.Reconnects)
	return res, nil
}

func newV1Sender(req SendRequest) (*v1Sender, error) {
	s := &v1Sender{
		req:     req,
		log:     req.Logger.With("transfer_id", req.TransferID),
		limiter: newLimiter(req.BandwidthLimit),
		piece:   1 << 20,
		acks:    newV1AckWindow(0),
		window:  uint64(req.Streams * req.Pipeline * 4),
		jobs:    make(chan ChunkSpec),
		zeros:   make([]byte, 64<<10),
	}
	if s.limiter != nil {
		s.piece = limiterPiece(req.BandwidthLimit)
	}
	if req.ExtentIter == nil {
		for _, e := range req.Extents {
			s.extentBytes += e.Length
		}
	}
	s.tls = req.TLSConfig.Clone()
	s.tls.NextProtos = []string{ALPN} // what a v1 agent's ClientTLSConfig offered
	var state []byte
	if cp := req.ResumeFrom; cp != nil {
		s.resumeW, s.baseDone, state = cp.Watermark, cp.BytesDone, cp.DigestState
	}
	s.acks = newV1AckWindow(s.resumeW)
	var err error
	s.folder, err = newDigestFolder(s.resumeW, s.baseDone, state, int(s.window)+1)
	if err != nil {
		return nil, fmt.Errorf("stream: send: %w", err)
	}
	return s, nil
}

func (s *v1Sender) result(start time.Time) Result {
	return Result{
		TotalChunks:   s.total,
		SkippedChunks: min(s.resumeW, s.total),
		ChunksSent:    s.chunksAcked.Load(),
		ZeroChunks:    s.zeroChunks.Load(),
		BytesRead:     s.bytesRead.Load(),
		BytesSent:     s.bytesSent.Load(),
		BytesDone:     s.baseDone + s.bytesAcked.Load(),
		ResentChunks:  s.resent.Load(),
		Reconnects:    s.reconnects.Load(),
		Duration:      time.Since(start),
	}
}

func (s *v1Sender) progress(start time.Time, prevDone uint64, dt time.Duration) Progress {
	p := Progress{
		BytesDone:  s.baseDone + s.bytesAcked.Load(),
		BytesSent:  s.bytesSent.Load(),
		ChunksDone: s.chunksAcked.Load(),
		BytesTotal: s.extentBytes,
		Elapsed:    time.Since(start),
	}
	if dt > 0 && p.BytesDone >= prevDone {
		p.BytesPerSecond = float64(p.BytesDone-prevDone) / dt.Seconds()
	}
	return p
}

// reportProgress calls the Progress callback every ProgressInterval until
// the returned stop function is called.
func (s *v1Sender) reportProgress(start time.Time) (stop func()) {
	if s.req.Progress == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(s.req.ProgressInterval)
		defer t.Stop()
		prev, prevAt := s.baseDone, start
		for {
			select {
			case <-quit:
				return
			case now := <-t.C:
				p := s.progress(start, prev, now.Sub(prevAt))
				prev, prevAt = p.BytesDone, now
				s.req.Progress(p)
			}
		}
	})
	return func() { close(quit); wg.Wait() }
}

// dispatch plans the chunks and hands those at or above the resume
// watermark to the streams, never more than window ahead of the oldest
// unacknowledged one, which bounds what both sides hold out of order.
func (s *v1Sender) dispatch(ctx context.Context) error {
	defer close(s.jobs)
	extents := s.req.ExtentIter
	if extents == nil {
		extents = ExtentsOf(s.req.Extents)
	}
	var n uint64
	for spec, err := range PlanChunks(extents, s.req.Source.Size(), s.req.ChunkSize) {
		if err != nil {
			return permanent(err)
		}
		n = spec.Seq + 1
		if spec.Seq < s.resumeW {
			continue
		}
		if err := s.acks.waitBelow(ctx, spec.Seq, s.window); err != nil {
			return err
		}
		select {
		case s.jobs <- spec:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.total = n
	return nil
}

// v1AckWindow tracks the contiguous acknowledged watermark.
type v1AckWindow struct {
	mu      sync.Mutex
	next    uint64
	acked   map[uint64]struct{}
	changed chan struct{}
}

func newV1AckWindow(start uint64) *v1AckWindow {
	return &v1AckWindow{next: start, acked: make(map[uint64]struct{}), changed: make(chan struct{})}
}

func (a *v1AckWindow) ack(seq uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if seq < a.next {
		return
	}
	if seq != a.next {
		a.acked[seq] = struct{}{}
		return
	}
	a.next++
	for {
		if _, ok := a.acked[a.next]; !ok {
			break
		}
		delete(a.acked, a.next)
		a.next++
	}
	close(a.changed)
	a.changed = make(chan struct{})
}

// waitBelow waits until seq < watermark + window.
func (a *v1AckWindow) waitBelow(ctx context.Context, seq, window uint64) error {
	for {
		a.mu.Lock()
		ok, ch := seq < a.next+window, a.changed
		a.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// v1ClientConn is one verified connection whose Hello was accepted.
type v1ClientConn struct {
	conn net.Conn
	fr   *frameReader
	bw   *bufio.Writer
}

// connect dials, completes TLS and exchanges Hello/HelloOK.
func (s *v1Sender) connect(ctx context.Context, stream uint32) (*v1ClientConn, error) {
	raw, err := s.req.Dial(ctx, "tcp", s.req.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", s.req.Addr, err)
	}
	tc := tls.Client(raw, s.tls)
	hctx, cancel := context.WithTimeout(ctx, s.req.IOTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", s.req.Addr, err)
	}
	stop := context.AfterFunc(hctx, func() { tc.Close() })
	defer stop()
	c := &v1ClientConn{
		conn: tc,
		fr:   newFrameReader(tc, 0),
		bw:   bufio.NewWriterSize(&pacedWriter{ctx: ctx, conn: tc, lim: s.limiter, piece: s.piece, timeout: s.req.IOTimeout}, 64<<10),
	}
	hello := &Hello{Stream: stream, TransferID: s.req.TransferID, Ticket: s.req.Ticket}
	err = WriteFrame(c.bw, hello)
	if err == nil {
		err = c.bw.Flush()
	}
	var f Frame
	if err == nil {
		f, err = c.fr.next()
	}
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("waiting for hello-ok: %w", err)
	}
	switch f := f.(type) {
	case *HelloOK:
		if f.ChunkSize != s.req.ChunkSize {
			tc.Close()
			return nil, protoErrorf("destination session uses chunk size %d, v1Sender %d", f.ChunkSize, s.req.ChunkSize)
		}
		if f.Watermark < s.resumeW {
			tc.Close()
			return nil, permanent(fmt.Errorf("%w: destination holds %d chunks, the v1Sender would skip %d",
				ErrCheckpoint, f.Watermark, s.resumeW))
		}
		return c, nil
	case *ErrorFrame:
		tc.Close()
		return nil, &RemoteError{Reason: f.Reason}
	default:
		tc.Close()
		return nil, protoErrorf("expected hello-ok, got %s", f.Type())
	}
}

// commit sends Done on a control connection and waits for DoneOK. It
// retries transport failures; a refusal is final.
func (s *v1Sender) commit(ctx context.Context, d Done) (DoneOK, error) {
	for attempt := 1; ; attempt++ {
		ok, err := s.tryCommit(ctx, d)
		if err == nil {
			return ok, nil
		}
		if ctx.Err() != nil || isPermanent(err) || attempt >= s.req.Retry.MaxAttempts {
			return DoneOK{}, err
		}
		delay := s.req.Retry.backoff(attempt)
		s.log.Warn("commit failed, retrying", "stream", s.req.Streams, "attempt", attempt, "delay", delay, "reason", err.Error())
		if err := sleepCtx(ctx, delay); err != nil {
			return DoneOK{}, err
		}
	}
}

func (s *v1Sender) tryCommit(ctx context.Context, d Done) (DoneOK, error) {
	c, err := s.connect(ctx, uint32(s.req.Streams))
	if err != nil {
		return DoneOK{}, err
	}
	defer c.conn.Close()
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer stop()
	if err := WriteFrame(c.bw, &d); err != nil {
		return DoneOK{}, err
	}
	if err := c.bw.Flush(); err != nil {
		return DoneOK{}, err
	}
	// The destination flushes the image before replying: allow for it.
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * s.req.IOTimeout))
	f, err := c.fr.next()
	if err != nil {
		return DoneOK{}, fmt.Errorf("waiting for done-ok: %w", err)
	}
	switch f := f.(type) {
	case *DoneOK:
		if f.Digest != d.Digest || f.TotalChunks != d.TotalChunks {
			return DoneOK{}, permanent(fmt.Errorf("%w: destination confirmed %s over %d chunks, source has %s over %d",
				ErrDigestMismatch, FormatDigest(f.Digest), f.TotalChunks, FormatDigest(d.Digest), d.TotalChunks))
		}
		return *f, nil
	case *ErrorFrame:
		return DoneOK{}, &RemoteError{Reason: f.Reason}
	default:
		return DoneOK{}, protoErrorf("expected done-ok, got %s", f.Type())
	}
}

// v1StreamWorker owns one stream: its connection, its buffers and the chunks
// sent on it but not yet acknowledged.
type v1StreamWorker struct {
	s         *v1Sender
	idx       uint32
	log       *slog.Logger
	slots     []v1Slot
	free      []int
	unacked   []*v1Job
	exhausted bool
	progress  bool
	hasher    *chunkHasher
	enc       *zstd.Encoder
}

// v1Slot is one chunk's memory: the data read and its compressed form.
type v1Slot struct {
	data []byte
	comp []byte
}

type v1Job struct {
	frame  Chunk
	v1Slot int  // -1: no buffer held
	sent   bool // written to a connection at least once
}

func (s *v1Sender) runStream(ctx context.Context, idx uint32) error {
	w := &v1StreamWorker{
		s:      s,
		idx:    idx,
		log:    s.log.With("stream", idx),
		slots:  make([]v1Slot, s.req.Pipeline),
		hasher: newChunkHasher(),
	}
	for i := range w.slots {
		w.free = append(w.free, i)
	}
	if s.req.Compression == CompressionZstd {
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(encoderWindow(s.req.ChunkSize)),
			zstd.WithLowerEncoderMem(true),
			zstd.WithSingleSegment(true))
		if err != nil {
			return fmt.Errorf("zstd encoder: %w", err)
		}
		defer enc.Close()
		w.enc = enc
	}
	// Connect only once there is something to send.
	select {
	case spec, ok := <-s.jobs:
		if !ok {
			return nil
		}
		j, err := w.prepare(spec)
		if err != nil {
			return fmt.Errorf("stream %d: %w", idx, err)
		}
		w.unacked = append(w.unacked, j)
	case <-ctx.Done():
		return ctx.Err()
	}
	failures := 0
	for {
		w.progress = false
		err := w.runConn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isPermanent(err) {
			return fmt.Errorf("stream %d: %w", idx, err)
		}
		if w.progress {
			failures = 0
		}
		failures++
		if failures > s.req.Retry.MaxAttempts {
			return fmt.Errorf("stream %d: giving up after %d attempts: %w", idx, failures, err)
		}
		delay := s.req.Retry.backoff(failures)
		w.log.Warn("stream dropped, reconnecting", "attempt", failures, "delay", delay, "unacked", len(w.unacked), "reason", err.Error())
		s.reconnects.Add(1)
		if err := sleepCtx(ctx, delay); err != nil {
			return err
		}
	}
}

// runConn connects and sends until every v1Job is acknowledged (nil) or the
// connection fails. Unacknowledged chunks stay queued for the next one.
func (w *v1StreamWorker) runConn(ctx context.Context) (err error) {
	s := w.s
	c, err := s.connect(ctx, w.idx)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer stop()

	ackCh := make(chan uint64, len(w.slots)+1)
	errCh := make(chan error, 1)
	quit := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			f, err := c.fr.next()
			if err != nil {
				errCh <- err
				return
			}
			switch f := f.(type) {
			case *Ack:
				select {
				case ackCh <- f.Seq:
				case <-quit:
					return
				}
			case *ErrorFrame:
				errCh <- &RemoteError{Reason: f.Reason}
				return
			default:
				errCh <- protoErrorf("unexpected %s frame", f.Type())
				return
			}
		}
	}()
	defer func() {
		close(quit)
		c.conn.Close()
		<-readerDone
		// A refusal read just before the connection broke explains the
		// break better than the write error that noticed it.
		if err != nil {
			select {
			case rerr := <-errCh:
				if isPermanent(rerr) {
					err = rerr
				}
			default:
			}
		}
	}()

	for _, j := range w.unacked {
		if j.sent {
			s.resent.Add(1)
		}
		if err := w.write(c, j); err != nil {
			return err
		}
	}
	ackTimer := time.NewTimer(s.req.IOTimeout)
	defer ackTimer.Stop()
	for {
		if w.exhausted && len(w.unacked) == 0 {
			return nil
		}
		var jobs <-chan ChunkSpec
		if !w.exhausted && len(w.unacked) < len(w.slots) {
			jobs = s.jobs
		}
		var ackTimeout <-chan time.Time
		if len(w.unacked) > 0 {
			ackTimeout = ackTimer.C
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errCh:
			return err
		case <-ackTimeout:
			return fmt.Errorf("no ack for seq %d within %v", w.unacked[0].frame.Seq, s.req.IOTimeout)
		case seq := <-ackCh:
			if len(w.unacked) == 0 || w.unacked[0].frame.Seq != seq {
				return protoErrorf("ack for seq %d out of order", seq)
			}
			w.acked(w.unacked[0])
			w.unacked = slices.Delete(w.unacked, 0, 1)
			ackTimer.Reset(s.req.IOTimeout)
		case spec, ok := <-jobs:
			if !ok {
				w.exhausted = true
				continue
			}
			j, err := w.prepare(spec)
			if err != nil {
				return err
			}
			if len(w.unacked) == 0 {
				ackTimer.Reset(s.req.IOTimeout)
			}
			w.unacked = append(w.unacked, j)
			if err := w.write(c, j); err != nil {
				return err
			}
		}
	}
}

func (w *v1StreamWorker) write(c *v1ClientConn, j *v1Job) error {
	j.sent = true
	if err := WriteFrame(c.bw, &j.frame); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	w.s.bytesSent.Add(uint64(len(j.frame.Payload)))
	return nil
}

func (w *v1StreamWorker) acked(j *v1Job) {
	s := w.s
	s.acks.ack(j.frame.Seq)
	s.chunksAcked.Add(1)
	s.bytesAcked.Add(j.frame.Length)
	if j.frame.Kind == KindZero {
		s.zeroChunks.Add(1)
	}
	if j.v1Slot >= 0 {
		w.free = append(w.free, j.v1Slot)
	}
	w.progress = true
}

// prepare reads, checks for zeros, hashes and compresses one chunk.
func (w *v1StreamWorker) prepare(spec ChunkSpec) (*v1Job, error) {
	s := w.s
	j := &v1Job{v1Slot: -1, frame: Chunk{Seq: spec.Seq, Offset: spec.Offset, Length: spec.Length, Kind: KindZero}}
	var data []byte
	if !spec.Zero {
		si := w.free[len(w.free)-1]
		w.free = w.free[:len(w.free)-1]
		sl := &w.slots[si]
		if sl.data == nil {
			sl.data = make([]byte, s.req.ChunkSize)
		}
		data = sl.data[:spec.Length]
		if err := readFull(s.req.Source, data, spec.Offset); err != nil {
			w.free = append(w.free, si)
			return nil, permanent(fmt.Errorf("read source [%d, +%d): %w", spec.Offset, spec.Length, err))
		}
		s.bytesRead.Add(spec.Length)
		if s.allZero(data) {
			w.free = append(w.free, si)
			data = nil
		} else {
			j.v1Slot = si
			j.frame.Kind = KindData
			j.frame.Payload = data
		}
	}
	j.frame.Digest = w.hasher.digest(spec.Offset, spec.Length, j.frame.Kind, data)
	if data != nil && w.enc != nil {
		sl := &w.slots[j.v1Slot]
		if sl.comp == nil {
			sl.comp = make([]byte, 0, w.enc.MaxEncodedSize(int(s.req.ChunkSize)))
		}
		comp := w.enc.EncodeAll(data, sl.comp[:0])
		sl.comp = comp[:0]
		if len(comp) < len(data) {
			j.frame.Payload = comp
			j.frame.Compressed = true
		}
	}
	if _, _, err := s.folder.add(spec.Seq, spec.Length, j.frame.Digest); err != nil {
		return nil, permanent(err)
	}
	return j, nil
}

func (s *v1Sender) allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(s.zeros))
		if !bytes.Equal(b[:n], s.zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
