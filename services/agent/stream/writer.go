package stream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
)

// Destination defaults for v2.
const (
	// DefaultWindow is the credit a v2 session grants: bytes of chunk
	// frames a source may have unacknowledged at once.
	DefaultWindow = 64 << 20
	// DefaultWriters is the chunks a session verifies and writes at once.
	DefaultWriters = 16
	MaxWriters     = 64
)

// dstConn is one accepted v2 connection: its reader hands chunks to the
// session's writers, and its ack writer sends the session's Acks whenever
// kicked. wmu serializes the frames written on it.
type dstConn struct {
	stream uint32
	ic     *idleConn
	bw     *bufio.Writer
	wmu    sync.Mutex
	kick   chan struct{}
	closed chan struct{}
	// stop disarms the close of the connection when the session ends: a
	// connection that carries the session's failure is closed gracefully.
	stop   func() bool
	failed atomic.Bool
	log    *slog.Logger
}

func (c *dstConn) kickAcks() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *dstConn) write(f Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := WriteFrameV(c.bw, 2, f); err != nil {
		return err
	}
	return c.bw.Flush()
}

// wjob is one received chunk waiting for a writer; body is the pooled
// frame body its payload aliases.
type wjob struct {
	c    *Chunk
	body []byte
	conn *dstConn
	cost uint64
}

// ackState is what the destination has written: every seq below next, and
// the sorted disjoint ranges above it.
type ackState struct {
	next   uint64
	ranges []SeqRange
}

func (a *ackState) has(seq uint64) bool {
	if seq < a.next {
		return true
	}
	i, _ := slices.BinarySearchFunc(a.ranges, seq, func(r SeqRange, s uint64) int {
		switch {
		case r.End <= s:
			return -1
		case r.Start > s:
			return 1
		}
		return 0
	})
	return i < len(a.ranges) && a.ranges[i].Start <= seq && seq < a.ranges[i].End
}

func (a *ackState) add(seq uint64) {
	if a.has(seq) {
		return
	}
	i, _ := slices.BinarySearchFunc(a.ranges, seq, func(r SeqRange, s uint64) int {
		if r.Start < s {
			return -1
		}
		if r.Start > s {
			return 1
		}
		return 0
	})
	// Merge with the range before (ending at seq) and after (starting at seq+1).
	switch {
	case i > 0 && a.ranges[i-1].End == seq && i < len(a.ranges) && a.ranges[i].Start == seq+1:
		a.ranges[i-1].End = a.ranges[i].End
		a.ranges = slices.Delete(a.ranges, i, i+1)
	case i > 0 && a.ranges[i-1].End == seq:
		a.ranges[i-1].End++
	case i < len(a.ranges) && a.ranges[i].Start == seq+1:
		a.ranges[i].Start--
	default:
		a.ranges = slices.Insert(a.ranges, i, SeqRange{Start: seq, End: seq + 1})
	}
	for len(a.ranges) > 0 && a.ranges[0].Start <= a.next {
		a.next = max(a.next, a.ranges[0].End)
		a.ranges = a.ranges[1:]
	}
}

// frame renders the state as an Acks frame (the lowest MaxAckRanges ranges).
func (a *ackState) frame(window uint64) *Acks {
	f := &Acks{Watermark: a.next, Window: window}
	if n := min(len(a.ranges), MaxAckRanges); n > 0 {
		f.Ranges = slices.Clone(a.ranges[:n])
	}
	return f
}

// writerState is a session's v2 machinery: the writer pool's queue, the
// chunks being written, the credit in use, the acknowledged set and the
// live connections that can carry acks.
type writerState struct {
	work chan *wjob

	mu      sync.Mutex
	writing map[uint64][32]byte
	// drained is closed (and replaced) whenever writing becomes empty.
	drained     chan struct{}
	outstanding uint64
	acks        ackState
	conns       []*dstConn
}

