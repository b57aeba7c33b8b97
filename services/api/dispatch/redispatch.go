package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferry-project/ferry/db"
)

// Redispatcher hands the transfers of agents that stopped heartbeating to
// the other agents of their region: a transfer an agent held in accepted,
// preparing or transferring goes back to queued (its epoch grows, so the
// old agent's late reports are refused) with a new transfer.start; the
// next agent resumes from the checkpoint in the destination image, and the
// RBD exclusive lock keeps a partitioned old agent from writing it again.
// A transfer past the copy (verifying, finalizing) cannot be resumed
// elsewhere and ends in error (retry is one request); a cancelling one
// ends cancelled, since nothing runs it any more.
type Redispatcher struct {
	DB *db.DB
	// DownAfter is [api] agent_down_time: no heartbeat for this long
	// means the agent is down.
	DownAfter time.Duration
	// Interval between sweeps (default DownAfter/4).
	Interval time.Duration
	// Kick wakes the outbox publisher (may be nil).
	Kick func()
	Log  *slog.Logger
}

// Run sweeps until ctx ends.
func (r *Redispatcher) Run(ctx context.Context) error {
	iv := r.Interval
	if iv <= 0 {
		iv = max(r.DownAfter/4, time.Second)
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		if _, err := r.Sweep(ctx); err != nil && ctx.Err() == nil {
			r.log().Warn("re-dispatch sweep failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (r *Redispatcher) log() *slog.Logger {
	if r.Log == nil {
		return slog.Default()
	}
	return r.Log
}

// Sweep handles the transfers of every agent down now; it returns how
// many transfers it moved.
func (r *Redispatcher) Sweep(ctx context.Context) (int, error) {
	svcs, err := r.DB.ListServices(ctx)
	if err != nil {
		return 0, err
	}
	now := r.DB.Now()
	moved := 0
	var errs []error
	for i := range svcs {
		s := &svcs[i]
		if s.Binary != "ferry-agent" || db.ServiceIsUp(s, now, r.DownAfter) {
			continue
		}
		n, err := r.sweepAgent(ctx, s)
		moved += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	if moved > 0 && r.Kick != nil {
		r.Kick()
	}
	return moved, errors.Join(errs...)
}

func (r *Redispatcher) sweepAgent(ctx context.Context, s *db.Service) (int, error) {
	list, _, err := r.DB.ListTransfers(ctx, db.ListOpts{
		Scope: db.AllProjectsScope(), Agent: s.Host, Limit: db.MaxListLimit,
		// Not finalizing: the agents are done then; the API registers the
		// copy with Cinder, whatever became of the agent.
		Statuses: []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying, db.StatusCancelling},
	})
	if err != nil {
		return 0, err
	}
	moved := 0
	for i := range list {
		t := &list[i]
		if t.SourceRegion != s.Region {
			continue // another region's agent of the same host name
		}
		log := r.log().With("transfer_id", t.ID, "agent", s.Host, "status", t.Status)
		why := fmt.Sprintf("agent %s down (no heartbeat since %s)", s.Host, s.LastHeartbeatAt.Format(time.RFC3339))
		var to db.Status
		switch t.Status {
		case db.StatusAccepted, db.StatusPreparing, db.StatusTransferring:
			to = db.StatusQueued
		case db.StatusCancelling:
			to = db.StatusCancelled
		default:
			to = db.StatusError
		}
		opts := db.TransitionOpts{ExpectFrom: []db.Status{t.Status}, ExpectEpoch: t.Epoch, Message: why + ": re-dispatched"}
		if to != db.StatusQueued {
			opts.Message, opts.Error = why, why
		}
		if to == db.StatusQueued {
			// The new start goes in the same transaction as the move.
			opts.Outbox = func(nt *db.Transfer) (*db.OutboxMessage, error) { return NewStartMessage(nt) }
		}
		nt, err := r.DB.TransitionTransfer(ctx, t.ID, to, opts)
		if errors.Is(err, db.ErrStaleEpoch) || errors.Is(err, db.ErrInvalidTransition) || errors.Is(err, db.ErrConflict) {
			continue // another API process, or a report, got there first
		}
		if err != nil {
			return moved, err
		}
		moved++
		if to != db.StatusQueued {
			log.Warn("transfer ended: its agent is down", "to", to)
			continue
		}
		log.Warn("transfer re-dispatched: its agent is down", "epoch", nt.Epoch)
	}
	return moved, nil
}
