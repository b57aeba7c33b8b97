package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/cinder"
	"github.com/ferry-project/ferry/services/api/dispatch"
)

// GroupLease is the name of the database lease the group-running process
// holds.
const GroupLease = "replication-groups"

// AttachmentChecker tells whether a member's Cinder volume is attached
// (cinder.Service's InspectVolume).
type AttachmentChecker interface {
	InspectVolume(ctx context.Context, region, project, id string) (*cinder.VolumeState, error)
}

// GroupRunner runs the cycles of consistency groups. Each pass, if this
// process holds the lease "replication-groups":
//   - a due group gets a cycle (db.StartGroupCycle: a skip while its last
//     one runs), whose members' transfer ids and retained points are
//     chosen now;
//   - a cycle snapshotting gets its consistent snapshot: the source
//     region's agents take one snapshot of every member at one instant
//     (replication.group_snapshot, a signed call), then the members'
//     cycle transfers start (db.GroupCycleSnapshotted); a member attached
//     in Cinder, or a failed call, ends the cycle in error (the snapshots
//     it may have left are cleaned up);
//   - a running cycle whose members' transfers have all ended is finished:
//     completed (a group point) when all completed, else error;
//   - a deleting group whose members' rows are gone is removed.
type GroupRunner struct {
	DB     *db.DB
	Caller rpc.Caller // signs (rpc.SigningCaller)
	// Volumes checks that members are not attached, and quiesces them
	// for a group failover; nil: not checked (and no planned failover).
	Volumes GroupVolumes
	// KickFailovers wakes the failover runner (members' failovers).
	KickFailovers func()
	// Interval between passes (default 2 s; Kick passes at once).
	Interval time.Duration
	// CallTimeout bounds the group snapshot (default 15 s: the fence
	// itself takes milliseconds; a snapshot still waiting for a member's
	// lock after that is given up, its cycle fails and the next one
	// retries. CI saw a lock handover with a busy writer stall for
	// minutes.)
	CallTimeout time.Duration
	Owner       string
	LeaseTTL    time.Duration
	// Publish wakes the outbox publisher (may be nil).
	Publish func()
	Log     *slog.Logger

	once sync.Once
	kicker
	workers workers
}

func (g *GroupRunner) init() {
	g.once.Do(func() {
		if g.Owner == "" {
			g.Owner = "ferry-api-" + uuid.NewString()
		}
		if g.Interval <= 0 {
			g.Interval = 2 * time.Second
		}
		if g.CallTimeout <= 0 {
			g.CallTimeout = 15 * time.Second
		}
		if g.Log == nil {
			g.Log = slog.Default()
		}
	})
}

// Run passes until ctx ends, then waits for the snapshots it started.
func (g *GroupRunner) Run(ctx context.Context) error {
	if g.DB == nil {
		return errors.New("replicate: the group runner needs a DB")
	}
	g.init()
	g.every(ctx, g.Interval, func(ctx context.Context) {
		if err := g.RunOnce(ctx); err != nil && ctx.Err() == nil {
			g.Log.Warn("group runner", "error", err)
		}
	}, func(ctx context.Context) {
		g.workers.wait()
		_ = g.DB.ReleaseLease(ctx, GroupLease, g.Owner)
	})
	return nil
}

