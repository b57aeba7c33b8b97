package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ferry-project/ferry/rpc"
	amqp "github.com/rabbitmq/amqp091-go"
)

const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
	// maxIdleChannels bounds the pool of publishing channels.
	maxIdleChannels = 32
	// maxPublishing bounds the publishes in flight, each on a channel of its
	// own (RabbitMQ's channel_max is 2047 by default).
	maxPublishing = 256
)

// session is one broker connection kept up by run: dialled (hosts in turn),
// set up (topology), watched (NotifyClose) and re-established with backoff.
type session struct {
	role  string // "publish" or "consume"
	name  string // connection name
	uris  []string
	log   *slog.Logger
	setup func(*amqp.Connection) error // on every new connection; nil for none

	mu      sync.Mutex
	conn    *amqp.Connection // nil while down
	gen     uint64           // connection generation, +1 per connection
	ready   chan struct{}    // closed while conn != nil
	lastErr error            // why the last attempt failed or the connection was lost
	idle    []*pubChannel    // publishing channels of generation gen

	done chan struct{} // closed when run returns
}

func newSession(role, name string, uris []string, log *slog.Logger, setup func(*amqp.Connection) error) *session {
	return &session{
		role: role, name: name, uris: uris, setup: setup,
		log:   log.With("role", role),
		ready: make(chan struct{}),
		done:  make(chan struct{}),
	}
}

// run keeps the connection up until life is done, then closes it.
func (s *session) run(life context.Context) {
	defer close(s.done)
	backoff := backoffMin
	start := 0
	for attempt := 1; ; attempt++ {
		conn, idx, err := s.connect(life, start)
		if err != nil {
			if life.Err() != nil {
				return
			}
			s.setErr(err)
			wait := backoff/2 + rand.N(backoff/2+1)
			level := slog.LevelDebug
			if attempt&(attempt-1) == 0 { // 1, 2, 4, 8, …: a long outage does not flood the log
				level = slog.LevelWarn
			}
			s.log.Log(life, level, "broker connection failed, retrying", "reason", err, "attempt", attempt, "retry_in", wait.Round(time.Millisecond))
			if !sleepCtx(life, wait) {
				return
			}
			backoff = min(2*backoff, backoffMax)
			continue
		}
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 1))
		gen := s.up(conn)
		s.log.Info("connected to the broker", "broker", redact(s.uris[idx]), "generation", gen)
		reason := s.watch(life, closed, blocked)
		s.down(gen, reason)
		if life.Err() != nil {
			if err := conn.CloseDeadline(time.Now().Add(5 * time.Second)); err != nil && !errors.Is(err, amqp.ErrClosed) {
				s.log.Debug("connection close", "reason", err)
			}
			return
		}
		s.log.Warn("broker connection lost, reconnecting", "reason", reason, "generation", gen)
		// Fail over: the next host first, this one last.
		start = (idx + 1) % len(s.uris)
		attempt, backoff = 0, backoffMin
	}
}

// connect dials the hosts in turn from start and sets the connection up.
func (s *session) connect(ctx context.Context, start int) (*amqp.Connection, int, error) {
	var errs []error
	for i := range s.uris {
		idx := (start + i) % len(s.uris)
		conn, err := dialNamed(ctx, s.uris[idx], s.name)
		if err == nil && s.setup != nil {
			if err = s.setup(conn); err != nil {
				_ = conn.Close()
				err = fmt.Errorf("%s: set-up: %w", redact(s.uris[idx]), err)
			}
		}
		if err == nil {
			return conn, idx, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, 0, errors.Join(errs...)
}

func (s *session) watch(life context.Context, closed <-chan *amqp.Error, blocked <-chan amqp.Blocking) error {
	for {
		select {
		case err, ok := <-closed:
			if !ok || err == nil {
				return errors.New("connection closed")
			}
			return err
		case b := <-blocked:
			if b.Active {
				s.log.Warn("broker blocks publishing", "reason", b.Reason)
			} else {
				s.log.Info("broker unblocked publishing")
			}
		case <-life.Done():
			return rpc.ErrClosed
		}
	}
}

func (s *session) up(conn *amqp.Connection) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.conn = conn
	s.lastErr = nil
	close(s.ready)
	return s.gen
}

func (s *session) down(gen uint64, reason error) {
	s.mu.Lock()
	if s.gen != gen || s.conn == nil {
		s.mu.Unlock()
		return
	}
	s.conn = nil
	s.ready = make(chan struct{})
	s.lastErr = reason
	idle := s.idle
	s.idle = nil
	s.mu.Unlock()
	for _, pc := range idle {
		_ = pc.ch.Close()
	}
}

func (s *session) setErr(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

// current returns the live connection, waiting for one until ctx is done
// (an error wrapping rpc.ErrUnavailable) or stop is closed (rpc.ErrClosed).
func (s *session) current(ctx context.Context, stop <-chan struct{}) (*amqp.Connection, uint64, error) {
	for {
		s.mu.Lock()
		conn, gen, ready := s.conn, s.gen, s.ready
		s.mu.Unlock()
		if conn != nil && !conn.IsClosed() {
			return conn, gen, nil
		}
		wake, poll := ready, (<-chan time.Time)(nil)
		if conn != nil {
			// Closed, and run has not noticed yet: it will soon.
			wake, poll = nil, time.After(10*time.Millisecond)
		}
		select {
		case <-wake:
		case <-poll:
		case <-ctx.Done():
			s.mu.Lock()
			lastErr := s.lastErr
			s.mu.Unlock()
			return nil, 0, unavailable(ctx.Err(), lastErr)
		case <-stop:
			return nil, 0, rpc.ErrClosed
		}
	}
}

// unavailable is the error of an operation that found no connection in time.
func unavailable(ctxErr, lastErr error) error {
	if lastErr == nil {
		return fmt.Errorf("%w: %w", rpc.ErrUnavailable, ctxErr)
	}
	return fmt.Errorf("%w: %w (last error: %v)", rpc.ErrUnavailable, ctxErr, lastErr)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
