package db

import (
	"errors"
	"strings"
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

// A project at its quota of transfers in progress, or of bytes in flight,
// gets ErrQuotaExceeded and nothing is created; other projects and
// finished transfers do not count.
func contractQuota(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	// Totals unknown until an agent reports them.
	newTestTransfer := func(project, name string) *Transfer {
		tr := newTestTransfer(project, name)
		tr.BytesTotal = 0
		return tr
	}
	q := Quota{Transfers: 2, BytesInFlight: 1000}
	a := mustCreate(t, d, newTestTransfer("p1", "a"))
	mustCreate(t, d, newTestTransfer("p2", "other project"))
	if err := d.CreateTransfer(ctx, newTestTransfer("p1", "b"), nil, WithQuota(q)); err != nil {
		t.Fatalf("second of two: %v", err)
	}
	err := d.CreateTransfer(ctx, newTestTransfer("p1", "c"), nil, WithQuota(q))
	if !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("third of two: %v, want ErrQuotaExceeded", err)
	}
	list, _, err := d.ListTransfers(ctx, ListOpts{Scope: ProjectScope("p1"), Limit: 10})
	if err != nil || len(list) != 2 {
		t.Fatalf("after the refusal: %d transfers, %v", len(list), err)
	}
	// a is cancelled: one slot free again.
	mustTransition(t, d, a.ID, StatusCancelled, TransitionOpts{Message: "x"})
	c := newTestTransfer("p1", "c")
	if err := d.CreateTransfer(ctx, c, nil, WithQuota(q)); err != nil {
		t.Fatalf("after a cancel: %v", err)
	}
	// Bytes: c reports 900 of 1000 bytes left; a new one of 200 is over.
	mustTransition(t, d, c.ID, StatusAccepted, TransitionOpts{Message: "x"})
	if err := d.UpdateProgress(ctx, c.ID, 100, 1000, 1); err != nil {
		t.Fatal(err)
	}
	err = d.CreateTransfer(ctx, newTestTransfer("p1", "d"), nil, WithQuota(Quota{BytesInFlight: 1000, NewBytes: 200}))
	if !errors.Is(err, ErrQuotaExceeded) {
		t.Errorf("bytes: %v, want ErrQuotaExceeded", err)
	}
	if err := d.CreateTransfer(ctx, newTestTransfer("p1", "e"), nil, WithQuota(Quota{BytesInFlight: 1000, NewBytes: 100})); err != nil {
		t.Errorf("bytes within the quota: %v", err)
	}
}

// Deleting a failed or cancelled transfer not cleaned yet writes its
// clean-up to the outbox with the delete; a completed or cleaned one
// writes none.
func contractDeleteCleanup(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	built := 0
	cleanup := func(tr *Transfer) ([]*OutboxMessage, error) {
		built++
		return []*OutboxMessage{{Exchange: "ferry", RoutingKey: "agent." + tr.SourceRegion, Payload: `{"method":"transfer.cleanup","body":{"transfer_id":"` + tr.ID + `"}}`}}, nil
	}
	failed := mustCreate(t, d, newTestTransfer("p1", "failed"))
	mustTransition(t, d, failed.ID, StatusError, TransitionOpts{Message: "x"})
	done := mustCreate(t, d, newTestTransfer("p1", "done"))
	for _, s := range []Status{StatusAccepted, StatusPreparing, StatusTransferring, StatusVerifying, StatusCompleted} {
		mustTransition(t, d, done.ID, s, TransitionOpts{Message: "x"})
	}
	cleaned := mustCreate(t, d, newTestTransfer("p1", "cleaned"))
	mustTransition(t, d, cleaned.ID, StatusCancelled, TransitionOpts{Message: "x"})
	got, err := d.GetTransfer(ctx, cleaned.ID, AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.MarkCleaned(ctx, cleaned.ID, *got.FinishedAt); err != nil {
		t.Fatal(err)
	}
	// Drain the creations' outbox rows (none here) and count after.
	for _, tr := range []*Transfer{failed, done, cleaned} {
		if err := d.DeleteTransferWith(ctx, tr.ID, ProjectScope("p1"), cleanup); err != nil {
			t.Fatalf("delete %s: %v", tr.Name, err)
		}
	}
	if built != 1 {
		t.Errorf("clean-up built for %d transfers, want 1 (the failed one)", built)
	}
	msgs, err := d.ClaimOutbox(ctx, "test", time.Minute, 10)
	if err != nil || len(msgs) != 1 || !strings.Contains(msgs[0].Payload, failed.ID) {
		t.Errorf("outbox after the deletes: %+v %v", msgs, err)
	}
}
