package amqp

import (
	"log/slog"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Options of a Transport. Start from DefaultOptions: the zero value declares
// classic queues.
type Options struct {
	// QuorumQueues declares queues as quorum queues (replicated, the
	// recommended type since RabbitMQ 3.8); false declares classic queues.
	// DefaultOptions sets it. An existing queue of the other type is used as
	// it is, with a warning.
	QuorumQueues bool
	// Prefetch is the number of unacknowledged deliveries a consumer holds;
	// that many handlers run at once per Consume. 0 means 10.
	Prefetch int
	// Logger receives the transport's logs; nil means slog.Default().
	Logger *slog.Logger
	// Name identifies this process to the broker: connection names
	// ("ferry <Name> publish"), consumer tags, the reply queue. "" means
	// "ferry".
	Name string
	// Exchange is the topic exchange; "" means "ferry". The dead-letter
	// exchange and queue are Exchange+".dlx" and Exchange+".dead". Tests use
	// a private one.
	Exchange string
	// CallTimeout bounds a Call whose context has no deadline. 0 means 60 s
	// (oslo.messaging's rpc_response_timeout).
	CallTimeout time.Duration
	// ConfirmTimeout bounds the wait for one publisher confirm. 0 means 30 s.
	ConfirmTimeout time.Duration
	// RequeueDelay is how long a delivery whose handler returned a temporary
	// error is held before it is requeued (no hot loop). 0 means 1 s.
	RequeueDelay time.Duration
	// Passive: the topology (the exchanges, the dead-letter queue) is
	// another process's (ferry-api's): it is checked, never declared, so
	// that a broker user without configure rights on it (an agent's) can
	// connect. The transport waits, reconnecting, until it exists. The
	// queues given to Consume are declared either way.
	Passive bool
}

// DefaultOptions returns quorum queues, prefetch 10 and the default logger.
func DefaultOptions() Options {
	return Options{QuorumQueues: true, Prefetch: 10}
}

func (o Options) withDefaults() Options {
	if o.Prefetch <= 0 {
		o.Prefetch = 10
	}
	o.Prefetch = min(o.Prefetch, 65535)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Name == "" {
		o.Name = "ferry"
	}
	if o.Exchange == "" {
		o.Exchange = "ferry"
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 60 * time.Second
	}
	if o.ConfirmTimeout <= 0 {
		o.ConfirmTimeout = 30 * time.Second
	}
	if o.RequeueDelay <= 0 {
		o.RequeueDelay = time.Second
	}
	return o
}

// queueArgs are the arguments of a service queue.
func (o Options) queueArgs() amqp.Table {
	args := amqp.Table{"x-dead-letter-exchange": o.Exchange + ".dlx"}
	if o.QuorumQueues {
		args["x-queue-type"] = "quorum"
	}
	return args
}

// deadQueueArgs are the arguments of the dead-letter queue (no dead-letter
// exchange of its own).
func (o Options) deadQueueArgs() amqp.Table {
	args := amqp.Table{}
	if o.QuorumQueues {
		args["x-queue-type"] = "quorum"
	}
	return args
}
