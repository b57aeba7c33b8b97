package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/cinder"
)

// groupCaller answers replication.group_snapshot as the agents do.
type groupCaller struct {
	mu    sync.Mutex
	calls []rpc.GroupSnapshotRequest
	err   error
}

func (f *groupCaller) Call(_ context.Context, target rpc.Target, method string, body, reply any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if method != rpc.MethodReplicationGroupSnapshot || target != rpc.AgentTarget("RegionOne") {
		return errors.New("unexpected call " + method + " to " + string(target))
	}
	req := body.(rpc.GroupSnapshotRequest)
	if err := req.Validate(); err != nil {
		return err
	}
	f.calls = append(f.calls, req)
	if f.err != nil {
		return f.err
	}
	var rep rpc.GroupSnapshotReply
	at := t0.Add(-time.Second)
	for _, m := range req.Members {
		rep.Members = append(rep.Members, rpc.GroupSnapshotTaken{TransferID: m.TransferID, Snapshot: SnapshotPrefix + m.TransferID, SnapshotTime: &at})
	}
	b, _ := json.Marshal(rep)
	return json.Unmarshal(b, reply)
}

type attachedVolumes struct{ attached string }

func (a attachedVolumes) SetReadOnly(_ context.Context, region, project, id string, ro bool) error {
	return nil
}

func (a attachedVolumes) InspectVolume(_ context.Context, region, project, id string) (*cinder.VolumeState, error) {
	return &cinder.VolumeState{Status: map[bool]string{true: "in-use", false: "available"}[id == a.attached], Attached: id == a.attached}, nil
}

func newGroup(t *testing.T, d *db.DB, n int) *db.ReplicationGroup {
	t.Helper()
	g := &db.ReplicationGroup{Name: "g", ProjectID: "p1", UserID: "u1", SourceRegion: "RegionOne", DestRegion: "RegionTwo", DestPool: "volumes",
		IntervalSeconds: 60, RPOSeconds: 300, KeepLast: 2}
	var ms []*db.Replication
	for i := range n {
		ms = append(ms, &db.Replication{ProjectID: "p1", SourceRegion: "RegionOne", SourcePool: "volumes",
			SourceImage: "volume-" + string(rune('a'+i)), SourceVolumeID: "vol-" + string(rune('a'+i)), DestRegion: "RegionTwo", DestPool: "volumes"})
	}
	if err := d.CreateGroup(context.Background(), g, ms); err != nil {
		t.Fatal(err)
	}
	return g
}

