package db

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// Heartbeats keep the last two running sets, ignore redelivered or
// overtaken ones of the same boot, and carry the cluster's health.
func contractServiceHeartbeats(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	t0 := clock.Peek()
	rec := func(hb Heartbeat, wantRecorded bool) *Service {
		t.Helper()
		hb.Binary, hb.Host, hb.Region, hb.Version = AgentBinary, "host-a", "RegionOne", "1.2"
		s, recorded, err := d.RecordHeartbeat(ctx, hb)
		if err != nil {
			t.Fatalf("RecordHeartbeat(%+v): %v", hb, err)
		}
		if recorded != wantRecorded {
			t.Fatalf("RecordHeartbeat(boot %s seq %d): recorded %t, want %t", hb.BootID, hb.Seq, recorded, wantRecorded)
		}
		return s
	}
	s := rec(Heartbeat{BootID: "b1", Seq: 1, Capacity: 2, Running: []string{"t1"},
		Health: &ServiceHealth{Status: "HEALTH_WARN", Checks: []HealthCheck{{Code: "OSD_NEARFULL", Severity: "HEALTH_WARN", Message: "1 nearfull osd(s)"}}, Others: 1, CheckedAt: t0.Add(-5 * time.Second)}}, true)
	if s.BootID != "b1" || s.HeartbeatSeq != 1 || s.Capacity != 2 || !slices.Equal(s.RunningIDs(), []string{"t1"}) ||
		s.PrevRunningIDs() != nil || s.PrevHeartbeatAt != nil || !s.LastHeartbeatAt.Equal(t0) || s.Topic != "agent.RegionOne.host-a" {
		t.Errorf("first heartbeat: %+v", s)
	}
	h := s.Health()
	if h == nil || h.Status != "HEALTH_WARN" || len(h.Checks) != 1 || h.Checks[0].Code != "OSD_NEARFULL" || h.Others != 1 || !h.CheckedAt.Equal(t0.Add(-5*time.Second)) {
		t.Errorf("health: %+v", h)
	}

	clock.Advance(10 * time.Second)
	s = rec(Heartbeat{BootID: "b1", Seq: 2, Capacity: 2, Running: []string{"t1", "t2"}}, true)
	if !slices.Equal(s.RunningIDs(), []string{"t1", "t2"}) || !slices.Equal(s.PrevRunningIDs(), []string{"t1"}) ||
		s.PrevBootID != "b1" || s.PrevHeartbeatAt == nil || !s.PrevHeartbeatAt.Equal(t0) || !s.LastHeartbeatAt.Equal(t0.Add(10*time.Second)) {
		t.Errorf("second heartbeat: %+v", s)
	}
	if s.Health() != nil {
		t.Errorf("a heartbeat without a probe result keeps the old one: %+v", s.Health())
	}

	// Seq 2 again (redelivered) and seq 1 (overtaken): nothing changes.
	clock.Advance(time.Second)
	for _, seq := range []int64{2, 1} {
		s = rec(Heartbeat{BootID: "b1", Seq: seq, Running: nil}, false)
		if s.HeartbeatSeq != 2 || !slices.Equal(s.RunningIDs(), []string{"t1", "t2"}) || !s.LastHeartbeatAt.Equal(t0.Add(10*time.Second)) {
			t.Errorf("stale seq %d changed the row: %+v", seq, s)
		}
	}

	// A new boot starts again at seq 1; an explicit receive time is kept.
	recv := clock.Peek().Add(-500 * time.Millisecond)
	s = rec(Heartbeat{BootID: "b2", Seq: 1, ReceivedAt: recv}, true)
	if s.BootID != "b2" || s.PrevBootID != "b1" || s.RunningIDs() != nil || !slices.Equal(s.PrevRunningIDs(), []string{"t1", "t2"}) || !s.LastHeartbeatAt.Equal(recv) {
		t.Errorf("new boot: %+v", s)
	}

	// A heartbeat without boot id (an older agent) still counts as alive.
	clock.Advance(time.Second)
	s = rec(Heartbeat{}, true)
	if s.BootID != "" || s.HeartbeatSeq != 0 || s.PrevBootID != "b2" || !s.LastHeartbeatAt.Equal(clock.Peek()) {
		t.Errorf("heartbeat without boot id: %+v", s)
	}

	for _, bad := range []Heartbeat{
		{Binary: AgentBinary, Host: "h", BootID: string(make([]byte, 65))},
		{Binary: AgentBinary, Host: "h", Seq: -1},
		{Binary: AgentBinary, Host: "h", Running: make([]string, MaxRunningPerBeat+1)},
		{Binary: AgentBinary, Host: "h", Health: &ServiceHealth{Status: string(make([]byte, 40))}},
		{Binary: AgentBinary},
	} {
		if _, _, err := d.RecordHeartbeat(ctx, bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("RecordHeartbeat(%+v): %v, want ErrInvalidArgument", bad, err)
		}
	}
}

