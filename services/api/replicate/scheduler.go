package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/dispatch"
)

// SchedulerLease is the name of the database lease the scheduling process
// holds.
const SchedulerLease = "replication-scheduler"

// SnapshotPrefix names a cycle's snapshot on both sides (the agents'
// transfer.SnapshotPrefix): ferry-<transfer id>.
const SnapshotPrefix = "ferry-"

// VolumeChecker tells whether a Cinder volume still exists, asked with
// Ferry's service credentials (cinder.Service).
type VolumeChecker interface {
	VolumeExists(ctx context.Context, region, id string) (bool, error)
}

// Scheduler starts replication cycles. Each tick, if this process holds the
// lease "replication-scheduler": the due replications (active, next_run_at
// passed) get a cycle (db.StartCycle; a skip while the previous one runs),
// after their source volume is checked in Cinder (deleted → the
// replication goes to error, its replica kept); RPO breaches and
// recoveries are recorded on their edges (with a notification); deleting
// replications whose last cycle has ended are removed; and, every few
// minutes, completed cycles older than CycleRetention are pruned.
type Scheduler struct {
	DB *db.DB
	// Volumes checks source volumes; nil: not checked.
	Volumes VolumeChecker
	// Notifier builds the RPO notifications; nil: none.
	Notifier *Notifier
	// Tick is [api] replication_tick (default 10 s).
	Tick time.Duration
	// CycleRetention is [api] cycle_retention; 0 keeps cycles forever.
	CycleRetention time.Duration
	// PruneEvery is how often cycles are pruned (default 5 min).
	PruneEvery time.Duration
	// Owner names this process in the lease; LeaseTTL is how long the
	// lease outlives its last renewal (default 3 ticks, at least 3 s).
	Owner    string
	LeaseTTL time.Duration
	// Batch bounds the replications started per tick (default 500): the
	// rest are started by the next ticks, most overdue first.
	Batch int
	// Publish wakes the outbox publisher (may be nil).
	Publish func()
	Log     *slog.Logger

	once sync.Once
	kicker
	pruned time.Time
}

func (s *Scheduler) init() {
	s.once.Do(func() {
		if s.Owner == "" {
			s.Owner = "ferry-api-" + uuid.NewString()
		}
		if s.Tick <= 0 {
			s.Tick = 10 * time.Second
		}
		if s.Log == nil {
			s.Log = slog.Default()
		}
	})
}

// Run ticks until ctx ends; Kick asks for a tick now (a new replication,
// a sync, a resume).
func (s *Scheduler) Run(ctx context.Context) error {
	if s.DB == nil {
		return errors.New("replicate: the scheduler needs a DB")
	}
	s.init()
	s.every(ctx, s.Tick, func(ctx context.Context) {
		if _, err := s.RunOnce(ctx); err != nil && ctx.Err() == nil {
			s.Log.Warn("replication scheduler", "error", err)
		}
	}, func(ctx context.Context) { _ = s.DB.ReleaseLease(ctx, SchedulerLease, s.Owner) })
	return nil
}

// TickResult is what one tick did.
type TickResult struct {
	Held                     bool
	Started, Skipped, Failed int
	Breached, Recovered      int
	Deleted                  int
	Pruned                   int64
}

func (s *Scheduler) leaseTTL() time.Duration {
	if s.LeaseTTL > 0 {
		return s.LeaseTTL
	}
	return max(3*s.Tick, 3*time.Second)
}

