package amqp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	amqp "github.com/rabbitmq/amqp091-go"
)

// recorder is the consumer's broker side: acks, nacks and publishes in order.
type recorder struct {
	mu         sync.Mutex
	events     []string
	published  []amqp.Publishing
	publishErr error
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, s)
}

func (r *recorder) Ack(uint64, bool) error { r.add("ack"); return nil }
func (r *recorder) Nack(_ uint64, _ bool, requeue bool) error {
	r.add(fmt.Sprintf("nack requeue=%v", requeue))
	return nil
}
func (r *recorder) Reject(_ uint64, requeue bool) error {
	r.add(fmt.Sprintf("reject requeue=%v", requeue))
	return nil
}

func (r *recorder) publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error {
	if _, ok := ctx.Deadline(); !ok {
		return errors.New("publish without a deadline")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.publishErr != nil {
		r.events = append(r.events, "publish failed")
		return r.publishErr
	}
	r.events = append(r.events, fmt.Sprintf("publish %s/%s", exchange, key))
	r.published = append(r.published, msg)
	return nil
}

func envelope(t *testing.T, version, method, requestID, body string) []byte {
	t.Helper()
	return fmt.Appendf(nil, `{"version":%q,"method":%q,"request_id":%q,"body":%s}`, version, method, requestID, body)
}

func TestConsumerHandle(t *testing.T) {
	okHandler := func(ctx context.Context, env rpc.Envelope) (any, error) {
		return map[string]string{"request_id": rpc.RequestIDFrom(ctx), "method": env.Method}, nil
	}
	future := time.Now().Add(time.Minute).UnixMilli()
	past := time.Now().Add(-time.Second).UnixMilli()
	cases := []struct {
		name       string
		body       []byte
		call       bool
		deadline   int64
		handler    rpc.Handler
		publishErr error
		cancel     bool
		want       []string
		wantReason string // x-ferry-dead-reason of the dead letter
		wantReply  string // substring of the reply body
	}{
		{name: "cast ok", body: envelope(t, "1.0", "transfer.start", "req-1", `{}`), handler: okHandler,
			want: []string{"ack"}},
		{name: "cast, newer minor and unknown fields", body: []byte(`{"version":"1.9","method":"agent.status","request_id":"r","body":{},"extra":1}`), handler: okHandler,
			want: []string{"ack"}},
		{name: "cast, temporary error", body: envelope(t, "1.0", "transfer.start", "r", `{}`),
			handler: func(context.Context, rpc.Envelope) (any, error) { return nil, rpc.Temporary(errors.New("busy")) },
			want:    []string{"nack requeue=true"}},
		{name: "cast, permanent error", body: envelope(t, "1.0", "transfer.start", "r", `{}`),
			handler: func(context.Context, rpc.Envelope) (any, error) { return nil, fmt.Errorf("%w: pool", rpc.ErrInvalid) },
			want:    []string{"publish ferry.dlx/agent.R1", "ack"}, wantReason: "handler error: invalid: pool"},
		{name: "cast, permanent error, dead-letter exchange unreachable", body: envelope(t, "1.0", "transfer.start", "r", `{}`),
			handler:    func(context.Context, rpc.Envelope) (any, error) { return nil, errors.New("boom") },
			publishErr: rpc.ErrUnavailable, want: []string{"publish failed", "nack requeue=false"}},
		{name: "cast, handler panics", body: envelope(t, "1.0", "transfer.start", "r", `{}`),
			handler: func(context.Context, rpc.Envelope) (any, error) { panic("nil map") },
			want:    []string{"publish ferry.dlx/agent.R1", "ack"}, wantReason: "handler error: handler panic: nil map"},
		{name: "cast, major version", body: envelope(t, "2.0", "transfer.start", "r", `{}`), handler: okHandler,
			want: []string{"publish ferry.dlx/agent.R1", "ack"}, wantReason: "major version mismatch"},
		{name: "cast, bad JSON", body: []byte(`{"version": "1.0", "meth`), handler: okHandler,
			want: []string{"publish ferry.dlx/agent.R1", "ack"}, wantReason: "undecodable message"},
		{name: "cast, interrupted by shutdown", body: envelope(t, "1.0", "transfer.start", "r", `{}`), cancel: true,
			handler: func(ctx context.Context, _ rpc.Envelope) (any, error) { return nil, ctx.Err() },
			want:    []string{"nack requeue=true"}},
		{name: "call ok", call: true, deadline: future, body: envelope(t, "1.0", "transfer.prepare", "req-7", `{}`), handler: okHandler,
			want: []string{"publish /reply.q", "ack"}, wantReply: `"body":{"method":"transfer.prepare","request_id":"req-7"}`},
		{name: "call, remote error", call: true, deadline: future, body: envelope(t, "1.0", "transfer.prepare", "r", `{}`),
			handler: func(context.Context, rpc.Envelope) (any, error) { return nil, fmt.Errorf("%w: image", rpc.ErrConflict) },
			want:    []string{"publish /reply.q", "ack"}, wantReply: `"error":{"code":"conflict","message":"conflict: image"}`},
		{name: "call, temporary error", call: true, deadline: future, body: envelope(t, "1.0", "transfer.prepare", "r", `{}`),
			handler: func(context.Context, rpc.Envelope) (any, error) { return nil, rpc.Temporary(errors.New("busy")) },
			want:    []string{"nack requeue=true"}},
		{name: "call, reply cannot be sent", call: true, deadline: future, body: envelope(t, "1.0", "transfer.prepare", "r", `{}`), handler: okHandler,
			publishErr: rpc.ErrUnavailable, want: []string{"publish failed", "nack requeue=true"}},
		{name: "call, caller gave up", call: true, deadline: past, body: envelope(t, "1.0", "transfer.prepare", "r", `{}`),
			handler: func(context.Context, rpc.Envelope) (any, error) { panic("must not run") },
			want:    []string{"ack"}},
		{name: "call, major version", call: true, deadline: future, body: envelope(t, "3.1", "transfer.prepare", "r", `{}`), handler: okHandler,
			want:       []string{"publish /reply.q", "publish ferry.dlx/agent.R1", "ack"},
			wantReason: "major version mismatch", wantReply: `"code":"unsupported_version"`},
		{name: "call, unencodable reply", call: true, deadline: future, body: envelope(t, "1.0", "transfer.prepare", "r", `{}`),
			handler: func(context.Context, rpc.Envelope) (any, error) { return func() {}, nil },
			want:    []string{"publish /reply.q", "ack"}, wantReply: `"code":"internal"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{publishErr: tc.publishErr}
			var logs bytes.Buffer
			c := &consumer{
				queue: "agent.R1", handler: tc.handler, publish: rec.publish, dlx: "ferry.dlx",
				requeueDelay: 10 * time.Millisecond,
				log:          slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			}
			d := amqp.Delivery{Acknowledger: rec, DeliveryTag: 1, Body: tc.body, MessageId: "m1",
				Exchange: "ferry", RoutingKey: "agent.R1", ContentType: "application/json"}
			if tc.call {
				d.ReplyTo, d.CorrelationId = "reply.q", "corr-1"
				d.Headers = amqp.Table{headerDeadline: tc.deadline}
			}
			ctx, cancel := context.WithCancel(context.Background())
			if tc.cancel {
				cancel()
			}
			defer cancel()
			c.handle(ctx, d)
			if got := strings.Join(rec.events, ", "); got != strings.Join(tc.want, ", ") {
				t.Fatalf("events %q, want %q\nlogs:\n%s", got, strings.Join(tc.want, ", "), logs.String())
			}
			for _, p := range rec.published {
				if p.Headers[headerDeadReason] != nil {
					reason, _ := p.Headers[headerDeadReason].(string)
					if tc.wantReason == "" || !strings.Contains(reason, tc.wantReason) {
						t.Errorf("dead reason %q, want %q", reason, tc.wantReason)
					}
					if p.Headers[headerDeadQueue] != "agent.R1" || p.MessageId != "m1" || !bytes.Equal(p.Body, tc.body) || p.DeliveryMode != amqp.Persistent {
						t.Errorf("dead letter %+v", p)
					}
				} else {
					if p.CorrelationId != "corr-1" || !strings.Contains(string(p.Body), tc.wantReply) {
						t.Errorf("reply %s (correlation %q), want %s", p.Body, p.CorrelationId, tc.wantReply)
					}
				}
			}
		})
	}
}

func TestConsumerLogsKeys(t *testing.T) {
	rec := &recorder{}
	var logs bytes.Buffer
	c := &consumer{
		queue: "agent.R1", publish: rec.publish, dlx: "ferry.dlx",
		handler: func(context.Context, rpc.Envelope) (any, error) { return nil, errors.New("no such pool") },
		log:     slog.New(slog.NewTextHandler(&logs, nil)).With("queue", "agent.R1"),
	}
	c.handle(context.Background(), amqp.Delivery{Acknowledger: rec, Body: envelope(t, "1.0", "transfer.start", "req-42", `{}`), RoutingKey: "agent.R1"})
	for _, want := range []string{"queue=agent.R1", "method=transfer.start", "request_id=req-42", `reason="handler error: no such pool"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s: %s", want, logs.String())
		}
	}
}

func TestOptions(t *testing.T) {
	o := Options{}.withDefaults()
	if o.Prefetch != 10 || o.Name != "ferry" || o.Exchange != "ferry" || o.Logger == nil || o.CallTimeout != time.Minute {
		t.Errorf("defaults %+v", o)
	}
	if _, ok := o.queueArgs()["x-queue-type"]; ok {
		t.Error("zero Options declare quorum queues")
	}
	d := DefaultOptions().withDefaults()
	args := d.queueArgs()
	if args["x-queue-type"] != "quorum" || args["x-dead-letter-exchange"] != "ferry.dlx" {
		t.Errorf("queue args %v", args)
	}
	if _, ok := d.deadQueueArgs()["x-dead-letter-exchange"]; ok {
		t.Error("the dead-letter queue dead-letters")
	}
	if (Options{Prefetch: 100000}).withDefaults().Prefetch != 65535 {
		t.Error("prefetch not capped")
	}
	if (Options{Exchange: "x"}).withDefaults().queueArgs()["x-dead-letter-exchange"] != "x.dlx" {
		t.Error("dead-letter exchange not derived from Exchange")
	}
}

func TestDeadlineHeader(t *testing.T) {
	now := time.Now().Truncate(time.Millisecond)
	for _, v := range []any{now.UnixMilli(), int32(1000), 1000} {
		if _, ok := deadline(amqp.Delivery{Headers: amqp.Table{headerDeadline: v}}); !ok {
			t.Errorf("deadline %T not read", v)
		}
	}
	if dl, _ := deadline(amqp.Delivery{Headers: amqp.Table{headerDeadline: now.UnixMilli()}}); !dl.Equal(now) {
		t.Errorf("deadline %v, want %v", dl, now)
	}
	if _, ok := deadline(amqp.Delivery{Headers: amqp.Table{headerDeadline: "soon"}}); ok {
		t.Error("string deadline read")
	}
	if _, ok := deadline(amqp.Delivery{}); ok {
		t.Error("no deadline read")
	}
}

// New against a port where nothing listens fails when ctx expires, with
// rpc.ErrUnavailable, the last dial error and no password.
func TestNewUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	tr, err := New(ctx, "rabbit://guest:secret@127.0.0.1:1,127.0.0.1:2/", Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil {
		tr.Close(context.Background())
		t.Fatal("New succeeded without a broker")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("New took %v after its context expired", el)
	}
	if !errors.Is(err, rpc.ErrUnavailable) || !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap ErrUnavailable and the deadline", err)
	}
	s := err.Error()
	if strings.Contains(s, "secret") {
		t.Errorf("password in error: %s", s)
	}
	if !strings.Contains(s, "127.0.0.1:1") || !strings.Contains(s, "127.0.0.1:2") {
		t.Errorf("error does not name the hosts tried: %s", s)
	}
	if _, err := New(ctx, "kafka://h/", Options{}); err == nil {
		t.Error("bad URL accepted")
	}
}