// startWriters runs the session's writer pool.
func (s *Session) startWriters(n int) {
	s.ws.work = make(chan *wjob, 2*n)
	s.ws.writing = make(map[uint64][32]byte)
	s.ws.drained = make(chan struct{})
	s.wg.Add(n)
	for range n {
		go s.writer()
	}
}

func (s *Session) writer() {
	defer s.wg.Done()
	cc := newChunkChecker(s.imageSize, s.chunkSize)
	defer cc.close()
	for {
		select {
		case <-s.ctx.Done():
			return
		case j := <-s.ws.work:
			s.writeJob(cc, j)
		}
	}
}

// writeJob verifies and writes one chunk, folds its digest, acknowledges
// it and frees its credit. A chunk that fails verification or writing
// fails the session (the error goes to the connection that carried it).
func (s *Session) writeJob(cc *chunkChecker, j *wjob) {
	defer putBuf(j.body)
	if s.ctx.Err() != nil {
		return
	}
	err := s.writeChunk(cc, j.c)
	if err != nil {
		s.failDst(j.conn, err)
		return
	}
	s.ws.mu.Lock()
	delete(s.ws.writing, j.c.Seq)
	s.ws.outstanding -= j.cost
	s.ws.acks.add(j.c.Seq)
	if len(s.ws.writing) == 0 {
		close(s.ws.drained)
		s.ws.drained = make(chan struct{})
	}
	s.ws.mu.Unlock()
	s.ackVia(j.conn)
}

// ackVia kicks the ack writer of c, or of another live connection if c is
// gone.
func (s *Session) ackVia(c *dstConn) {
	select {
	case <-c.closed:
	default:
		c.kickAcks()
		return
	}
	s.ws.mu.Lock()
	defer s.ws.mu.Unlock()
	if len(s.ws.conns) > 0 {
		s.ws.conns[0].kickAcks()
	}
}

// failDst reports err on c and ends the session; c is closed gracefully.
func (s *Session) failDst(c *dstConn, err error) {
	if c.stop != nil {
		c.stop()
	}
	c.failed.Store(true)
	_ = c.write(&ErrorFrame{Reason: err.Error()})
	// The reader lets go now (it may be waiting for a frame); the caller
	// closes the connection gracefully, as v1 does.
	c.ic.stopReading()
	s.fail(c.stream, err)
}

// creditLimit is what a session lets in unacknowledged before it calls the
// source greedy: twice the window (chunks of a dropped connection may still
// be in the writers while their resends arrive) plus one whole chunk (a
// chunk alone may exceed the window).
func (s *Session) creditLimit() uint64 {
	return 2*s.srv.cfg.Window + HeaderLen + ChunkFixedLen + s.chunkSize
}

// submit claims a received chunk and queues it for the writers. A chunk
// already written is acknowledged again; one being written is dropped (its
// ack follows its write). Credit beyond creditLimit is a protocol error:
// the source ignores its window.
func (s *Session) submit(c *dstConn, ch *Chunk, body []byte) error {
	known, err := s.folder.known(ch.Seq, ch.Digest)
	if err != nil {
		putBuf(body)
		return err
	}
	s.srv.tickets.Touch(s.id)
	cost := frameCost(ch)
	s.ws.mu.Lock()
	if !known {
		known = s.ws.acks.has(ch.Seq)
	}
	if known {
		s.ws.mu.Unlock()
		putBuf(body)
		c.kickAcks()
		return nil
	}
	if d, ok := s.ws.writing[ch.Seq]; ok {
		s.ws.mu.Unlock()
		putBuf(body)
		if d != ch.Digest {
			return fmt.Errorf("%w: seq %d resent with another digest", ErrDigestMismatch, ch.Seq)
		}
		return nil
	}
	if s.ws.outstanding > 0 && s.ws.outstanding+cost > s.creditLimit() {
		s.ws.mu.Unlock()
		putBuf(body)
		return protoErrorf("chunk seq %d exceeds the credit: %d bytes unacknowledged, window %d", ch.Seq, s.ws.outstanding, s.srv.cfg.Window)
	}
	s.ws.writing[ch.Seq] = ch.Digest
	s.ws.outstanding += cost
	s.ws.mu.Unlock()
	select {
	case s.ws.work <- &wjob{c: ch, body: body, conn: c, cost: cost}:
		return nil
	case <-s.ctx.Done():
		putBuf(body)
		return ErrSessionEnded
	}
}

