package db

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// ReplicaImagePrefix names a replica image: ferry-replica-<replication id>.
const ReplicaImagePrefix = "ferry-replica-"

// PointPrefix names a cycle's snapshot, a point once verified, on both
// sides: ferry-<transfer id> (the agents' transfer.SnapshotPrefix).
const PointPrefix = "ferry-"

// ReplicationEventInput is the event a replication change records; a zero
// Kind records none (or the change's default kind, where it has one).
type ReplicationEventInput struct {
	Kind       ReplicationEventKind
	Message    string
	TransferID string
	RequestID  string
}

func (ev ReplicationEventInput) check() error {
	switch {
	case len(ev.Kind) > statusColumnWidth:
		return fmt.Errorf("%w: event kind longer than %d characters", ErrInvalidArgument, statusColumnWidth)
	case utf8.RuneCountInString(ev.RequestID) > MaxRequestIDLength:
		return fmt.Errorf("%w: request id longer than %d characters", ErrInvalidArgument, MaxRequestIDLength)
	case len(ev.TransferID) > transferIDLength:
		return fmt.Errorf("%w: event transfer id longer than %d characters", ErrInvalidArgument, transferIDLength)
	}
	return nil
}

// addReplicationEvent inserts an event of replication id within tx.
func addReplicationEvent(tx *gorm.DB, now time.Time, id string, ev ReplicationEventInput) error {
	row := ReplicationEvent{
		ReplicationID: id, CreatedAt: now, Kind: ev.Kind,
		Message: ev.Message, TransferID: ev.TransferID, RequestID: ev.RequestID,
	}
	if err := tx.Create(&row).Error; err != nil {
		return fmt.Errorf("insert replication event: %w", translate(err))
	}
	return nil
}

// dbTime is t as the databases store it: UTC, in microseconds (MySQL
// would round a finer time, which could move a due time past its tick).
func dbTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// sourceKey identifies a source image across replications (the unique
// source_key column): a digest, as region, pool and image together exceed
// what MySQL indexes.
func sourceKey(region, pool, image string) *string {
	h := sha256.New()
	for _, s := range []string{region, pool, image} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	k := hex.EncodeToString(h.Sum(nil))
	return &k
}

// checkReplicationSettings validates the settings a user may change.
func checkReplicationSettings(interval, rpo, keepLast, keepHourly, keepDaily int, bandwidth int64) error {
	switch {
	case interval <= 0:
		return fmt.Errorf("%w: interval_seconds must be positive", ErrInvalidArgument)
	case rpo <= 0:
		return fmt.Errorf("%w: rpo_seconds must be positive", ErrInvalidArgument)
	case keepLast < 1:
		return fmt.Errorf("%w: keep_last must be at least 1", ErrInvalidArgument)
	case keepHourly < 0 || keepDaily < 0:
		return fmt.Errorf("%w: keep_hourly and keep_daily must not be negative", ErrInvalidArgument)
	case bandwidth < 0:
		return fmt.Errorf("%w: bandwidth_limit must not be negative", ErrInvalidArgument)
	}
	return nil
}

// prepareNewReplication validates a replication to insert and sets the
// fields the store owns.
func prepareNewReplication(r *Replication, now time.Time) error {
	if r.ID == "" {
		r.ID = uuid.NewString()
	} else {
		u, err := uuid.Parse(r.ID)
		if err != nil || len(r.ID) != transferIDLength {
			return fmt.Errorf("%w: replication id %q is not a UUID", ErrInvalidArgument, r.ID)
		}
		r.ID = u.String()
	}
	switch r.Status {
	case "":
		r.Status = ReplicationActive
	case ReplicationActive, ReplicationPaused:
	default:
		return fmt.Errorf("%w: a new replication is active or paused, not %q", ErrInvalidArgument, r.Status)
	}
	if r.ProjectID == "" {
		return fmt.Errorf("%w: replication has no project_id", ErrInvalidArgument)
	}
	if r.SourceRegion == "" || r.SourcePool == "" || r.SourceImage == "" || r.DestRegion == "" || r.DestPool == "" {
		return fmt.Errorf("%w: replication needs source region, pool and image, destination region and pool", ErrInvalidArgument)
	}
	if r.DestImage == "" {
		r.DestImage = ReplicaImagePrefix + r.ID
	}
	if err := checkReplicationSettings(r.IntervalSeconds, r.RPOSeconds, r.KeepLast, r.KeepHourly, r.KeepDaily, r.BandwidthLimit); err != nil {
		return err
	}
	for _, f := range []struct {
		name, value string
		max         int
	}{
		{"name", r.Name, MaxNameLength},
		{"description", r.Description, MaxDescriptionLength},
		{"project_id", r.ProjectID, MaxIDLength},
		{"user_id", r.UserID, MaxIDLength},
		{"source.region", r.SourceRegion, MaxNameLength},
		{"source.pool", r.SourcePool, MaxNameLength},
		{"source.image", r.SourceImage, MaxNameLength},
		{"source.volume_id", r.SourceVolumeID, MaxIDLength},
		{"destination.region", r.DestRegion, MaxNameLength},
		{"destination.pool", r.DestPool, MaxNameLength},
		{"destination.image", r.DestImage, MaxNameLength},
	} {
		if utf8.RuneCountInString(f.value) > f.max {
			return fmt.Errorf("%w: %s longer than %d characters", ErrInvalidArgument, f.name, f.max)
		}
	}
	if r.NextRunAt.IsZero() {
		r.NextRunAt = now
	}
	r.NextRunAt = dbTime(r.NextRunAt)
	r.SourceKey = sourceKey(r.SourceRegion, r.SourcePool, r.SourceImage)
	r.LastSyncAt, r.LastTransferID, r.LastError = nil, "", nil
	r.BytesLastCycle, r.PointsCount = 0, 0
	r.CyclesCompleted, r.CyclesFailed, r.CyclesSkipped, r.BytesReplicated = 0, 0, 0, 0
	r.RPOBreachedAt, r.KeepReplica = nil, false
	r.FailoverID, r.DestVolumeID = nil, ""
	r.CreatedAt, r.UpdatedAt = now, now
	return nil
}

