package stream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// CommitResult is the destination's account of a committed transfer.
type CommitResult struct {
	TransferID  string `json:"transfer_id"`
	Digest      string `json:"digest"`
	TotalChunks uint64 `json:"total_chunks"`
	// BytesDone is the image bytes the transfer covered (all attempts).
	BytesDone uint64 `json:"bytes_done"`
	// BytesWritten is what this session wrote (resends included).
	BytesWritten uint64 `json:"bytes_written"`
}

// Session is one transfer's state on the destination: the image, the ticket,
// the digest folder and the checkpoint schedule. It ends once: committed,
// failed, superseded, expired or aborted; its ticket dies with it.
type Session struct {
	srv       *Server
	id        string
	imageName string
	// peerRegion: the region every connection's certificate must name.
	peerRegion string
	image      DestImage
	imageSize  uint64
	store      CheckpointStore
	chunkSize  uint64
	ticket     string
	folder     *digestFolder
	log        *slog.Logger

	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
	wg       sync.WaitGroup // connections and background loops
	ckptKick chan struct{}

	mu        sync.Mutex
	ended     bool
	err       error
	result    CommitResult
	active    int
	saveOnEnd bool

	ckptMu     sync.Mutex
	savedW     uint64
	savedBytes atomic.Uint64

	commitMu     sync.Mutex
	bytesWritten atomic.Uint64

	ws writerState
}

func newSession(srv *Server, req PrepareRequest, ticket string, folder *digestFolder, resume Checkpoint, log *slog.Logger) *Session {
	ctx, cancel := context.WithCancel(context.Background())
	sess := &Session{
		srv:        srv,
		id:         req.TransferID,
		imageName:  req.ImageName,
		peerRegion: req.PeerRegion,
		image:      req.Image,
		imageSize:  req.Image.Size(),
		store:      req.Checkpoints,
		chunkSize:  req.ChunkSize,
		ticket:     ticket,
		folder:     folder,
		log:        log,
		ctx:        ctx,
		cancel:     cancel,
		done:       make(chan struct{}),
		ckptKick:   make(chan struct{}, 1),
		savedW:     resume.Watermark,
	}
	sess.savedBytes.Store(resume.BytesDone)
	sess.ws.acks.next = resume.Watermark
	return sess
}

// start runs the checkpoint and expiry loops and the finisher.
func (s *Session) start() {
	s.startWriters(s.srv.cfg.Writers)
	s.wg.Add(2)
	go s.checkpointLoop()
	go s.expiryLoop()
	go func() {
		<-s.ctx.Done()
		s.wg.Wait()
		s.mu.Lock()
		save := s.saveOnEnd
		s.mu.Unlock()
		if save {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := s.saveCheckpoint(ctx, false); err != nil {
				s.log.Warn("final checkpoint not saved", "reason", err.Error())
			}
			cancel()
		}
		close(s.done)
	}()
}

// TransferID is the session's transfer.
func (s *Session) TransferID() string { return s.id }

// Streaming reports whether a source is connected to the session now.
func (s *Session) Streaming() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.ended && s.active > 0
}

// Done is closed once the session has ended and its connections are gone.
func (s *Session) Done() <-chan struct{} { return s.done }

// Wait blocks until the session ends and returns its outcome: the commit
// result, or why it failed.
func (s *Session) Wait(ctx context.Context) (CommitResult, error) {
	select {
	case <-s.done:
	case <-ctx.Done():
		return CommitResult{}, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.result, s.err
}

// Abort ends the session with reason, saving its checkpoint.
func (s *Session) Abort(reason error) {
	if reason == nil {
		reason = errors.New("aborted")
	}
	s.end(reason, true)
}

// end ends the session once. err nil means committed. The ticket dies at
// once; connections are closed; Done closes when they are gone.
func (s *Session) end(err error, save bool) bool {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return false
	}
	s.ended, s.err, s.saveOnEnd = true, err, save
	s.mu.Unlock()
	s.srv.tickets.closeIssued(s.id, s.ticket)
	s.srv.removeSession(s, err)
	s.cancel()
	return true
}

// fail ends the session because of err, logged once with the stream that
// caused it.
func (s *Session) fail(stream uint32, err error) {
	if s.end(err, false) {
		s.log.Error("session failed", "stream", stream, "reason", err.Error())
	}
}