// RunOnce is one pass; the snapshots it starts run in the background
// (Wait waits for them).
func (g *GroupRunner) RunOnce(ctx context.Context) error {
	g.init()
	ttl := g.LeaseTTL
	if ttl <= 0 {
		ttl = max(3*g.Interval, 10*time.Second)
	}
	held, err := g.DB.AcquireLease(ctx, GroupLease, g.Owner, ttl)
	if err != nil || !held {
		return err
	}
	var errs []error
	// Finished cycles first: a due group's last cycle that ended is no
	// reason to skip.
	if err := g.advance(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := g.startDue(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := g.failovers(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := g.finishDeletes(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Wait waits for the snapshots RunOnce started.
func (g *GroupRunner) Wait() { g.workers.wait() }

func (g *GroupRunner) startDue(ctx context.Context) error {
	due, err := g.DB.DueGroups(ctx, g.DB.Now(), 100)
	if err != nil {
		return err
	}
	var errs []error
	for i := range due {
		if err := g.startOne(ctx, &due[i]); err != nil {
			errs = append(errs, fmt.Errorf("group %s: %w", due[i].ID, err))
		}
	}
	return errors.Join(errs...)
}

// startOne starts (or skips) one due group's cycle.
func (g *GroupRunner) startOne(ctx context.Context, grp *db.ReplicationGroup) error {
	now := g.DB.Now()
	cycleID := uuid.NewString()
	ms, err := g.cycleMembers(ctx, grp, cycleID)
	if err != nil {
		return err
	}
	interval := time.Duration(grp.IntervalSeconds) * time.Second
	next := NextRun(grp.NextRunAt, now, interval, Jitter(grp.ID, interval))
	c, skipped, err := g.DB.StartGroupCycle(ctx, grp.ID, now, next, &db.GroupCycle{ID: cycleID}, ms)
	if err != nil {
		return err
	}
	switch {
	case skipped:
		g.Log.Info("group cycle skipped: the previous one still runs", "group_id", grp.ID, "cycle_id", grp.LastCycleID)
	case c != nil:
		g.Log.Debug("group cycle started", "group_id", grp.ID, "cycle_id", c.ID, "members", len(ms))
		g.startSnapshot(ctx, c)
	}
	return nil
}

// cycleMembers chooses the members' parts of group cycle cycleID: a
// transfer id each, and the points each member's destination keeps (the
// group's retention over its points and the new one, plus the points of
// drills being made).
func (g *GroupRunner) cycleMembers(ctx context.Context, grp *db.ReplicationGroup, cycleID string) ([]db.GroupCycleMember, error) {
	members, err := g.DB.GroupMembers(ctx, grp.ID)
	if err != nil {
		return nil, err
	}
	points, err := g.DB.GroupPoints(ctx, grp.ID)
	if err != nil {
		return nil, err
	}
	pts := make([]Point, 0, len(points)+1)
	for _, p := range points {
		pts = append(pts, Point{Name: p.ID, CreatedAt: *p.SnapshotAt})
	}
	pts = append(pts, Point{Name: cycleID, CreatedAt: g.DB.Now()})
	keep := Retain(pts, Policy{KeepLast: grp.KeepLast, KeepHourly: grp.KeepHourly, KeepDaily: grp.KeepDaily}, nil)
	kept := map[string]bool{}
	for _, k := range keep {
		kept[k] = true
	}
	var ms []db.GroupCycleMember
	for i := range members {
		r := &members[i]
		if r.Status == db.ReplicationDeleting {
			continue
		}
		drills, err := g.DB.ListDrills(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		retain := Pinned(drills)
		for _, p := range points {
			if !kept[p.ID] {
				continue
			}
			for _, pm := range p.Members() {
				if pm.ReplicationID == r.ID {
					retain = append(retain, pm.Point())
				}
			}
		}
		ms = append(ms, db.GroupCycleMember{ReplicationID: r.ID, TransferID: uuid.NewString(), Retain: retain})
	}
	return ms, nil
}

// advance moves the unfinished cycles on: a snapshot for those
// snapshotting, a finish for those whose transfers all ended.
func (g *GroupRunner) advance(ctx context.Context) error {
	cycles, err := g.DB.UnfinishedGroupCycles(ctx, 0)
	if err != nil {
		return err
	}
	var errs []error
	for i := range cycles {
		c := &cycles[i]
		switch c.Status {
		case db.GroupCycleSnapshotting:
			g.startSnapshot(ctx, c)
		case db.GroupCycleRunning:
			if err := g.finishIfDone(ctx, c); err != nil {
				errs = append(errs, fmt.Errorf("group cycle %s: %w", c.ID, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (g *GroupRunner) startSnapshot(ctx context.Context, c *db.GroupCycle) {
	cycle := *c
	g.workers.start(ctx, c.ID, nil, func(ctx context.Context) {
		log := g.Log.With("group_id", cycle.GroupID, "cycle_id", cycle.ID)
		if err := g.snapshot(ctx, &cycle, log); err != nil && ctx.Err() == nil {
			log.Warn("group cycle snapshot", "error", err)
		}
	})
}

// snapshot takes cycle c's consistent snapshot and starts its transfers,
// or ends it in error.
func (g *GroupRunner) snapshot(ctx context.Context, c *db.GroupCycle, log *slog.Logger) error {
	grp, err := g.DB.GetGroup(ctx, c.GroupID, db.AllProjectsScope())
	if err != nil {
		return err
	}
	byID := map[string]*db.Replication{}
	members, err := g.DB.GroupMembers(ctx, c.GroupID)
	if err != nil {
		return err
	}
	for i := range members {
		byID[members[i].ID] = &members[i]
	}
	ms := c.Members()
	req := rpc.GroupSnapshotRequest{GroupID: c.GroupID, CycleID: c.ID}
	for _, m := range ms {
		r := byID[m.ReplicationID]
		if r == nil {
			return g.fail(ctx, c, grp, nil, fmt.Sprintf("member %s is gone", m.ReplicationID), log)
		}
		req.Members = append(req.Members, rpc.GroupSnapshotMember{ReplicationID: r.ID, TransferID: m.TransferID, Pool: r.SourcePool, Image: r.SourceImage})
	}
	if why := g.attached(ctx, grp, ms, byID); why != "" {
		return g.fail(ctx, c, grp, nil, why, log)
	}
	if g.Caller == nil {
		return g.fail(ctx, c, grp, nil, "group cycles need the message bus in ferry-api", log)
	}
	var reply rpc.GroupSnapshotReply
	cctx, cancel := context.WithTimeout(ctx, g.CallTimeout)
	err = g.Caller.Call(cctx, rpc.AgentTarget(grp.SourceRegion), rpc.MethodReplicationGroupSnapshot, req, &reply)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err() // stopping: the next holder of the lease retries
		}
		return g.fail(ctx, c, grp, req.Members, fmt.Sprintf("consistent snapshot of the group's %d members in %s: %v", len(ms), grp.SourceRegion, err), log)
	}
	at := g.DB.Now()
	for _, t := range reply.Members {
		if t.SnapshotTime != nil && t.SnapshotTime.Before(at) {
			at = *t.SnapshotTime
		}
	}
	ts := make([]*db.Transfer, 0, len(ms))
	for _, m := range ms {
		t := memberCycle(byID[m.ReplicationID], m)
		ts = append(ts, t)
	}
	err = g.DB.GroupCycleSnapshotted(ctx, c.ID, at, ts, func(t *db.Transfer) (*db.OutboxMessage, error) { return dispatch.NewStartMessage(t) })
	if errors.Is(err, db.ErrConflict) {
		// The group was deleted or the cycle ended meanwhile: the
		// members' clean-up may have run before these snapshots were
		// taken; they go now.
		log.Info("group cycle ended before its transfers started: its snapshots are removed", "error", err)
		g.cleanupSnapshots(ctx, grp, req.Members, log)
		return nil
	}
	if err != nil {
		return err
	}
	log.Info("group cycle snapshot taken; member cycles started", "members", len(ts), "snapshot_at", at)
	if g.Publish != nil {
		g.Publish()
	}
	return nil
}

// attached names the first member whose volume Cinder says is attached
// ("" when none or not checked): the consistent snapshot's fence would
// fail its writes.
func (g *GroupRunner) attached(ctx context.Context, grp *db.ReplicationGroup, ms []db.GroupCycleMember, byID map[string]*db.Replication) string {
	if g.Volumes == nil {
		return ""
	}
	for _, m := range ms {
		r := byID[m.ReplicationID]
		if r.SourceVolumeID == "" {
			continue
		}
		st, err := g.Volumes.InspectVolume(ctx, grp.SourceRegion, grp.ProjectID, r.SourceVolumeID)
		if err != nil {
			// Cinder cannot say: the agent's fence is what it is; the
			// cycle goes ahead (a detached volume is the common case).
			g.Log.Warn("a group member's attachment could not be checked in Cinder", "group_id", grp.ID, "volume_id", r.SourceVolumeID, "error", err)
			continue
		}
		if st.Attached {
			return fmt.Sprintf("member volume %s is attached (%s): a consistent group snapshot would fail its writes for the fence's duration; detach it, or replicate it on its own", r.SourceVolumeID, st.Status)
		}
	}
	return ""
}

// fail ends cycle c in error, with the clean-up of the snapshots the
// call may have taken (snaps: nil when none was asked for).
func (g *GroupRunner) fail(ctx context.Context, c *db.GroupCycle, grp *db.ReplicationGroup, snaps []rpc.GroupSnapshotMember, why string, log *slog.Logger) error {
	bctx := context.WithoutCancel(ctx)
	if err := g.DB.FinishGroupCycle(bctx, c.ID, db.GroupCycleError, why); err != nil {
		return err
	}
	log.Warn("group cycle failed", "error", why)
	g.cleanupSnapshots(bctx, grp, snaps, log)
	return nil
}

// cleanupSnapshots asks the source region's agents to remove the group
// cycle snapshots of members (replication.cleanup, source side).
func (g *GroupRunner) cleanupSnapshots(ctx context.Context, grp *db.ReplicationGroup, snaps []rpc.GroupSnapshotMember, log *slog.Logger) {
	bctx := context.WithoutCancel(ctx)
	for _, m := range snaps {
		msg, err := dispatch.NewOutboxMessage("", rpc.AgentTarget(grp.SourceRegion), rpc.MethodReplicationCleanup, rpc.ReplicationCleanup{
			ReplicationID: m.ReplicationID, Side: rpc.CleanupSideSource, Pool: m.Pool, Image: m.Image,
			Snapshots: []string{SnapshotPrefix + m.TransferID}})
		if err == nil {
			err = g.DB.EnqueueOutbox(bctx, msg)
		}
		if err != nil {
			log.Warn("clean-up of a failed group cycle's snapshot not sent", "image", m.Pool+"/"+m.Image, "error", err)
		}
	}
	if len(snaps) > 0 && g.Publish != nil {
		g.Publish()
	}
}

// finishIfDone finishes running cycle c once every member's transfer has
// ended.
func (g *GroupRunner) finishIfDone(ctx context.Context, c *db.GroupCycle) error {
	ms := c.Members()
	ids := make([]string, 0, len(ms))
	for _, m := range ms {
		ids = append(ids, m.TransferID)
	}
	ts, err := g.DB.GroupCycleTransfers(ctx, ids)
	if err != nil {
		return err
	}
	var failed []string
	for _, m := range ms {
		t, ok := ts[m.TransferID]
		switch {
		case !ok:
			failed = append(failed, fmt.Sprintf("member %s: its cycle %s is gone", m.ReplicationID, m.TransferID))
		case !db.IsTerminal(t.Status):
			return nil // still running
		case t.Status != db.StatusCompleted:
			e := string(t.Status)
			if t.Error != nil && *t.Error != "" {
				e += ": " + *t.Error
			}
			failed = append(failed, fmt.Sprintf("member %s: cycle %s %s", m.ReplicationID, m.TransferID, e))
		}
	}
	log := g.Log.With("group_id", c.GroupID, "cycle_id", c.ID)
	if len(failed) > 0 {
		msg := "no group point: " + strings.Join(failed, "; ")
		log.Warn("group cycle failed", "error", msg)
		return g.DB.FinishGroupCycle(ctx, c.ID, db.GroupCycleError, msg)
	}
	log.Info("group point committed", "members", len(ms))
	return g.DB.FinishGroupCycle(ctx, c.ID, db.GroupCycleCompleted, "")
}

// finishDeletes removes deleting groups whose members' rows are gone.
func (g *GroupRunner) finishDeletes(ctx context.Context) error {
	gs, err := g.DB.DeletingGroups(ctx, 100)
	if err != nil {
		return err
	}
	var errs []error
	for i := range gs {
		err := g.DB.FinishDeleteGroup(ctx, gs[i].ID)
		switch {
		case err == nil:
			g.Log.Info("group deleted", "group_id", gs[i].ID)
		case errors.Is(err, db.ErrConflict), errors.Is(err, db.ErrNotFound):
		default:
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// memberCycle is member r's cycle transfer of a group cycle: an ordinary
// cycle with the transfer id and the retained points the cycle chose.
func memberCycle(r *db.Replication, m db.GroupCycleMember) *db.Transfer {
	t := cycleTransfer(r, m.TransferID, m.Retain)
	t.Description = "a group cycle of replication " + r.ID
	return t
}
