package db

import (
	"errors"
	"testing"
	"time"
)

// Failed and cancelled transfers become cleanable once their grace is
// over, exactly once; a retry makes a transfer cleanable again when it
// ends anew; marking writes the clean-up messages with it.
func contractCleanup(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	mk := func(to Status) *Transfer {
		t.Helper()
		tr := mustCreate(t, d, newTestTransfer("p1", "gc"))
		if to == StatusCancelled {
			if _, err := d.TransitionTransfer(ctx, tr.ID, StatusCancelled, TransitionOpts{Message: "cancel"}); err != nil {
				t.Fatal(err)
			}
		} else if to != StatusQueued {
			for _, s := range []Status{StatusAccepted, StatusPreparing, to} {
				if _, err := d.TransitionTransfer(ctx, tr.ID, s, TransitionOpts{Message: "x"}); err != nil {
					t.Fatal(err)
				}
			}
		}
		got, err := d.GetTransfer(ctx, tr.ID, AllProjectsScope())
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	failed, cancelled, running := mk(StatusError), mk(StatusCancelled), mk(StatusTransferring)
	completed := mk(StatusQueued)
	for _, s := range []Status{StatusAccepted, StatusPreparing, StatusTransferring, StatusVerifying, StatusCompleted} {
		if _, err := d.TransitionTransfer(ctx, completed.ID, s, TransitionOpts{Message: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(ts []Transfer) map[string]bool {
		m := map[string]bool{}
		for _, tr := range ts {
			m[tr.ID] = true
		}
		return m
	}
	// Within the grace: nothing.
	if got, err := d.ListCleanable(ctx, clock.Peek().Add(-time.Minute), 10); err != nil || len(got) != 0 {
		t.Fatalf("within the grace: %v %v", got, err)
	}
	clock.Advance(2 * time.Minute)
	got, err := d.ListCleanable(ctx, clock.Peek().Add(-time.Minute), 10)
	if err != nil {
		t.Fatal(err)
	}
	if m := ids(got); len(m) != 2 || !m[failed.ID] || !m[cancelled.ID] || m[running.ID] || m[completed.ID] {
		t.Fatalf("cleanable %v, want the failed and the cancelled", m)
	}
	msg := &OutboxMessage{Exchange: "ferry", RoutingKey: "agent.RegionOne", Payload: `{"method":"transfer.cleanup"}`}
	if err := d.MarkCleaned(ctx, failed.ID, *failed.FinishedAt, msg); err != nil {
		t.Fatal(err)
	}
	if err := d.MarkCleaned(ctx, failed.ID, *failed.FinishedAt); !errors.Is(err, ErrConflict) {
		t.Errorf("marking twice: %v", err)
	}
	if err := d.MarkCleaned(ctx, running.ID, clock.Peek()); !errors.Is(err, ErrConflict) {
		t.Errorf("marking a running transfer: %v", err)
	}
	pending, err := d.ClaimOutbox(ctx, "test", time.Minute, 10)
	if err != nil || len(pending) != 1 || pending[0].RoutingKey != "agent.RegionOne" {
		t.Errorf("outbox after marking: %+v %v", pending, err)
	}
	if got, _ := d.ListCleanable(ctx, clock.Peek(), 10); len(got) != 1 || got[0].ID != cancelled.ID {
		t.Errorf("after marking: %v", ids(got))
	}
	// A retry, then a new failure: cleanable again.
	if _, err := d.TransitionTransfer(ctx, failed.ID, StatusQueued, TransitionOpts{Message: "retry"}); err != nil {
		t.Fatal(err)
	}
	if err := d.MarkCleaned(ctx, failed.ID, *failed.FinishedAt); !errors.Is(err, ErrConflict) {
		t.Errorf("marking a retried transfer: %v", err)
	}
	if _, err := d.TransitionTransfer(ctx, failed.ID, StatusError, TransitionOpts{Message: "again"}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	again, err := d.ListCleanable(ctx, clock.Peek().Add(-time.Minute), 10)
	if err != nil {
		t.Fatal(err)
	}
	if m := ids(again); !m[failed.ID] {
		t.Errorf("a retried transfer that failed again is not cleanable: %v", m)
	}
}