// completeAll completes the cycle transfers of the group's running cycle
// (all but those in fail, which end in error).
func completeAll(t *testing.T, d *db.DB, c *db.GroupCycle, fail ...string) {
	t.Helper()
	ctx := context.Background()
	for _, m := range c.Members() {
		for _, to := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying} {
			if _, err := d.TransitionTransfer(ctx, m.TransferID, to, db.TransitionOpts{}); err != nil {
				t.Fatal(err)
			}
		}
		if slices.Contains(fail, m.ReplicationID) {
			e := "boom"
			if _, err := d.TransitionTransfer(ctx, m.TransferID, db.StatusError, db.TransitionOpts{Error: e}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		snap, n := m.Point(), int64(1<<20)
		if _, err := d.TransitionTransfer(ctx, m.TransferID, db.StatusCompleted, db.TransitionOpts{
			Fields: db.TransferFields{DestSnapshot: &snap, BytesTransferred: &n}, Cycle: &db.CycleOutcome{SnapshotAt: *c.SnapshotAt}}); err != nil {
			t.Fatal(err)
		}
	}
}

func lastCycle(t *testing.T, d *db.DB, g *db.ReplicationGroup) *db.GroupCycle {
	t.Helper()
	cur, err := d.GetGroup(context.Background(), g.ID, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	cs, err := d.UnfinishedGroupCycles(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range cs {
		if cs[i].ID == cur.LastCycleID {
			return &cs[i]
		}
	}
	return nil
}

// A group's cycles: one consistent snapshot per cycle naming every
// member's transfer, then the members' ordinary cycles; a point when all
// complete; retention of group points drives the members' retained
// points; a failed member leaves no point; an attached member or a failed
// snapshot ends the cycle, with the clean-up of what it may have taken.
func TestGroupRunnerCycles(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	g := newGroup(t, d, 3)
	caller := &groupCaller{}
	run := &GroupRunner{DB: d, Caller: caller, Volumes: attachedVolumes{}, Owner: "api-1", Log: quiet()}
	pass := func() {
		t.Helper()
		if err := run.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		run.Wait()
	}
	outbox(t, d) // drop the creation's rows
	for i := range 3 {
		pass()
		c := lastCycle(t, d, g)
		if c == nil || c.Status != db.GroupCycleRunning {
			t.Fatalf("cycle %d not running: %+v", i, c)
		}
		if len(caller.calls) != i+1 {
			t.Fatalf("%d group snapshots, want %d", len(caller.calls), i+1)
		}
		req := caller.calls[i]
		starts := 0
		for _, s := range outbox(t, d) {
			if s.method == rpc.MethodTransferStart {
				var st rpc.TransferStart
				if err := json.Unmarshal(s.body, &st); err != nil {
					t.Fatal(err)
				}
				if !slices.ContainsFunc(req.Members, func(m rpc.GroupSnapshotMember) bool {
					return m.TransferID == st.TransferID && m.ReplicationID == st.ReplicationID
				}) {
					t.Errorf("a start of %s that the snapshot did not name", st.TransferID)
				}
				if i == 2 && len(st.Retain) != 1 {
					t.Errorf("cycle 3 keeps %v, want the one newer point of keep_last 2", st.Retain)
				}
				starts++
			}
		}
		if starts != 3 || len(req.Members) != 3 {
			t.Fatalf("cycle %d: %d starts, %d members snapshotted", i, starts, len(req.Members))
		}
		pass() // not done yet: nothing changes
		if c2 := lastCycle(t, d, g); c2 == nil || c2.Status != db.GroupCycleRunning {
			t.Fatalf("cycle %d finished early", i)
		}
		completeAll(t, d, c)
		clk.add(61 * time.Second)
	}
	pass() // finishes the third, starts a fourth
	pts, err := d.GroupPoints(ctx, g.ID)
	if err != nil || len(pts) != 3 {
		t.Fatalf("group points: %d %v", len(pts), err)
	}
	cur, _ := d.GetGroup(ctx, g.ID, db.AllProjectsScope())
	if cur.CyclesCompleted != 3 || cur.PointsCount != 3 || cur.LastSyncAt == nil {
		t.Errorf("group after 3 cycles: %+v", cur)
	}
	// A member's failure: no point.
	c := lastCycle(t, d, g)
	members, _ := d.GroupMembers(ctx, g.ID)
	completeAll(t, d, c, members[1].ID)
	pass()
	cur, _ = d.GetGroup(ctx, g.ID, db.AllProjectsScope())
	if cur.CyclesFailed != 1 || cur.LastError == nil || !strings.Contains(*cur.LastError, members[1].ID) {
		t.Errorf("group after a member failed: %+v", cur)
	}
	if pts2, _ := d.GroupPoints(ctx, g.ID); len(pts2) != 3 {
		t.Errorf("%d points after a failed cycle, want 3", len(pts2))
	}
	outbox(t, d)
	// An attached member: the cycle fails before any snapshot.
	clk.add(61 * time.Second)
	calls := len(caller.calls)
	run.Volumes = attachedVolumes{attached: members[2].SourceVolumeID}
	pass()
	if len(caller.calls) != calls {
		t.Error("a group snapshot with an attached member")
	}
	cur, _ = d.GetGroup(ctx, g.ID, db.AllProjectsScope())
	if cur.LastError == nil || !strings.Contains(*cur.LastError, "attached") {
		t.Errorf("attached member: %+v", cur.LastError)
	}
	// A failed snapshot: error, and its possible snapshots are cleaned.
	run.Volumes = attachedVolumes{}
	caller.err = errors.New("agent timeout")
	clk.add(61 * time.Second)
	pass()
	cleanups := 0
	for _, s := range outbox(t, d) {
		if s.method == rpc.MethodReplicationCleanup {
			var b rpc.ReplicationCleanup
			if err := json.Unmarshal(s.body, &b); err != nil {
				t.Fatal(err)
			}
			if b.Side != rpc.CleanupSideSource || len(b.Snapshots) != 1 || !strings.HasPrefix(b.Snapshots[0], SnapshotPrefix) {
				t.Errorf("clean-up %+v", b)
			}
			cleanups++
		}
	}
	if cleanups != 3 {
		t.Errorf("%d clean-ups after a failed snapshot, want 3", cleanups)
	}
	cur, _ = d.GetGroup(ctx, g.ID, db.AllProjectsScope())
	if cur.LastError == nil || !strings.Contains(*cur.LastError, "agent timeout") || cur.CyclesFailed != 3 {
		t.Errorf("after a failed snapshot: %+v", cur)
	}
	// While api-1 holds the lease, another ferry-api runs nothing, even
	// for a group due now (a sync).
	other := &GroupRunner{DB: d, Caller: caller, Owner: "api-2", Log: quiet()}
	caller.err = nil
	now := d.Now()
	if _, err := d.UpdateGroup(ctx, g.ID, db.AllProjectsScope(), db.ReplicationFields{NextRunAt: &now}, db.ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	calls = len(caller.calls)
	if err := other.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	other.Wait()
	if len(caller.calls) != calls {
		t.Error("a runner without the lease took a snapshot")
	}
	pass()
	if len(caller.calls) != calls+1 {
		t.Error("the synced group's cycle did not run")
	}
}

// roVolumes records the read-only flags set, and says which volume is
// attached.
type roVolumes struct {
	mu       sync.Mutex
	attached string
	flags    map[string]bool
}

func (v *roVolumes) InspectVolume(_ context.Context, region, project, id string) (*cinder.VolumeState, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return &cinder.VolumeState{Status: "available", Attached: id == v.attached, ReadOnly: v.flags[id],
		Spec: cinder.VolumeSpec{Kind: "volume", ID: id, Name: "name of " + id}}, nil
}

func (v *roVolumes) SetReadOnly(_ context.Context, region, project, id string, ro bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.flags == nil {
		v.flags = map[string]bool{}
	}
	v.flags[id] = ro
	return nil
}

// A planned group failover: every member quiesced, one final group cycle,
// then one failover per member at its part of that point, without their
// own quiesce and final cycle; the group flips once every member has. An
// attached member undoes it before anything else, the volumes read-write
// again.
func TestGroupRunnerPlannedFailover(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	g := newGroup(t, d, 3)
	caller := &groupCaller{}
	vols := &roVolumes{}
	kicked := 0
	run := &GroupRunner{DB: d, Caller: caller, Volumes: vols, Owner: "api-1", Log: quiet(), KickFailovers: func() { kicked++ }}
	pass := func() {
		t.Helper()
		if err := run.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		run.Wait()
	}
	pass()
	completeAll(t, d, lastCycle(t, d, g))
	clk.add(time.Second)
	pass()
	members, _ := d.GroupMembers(ctx, g.ID)

	// An attached member: undone at the quiesce.
	vols.attached = members[1].SourceVolumeID
	start := func(force bool) *db.GroupFailover {
		t.Helper()
		f := &db.GroupFailover{Kind: db.FailoverKindFailover, Planned: true, Force: force, UserID: "u1"}
		if _, err := d.StartGroupFailover(ctx, g.ID, db.AllProjectsScope(), f, GroupStepQuiesce, db.ReplicationFailingOver, nil); err != nil {
			t.Fatal(err)
		}
		return f
	}
	start(false)
	if _, err := d.StartGroupFailover(ctx, g.ID, db.AllProjectsScope(), &db.GroupFailover{Kind: db.FailoverKindFailover}, GroupStepQuiesce, db.ReplicationFailingOver, nil); !errors.Is(err, db.ErrConflict) {
		t.Errorf("a second group failover: %v", err)
	}
	pass()
	cur, _ := d.GetGroup(ctx, g.ID, db.AllProjectsScope())
	if f := cur.Failover(); cur.Status != db.ReplicationActive || cur.FailoverID != nil || f == nil || f.Status != db.FailoverError || !strings.Contains(f.Error, "attached") {
		t.Fatalf("after an attached member: %s %+v", cur.Status, cur.Failover())
	}
	for id, ro := range vols.flags {
		if ro {
			t.Errorf("volume %s left read-only by the undone failover", id)
		}
	}

	// Detached: quiesce, final cycle, members, wait.
	vols.attached = ""
	f := start(false)
	pass() // quiesce done, final cycle started and snapshotted
	for _, m := range members {
		if !vols.flags[m.SourceVolumeID] {
			t.Errorf("member volume %s not read-only", m.SourceVolumeID)
		}
	}
	cur, _ = d.GetGroup(ctx, g.ID, db.AllProjectsScope())
	gf := cur.Failover()
	if gf.Step != GroupStepFinalCycle || gf.CycleID == "" || cur.LastCycleID != gf.CycleID {
		t.Fatalf("after the quiesce: %+v (last cycle %s)", gf, cur.LastCycleID)
	}
	final, err := d.GetGroupCycle(ctx, gf.CycleID)
	if err != nil || final.Status != db.GroupCycleRunning || final.Kind != "final" {
		t.Fatalf("final cycle %+v %v", final, err)
	}
	pass() // the final cycle still runs: nothing moves
	completeAll(t, d, final)
	pass() // the final point: members' failovers start
	cur, _ = d.GetGroup(ctx, g.ID, db.AllProjectsScope())
	gf = cur.Failover()
	if gf.Step != GroupStepWait || gf.Point != final.ID || len(gf.Members) != 3 || kicked == 0 {
		t.Fatalf("after the final cycle: %+v", gf)
	}
	parts := map[string]string{}
	for _, m := range final.Members() {
		parts[m.ReplicationID] = m.Point()
	}
	for _, m := range members {
		mf, err := d.GetFailover(ctx, gf.Members[m.ID], db.AllProjectsScope())
		if err != nil {
			t.Fatal(err)
		}
		if mf.ID != MemberFailoverID(f.ID, m.ID) || mf.GroupID != g.ID || !mf.Planned || mf.Point != parts[m.ID] || mf.Spec == "" {
			t.Errorf("member failover %+v", mf)
		}
		if steps := stepsOf(mf); slices.Contains(steps, StepQuiesce) || slices.Contains(steps, StepFinalCycle) || steps[0] != StepPromote {
			t.Errorf("a grouped member's steps %v", steps)
		}
	}
	// The members' failovers end (as their runner would): the group flips.
	pass()
	if cur, _ = d.GetGroup(ctx, g.ID, db.AllProjectsScope()); cur.Status != db.ReplicationFailingOver {
		t.Fatalf("the group ended before its members: %s", cur.Status)
	}
	for _, m := range members {
		if err := d.FinishFailover(ctx, gf.Members[m.ID], db.FailoverDone, "", db.ReplicationFailedOver, db.ReplicationEventInput{}); err != nil {
			t.Fatal(err)
		}
	}
	pass()
	cur, _ = d.GetGroup(ctx, g.ID, db.AllProjectsScope())
	if gf := cur.Failover(); cur.Status != db.ReplicationFailedOver || cur.FailoverID != nil || gf.Status != db.FailoverDone ||
		cur.SourceRegion != "RegionTwo" || cur.DestRegion != "RegionOne" {
		t.Errorf("after the members flipped: %s %s→%s %+v", cur.Status, cur.SourceRegion, cur.DestRegion, gf)
	}
}