// CreateReplication inserts r (status active unless paused is asked;
// next_run_at now unless set; dest_image ferry-replica-<id> unless set)
// with its event "created". An empty r.ID gets a new UUID. Bad values are
// ErrInvalidArgument; a live (not deleting) replication of the same source
// image (source region, pool and image) is ErrConflict, also between
// concurrent creations (a unique index). Options: WithRequestID,
// WithEventMessage.
func (d *DB) CreateReplication(ctx context.Context, r *Replication, opts ...CreateOption) error {
	if r == nil {
		return fmt.Errorf("db: create replication: %w: nil replication", ErrInvalidArgument)
	}
	co := createOptions{message: "replication created"}
	for _, o := range opts {
		o(&co)
	}
	now := d.now()
	if err := prepareNewReplication(r, now); err != nil {
		return fmt.Errorf("db: create replication: %w", err)
	}
	ev := ReplicationEventInput{Kind: RepEventCreated, Message: co.message, RequestID: co.requestID}
	if err := ev.check(); err != nil {
		return fmt.Errorf("db: create replication: %w", err)
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		var other Replication
		err := tx.Select("id").Where("source_key = ?", *r.SourceKey).Take(&other).Error
		switch {
		case err == nil:
			return fmt.Errorf("%w: replication %s already protects %s/%s in %s", ErrConflict, other.ID, r.SourcePool, r.SourceImage, r.SourceRegion)
		case !errors.Is(err, gorm.ErrRecordNotFound):
			return err
		}
		if err := tx.Create(r).Error; err != nil {
			return fmt.Errorf("insert replication: %w", translate(err))
		}
		return addReplicationEvent(tx, now, r.ID, ev)
	})
	if err != nil {
		return fmt.Errorf("db: create replication %s: %w", r.ID, err)
	}
	return nil
}

// GetReplication returns the replication with id if the scope sees it,
// else ErrNotFound.
func (d *DB) GetReplication(ctx context.Context, id string, scope Scope) (*Replication, error) {
	q, err := scope.apply(d.gorm.WithContext(ctx).Where("id = ?", id))
	if err != nil {
		return nil, fmt.Errorf("db: get replication %s: %w", id, err)
	}
	var r Replication
	if err := q.Take(&r).Error; err != nil {
		return nil, fmt.Errorf("db: get replication %s: %w", id, translate(err))
	}
	return &r, nil
}

// ListReplications returns one page of replications and whether more
// follow, with ListTransfers' semantics: opts.Scope, Limit, Marker (looked
// up within the scope), SortKey (created_at, updated_at, name, status,
// id), SortDir (desc by default), and the SourceRegion and DestRegion
// filters. The transfer filters (Status, Statuses, Agent, ReplicationID)
// are ErrInvalidArgument here.
func (d *DB) ListReplications(ctx context.Context, opts ListOpts) ([]Replication, bool, error) {
	pg, err := parsePage(opts)
	if err != nil {
		return nil, false, fmt.Errorf("db: list replications: %w", err)
	}
	if opts.Status != "" || len(opts.Statuses) > 0 || opts.Agent != "" || opts.ReplicationID != "" {
		return nil, false, fmt.Errorf("db: list replications: %w: status, agent and replication filters are for transfers", ErrInvalidArgument)
	}
	g := d.gorm.WithContext(ctx)
	q, err := opts.Scope.apply(g.Model(&Replication{}))
	if err != nil {
		return nil, false, fmt.Errorf("db: list replications: %w", err)
	}
	if opts.SourceRegion != "" {
		q = q.Where("source_region = ?", opts.SourceRegion)
	}
	if opts.DestRegion != "" {
		q = q.Where("dest_region = ?", opts.DestRegion)
	}
	if opts.Marker != "" {
		mq, _ := opts.Scope.apply(g.Where("id = ?", opts.Marker))
		var m Replication
		if err := mq.Take(&m).Error; err != nil {
			if errors.Is(err, gorm.ErrRecordNotFound) {
				return nil, false, fmt.Errorf("db: list replications: %w: %q", ErrMarkerNotFound, opts.Marker)
			}
			return nil, false, fmt.Errorf("db: list replications: marker: %w", err)
		}
		var v any
		switch pg.key {
		case "created_at":
			v = m.CreatedAt
		case "updated_at":
			v = m.UpdatedAt
		case "name":
			v = m.Name
		case "status":
			v = string(m.Status)
		}
		q = pg.after(q, v, m.ID)
	}
	var items []Replication
	if err := pg.order(q).Limit(pg.limit + 1).Find(&items).Error; err != nil {
		return nil, false, fmt.Errorf("db: list replications: %w", err)
	}
	more := len(items) > pg.limit
	if more {
		items = items[:pg.limit]
	}
	return items, more, nil
}