func (s *Session) attach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.ended:
		return ErrNoSession
	case s.active >= s.srv.cfg.MaxStreams:
		return fmt.Errorf("%w: %d already connected", ErrTooManyStreams, s.active)
	}
	s.active++
	s.wg.Add(1)
	return nil
}

func (s *Session) detach() {
	s.mu.Lock()
	s.active--
	s.mu.Unlock()
	s.wg.Done()
}

// expiryLoop ends the session when its ticket expired with no connection
// open: the source is gone and will not come back (a truncated or stalled
// stream ends here instead of hanging).
func (s *Session) expiryLoop() {
	defer s.wg.Done()
	period := min(max(s.srv.cfg.TicketTTL/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		idle := s.active == 0
		s.mu.Unlock()
		if idle && s.srv.tickets.Expired(s.id) {
			err := fmt.Errorf("%w: no connection for %v", ErrTicketExpired, s.srv.cfg.TicketTTL)
			if s.end(err, true) {
				s.log.Error("session failed", "reason", err.Error())
			}
			return
		}
	}
}

// checkpointLoop saves a checkpoint every CheckpointInterval, or sooner when
// kicked after CheckpointBytes, whenever the watermark moved.
func (s *Session) checkpointLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.srv.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.ckptKick:
		}
		if err := s.saveCheckpoint(s.ctx, false); err != nil {
			if s.ctx.Err() == nil {
				s.fail(0, fmt.Errorf("checkpoint: %w", err))
			}
			return
		}
	}
}

// saveCheckpoint flushes the image and saves the watermark and digest state,
// if the watermark moved (or complete is set). The state is captured before
// the flush, so every chunk it covers was written before the flush began.
func (s *Session) saveCheckpoint(ctx context.Context, complete bool) error {
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	w, bytes, state, _, err := s.folder.snapshot()
	if err != nil {
		return err
	}
	if !complete && w <= s.savedW {
		return nil
	}
	if err := s.image.Flush(); err != nil {
		return fmt.Errorf("flush image: %w", err)
	}
	cp := Checkpoint{
		TransferID:  s.id,
		ChunkSize:   s.chunkSize,
		Watermark:   w,
		BytesDone:   bytes,
		DigestState: state,
		Complete:    complete,
		UpdatedAt:   time.Now().UTC(),
	}
	if err := s.store.SaveCheckpoint(ctx, cp); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	s.savedW = w
	s.savedBytes.Store(bytes)
	s.log.Debug("checkpoint saved", "watermark", w, "bytes_done", bytes)
	return nil
}

// serveConn runs the chunk loop of one accepted connection in its
// version. It returns true when it failed the session and the connection
// should be closed gracefully (see lingerClose) rather than at once.
func (s *Session) serveConn(ctx context.Context, version uint8, stream uint32, ic *idleConn, fr *frameReader, bw *bufio.Writer, log *slog.Logger) (linger bool) {
	if version >= 2 {
		return s.serveConnV2(ctx, stream, ic, fr, bw, log)
	}
	return s.serveConnV1(ctx, stream, ic, fr, bw, log)
}

// serveConnV1 runs a v1 connection: each chunk is verified, written and
// acknowledged in turn.
func (s *Session) serveConnV1(ctx context.Context, stream uint32, ic *idleConn, fr *frameReader, bw *bufio.Writer, log *slog.Logger) (linger bool) {
	stop := context.AfterFunc(s.ctx, func() { ic.Close() })
	defer stop()
	fr.maxPayload = int(s.chunkSize)
	w, _, _, _, _ := s.folder.snapshot()
	if err := WriteFrame(bw, &HelloOK{ChunkSize: s.chunkSize, Watermark: w}); err != nil {
		return false
	}
	if bw.Flush() != nil {
		return false
	}
	log.Debug("stream accepted")
	cc := newChunkChecker(s.imageSize, s.chunkSize)
	defer cc.close()
	for {
		f, err := fr.next()
		if err != nil {
			switch {
			case s.ctx.Err() != nil || ctx.Err() != nil:
			case errors.Is(err, io.EOF):
				log.Debug("stream closed by peer")
			case isStreamDrop(err):
				log.Warn("stream dropped", "reason", err.Error())
			default:
				s.failConn(stream, stop, bw, err)
				return true
			}
			return false
		}
		switch f := f.(type) {
		case *Chunk:
			if err := s.writeChunk(cc, f); err != nil {
				s.failConn(stream, stop, bw, err)
				return true
			}
			if WriteFrame(bw, &Ack{Seq: f.Seq}) != nil || bw.Flush() != nil {
				if s.ctx.Err() == nil {
					log.Warn("stream dropped", "reason", "writing ack failed")
				}
				return false
			}
		case *Done:
			stop() // the session ends with the commit; keep this connection for the reply
			res, err := s.commit(s.ctx, *f)
			if err != nil {
				s.failConn(stream, stop, bw, err)
				return true
			}
			d := DoneOK{TotalChunks: res.TotalChunks, BytesWritten: res.BytesWritten}
			d.Digest = s.folder.sum()
			if WriteFrame(bw, &d) == nil {
				_ = bw.Flush()
			}
			return false
		case *ErrorFrame:
			s.fail(stream, &RemoteError{Reason: f.Reason})
			return false
		default:
			s.failConn(stream, stop, bw, protoErrorf("unexpected %s frame", f.Type()))
			return true
		}
	}
}

