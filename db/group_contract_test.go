package db

// The consistency-group part of the store contract (run by
// runStoreContract on every backend).

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
)

func newTestGroup(project string, images ...string) (*ReplicationGroup, []*Replication) {
	g := &ReplicationGroup{Name: "grp", ProjectID: project, UserID: "user-" + project,
		SourceRegion: "RegionOne", DestRegion: "RegionTwo", DestPool: "volumes",
		IntervalSeconds: 60, RPOSeconds: 300, KeepLast: 2}
	var ms []*Replication
	for _, im := range images {
		ms = append(ms, newTestReplication(project, im))
	}
	return g, ms
}

// Create, read, list, update, pause, resume and delete a group: its members
// follow it, a member's image cannot be in a second replication, members
// are never due on their own.
func contractGroupLifecycle(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	g, ms := newTestGroup("p1", "volume-a", "volume-b", "volume-c")
	if err := d.CreateGroup(ctx, g, ms, WithRequestID("req-g")); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	got, err := d.GetGroup(ctx, g.ID, ProjectScope("p1"))
	if err != nil || got.Status != ReplicationActive || got.KeepLast != 2 || got.LastCycleID != "" {
		t.Fatalf("GetGroup: %+v %v", got, err)
	}
	if _, err := d.GetGroup(ctx, g.ID, ProjectScope("p2")); !errors.Is(err, ErrNotFound) {
		t.Errorf("another project's GetGroup: %v", err)
	}
	members, err := d.GroupMembers(ctx, g.ID)
	if err != nil || len(members) != 3 {
		t.Fatalf("GroupMembers: %d %v", len(members), err)
	}
	for _, m := range members {
		if m.GroupID == nil || *m.GroupID != g.ID || m.KeepLast != 2 || m.IntervalSeconds != 60 || m.Status != ReplicationActive {
			t.Errorf("member %+v", m)
		}
	}
	// The same image again, alone or in another group: conflict, and
	// nothing of the second group is left.
	g2, ms2 := newTestGroup("p1", "volume-d", "volume-b")
	if err := d.CreateGroup(ctx, g2, ms2); !errors.Is(err, ErrConflict) {
		t.Errorf("a group with a replicated image: %v", err)
	}
	if _, err := d.GetGroup(ctx, g2.ID, AllProjectsScope()); !errors.Is(err, ErrNotFound) {
		t.Errorf("the refused group was stored: %v", err)
	}
	if err := d.CreateReplication(ctx, newTestReplication("p1", "volume-a")); !errors.Is(err, ErrConflict) {
		t.Errorf("a replication of a member's image: %v", err)
	}
	g3, ms3 := newTestGroup("p1", "volume-x", "volume-x")
	if err := d.CreateGroup(ctx, g3, ms3); !errors.Is(err, ErrConflict) {
		t.Errorf("one image twice: %v", err)
	}
	g4, ms4 := newTestGroup("p1", "volume-y")
	ms4[0].ProjectID = "p2"
	if err := d.CreateGroup(ctx, g4, ms4); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a member of another project: %v", err)
	}
	if err := d.CreateGroup(ctx, &ReplicationGroup{ProjectID: "p1"}, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("no members: %v", err)
	}
	// Members are never due alone; the group is.
	clock.Advance(time.Hour)
	due, err := d.DueReplications(ctx, clock.Peek(), 0)
	if err != nil || len(due) != 0 {
		t.Errorf("DueReplications lists %d members (%v)", len(due), err)
	}
	if s, _, err := d.StartCycle(ctx, members[0].ID, clock.Peek(), clock.Peek().Add(time.Minute), cycleTransfer(&members[0]), startMsg); err != nil || s != nil {
		t.Errorf("StartCycle of a member: %+v %v", s, err)
	}
	dg, err := d.DueGroups(ctx, clock.Peek(), 0)
	if err != nil || len(dg) != 1 || dg[0].ID != g.ID {
		t.Errorf("DueGroups: %+v %v", dg, err)
	}
	// List with a marker.
	gb, msb := newTestGroup("p1", "volume-e")
	clock.Advance(time.Second)
	if err := d.CreateGroup(ctx, gb, msb); err != nil {
		t.Fatal(err)
	}
	page, more, err := d.ListGroups(ctx, ListOpts{Scope: ProjectScope("p1"), Limit: 1})
	if err != nil || len(page) != 1 || !more || page[0].ID != gb.ID {
		t.Fatalf("ListGroups page 1: %+v %t %v", page, more, err)
	}
	page, more, err = d.ListGroups(ctx, ListOpts{Scope: ProjectScope("p1"), Limit: 1, Marker: gb.ID})
	if err != nil || len(page) != 1 || more || page[0].ID != g.ID {
		t.Fatalf("ListGroups page 2: %+v %t %v", page, more, err)
	}
	// Update: the members follow the schedule, not the name.
	name, keep, iv := "renamed", 5, 120
	up, err := d.UpdateGroup(ctx, g.ID, ProjectScope("p1"), ReplicationFields{Name: &name, KeepLast: &keep, IntervalSeconds: &iv}, ReplicationEventInput{})
	if err != nil || up.Name != name || up.KeepLast != 5 || up.IntervalSeconds != 120 {
		t.Fatalf("UpdateGroup: %+v %v", up, err)
	}
	bad := 0
	if _, err := d.UpdateGroup(ctx, g.ID, ProjectScope("p1"), ReplicationFields{KeepLast: &bad}, ReplicationEventInput{}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("keep_last 0: %v", err)
	}
	for _, m := range mustMembers(t, d, g.ID) {
		if m.KeepLast != 5 || m.IntervalSeconds != 120 || m.Name == name {
			t.Errorf("member after the update: %+v", m)
		}
	}
	// Pause and resume.
	if _, err := d.SetGroupStatus(ctx, g.ID, ProjectScope("p1"), ReplicationPaused, nil, ReplicationEventInput{}); err != nil {
		t.Fatalf("pause: %v", err)
	}
	for _, m := range mustMembers(t, d, g.ID) {
		if m.Status != ReplicationPaused {
			t.Errorf("member not paused: %s", m.Status)
		}
	}
	if dg, _ := d.DueGroups(ctx, clock.Peek(), 0); slices.ContainsFunc(dg, func(x ReplicationGroup) bool { return x.ID == g.ID }) {
		t.Error("a paused group is due")
	}
	if _, err := d.SetGroupStatus(ctx, g.ID, ProjectScope("p1"), ReplicationActive, []ReplicationStatus{ReplicationPaused}, ReplicationEventInput{}); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if _, err := d.SetGroupStatus(ctx, g.ID, ProjectScope("p1"), ReplicationActive, []ReplicationStatus{ReplicationPaused}, ReplicationEventInput{}); !errors.Is(err, ErrInvalidTransition) {
		t.Errorf("resume of an active group: %v", err)
	}
	// Delete: every member deleting, with its clean-up; the image is free
	// again; the rows go once the members' rows are gone.
	var cleaned []string
	del, err := d.DeleteGroup(ctx, g.ID, ProjectScope("p1"), false, func(r *Replication, _ []ReplicationPoint) ([]*OutboxMessage, error) {
		cleaned = append(cleaned, r.ID)
		return []*OutboxMessage{{Exchange: "ferry", RoutingKey: "agent.RegionOne", Payload: `{"method":"replication.cleanup"}`}}, nil
	})
	if err != nil || del.Status != ReplicationDeleting || len(cleaned) != 3 {
		t.Fatalf("DeleteGroup: %+v %v, cleaned %v", del, err, cleaned)
	}
	if _, err := d.DeleteGroup(ctx, g.ID, ProjectScope("p1"), false, nil); !errors.Is(err, ErrInvalidTransition) {
		t.Errorf("a second delete: %v", err)
	}
	if err := d.FinishDeleteGroup(ctx, g.ID); !errors.Is(err, ErrConflict) {
		t.Errorf("FinishDeleteGroup with members left: %v", err)
	}
	for _, m := range mustMembers(t, d, g.ID) {
		if m.Status != ReplicationDeleting || m.SourceKey != nil {
			t.Errorf("member after the delete: %s", m.Status)
		}
		if err := d.FinishDeleteReplication(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.FinishDeleteGroup(ctx, g.ID); err != nil {
		t.Fatalf("FinishDeleteGroup: %v", err)
	}
	if _, err := d.GetGroup(ctx, g.ID, AllProjectsScope()); !errors.Is(err, ErrNotFound) {
		t.Errorf("group after FinishDeleteGroup: %v", err)
	}
	if err := d.CreateReplication(ctx, newTestReplication("p1", "volume-a")); err != nil {
		t.Errorf("the image of a deleted member: %v", err)
	}
}

func mustMembers(t *testing.T, d *DB, id string) []Replication {
	t.Helper()
	ms, err := d.GroupMembers(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// startGroupCycle starts group g's due cycle with a transfer id per member.
func startGroupCycle(t *testing.T, d *DB, g *ReplicationGroup, now time.Time) (*GroupCycle, []GroupCycleMember, bool) {
	t.Helper()
	var ms []GroupCycleMember
	for _, m := range mustMembers(t, d, g.ID) {
		ms = append(ms, GroupCycleMember{ReplicationID: m.ID, TransferID: uuid.NewString(), Retain: []string{"x"}})
	}
	c, skipped, err := d.StartGroupCycle(testCtx(t), g.ID, now, now.Add(time.Minute), &GroupCycle{}, ms)
	if err != nil {
		t.Fatalf("StartGroupCycle: %v", err)
	}
	return c, ms, skipped
}

// memberTransfers builds the cycle transfers of ms.
func memberTransfers(t *testing.T, d *DB, ms []GroupCycleMember) []*Transfer {
	var ts []*Transfer
	for _, m := range ms {
		r := mustGetReplication(t, d, m.ReplicationID)
		tr := cycleTransfer(r)
		tr.ID, tr.ReplicationID = m.TransferID, r.ID
		ts = append(ts, tr)
	}
	return ts
}

// A group cycle: snapshotting, its transfers started once, a skip while
// it runs, completed into a point only when all members completed; a
// failed member leaves no group point; retention of a member's part
// removes the group point.
func contractGroupCycles(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	g, ms := newTestGroup("p1", "volume-a", "volume-b")
	if err := d.CreateGroup(ctx, g, ms); err != nil {
		t.Fatal(err)
	}
	now := clock.Peek()
	c, members, skipped := startGroupCycle(t, d, g, now)
	if c == nil || skipped || c.Status != GroupCycleSnapshotting || len(c.Members()) != 2 {
		t.Fatalf("first cycle: %+v skipped %t", c, skipped)
	}
	// Not due again before next_run_at; due then, and skipped while the
	// cycle runs.
	if again, _, _ := startGroupCycle(t, d, g, now); again != nil {
		t.Error("a second start at the same time")
	}
	if _, _, err := d.StartGroupCycle(ctx, g.ID, now, now.Add(time.Minute), &GroupCycle{}, members[:1]); err != nil {
		t.Errorf("a start not due: %v", err)
	}
	un, err := d.UnfinishedGroupCycles(ctx, 0)
	if err != nil || len(un) != 1 || un[0].ID != c.ID {
		t.Fatalf("UnfinishedGroupCycles: %+v %v", un, err)
	}
	ts := memberTransfers(t, d, members)
	at := now.Add(2 * time.Second)
	if err := d.GroupCycleSnapshotted(ctx, c.ID, at, ts, startMsg); err != nil {
		t.Fatalf("GroupCycleSnapshotted: %v", err)
	}
	if err := d.GroupCycleSnapshotted(ctx, c.ID, at, memberTransfers(t, d, members), startMsg); err != nil {
		t.Errorf("a repeated GroupCycleSnapshotted: %v", err)
	}
	for _, m := range members {
		r := mustGetReplication(t, d, m.ReplicationID)
		if r.LastTransferID != m.TransferID {
			t.Errorf("member %s last transfer %s, want %s", r.ID, r.LastTransferID, m.TransferID)
		}
	}
	c2, _, skipped := startGroupCycle(t, d, g, now.Add(time.Minute))
	if c2 != nil || !skipped {
		t.Errorf("a start while the cycle runs: %+v skipped %t", c2, skipped)
	}
	// One member done: no point yet. Both: a point.
	runCycle(t, d, ts[0], 10, &CycleOutcome{SnapshotAt: at})
	if pts, err := d.GroupPoints(ctx, g.ID); err != nil || len(pts) != 0 {
		t.Errorf("points with one member done: %d %v", len(pts), err)
	}
	runCycle(t, d, ts[1], 10, &CycleOutcome{SnapshotAt: at})
	if err := d.FinishGroupCycle(ctx, c.ID, GroupCycleCompleted, ""); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishGroupCycle(ctx, c.ID, GroupCycleError, "late"); err != nil {
		t.Errorf("a finish of a finished cycle: %v", err)
	}
	pts, err := d.GroupPoints(ctx, g.ID)
	if err != nil || len(pts) != 1 || pts[0].ID != c.ID {
		t.Fatalf("points: %+v %v", pts, err)
	}
	cur, _ := d.GetGroup(ctx, g.ID, AllProjectsScope())
	if cur.PointsCount != 1 || cur.CyclesCompleted != 1 || cur.LastSyncAt == nil || !cur.LastSyncAt.Equal(dbTime(at)) || cur.LastCycleID != c.ID {
		t.Errorf("group after its first point: %+v", cur)
	}
	// A second cycle whose second member fails: no new point, the error
	// is the group's.
	c3, m3, _ := startGroupCycle(t, d, g, now.Add(2*time.Minute))
	if c3 == nil {
		t.Fatal("no second cycle")
	}
	ts3 := memberTransfers(t, d, m3)
	if err := d.GroupCycleSnapshotted(ctx, c3.ID, now.Add(2*time.Minute), ts3, startMsg); err != nil {
		t.Fatal(err)
	}
	runCycle(t, d, ts3[0], 10, nil)
	if err := d.FinishGroupCycle(ctx, c3.ID, GroupCycleError, "member b failed"); err != nil {
		t.Fatal(err)
	}
	pts, _ = d.GroupPoints(ctx, g.ID)
	cur, _ = d.GetGroup(ctx, g.ID, AllProjectsScope())
	if len(pts) != 1 || cur.CyclesFailed != 1 || cur.LastError == nil || *cur.LastError != "member b failed" || cur.PointsCount != 1 {
		t.Errorf("after a failed cycle: %d points, group %+v", len(pts), cur)
	}
	if err := d.GroupCycleSnapshotted(ctx, c3.ID, now, ts3, startMsg); !errors.Is(err, ErrConflict) {
		t.Errorf("GroupCycleSnapshotted of an ended cycle: %v", err)
	}
	// Retention removed the first point's part on member a: the group
	// point is gone.
	if err := d.gorm.Where("replication_id = ? AND name = ?", members[0].ReplicationID, members[0].Point()).Delete(&ReplicationPoint{}).Error; err != nil {
		t.Fatal(err)
	}
	if pts, _ := d.GroupPoints(ctx, g.ID); len(pts) != 0 {
		t.Errorf("a point with a member's part gone: %+v", pts)
	}
	if _, err := d.GroupPoints(ctx, uuid.NewString()); !errors.Is(err, ErrNotFound) {
		t.Errorf("points of an unknown group: %v", err)
	}
	// A cycle still snapshotting when the group is deleted: its snapshots
	// are in the members' clean-up and it never starts.
	c4, m4, _ := startGroupCycle(t, d, g, now.Add(3*time.Minute))
	if c4 == nil {
		t.Fatal("no fourth cycle")
	}
	var names []string
	if _, err := d.DeleteGroup(ctx, g.ID, AllProjectsScope(), false, func(r *Replication, ps []ReplicationPoint) ([]*OutboxMessage, error) {
		for _, p := range ps {
			names = append(names, p.Name)
		}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, m := range m4 {
		if !slices.Contains(names, m.Point()) {
			t.Errorf("the pending snapshot %s is not in the clean-up %v", m.Point(), names)
		}
	}
	if err := d.GroupCycleSnapshotted(ctx, c4.ID, now, memberTransfers(t, d, m4), startMsg); !errors.Is(err, ErrConflict) {
		t.Errorf("GroupCycleSnapshotted after the delete: %v", err)
	}
}