// ReplicationFields are the settings UpdateReplication may change; nil
// fields are left alone.
type ReplicationFields struct {
	Name            *string
	Description     *string
	IntervalSeconds *int
	RPOSeconds      *int
	KeepLast        *int
	KeepHourly      *int
	KeepDaily       *int
	BandwidthLimit  *int64
	// NextRunAt moves the next cycle (a sync sets it to now).
	NextRunAt *time.Time
	// ExpectStatus, when not empty, lists the statuses the replication
	// must be in, else ErrConflict (a sync needs active).
	ExpectStatus []ReplicationStatus
}

// UpdateReplication changes the settings f names of a replication the
// scope sees and records event (when its Kind is set) in one transaction,
// and returns the replication as updated. The merged settings are checked
// as at creation (ErrInvalidArgument). A deleting replication, or one not
// in f.ExpectStatus, is ErrConflict.
func (d *DB) UpdateReplication(ctx context.Context, id string, scope Scope, f ReplicationFields, event ReplicationEventInput) (*Replication, error) {
	if err := event.check(); err != nil {
		return nil, fmt.Errorf("db: update replication %s: %w", id, err)
	}
	for _, s := range []struct {
		name string
		v    *string
		max  int
	}{{"name", f.Name, MaxNameLength}, {"description", f.Description, MaxDescriptionLength}} {
		if s.v != nil && utf8.RuneCountInString(*s.v) > s.max {
			return nil, fmt.Errorf("db: update replication %s: %w: %s longer than %d characters", id, ErrInvalidArgument, s.name, s.max)
		}
	}
	var out Replication
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		q, err := scope.apply(d.lockRow(tx).Where("id = ?", id))
		if err != nil {
			return err
		}
		var cur Replication
		if err := q.Take(&cur).Error; err != nil {
			return translate(err)
		}
		if cur.Status == ReplicationDeleting {
			return fmt.Errorf("%w: replication is deleting", ErrConflict)
		}
		if len(f.ExpectStatus) > 0 && !slices.Contains(f.ExpectStatus, cur.Status) {
			return fmt.Errorf("%w: replication is %s, expected %v", ErrConflict, cur.Status, f.ExpectStatus)
		}
		upd := map[string]any{}
		pick := func(col string, v *int, into *int) {
			if v != nil {
				*into = *v
				upd[col] = *v
			}
		}
		pick("interval_seconds", f.IntervalSeconds, &cur.IntervalSeconds)
		pick("rpo_seconds", f.RPOSeconds, &cur.RPOSeconds)
		pick("keep_last", f.KeepLast, &cur.KeepLast)
		pick("keep_hourly", f.KeepHourly, &cur.KeepHourly)
		pick("keep_daily", f.KeepDaily, &cur.KeepDaily)
		if f.BandwidthLimit != nil {
			cur.BandwidthLimit = *f.BandwidthLimit
			upd["bandwidth_limit"] = *f.BandwidthLimit
		}
		if err := checkReplicationSettings(cur.IntervalSeconds, cur.RPOSeconds, cur.KeepLast, cur.KeepHourly, cur.KeepDaily, cur.BandwidthLimit); err != nil {
			return err
		}
		if f.Name != nil {
			upd["name"] = *f.Name
		}
		if f.Description != nil {
			upd["description"] = *f.Description
		}
		if f.NextRunAt != nil {
			upd["next_run_at"] = dbTime(*f.NextRunAt)
		}
		now := d.now()
		upd["updated_at"] = now
		if err := tx.Model(&Replication{}).Where("id = ?", id).UpdateColumns(upd).Error; err != nil {
			return fmt.Errorf("update: %w", translate(err))
		}
		if event.Kind != "" {
			if err := addReplicationEvent(tx, now, id, event); err != nil {
				return err
			}
		}
		return tx.Where("id = ?", id).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: update replication %s: %w", id, err)
	}
	return &out, nil
}

// defaultStatusEvent is the event kind of entering status to.
func defaultStatusEvent(to ReplicationStatus) ReplicationEventKind {
	switch to {
	case ReplicationPaused:
		return RepEventPaused
	case ReplicationActive:
		return RepEventResumed
	case ReplicationError:
		return RepEventError
	}
	return RepEventDeleting
}

