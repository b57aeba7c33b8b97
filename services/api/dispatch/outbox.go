// Package dispatch connects ferry-api's database to the agents: the outbox
// publisher casts the messages written with a transfer (transfer.start) to
// the broker, and the status handler applies the agents' reports (queue
// ferry.status) to the transfer rows.
//
// # Outbox rows
//
// A row built by NewOutboxMessage keeps the routing key (the rpc.Target) in
// RoutingKey, Exchange (informational, the Caster uses its own) in Exchange,
// and {"method", "request_id", "body"} as JSON in Payload.
//
// # Status reports → transitions
//
// Every step is one legal transition of db's state machine, made with the
// report's epoch (ExpectEpoch) and the status it was read in (ExpectFrom):
//
//	accepted   queued → accepted (agent host recorded)
//	progress   up to transferring (via accepted and preparing as needed),
//	           then UpdateProgress (bytes done, total, rate)
//	completed  up to verifying, then verifying → completed with bytes,
//	           digest, resolved mode and snapshot; cancelling → cancelled
//	           (the copy ended before the cancel reached the agent)
//	error      any non-terminal status → error with the agent's message
//	cancelled  queued/cancelling → cancelled; accepted … verifying →
//	           cancelling → cancelled; finalizing → error
//
// A report for a transfer already in or past the target is a no-op.
package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/google/uuid"
)

// Exchange is recorded in the Exchange column of the outbox rows built
// here. It is informational: the Caster publishes on its own exchange.
const Exchange = "ferry"

// storedMessage is an outbox row's Payload: what the publisher needs to
// cast the message again later (the routing key is the row's RoutingKey).
type storedMessage struct {
	Method    string          `json:"method"`
	RequestID string          `json:"request_id,omitempty"`
	Body      json.RawMessage `json:"body,omitempty"`
}

// NewOutboxMessage builds an outbox row that, once published, casts method
// with body to target. requestID, when not empty, is carried into the
// message's envelope so that the agent's logs match the API request.
func NewOutboxMessage(requestID string, target rpc.Target, method string, body any) (*db.OutboxMessage, error) {
	if target == "" || method == "" {
		return nil, errors.New("dispatch: outbox message needs a target and a method")
	}
	if len(requestID) > db.MaxRequestIDLength {
		requestID = ""
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("dispatch: body of %s: %w", method, err)
	}
	payload, err := json.Marshal(storedMessage{Method: method, RequestID: requestID, Body: raw})
	if err != nil {
		return nil, fmt.Errorf("dispatch: payload of %s: %w", method, err)
	}
	return &db.OutboxMessage{Exchange: Exchange, RoutingKey: string(target), Payload: string(payload)}, nil
}

// NewStartMessage builds the transfer.start outbox row of t, cast to its
// source region's agents (rpc.AgentTarget). Call it before
// db.CreateTransfer(ctx, t, msg): a t without an id is given a new UUID
// here so that the message carries it, and epoch 0 (a transfer not yet
// created) is sent as 1, the epoch CreateTransfer sets.
func NewStartMessage(t *db.Transfer) (*db.OutboxMessage, error) {
	return NewStartMessageWithRequestID(t, "")
}

// NewStartMessageWithRequestID is NewStartMessage carrying the API request
// id into the message.
func NewStartMessageWithRequestID(t *db.Transfer, requestID string) (*db.OutboxMessage, error) {
	if t == nil {
		return nil, errors.New("dispatch: start message of a nil transfer")
	}
	if t.SourceRegion == "" {
		return nil, fmt.Errorf("dispatch: start message of transfer %s: no source region", t.ID)
	}
	if t.ID == "" {
		t.ID = uuid.NewString()
	}
	epoch := t.Epoch
	if epoch == 0 {
		epoch = 1
	}
	mode := t.Mode
	if mode == "" {
		mode = db.ModeAuto
	}
	body := rpc.TransferStart{
		TransferID: t.ID,
		ProjectID:  t.ProjectID,
		Mode:       string(mode),
		Source: rpc.Location{
			Region: t.SourceRegion, Pool: t.SourcePool, Image: t.SourceImage, Snapshot: t.SourceSnapshot,
		},
		Destination: rpc.Location{
			Region: t.DestRegion, Pool: t.DestPool, Image: t.DestImage, Snapshot: t.DestSnapshot,
		},
		Epoch:     epoch,
		Ephemeral: Ephemeral(t),
	}
	if t.ReplicationID != "" {
		spec, err := ParseCycleSpec(t.CinderSpec)
		if err != nil {
			// Without its retention the destination would keep only the
			// new snapshot: better no start than lost points.
			return nil, fmt.Errorf("dispatch: start message of cycle %s: %w", t.ID, err)
		}
		body.ReplicationID, body.Retain, body.BandwidthLimit = t.ReplicationID, spec.Retain, spec.BandwidthLimit
	}
	return NewOutboxMessage(requestID, rpc.AgentTarget(t.SourceRegion), rpc.MethodTransferStart, body)
}

