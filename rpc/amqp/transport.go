package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ferry-project/ferry/rpc"
	amqp "github.com/rabbitmq/amqp091-go"
)

var (
	_ rpc.Caster = (*Transport)(nil)
	_ rpc.Caller = (*Transport)(nil)
)

// ErrUnavailable is rpc.ErrUnavailable (the same value), for callers that
// only import this package.
var ErrUnavailable = rpc.ErrUnavailable

// Transport is a connection to RabbitMQ for casts, calls and consumers. It
// is safe for concurrent use; create one per process with New and Close it
// on shutdown.
type Transport struct {
	opts       Options
	log        *slog.Logger
	replyQueue string
	// user is the broker user of the transport URL: every message is
	// stamped with it (user_id, which the broker verifies), so that a
	// receiver knows who sent it (rpc.SenderFrom).
	user string

	pub *session // publishing and the replies of calls
	sub *session // consumers

	life         context.Context // done when the connections are to close
	stopLife     context.CancelFunc
	handlers     context.Context // done when handlers are to stop (Close's deadline)
	stopHandlers context.CancelFunc

	mu        sync.Mutex
	closing   bool
	closingCh chan struct{} // closed when Close starts
	ops       tracker       // Cast, Call and DeclareQueue in progress
	consumers tracker       // Consume loops

	callsMu sync.Mutex
	calls   map[string]chan []byte // correlation id → waiting Call

	publishing chan struct{} // a slot per publish in flight (channels in use)
}

// New connects to the broker of transportURL (rabbit://user:pass@h1:5672,
// h2:5672/vhost: the hosts are tried in turn), declares the topology and
// returns once both connections are up, or fails when ctx expires first
// (with an error wrapping rpc.ErrUnavailable and the last connection error).
// Afterwards the transport reconnects by itself.
func New(ctx context.Context, transportURL string, opts Options) (*Transport, error) {
	uris, err := ParseTransportURL(transportURL)
	if err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	t := &Transport{
		opts:       opts,
		log:        opts.Logger,
		closingCh:  make(chan struct{}),
		calls:      map[string]chan []byte{},
		publishing: make(chan struct{}, maxPublishing),
	}
	if u, err := amqp.ParseURI(uris[0]); err == nil {
		t.user = u.Username
	}
	t.replyQueue = fmt.Sprintf("%s.reply.%s.%s", opts.Exchange, opts.Name, newID()[:12])
	t.life, t.stopLife = context.WithCancel(context.Background())
	t.handlers, t.stopHandlers = context.WithCancel(context.Background())
	connName := "ferry " + opts.Name
	t.pub = newSession("publish", connName+" publish", uris, t.log, t.setupPublish)
	t.sub = newSession("consume", connName+" consume", uris, t.log, nil)
	go t.pub.run(t.life)
	go t.sub.run(t.life)
	for _, s := range []*session{t.pub, t.sub} {
		if _, _, err := s.current(ctx, nil); err != nil {
			t.stopHandlers()
			t.stopLife()
			<-t.pub.done
			<-t.sub.done
			return nil, fmt.Errorf("rpc/amqp: %w", err)
		}
	}
	return t, nil
}

// setupPublish declares the topology and the reply queue on a new publishing
// connection and starts dispatching replies.
func (t *Transport) setupPublish(conn *amqp.Connection) error {
	ex := t.opts.Exchange
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if t.opts.Passive {
		for _, name := range []string{ex, ex + ".dlx"} {
			if err := ch.ExchangeDeclarePassive(name, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
				return fmt.Errorf("exchange %s (declared by ferry-api): %w", name, err)
			}
		}
	} else {
		if err := ch.ExchangeDeclare(ex, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s: %w", ex, err)
		}
		if err := ch.ExchangeDeclare(ex+".dlx", amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s.dlx: %w", ex, err)
		}
		if err := t.declareQueue(conn, ex+".dead", t.opts.deadQueueArgs()); err != nil {
			return err
		}
		if err := ch.QueueBind(ex+".dead", "#", ex+".dlx", false, nil); err != nil {
			return fmt.Errorf("bind %s.dead: %w", ex, err)
		}
	}

	rch, err := conn.Channel()
	if err != nil {
		return err
	}
	if _, err := rch.QueueDeclare(t.replyQueue, false, true, true, false, nil); err != nil {
		_ = rch.Close()
		return fmt.Errorf("declare reply queue %s: %w", t.replyQueue, err)
	}
	deliveries, err := rch.Consume(t.replyQueue, "", true, true, false, false, nil)
	if err != nil {
		_ = rch.Close()
		return fmt.Errorf("consume reply queue %s: %w", t.replyQueue, err)
	}
	go t.dispatchReplies(deliveries)
	return nil
}