// RunOnce is one tick.
func (s *Scheduler) RunOnce(ctx context.Context) (TickResult, error) {
	s.init()
	var res TickResult
	held, err := s.DB.AcquireLease(ctx, SchedulerLease, s.Owner, s.leaseTTL())
	if err != nil || !held {
		return res, err
	}
	res.Held = true
	var errs []error
	if err := s.startDue(ctx, &res); err != nil {
		errs = append(errs, err)
	}
	if err := s.checkRPO(ctx, &res); err != nil {
		errs = append(errs, err)
	}
	if err := s.finishDeletes(ctx, &res); err != nil {
		errs = append(errs, err)
	}
	every := s.PruneEvery
	if every <= 0 {
		every = 5 * time.Minute
	}
	if s.CycleRetention > 0 && time.Since(s.pruned) >= every {
		s.pruned = time.Now()
		n, err := s.DB.PruneCycleTransfers(ctx, s.DB.Now().Add(-s.CycleRetention), 0)
		if err != nil {
			errs = append(errs, err)
		} else if n > 0 {
			res.Pruned = n
			s.Log.Info("pruned completed replication cycles", "transfers", n, "older_than", s.CycleRetention)
		}
	}
	if res.Started > 0 && s.Publish != nil {
		s.Publish()
	}
	return res, errors.Join(errs...)
}

func (s *Scheduler) startDue(ctx context.Context, res *TickResult) error {
	batch := s.Batch
	if batch <= 0 {
		batch = 500
	}
	now := s.DB.Now()
	due, err := s.DB.DueReplications(ctx, now, batch)
	if err != nil {
		return err
	}
	var errs []error
	for i := range due {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r := &due[i]
		started, skipped, err := s.startOne(ctx, r)
		switch {
		case err != nil:
			res.Failed++
			errs = append(errs, fmt.Errorf("replication %s: %w", r.ID, err))
		case started:
			res.Started++
		case skipped:
			res.Skipped++
		}
	}
	return errors.Join(errs...)
}

// startOne starts (or skips) one due replication's cycle.
func (s *Scheduler) startOne(ctx context.Context, r *db.Replication) (started, skipped bool, err error) {
	log := s.Log.With("replication_id", r.ID)
	if r.SourceVolumeID != "" && s.Volumes != nil {
		exists, err := s.Volumes.VolumeExists(ctx, r.SourceRegion, r.SourceVolumeID)
		switch {
		case err != nil:
			// Cinder is unreachable: the cycle goes ahead (it fails on
			// its own if the image is gone).
			log.Warn("the source volume could not be checked in Cinder", "volume_id", r.SourceVolumeID, "error", err)
		case !exists && !db.CanTransitionReplication(r.Status, db.ReplicationError):
			// Failed over: the cycle fails on its own, and says so
			// (cycle_failed, last_error) at each interval.
			log.Warn("the source volume of a failed-over replication was deleted in Cinder", "volume_id", r.SourceVolumeID, "status", r.Status)
		case !exists:
			msg := fmt.Sprintf("source volume %s was deleted in Cinder (region %s); the replica is kept (%s/%s)",
				r.SourceVolumeID, r.SourceRegion, r.DestPool, r.DestImage)
			_, err := s.DB.SetReplicationStatus(ctx, r.ID, db.AllProjectsScope(), db.ReplicationError,
				[]db.ReplicationStatus{r.Status}, db.ReplicationEventInput{Kind: db.RepEventError, Message: msg})
			if err != nil && !errors.Is(err, db.ErrInvalidTransition) && !errors.Is(err, db.ErrConflict) {
				return false, false, err
			}
			log.Warn("replication stopped: its source volume was deleted", "volume_id", r.SourceVolumeID)
			return false, false, nil
		}
	}
	points, err := s.DB.ListPoints(ctx, r.ID)
	if err != nil {
		return false, false, err
	}
	drills, err := s.DB.ListDrills(ctx, r.ID)
	if err != nil {
		return false, false, err
	}
	now := s.DB.Now()
	t := CycleTransfer(r, points, Pinned(drills), now)
	interval := time.Duration(r.IntervalSeconds) * time.Second
	next := NextRun(r.NextRunAt, now, interval, Jitter(r.ID, interval))
	st, skipped, err := s.DB.StartCycle(ctx, r.ID, now, next, t, func(t *db.Transfer) (*db.OutboxMessage, error) {
		return dispatch.NewStartMessage(t)
	})
	if err != nil {
		return false, false, err
	}
	if st != nil {
		log.Debug("replication cycle started", "transfer_id", st.ID, "next_run_at", next)
	}
	if skipped {
		log.Info("replication cycle skipped: the previous one still runs", "transfer_id", r.LastTransferID)
	}
	return st != nil, skipped, nil
}

