package amqp

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-project/ferry/rpc"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Headers Ferry sets.
const (
	// headerDeadline: on a call, when the caller gives up (Unix ms).
	headerDeadline = "x-ferry-deadline"
	// headerDeadReason and friends: on a dead letter, why and where from.
	headerDeadReason     = "x-ferry-dead-reason"
	headerDeadQueue      = "x-ferry-dead-queue"
	headerDeadExchange   = "x-ferry-dead-exchange"
	headerDeadRoutingKey = "x-ferry-dead-routing-key"
	headerDeadAt         = "x-ferry-dead-at"
)

// pubChannel is a channel in confirm mode used by one publish at a time, so
// that a basic.return and the confirm that follows it belong to that publish.
type pubChannel struct {
	ch      *amqp.Channel
	returns chan amqp.Return
	closes  chan *amqp.Error
	gen     uint64
}

// channel takes an idle publishing channel or opens one.
func (s *session) channel(ctx context.Context, stop <-chan struct{}) (*pubChannel, error) {
	for {
		conn, gen, err := s.current(ctx, stop)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		if gen == s.gen && len(s.idle) > 0 {
			pc := s.idle[len(s.idle)-1]
			s.idle = s.idle[:len(s.idle)-1]
			s.mu.Unlock()
			return pc, nil
		}
		s.mu.Unlock()
		ch, err := conn.Channel()
		if err == nil {
			if err = ch.Confirm(false); err != nil {
				_ = ch.Close()
			}
		}
		if err != nil {
			// The connection is going down; run will notice.
			s.setErr(err)
			if !sleepCtx(ctx, 50*time.Millisecond) {
				return nil, unavailable(ctx.Err(), err)
			}
			continue
		}
		return &pubChannel{
			ch:      ch,
			returns: ch.NotifyReturn(make(chan amqp.Return, 1)),
			closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
			gen:     gen,
		}, nil
	}
}

// release puts a healthy channel back in the pool.
func (s *session) release(pc *pubChannel) {
	s.mu.Lock()
	if pc.gen == s.gen && s.conn != nil && !pc.ch.IsClosed() && len(s.idle) < maxIdleChannels {
		s.idle = append(s.idle, pc)
		pc = nil
	}
	s.mu.Unlock()
	if pc != nil {
		_ = pc.ch.Close()
	}
}

// publish sends msg and waits for its confirm. A publish cut by a lost
// connection is sent again on the next one (at-least-once).
func (t *Transport) publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error {
	select {
	case t.publishing <- struct{}{}:
		defer func() { <-t.publishing }()
	case <-ctx.Done():
		return unavailable(ctx.Err(), errors.New("too many publishes in flight"))
	}
	for {
		pc, err := t.pub.channel(ctx, t.life.Done())
		if err != nil {
			return err
		}
		retry, err := t.publishOn(ctx, pc, exchange, key, mandatory, msg)
		if err == nil {
			t.pub.release(pc)
			return nil
		}
		_ = pc.ch.Close()
		if !retry {
			return err
		}
		t.log.Debug("publish interrupted, sending again", "message_id", msg.MessageId, "target", key, "reason", err)
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return unavailable(ctx.Err(), err)
		}
	}
}

// publishOn publishes on pc; retry reports that the channel was lost with
// the connection, so the message is to be sent again.
func (t *Transport) publishOn(ctx context.Context, pc *pubChannel, exchange, key string, mandatory bool, msg amqp.Publishing) (retry bool, err error) {
	for drained := false; !drained; { // a stale return from an abandoned publish
		select {
		case _, open := <-pc.returns:
			drained = !open
		default:
			drained = true
		}
	}
	dc, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, mandatory, false, msg)
	if err != nil {
		if ctx.Err() != nil {
			return false, unavailable(ctx.Err(), err)
		}
		return t.lost(pc, err)
	}
	wctx, cancel := context.WithTimeout(ctx, t.opts.ConfirmTimeout)
	defer cancel()
	ok, err := dc.WaitContext(wctx)
	if err != nil {
		return false, fmt.Errorf("%w: no publisher confirm for message %s: %w", rpc.ErrUnavailable, msg.MessageId, err)
	}
	if !ok {
		if pc.ch.IsClosed() {
			return t.lost(pc, errors.New("channel closed before the confirm"))
		}
		return false, fmt.Errorf("%w: message %s to %q", rpc.ErrNacked, msg.MessageId, key)
	}
	select {
	case r, open := <-pc.returns:
		if open {
			return false, fmt.Errorf("%w: %q on exchange %q (%d %s)", rpc.ErrUnroutable, key, exchange, r.ReplyCode, r.ReplyText)
		}
	default:
	}
	return false, nil
}

// lost classifies a failed publish: a channel closed by the broker for this
// publish (a soft error such as 404 NOT_FOUND for a missing exchange) or an
// error on an open channel is the publish's error; a channel closed with the
// connection means send again.
func (t *Transport) lost(pc *pubChannel, err error) (bool, error) {
	if !pc.ch.IsClosed() {
		return false, err // not a lost channel: an error of this message
	}
	select {
	case ce, open := <-pc.closes:
		if open && ce != nil && ce.Recover {
			return false, fmt.Errorf("publish refused: %w", ce)
		}
		if open && ce != nil {
			err = ce
		}
	default:
	}
	return true, err
}

