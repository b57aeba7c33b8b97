package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
)

// Sender defaults.
const (
	DefaultStreams          = 4
	MaxStreams              = 32
	DefaultPipeline         = 2
	DefaultReadAhead        = 16
	MaxReadAhead            = 64
	DefaultIOTimeout        = 60 * time.Second
	DefaultProgressInterval = 2 * time.Second
	// maxAheadCap bounds how far beyond the acknowledged watermark the
	// source plans, whatever the destination grants.
	maxAheadCap = 1 << 16
)

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
	// Pipeline is the number of unacknowledged chunks per connection with
	// a v1 destination (default 2); v2 uses the destination's credit.
	Pipeline int
	// ReadAhead is the number of chunks read, hashed and compressed at
	// once (default 16); the chunks read but not yet sent hold at most
	// ReadAhead × ChunkSize bytes.
	ReadAhead int
	// Window caps the bytes in flight (v2), below the destination's
	// grant; 0 takes the grant as it is.
	Window uint64
	// MaxVersion is the highest protocol version offered (default
	// ProtocolVersion); 1 speaks v1 only.
	MaxVersion  int
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
	// Version is the protocol version of the last connection.
	Version int
	// MaxInFlight is the most bytes of chunk frames this run had
	// unacknowledged at once on v2 connections.
	MaxInFlight uint64
	Duration    time.Duration
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
	if r.ReadAhead <= 0 {
		r.ReadAhead = DefaultReadAhead
	}
	if r.MaxVersion <= 0 {
		r.MaxVersion = ProtocolVersion
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
	case r.ReadAhead > MaxReadAhead:
		return fmt.Errorf("stream: send: read-ahead beyond %d", MaxReadAhead)
	case r.MaxVersion < MinProtocolVersion || r.MaxVersion > ProtocolVersion:
		return fmt.Errorf("stream: send: protocol version %d not spoken", r.MaxVersion)
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

// sendStats are the counters of one Send.
type sendStats struct {
	bytesRead, bytesSent, bytesAcked, chunksAcked, zeroChunks, resent, reconnects atomic.Uint64
	maxInFlight                                                                   atomic.Uint64
	version                                                                       atomic.Int32
}

func (st *sendStats) countAcked(j *job) {
	st.chunksAcked.Add(1)
	st.bytesAcked.Add(j.frame.Length)
	if j.frame.Kind == KindZero {
		st.zeroChunks.Add(1)
	}
}

func (st *sendStats) noteInFlight(n uint64) {
	for {
		cur := st.maxInFlight.Load()
		if n <= cur || st.maxInFlight.CompareAndSwap(cur, n) {
			return
		}
	}
}

// sender is the state of one Send.
type sender struct {
	req      SendRequest
	log      *slog.Logger
	tls      *tls.Config
	limiter  *rate.Limiter
	piece    int
	folder   *digestFolder
	win      *window
	resumeW  uint64
	baseDone uint64
	total    uint64 // set by plan before it returns
	// extentBytes is the sum of the extents' lengths, when listed.
	extentBytes uint64
	zeros       []byte
	stats       sendStats
}

// Send runs the source side of a transfer: it plans chunks from the extents,
// skips those below the resume watermark, reads, hashes and (optionally)
// compresses them ahead in a pool, sends them over Streams TLS connections
// that each present the ticket (each connection takes the lowest ready
// chunk the destination's credit allows), retries dropped connections,
// and finally sends Done and checks the destination's digest against its
// own.
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
		"compression", req.Compression.String(), "bandwidth_limit", req.BandwidthLimit, "resume_watermark", s.resumeW,
		"max_version", req.MaxVersion)

	stopProgress := s.reportProgress(start)
	g, gctx := errgroup.WithContext(ctx)
	specs := make(chan ChunkSpec)
	g.Go(func() error { return s.plan(gctx, specs) })
	var readers sync.WaitGroup
	for range req.ReadAhead {
		readers.Add(1)
		g.Go(func() error { defer readers.Done(); return s.readAhead(gctx, specs) })
	}
	for i := range req.Streams {
		g.Go(func() error { return s.runConnWorker(gctx, uint32(i)) })
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
	res.Version = int(s.stats.version.Load())
	if err != nil {
		return res, fmt.Errorf("stream: send %s: commit: %w", req.TransferID, err)
	}
	res.Destination = ok
	if req.Progress != nil {
		req.Progress(s.progress(start, 0, time.Since(start)))
	}
	log.Info("transfer sent", "digest", res.Digest, "chunks", res.TotalChunks, "bytes_sent", res.BytesSent,
		"duration", res.Duration, "reconnects", res.Reconnects, "version", res.Version)
	return res, nil
}

func newSender(req SendRequest) (*sender, error) {
	s := &sender{
		req:     req,
		log:     req.Logger.With("transfer_id", req.TransferID),
		limiter: newLimiter(req.BandwidthLimit),
		piece:   1 << 20,
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
	s.tls.NextProtos = offeredALPN(req.MaxVersion)
	var state []byte
	if cp := req.ResumeFrom; cp != nil {
		s.resumeW, s.baseDone, state = cp.Watermark, cp.BytesDone, cp.DigestState
	}
	limit := req.Window
	if limit == 0 {
		limit = math.MaxUint64
	}
	budget := uint64(req.ReadAhead) * req.ChunkSize
	s.win = newWindow(s.resumeW, limit, budget, s.v1Ahead(), &s.stats)
	var err error
	s.folder, err = newDigestFolder(s.resumeW, s.baseDone, state, maxAheadCap+1)
	if err != nil {
		return nil, fmt.Errorf("stream: send: %w", err)
	}
	return s, nil
}

// v1Ahead is how far ahead of the acknowledged watermark the source runs
// with a v1 destination (as v1 did).
func (s *sender) v1Ahead() uint64 { return uint64(s.req.Streams * s.req.Pipeline * 4) }

func (s *sender) result(start time.Time) Result {
	st := &s.stats
	return Result{
		TotalChunks:   s.total,
		SkippedChunks: min(s.resumeW, s.total),
		ChunksSent:    st.chunksAcked.Load(),
		ZeroChunks:    st.zeroChunks.Load(),
		BytesRead:     st.bytesRead.Load(),
		BytesSent:     st.bytesSent.Load(),
		BytesDone:     s.baseDone + st.bytesAcked.Load(),
		ResentChunks:  st.resent.Load(),
		Reconnects:    st.reconnects.Load(),
		MaxInFlight:   st.maxInFlight.Load(),
		Version:       int(st.version.Load()),
		Duration:      time.Since(start),
	}
}

func (s *sender) progress(start time.Time, prevDone uint64, dt time.Duration) Progress {
	p := Progress{
		BytesDone:  s.baseDone + s.stats.bytesAcked.Load(),
		BytesSent:  s.stats.bytesSent.Load(),
		ChunksDone: s.stats.chunksAcked.Load(),
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

// plan hands the chunks at or above the resume watermark to the read-ahead
// pool in seq order, never more than the destination's MaxAhead beyond the
// acknowledged watermark, which bounds what both sides hold out of order.
func (s *sender) plan(ctx context.Context, specs chan<- ChunkSpec) error {
	defer close(specs)
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
		if err := s.win.admit(ctx, spec.Seq); err != nil {
			return err
		}
		select {
		case specs <- spec:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.total = n
	s.win.finishPlan(max(n, s.resumeW))
	return nil
}
