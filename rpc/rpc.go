package rpc

import (
	"context"
	"crypto/rand"
	"fmt"
	"sort"
)

// Methods. The comment says who sends it to whom and whether it is a cast
// (one way, at-least-once) or a call (request/reply).
const (
	// MethodTransferStart: API → source agent (cast to agent.<region>): take
	// the transfer. The agent acks once it has accepted it.
	MethodTransferStart = "transfer.start"
	// MethodTransferCancel: API → the agent holding the transfer (cast to
	// agent.<region>.<host>).
	MethodTransferCancel = "transfer.cancel"
	// MethodTransferPrepare: source agent → destination agent (call): open or
	// create the destination image, issue the ticket, report the checkpoint.
	MethodTransferPrepare = "transfer.prepare"
	// MethodTransferFinish: source agent → destination agent (call): verify
	// the whole-image digest, snapshot, end the session.
	MethodTransferFinish = "transfer.finish"
	// MethodAgentStatus: agent → API (cast to ferry.status): accepted,
	// progress, completed and error events of a transfer.
	MethodAgentStatus = "agent.status"
	// MethodAgentHeartbeat: agent → API (cast to ferry.status).
	MethodAgentHeartbeat = "agent.heartbeat"
)

// Target is a routing key on Ferry's topic exchange; the queue of the same
// name is bound to it.
type Target string

// StatusTarget is where agents send status events and heartbeats.
const StatusTarget Target = "ferry.status"

// AgentTarget is the shared queue of a region's agents (competing consumers).
func AgentTarget(region string) Target { return Target("agent." + region) }

// AgentHostTarget is the queue of one agent.
func AgentHostTarget(region, host string) Target { return Target("agent." + region + "." + host) }

// Caster sends one-way messages. A nil error means the broker has queued the
// message (confirmed, persistent): delivery is at-least-once, so handlers
// are idempotent.
type Caster interface {
	Cast(ctx context.Context, target Target, method string, body any) error
}

// Caller sends a request and waits for its reply until ctx is done. A
// handler's error comes back as a *RemoteError (errors.Is(err,
// rpc.ErrNotFound), …); reply, when not nil, receives the decoded body.
type Caller interface {
	Call(ctx context.Context, target Target, method string, body any, reply any) error
}

// Handler handles one message. ctx carries the envelope's request id
// (RequestIDFrom). For a call, reply is sent back (or err as a RemoteError);
// for a cast reply is ignored. Returning nil acks the message; an error
// marked Temporary requeues it; any other error dead-letters a cast (and is
// the reply of a call). A handler must return quickly: long work goes to a
// goroutine of its own once accepted (see rpc/amqp).
type Handler func(ctx context.Context, env Envelope) (reply any, err error)

// Mux dispatches by method. The zero value is ready to use; register all
// methods before serving.
type Mux struct {
	handlers map[string]Handler
}

// Handle registers h for method; it panics on an empty method, a nil handler
// or a duplicate, as http.ServeMux does.
func (m *Mux) Handle(method string, h Handler) {
	if method == "" || h == nil {
		panic("rpc: Mux.Handle with an empty method or a nil handler")
	}
	if _, dup := m.handlers[method]; dup {
		panic("rpc: Mux.Handle: duplicate method " + method)
	}
	if m.handlers == nil {
		m.handlers = map[string]Handler{}
	}
	m.handlers[method] = h
}

// Methods lists the registered methods, sorted.
func (m *Mux) Methods() []string {
	var ms []string
	for k := range m.handlers {
		ms = append(ms, k)
	}
	sort.Strings(ms)
	return ms
}

// Serve is a Handler: it calls the handler of env.Method, or returns
// ErrUnknownMethod (permanent: a cast is dead-lettered).
func (m *Mux) Serve(ctx context.Context, env Envelope) (any, error) {
	h, ok := m.handlers[env.Method]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownMethod, env.Method)
	}
	return h(ctx, env)
}

type requestIDKey struct{}

// WithRequestID returns ctx carrying the request id; it is written into the
// envelopes sent with ctx and given to handlers.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

type senderKey struct{}

// WithSender returns ctx carrying the broker user that published the
// message being handled: RabbitMQ checks a message's user_id against the
// user of the connection that published it, so the sender cannot be
// forged by another broker user.
func WithSender(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, senderKey{}, user)
}

// SenderFrom is the broker user of the message being handled ("" when the
// message carried none).
func SenderFrom(ctx context.Context) string {
	u, _ := ctx.Value(senderKey{}).(string)
	return u
}

// RequestIDFrom returns the request id carried by ctx, or "".
func RequestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// NewRequestID returns an OpenStack-style request id: "req-" and a random
// (version 4) UUID.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("req-%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