// Ephemeral reports whether t's copy is handed over once finished: a
// Cinder volume's copy becomes a new Cinder volume, so no base snapshot is
// kept for a next incremental on either side. A replication cycle of a
// volume keeps its bases: the next cycle is an incremental.
func Ephemeral(t *db.Transfer) bool {
	return t.SourceVolumeID != "" && t.ReplicationID == ""
}

// NewSettleMessage is the outbox row of t's transfer.settle, cast to its
// source region's agents once ferry-api completed t from the destination's
// state (see rpc.MethodTransferSettle).
func NewSettleMessage(t *db.Transfer) (*db.OutboxMessage, error) {
	return NewOutboxMessage("", rpc.AgentTarget(t.SourceRegion), rpc.MethodTransferSettle, rpc.TransferSettle{
		TransferID: t.ID, Epoch: t.Epoch, Ephemeral: Ephemeral(t),
		Source: rpc.Location{Region: t.SourceRegion, Pool: t.SourcePool, Image: t.SourceImage, Snapshot: t.SourceSnapshot},
	})
}

// CycleSpec is what a replication cycle's start carries beyond the
// transfer's columns: the destination points to keep and the bandwidth
// limit, as the scheduler chose them when it started the cycle. It is kept
// as JSON in the cycle's cinder_spec (a cycle registers nothing with
// Cinder), so that a re-dispatched start carries the same ones.
type CycleSpec struct {
	Kind           string   `json:"kind"` // "replication_cycle"
	Retain         []string `json:"retain"`
	BandwidthLimit int64    `json:"bandwidth_limit,omitempty"`
}

// CycleSpecKind is CycleSpec.Kind.
const CycleSpecKind = "replication_cycle"

// Marshal returns the spec as the JSON kept in the cycle transfer.
func (c CycleSpec) Marshal() *string {
	c.Kind = CycleSpecKind
	if c.Retain == nil {
		c.Retain = []string{}
	}
	b, _ := json.Marshal(c)
	s := string(b)
	return &s
}

// ParseCycleSpec reads a cycle transfer's cinder_spec.
func ParseCycleSpec(s *string) (CycleSpec, error) {
	var c CycleSpec
	if s == nil {
		return c, errors.New("no cycle spec (retention) recorded")
	}
	if err := json.Unmarshal([]byte(*s), &c); err != nil || c.Kind != CycleSpecKind {
		return c, fmt.Errorf("cinder_spec is not a replication cycle spec: %q", *s)
	}
	return c, nil
}

// decodeOutbox returns the target, method, request id and body of a row.
func decodeOutbox(m *db.OutboxMessage) (rpc.Target, storedMessage, error) {
	var sm storedMessage
	if err := json.Unmarshal([]byte(m.Payload), &sm); err != nil {
		return "", sm, fmt.Errorf("outbox message %d: undecodable payload: %w", m.ID, err)
	}
	if m.RoutingKey == "" || sm.Method == "" {
		return "", sm, fmt.Errorf("outbox message %d: no routing key or method", m.ID)
	}
	return rpc.Target(m.RoutingKey), sm, nil
}

// NewCancelMessage builds the transfer.cancel of transfer t to the agent
// that accepted it (nil when none has: the status consumer cancels on the
// agent's "accepted").
func NewCancelMessage(requestID string, t *db.Transfer) (*db.OutboxMessage, error) {
	if t.Agent == nil {
		return nil, nil
	}
	return NewOutboxMessage(requestID, rpc.AgentHostTarget(t.SourceRegion, *t.Agent),
		rpc.MethodTransferCancel, rpc.TransferCancel{TransferID: t.ID, Epoch: t.Epoch})
}

// CancelRunning stops transfer id unless it is finished, cancelling or
// finalizing already: a queued one is cancelled at once (with end's
// transfer.end, when end is not nil), a running one goes to cancelling
// with a transfer.cancel to its agent. It reports whether it changed it.
func CancelRunning(ctx context.Context, d *db.DB, id, why, requestID string, end EndNotifier) (bool, error) {
	t, err := d.GetTransfer(ctx, id, db.AllProjectsScope())
	if err != nil {
		return false, err
	}
	if db.IsTerminal(t.Status) || t.Status == db.StatusCancelling || t.Status == db.StatusFinalizing {
		return false, nil
	}
	opts := db.TransitionOpts{RequestID: requestID, Message: why, ExpectFrom: []db.Status{t.Status}}
	to := db.StatusCancelling
	if t.Status == db.StatusQueued {
		to = db.StatusCancelled
		opts.Outbox = end.For(to)
	} else {
		opts.Outbox = func(nt *db.Transfer) (*db.OutboxMessage, error) { return NewCancelMessage(requestID, nt) }
	}
	if _, err := d.TransitionTransfer(ctx, t.ID, to, opts); err != nil {
		return false, err
	}
	return true, nil
}