// failConn reports err to the peer and ends the session. The connection
// stays open (stop disarms the close on session end) so the caller can
// close it gracefully: the source may still be writing a chunk, and an
// abrupt close would reset the connection before it reads the reason.
func (s *Session) failConn(stream uint32, stop func() bool, bw *bufio.Writer, err error) {
	stop()
	sendError(bw, err)
	s.fail(stream, err)
}

// writeChunk validates, decodes and verifies c, then writes it and folds its
// digest. Nothing is written unless every check passed.
func (s *Session) writeChunk(cc *chunkChecker, c *Chunk) error {
	data, err := cc.check(c)
	if err != nil {
		return err
	}
	known, err := s.folder.known(c.Seq, c.Digest)
	if err != nil {
		return err
	}
	s.srv.tickets.Touch(s.id)
	if known {
		return nil // a resend of a chunk already written
	}
	if c.Kind == KindZero {
		if err := s.image.WriteZeroes(c.Offset, c.Length); err != nil {
			return fmt.Errorf("stream: zero [%d, +%d): %w", c.Offset, c.Length, err)
		}
	} else {
		n, err := s.image.WriteAt(data, int64(c.Offset))
		if err == nil && n != len(data) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return fmt.Errorf("stream: write [%d, +%d): %w", c.Offset, c.Length, err)
		}
	}
	s.bytesWritten.Add(c.Length)
	folded, bytes, err := s.folder.add(c.Seq, c.Length, c.Digest)
	if err != nil {
		return err
	}
	s.ws.mu.Lock()
	s.ws.acks.add(c.Seq)
	s.ws.mu.Unlock()
	if folded > 0 && bytes-s.savedBytes.Load() >= s.srv.cfg.CheckpointBytes {
		select {
		case s.ckptKick <- struct{}{}:
		default:
		}
	}
	return nil
}

// commit checks Done against what was written, flushes, saves a complete
// checkpoint and ends the session successfully.
func (s *Session) commit(ctx context.Context, d Done) (CommitResult, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.mu.Lock()
	ended := s.ended
	s.mu.Unlock()
	if ended {
		return CommitResult{}, ErrSessionEnded
	}
	w, bytes, _, pending, err := s.folder.snapshot()
	if err != nil {
		return CommitResult{}, err
	}
	if w != d.TotalChunks || pending != 0 {
		return CommitResult{}, fmt.Errorf("%w: source sent %d chunks, destination has %d contiguous and %d out of order",
			ErrIncomplete, d.TotalChunks, w, pending)
	}
	if got := s.folder.sum(); got != d.Digest {
		return CommitResult{}, fmt.Errorf("%w: transfer digest: source %s, destination %s",
			ErrDigestMismatch, FormatDigest(d.Digest), FormatDigest(got))
	}
	if err := s.saveCheckpoint(ctx, true); err != nil {
		return CommitResult{}, err
	}
	res := CommitResult{
		TransferID:   s.id,
		Digest:       FormatDigest(d.Digest),
		TotalChunks:  w,
		BytesDone:    bytes,
		BytesWritten: s.bytesWritten.Load(),
	}
	s.mu.Lock()
	s.result = res
	s.mu.Unlock()
	if s.end(nil, false) {
		s.log.Info("transfer committed", "digest", res.Digest, "chunks", res.TotalChunks, "bytes_done", res.BytesDone, "bytes_written", res.BytesWritten)
	}
	return res, nil
}