// Pinned are the points that drills being created still need: the agent
// keeps a snapshot with clone children anyway, but the clone of a drill in
// creating may not exist yet.
func Pinned(drills []db.Drill) []string {
	var out []string
	for _, d := range drills {
		if d.Status == db.DrillCreating && !slices.Contains(out, d.Point) {
			out = append(out, d.Point)
		}
	}
	return out
}

// CycleTransfer builds replication r's next cycle at now: an auto-mode
// transfer from the source image into the replica, whose start tells the
// destination to keep the points Retain chooses among the current ones and
// the new one (named ferry-<transfer id>), and the replication's bandwidth
// limit.
func CycleTransfer(r *db.Replication, points []db.ReplicationPoint, pinned []string, now time.Time) *db.Transfer {
	id := uuid.NewString()
	pts := make([]Point, 0, len(points)+1)
	for _, p := range points {
		pts = append(pts, Point{Name: p.Name, CreatedAt: p.CreatedAt})
	}
	newest := SnapshotPrefix + id
	pts = append(pts, Point{Name: newest, CreatedAt: now})
	keep := Retain(pts, Policy{KeepLast: r.KeepLast, KeepHourly: r.KeepHourly, KeepDaily: r.KeepDaily}, pinned)
	keep = slices.DeleteFunc(keep, func(n string) bool { return n == newest }) // kept anyway
	return cycleTransfer(r, id, keep)
}

// cycleTransfer is replication r's cycle transfer id, whose destination
// keeps the points keep (and the new one).
func cycleTransfer(r *db.Replication, id string, keep []string) *db.Transfer {
	name := r.Name
	if name == "" {
		name = r.ID
	}
	return &db.Transfer{
		ID: id, Name: "replication " + name + " cycle", Description: "a cycle of replication " + r.ID,
		ProjectID: r.ProjectID, UserID: r.UserID, Mode: db.ModeAuto, ReplicationID: r.ID,
		SourceRegion: r.SourceRegion, SourcePool: r.SourcePool, SourceImage: r.SourceImage, SourceVolumeID: r.SourceVolumeID,
		DestRegion: r.DestRegion, DestPool: r.DestPool, DestImage: r.DestImage,
		OwnerProjectID: r.ProjectID,
		CinderSpec:     dispatch.CycleSpec{Retain: keep, BandwidthLimit: r.BandwidthLimit}.Marshal(),
	}
}

// Lag is how far behind a replication is at now: now minus its newest
// point's time (ok false before the first point), and whether that breaks
// its RPO (with no point yet: once it has existed longer than the RPO).
func Lag(r *db.Replication, now time.Time) (lag time.Duration, ok, breached bool) {
	rpo := time.Duration(r.RPOSeconds) * time.Second
	if r.LastSyncAt == nil {
		return 0, false, now.Sub(r.CreatedAt) > rpo
	}
	lag = max(now.Sub(*r.LastSyncAt), 0)
	return lag, true, lag > rpo
}

