package rbd

import (
	"context"
	"sync"
	"time"
)

// Pool shares one connection per cluster and user among the operations
// that need it, and closes a connection nobody has used for the idle time
// (a librados connection holds threads and sessions with every monitor and
// OSD). Operations Acquire a connection and release it when done; the
// images they open must be closed before the release.
type Pool struct {
	idle time.Duration

	mu     sync.Mutex
	conns  map[poolKey]*pooled
	closed bool
}

type poolKey struct {
	conf, user, keyring string
	timeout             time.Duration
}

type pooled struct {
	c     *Cluster
	refs  int
	timer *time.Timer
	ready chan struct{} // closed once c (or err) is set
	err   error
}

// NewPool closes connections idle for idle (0: never).
func NewPool(idle time.Duration) *Pool {
	return &Pool{idle: idle, conns: map[poolKey]*pooled{}}
}

// Acquire returns the shared connection for o, connecting when there is
// none, and a release function to call exactly once when done.
func (p *Pool) Acquire(ctx context.Context, o Options) (*Cluster, func(), error) {
	k := poolKey{o.ConfFile, o.User, o.Keyring, o.Timeout}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, nil, ErrClosed
	}
	e, ok := p.conns[k]
	if !ok {
		e = &pooled{ready: make(chan struct{})}
		p.conns[k] = e
		go func() {
			// Connect with a context of its own: a caller that gives up
			// must not fail the others waiting for the same connection.
			// librados gives up after the mount timeout; a little more
			// here, in case it does not.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.connectTimeout())
			defer cancel()
			c, err := Connect(cctx, o)
			p.mu.Lock()
			e.c, e.err = c, err
			if err != nil {
				delete(p.conns, k)
			}
			close(e.ready)
			p.schedule(k, e)
			p.mu.Unlock()
		}()
	}
	e.refs++
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	p.mu.Unlock()

	select {
	case <-e.ready:
	case <-ctx.Done():
		p.release(k, e)
		return nil, nil, ctx.Err()
	}
	if e.err != nil {
		p.release(k, e)
		return nil, nil, e.err
	}
	var once sync.Once
	return e.c, func() { once.Do(func() { p.release(k, e) }) }, nil
}

func (p *Pool) release(k poolKey, e *pooled) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.refs--
	if e.refs == 0 && e.c != nil && p.conns[k] != e {
		// Reset replaced it: its last user is done.
		go e.c.Close()
		return
	}
	p.schedule(k, e)
}

// Reset replaces the shared connection for o (blocklisted, say): the next
// Acquire connects anew; the old connection closes once its last user
// releases it (at once when it has none).
func (p *Pool) Reset(o Options) {
	k := poolKey{o.ConfFile, o.User, o.Keyring, o.Timeout}
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.conns[k]
	if !ok {
		return
	}
	select {
	case <-e.ready:
	default:
		return // still connecting: a new connection already
	}
	delete(p.conns, k)
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	if e.refs == 0 && e.c != nil {
		go e.c.Close()
	}
}

// schedule starts the idle timer of an unused, connected entry; p.mu held.
func (p *Pool) schedule(k poolKey, e *pooled) {
	if e.refs > 0 || e.c == nil || e.timer != nil || p.idle <= 0 || p.conns[k] != e {
		return
	}
	e.timer = time.AfterFunc(p.idle, func() {
		p.mu.Lock()
		if e.refs > 0 || p.conns[k] != e || e.timer == nil {
			p.mu.Unlock()
			return
		}
		delete(p.conns, k)
		p.mu.Unlock()
		e.c.Close()
	})
}

// Open reports how many connections the pool holds.
func (p *Pool) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close closes every connection; later Acquires fail with ErrClosed.
func (p *Pool) Close() {
	p.mu.Lock()
	conns := p.conns
	p.conns = map[poolKey]*pooled{}
	p.closed = true
	p.mu.Unlock()
	for _, e := range conns {
		<-e.ready
		if e.timer != nil {
			e.timer.Stop()
		}
		if e.c != nil {
			e.c.Close()
		}
	}
}

// connectTimeout bounds Connect from the outside: the mount timeout and a
// margin.
func (o Options) connectTimeout() time.Duration {
	t := o.Timeout
	if t <= 0 {
		t = DefaultTimeout
	}
	return t + 10*time.Second
}
