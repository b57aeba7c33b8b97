// Package amqp is Ferry's RabbitMQ transport, on amqp091-go: it implements
// rpc.Caster and rpc.Caller and consumes with rpc.Handler.
//
// # Topology
//
// Declared on every (re)connection, with exchange name E (Options.Exchange,
// "ferry" by default):
//
//   - E: durable topic exchange; every cast and call is published to it with
//     the target as routing key.
//   - E.dlx: durable topic exchange for dead letters; E.dead, a durable queue
//     (quorum by default) bound to it with "#", keeps them.
//   - each queue given to Consume or DeclareQueue: durable, x-queue-type
//     quorum (Options.QuorumQueues; classic otherwise), x-dead-letter-exchange
//     E.dlx, bound to E with its routing keys.
//   - E.reply.<name>.<random>: one classic, exclusive, auto-delete queue per
//     Transport for the replies of its calls; the same name is declared again
//     after a reconnection so that late replies still arrive.
//
// A Passive transport (Options.Passive: the agents') declares only its own
// queues and its reply queue: it checks that E and E.dlx exist and waits,
// reconnecting, until ferry-api has declared them. With per-region broker
// users that may configure nothing else, that is what lets it connect.
//
// Every message carries the transport's broker user as user_id, which
// RabbitMQ checks against the publishing connection's user; a handler
// reads it with rpc.SenderFrom.
//
// # Delivery guarantees
//
// Every publish (casts, calls, replies, dead letters) waits for its publisher
// confirm. Casts and calls are mandatory: a target without a queue is an
// error (rpc.ErrUnroutable), never a silent loss; a broker nack is
// rpc.ErrNacked. While the broker is unreachable, Cast and Call wait for the
// reconnection until their context expires, then fail with an error wrapping
// rpc.ErrUnavailable. A publish interrupted by a lost connection is sent again
// on the next one, so delivery is at-least-once: handlers are idempotent.
//
// Consumers ack manually: after the handler returns nil (for a call, after
// the reply is confirmed). A handler error marked rpc.Temporary requeues the
// message after Options.RequeueDelay. Any other error dead-letters a cast
// (republished to E.dlx with the reason in the x-ferry-dead-reason header,
// or, if that fails, rejected to the queue's x-dead-letter-exchange) and is
// the reply of a call. Messages that are not envelopes or are of another
// major version are dead-lettered too; a call of that kind also gets an error
// reply. A call whose caller has given up (x-ferry-deadline passed) is dropped
// unhandled.
//
// # Long work: ack early
//
// RabbitMQ closes a channel that holds an unacknowledged delivery longer than
// consumer_timeout (30 minutes by default) and redelivers the message. A
// handler therefore returns as soon as it has accepted the work: it checks
// and records what it needs, starts a goroutine with a context of its own
// (not the handler's ctx, which ends when Consume stops) and returns nil; the
// delivery is acked at once. Progress and the outcome travel as further casts
// (agent.status). A handler that cannot take the work now (at capacity)
// returns rpc.Temporary(err) so that the message goes to another consumer.
//
// # Reconnection
//
// A Transport holds two connections (publishing and consuming, so that a
// broker blocking publishers does not stall acks). Each is re-established with
// exponential backoff (100 ms to 5 s, jittered), trying the hosts of the
// transport URL in turn; the topology is declared again and every Consume
// resumes. Close drains: consumers stop taking deliveries, in-flight handlers
// finish (their context is cancelled when Close's context expires), pending
// casts and calls complete, then the connections close.
//
// Logs use log/slog with stable keys: queue, method, request_id, reason,
// target, message_id, broker.
package amqp
