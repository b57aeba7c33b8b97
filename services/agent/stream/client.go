package stream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
)

// Sender defaults.
const (
	DefaultStreams          = 4
	MaxStreams              = 32
	DefaultPipeline         = 2
	DefaultIOTimeout        = 60 * time.Second
	DefaultProgressInterval = 2 * time.Second
)

// Compression selects the chunk payload encoding.
type Compression uint8

// Compressions.
const (
	CompressionNone Compression = iota
	CompressionZstd
)

// ParseCompression parses the configuration value "none" (or "") or "zstd".
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "", "none":
		return CompressionNone, nil
	case "zstd":
		return CompressionZstd, nil
	}
	return 0, fmt.Errorf("stream: unknown compression %q (want none or zstd)", s)
}

func (c Compression) String() string {
	if c == CompressionZstd {
		return "zstd"
	}
	return "none"
}

// RetryPolicy governs reconnects of a dropped stream: exponential backoff
// with jitter, at most MaxAttempts consecutive failures without an ack in
// between.
type RetryPolicy struct {
	MaxAttempts    int           // default 8
	InitialBackoff time.Duration // default 250ms
	MaxBackoff     time.Duration // default 15s
}

func (p *RetryPolicy) applyDefaults() {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 8
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = 250 * time.Millisecond
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = 15 * time.Second
	}
}

// backoff is the delay before attempt n (1-based): doubling from
// InitialBackoff up to MaxBackoff, with the upper half jittered.
func (p RetryPolicy) backoff(n int) time.Duration {
	d := p.MaxBackoff
	if n-1 < 30 {
		d = min(p.InitialBackoff<<(n-1), p.MaxBackoff)
	}
	return d/2 + rand.N(d/2+1)
}

// Progress is reported every ProgressInterval and once at the end.
type Progress struct {
	// BytesDone is image bytes acknowledged by the destination, including
	// those the resume checkpoint already covered.
	BytesDone uint64
	// BytesSent is payload bytes put on the wire by this run.
	BytesSent uint64
	// ChunksDone is chunks acknowledged in this run.
	ChunksDone uint64
	// BytesTotal is the image bytes of all the extents to send (the
	// BytesDone of the end); 0 when the extents come from ExtentIter.
	BytesTotal uint64
	// BytesPerSecond is the BytesDone rate over the last interval.
	BytesPerSecond float64
	Elapsed        time.Duration
}

// SendRequest describes one run of the source side of a transfer.
type SendRequest struct {
	// Addr is the destination's data port (host:port).
	Addr string
	// TLSConfig is required; build it with ClientTLSConfig.
	TLSConfig *tls.Config
	// Dial opens the TCP connection; nil uses a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	TransferID string
	Ticket     string

	Source SourceImage
	// Extents lists what to send in offset order; ExtentIter, when set,
	// is used instead. Either must give the same list on every run of the
	// transfer, since chunk numbering derives from it.
	Extents    []Extent
	ExtentIter iter.Seq2[Extent, error]

	ChunkSize uint64 // default DefaultChunkSize; must match the session
	Streams   int    // parallel connections, default 4
	// Pipeline is the number of unacknowledged chunks per stream (default
	// 2). Memory is about Streams × Pipeline × ChunkSize (×2 with zstd).
	Pipeline    int
	Compression Compression
	// BandwidthLimit caps the bytes per second of all streams together
	// (token bucket); 0 means unlimited.
	BandwidthLimit int64
	// ResumeFrom is the destination's checkpoint from PrepareSession;
	// chunks below its watermark are skipped and the digest resumes from
	// its state. nil starts from the beginning.
	ResumeFrom *Checkpoint
	Retry      RetryPolicy
	// IOTimeout fails a connection that accepts no byte, or returns no
	// ack for a sent chunk, for this long. Default 60s.
	IOTimeout        time.Duration
	Progress         func(Progress)
	ProgressInterval time.Duration
	Logger           *slog.Logger
}