// Cast publishes a persistent message to target and returns once the broker
// has confirmed it. See the package documentation for the errors.
func (t *Transport) Cast(ctx context.Context, target rpc.Target, method string, body any) error {
	if err := t.begin(); err != nil {
		return err
	}
	defer t.ops.done()
	env, err := rpc.NewEnvelope(ctx, method, body)
	if err != nil {
		return err
	}
	data, err := env.Marshal()
	if err != nil {
		return err
	}
	msg := amqp.Publishing{
		ContentType:  "application/json",
		DeliveryMode: amqp.Persistent,
		MessageId:    newID(),
		Timestamp:    time.Now(),
		Type:         method,
		AppId:        t.opts.Name,
		UserId:       t.user,
		Body:         data,
	}
	if err := t.publish(ctx, t.opts.Exchange, string(target), true, msg); err != nil {
		return fmt.Errorf("rpc cast %s to %s: %w", method, target, err)
	}
	t.log.Debug("cast sent", "method", method, "target", target, "request_id", env.RequestID, "message_id", msg.MessageId)
	return nil
}

// Call sends a request to target and waits for the reply until ctx is done
// (Options.CallTimeout when ctx has no deadline). A handler's error is
// returned as a *rpc.RemoteError; reply, if not nil, receives the body.
func (t *Transport) Call(ctx context.Context, target rpc.Target, method string, body any, reply any) error {
	if err := t.begin(); err != nil {
		return err
	}
	defer t.ops.done()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t.opts.CallTimeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	env, err := rpc.NewEnvelope(ctx, method, body)
	if err != nil {
		return err
	}
	data, err := env.Marshal()
	if err != nil {
		return err
	}
	corr := newID()
	replies := make(chan []byte, 1)
	t.callsMu.Lock()
	t.calls[corr] = replies
	t.callsMu.Unlock()
	defer func() {
		t.callsMu.Lock()
		delete(t.calls, corr)
		t.callsMu.Unlock()
	}()
	msg := amqp.Publishing{
		ContentType:   "application/json",
		DeliveryMode:  amqp.Transient,
		MessageId:     newID(),
		CorrelationId: corr,
		ReplyTo:       t.replyQueue,
		Timestamp:     time.Now(),
		Type:          method,
		AppId:         t.opts.Name,
		UserId:        t.user,
		Headers:       amqp.Table{headerDeadline: deadline.UnixMilli()},
		Body:          data,
	}
	start := time.Now()
	if err := t.publish(ctx, t.opts.Exchange, string(target), true, msg); err != nil {
		return fmt.Errorf("rpc call %s to %s: %w", method, target, err)
	}
	var raw []byte
	select {
	case raw = <-replies:
	case <-ctx.Done():
		return fmt.Errorf("rpc call %s to %s: no reply: %w", method, target, ctx.Err())
	case <-t.life.Done():
		return fmt.Errorf("rpc call %s to %s: %w", method, target, rpc.ErrClosed)
	}
	renv, err := rpc.Decode(raw)
	if err != nil {
		return fmt.Errorf("rpc call %s to %s: reply: %w", method, target, err)
	}
	t.log.Debug("call replied", "method", method, "target", target, "request_id", env.RequestID, "duration", time.Since(start))
	if renv.Error != nil {
		return fmt.Errorf("rpc call %s to %s: %w", method, target, renv.Error)
	}
	if reply != nil && len(renv.Body) > 0 && string(renv.Body) != "null" {
		if err := json.Unmarshal(renv.Body, reply); err != nil {
			return fmt.Errorf("rpc call %s to %s: reply body: %w", method, target, err)
		}
	}
	return nil
}

// dispatchReplies hands the replies of a reply-queue consumer to the calls
// waiting for them, until the channel closes.
func (t *Transport) dispatchReplies(deliveries <-chan amqp.Delivery) {
	for d := range deliveries {
		t.callsMu.Lock()
		ch, ok := t.calls[d.CorrelationId]
		t.callsMu.Unlock()
		if !ok {
			t.log.Debug("reply to an unknown or abandoned call dropped", "correlation_id", d.CorrelationId, "method", d.Type)
			continue
		}
		select {
		case ch <- d.Body:
		default: // a second reply (the request was handled twice)
		}
	}
}

// newID returns 128 random bits as 26 base32 characters.
func newID() string { return rand.Text() }

// PublishRaw publishes body as it is (an OpenStack notification, which has
// its own envelope) to target on the exchange, persistent, and returns once
// the broker confirmed it.
func (t *Transport) PublishRaw(ctx context.Context, target rpc.Target, body []byte) error {
	if err := t.begin(); err != nil {
		return err
	}
	defer t.ops.done()
	msg := amqp.Publishing{
		ContentType:  "application/json",
		DeliveryMode: amqp.Persistent,
		MessageId:    newID(),
		Timestamp:    time.Now(),
		AppId:        t.opts.Name,
		UserId:       t.user,
		Body:         body,
	}
	if err := t.publish(ctx, t.opts.Exchange, string(target), true, msg); err != nil {
		return fmt.Errorf("rpc publish to %s: %w", target, err)
	}
	return nil
}