// declareQueue declares a durable queue with args. A queue that exists with
// other arguments (another type, no dead-letter exchange) is used as it is,
// with a warning: changing it means deleting it, an operator's decision.
func (t *Transport) declareQueue(conn *amqp.Connection, name string, args amqp.Table) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	_, err = ch.QueueDeclare(name, true, false, false, false, args)
	_ = ch.Close()
	if err == nil {
		return nil
	}
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		ch, perr := conn.Channel()
		if perr != nil {
			return perr
		}
		defer ch.Close()
		if _, perr := ch.QueueDeclarePassive(name, true, false, false, false, nil); perr == nil {
			t.log.Warn("queue exists with other arguments, used as it is", "queue", name, "reason", ae.Reason)
			return nil
		}
	}
	return fmt.Errorf("declare queue %s: %w", name, err)
}

// declareBound declares a service queue and binds its routing keys.
func (t *Transport) declareBound(conn *amqp.Connection, queue string, bindings []string) error {
	if err := t.declareQueue(conn, queue, t.opts.queueArgs()); err != nil {
		return err
	}
	if len(bindings) == 0 {
		return nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	// Again, in case it was deleted since the connection was set up.
	if !t.opts.Passive {
		if err := ch.ExchangeDeclare(t.opts.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s: %w", t.opts.Exchange, err)
		}
	}
	for _, key := range bindings {
		if err := ch.QueueBind(queue, key, t.opts.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind %s to %s: %w", queue, key, err)
		}
	}
	return nil
}

// DeclareQueue declares a service queue and binds it to the routing keys,
// as Consume does, without consuming. The API declares the agents' shared
// queues this way so that a transfer.start cast before any agent has started
// waits in its queue instead of being unroutable.
func (t *Transport) DeclareQueue(ctx context.Context, queue string, bindings []string) error {
	if err := t.begin(); err != nil {
		return err
	}
	defer t.ops.done()
	if queue == "" {
		return errors.New("rpc/amqp: empty queue name")
	}
	for {
		conn, _, err := t.pub.current(ctx, t.life.Done())
		if err != nil {
			return fmt.Errorf("declare queue %s: %w", queue, err)
		}
		err = t.declareBound(conn, queue, bindings)
		if err == nil || !conn.IsClosed() {
			return err
		}
		// The connection went down meanwhile: declare on the next one.
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return unavailable(ctx.Err(), err)
		}
	}
}

// begin registers a Cast, Call or DeclareQueue, unless the transport is
// closing.
func (t *Transport) begin() error {
	if !t.ops.add() {
		return rpc.ErrClosed
	}
	return nil
}

// Close drains and closes the transport: consumers stop taking deliveries
// and wait for their in-flight handlers, pending casts and calls complete,
// then the connections close. When ctx expires first, handlers' contexts are
// cancelled, pending calls fail with rpc.ErrClosed, and Close returns an
// error saying what was not drained. Close is idempotent.
func (t *Transport) Close(ctx context.Context) error {
	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		select {
		case <-t.pub.done:
		case <-ctx.Done():
		}
		return nil
	}
	t.closing = true
	close(t.closingCh)
	consumersIdle := t.consumers.close()
	opsIdle := t.ops.close()
	t.mu.Unlock()

	var errs []error
	if !waitIdle(ctx, consumersIdle) {
		errs = append(errs, fmt.Errorf("consumers not drained: %w", ctx.Err()))
		t.stopHandlers()
		// Handlers see their context cancelled; give them a moment.
		tctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		waitIdle(tctx, consumersIdle)
		cancel()
	}
	if !waitIdle(ctx, opsIdle) {
		errs = append(errs, fmt.Errorf("casts and calls not drained: %w", ctx.Err()))
	}
	t.stopHandlers()
	t.stopLife()
	<-t.pub.done
	<-t.sub.done
	if len(errs) > 0 {
		return fmt.Errorf("rpc/amqp: close: %w", errors.Join(errs...))
	}
	t.log.Debug("transport closed")
	return nil
}

// waitIdle waits for idle to close until ctx is done.
func waitIdle(ctx context.Context, idle <-chan struct{}) bool {
	select {
	case <-idle:
		return true
	default:
	}
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

// tracker counts operations in progress; once closed it admits no more and
// reports when the last one ends.
type tracker struct {
	mu     sync.Mutex
	n      int
	closed bool
	idle   chan struct{}
}

func (k *tracker) add() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return false
	}
	k.n++
	return true
}

func (k *tracker) done() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.n--
	if k.n == 0 && k.idle != nil {
		close(k.idle)
		k.idle = nil
	}
}

// close refuses further adds and returns a channel closed once none is in
// progress.
func (k *tracker) close() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	idle := make(chan struct{})
	if k.n == 0 {
		close(idle)
	} else {
		k.idle = idle
	}
	return idle
}