// Result accounts for one Send.
type Result struct {
	// Digest is the transfer digest "blake3-sha256:<hex>", equal on both sides.
	Digest      string
	TotalChunks uint64
	// SkippedChunks were below the resume watermark.
	SkippedChunks uint64
	// ChunksSent were acknowledged in this run; ZeroChunks of them carried
	// no payload.
	ChunksSent uint64
	ZeroChunks uint64
	// BytesRead from the source.
	BytesRead uint64
	// BytesSent is payload put on the wire, resends included.
	BytesSent uint64
	// BytesDone is image bytes covered by the transfer, all runs included.
	BytesDone uint64
	// ResentChunks were sent again after a reconnect.
	ResentChunks uint64
	Reconnects   uint64
	Duration     time.Duration
	// Destination is the destination's confirmation.
	Destination DoneOK
}

func (r *SendRequest) prepare() error {
	if r.ChunkSize == 0 {
		r.ChunkSize = DefaultChunkSize
	}
	if r.Streams <= 0 {
		r.Streams = DefaultStreams
	}
	if r.Pipeline <= 0 {
		r.Pipeline = DefaultPipeline
	}
	if r.IOTimeout <= 0 {
		r.IOTimeout = DefaultIOTimeout
	}
	if r.ProgressInterval <= 0 {
		r.ProgressInterval = DefaultProgressInterval
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	r.Retry.applyDefaults()
	switch {
	case r.Addr == "":
		return errors.New("stream: send: no destination address")
	case r.TLSConfig == nil:
		return errors.New("stream: send: TLS config is required")
	case r.TransferID == "" || len(r.TransferID) > MaxIDLen:
		return fmt.Errorf("stream: send: transfer id must have 1..%d bytes", MaxIDLen)
	case r.Ticket == "" || len(r.Ticket) > MaxIDLen:
		return errors.New("stream: send: no usable ticket")
	case r.Source == nil:
		return errors.New("stream: send: no source image")
	case r.Streams > MaxStreams:
		return fmt.Errorf("stream: send: at most %d streams", MaxStreams)
	case r.Pipeline > 64:
		return errors.New("stream: send: pipeline deeper than 64")
	case r.Compression != CompressionNone && r.Compression != CompressionZstd:
		return fmt.Errorf("stream: send: unknown compression %d", r.Compression)
	}
	if err := checkChunkSize(r.ChunkSize); err != nil {
		return fmt.Errorf("stream: send: %w", err)
	}
	if r.ResumeFrom != nil {
		if err := r.ResumeFrom.usableFor(r.TransferID, r.ChunkSize); err != nil {
			return fmt.Errorf("stream: send: resume: %w", err)
		}
	}
	if r.Dial == nil {
		d := &net.Dialer{Timeout: r.IOTimeout, KeepAlive: 30 * time.Second}
		r.Dial = d.DialContext
	}
	return nil
}

// sender is the state of one Send.
type sender struct {
	req      SendRequest
	log      *slog.Logger
	tls      *tls.Config
	limiter  *rate.Limiter
	piece    int
	folder   *digestFolder
	acks     *ackWindow
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
func Send(ctx context.Context, req SendRequest) (Result, error) {
	start := time.Now()
	if err := req.prepare(); err != nil {
		return Result{}, err
	}
	s, err := newSender(req)
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

func newSender(req SendRequest) (*sender, error) {
	s := &sender{
		req:     req,
		log:     req.Logger.With("transfer_id", req.TransferID),
		limiter: newLimiter(req.BandwidthLimit),
		piece:   1 << 20,
		acks:    newAckWindow(0),
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
	if len(s.tls.NextProtos) == 0 {
		s.tls.NextProtos = []string{ALPN}
	}
	var state []byte
	if cp := req.ResumeFrom; cp != nil {
		s.resumeW, s.baseDone, state = cp.Watermark, cp.BytesDone, cp.DigestState
	}
	s.acks = newAckWindow(s.resumeW)
	var err error
	s.folder, err = newDigestFolder(s.resumeW, s.baseDone, state, int(s.window)+1)
	if err != nil {
		return nil, fmt.Errorf("stream: send: %w", err)
	}
	return s, nil
}

func (s *sender) result(start time.Time) Result {
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

func (s *sender) progress(start time.Time, prevDone uint64, dt time.Duration) Progress {
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
func (s *sender) reportProgress(start time.Time) (stop func()) {
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
func (s *sender) dispatch(ctx context.Context) error {
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

// ackWindow tracks the contiguous acknowledged watermark.
type ackWindow struct {
	mu      sync.Mutex
	next    uint64
	acked   map[uint64]struct{}
	changed chan struct{}
}

func newAckWindow(start uint64) *ackWindow {
	return &ackWindow{next: start, acked: make(map[uint64]struct{}), changed: make(chan struct{})}
}

func (a *ackWindow) ack(seq uint64) {
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
func (a *ackWindow) waitBelow(ctx context.Context, seq, window uint64) error {
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

// clientConn is one verified connection whose Hello was accepted.
type clientConn struct {
	conn net.Conn
	fr   *frameReader
	bw   *bufio.Writer
}

// connect dials, completes TLS and exchanges Hello/HelloOK.
func (s *sender) connect(ctx context.Context, stream uint32) (*clientConn, error) {
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
	c := &clientConn{
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
			return nil, protoErrorf("destination session uses chunk size %d, sender %d", f.ChunkSize, s.req.ChunkSize)
		}
		if f.Watermark < s.resumeW {
			tc.Close()
			return nil, permanent(fmt.Errorf("%w: destination holds %d chunks, the sender would skip %d",
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
func (s *sender) commit(ctx context.Context, d Done) (DoneOK, error) {
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

func (s *sender) tryCommit(ctx context.Context, d Done) (DoneOK, error) {
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

// streamWorker owns one stream: its connection, its buffers and the chunks
// sent on it but not yet acknowledged.
type streamWorker struct {
	s         *sender
	idx       uint32
	log       *slog.Logger
	slots     []slot
	free      []int
	unacked   []*job
	exhausted bool
	progress  bool
	hasher    *chunkHasher
	enc       *zstd.Encoder
}

// slot is one chunk's memory: the data read and its compressed form.
type slot struct {
	data []byte
	comp []byte
}

type job struct {
	frame Chunk
	slot  int  // -1: no buffer held
	sent  bool // written to a connection at least once
}

func (s *sender) runStream(ctx context.Context, idx uint32) error {
	w := &streamWorker{
		s:      s,
		idx:    idx,
		log:    s.log.With("stream", idx),
		slots:  make([]slot, s.req.Pipeline),
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

// runConn connects and sends until every job is acknowledged (nil) or the
// connection fails. Unacknowledged chunks stay queued for the next one.
func (w *streamWorker) runConn(ctx context.Context) (err error) {
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

func (w *streamWorker) write(c *clientConn, j *job) error {
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

func (w *streamWorker) acked(j *job) {
	s := w.s
	s.acks.ack(j.frame.Seq)
	s.chunksAcked.Add(1)
	s.bytesAcked.Add(j.frame.Length)
	if j.frame.Kind == KindZero {
		s.zeroChunks.Add(1)
	}
	if j.slot >= 0 {
		w.free = append(w.free, j.slot)
	}
	w.progress = true
}

// prepare reads, checks for zeros, hashes and compresses one chunk.
func (w *streamWorker) prepare(spec ChunkSpec) (*job, error) {
	s := w.s
	j := &job{slot: -1, frame: Chunk{Seq: spec.Seq, Offset: spec.Offset, Length: spec.Length, Kind: KindZero}}
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
			j.slot = si
			j.frame.Kind = KindData
			j.frame.Payload = data
		}
	}
	j.frame.Digest = w.hasher.digest(spec.Offset, spec.Length, j.frame.Kind, data)
	if data != nil && w.enc != nil {
		sl := &w.slots[j.slot]
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

// encoderWindow is the smallest power-of-two zstd window holding a chunk.
func encoderWindow(chunkSize uint64) int {
	w := zstd.MinWindowSize
	for uint64(w) < chunkSize && w < zstd.MaxWindowSize {
		w <<= 1
	}
	return w
}

func (s *sender) allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(s.zeros))
		if !bytes.Equal(b[:n], s.zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// readFull reads exactly len(buf) bytes at off.
func readFull(src SourceImage, buf []byte, off uint64) error {
	for n := 0; n < len(buf); {
		m, err := src.ReadAt(buf[n:], int64(off)+int64(n))
		n += m
		if n == len(buf) {
			return nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if m == 0 {
			return io.ErrNoProgress
		}
	}
	return nil
}
