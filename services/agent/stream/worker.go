package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// readAhead is one worker of the read-ahead pool: it takes planned chunks,
// reserves their bytes in the budget, reads them, turns all-zero data into
// zero chunks, hashes and compresses them, folds their digests and queues
// them ready to send.
func (s *sender) readAhead(ctx context.Context, specs <-chan ChunkSpec) error {
	hasher := newChunkHasher()
	var enc *zstd.Encoder
	if s.req.Compression == CompressionZstd {
		var err error
		if enc, err = newChunkEncoder(s.req.ChunkSize); err != nil {
			return err
		}
		defer enc.Close()
	}
	for {
		var spec ChunkSpec
		var ok bool
		select {
		case spec, ok = <-specs:
			if !ok {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		j, err := s.prepareChunk(ctx, spec, hasher, enc)
		if err != nil {
			return err
		}
		s.win.addReady(j)
	}
}

// prepareChunk reads, checks for zeros, hashes and compresses one chunk.
func (s *sender) prepareChunk(ctx context.Context, spec ChunkSpec, hasher *chunkHasher, enc *zstd.Encoder) (*job, error) {
	j := &job{idx: -1, frame: Chunk{Seq: spec.Seq, Offset: spec.Offset, Length: spec.Length, Kind: KindZero}}
	var data []byte
	if !spec.Zero {
		if err := s.win.acquire(ctx, spec.Length); err != nil {
			return nil, err
		}
		j.held = spec.Length
		buf := getBuf(int(spec.Length))
		if err := readFull(s.req.Source, buf, spec.Offset); err != nil {
			putBuf(buf)
			s.win.release(j.held)
			return nil, permanent(fmt.Errorf("read source [%d, +%d): %w", spec.Offset, spec.Length, err))
		}
		s.stats.bytesRead.Add(spec.Length)
		if s.allZero(buf) {
			putBuf(buf)
			s.win.release(j.held)
			j.held = 0
		} else {
			data = buf
			j.buf = buf
			j.frame.Kind = KindData
			j.frame.Payload = buf
		}
	}
	j.frame.Digest = hasher.digest(spec.Offset, spec.Length, j.frame.Kind, data)
	if data != nil && enc != nil {
		if comp := compressChunk(enc, data); comp != nil {
			putBuf(j.buf)
			j.buf, j.frame.Payload, j.frame.Compressed = comp, comp, true
		}
	}
	j.cost = frameCost(&j.frame)
	if _, _, err := s.folder.add(spec.Seq, spec.Length, j.frame.Digest); err != nil {
		return nil, permanent(err)
	}
	return j, nil
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

// runConnWorker owns one of the Streams connection slots: it connects once
// there is something to send, runs the connection until every chunk is
// acknowledged, and reconnects after a drop (see retry.go's policy).
func (s *sender) runConnWorker(ctx context.Context, idx uint32) error {
	log := s.log.With("stream", idx)
	failures := 0
	for {
		more, err := s.win.hasWork(ctx)
		if err != nil || !more {
			return err
		}
		progress, err := s.runConn(ctx, idx)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isPermanent(err) {
			return fmt.Errorf("stream %d: %w", idx, err)
		}
		if progress {
			failures = 0
		}
		failures++
		if failures > s.req.Retry.MaxAttempts {
			return fmt.Errorf("stream %d: giving up after %d attempts: %w", idx, failures, err)
		}
		delay := s.req.Retry.backoff(failures)
		log.Warn("stream dropped, reconnecting", "attempt", failures, "delay", delay, "reason", err.Error())
		s.stats.reconnects.Add(1)
		if err := sleepCtx(ctx, delay); err != nil {
			return err
		}
	}
}

// runConn connects and sends until every chunk is acknowledged (nil) or
// the connection fails; the chunks it had in flight go back to the ready
// queue. progress reports whether any of its chunks was acknowledged.
func (s *sender) runConn(ctx context.Context, idx uint32) (progress bool, err error) {
	c, err := s.connect(ctx, idx)
	if err != nil {
		return false, err
	}
	stop := context.AfterFunc(ctx, c.abort)
	defer stop()
	readerDone := make(chan struct{})
	var readErr error
	go func() {
		defer close(readerDone)
		readErr = s.readAcks(c)
		s.win.fail(c, readErr)
	}()
	defer func() {
		c.conn.Close()
		<-readerDone
		// A refusal read just before the connection broke explains the
		// break better than the write error that noticed it.
		if err != nil && isPermanent(readErr) {
			err = readErr
		}
		s.win.requeue(c, err)
		progress = c.progress
	}()
	for {
		j, err := s.win.next(ctx, c, c.flush, s.req.IOTimeout)
		if err != nil {
			return false, err
		}
		if j == nil {
			return false, c.flush()
		}
		err = WriteFrameV(c.bw, c.version, &j.frame)
		s.win.wrote(j)
		if err != nil {
			return false, err
		}
		s.stats.bytesSent.Add(uint64(len(j.frame.Payload)))
	}
}

// readAcks applies the acknowledgements c receives until it fails.
func (s *sender) readAcks(c *srcConn) error {
	for {
		f, err := c.fr.next()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *Acks:
			if err := s.win.applyAcks(c, f); err != nil {
				return err
			}
		case *Ack:
			if err := s.win.applyAckV1(c, f.Seq); err != nil {
				return err
			}
		case *ErrorFrame:
			return &RemoteError{Reason: f.Reason}
		default:
			return protoErrorf("unexpected %s frame", f.Type())
		}
	}
}