// checkRPO records the RPO breaches and recoveries since the last tick.
func (s *Scheduler) checkRPO(ctx context.Context, res *TickResult) error {
	rs, err := s.DB.ReplicationStats(ctx)
	if err != nil {
		return err
	}
	now := s.DB.Now()
	var errs []error
	for i := range rs {
		r := &rs[i]
		lag, ok, breached := Lag(r, now)
		if breached == (r.RPOBreachedAt != nil) {
			continue
		}
		msg := fmt.Sprintf("lag %s is within the RPO of %d s again", lag.Round(time.Second), r.RPOSeconds)
		switch {
		case breached && ok:
			msg = fmt.Sprintf("lag %s exceeds the RPO of %d s (newest point %s)", lag.Round(time.Second), r.RPOSeconds, r.LastSyncAt.Format(time.RFC3339))
		case breached:
			msg = fmt.Sprintf("no point yet %s after creation: the RPO of %d s is exceeded", now.Sub(r.CreatedAt).Round(time.Second), r.RPOSeconds)
		}
		var notify func() (*db.OutboxMessage, error)
		if s.Notifier != nil {
			notify = func() (*db.OutboxMessage, error) { return s.Notifier.RPOChanged(r, breached, now) }
		}
		changed, err := s.DB.SetRPOBreached(ctx, r.ID, breached, now, msg, notify)
		if err != nil {
			if !errors.Is(err, db.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		if !changed {
			continue
		}
		if breached {
			res.Breached++
			s.Log.Warn("replication RPO breached", "replication_id", r.ID, "project_id", r.ProjectID, "message", msg)
		} else {
			res.Recovered++
			s.Log.Info("replication RPO recovered", "replication_id", r.ID, "project_id", r.ProjectID, "message", msg)
		}
	}
	if (res.Breached > 0 || res.Recovered > 0) && s.Publish != nil {
		s.Publish()
	}
	return errors.Join(errs...)
}

// finishDeletes removes the rows of deleting replications whose last
// cycle has ended (their clean-up messages went with the deletion).
func (s *Scheduler) finishDeletes(ctx context.Context, res *TickResult) error {
	rs, err := s.DB.DeletingReplications(ctx, 100)
	if err != nil {
		return err
	}
	var errs []error
	for i := range rs {
		r := &rs[i]
		if r.LastTransferID != "" {
			t, err := s.DB.GetTransfer(ctx, r.LastTransferID, db.AllProjectsScope())
			if err == nil && !db.IsTerminal(t.Status) {
				continue // being cancelled: wait for its end
			}
			if err != nil && !errors.Is(err, db.ErrNotFound) {
				errs = append(errs, err)
				continue
			}
		}
		if err := s.DB.FinishDeleteReplication(ctx, r.ID); err != nil && !errors.Is(err, db.ErrNotFound) {
			errs = append(errs, err)
			continue
		}
		res.Deleted++
		s.Log.Info("replication deleted", "replication_id", r.ID, "keep_replica", r.KeepReplica)
	}
	return errors.Join(errs...)
}

// CleanupMessages are the outbox rows of a deleted replication's clean-up
// (db.DeleteReplication's builder): replication.cleanup to the source
// region's agents (Ferry's snapshots of the replication there: the points'
// names and the last cycle's) and to the destination's (the points, and
// the replica unless it is kept).
func CleanupMessages(r *db.Replication, points []db.ReplicationPoint) ([]*db.OutboxMessage, error) {
	names := make([]string, 0, len(points)+1)
	for _, p := range points {
		names = append(names, p.Name)
	}
	srcNames := slices.Clone(names)
	if r.LastTransferID != "" && !slices.Contains(srcNames, SnapshotPrefix+r.LastTransferID) {
		srcNames = append(srcNames, SnapshotPrefix+r.LastTransferID)
	}
	bodies := []struct {
		region string
		body   rpc.ReplicationCleanup
	}{
		{r.SourceRegion, rpc.ReplicationCleanup{ReplicationID: r.ID, Side: rpc.CleanupSideSource,
			Pool: r.SourcePool, Image: r.SourceImage, Snapshots: srcNames}},
		{r.DestRegion, rpc.ReplicationCleanup{ReplicationID: r.ID, Side: rpc.CleanupSideDestination,
			Pool: r.DestPool, Image: r.DestImage, Snapshots: names, RemoveImage: !r.KeepReplica}},
	}
	out := make([]*db.OutboxMessage, 0, len(bodies))
	for _, b := range bodies {
		m, err := dispatch.NewOutboxMessage("", rpc.AgentTarget(b.region), rpc.MethodReplicationCleanup, b.body)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}
