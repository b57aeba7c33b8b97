package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
)

// Publisher defaults.
const (
	DefaultInterval       = time.Second
	DefaultLease          = time.Minute
	DefaultBatch          = 100
	DefaultRetryMin       = time.Second
	DefaultRetryMax       = 5 * time.Minute
	DefaultPublishTimeout = 30 * time.Second
	// poisonRetry is how long a row that can never be published (its
	// payload does not decode) waits before it is looked at again; it is
	// kept, with its error, for an operator.
	poisonRetry = 24 * time.Hour
)

// Publisher publishes the outbox: it claims unpublished rows (db.ClaimOutbox
// leases them to Owner, so several API processes may run one each), casts
// each (the transport waits for the broker's confirm), marks it published,
// or releases it with a backoff when the cast failed, so that a broker
// outage delays messages but loses none. Delivery is at least once: a
// publisher that dies between the cast and MarkPublished leaves the row to
// be cast again when its lease expires.
//
// Fill the fields, then call Run. Zero durations and sizes take the
// Default… values; Owner defaults to DefaultOwner().
type Publisher struct {
	DB     *db.DB
	Caster rpc.Caster
	// Owner names this publisher in the leases (unique per process).
	Owner string
	// Interval is how often the outbox is polled (Kick polls at once).
	Interval time.Duration
	// Lease is how long a claimed row is reserved for this publisher.
	Lease time.Duration
	// Batch is the number of rows claimed at a time.
	Batch int
	// RetryMin and RetryMax bound the backoff of a failed row: RetryMin
	// doubled per earlier attempt, at most RetryMax.
	RetryMin, RetryMax time.Duration
	// PublishTimeout bounds one cast (and never exceeds the lease left).
	PublishTimeout time.Duration
	// Declarer, when set (the amqp Transport is one), declares the queue
	// of a target the broker had no queue for (rpc.ErrUnroutable: no agent
	// of that region has started yet) and the cast is tried once more, so
	// the message waits in the queue instead of in the outbox.
	Declarer QueueDeclarer
	// Raw publishes the notification rows (rpc.MethodNotification) as
	// they are, without Ferry's envelope (the amqp Transport); without
	// it they are cast like any message.
	Raw rpc.RawPublisher
	// Retention is how long published rows are kept (for an operator
	// looking at what went out); older ones are deleted every PurgeEvery
	// (default 10 min). 0 keeps them forever.
	Retention, PurgeEvery time.Duration
	Log                   *slog.Logger

	once sync.Once
	kick chan struct{}
}

// QueueDeclarer declares a durable queue bound to routing keys
// (rpc/amqp.Transport.DeclareQueue).
type QueueDeclarer interface {
	DeclareQueue(ctx context.Context, queue string, bindings []string) error
}

// DefaultOwner returns "<hostname>:<pid>", a lease owner unique per process.
func DefaultOwner() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "ferry-api"
	}
	return fmt.Sprintf("%s:%d", h, os.Getpid())
}

func (p *Publisher) init() {
	p.once.Do(func() { p.kick = make(chan struct{}, 1) })
}

// Kick asks Run to poll the outbox now (after a transfer was created) rather
// than at the next interval. It never blocks.
func (p *Publisher) Kick() {
	p.init()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *Publisher) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}

func orDur(v, def time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return def
}

func (p *Publisher) owner() string {
	if p.Owner != "" {
		return p.Owner
	}
	return DefaultOwner()
}

