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

// Consume declares queue (durable, quorum unless configured otherwise, dead
// letters to the dead-letter exchange), binds it to the routing keys and
// hands each delivery to handler, up to Options.Prefetch at once. It runs
// until ctx is done or the transport closes, resuming by itself after a lost
// connection, and returns nil then; it returns an error only when the queue
// cannot be consumed at all (access refused, exclusive elsewhere).
//
// Handlers run with a context carrying the envelope's request id; it is
// cancelled when ctx is done (a message whose handler then fails is
// requeued) or when Close gives up draining. See the package documentation
// for acks, requeues and dead letters, and for work that outlives a handler.
func (t *Transport) Consume(ctx context.Context, queue string, bindings []string, handler rpc.Handler) error {
	if queue == "" || handler == nil {
		return errors.New("rpc/amqp: Consume needs a queue and a handler")
	}
	if !t.consumers.add() {
		return rpc.ErrClosed
	}
	defer t.consumers.done()

	c := &consumer{
		queue:        queue,
		handler:      handler,
		log:          t.log.With("queue", queue),
		publish:      t.publish,
		user:         t.user,
		dlx:          t.opts.Exchange + ".dlx",
		requeueDelay: t.opts.RequeueDelay,
	}
	backoff := backoffMin
	for {
		conn, _, err := t.sub.current(ctx, t.closingCh)
		if err != nil {
			return nil // ctx done or closing
		}
		started, err := t.consumeOn(ctx, conn, c, bindings)
		if ctx.Err() != nil || t.isClosing() {
			return nil
		}
		var ae *amqp.Error
		if errors.As(err, &ae) && (ae.Code == amqp.AccessRefused || ae.Code == amqp.ResourceLocked) {
			return fmt.Errorf("rpc/amqp: consume %s: %w", queue, err)
		}
		if started {
			backoff = backoffMin
		}
		c.log.Warn("consumer interrupted, resuming", "reason", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		case <-t.closingCh:
			return nil
		}
		backoff = min(2*backoff, backoffMax)
	}
}

func (t *Transport) isClosing() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closing
}

// consumeOn consumes on one connection until it fails, ctx is done or the
// transport closes; it returns after the in-flight handlers. started
// reports that deliveries were being received.
func (t *Transport) consumeOn(ctx context.Context, conn *amqp.Connection, c *consumer, bindings []string) (started bool, err error) {
	if err := t.declareBound(conn, c.queue, bindings); err != nil {
		return false, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return false, err
	}
	defer ch.Close()
	if err := ch.Qos(t.opts.Prefetch, 0, false); err != nil {
		return false, fmt.Errorf("qos: %w", err)
	}
	tag := fmt.Sprintf("%s.%s.%s", t.opts.Name, c.queue, newID()[:8])
	deliveries, err := ch.Consume(c.queue, tag, false, false, false, false, nil)
	if err != nil {
		return false, fmt.Errorf("consume: %w", err)
	}
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	c.log.Info("consuming", "bindings", bindings, "prefetch", t.opts.Prefetch, "consumer_tag", tag)

	// Handlers stop when ctx is done or Close gives up draining.
	hctx, hcancel := context.WithCancel(ctx)
	stop := context.AfterFunc(t.handlers, hcancel)
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		stop()
		hcancel()
	}()
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				select {
				case ce := <-closes:
					if ce != nil {
						return true, ce
					}
				default:
				}
				return true, errors.New("consumer cancelled by the broker")
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.handle(hctx, d)
			}()
		case <-ctx.Done():
			return true, ctx.Err()
		case <-t.closingCh:
			// Take no more deliveries; the prefetched ones not yet handed
			// out are requeued when the channel closes.
			if err := ch.Cancel(tag, false); err != nil {
				c.log.Debug("consumer cancel", "reason", err)
			}
			c.log.Info("consumer draining")
			return true, rpc.ErrClosed
		}
	}
}

