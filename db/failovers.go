package db

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/ferry-project/ferry/db/state"
	"github.com/google/uuid"
	"gorm.io/gorm"
)

// A failover (or failback) of a replication is a resumable workflow: the
// request inserts its row and moves the replication to failing_over (or
// failing_back) with failover_id set (StartFailover); a runner then does
// its steps, recording each once done (UpdateFailover), starts the final
// cycle (StartFinalCycle), swaps source and destination (FlipReplication)
// and ends it (FinishFailover, or the flip itself). While failover_id is
// set, no ordinary cycle starts, and status changes, other failovers and
// the deletion are ErrConflict.

// failoverRunning returns ErrConflict when a failover holds r: its status
// is failing_over or failing_back, or its failover_id is set.
func failoverRunning(r *Replication) error {
	if r.Status.InFailover() || r.FailoverID != nil {
		id := ""
		if r.FailoverID != nil {
			id = " (" + *r.FailoverID + ")"
		}
		return fmt.Errorf("%w: a failover of replication %s is running%s", ErrConflict, r.ID, id)
	}
	return nil
}

// scheduledStatuses are the statuses whose replications the scheduler
// starts cycles of (ReplicationStatus.Schedules).
func scheduledStatuses() []ReplicationStatus {
	return slices.DeleteFunc(state.AllReplication(), func(s ReplicationStatus) bool { return !s.Schedules() })
}

// firstNonEmpty returns the first of its arguments that is not "".
func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// lengthCheck is a value and its limit (characters), for checkLengths.
type lengthCheck struct {
	name, value string
	max         int
}

// checkLengths returns ErrInvalidArgument naming the first value longer
// than its limit.
func checkLengths(fields ...lengthCheck) error {
	for _, f := range fields {
		if utf8.RuneCountInString(f.value) > f.max {
			return fmt.Errorf("%w: %s longer than %d characters", ErrInvalidArgument, f.name, f.max)
		}
	}
	return nil
}