// SetReplicationStatus moves a replication the scope sees to status to, if
// it is in expectFrom (when not empty) and the state machine
// (CanTransitionReplication) allows it, else ErrInvalidTransition; it
// records ev (its kind defaults to paused, resumed or error after to) and
// returns the replication as updated. Entering error stores ev.Message as
// last_error. Deleting is DeleteReplication's, and the failover statuses
// are the failover functions' (StartFailover, FlipReplication,
// FinishFailover): ErrInvalidArgument here. While a failover runs
// (failover_id set) it is ErrConflict.
func (d *DB) SetReplicationStatus(ctx context.Context, id string, scope Scope, to ReplicationStatus, expectFrom []ReplicationStatus, ev ReplicationEventInput) (*Replication, error) {
	if !to.Valid() || to == ReplicationDeleting || to.InFailover() || to == ReplicationFailedOver {
		return nil, fmt.Errorf("db: set replication %s status: %w: cannot set %q here (deleting is DeleteReplication, the failover statuses the failover functions')", id, ErrInvalidArgument, to)
	}
	if ev.Kind == "" {
		ev.Kind = defaultStatusEvent(to)
	}
	if err := ev.check(); err != nil {
		return nil, fmt.Errorf("db: set replication %s status: %w", id, err)
	}
	var out Replication
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		q, err := scope.apply(d.lockRow(tx).Where("id = ?", id))
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
		upd := map[string]any{"status": to, "updated_at": now}
		if to == ReplicationError {
			msg := ev.Message
			if msg == "" {
				msg = "unknown error"
			}
			upd["last_error"] = msg
		}
		res := tx.Model(&Replication{}).Where("id = ? AND status = ? AND failover_id IS NULL", id, cur.Status).UpdateColumns(upd)
		if res.Error != nil {
			return fmt.Errorf("update: %w", translate(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: replication changed concurrently (was %s)", ErrConflict, cur.Status)
		}
		if err := addReplicationEvent(tx, now, id, ev); err != nil {
			return err
		}
		return tx.Where("id = ?", id).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: set replication %s status to %s: %w", id, to, err)
	}
	return &out, nil
}

// ListReplicationEvents returns a replication's events, oldest first; an
// unknown replication is ErrNotFound. It does not check scope: look the
// replication up with GetReplication first.
func (d *DB) ListReplicationEvents(ctx context.Context, id string) ([]ReplicationEvent, error) {
	g := d.gorm.WithContext(ctx)
	if err := replicationExists(g, id); err != nil {
		return nil, fmt.Errorf("db: list events of replication %s: %w", id, err)
	}
	var evs []ReplicationEvent
	if err := g.Where("replication_id = ?", id).Order("id").Find(&evs).Error; err != nil {
		return nil, fmt.Errorf("db: list events of replication %s: %w", id, err)
	}
	return evs, nil
}

func replicationExists(g *gorm.DB, id string) error {
	var n int64
	if err := g.Model(&Replication{}).Where("id = ?", id).Count(&n).Error; err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// RecordReplicationEvent adds ev (ReplicationID and Kind required; the
// store sets its id and time) to a replication's history; an unknown
// replication is ErrNotFound.
func (d *DB) RecordReplicationEvent(ctx context.Context, ev ReplicationEvent) error {
	in := ReplicationEventInput{Kind: ev.Kind, Message: ev.Message, TransferID: ev.TransferID, RequestID: ev.RequestID}
	if ev.Kind == "" {
		return fmt.Errorf("db: record replication event: %w: no kind", ErrInvalidArgument)
	}
	if err := in.check(); err != nil {
		return fmt.Errorf("db: record replication event: %w", err)
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		if err := replicationExists(tx, ev.ReplicationID); err != nil {
			return err
		}
		return addReplicationEvent(tx, d.now(), ev.ReplicationID, in)
	})
	if err != nil {
		return fmt.Errorf("db: record event for replication %s: %w", ev.ReplicationID, err)
	}
	return nil
}

// ListPoints returns a replication's retained points, newest first (by
// created_at, then name); an unknown replication is ErrNotFound. It does
// not check scope.
func (d *DB) ListPoints(ctx context.Context, replicationID string) ([]ReplicationPoint, error) {
	g := d.gorm.WithContext(ctx)
	if err := replicationExists(g, replicationID); err != nil {
		return nil, fmt.Errorf("db: list points of replication %s: %w", replicationID, err)
	}
	var ps []ReplicationPoint
	if err := g.Where("replication_id = ?", replicationID).Order("created_at DESC").Order("name DESC").Find(&ps).Error; err != nil {
		return nil, fmt.Errorf("db: list points of replication %s: %w", replicationID, err)
	}
	return ps, nil
}

// DueReplications returns up to limit (at most MaxListLimit; 0 or less:
// MaxListLimit) replications whose status schedules cycles (active,
// failed_over), that no failover holds (failover_id NULL) and that are
// not members of a group (the group schedules theirs), whose next_run_at
// is at or before now, the most overdue first.
func (d *DB) DueReplications(ctx context.Context, now time.Time, limit int) ([]Replication, error) {
	if limit <= 0 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	var out []Replication
	err := d.gorm.WithContext(ctx).
		Where("status IN ? AND failover_id IS NULL AND group_id IS NULL AND next_run_at <= ?", scheduledStatuses(), dbTime(now)).
		Order("next_run_at ASC").Order("id ASC").Limit(limit).Find(&out).Error
	if err != nil {
		return nil, fmt.Errorf("db: due replications: %w", err)
	}
	return out, nil
}

// StartCycle starts the cycle of replication id that was due at now, in
// one transaction with the replication's row locked. If the replication's
// status no longer schedules cycles (see ReplicationStatus.Schedules), a
// failover holds it (failover_id set), or its next_run_at is after now
// already (another scheduler started this cycle), it does nothing and
// returns (nil, false, nil). Else, if its last cycle transfer is not finished (queued, active
// or cancelling: the destination is still being written), it records a
// skip (cycles_skipped+1, event cycle_skipped) and returns skipped; else
// it inserts t as CreateTransfer does (replication_id set, project_id the
// replication's when empty), with the outbox message msg(t) builds (when
// msg is not nil) and the event cycle_started, and sets last_transfer_id.
// Either way next_run_at becomes next, which must be after now.
func (d *DB) StartCycle(ctx context.Context, id string, now, next time.Time, t *Transfer, msg func(*Transfer) (*OutboxMessage, error)) (started *Transfer, skipped bool, err error) {
	if t == nil {
		return nil, false, fmt.Errorf("db: start cycle of %s: %w: nil transfer", id, ErrInvalidArgument)
	}
	now, next = dbTime(now), dbTime(next)
	if !next.After(now) {
		return nil, false, fmt.Errorf("db: start cycle of %s: %w: next run %s is not after now %s", id, ErrInvalidArgument, next, now)
	}
	if t.ReplicationID != "" && t.ReplicationID != id {
		return nil, false, fmt.Errorf("db: start cycle of %s: %w: transfer belongs to replication %s", id, ErrInvalidArgument, t.ReplicationID)
	}
	err = d.inTx(ctx, func(tx *gorm.DB) error {
		started, skipped = nil, false
		var r Replication
		if err := d.lockRow(tx).Where("id = ?", id).Take(&r).Error; err != nil {
			return translate(err)
		}
		if !r.Status.Schedules() || r.FailoverID != nil || r.GroupID != nil || r.NextRunAt.After(now) {
			return nil // paused, failing over or grouped meanwhile, or another scheduler was first
		}
		ts := d.now()
		upd := map[string]any{"next_run_at": next, "updated_at": ts}
		last, err := lastCycleRunning(tx, &r)
		if err != nil {
			return err
		}
		if last != nil {
			upd["cycles_skipped"] = gorm.Expr("cycles_skipped + 1")
			if err := tx.Model(&Replication{}).Where("id = ?", id).UpdateColumns(upd).Error; err != nil {
				return fmt.Errorf("update: %w", translate(err))
			}
			skipped = true
			return addReplicationEvent(tx, ts, id, ReplicationEventInput{
				Kind: RepEventCycleSkipped, TransferID: last.ID,
				Message: fmt.Sprintf("cycle skipped: the previous cycle %s is still %s", last.ID, last.Status),
			})
		}
		if err := insertCycle(tx, ts, &r, t, msg, upd, "cycle "+t.ID+" started"); err != nil {
			return err
		}
		started = t
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("db: start cycle of replication %s: %w", id, err)
	}
	return started, skipped, nil
}

// lastCycleRunning returns replication r's last cycle transfer when it is
// not finished (nil when it is, or when there is none), within tx.
func lastCycleRunning(tx *gorm.DB, r *Replication) (*Transfer, error) {
	if r.LastTransferID == "" {
		return nil, nil
	}
	var last Transfer
	err := tx.Select("id", "status").Where("id = ?", r.LastTransferID).Take(&last).Error
	switch {
	case errors.Is(err, gorm.ErrRecordNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	case IsTerminal(last.Status):
		return nil, nil
	}
	return &last, nil
}

// insertCycle inserts t as a cycle of replication r within tx, as
// CreateTransfer does (replication_id set, project_id the replication's
// when empty), with its queued event, the outbox message msg(t) builds
// (when msg is not nil and returns one) and the replication event
// cycle_started (message startMsg); it updates the replication with upd
// plus last_transfer_id.
func insertCycle(tx *gorm.DB, ts time.Time, r *Replication, t *Transfer, msg func(*Transfer) (*OutboxMessage, error), upd map[string]any, startMsg string) error {
	t.ReplicationID = r.ID
	if t.ProjectID == "" {
		t.ProjectID = r.ProjectID
	}
	if err := prepareNewTransfer(t); err != nil {
		return err
	}
	t.CreatedAt, t.UpdatedAt = ts, ts
	if err := tx.Create(t).Error; err != nil {
		return fmt.Errorf("insert transfer: %w", translate(err))
	}
	tev := TransferEvent{
		TransferID: t.ID, CreatedAt: ts, Kind: EventStatus,
		ToStatus: StatusQueued, Message: "replication " + r.ID + " cycle",
	}
	if err := tx.Create(&tev).Error; err != nil {
		return fmt.Errorf("insert event: %w", translate(err))
	}
	if msg != nil {
		m, err := msg(t)
		if err != nil {
			return fmt.Errorf("outbox message: %w", err)
		}
		if m != nil {
			if err := insertOutbox(tx, ts, m); err != nil {
				return err
			}
		}
	}
	upd["last_transfer_id"] = t.ID
	if err := tx.Model(&Replication{}).Where("id = ?", r.ID).UpdateColumns(upd).Error; err != nil {
		return fmt.Errorf("update: %w", translate(err))
	}
	return addReplicationEvent(tx, ts, r.ID, ReplicationEventInput{
		Kind: RepEventCycleStarted, TransferID: t.ID, Message: startMsg,
	})
}

// CycleOutcome is what a completed cycle's report adds to its replication
// (TransitionOpts.Cycle).
type CycleOutcome struct {
	// SnapshotAt is when the source snapshot was taken (the point's
	// created_at); zero: the transfer's started_at.
	SnapshotAt time.Time
	// Removed names the destination snapshots the cycle's finish removed:
	// their point rows are deleted.
	Removed []string
	// Size is the image's size (the point's size); 0: the transfer's
	// bytes_total.
	Size int64
}

// applyCycleOutcome updates the replication of cycle transfer t (as just
// updated to status to, in tx): a completed cycle adds its point, drops
// the removed ones (event pruned, when some were points) and updates the
// summary; a failed or cancelled one
// counts as failed. A cycle into another destination than the
// replication's (one that ended after a flip) only records an event. It
// runs once per terminal transition, as part of it.
func (d *DB) applyCycleOutcome(tx *gorm.DB, now time.Time, t *Transfer, to Status, oc *CycleOutcome) error {
	if t.ReplicationID == "" || !IsTerminal(to) {
		return nil
	}
	var r Replication
	err := d.lockRow(tx).Where("id = ?", t.ReplicationID).Take(&r).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil // the replication was deleted meanwhile
	} else if err != nil {
		return err
	}
	if t.DestRegion != r.DestRegion || t.DestPool != r.DestPool || t.DestImage != r.DestImage {
		// A cycle of the direction before a flip (an unplanned failover
		// left it running): its snapshot is no point of the replica.
		return addReplicationEvent(tx, now, r.ID, ReplicationEventInput{
			Kind: RepEventCycleFailed, TransferID: t.ID,
			Message: fmt.Sprintf("cycle %s %s after the replication was flipped: ignored", t.ID, to),
		})
	}
	if oc == nil {
		oc = &CycleOutcome{}
	}
	upd := map[string]any{"updated_at": now}
	ev := ReplicationEventInput{TransferID: t.ID}
	if to != StatusCompleted {
		e := "cycle cancelled"
		if t.Error != nil && *t.Error != "" {
			e = *t.Error
		}
		upd["cycles_failed"] = gorm.Expr("cycles_failed + 1")
		upd["last_error"] = e
		ev.Kind, ev.Message = RepEventCycleFailed, fmt.Sprintf("cycle %s %s: %s", t.ID, to, e)
		if err := tx.Model(&Replication{}).Where("id = ?", r.ID).UpdateColumns(upd).Error; err != nil {
			return fmt.Errorf("update replication: %w", translate(err))
		}
		return addReplicationEvent(tx, now, r.ID, ev)
	}
	var pruned []string
	if removed := slices.DeleteFunc(slices.Clone(oc.Removed), func(n string) bool { return n == t.DestSnapshot }); len(removed) > 0 {
		if err := tx.Model(&ReplicationPoint{}).Where("replication_id = ? AND name IN ?", r.ID, removed).Order("name").Pluck("name", &pruned).Error; err != nil {
			return fmt.Errorf("removed points: %w", err)
		}
		if len(pruned) > 0 {
			if err := tx.Where("replication_id = ? AND name IN ?", r.ID, pruned).Delete(&ReplicationPoint{}).Error; err != nil {
				return fmt.Errorf("delete removed points: %w", translate(err))
			}
		}
	}
	lastSync := r.LastSyncAt
	if t.DestSnapshot != "" {
		at := oc.SnapshotAt
		switch {
		case !at.IsZero():
		case t.StartedAt != nil:
			at = *t.StartedAt
		default:
			at = now
		}
		at = dbTime(at)
		p := ReplicationPoint{
			ReplicationID: r.ID, Name: t.DestSnapshot, TransferID: t.ID, CreatedAt: at,
			Digest: t.Digest, Bytes: t.BytesTransferred, Size: t.BytesTotal,
		}
		if oc.Size > 0 {
			p.Size = oc.Size
		}
		if err := tx.Clauses(clause.OnConflict{DoNothing: true}).Create(&p).Error; err != nil {
			return fmt.Errorf("insert point: %w", translate(err))
		}
		if lastSync == nil || at.After(*lastSync) {
			lastSync = &at
		}
	}
	var n int64
	if err := tx.Model(&ReplicationPoint{}).Where("replication_id = ?", r.ID).Count(&n).Error; err != nil {
		return fmt.Errorf("count points: %w", err)
	}
	upd["points_count"] = n
	upd["last_sync_at"] = lastSync
	upd["bytes_last_cycle"] = t.BytesTransferred
	upd["bytes_replicated"] = gorm.Expr("bytes_replicated + ?", t.BytesTransferred)
	upd["cycles_completed"] = gorm.Expr("cycles_completed + 1")
	upd["last_error"] = nil
	if err := tx.Model(&Replication{}).Where("id = ?", r.ID).UpdateColumns(upd).Error; err != nil {
		return fmt.Errorf("update replication: %w", translate(err))
	}
	ev.Kind = RepEventCycleCompleted
	ev.Message = fmt.Sprintf("cycle %s completed: %d bytes, point %s", t.ID, t.BytesTransferred, t.DestSnapshot)
	if err := addReplicationEvent(tx, now, r.ID, ev); err != nil {
		return err
	}
	if len(pruned) == 0 {
		return nil
	}
	return addReplicationEvent(tx, now, r.ID, ReplicationEventInput{
		Kind: RepEventPruned, TransferID: t.ID,
		Message: fmt.Sprintf("retention removed %d points: %s", len(pruned), strings.Join(pruned, ", ")),
	})
}

// SetRPOBreached records whether replication id is in breach of its RPO,
// on the edges only: entering a breach sets rpo_breached_at = at, records
// the event rpo_breached (message msg) and writes the message notify
// builds (when notify is not nil and returns one) to the outbox, in one
// transaction; leaving it clears rpo_breached_at, with rpo_recovered and
// the notification likewise. No change is (false, nil) and writes nothing.
func (d *DB) SetRPOBreached(ctx context.Context, id string, breached bool, at time.Time, msg string, notify func() (*OutboxMessage, error)) (changed bool, err error) {
	err = d.inTx(ctx, func(tx *gorm.DB) error {
		changed = false
		var r Replication
		if err := d.lockRow(tx).Where("id = ?", id).Take(&r).Error; err != nil {
			return translate(err)
		}
		if (r.RPOBreachedAt != nil) == breached {
			return nil
		}
		now := d.now()
		upd := map[string]any{"rpo_breached_at": nil}
		ev := ReplicationEventInput{Kind: RepEventRPORecovered, Message: msg}
		if breached {
			upd["rpo_breached_at"] = dbTime(at)
			ev.Kind = RepEventRPOBreached
		}
		if err := tx.Model(&Replication{}).Where("id = ?", id).UpdateColumns(upd).Error; err != nil {
			return fmt.Errorf("update: %w", translate(err))
		}
		if err := addReplicationEvent(tx, now, id, ev); err != nil {
			return err
		}
		if notify != nil {
			m, err := notify()
			if err != nil {
				return fmt.Errorf("notification: %w", err)
			}
			if m != nil {
				if err := insertOutbox(tx, now, m); err != nil {
					return err
				}
			}
		}
		changed = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("db: set RPO breach of replication %s: %w", id, err)
	}
	return changed, nil
}

// PruneCycleTransfers deletes up to limit (0 or less, or more than
// MaxListLimit: MaxListLimit) cycle transfers that finished before before,
// oldest first, except each replication's last_transfer_id: completed
// ones, and failed or cancelled ones whose clean-up was sent (cleaned_at;
// until then the garbage collector still needs the row). A destination
// that is down fails a cycle every interval: those go too. Their transfer
// events and the replication events that name them go with them. It
// returns how many transfers went. The replications' summaries are
// unchanged.
func (d *DB) PruneCycleTransfers(ctx context.Context, before time.Time, limit int) (int64, error) {
	if limit <= 0 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	var n int64
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		n = 0
		var ids []string
		err := tx.Model(&Transfer{}).
			Where("replication_id <> '' AND finished_at < ?", before.UTC()).
			Where(tx.Where("status = ?", StatusCompleted).Or("status IN ? AND cleaned_at IS NOT NULL", []Status{StatusError, StatusCancelled})).
			Where("id NOT IN (?)", tx.Model(&Replication{}).Select("last_transfer_id")).
			Order("finished_at ASC").Order("id ASC").Limit(limit).Pluck("id", &ids).Error
		if err != nil || len(ids) == 0 {
			return err
		}
		if err := tx.Where("transfer_id IN ?", ids).Delete(&ReplicationEvent{}).Error; err != nil {
			return fmt.Errorf("delete replication events: %w", err)
		}
		// transfer_events rows go with them (ON DELETE CASCADE).
		res := tx.Where("id IN ?", ids).Delete(&Transfer{})
		n = res.RowsAffected
		return res.Error
	})
	if err != nil {
		return 0, fmt.Errorf("db: prune cycle transfers: %w", err)
	}
	return n, nil
}

// ReplicationStats returns every replication that is not deleting (what
// the metrics collector reads at each scrape), by id.
func (d *DB) ReplicationStats(ctx context.Context) ([]Replication, error) {
	var out []Replication
	if err := d.gorm.WithContext(ctx).Where("status <> ?", ReplicationDeleting).Order("id").Find(&out).Error; err != nil {
		return nil, fmt.Errorf("db: replication stats: %w", err)
	}
	return out, nil
}

// DeleteReplication moves a replication the scope sees to deleting
// (keep_replica recorded; its source may be protected anew at once) with
// the event deleting, and writes the clean-up messages cleanup builds from
// it and its points (when cleanup is not nil) to the outbox, in one
// transaction; it returns the replication as updated. A replication that
// is deleting already is ErrInvalidTransition; one a failover holds
// (failing_over, failing_back, or failover_id set) is ErrConflict. A
// replication whose destination is a Cinder volume (failed over:
// dest_volume_id set, the original volume) keeps it whatever keepReplica
// says. Its rows stay until FinishDeleteReplication. A running cycle is
// not cancelled here.
func (d *DB) DeleteReplication(ctx context.Context, id string, scope Scope, keepReplica bool, cleanup func(*Replication, []ReplicationPoint) ([]*OutboxMessage, error)) (*Replication, error) {
	var out *Replication
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		var err error
		out, err = d.deleteReplicationTx(tx, id, scope, keepReplica, nil, cleanup)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("db: delete replication %s: %w", id, err)
	}
	return out, nil
}