type publishFunc func(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error

// consumer handles the deliveries of one queue: decode, handler, reply,
// ack, requeue or dead-letter.
type consumer struct {
	queue        string
	handler      rpc.Handler
	log          *slog.Logger
	publish      publishFunc
	user         string // the broker user, stamped on replies
	dlx          string
	requeueDelay time.Duration
}

func (c *consumer) handle(ctx context.Context, d amqp.Delivery) {
	env, err := rpc.Decode(d.Body)
	method := env.Method
	if method == "" {
		method = d.Type
	}
	log := c.log.With("method", method, "request_id", env.RequestID, "message_id", d.MessageId)
	isCall := d.ReplyTo != ""
	if err != nil {
		reason := "undecodable message: " + err.Error()
		if errors.Is(err, rpc.ErrMajorVersion) {
			reason = "major version mismatch: " + err.Error()
		}
		if isCall {
			env.Method = method
			if rerr := c.reply(ctx, d, env, nil, err); rerr != nil {
				log.Debug("error reply not sent", "reason", rerr)
			}
		}
		c.deadLetter(ctx, d, reason, log)
		return
	}
	if isCall {
		if dl, ok := deadline(d); ok && time.Now().After(dl) {
			log.Info("call dropped: its caller has given up", "reason", "deadline passed", "late", time.Since(dl).Round(time.Millisecond))
			c.ack(d, log)
			return
		}
	}

	start := time.Now()
	// A call's handler runs no longer than its caller waits: past the
	// deadline nobody reads the answer, and the handler may hold what a
	// retry needs (a lock, an image).
	hctx := ctx
	if dl, ok := deadline(d); ok && isCall {
		var cancel context.CancelFunc
		hctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	reply, herr := c.call(rpc.WithSender(rpc.WithRequestID(hctx, env.RequestID), d.UserId), env)
	switch {
	case herr == nil:
		if isCall {
			if err := c.reply(ctx, d, env, reply, nil); err != nil {
				log.Warn("reply not sent, request requeued", "reason", err)
				c.nack(d, true, log)
				return
			}
		}
		log.Debug("handled", "duration", time.Since(start))
		c.ack(d, log)
	case ctx.Err() != nil:
		log.Info("handler interrupted, message requeued", "reason", herr)
		c.nack(d, true, log)
	case hctx.Err() != nil:
		log.Info("call abandoned: its caller has given up", "reason", herr, "duration", time.Since(start))
		c.ack(d, log)
	case rpc.IsTemporary(herr):
		log.Info("temporary error, message requeued", "reason", herr, "delay", c.requeueDelay, "delivery_count", d.Headers["x-delivery-count"])
		sleepCtx(ctx, c.requeueDelay)
		c.nack(d, true, log)
	case isCall:
		log.Info("call failed, error replied", "reason", herr)
		if err := c.reply(ctx, d, env, nil, herr); err != nil {
			log.Warn("error reply not sent, request requeued", "reason", err)
			c.nack(d, true, log)
			return
		}
		c.ack(d, log)
	default:
		c.deadLetter(ctx, d, "handler error: "+herr.Error(), log)
	}
}

// call runs the handler, turning a panic into an error.
func (c *consumer) call(ctx context.Context, env rpc.Envelope) (reply any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panic: %v", p)
		}
	}()
	return c.handler(ctx, env)
}

// reply publishes the reply of a call to its reply queue, within the call's
// deadline.
func (c *consumer) reply(ctx context.Context, d amqp.Delivery, req rpc.Envelope, body any, herr error) error {
	renv, err := rpc.NewReply(req, body, herr)
	if err != nil {
		renv, _ = rpc.NewReply(req, nil, err) // an unencodable reply body
	}
	if renv.Method == "" {
		renv.Method = "unknown"
	}
	data, err := renv.Marshal()
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if dl, ok := deadline(d); ok {
		var cancel2 context.CancelFunc
		pctx, cancel2 = context.WithDeadline(pctx, dl)
		defer cancel2()
	}
	return c.publish(pctx, "", d.ReplyTo, false, amqp.Publishing{
		ContentType:   "application/json",
		DeliveryMode:  amqp.Transient,
		CorrelationId: d.CorrelationId,
		MessageId:     newID(),
		Timestamp:     time.Now(),
		Type:          renv.Method,
		UserId:        c.user,
		Body:          data,
	})
}

// deadLetter republishes the message to the dead-letter exchange with the
// reason in a header, then acks it; if that fails, it rejects the message,
// which the queue's x-dead-letter-exchange routes to the same place (with
// the broker's x-death header instead of the reason).
func (c *consumer) deadLetter(ctx context.Context, d amqp.Delivery, reason string, log *slog.Logger) {
	log.Warn("message dead-lettered", "reason", reason)
	headers := amqp.Table{}
	for k, v := range d.Headers {
		headers[k] = v
	}
	headers[headerDeadReason] = reason
	headers[headerDeadQueue] = c.queue
	headers[headerDeadExchange] = d.Exchange
	headers[headerDeadRoutingKey] = d.RoutingKey
	headers[headerDeadAt] = time.Now().UTC()
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := c.publish(pctx, c.dlx, d.RoutingKey, true, amqp.Publishing{
		Headers:         headers,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		CorrelationId:   d.CorrelationId,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	})
	if err != nil {
		log.Warn("republish to the dead-letter exchange failed, message rejected to it", "reason", err)
		c.nack(d, false, log)
		return
	}
	c.ack(d, log)
}

func (c *consumer) ack(d amqp.Delivery, log *slog.Logger) {
	if err := d.Ack(false); err != nil {
		log.Info("ack failed, the broker will deliver the message again", "reason", err)
	}
}

func (c *consumer) nack(d amqp.Delivery, requeue bool, log *slog.Logger) {
	if err := d.Nack(false, requeue); err != nil {
		log.Info("nack failed, the broker will deliver the message again", "reason", err)
	}
}

// deadline reads the x-ferry-deadline header of a call.
func deadline(d amqp.Delivery) (time.Time, bool) {
	var ms int64
	switch v := d.Headers[headerDeadline].(type) {
	case int64:
		ms = v
	case int32:
		ms = int64(v)
	case int:
		ms = int64(v)
	default:
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}