// StartFailover starts failover f of replication f.ReplicationID (which
// the scope must see, else ErrNotFound), in one transaction with the
// replication's row locked: the replication goes to status to
// (failing_over for a failover, failing_back for a failback) with
// failover_id = f.ID, f is inserted, and ev is recorded (its kind
// defaults to failover_started or failback_started, its request id to
// f.RequestID). It returns the replication as updated.
//
// A replication a failover holds already (failing_over, failing_back, or
// failover_id set) is ErrConflict ("a failover of replication X is
// running"), so that of concurrent requests exactly one wins; one whose
// status is not in expectFrom (when not empty), or that the state machine
// does not let go to to, is ErrInvalidTransition.
//
// The caller sets ReplicationID, UserID, RequestID, Kind (defaults after
// to; it must agree with it), Planned, Force, RequestedPoint, Point, Step,
// Spec and Peer. The store sets the id (unless a UUID is given), the
// project (the replication's), status running, From (the replication's
// source), To (its destination, with ToVolumeID its dest_volume_id), the
// times (requested_at now) and clears the rest.
func (d *DB) StartFailover(ctx context.Context, f *Failover, scope Scope, to ReplicationStatus, expectFrom []ReplicationStatus, ev ReplicationEventInput) (*Replication, error) {
	if f == nil {
		return nil, fmt.Errorf("db: start failover: %w: nil failover", ErrInvalidArgument)
	}
	var kind FailoverKind
	switch to {
	case ReplicationFailingOver:
		kind = FailoverKindFailover
	case ReplicationFailingBack:
		kind = FailoverKindFailback
	default:
		return nil, fmt.Errorf("db: start failover of replication %s: %w: a failover goes to failing_over or failing_back, not %q", f.ReplicationID, ErrInvalidArgument, to)
	}
	if f.Kind == "" {
		f.Kind = kind
	} else if f.Kind != kind {
		return nil, fmt.Errorf("db: start failover of replication %s: %w: a %s goes to %s, not %s", f.ReplicationID, ErrInvalidArgument, f.Kind, kind, to)
	}
	if f.ID == "" {
		f.ID = uuid.NewString()
	} else if u, err := uuid.Parse(f.ID); err != nil || len(f.ID) != transferIDLength {
		return nil, fmt.Errorf("db: start failover of replication %s: %w: failover id %q is not a UUID", f.ReplicationID, ErrInvalidArgument, f.ID)
	} else {
		f.ID = u.String()
	}
	if err := checkLengths(
		lengthCheck{"user_id", f.UserID, MaxIDLength},
		lengthCheck{"request_id", f.RequestID, MaxRequestIDLength},
		lengthCheck{"requested_point", f.RequestedPoint, MaxNameLength},
		lengthCheck{"point", f.Point, MaxNameLength},
		lengthCheck{"step", f.Step, statusColumnWidth},
	); err != nil {
		return nil, fmt.Errorf("db: start failover of replication %s: %w", f.ReplicationID, err)
	}
	if ev.Kind == "" {
		ev.Kind = RepEventFailoverStarted
		if kind == FailoverKindFailback {
			ev.Kind = RepEventFailbackStarted
		}
	}
	if ev.RequestID == "" {
		ev.RequestID = f.RequestID
	}
	if ev.Message == "" {
		how := "unplanned"
		if f.Planned {
			how = "planned"
		}
		if f.Force {
			how += ", forced"
		}
		ev.Message = fmt.Sprintf("%s %s started (%s)", kind, f.ID, how)
	}
	if err := ev.check(); err != nil {
		return nil, fmt.Errorf("db: start failover of replication %s: %w", f.ReplicationID, err)
	}
	var out Replication
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		q, err := scope.apply(d.lockRow(tx).Where("id = ?", f.ReplicationID))
		if err != nil {
			return err
		}
		var cur Replication
		if err := q.Take(&cur).Error; err != nil {
			return translate(err)
		}
		if err := failoverRunning(&cur); err != nil {
			return err
		}
		if len(expectFrom) > 0 && !slices.Contains(expectFrom, cur.Status) {
			return fmt.Errorf("%w: %s → %s: replication is %s, expected %v", ErrInvalidTransition, cur.Status, to, cur.Status, expectFrom)
		}
		if !CanTransitionReplication(cur.Status, to) {
			return fmt.Errorf("%w: %s → %s is not allowed", ErrInvalidTransition, cur.Status, to)
		}
		now := d.now()
		f.ProjectID = cur.ProjectID
		f.Status = FailoverRunning
		f.Error, f.FinalTransferID = nil, ""
		f.FromRegion, f.FromPool, f.FromImage, f.FromVolumeID = cur.SourceRegion, cur.SourcePool, cur.SourceImage, cur.SourceVolumeID
		f.ToRegion, f.ToPool, f.ToImage, f.ToVolumeID = cur.DestRegion, cur.DestPool, cur.DestImage, cur.DestVolumeID
		f.Preserved, f.PreservedBytes = "", 0
		f.RegisterStartedAt, f.AvailableAt, f.FinishedAt = nil, nil, nil
		f.RequestedAt, f.CreatedAt, f.UpdatedAt = now, now, now
		if err := tx.Create(f).Error; err != nil {
			return fmt.Errorf("insert failover: %w", translate(err))
		}
		res := tx.Model(&Replication{}).Where("id = ? AND status = ? AND failover_id IS NULL", cur.ID, cur.Status).
			UpdateColumns(map[string]any{"status": to, "failover_id": f.ID, "updated_at": now})
		if res.Error != nil {
			return fmt.Errorf("update: %w", translate(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: replication changed concurrently (was %s)", ErrConflict, cur.Status)
		}
		if err := addReplicationEvent(tx, now, cur.ID, ev); err != nil {
			return err
		}
		return tx.Where("id = ?", cur.ID).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: start failover of replication %s: %w", f.ReplicationID, err)
	}
	return &out, nil
}

// GetFailover returns the failover with id if the scope sees it (by its
// project, the replication's), else ErrNotFound.
func (d *DB) GetFailover(ctx context.Context, id string, scope Scope) (*Failover, error) {
	q, err := scope.apply(d.gorm.WithContext(ctx).Where("id = ?", id))
	if err != nil {
		return nil, fmt.Errorf("db: get failover %s: %w", id, err)
	}
	var f Failover
	if err := q.Take(&f).Error; err != nil {
		return nil, fmt.Errorf("db: get failover %s: %w", id, translate(err))
	}
	return &f, nil
}

// ListFailovers returns a replication's failovers and failbacks, newest
// first; an unknown replication is ErrNotFound. It does not check scope.
func (d *DB) ListFailovers(ctx context.Context, replicationID string) ([]Failover, error) {
	g := d.gorm.WithContext(ctx)
	if err := replicationExists(g, replicationID); err != nil {
		return nil, fmt.Errorf("db: list failovers of replication %s: %w", replicationID, err)
	}
	var out []Failover
	if err := g.Where("replication_id = ?", replicationID).Order("created_at DESC").Order("id DESC").Find(&out).Error; err != nil {
		return nil, fmt.Errorf("db: list failovers of replication %s: %w", replicationID, err)
	}
	return out, nil
}

// RunningFailovers returns up to limit failovers in running (0 or less,
// or more than MaxListLimit: MaxListLimit), the oldest request first, for
// the failover runner.
func (d *DB) RunningFailovers(ctx context.Context, limit int) ([]Failover, error) {
	if limit <= 0 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	var out []Failover
	err := d.gorm.WithContext(ctx).Where("status = ?", FailoverRunning).
		Order("requested_at ASC").Order("id ASC").Limit(limit).Find(&out).Error
	if err != nil {
		return nil, fmt.Errorf("db: running failovers: %w", err)
	}
	return out, nil
}

// FailoverFields are the failover columns UpdateFailover may change; nil
// fields are left alone.
type FailoverFields struct {
	// Step is the step just done.
	Step            *string
	Point           *string
	FinalTransferID *string
	Peer            *string
	ToVolumeID      *string
	Preserved       *string
	PreservedBytes  *int64
	// RegisterStartedAt sets the Cinder registration ledger; a zero time
	// clears it.
	RegisterStartedAt *time.Time
	AvailableAt       *time.Time
	// Error is the last failure of a step being retried; "" clears it.
	Error *string
}

// lockRunningFailover reads failover id within tx, its row locked; one
// that is not running is ErrConflict.
func (d *DB) lockRunningFailover(tx *gorm.DB, id string) (*Failover, error) {
	var f Failover
	if err := d.lockRow(tx).Where("id = ?", id).Take(&f).Error; err != nil {
		return nil, translate(err)
	}
	if f.Status != FailoverRunning {
		return nil, fmt.Errorf("%w: failover %s is %s", ErrConflict, id, f.Status)
	}
	return &f, nil
}

// UpdateFailover changes failover id as f says, and records ev (when not
// nil and its Kind is set) on its replication, in one transaction; it
// returns the failover as updated. Only a running failover changes, else
// ErrConflict; an unknown one is ErrNotFound; over-long values are
// ErrInvalidArgument.
func (d *DB) UpdateFailover(ctx context.Context, id string, f FailoverFields, ev *ReplicationEventInput) (*Failover, error) {
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	if err := checkLengths(
		lengthCheck{"step", str(f.Step), statusColumnWidth},
		lengthCheck{"point", str(f.Point), MaxNameLength},
		lengthCheck{"final_transfer_id", str(f.FinalTransferID), transferIDLength},
		lengthCheck{"to_volume_id", str(f.ToVolumeID), MaxIDLength},
		lengthCheck{"preserved", str(f.Preserved), MaxNameLength},
	); err != nil {
		return nil, fmt.Errorf("db: update failover %s: %w", id, err)
	}
	if f.PreservedBytes != nil && *f.PreservedBytes < 0 {
		return nil, fmt.Errorf("db: update failover %s: %w: negative preserved_bytes", id, ErrInvalidArgument)
	}
	if ev != nil {
		if err := ev.check(); err != nil {
			return nil, fmt.Errorf("db: update failover %s: %w", id, err)
		}
	}
	var out Failover
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		cur, err := d.lockRunningFailover(tx, id)
		if err != nil {
			return err
		}
		now := d.now()
		upd := map[string]any{"updated_at": now}
		for col, v := range map[string]*string{
			"step": f.Step, "point": f.Point, "final_transfer_id": f.FinalTransferID,
			"peer": f.Peer, "to_volume_id": f.ToVolumeID, "preserved": f.Preserved,
		} {
			if v != nil {
				upd[col] = *v
			}
		}
		if f.PreservedBytes != nil {
			upd["preserved_bytes"] = *f.PreservedBytes
		}
		if f.RegisterStartedAt != nil {
			if f.RegisterStartedAt.IsZero() {
				upd["register_started_at"] = nil
			} else {
				upd["register_started_at"] = dbTime(*f.RegisterStartedAt)
			}
		}
		if f.AvailableAt != nil {
			upd["available_at"] = dbTime(*f.AvailableAt)
		}
		if f.Error != nil {
			if *f.Error == "" {
				upd["error"] = nil
			} else {
				upd["error"] = *f.Error
			}
		}
		res := tx.Model(&Failover{}).Where("id = ? AND status = ?", id, FailoverRunning).UpdateColumns(upd)
		if res.Error != nil {
			return fmt.Errorf("update: %w", translate(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: failover %s changed concurrently", ErrConflict, id)
		}
		if ev != nil && ev.Kind != "" {
			if err := addReplicationEvent(tx, now, cur.ReplicationID, *ev); err != nil {
				return err
			}
		}
		return tx.Where("id = ?", id).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: update failover %s: %w", id, err)
	}
	return &out, nil
}

// lockHeldReplication reads the replication of failover f within tx, its
// row locked; one that failover f does not hold (failover_id) is
// ErrConflict.
func (d *DB) lockHeldReplication(tx *gorm.DB, f *Failover) (*Replication, error) {
	var r Replication
	if err := d.lockRow(tx).Where("id = ?", f.ReplicationID).Take(&r).Error; err != nil {
		return nil, fmt.Errorf("replication: %w", translate(err))
	}
	if r.FailoverID == nil || *r.FailoverID != f.ID {
		return nil, fmt.Errorf("%w: replication %s is not held by failover %s", ErrConflict, r.ID, f.ID)
	}
	return &r, nil
}

// StartFinalCycle starts the final cycle of failover failoverID (running,
// else ErrConflict; unknown: ErrNotFound), in one transaction with the
// failover's and the replication's rows locked. If the failover has a
// final cycle already (final_transfer_id), it returns that transfer: a
// repeat starts nothing. Else the replication must be held by the
// failover (failover_id, status failing_over or failing_back), else
// ErrConflict; if its last cycle is not finished, it is ErrConflict too
// (the caller waits for it and calls again); else t is inserted as
// StartCycle inserts a cycle (its events, the outbox message msg(t)
// builds, last_transfer_id) and recorded as the failover's
// final_transfer_id. next_run_at is left alone.
func (d *DB) StartFinalCycle(ctx context.Context, failoverID string, t *Transfer, msg func(*Transfer) (*OutboxMessage, error)) (*Transfer, error) {
	if t == nil {
		return nil, fmt.Errorf("db: start final cycle of failover %s: %w: nil transfer", failoverID, ErrInvalidArgument)
	}
	var out *Transfer
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		out = nil
		f, err := d.lockRunningFailover(tx, failoverID)
		if err != nil {
			return err
		}
		if f.FinalTransferID != "" {
			var prev Transfer
			if err := tx.Where("id = ?", f.FinalTransferID).Take(&prev).Error; err != nil {
				return fmt.Errorf("final cycle %s: %w", f.FinalTransferID, translate(err))
			}
			out = &prev
			return nil
		}
		r, err := d.lockHeldReplication(tx, f)
		if err != nil {
			return err
		}
		if !r.Status.InFailover() {
			return fmt.Errorf("%w: replication %s is %s: its final cycle is past", ErrConflict, r.ID, r.Status)
		}
		if t.ReplicationID != "" && t.ReplicationID != r.ID {
			return fmt.Errorf("%w: transfer belongs to replication %s", ErrInvalidArgument, t.ReplicationID)
		}
		last, err := lastCycleRunning(tx, r)
		if err != nil {
			return err
		}
		if last != nil {
			return fmt.Errorf("%w: the replication's cycle %s is still %s", ErrConflict, last.ID, last.Status)
		}
		ts := d.now()
		if err := insertCycle(tx, ts, r, t, msg, map[string]any{"updated_at": ts},
			fmt.Sprintf("final cycle %s of %s %s started", t.ID, f.Kind, f.ID)); err != nil {
			return err
		}
		if err := tx.Model(&Failover{}).Where("id = ?", f.ID).
			UpdateColumns(map[string]any{"final_transfer_id": t.ID, "updated_at": ts}).Error; err != nil {
			return fmt.Errorf("update failover: %w", translate(err))
		}
		out = t
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("db: start final cycle of failover %s: %w", failoverID, err)
	}
	return out, nil
}

// FlipSide is one end of a replication after a flip.
type FlipSide struct {
	Region, Pool, Image, VolumeID string
}

// Flip is what FlipReplication makes of a replication.
type Flip struct {
	// To is the replication's new status: failed_over (a failover's
	// flip), active (a failback's).
	To ReplicationStatus
	// KeepPoint is the point common to both images: the only point row
	// kept, and the replication's last_sync_at.
	KeepPoint string
	// Source and Dest are the new ends (Dest.VolumeID: the Cinder volume
	// the destination image is, "" for Ferry's replica).
	Source, Dest FlipSide
	// Step, when not "", is recorded as the failover's step.
	Step string
	// Finish ends the failover with the flip (done, failover_id cleared);
	// else it stays running and holds the replication (an unplanned
	// failover, which still demotes region A's image).
	Finish bool
}

// FlipReplication swaps the ends of the replication failover failoverID
// holds (running, else ErrConflict; unknown: ErrNotFound), in one
// transaction: source and destination (and source_key) become in.Source
// and in.Dest, the status in.To (the state machine must allow it, else
// ErrInvalidTransition), every point row but in.KeepPoint is deleted
// (an unknown KeepPoint is ErrNotFound), last_sync_at becomes that
// point's created_at, next_run_at now, last_error is cleared; the
// failover records the point (and in.Step); with in.Finish the failover is
// done (finished_at) and failover_id NULL. It records ev (kind failed_over
// or failed_back unless set) and returns the replication as updated.
func (d *DB) FlipReplication(ctx context.Context, failoverID string, in Flip, ev ReplicationEventInput) (*Replication, error) {
	if in.To != ReplicationFailedOver && in.To != ReplicationActive {
		return nil, fmt.Errorf("db: flip replication of failover %s: %w: a flip goes to failed_over or active, not %q", failoverID, ErrInvalidArgument, in.To)
	}
	if in.KeepPoint == "" {
		return nil, fmt.Errorf("db: flip replication of failover %s: %w: no point to keep", failoverID, ErrInvalidArgument)
	}
	if in.Source.Region == "" || in.Source.Pool == "" || in.Source.Image == "" || in.Dest.Region == "" || in.Dest.Pool == "" || in.Dest.Image == "" {
		return nil, fmt.Errorf("db: flip replication of failover %s: %w: a flip needs source and destination region, pool and image", failoverID, ErrInvalidArgument)
	}
	if err := checkLengths(
		lengthCheck{"source.region", in.Source.Region, MaxNameLength},
		lengthCheck{"source.pool", in.Source.Pool, MaxNameLength},
		lengthCheck{"source.image", in.Source.Image, MaxNameLength},
		lengthCheck{"source.volume_id", in.Source.VolumeID, MaxIDLength},
		lengthCheck{"destination.region", in.Dest.Region, MaxNameLength},
		lengthCheck{"destination.pool", in.Dest.Pool, MaxNameLength},
		lengthCheck{"destination.image", in.Dest.Image, MaxNameLength},
		lengthCheck{"destination.volume_id", in.Dest.VolumeID, MaxIDLength},
		lengthCheck{"point", in.KeepPoint, MaxNameLength},
		lengthCheck{"step", in.Step, statusColumnWidth},
	); err != nil {
		return nil, fmt.Errorf("db: flip replication of failover %s: %w", failoverID, err)
	}
	if ev.Kind == "" {
		ev.Kind = RepEventFailedOver
		if in.To == ReplicationActive {
			ev.Kind = RepEventFailedBack
		}
	}
	if ev.Message == "" {
		ev.Message = fmt.Sprintf("%s: source %s/%s in %s, destination %s/%s in %s, point %s kept",
			in.To, in.Source.Pool, in.Source.Image, in.Source.Region, in.Dest.Pool, in.Dest.Image, in.Dest.Region, in.KeepPoint)
	}
	if err := ev.check(); err != nil {
		return nil, fmt.Errorf("db: flip replication of failover %s: %w", failoverID, err)
	}
	var out Replication
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		f, err := d.lockRunningFailover(tx, failoverID)
		if err != nil {
			return err
		}
		r, err := d.lockHeldReplication(tx, f)
		if err != nil {
			return err
		}
		if !CanTransitionReplication(r.Status, in.To) {
			return fmt.Errorf("%w: %s → %s is not allowed", ErrInvalidTransition, r.Status, in.To)
		}
		var p ReplicationPoint
		if err := tx.Where("replication_id = ? AND name = ?", r.ID, in.KeepPoint).Take(&p).Error; err != nil {
			if errors.Is(err, gorm.ErrRecordNotFound) {
				return fmt.Errorf("%w: replication has no point %q", ErrNotFound, in.KeepPoint)
			}
			return err
		}
		if err := tx.Where("replication_id = ? AND name <> ?", r.ID, in.KeepPoint).Delete(&ReplicationPoint{}).Error; err != nil {
			return fmt.Errorf("delete points: %w", translate(err))
		}
		now := d.now()
		upd := map[string]any{
			"source_region": in.Source.Region, "source_pool": in.Source.Pool, "source_image": in.Source.Image,
			"source_volume_id": in.Source.VolumeID, "source_key": sourceKey(in.Source.Region, in.Source.Pool, in.Source.Image),
			"dest_region": in.Dest.Region, "dest_pool": in.Dest.Pool, "dest_image": in.Dest.Image, "dest_volume_id": in.Dest.VolumeID,
			"status": in.To, "points_count": 1, "last_sync_at": p.CreatedAt, "next_run_at": now,
			"last_error": nil, "updated_at": now,
		}
		fupd := map[string]any{"point": in.KeepPoint, "updated_at": now}
		if in.Step != "" {
			fupd["step"] = in.Step
		}
		if in.Finish {
			upd["failover_id"] = nil
			fupd["status"], fupd["finished_at"] = FailoverDone, now
		}
		res := tx.Model(&Replication{}).Where("id = ? AND failover_id = ?", r.ID, f.ID).UpdateColumns(upd)
		if res.Error != nil {
			return fmt.Errorf("update: %w", translate(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: replication changed concurrently", ErrConflict)
		}
		if err := tx.Model(&Failover{}).Where("id = ?", f.ID).UpdateColumns(fupd).Error; err != nil {
			return fmt.Errorf("update failover: %w", translate(err))
		}
		if err := addReplicationEvent(tx, now, r.ID, ev); err != nil {
			return err
		}
		return tx.Where("id = ?", r.ID).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: flip replication of failover %s: %w", failoverID, err)
	}
	return &out, nil
}

// FinishFailover ends failover id (running, else ErrConflict; unknown:
// ErrNotFound) in one transaction: it becomes status (done or error, with
// errMsg as its error, "unknown error" when empty) with finished_at; its
// replication, which it must hold (else ErrConflict), gets failover_id
// NULL and, when replicationTo is not "" nor its current status,
// replicationTo (the state machine must allow it, else
// ErrInvalidTransition; entering error stores errMsg as last_error). A
// replication failing over or back must be given the status it ends in
// (active, failed_over or error); a failover status as replicationTo is
// ErrInvalidArgument. It records ev (kind failover_failed for an error,
// else failed_over or failed_back after the failover's kind, unless set).
func (d *DB) FinishFailover(ctx context.Context, id string, status FailoverStatus, errMsg string, replicationTo ReplicationStatus, ev ReplicationEventInput) error {
	if status != FailoverDone && status != FailoverError {
		return fmt.Errorf("db: finish failover %s: %w: a failover ends done or error, not %q", id, ErrInvalidArgument, status)
	}
	if replicationTo != "" && (!replicationTo.Valid() || replicationTo.InFailover() || replicationTo == ReplicationDeleting) {
		return fmt.Errorf("db: finish failover %s: %w: a failover does not end in %q", id, ErrInvalidArgument, replicationTo)
	}
	if err := ev.check(); err != nil {
		return fmt.Errorf("db: finish failover %s: %w", id, err)
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		f, err := d.lockRunningFailover(tx, id)
		if err != nil {
			return err
		}
		r, err := d.lockHeldReplication(tx, f)
		if err != nil {
			return err
		}
		now := d.now()
		upd := map[string]any{"failover_id": nil, "updated_at": now}
		switch {
		case replicationTo != "" && replicationTo != r.Status:
			if !CanTransitionReplication(r.Status, replicationTo) {
				return fmt.Errorf("%w: %s → %s is not allowed", ErrInvalidTransition, r.Status, replicationTo)
			}
			upd["status"] = replicationTo
			if replicationTo == ReplicationError {
				upd["last_error"] = firstNonEmpty(errMsg, "unknown error")
			}
		case r.Status.InFailover():
			return fmt.Errorf("%w: replication %s is %s: name the status it ends in", ErrInvalidTransition, r.ID, r.Status)
		}
		fupd := map[string]any{"status": status, "finished_at": now, "updated_at": now}
		if status == FailoverError {
			fupd["error"] = firstNonEmpty(errMsg, "unknown error")
		}
		res := tx.Model(&Failover{}).Where("id = ? AND status = ?", id, FailoverRunning).UpdateColumns(fupd)
		if res.Error != nil {
			return fmt.Errorf("update failover: %w", translate(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: failover %s changed concurrently", ErrConflict, id)
		}
		if err := tx.Model(&Replication{}).Where("id = ? AND failover_id = ?", r.ID, id).UpdateColumns(upd).Error; err != nil {
			return fmt.Errorf("update: %w", translate(err))
		}
		if ev.Kind == "" {
			switch {
			case status == FailoverError:
				ev.Kind = RepEventFailoverFailed
			case f.Kind == FailoverKindFailback:
				ev.Kind = RepEventFailedBack
			default:
				ev.Kind = RepEventFailedOver
			}
		}
		if ev.Message == "" {
			ev.Message = fmt.Sprintf("%s %s %s", f.Kind, id, status)
			if status == FailoverError {
				ev.Message += ": " + firstNonEmpty(errMsg, "unknown error")
			}
		}
		return addReplicationEvent(tx, now, r.ID, ev)
	})
	if err != nil {
		return fmt.Errorf("db: finish failover %s: %w", id, err)
	}
	return nil
}