// deleteReplicationTx is DeleteReplication within tx; pending names
// snapshots of cycles not yet recorded as the replication's (a group
// cycle's), which its clean-up removes as it does its points.
func (d *DB) deleteReplicationTx(tx *gorm.DB, id string, scope Scope, keepReplica bool, pending []string, cleanup func(*Replication, []ReplicationPoint) ([]*OutboxMessage, error)) (*Replication, error) {
	q, err := scope.apply(d.lockRow(tx).Where("id = ?", id))
	if err != nil {
		return nil, err
	}
	var cur Replication
	if err := q.Take(&cur).Error; err != nil {
		return nil, translate(err)
	}
	if err := failoverRunning(&cur); err != nil {
		return nil, err
	}
	if !CanTransitionReplication(cur.Status, ReplicationDeleting) {
		return nil, fmt.Errorf("%w: replication is %s already", ErrInvalidTransition, cur.Status)
	}
	if cur.Status == ReplicationFailedOver || cur.DestVolumeID != "" {
		keepReplica = true // the destination is the original volume
	}
	now := d.now()
	res := tx.Model(&Replication{}).Where("id = ? AND status = ? AND failover_id IS NULL", id, cur.Status).UpdateColumns(map[string]any{
		"status": ReplicationDeleting, "keep_replica": keepReplica, "source_key": nil, "updated_at": now,
	})
	if res.Error != nil {
		return nil, fmt.Errorf("update: %w", translate(res.Error))
	}
	if res.RowsAffected != 1 {
		return nil, fmt.Errorf("%w: replication changed concurrently (was %s)", ErrConflict, cur.Status)
	}
	msg := "replication deleting; the replica is removed"
	switch {
	case cur.DestVolumeID != "" || cur.Status == ReplicationFailedOver:
		msg = "replication deleting; the destination (volume " + cur.DestVolumeID + ") is kept"
	case keepReplica:
		msg = "replication deleting; the replica is kept"
	}
	if err := addReplicationEvent(tx, now, id, ReplicationEventInput{Kind: RepEventDeleting, Message: msg}); err != nil {
		return nil, err
	}
	var out Replication
	if err := tx.Where("id = ?", id).Take(&out).Error; err != nil {
		return nil, err
	}
	if cleanup == nil {
		return &out, nil
	}
	var points []ReplicationPoint
	if err := tx.Where("replication_id = ?", id).Order("created_at DESC").Order("name DESC").Find(&points).Error; err != nil {
		return nil, err
	}
	for _, n := range pending {
		if !slices.ContainsFunc(points, func(p ReplicationPoint) bool { return p.Name == n }) {
			points = append(points, ReplicationPoint{ReplicationID: id, Name: n})
		}
	}
	msgs, err := cleanup(&out, points)
	if err != nil {
		return nil, fmt.Errorf("clean-up messages: %w", err)
	}
	return &out, insertOutbox(tx, now, msgs...)
}

