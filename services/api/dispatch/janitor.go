package dispatch

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
)

// Janitor is ferry-api's garbage collector: once a failed or cancelled
// transfer's grace is over (kept that long for a retry, which resumes from
// what it left), it sends transfer.cleanup to the agents of the transfer's
// source and destination regions, written to the outbox with the mark that
// it was sent (db.MarkCleaned), so each transfer is cleaned once per
// failure. The agents remove only what that transfer left (see
// rpc.MethodTransferCleanup). A retry after the clean-up starts over.
type Janitor struct {
	DB *db.DB
	// Grace is [api] cleanup_grace: how long after it ended a failed or
	// cancelled transfer's leftovers are kept. Zero or less disables the
	// janitor.
	Grace time.Duration
	// Interval between sweeps (default Grace/4, within 10 s .. 5 min).
	Interval time.Duration
	// Publish wakes the outbox publisher (may be nil).
	Publish func()
	Log     *slog.Logger
}

// janitorBatch bounds the transfers one sweep marks.
const janitorBatch = 100

// Run sweeps until ctx ends.
func (j *Janitor) Run(ctx context.Context) error {
	if j.Grace <= 0 {
		<-ctx.Done()
		return nil
	}
	iv := j.Interval
	if iv <= 0 {
		iv = min(max(j.Grace/4, 10*time.Second), 5*time.Minute)
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		if _, err := j.Sweep(ctx); err != nil && ctx.Err() == nil {
			j.log().Warn("clean-up sweep failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (j *Janitor) log() *slog.Logger {
	if j.Log == nil {
		return slog.Default()
	}
	return j.Log
}

// Sweep sends the clean-up of every transfer whose grace is over; it
// returns how many it sent.
func (j *Janitor) Sweep(ctx context.Context) (int, error) {
	list, err := j.DB.ListCleanable(ctx, j.DB.Now().Add(-j.Grace), janitorBatch)
	if err != nil {
		return 0, err
	}
	sent := 0
	var errs []error
	for i := range list {
		t := &list[i]
		msgs, err := CleanupMessages(t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = j.DB.MarkCleaned(ctx, t.ID, *t.FinishedAt, msgs...)
		if errors.Is(err, db.ErrConflict) {
			continue // retried meanwhile, or another ferry-api got there
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sent++
		j.log().Info("clean-up sent", "transfer_id", t.ID, "status", t.Status, "source_region", t.SourceRegion, "destination_region", t.DestRegion)
	}
	if sent > 0 && j.Publish != nil {
		j.Publish()
	}
	return sent, errors.Join(errs...)
}

// CleanupMessages are the outbox rows of t's clean-up: one transfer.cleanup
// per region involved.
func CleanupMessages(t *db.Transfer) ([]*db.OutboxMessage, error) {
	body := rpc.TransferCleanup{
		TransferID: t.ID, Epoch: t.Epoch,
		Source:      rpc.Location{Region: t.SourceRegion, Pool: t.SourcePool, Image: t.SourceImage, Snapshot: t.SourceSnapshot},
		Destination: rpc.Location{Region: t.DestRegion, Pool: t.DestPool, Image: t.DestImage},
	}
	regions := []string{t.SourceRegion}
	if t.DestRegion != t.SourceRegion {
		regions = append(regions, t.DestRegion)
	}
	out := make([]*db.OutboxMessage, 0, len(regions))
	for _, r := range regions {
		m, err := NewOutboxMessage("", rpc.AgentTarget(r), rpc.MethodTransferCleanup, body)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}