// Run publishes the outbox until ctx is done, then returns nil. It returns
// an error at once when the publisher lacks its DB or Caster. Errors of a
// round (database or broker down) are logged and the round is tried again.
func (p *Publisher) Run(ctx context.Context) error {
	if p.DB == nil || p.Caster == nil {
		return errors.New("dispatch: publisher needs a DB and a Caster")
	}
	p.init()
	interval := orDur(p.Interval, DefaultInterval)
	timer := time.NewTimer(0)
	defer timer.Stop()
	failing := false
	var purged time.Time
	for {
		if p.Retention > 0 && time.Since(purged) >= orDur(p.PurgeEvery, 10*time.Minute) {
			purged = time.Now()
			if n, err := p.Purge(ctx); err != nil && ctx.Err() == nil {
				p.log().Warn("purging published outbox rows", "error", err)
			} else if n > 0 {
				p.log().Info("purged published outbox rows", "rows", n, "older_than", p.Retention)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-p.kick:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		n, err := p.Flush(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err != nil && !failing:
			p.log().Warn("outbox publishing failed, will retry", "error", err)
			failing = true
		case err == nil && failing:
			p.log().Info("outbox publishing recovered")
			failing = false
		}
		next := interval
		if err == nil && n >= p.batch() {
			next = 0 // a full batch: more may be waiting
		}
		timer.Reset(next)
	}
}

func (p *Publisher) batch() int {
	if p.Batch > 0 {
		return min(p.Batch, db.MaxOutboxClaim)
	}
	return DefaultBatch
}

// backoff is the retry delay of a row that has failed attempts times before.
func (p *Publisher) backoff(attempts int) time.Duration {
	lo, hi := orDur(p.RetryMin, DefaultRetryMin), orDur(p.RetryMax, DefaultRetryMax)
	d := lo
	for i := 0; i < attempts && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// Flush claims one batch and publishes it; it returns how many rows it
// claimed. A failed cast releases the row with a backoff; when the broker is
// unavailable the rest of the batch is released untried. The error reports
// the first failure (the rows are safe in any case).
func (p *Publisher) Flush(ctx context.Context) (int, error) {
	if p.DB == nil || p.Caster == nil {
		return 0, errors.New("dispatch: publisher needs a DB and a Caster")
	}
	lease := orDur(p.Lease, DefaultLease)
	msgs, err := p.DB.ClaimOutbox(ctx, p.owner(), lease, p.batch())
	if err != nil {
		return 0, err
	}
	claimed := time.Now()
	var first error
	for i := range msgs {
		m := &msgs[i]
		err := p.publishOne(ctx, m, claimed.Add(lease))
		if err == nil {
			continue
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil || !(errors.Is(err, rpc.ErrUnroutable) || errors.Is(err, rpc.ErrNacked) || errors.Is(err, errPoison)) {
			// The broker (or the database) is out: give the rest back
			// for later rather than waiting on each.
			rest := make([]int64, 0, len(msgs)-i-1)
			for _, r := range msgs[i+1:] {
				rest = append(rest, r.ID)
			}
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			rerr := p.DB.ReleaseOutbox(rctx, rest, p.backoff(m.Attempts), "not tried: "+err.Error())
			cancel()
			if rerr != nil {
				first = errors.Join(first, rerr)
			}
			break
		}
	}
	return len(msgs), first
}

var errPoison = errors.New("outbox message cannot be published")

// publishOne casts m and marks it published, or releases it.
func (p *Publisher) publishOne(ctx context.Context, m *db.OutboxMessage, leaseEnd time.Time) error {
	target, sm, err := decodeOutbox(m)
	if err != nil {
		p.log().Error("outbox message cannot be published", "outbox_id", m.ID, "error", err)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if rerr := p.DB.ReleaseOutbox(rctx, []int64{m.ID}, poisonRetry, err.Error()); rerr != nil {
			return errors.Join(fmt.Errorf("%w: %w", errPoison, err), rerr)
		}
		return fmt.Errorf("%w: %w", errPoison, err)
	}
	timeout := orDur(p.PublishTimeout, DefaultPublishTimeout)
	if left := time.Until(leaseEnd); left < timeout {
		timeout = max(left, time.Second)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	if sm.RequestID != "" {
		cctx = rpc.WithRequestID(cctx, sm.RequestID)
	}
	var body any
	if len(sm.Body) > 0 {
		body = sm.Body
	}
	send := func() error { return p.Caster.Cast(cctx, target, sm.Method, body) }
	if sm.Method == rpc.MethodNotification && p.Raw != nil {
		send = func() error { return p.Raw.PublishRaw(cctx, target, sm.Body) }
	}
	err = send()
	if errors.Is(err, rpc.ErrUnroutable) && p.Declarer != nil {
		// A notification nobody consumes yet waits in its queue, as
		// oslo.messaging's notifier declares it.
		q := string(target)
		if derr := p.Declarer.DeclareQueue(cctx, q, []string{q}); derr != nil {
			err = errors.Join(err, derr)
		} else {
			p.log().Info("declared the queue of an unroutable target", "target", target, "outbox_id", m.ID)
			err = send()
		}
	}
	cancel()
	// Bookkeeping outlives a cancelled ctx: the cast's outcome is known.
	bctx, bcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer bcancel()
	if err != nil {
		retry := p.backoff(m.Attempts)
		if rerr := p.DB.ReleaseOutbox(bctx, []int64{m.ID}, retry, err.Error()); rerr != nil {
			return errors.Join(err, rerr)
		}
		p.log().Debug("outbox message not published", "outbox_id", m.ID, "method", sm.Method,
			"target", target, "attempts", m.Attempts+1, "retry_after", retry, "error", err)
		return err
	}
	if err := p.DB.MarkPublished(bctx, []int64{m.ID}); err != nil {
		// Published but not marked: it is cast again after the lease
		// (at least once; receivers are idempotent).
		return err
	}
	p.log().Debug("outbox message published", "outbox_id", m.ID, "method", sm.Method, "target", target,
		"request_id", sm.RequestID)
	return nil
}

// Purge deletes the rows published more than Retention ago (by the
// database's clock) and returns how many; with no Retention, none.
func (p *Publisher) Purge(ctx context.Context) (int64, error) {
	if p.Retention <= 0 {
		return 0, nil
	}
	return p.DB.PurgePublishedOutbox(ctx, p.DB.Now().Add(-p.Retention))
}