// A queued transfer's start is published again with a new epoch, fenced
// by status and epoch, and counted since the last retry.
func contractRepublishStart(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	clock.step = time.Millisecond
	d := openSynced(t, url, WithNowFunc(clock.Now))
	tr := mustCreate(t, d, newTestTransfer("p1", "lost-start"))
	msg := func(nt *Transfer) (*OutboxMessage, error) {
		return &OutboxMessage{Exchange: "ferry", RoutingKey: "agent.RegionOne", Payload: nt.ID + "@" + string(rune('0'+nt.Epoch))}, nil
	}
	got, err := d.RepublishStart(ctx, tr.ID, 1, "start not accepted: re-published", msg)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusQueued || got.Epoch != 2 || !got.UpdatedAt.After(tr.UpdatedAt) {
		t.Errorf("after republish: %+v", got)
	}
	msgs, err := d.ClaimOutbox(ctx, "o", time.Minute, 10)
	if err != nil || len(msgs) != 1 || msgs[0].Payload != tr.ID+"@2" {
		t.Fatalf("outbox: %+v, %v", msgs, err)
	}
	evs, _ := d.ListEvents(ctx, tr.ID)
	last := evs[len(evs)-1]
	if last.Kind != EventRequeue || last.FromStatus != StatusQueued || last.ToStatus != StatusQueued || last.Message != "start not accepted: re-published" {
		t.Errorf("event %+v", last)
	}
	if _, err := d.RepublishStart(ctx, tr.ID, 1, "again", msg); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("stale epoch: %v", err)
	}
	if _, err := d.RepublishStart(ctx, tr.ID, 2, "x", func(*Transfer) (*OutboxMessage, error) { return nil, nil }); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("no message: %v", err)
	}
	if _, err := d.RepublishStart(ctx, "00000000-0000-0000-0000-000000000000", 1, "x", msg); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown: %v", err)
	}
	if n, err := d.CountRepublishes(ctx, tr.ID); err != nil || n != 1 {
		t.Errorf("count = %d, %v; want 1", n, err)
	}
	if _, err := d.RepublishStart(ctx, tr.ID, 2, "again", msg); err != nil {
		t.Fatal(err)
	}
	if n, _ := d.CountRepublishes(ctx, tr.ID); n != 2 {
		t.Errorf("count = %d, want 2", n)
	}
	// Accepted: no longer queued. A failed run and a retry restart the count.
	mustTransition(t, d, tr.ID, StatusAccepted, TransitionOpts{ExpectEpoch: 3, Fields: TransferFields{Agent: ptr("h")}})
	if _, err := d.RepublishStart(ctx, tr.ID, 3, "x", msg); !errors.Is(err, ErrInvalidTransition) {
		t.Errorf("accepted: %v", err)
	}
	mustTransition(t, d, tr.ID, StatusError, TransitionOpts{Error: "boom"})
	mustTransition(t, d, tr.ID, StatusQueued, TransitionOpts{Message: "retry"})
	if n, _ := d.CountRepublishes(ctx, tr.ID); n != 0 {
		t.Errorf("count after retry = %d, want 0", n)
	}
	if n, err := d.CountRepublishes(ctx, "00000000-0000-0000-0000-000000000000"); err != nil || n != 0 {
		t.Errorf("unknown transfer: %d, %v", n, err)
	}
}