// serveConnV2 runs a v2 connection: HelloOK with the credit, then chunks
// read into pooled buffers and handed to the writers, acks batched by the
// ack writer, and Done on the control connection.
func (s *Session) serveConnV2(ctx context.Context, stream uint32, ic *idleConn, fr *frameReader, bw *bufio.Writer, log *slog.Logger) (linger bool) {
	c := &dstConn{stream: stream, ic: ic, bw: bw, kick: make(chan struct{}, 1), closed: make(chan struct{}), log: log}
	c.stop = context.AfterFunc(s.ctx, func() { ic.Close() })
	defer c.stop()
	fr.maxPayload = int(s.chunkSize)
	fr.alloc = getBuf
	s.ws.mu.Lock()
	ok := HelloOK{ChunkSize: s.chunkSize, Watermark: s.ws.acks.next, Window: s.srv.cfg.Window, MaxAhead: uint32(s.srv.cfg.MaxPending)}
	s.ws.conns = append(s.ws.conns, c)
	s.ws.mu.Unlock()
	defer func() {
		close(c.closed)
		s.ws.mu.Lock()
		s.ws.conns = slices.DeleteFunc(s.ws.conns, func(x *dstConn) bool { return x == c })
		s.ws.mu.Unlock()
	}()
	if c.write(&ok) != nil {
		return false
	}
	log.Debug("stream accepted", "version", 2)
	ackDone := make(chan struct{})
	defer func() { <-ackDone }()
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		defer close(ackDone)
		s.ackWriter(c, quit)
	}()
	for {
		f, err := fr.next()
		if err != nil {
			switch {
			case c.failed.Load():
				return true
			case s.ctx.Err() != nil || ctx.Err() != nil:
			case errors.Is(err, io.EOF):
				log.Debug("stream closed by peer")
			case isStreamDrop(err):
				log.Warn("stream dropped", "reason", err.Error())
			default:
				s.failDst(c, err)
				return true
			}
			return false
		}
		switch f := f.(type) {
		case *Chunk:
			if err := s.submit(c, f, fr.allocated); err != nil {
				if errors.Is(err, ErrSessionEnded) {
					return c.failed.Load()
				}
				s.failDst(c, err)
				return true
			}
		case *Done:
			c.stop() // the session ends with the commit; keep this connection for the reply
			if !s.waitWriters() {
				return c.failed.Load()
			}
			res, err := s.commit(s.ctx, *f)
			if err != nil {
				s.failDst(c, err)
				return true
			}
			d := DoneOK{TotalChunks: res.TotalChunks, BytesWritten: res.BytesWritten}
			d.Digest = s.folder.sum()
			_ = c.write(&d)
			return false
		case *ErrorFrame:
			s.fail(stream, &RemoteError{Reason: f.Reason})
			return false
		default:
			s.failDst(c, protoErrorf("unexpected %s frame", f.Type()))
			return true
		}
	}
}

// waitWriters waits until every chunk handed to the writers is written
// (false: the session ended first).
func (s *Session) waitWriters() bool {
	for {
		s.ws.mu.Lock()
		n, ch := len(s.ws.writing), s.ws.drained
		s.ws.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-ch:
		case <-s.ctx.Done():
			return false
		}
	}
}

// ackWriter sends the session's Acks on c each time it is kicked; what
// was written meanwhile goes in the same frame.
func (s *Session) ackWriter(c *dstConn, quit <-chan struct{}) {
	for {
		select {
		case <-quit:
			return
		case <-c.kick:
		}
		s.ws.mu.Lock()
		f := s.ws.acks.frame(s.srv.cfg.Window)
		s.ws.mu.Unlock()
		if err := c.write(f); err != nil {
			return
		}
	}
}
