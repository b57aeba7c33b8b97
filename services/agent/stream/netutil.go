package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// idleConn renews a deadline before every Read and Write, so a connection
// fails after timeout without progress however long a whole frame takes.
type idleConn struct {
	net.Conn
	timeout time.Duration
	// stopped: reads fail at once (the connection failed the session and
	// its reader must let go; see stopReading).
	stopped atomic.Bool
}

// stopReading makes the pending and every later Read fail now.
func (c *idleConn) stopReading() {
	c.stopped.Store(true)
	_ = c.Conn.SetReadDeadline(time.Now())
}

func (c *idleConn) Read(p []byte) (int, error) {
	if c.stopped.Load() {
		return 0, os.ErrDeadlineExceeded
	}
	if c.timeout > 0 {
		if err := c.Conn.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	if c.timeout > 0 {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(p)
}

// pacedWriter writes in pieces, taking tokens from a shared limiter (nil:
// unlimited) before each piece and renewing the write deadline per piece.
type pacedWriter struct {
	ctx     context.Context
	conn    net.Conn
	lim     *rate.Limiter
	piece   int
	timeout time.Duration
	// flush, when set, runs after every piece (the buffering conn under
	// TLS sends what the piece's records filled).
	flush func() error
}

func (w *pacedWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := min(len(p)-n, w.piece)
		if w.lim != nil {
			if err := w.lim.WaitN(w.ctx, k); err != nil {
				return n, err
			}
		}
		if w.timeout > 0 {
			if err := w.conn.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
				return n, err
			}
		}
		m, err := w.conn.Write(p[n : n+k])
		n += m
		if err != nil {
			return n, err
		}
		if w.flush != nil {
			if err := w.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// limiterPiece is the token-bucket burst and write piece for a limit in
// bytes per second: small enough to pace smoothly, large enough to be cheap.
func limiterPiece(bytesPerSecond int64) int {
	return int(min(64<<10, max(4<<10, bytesPerSecond/16)))
}

func newLimiter(bytesPerSecond int64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSecond), limiterPiece(bytesPerSecond))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// peerName is the subject of the verified client certificate, for logs.
func peerName(c *tls.Conn) string {
	st := c.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return ""
	}
	return st.PeerCertificates[0].Subject.String()
}

// lingerClose half-closes c and drains what the peer still sends, for at
// most a second, so that a frame written just before is not lost to a reset.
func lingerClose(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		_ = tc.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 256<<20))
	_ = c.Close()
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
