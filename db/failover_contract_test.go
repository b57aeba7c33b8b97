package db

// The failover part of the store contract (run by runStoreContract on
// every backend).

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

func newTestFailover(r *Replication, planned bool) *Failover {
	return &Failover{
		ReplicationID: r.ID, UserID: "user-" + r.ProjectID, RequestID: "req-fo-" + r.SourceImage,
		Planned: planned, Force: !planned, Spec: `{"name":"vm disk","bootable":true}`,
	}
}

func mustStartFailover(t *testing.T, d *DB, f *Failover, to ReplicationStatus, expectFrom ...ReplicationStatus) *Replication {
	t.Helper()
	r, err := d.StartFailover(testCtx(t), f, AllProjectsScope(), to, expectFrom, ReplicationEventInput{})
	if err != nil {
		t.Fatalf("StartFailover(%s → %s): %v", f.ReplicationID, to, err)
	}
	return r
}

func mustGetFailover(t *testing.T, d *DB, id string) *Failover {
	t.Helper()
	f, err := d.GetFailover(testCtx(t), id, AllProjectsScope())
	if err != nil {
		t.Fatalf("GetFailover(%s): %v", id, err)
	}
	return f
}

// mustCycle starts replication r's due cycle at its next_run_at and
// completes it; it returns the cycle's point.
func mustCycle(t *testing.T, d *DB, r *Replication) string {
	t.Helper()
	cur := mustGetReplication(t, d, r.ID)
	s, _, err := d.StartCycle(testCtx(t), r.ID, cur.NextRunAt, cur.NextRunAt.Add(time.Minute), cycleTransfer(cur), startMsg)
	if err != nil || s == nil {
		t.Fatalf("StartCycle: %+v, %v", s, err)
	}
	runCycle(t, d, s, 100, nil)
	return "ferry-" + s.ID
}

