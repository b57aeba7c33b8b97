package db

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"gorm.io/gorm"
)

// DrillImagePrefix names a drill's clone: ferry-drill-<drill id>.
const DrillImagePrefix = "ferry-drill-"

// CreateDrill inserts dr, a drill of one of its replication's points, in
// status creating, with the event ev (kind drill unless set) in one
// transaction. The store sets the id (unless a UUID is given), project
// (the replication's), status, image (ferry-drill-<id> unless set) and
// times (requested_at now). An unknown replication or point is
// ErrNotFound; a deleting replication, or one failing over or back, is
// ErrConflict.
func (d *DB) CreateDrill(ctx context.Context, dr *Drill, ev ReplicationEventInput) error {
	return d.CreateDrills(ctx, []*Drill{dr}, ev)
}

// CreateDrills is CreateDrill for several drills (a group's, one per
// member) in one transaction: all are created, or none.
func (d *DB) CreateDrills(ctx context.Context, drills []*Drill, ev ReplicationEventInput) error {
	evs := make([]ReplicationEventInput, len(drills))
	for i, dr := range drills {
		e, err := prepareDrill(dr, ev)
		if err != nil {
			return fmt.Errorf("db: create drill: %w", err)
		}
		evs[i] = e
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		for i, dr := range drills {
			if err := d.insertDrill(tx, dr, evs[i]); err != nil {
				return fmt.Errorf("drill %s: %w", dr.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("db: create drills: %w", err)
	}
	return nil
}

// prepareDrill validates dr, sets its id and image, and returns its event.
func prepareDrill(dr *Drill, ev ReplicationEventInput) (ReplicationEventInput, error) {
	if dr == nil {
		return ev, fmt.Errorf("%w: nil drill", ErrInvalidArgument)
	}
	if dr.ID == "" {
		dr.ID = uuid.NewString()
	} else if u, err := uuid.Parse(dr.ID); err != nil || len(dr.ID) != transferIDLength {
		return ev, fmt.Errorf("%w: drill id %q is not a UUID", ErrInvalidArgument, dr.ID)
	} else {
		dr.ID = u.String()
	}
	if dr.Image == "" {
		dr.Image = DrillImagePrefix + dr.ID
	}
	if dr.Point == "" {
		return ev, fmt.Errorf("%w: no point", ErrInvalidArgument)
	}
	for _, f := range []struct {
		name, value string
	}{{"name", dr.Name}, {"point", dr.Point}, {"image", dr.Image}} {
		if utf8.RuneCountInString(f.value) > MaxNameLength {
			return ev, fmt.Errorf("%w: %s longer than %d characters", ErrInvalidArgument, f.name, MaxNameLength)
		}
	}
	if ev.Kind == "" {
		ev.Kind = RepEventDrill
	}
	if ev.Message == "" {
		ev.Message = fmt.Sprintf("drill %s of point %s requested", dr.ID, dr.Point)
	}
	return ev, ev.check()
}

// insertDrill inserts a prepared drill within tx (see CreateDrill).
func (d *DB) insertDrill(tx *gorm.DB, dr *Drill, ev ReplicationEventInput) error {
	var r Replication
	if err := d.lockRow(tx).Select("id", "project_id", "status").Where("id = ?", dr.ReplicationID).Take(&r).Error; err != nil {
		return fmt.Errorf("replication: %w", translate(err))
	}
	if r.Status == ReplicationDeleting {
		return fmt.Errorf("%w: replication is deleting", ErrConflict)
	}
	if r.Status.InFailover() {
		return fmt.Errorf("%w: a %s of replication %s runs: its points change", ErrConflict, r.Status, r.ID)
	}
	var n int64
	if err := tx.Model(&ReplicationPoint{}).Where("replication_id = ? AND name = ?", r.ID, dr.Point).Count(&n).Error; err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: replication has no point %q", ErrNotFound, dr.Point)
	}
	now := d.now()
	dr.ProjectID = r.ProjectID
	dr.Status = DrillCreating
	dr.VolumeID, dr.Error = "", nil
	dr.RegisterStartedAt, dr.AvailableAt = nil, nil
	dr.RequestedAt, dr.CreatedAt, dr.UpdatedAt = now, now, now
	if err := tx.Create(dr).Error; err != nil {
		return fmt.Errorf("insert drill: %w", translate(err))
	}
	return addReplicationEvent(tx, now, r.ID, ev)
}

// GroupDrills returns the drills of group id's members made by group
// drills, newest first.
func (d *DB) GroupDrills(ctx context.Context, id string) ([]Drill, error) {
	var out []Drill
	if err := d.gorm.WithContext(ctx).Where("group_id = ?", id).Order("created_at DESC").Order("id DESC").Find(&out).Error; err != nil {
		return nil, fmt.Errorf("db: drills of group %s: %w", id, err)
	}
	return out, nil
}

// GetDrill returns the drill with id if the scope sees it (by the drill's
// project, the replication's), else ErrNotFound.
func (d *DB) GetDrill(ctx context.Context, id string, scope Scope) (*Drill, error) {
	q, err := scope.apply(d.gorm.WithContext(ctx).Where("id = ?", id))
	if err != nil {
		return nil, fmt.Errorf("db: get drill %s: %w", id, err)
	}
	var dr Drill
	if err := q.Take(&dr).Error; err != nil {
		return nil, fmt.Errorf("db: get drill %s: %w", id, translate(err))
	}
	return &dr, nil
}

// ListDrills returns a replication's drills, newest first; an unknown
// replication is ErrNotFound. It does not check scope.
func (d *DB) ListDrills(ctx context.Context, replicationID string) ([]Drill, error) {
	g := d.gorm.WithContext(ctx)
	if err := replicationExists(g, replicationID); err != nil {
		return nil, fmt.Errorf("db: list drills of replication %s: %w", replicationID, err)
	}
	var out []Drill
	if err := g.Where("replication_id = ?", replicationID).Order("requested_at DESC").Order("id DESC").Find(&out).Error; err != nil {
		return nil, fmt.Errorf("db: list drills of replication %s: %w", replicationID, err)
	}
	return out, nil
}

// DrillFields are the drill columns UpdateDrill may change; nil fields are
// left alone.
type DrillFields struct {
	// Status moves the drill (creating → available or error), else
	// ErrInvalidTransition. Entering available sets available_at (to
	// AvailableAt, else now); entering error stores Error (or "unknown
	// error").
	Status      *DrillStatus
	VolumeID    *string
	AvailableAt *time.Time
	Error       *string
	// RegisterStartedAt sets the Cinder registration ledger; a zero time
	// clears it.
	RegisterStartedAt *time.Time
}

// UpdateDrill changes drill id as f says and returns it as updated. An
// unknown drill is ErrNotFound.
func (d *DB) UpdateDrill(ctx context.Context, id string, f DrillFields) (*Drill, error) {
	if f.VolumeID != nil && utf8.RuneCountInString(*f.VolumeID) > MaxIDLength {
		return nil, fmt.Errorf("db: update drill %s: %w: volume id longer than %d characters", id, ErrInvalidArgument, MaxIDLength)
	}
	if f.Status != nil && !f.Status.Valid() {
		return nil, fmt.Errorf("db: update drill %s: %w: unknown drill status %q", id, ErrInvalidArgument, *f.Status)
	}
	var out Drill
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		var cur Drill
		if err := d.lockRow(tx).Where("id = ?", id).Take(&cur).Error; err != nil {
			return translate(err)
		}
		now := d.now()
		upd := map[string]any{"updated_at": now}
		if f.VolumeID != nil {
			upd["volume_id"] = *f.VolumeID
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
			upd["error"] = *f.Error
		}
		if f.Status != nil && *f.Status != cur.Status {
			if !CanTransitionDrill(cur.Status, *f.Status) {
				return fmt.Errorf("%w: drill %s → %s is not allowed", ErrInvalidTransition, cur.Status, *f.Status)
			}
			upd["status"] = *f.Status
			switch *f.Status {
			case DrillAvailable:
				if f.AvailableAt == nil {
					upd["available_at"] = now
				}
			case DrillError:
				if f.Error == nil || *f.Error == "" {
					upd["error"] = "unknown error"
				}
			}
		}
		res := tx.Model(&Drill{}).Where("id = ? AND status = ?", id, cur.Status).UpdateColumns(upd)
		if res.Error != nil {
			return fmt.Errorf("update: %w", translate(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: drill changed concurrently (was %s)", ErrConflict, cur.Status)
		}
		return tx.Where("id = ?", id).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: update drill %s: %w", id, err)
	}
	return &out, nil
}

// PendingDrills returns up to limit drills in creating (0 or less, or more
// than MaxListLimit: MaxListLimit), the oldest request first, for the
// drill runner.
func (d *DB) PendingDrills(ctx context.Context, limit int) ([]Drill, error) {
	if limit <= 0 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	var out []Drill
	err := d.gorm.WithContext(ctx).Where("status = ?", DrillCreating).
		Order("requested_at ASC").Order("id ASC").Limit(limit).Find(&out).Error
	if err != nil {
		return nil, fmt.Errorf("db: pending drills: %w", err)
	}
	return out, nil
}