// DeletingReplications returns up to limit replications in deleting,
// the longest waiting first (for the scheduler to finish them).
func (d *DB) DeletingReplications(ctx context.Context, limit int) ([]Replication, error) {
	if limit <= 0 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	var out []Replication
	err := d.gorm.WithContext(ctx).Where("status = ?", ReplicationDeleting).
		Order("updated_at ASC").Order("id ASC").Limit(limit).Find(&out).Error
	if err != nil {
		return nil, fmt.Errorf("db: deleting replications: %w", err)
	}
	return out, nil
}

// FinishDeleteReplication removes a deleting replication's rows: the
// replication, its points, events, drills (the drills' volumes stay in
// Cinder) and failovers. Its cycle transfers stay (with their replication_id), for the
// transfers' own history and pruning. A replication that is not deleting
// is ErrConflict; an unknown one ErrNotFound.
func (d *DB) FinishDeleteReplication(ctx context.Context, id string) error {
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		var cur Replication
		if err := d.lockRow(tx).Select("id", "status").Where("id = ?", id).Take(&cur).Error; err != nil {
			return translate(err)
		}
		if cur.Status != ReplicationDeleting {
			return fmt.Errorf("%w: replication is %s, not deleting", ErrConflict, cur.Status)
		}
		for _, m := range []any{&Failover{}, &Drill{}, &ReplicationEvent{}, &ReplicationPoint{}} {
			if err := tx.Where("replication_id = ?", id).Delete(m).Error; err != nil {
				return err
			}
		}
		return tx.Where("id = ? AND status = ?", id, ReplicationDeleting).Delete(&Replication{}).Error
	})
	if err != nil {
		return fmt.Errorf("db: finish deleting replication %s: %w", id, err)
	}
	return nil
}