// A planned failover and its failback, step by step.
func contractFailoverPlanned(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	r := mustCreateReplication(t, d, newTestReplication("p1", "volume-v1"))
	orig := *r
	first := mustCycle(t, d, r)
	clock.Advance(time.Minute)
	mustCycle(t, d, r)
	// A cycle still runs when the failover is requested.
	cur := mustGetReplication(t, d, r.ID)
	running, _, err := d.StartCycle(ctx, r.ID, cur.NextRunAt, cur.NextRunAt.Add(time.Minute), cycleTransfer(cur), startMsg)
	if err != nil || running == nil {
		t.Fatalf("StartCycle: %+v, %v", running, err)
	}

	requested := clock.Peek()
	f := newTestFailover(r, true)
	f.Step = "requested"
	got, err := d.StartFailover(ctx, f, ProjectScope("p1"), ReplicationFailingOver,
		[]ReplicationStatus{ReplicationActive, ReplicationPaused, ReplicationError}, ReplicationEventInput{})
	if err != nil {
		t.Fatalf("StartFailover: %v", err)
	}
	if got.Status != ReplicationFailingOver || got.FailoverID == nil || *got.FailoverID != f.ID {
		t.Fatalf("replication after StartFailover = %+v", got)
	}
	if _, err := uuid.Parse(f.ID); err != nil {
		t.Errorf("failover id %q: %v", f.ID, err)
	}
	fo := mustGetFailover(t, d, f.ID)
	if fo.Kind != FailoverKindFailover || fo.Status != FailoverRunning || fo.ProjectID != "p1" || fo.Step != "requested" ||
		fo.FromRegion != "RegionOne" || fo.FromImage != "volume-v1" || fo.FromVolumeID != "v1" ||
		fo.ToRegion != "RegionTwo" || fo.ToImage != ReplicaImagePrefix+r.ID || fo.ToVolumeID != "" ||
		!fo.RequestedAt.Equal(requested) || fo.FinishedAt != nil || fo.Spec != f.Spec || !fo.Planned || fo.Force {
		t.Errorf("failover = %+v", fo)
	}
	if _, ok := fo.RTO(); ok {
		t.Error("a running failover has an RTO")
	}
	_, err = d.GetFailover(ctx, f.ID, ProjectScope("p2"))
	wantErr(t, err, ErrNotFound)

	// While it runs: no ordinary cycle, status change, drill, deletion or
	// second failover.
	later := cur.NextRunAt.Add(time.Hour)
	if due, err := d.DueReplications(ctx, later, 0); err != nil || len(due) != 0 {
		t.Errorf("DueReplications while failing over = %+v, %v", due, err)
	}
	if s, sk, err := d.StartCycle(ctx, r.ID, later, later.Add(time.Minute), cycleTransfer(r), startMsg); err != nil || s != nil || sk {
		t.Errorf("StartCycle while failing over = %+v, %v, %v", s, sk, err)
	}
	for _, to := range []ReplicationStatus{ReplicationPaused, ReplicationError, ReplicationActive} {
		_, err = d.SetReplicationStatus(ctx, r.ID, AllProjectsScope(), to, nil, ReplicationEventInput{})
		wantErr(t, err, ErrConflict)
	}
	_, err = d.SetReplicationStatus(ctx, r.ID, AllProjectsScope(), ReplicationFailedOver, nil, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidArgument)
	_, err = d.DeleteReplication(ctx, r.ID, AllProjectsScope(), false, nil)
	wantErr(t, err, ErrConflict)
	wantErr(t, d.CreateDrill(ctx, &Drill{ReplicationID: r.ID, Point: first}, ReplicationEventInput{}), ErrConflict)
	_, err = d.StartFailover(ctx, newTestFailover(r, false), AllProjectsScope(), ReplicationFailingOver, nil, ReplicationEventInput{})
	wantErr(t, err, ErrConflict)
	_, err = d.StartFailover(ctx, newTestFailover(r, true), AllProjectsScope(), ReplicationFailingBack, nil, ReplicationEventInput{})
	wantErr(t, err, ErrConflict)

	// The final cycle waits for the running one.
	_, err = d.StartFinalCycle(ctx, f.ID, cycleTransfer(r), startMsg)
	wantErr(t, err, ErrConflict)
	runCycle(t, d, running, 100, nil)
	final := cycleTransfer(r)
	outboxBefore := countRows(t, d, &OutboxMessage{}, "")
	st, err := d.StartFinalCycle(ctx, f.ID, final, startMsg)
	if err != nil || st == nil || st.ID != final.ID || st.ReplicationID != r.ID || st.Status != StatusQueued {
		t.Fatalf("StartFinalCycle = %+v, %v", st, err)
	}
	if countRows(t, d, &OutboxMessage{}, "") != outboxBefore+1 || mustGetReplication(t, d, r.ID).LastTransferID != final.ID ||
		mustGetFailover(t, d, f.ID).FinalTransferID != final.ID {
		t.Error("the final cycle was not recorded")
	}
	// A repeat (the runner killed after the commit) returns it.
	transfers := countRows(t, d, &Transfer{}, "")
	again, err := d.StartFinalCycle(ctx, f.ID, cycleTransfer(r), startMsg)
	if err != nil || again.ID != final.ID || countRows(t, d, &Transfer{}, "") != transfers || countRows(t, d, &OutboxMessage{}, "") != outboxBefore+1 {
		t.Fatalf("repeated StartFinalCycle = %+v, %v", again, err)
	}
	clock.Advance(time.Minute)
	runCycle(t, d, st, 100, nil)
	point := "ferry-" + final.ID

	// The runner's steps.
	step := func(f FailoverFields, ev *ReplicationEventInput) *Failover {
		t.Helper()
		got, err := d.UpdateFailover(ctx, fo.ID, f, ev)
		if err != nil {
			t.Fatalf("UpdateFailover(%+v): %v", f, err)
		}
		return got
	}
	step(FailoverFields{Step: ptr("final_cycle"), Point: ptr(point)}, nil)
	step(FailoverFields{Step: ptr("promote"), Peer: ptr(`{"promoted":true}`)}, nil)
	ledger := clock.Peek()
	step(FailoverFields{RegisterStartedAt: &ledger, ToVolumeID: ptr("vx")}, nil)
	clock.Advance(30 * time.Second)
	available := clock.Peek()
	g := step(FailoverFields{Step: ptr("register"), RegisterStartedAt: &time.Time{}, AvailableAt: &available},
		&ReplicationEventInput{Kind: RepEventUpdated, Message: "volume vx available"})
	if g.Step != "register" || g.Point != point || g.Peer != `{"promoted":true}` || g.ToVolumeID != "vx" ||
		g.RegisterStartedAt != nil || g.AvailableAt == nil || !g.AvailableAt.Equal(available) {
		t.Errorf("failover after its steps = %+v", g)
	}
	if rto, ok := g.RTO(); !ok || rto != available.Sub(requested) {
		t.Errorf("RTO = %v, %v; want %v", rto, ok, available.Sub(requested))
	}
	for _, bad := range []FailoverFields{{Step: ptr(string(make([]byte, 33)))}, {PreservedBytes: ptr(int64(-1))}, {ToVolumeID: ptr(string(make([]byte, MaxIDLength+1)))}} {
		_, err := d.UpdateFailover(ctx, fo.ID, bad, nil)
		wantErr(t, err, ErrInvalidArgument)
	}
	_, err = d.UpdateFailover(ctx, uuid.NewString(), FailoverFields{Step: ptr("x")}, nil)
	wantErr(t, err, ErrNotFound)
	step(FailoverFields{Step: ptr("demote")}, nil)

	// The flip: an unknown point changes nothing.
	flip := Flip{
		To: ReplicationFailedOver, KeepPoint: point, Step: "flip", Finish: true,
		Source: FlipSide{Region: "RegionTwo", Pool: "volumes", Image: "volume-vx", VolumeID: "vx"},
		Dest:   FlipSide{Region: "RegionOne", Pool: "volumes", Image: "volume-v1", VolumeID: "v1"},
	}
	bad := flip
	bad.KeepPoint = "ferry-unknown"
	_, err = d.FlipReplication(ctx, fo.ID, bad, ReplicationEventInput{})
	wantErr(t, err, ErrNotFound)
	bad = flip
	bad.Dest.Pool = ""
	_, err = d.FlipReplication(ctx, fo.ID, bad, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidArgument)
	if n := countRows(t, d, &ReplicationPoint{}, "replication_id = ?", r.ID); n != 4 {
		t.Fatalf("%d points before the flip, want 4", n)
	}
	pointRow := ReplicationPoint{}
	if err := d.gorm.Where("replication_id = ? AND name = ?", r.ID, point).Take(&pointRow).Error; err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	flippedAt := clock.Peek()
	got, err = d.FlipReplication(ctx, fo.ID, flip, ReplicationEventInput{RequestID: "req-flip"})
	if err != nil {
		t.Fatalf("FlipReplication: %v", err)
	}
	if got.Status != ReplicationFailedOver || got.FailoverID != nil ||
		got.SourceRegion != "RegionTwo" || got.SourceImage != "volume-vx" || got.SourceVolumeID != "vx" ||
		got.DestRegion != "RegionOne" || got.DestImage != "volume-v1" || got.DestVolumeID != "v1" ||
		got.PointsCount != 1 || got.LastSyncAt == nil || !got.LastSyncAt.Equal(pointRow.CreatedAt) ||
		!got.NextRunAt.Equal(flippedAt) || got.SourceKey == nil || *got.SourceKey == *orig.SourceKey || got.LastError != nil {
		t.Errorf("flipped replication = %+v", got)
	}
	if ps, err := d.ListPoints(ctx, r.ID); err != nil || len(ps) != 1 || ps[0].Name != point {
		t.Errorf("points after the flip = %+v, %v", ps, err)
	}
	fo = mustGetFailover(t, d, fo.ID)
	if fo.Status != FailoverDone || fo.FinishedAt == nil || fo.Step != "flip" || fo.Point != point {
		t.Errorf("failover after the flip = %+v", fo)
	}
	// Done: nothing changes it any more.
	_, err = d.UpdateFailover(ctx, fo.ID, FailoverFields{Step: ptr("x")}, nil)
	wantErr(t, err, ErrConflict)
	wantErr(t, d.FinishFailover(ctx, fo.ID, FailoverDone, "", "", ReplicationEventInput{}), ErrConflict)
	_, err = d.FlipReplication(ctx, fo.ID, flip, ReplicationEventInput{})
	wantErr(t, err, ErrConflict)
	_, err = d.StartFinalCycle(ctx, fo.ID, cycleTransfer(r), startMsg)
	wantErr(t, err, ErrConflict)

	// Failed over: reverse cycles are scheduled, from region B.
	if due, err := d.DueReplications(ctx, flippedAt, 0); err != nil || len(due) != 1 || due[0].ID != r.ID {
		t.Fatalf("DueReplications after the flip = %+v, %v", due, err)
	}
	cur = mustGetReplication(t, d, r.ID)
	rev, _, err := d.StartCycle(ctx, r.ID, cur.NextRunAt, cur.NextRunAt.Add(time.Minute), cycleTransfer(cur), startMsg)
	if err != nil || rev == nil || rev.SourceRegion != "RegionTwo" || rev.DestImage != "volume-v1" {
		t.Fatalf("reverse cycle = %+v, %v", rev, err)
	}
	clock.Advance(time.Minute)
	runCycle(t, d, rev, 10, nil)
	// No pause, resume or error from failed_over; the user's actions are
	// the failback and the deletion.
	for _, to := range []ReplicationStatus{ReplicationPaused, ReplicationActive, ReplicationError} {
		_, err = d.SetReplicationStatus(ctx, r.ID, AllProjectsScope(), to, nil, ReplicationEventInput{})
		wantErr(t, err, ErrInvalidTransition)
	}
	_, err = d.StartFailover(ctx, newTestFailover(r, true), AllProjectsScope(), ReplicationFailingOver, nil, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidTransition)

	// The failback.
	clock.Advance(time.Minute)
	fb := newTestFailover(r, true)
	fb.Kind = FailoverKindFailback
	got = mustStartFailover(t, d, fb, ReplicationFailingBack, ReplicationFailedOver)
	if got.Status != ReplicationFailingBack || got.FailoverID == nil || *got.FailoverID != fb.ID {
		t.Fatalf("replication after the failback's start = %+v", got)
	}
	fbRow := mustGetFailover(t, d, fb.ID)
	if fbRow.Kind != FailoverKindFailback || fbRow.FromImage != "volume-vx" || fbRow.FromVolumeID != "vx" ||
		fbRow.ToRegion != "RegionOne" || fbRow.ToImage != "volume-v1" || fbRow.ToVolumeID != "v1" {
		t.Errorf("failback = %+v", fbRow)
	}
	fin, err := d.StartFinalCycle(ctx, fb.ID, cycleTransfer(got), nil)
	if err != nil || fin.SourceRegion != "RegionTwo" || fin.DestRegion != "RegionOne" {
		t.Fatalf("the failback's final cycle = %+v, %v", fin, err)
	}
	runCycle(t, d, fin, 10, nil)
	back := Flip{
		To: ReplicationActive, KeepPoint: "ferry-" + fin.ID, Finish: true,
		Source: FlipSide{Region: orig.SourceRegion, Pool: orig.SourcePool, Image: orig.SourceImage, VolumeID: orig.SourceVolumeID},
		Dest:   FlipSide{Region: orig.DestRegion, Pool: orig.DestPool, Image: orig.DestImage},
	}
	got, err = d.FlipReplication(ctx, fb.ID, back, ReplicationEventInput{})
	if err != nil {
		t.Fatalf("FlipReplication back: %v", err)
	}
	if got.Status != ReplicationActive || got.FailoverID != nil || got.SourceImage != orig.SourceImage ||
		got.DestImage != orig.DestImage || got.DestVolumeID != "" || *got.SourceKey != *orig.SourceKey || got.PointsCount != 1 {
		t.Errorf("replication after the failback = %+v", got)
	}

	list, err := d.ListFailovers(ctx, r.ID)
	if err != nil || len(list) != 2 || list[0].ID != fb.ID || list[1].ID != fo.ID {
		t.Fatalf("ListFailovers = %+v, %v", list, err)
	}
	_, err = d.ListFailovers(ctx, uuid.NewString())
	wantErr(t, err, ErrNotFound)
	if running, err := d.RunningFailovers(ctx, 0); err != nil || len(running) != 0 {
		t.Errorf("RunningFailovers = %+v, %v", running, err)
	}
	kinds := repEventKinds(t, d, r.ID)
	var fk []ReplicationEventKind
	for _, k := range kinds {
		switch k {
		case RepEventFailoverStarted, RepEventFailedOver, RepEventFailbackStarted, RepEventFailedBack, RepEventFailoverFailed:
			fk = append(fk, k)
		}
	}
	if want := []ReplicationEventKind{RepEventFailoverStarted, RepEventFailedOver, RepEventFailbackStarted, RepEventFailedBack}; !slices.Equal(fk, want) {
		t.Errorf("failover events = %v, want %v", fk, want)
	}
	evs, _ := d.ListReplicationEvents(ctx, r.ID)
	for _, e := range evs {
		if e.Kind == RepEventFailoverStarted && e.RequestID != f.RequestID {
			t.Errorf("failover_started request id %q, want %q", e.RequestID, f.RequestID)
		}
		if e.Kind == RepEventFailedOver && e.RequestID != "req-flip" {
			t.Errorf("failed_over request id %q", e.RequestID)
		}
	}
	// The replication's rows go with it, its failovers included.
	if _, err := d.DeleteReplication(ctx, r.ID, AllProjectsScope(), false, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishDeleteReplication(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, d, &Failover{}, "replication_id = ?", r.ID); n != 0 {
		t.Errorf("%d failovers left after the deletion", n)
	}
}

// An unplanned failover holds the replication past its flip until region
// A's image is demoted; a failover undone before its promote, or failed.
func contractFailoverUnplannedUndo(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	r := mustCreateReplication(t, d, newTestReplication("p1", "volume-unplanned"))
	point := mustCycle(t, d, r)
	if _, err := d.SetReplicationStatus(ctx, r.ID, AllProjectsScope(), ReplicationError, nil, ReplicationEventInput{Message: "region A is down"}); err != nil {
		t.Fatal(err)
	}

	// Bad requests.
	for _, c := range []struct {
		f    *Failover
		to   ReplicationStatus
		from []ReplicationStatus
		want error
	}{
		{nil, ReplicationFailingOver, nil, ErrInvalidArgument},
		{newTestFailover(r, false), ReplicationActive, nil, ErrInvalidArgument},
		{&Failover{ReplicationID: r.ID, Kind: FailoverKindFailback}, ReplicationFailingOver, nil, ErrInvalidArgument},
		{&Failover{ReplicationID: r.ID, ID: "nope"}, ReplicationFailingOver, nil, ErrInvalidArgument},
		{&Failover{ReplicationID: r.ID, RequestedPoint: string(make([]byte, MaxNameLength+1))}, ReplicationFailingOver, nil, ErrInvalidArgument},
		{&Failover{ReplicationID: uuid.NewString()}, ReplicationFailingOver, nil, ErrNotFound},
		{newTestFailover(r, true), ReplicationFailingOver, []ReplicationStatus{ReplicationActive, ReplicationPaused}, ErrInvalidTransition},
		{newTestFailover(r, true), ReplicationFailingBack, nil, ErrInvalidTransition},
	} {
		_, err := d.StartFailover(ctx, c.f, AllProjectsScope(), c.to, c.from, ReplicationEventInput{})
		wantErr(t, err, c.want)
	}
	_, err := d.StartFailover(ctx, newTestFailover(r, false), ProjectScope("p2"), ReplicationFailingOver, nil, ReplicationEventInput{})
	wantErr(t, err, ErrNotFound)
	if n := countRows(t, d, &Failover{}, ""); n != 0 {
		t.Fatalf("%d failovers after refused requests", n)
	}

	// A cycle region A's outage left running.
	cur := mustGetReplication(t, d, r.ID)
	stale := cycleTransfer(cur)
	if _, err := d.SetReplicationStatus(ctx, r.ID, AllProjectsScope(), ReplicationActive, nil, ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	if s, _, err := d.StartCycle(ctx, r.ID, cur.NextRunAt, cur.NextRunAt.Add(time.Minute), stale, nil); err != nil || s == nil {
		t.Fatalf("StartCycle: %+v, %v", s, err)
	}
	mustTransition(t, d, stale.ID, StatusAccepted, TransitionOpts{})
	if _, err := d.SetReplicationStatus(ctx, r.ID, AllProjectsScope(), ReplicationError, nil, ReplicationEventInput{Message: "region A is down"}); err != nil {
		t.Fatal(err)
	}
	f := newTestFailover(r, false)
	f.RequestedPoint, f.Point = "latest", point
	mustStartFailover(t, d, f, ReplicationFailingOver, ReplicationActive, ReplicationPaused, ReplicationError)
	if running, err := d.RunningFailovers(ctx, 0); err != nil || len(running) != 1 || running[0].ID != f.ID || running[0].RequestedPoint != "latest" {
		t.Fatalf("RunningFailovers = %+v, %v", running, err)
	}
	// No final cycle is needed, but the flip keeps the failover running.
	got, err := d.FlipReplication(ctx, f.ID, Flip{
		To: ReplicationFailedOver, KeepPoint: point, Step: "register",
		Source: FlipSide{Region: "RegionTwo", Pool: "volumes", Image: "volume-vy", VolumeID: "vy"},
		Dest:   FlipSide{Region: "RegionOne", Pool: "volumes", Image: r.SourceImage, VolumeID: r.SourceVolumeID},
	}, ReplicationEventInput{})
	if err != nil || got.Status != ReplicationFailedOver || got.FailoverID == nil || *got.FailoverID != f.ID {
		t.Fatalf("unplanned flip = %+v, %v", got, err)
	}
	if fo := mustGetFailover(t, d, f.ID); fo.Status != FailoverRunning || fo.Step != "register" {
		t.Errorf("failover after an unfinished flip = %+v", fo)
	}
	// Held still: no reverse cycle, no failback, no deletion.
	later := clock.Peek().Add(time.Hour)
	if due, _ := d.DueReplications(ctx, later, 0); len(due) != 0 {
		t.Errorf("due while region A's demote is pending: %+v", due)
	}
	if s, sk, err := d.StartCycle(ctx, r.ID, later, later.Add(time.Minute), cycleTransfer(got), startMsg); err != nil || s != nil || sk {
		t.Errorf("StartCycle while held = %+v, %v, %v", s, sk, err)
	}
	_, err = d.StartFailover(ctx, newTestFailover(r, true), AllProjectsScope(), ReplicationFailingBack, nil, ReplicationEventInput{})
	wantErr(t, err, ErrConflict)
	_, err = d.DeleteReplication(ctx, r.ID, AllProjectsScope(), false, nil)
	wantErr(t, err, ErrConflict)
	// The stale cycle ends after the flip: no point, no count.
	before := mustGetReplication(t, d, r.ID)
	runCycle(t, d, stale, 100, nil)
	after := mustGetReplication(t, d, r.ID)
	if after.PointsCount != 1 || after.CyclesCompleted != before.CyclesCompleted || after.BytesReplicated != before.BytesReplicated {
		t.Errorf("a stale cycle changed the flipped replication: %+v", after)
	}
	if ps, _ := d.ListPoints(ctx, r.ID); len(ps) != 1 || ps[0].Name != point {
		t.Errorf("points after a stale cycle = %+v", ps)
	}
	// A second flip is refused by the machine.
	_, err = d.FlipReplication(ctx, f.ID, Flip{To: ReplicationFailedOver, KeepPoint: point,
		Source: FlipSide{Region: "a", Pool: "b", Image: "c"}, Dest: FlipSide{Region: "a", Pool: "b", Image: "d"}}, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidTransition)

	// Region A answers: its image is demoted, the divergent data preserved.
	if _, err := d.UpdateFailover(ctx, f.ID, FailoverFields{Step: ptr("demote"), Preserved: ptr("ferry-preserved-" + f.ID), PreservedBytes: ptr(int64(4096))},
		&ReplicationEventInput{Kind: RepEventPreserved, Message: "region A's data preserved as ferry-preserved-" + f.ID}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, d.FinishFailover(ctx, f.ID, FailoverRunning, "", "", ReplicationEventInput{}), ErrInvalidArgument)
	wantErr(t, d.FinishFailover(ctx, f.ID, FailoverDone, "", ReplicationFailingBack, ReplicationEventInput{}), ErrInvalidArgument)
	if err := d.FinishFailover(ctx, f.ID, FailoverDone, "", "", ReplicationEventInput{}); err != nil {
		t.Fatalf("FinishFailover: %v", err)
	}
	got = mustGetReplication(t, d, r.ID)
	fo := mustGetFailover(t, d, f.ID)
	if got.Status != ReplicationFailedOver || got.FailoverID != nil || fo.Status != FailoverDone || fo.FinishedAt == nil ||
		fo.Preserved != "ferry-preserved-"+f.ID || fo.PreservedBytes != 4096 || fo.Error != nil {
		t.Errorf("after the demote: replication %+v\nfailover %+v", got, fo)
	}
	if due, _ := d.DueReplications(ctx, later, 0); len(due) != 1 {
		t.Errorf("not due once the failover is done: %+v", due)
	}
	kinds := repEventKinds(t, d, r.ID)
	if countKind(kinds, RepEventPreserved) != 1 || countKind(kinds, RepEventFailedOver) != 2 {
		t.Errorf("events = %v", kinds)
	}
	// Deleting a failed-over replication keeps its destination: the
	// original volume.
	del, err := d.DeleteReplication(ctx, r.ID, AllProjectsScope(), false, nil)
	if err != nil || !del.KeepReplica || del.Status != ReplicationDeleting {
		t.Errorf("DeleteReplication of a failed-over replication = %+v, %v", del, err)
	}

	// Undone before its promote: active again; failed: error.
	for _, c := range []struct {
		to      ReplicationStatus
		status  FailoverStatus
		lastErr bool
	}{
		{ReplicationActive, FailoverError, false},
		{ReplicationError, FailoverError, true},
	} {
		r2 := mustCreateReplication(t, d, newTestReplication("p2", fmt.Sprintf("volume-undo-%s-%s", c.to, c.status)))
		if _, err := d.SetReplicationStatus(ctx, r2.ID, AllProjectsScope(), ReplicationPaused, nil, ReplicationEventInput{}); err != nil {
			t.Fatal(err)
		}
		f2 := newTestFailover(r2, true)
		mustStartFailover(t, d, f2, ReplicationFailingOver)
		// failing_over must be left for a status.
		wantErr(t, d.FinishFailover(ctx, f2.ID, c.status, "", "", ReplicationEventInput{}), ErrInvalidTransition)
		if err := d.FinishFailover(ctx, f2.ID, c.status, "the source volume is attached", c.to, ReplicationEventInput{RequestID: "req-undo"}); err != nil {
			t.Fatalf("FinishFailover(%s, %s): %v", c.status, c.to, err)
		}
		got := mustGetReplication(t, d, r2.ID)
		fo := mustGetFailover(t, d, f2.ID)
		if got.Status != c.to || got.FailoverID != nil || fo.Status != c.status || fo.FinishedAt == nil ||
			(got.LastError != nil) != c.lastErr || (fo.Error != nil) != (c.status == FailoverError) {
			t.Errorf("undo to %s (%s): replication %+v\nfailover %+v", c.to, c.status, got, fo)
		}
		wantKind := RepEventFailedOver
		if c.status == FailoverError {
			wantKind = RepEventFailoverFailed
		}
		if kinds := repEventKinds(t, d, r2.ID); kinds[len(kinds)-1] != wantKind {
			t.Errorf("last event %v, want %s", kinds, wantKind)
		}
		wantErr(t, d.FinishFailover(ctx, f2.ID, FailoverDone, "", "", ReplicationEventInput{}), ErrConflict)
	}
	wantErr(t, d.FinishFailover(ctx, uuid.NewString(), FailoverDone, "", "", ReplicationEventInput{}), ErrNotFound)
	_, err = d.StartFinalCycle(ctx, uuid.NewString(), cycleTransfer(r), nil)
	wantErr(t, err, ErrNotFound)
	_, err = d.StartFinalCycle(ctx, f.ID, nil, nil)
	wantErr(t, err, ErrInvalidArgument)
}

// Concurrent failover requests (two pools, as two ferry-api processes,
// and a failback among them): exactly one wins, the others are
// ErrConflict, and one failover row and event are written.
func contractFailoverConcurrentStart(t *testing.T, url string) {
	ctx := testCtx(t)
	d1 := openSynced(t, url)
	d2 := openDB(t, url)
	for round := 0; round < 3; round++ {
		r := mustCreateReplication(t, d1, newTestReplication("p1", fmt.Sprintf("volume-fo-race-%d", round)))
		const n = 8
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			won  []string
			errs []error
		)
		start := make(chan struct{})
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				d := d1
				if i%2 == 1 {
					d = d2
				}
				f := newTestFailover(r, i%3 != 0)
				<-start
				_, err := d.StartFailover(ctx, f, ProjectScope("p1"), ReplicationFailingOver,
					[]ReplicationStatus{ReplicationActive, ReplicationPaused}, ReplicationEventInput{})
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					won = append(won, f.ID)
				} else {
					errs = append(errs, err)
				}
			}(i)
		}
		close(start)
		wg.Wait()
		if len(won) != 1 {
			t.Fatalf("round %d: %d failovers won, want 1 (%v)", round, len(won), errs)
		}
		for _, err := range errs {
			if !errors.Is(err, ErrConflict) {
				t.Errorf("round %d: loser error %v, want ErrConflict", round, err)
			}
		}
		got := mustGetReplication(t, d1, r.ID)
		if got.Status != ReplicationFailingOver || got.FailoverID == nil || *got.FailoverID != won[0] {
			t.Errorf("round %d: replication %+v, winner %s", round, got, won[0])
		}
		if c := countRows(t, d1, &Failover{}, "replication_id = ?", r.ID); c != 1 {
			t.Errorf("round %d: %d failover rows, want 1", round, c)
		}
		if c := countRows(t, d1, &ReplicationEvent{}, "replication_id = ? AND kind = ?", r.ID, RepEventFailoverStarted); c != 1 {
			t.Errorf("round %d: %d failover_started events, want 1", round, c)
		}
	}
}
