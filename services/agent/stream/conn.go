package stream

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"
)

// ALPN names of the protocol versions. A source offers every version it
// speaks, highest first; the destination picks the first of its own list
// the source offered, so the connection runs the highest common version.
// A v1 agent offers and accepts "ferry-stream/1" only.
const (
	ALPN   = "ferry-stream/1"
	ALPNv2 = "ferry-stream/2"
)

// offeredALPN lists the ALPN names of versions maxVersion and below.
func offeredALPN(maxVersion int) []string {
	if maxVersion >= 2 {
		return []string{ALPNv2, ALPN}
	}
	return []string{ALPN}
}

// alpnVersion is the protocol version a negotiated ALPN name selects; a
// peer that negotiated none speaks v1.
func alpnVersion(proto string) uint8 {
	if proto == ALPNv2 {
		return 2
	}
	return 1
}

// srcConn is one source connection whose Hello was accepted. The window's
// mutex guards inflight, order, err, lastProgress and progress.
type srcConn struct {
	conn    net.Conn
	raw     *bufConn
	fr      *frameReader
	bw      *bufio.Writer
	version uint8
	// maxAhead bounds how far beyond the acknowledged watermark it sends;
	// pipeline bounds its unacknowledged chunks in v1.
	maxAhead uint64
	pipeline int

	inflight     map[uint64]*job
	order        []uint64 // v1: seqs in the order sent (acks follow it)
	err          error
	lastProgress time.Time
	progress     bool
}

// abort closes the socket under TLS at once: it may run while the writer
// is busy, when sending a close_notify through the buffering conn would race
// with it.
func (c *srcConn) abort() { c.raw.Conn.Close() }

// flush pushes buffered frames through TLS and the buffering conn.
func (c *srcConn) flush() error {
	if err := c.bw.Flush(); err != nil {
		return err
	}
	return c.raw.Flush()
}

// connect dials, completes TLS (which negotiates the version by ALPN) and
// exchanges Hello/HelloOK.
func (s *sender) connect(ctx context.Context, stream uint32) (*srcConn, error) {
	raw, err := s.req.Dial(ctx, "tcp", s.req.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", s.req.Addr, err)
	}
	bc := newBufConn(raw, true)
	tc := tls.Client(bc, s.tls)
	hctx, cancel := context.WithTimeout(ctx, s.req.IOTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", s.req.Addr, err)
	}
	bc.startBuffering()
	stop := context.AfterFunc(hctx, func() { raw.Close() })
	defer stop()
	version := alpnVersion(tc.ConnectionState().NegotiatedProtocol)
	c := &srcConn{
		conn:     tc,
		raw:      bc,
		fr:       newFrameReader(tc, 0),
		version:  version,
		pipeline: s.req.Pipeline,
		maxAhead: s.v1Ahead(),
		inflight: make(map[uint64]*job),
	}
	c.fr.version = version
	c.bw = bufio.NewWriterSize(&pacedWriter{ctx: ctx, conn: tc, lim: s.limiter, piece: s.piece,
		timeout: s.req.IOTimeout, flush: bc.Flush}, 256<<10)
	hello := &Hello{Stream: stream, TransferID: s.req.TransferID, Ticket: s.req.Ticket}
	err = WriteFrameV(c.bw, version, hello)
	if err == nil {
		err = c.flush()
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
		if version >= 2 {
			if f.Window == 0 || f.MaxAhead == 0 {
				tc.Close()
				return nil, protoErrorf("hello-ok grants no credit")
			}
			c.maxAhead = min(uint64(f.MaxAhead), maxAheadCap)
		}
		s.win.grant(c, f)
		s.stats.version.Store(int32(version))
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
	stop := context.AfterFunc(ctx, c.abort)
	defer stop()
	if err := WriteFrameV(c.bw, c.version, &d); err != nil {
		return DoneOK{}, err
	}
	if err := c.flush(); err != nil {
		return DoneOK{}, err
	}
	// The destination flushes the image before replying: allow for it.
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * s.req.IOTimeout))
	for {
		f, err := c.fr.next()
		if err != nil {
			return DoneOK{}, fmt.Errorf("waiting for done-ok: %w", err)
		}
		switch f := f.(type) {
		case *Acks:
			continue // the control connection may carry acks too
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
}

// bufConn sits under tls.Conn: it reads the socket in large pieces and,
// once buffering starts (after the handshake), gathers the TLS records of
// one write into few large socket writes until Flush. Close flushes first,
// so a close_notify is not lost.
type bufConn struct {
	net.Conn
	r         *bufio.Reader
	w         *bufio.Writer
	buffering bool
}

const bufConnSize = 256 << 10

func newBufConn(c net.Conn, writes bool) *bufConn {
	bc := &bufConn{Conn: c, r: bufio.NewReaderSize(c, bufConnSize)}
	if writes {
		bc.w = bufio.NewWriterSize(c, bufConnSize)
	}
	return bc
}

func (c *bufConn) startBuffering() { c.buffering = c.w != nil }

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufConn) Write(p []byte) (int, error) {
	if !c.buffering {
		return c.Conn.Write(p)
	}
	return c.w.Write(p)
}

// Flush writes what is buffered.
func (c *bufConn) Flush() error {
	if !c.buffering {
		return nil
	}
	return c.w.Flush()
}

func (c *bufConn) Close() error {
	if c.buffering && c.w.Buffered() > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = c.w.Flush()
	}
	return c.Conn.Close()
}

// bufListener wraps accepted connections in read-buffering bufConns.
type bufListener struct{ net.Listener }

func (l bufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newBufConn(c, false), nil
}
