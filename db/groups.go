package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"gorm.io/gorm"
)

// MaxGroupMembers bounds the members of a consistency group (one
// consistent snapshot holds every member's exclusive lock at once).
const MaxGroupMembers = 16

// CreateGroup inserts group g (status active; next_run_at now unless set)
// and its members, each as CreateReplication would insert it with group_id
// set and g's schedule, RPO, retention and bandwidth copied, with the
// members' "created" events, in one transaction. Bad values are
// ErrInvalidArgument (also 0 or more than MaxGroupMembers members, or a
// member of another project or regions); a member whose source image a
// live replication protects already (or two members of one image) is
// ErrConflict.
func (d *DB) CreateGroup(ctx context.Context, g *ReplicationGroup, members []*Replication, opts ...CreateOption) error {
	if g == nil || len(members) == 0 || len(members) > MaxGroupMembers {
		return fmt.Errorf("db: create group: %w: a group has 1 to %d members", ErrInvalidArgument, MaxGroupMembers)
	}
	co := createOptions{}
	for _, o := range opts {
		o(&co)
	}
	now := d.now()
	if g.ID == "" {
		g.ID = uuid.NewString()
	} else if u, err := uuid.Parse(g.ID); err != nil || len(g.ID) != transferIDLength {
		return fmt.Errorf("db: create group: %w: group id %q is not a UUID", ErrInvalidArgument, g.ID)
	} else {
		g.ID = u.String()
	}
	if g.Status == "" {
		g.Status = ReplicationActive
	}
	switch {
	case g.Status != ReplicationActive && g.Status != ReplicationPaused:
		return fmt.Errorf("db: create group: %w: a new group is active or paused, not %q", ErrInvalidArgument, g.Status)
	case g.ProjectID == "" || g.SourceRegion == "" || g.DestRegion == "" || g.DestPool == "":
		return fmt.Errorf("db: create group: %w: a group needs a project, source and destination regions and a destination pool", ErrInvalidArgument)
	case utf8.RuneCountInString(g.Name) > MaxNameLength || utf8.RuneCountInString(g.Description) > MaxDescriptionLength:
		return fmt.Errorf("db: create group: %w: name or description too long", ErrInvalidArgument)
	}
	if err := checkReplicationSettings(g.IntervalSeconds, g.RPOSeconds, g.KeepLast, g.KeepHourly, g.KeepDaily, g.BandwidthLimit); err != nil {
		return fmt.Errorf("db: create group: %w", err)
	}
	if g.NextRunAt.IsZero() {
		g.NextRunAt = now
	}
	g.NextRunAt = dbTime(g.NextRunAt)
	g.FailoverID, g.LastSyncAt, g.LastCycleID, g.LastError, g.PointsCount = nil, nil, "", nil, 0
	g.CyclesCompleted, g.CyclesFailed, g.CyclesSkipped, g.KeepReplica = 0, 0, 0, false
	g.CreatedAt, g.UpdatedAt = now, now
	keys := map[string]bool{}
	for _, r := range members {
		if r == nil {
			return fmt.Errorf("db: create group: %w: nil member", ErrInvalidArgument)
		}
		if r.ProjectID != g.ProjectID || r.SourceRegion != g.SourceRegion || r.DestRegion != g.DestRegion {
			return fmt.Errorf("db: create group: %w: member %s/%s is not of the group's project and regions", ErrInvalidArgument, r.SourcePool, r.SourceImage)
		}
		r.Status, r.UserID = g.Status, firstNonEmpty(r.UserID, g.UserID)
		r.IntervalSeconds, r.RPOSeconds, r.BandwidthLimit = g.IntervalSeconds, g.RPOSeconds, g.BandwidthLimit
		r.KeepLast, r.KeepHourly, r.KeepDaily = g.KeepLast, g.KeepHourly, g.KeepDaily
		r.NextRunAt = g.NextRunAt
		if err := prepareNewReplication(r, now); err != nil {
			return fmt.Errorf("db: create group: %w", err)
		}
		r.GroupID = &g.ID
		if keys[*r.SourceKey] {
			return fmt.Errorf("db: create group: %w: %s/%s is listed twice", ErrConflict, r.SourcePool, r.SourceImage)
		}
		keys[*r.SourceKey] = true
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		if err := tx.Create(g).Error; err != nil {
			return fmt.Errorf("insert group: %w", translate(err))
		}
		for _, r := range members {
			var other Replication
			err := tx.Select("id").Where("source_key = ?", *r.SourceKey).Take(&other).Error
			switch {
			case err == nil:
				return fmt.Errorf("%w: replication %s already protects %s/%s in %s", ErrConflict, other.ID, r.SourcePool, r.SourceImage, r.SourceRegion)
			case !errors.Is(err, gorm.ErrRecordNotFound):
				return err
			}
			if err := tx.Create(r).Error; err != nil {
				return fmt.Errorf("insert member: %w", translate(err))
			}
			ev := ReplicationEventInput{Kind: RepEventCreated, RequestID: co.requestID,
				Message: "replication created as a member of group " + g.ID}
			if err := addReplicationEvent(tx, now, r.ID, ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("db: create group %s: %w", g.ID, err)
	}
	return nil
}

// GetGroup returns the group with id if the scope sees it, else
// ErrNotFound.
func (d *DB) GetGroup(ctx context.Context, id string, scope Scope) (*ReplicationGroup, error) {
	q, err := scope.apply(d.gorm.WithContext(ctx).Where("id = ?", id))
	if err != nil {
		return nil, fmt.Errorf("db: get group %s: %w", id, err)
	}
	var g ReplicationGroup
	if err := q.Take(&g).Error; err != nil {
		return nil, fmt.Errorf("db: get group %s: %w", id, translate(err))
	}
	return &g, nil
}

// ListGroups returns one page of groups and whether more follow, with
// ListReplications' semantics for Scope, Limit, Marker, SortKey, SortDir,
// SourceRegion and DestRegion.
func (d *DB) ListGroups(ctx context.Context, opts ListOpts) ([]ReplicationGroup, bool, error) {
	pg, err := parsePage(opts)
	if err != nil {
		return nil, false, fmt.Errorf("db: list groups: %w", err)
	}
	if opts.Status != "" || len(opts.Statuses) > 0 || opts.Agent != "" || opts.ReplicationID != "" {
		return nil, false, fmt.Errorf("db: list groups: %w: status, agent and replication filters are for transfers", ErrInvalidArgument)
	}
	g := d.gorm.WithContext(ctx)
	q, err := opts.Scope.apply(g.Model(&ReplicationGroup{}))
	if err != nil {
		return nil, false, fmt.Errorf("db: list groups: %w", err)
	}
	if opts.SourceRegion != "" {
		q = q.Where("source_region = ?", opts.SourceRegion)
	}
	if opts.DestRegion != "" {
		q = q.Where("dest_region = ?", opts.DestRegion)
	}
	if opts.Marker != "" {
		mq, _ := opts.Scope.apply(g.Where("id = ?", opts.Marker))
		var m ReplicationGroup
		if err := mq.Take(&m).Error; err != nil {
			if errors.Is(err, gorm.ErrRecordNotFound) {
				return nil, false, fmt.Errorf("db: list groups: %w: %q", ErrMarkerNotFound, opts.Marker)
			}
			return nil, false, fmt.Errorf("db: list groups: marker: %w", err)
		}
		q = pg.after(q, map[string]any{"created_at": m.CreatedAt, "updated_at": m.UpdatedAt, "name": m.Name, "status": string(m.Status)}[pg.key], m.ID)
	}
	var items []ReplicationGroup
	if err := pg.order(q).Limit(pg.limit + 1).Find(&items).Error; err != nil {
		return nil, false, fmt.Errorf("db: list groups: %w", err)
	}
	more := len(items) > pg.limit
	if more {
		items = items[:pg.limit]
	}
	return items, more, nil
}

// GroupMembers returns the replications of group id, oldest first.
func (d *DB) GroupMembers(ctx context.Context, id string) ([]Replication, error) {
	var out []Replication
	if err := d.gorm.WithContext(ctx).Where("group_id = ?", id).Order("created_at ASC").Order("id ASC").Find(&out).Error; err != nil {
		return nil, fmt.Errorf("db: members of group %s: %w", id, err)
	}
	return out, nil
}

// lockGroup locks and returns group id (as the scope sees it) within tx.
func (d *DB) lockGroup(tx *gorm.DB, id string, scope Scope) (*ReplicationGroup, error) {
	q, err := scope.apply(d.lockRow(tx).Where("id = ?", id))
	if err != nil {
		return nil, err
	}
	var g ReplicationGroup
	if err := q.Take(&g).Error; err != nil {
		return nil, translate(err)
	}
	return &g, nil
}

// UpdateGroup changes the settings f names of a group the scope sees, and
// of its members, in one transaction, with an event on each member when
// event's Kind is set. The merged settings are checked as at creation
// (ErrInvalidArgument); a deleting group, one a failover holds, or one not
// in f.ExpectStatus is ErrConflict.
func (d *DB) UpdateGroup(ctx context.Context, id string, scope Scope, f ReplicationFields, event ReplicationEventInput) (*ReplicationGroup, error) {
	if err := event.check(); err != nil {
		return nil, fmt.Errorf("db: update group %s: %w", id, err)
	}
	if f.Name != nil && utf8.RuneCountInString(*f.Name) > MaxNameLength ||
		f.Description != nil && utf8.RuneCountInString(*f.Description) > MaxDescriptionLength {
		return nil, fmt.Errorf("db: update group %s: %w: name or description too long", id, ErrInvalidArgument)
	}
	var out ReplicationGroup
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		g, err := d.lockGroup(tx, id, scope)
		if err != nil {
			return err
		}
		switch {
		case g.Status == ReplicationDeleting:
			return fmt.Errorf("%w: group is deleting", ErrConflict)
		case g.FailoverID != nil || g.Status.InFailover():
			return fmt.Errorf("%w: a failover of the group is under way", ErrConflict)
		case len(f.ExpectStatus) > 0 && !slices.Contains(f.ExpectStatus, g.Status):
			return fmt.Errorf("%w: group is %s", ErrConflict, g.Status)
		}
		merged := *g
		upd := map[string]any{}
		member := map[string]any{}
		set := func(col string, v any, both bool) {
			upd[col] = v
			if both {
				member[col] = v
			}
		}
		if f.Name != nil {
			merged.Name = *f.Name
			set("name", *f.Name, false)
		}
		if f.Description != nil {
			merged.Description = *f.Description
			set("description", *f.Description, false)
		}
		for _, x := range []struct {
			col string
			p   *int
			dst *int
		}{{"interval_seconds", f.IntervalSeconds, &merged.IntervalSeconds}, {"rpo_seconds", f.RPOSeconds, &merged.RPOSeconds},
			{"keep_last", f.KeepLast, &merged.KeepLast}, {"keep_hourly", f.KeepHourly, &merged.KeepHourly}, {"keep_daily", f.KeepDaily, &merged.KeepDaily}} {
			if x.p != nil {
				*x.dst = *x.p
				set(x.col, *x.p, true)
			}
		}
		if f.BandwidthLimit != nil {
			merged.BandwidthLimit = *f.BandwidthLimit
			set("bandwidth_limit", *f.BandwidthLimit, true)
		}
		if f.NextRunAt != nil {
			set("next_run_at", dbTime(*f.NextRunAt), false)
		}
		if err := checkReplicationSettings(merged.IntervalSeconds, merged.RPOSeconds, merged.KeepLast, merged.KeepHourly, merged.KeepDaily, merged.BandwidthLimit); err != nil {
			return err
		}
		now := d.now()
		upd["updated_at"] = now
		if err := tx.Model(&ReplicationGroup{}).Where("id = ?", id).UpdateColumns(upd).Error; err != nil {
			return fmt.Errorf("update: %w", translate(err))
		}
		if len(member) > 0 || event.Kind != "" {
			member["updated_at"] = now
			var ids []string
			if err := tx.Model(&Replication{}).Where("group_id = ?", id).Pluck("id", &ids).Error; err != nil {
				return err
			}
			if err := tx.Model(&Replication{}).Where("group_id = ?", id).UpdateColumns(member).Error; err != nil {
				return fmt.Errorf("update members: %w", translate(err))
			}
			if event.Kind != "" {
				for _, rid := range ids {
					if err := addReplicationEvent(tx, now, rid, event); err != nil {
						return err
					}
				}
			}
		}
		return tx.Where("id = ?", id).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: update group %s: %w", id, err)
	}
	return &out, nil
}

// SetGroupStatus moves a group the scope sees, and its members, to status
// to (pause, resume), when the group is in one of expectFrom (any when
// empty) and the state machine allows it (else ErrInvalidTransition); a
// deleting group or one a failover holds is ErrConflict. ev is recorded on
// every member (its Kind defaults as for SetReplicationStatus).
func (d *DB) SetGroupStatus(ctx context.Context, id string, scope Scope, to ReplicationStatus, expectFrom []ReplicationStatus, ev ReplicationEventInput) (*ReplicationGroup, error) {
	if ev.Kind == "" {
		ev.Kind = defaultStatusEvent(to)
	}
	if err := ev.check(); err != nil {
		return nil, fmt.Errorf("db: set group %s status: %w", id, err)
	}
	var out ReplicationGroup
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		g, err := d.lockGroup(tx, id, scope)
		if err != nil {
			return err
		}
		switch {
		case g.FailoverID != nil || g.Status.InFailover():
			return fmt.Errorf("%w: a failover of the group is under way", ErrConflict)
		case len(expectFrom) > 0 && !slices.Contains(expectFrom, g.Status) || !CanTransitionReplication(g.Status, to):
			return fmt.Errorf("%w: group is %s, cannot become %s", ErrInvalidTransition, g.Status, to)
		}
		now := d.now()
		upd := map[string]any{"status": to, "updated_at": now}
		if err := tx.Model(&ReplicationGroup{}).Where("id = ?", id).UpdateColumns(upd).Error; err != nil {
			return fmt.Errorf("update: %w", translate(err))
		}
		var ids []string
		if err := tx.Model(&Replication{}).Where("group_id = ? AND status = ?", id, g.Status).Pluck("id", &ids).Error; err != nil {
			return err
		}
		for _, rid := range ids {
			if err := tx.Model(&Replication{}).Where("id = ?", rid).UpdateColumns(upd).Error; err != nil {
				return fmt.Errorf("update member: %w", translate(err))
			}
			if err := addReplicationEvent(tx, now, rid, ev); err != nil {
				return err
			}
		}
		return tx.Where("id = ?", id).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: set group %s status: %w", id, err)
	}
	return &out, nil
}

// DeleteGroup marks a group the scope sees deleting, and deletes each of
// its members as DeleteReplication does (cleanup builds each member's
// clean-up; the snapshots of the group's unfinished cycle are among the
// names it is given), in one transaction. A deleting group is
// ErrInvalidTransition; one a failover holds ErrConflict. The rows go
// with FinishDeleteReplication (members) and FinishDeleteGroup.
func (d *DB) DeleteGroup(ctx context.Context, id string, scope Scope, keepReplica bool, cleanup func(*Replication, []ReplicationPoint) ([]*OutboxMessage, error)) (*ReplicationGroup, error) {
	var out ReplicationGroup
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		g, err := d.lockGroup(tx, id, scope)
		if err != nil {
			return err
		}
		switch {
		case g.Status == ReplicationDeleting:
			return fmt.Errorf("%w: group is deleting already", ErrInvalidTransition)
		case g.FailoverID != nil || g.Status.InFailover():
			return fmt.Errorf("%w: a failover of the group is under way", ErrConflict)
		}
		pending := map[string][]string{}
		var open []GroupCycle
		if err := tx.Where("group_id = ? AND status IN ?", id, []GroupCycleStatus{GroupCycleSnapshotting, GroupCycleRunning}).Find(&open).Error; err != nil {
			return err
		}
		for i := range open {
			for _, m := range open[i].Members() {
				pending[m.ReplicationID] = append(pending[m.ReplicationID], m.Point())
			}
		}
		var members []Replication
		if err := tx.Where("group_id = ? AND status <> ?", id, ReplicationDeleting).Order("id").Find(&members).Error; err != nil {
			return err
		}
		for i := range members {
			if _, err := d.deleteReplicationTx(tx, members[i].ID, AllProjectsScope(), keepReplica, pending[members[i].ID], cleanup); err != nil {
				return fmt.Errorf("member %s: %w", members[i].ID, err)
			}
		}
		now := d.now()
		if err := tx.Model(&ReplicationGroup{}).Where("id = ?", id).UpdateColumns(map[string]any{
			"status": ReplicationDeleting, "keep_replica": keepReplica, "updated_at": now,
		}).Error; err != nil {
			return fmt.Errorf("update: %w", translate(err))
		}
		// A cycle still snapshotting never starts its transfers now.
		msg := "group deleted"
		if err := tx.Model(&GroupCycle{}).Where("group_id = ? AND status = ?", id, GroupCycleSnapshotting).UpdateColumns(map[string]any{
			"status": GroupCycleError, "error": msg, "finished_at": now, "updated_at": now,
		}).Error; err != nil {
			return err
		}
		return tx.Where("id = ?", id).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: delete group %s: %w", id, err)
	}
	return &out, nil
}

// DeletingGroups returns up to limit groups in deleting.
func (d *DB) DeletingGroups(ctx context.Context, limit int) ([]ReplicationGroup, error) {
	if limit <= 0 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	var out []ReplicationGroup
	if err := d.gorm.WithContext(ctx).Where("status = ?", ReplicationDeleting).Order("updated_at ASC").Order("id ASC").Limit(limit).Find(&out).Error; err != nil {
		return nil, fmt.Errorf("db: deleting groups: %w", err)
	}
	return out, nil
}

// FinishDeleteGroup removes a deleting group's row and its cycles once no
// member row is left; with members left it is ErrConflict.
func (d *DB) FinishDeleteGroup(ctx context.Context, id string) error {
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		g, err := d.lockGroup(tx, id, AllProjectsScope())
		if err != nil {
			return err
		}
		if g.Status != ReplicationDeleting {
			return fmt.Errorf("%w: group is %s, not deleting", ErrConflict, g.Status)
		}
		var n int64
		if err := tx.Model(&Replication{}).Where("group_id = ?", id).Count(&n).Error; err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: %d members are still being deleted", ErrConflict, n)
		}
		if err := tx.Where("group_id = ?", id).Delete(&GroupCycle{}).Error; err != nil {
			return err
		}
		return tx.Where("id = ?", id).Delete(&ReplicationGroup{}).Error
	})
	if err != nil {
		return fmt.Errorf("db: finish deleting group %s: %w", id, err)
	}
	return nil
}

// DueGroups returns up to limit groups whose status schedules cycles, that
// no failover holds and whose next_run_at is at or before now, the most
// overdue first.
func (d *DB) DueGroups(ctx context.Context, now time.Time, limit int) ([]ReplicationGroup, error) {
	if limit <= 0 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	var out []ReplicationGroup
	err := d.gorm.WithContext(ctx).
		Where("status IN ? AND failover_id IS NULL AND next_run_at <= ?", scheduledStatuses(), dbTime(now)).
		Order("next_run_at ASC").Order("id ASC").Limit(limit).Find(&out).Error
	if err != nil {
		return nil, fmt.Errorf("db: due groups: %w", err)
	}
	return out, nil
}

// StartGroupCycle starts group id's cycle c that was due at now, in one
// transaction with the group's row locked: as StartCycle does for a
// replication, it does nothing when the group no longer schedules, a
// failover holds it or its next_run_at is after now; it records a skip
// when the group's last cycle has not ended; else it inserts c (status
// snapshotting; its members must be the group's live members, each once).
// Either way next_run_at becomes next.
func (d *DB) StartGroupCycle(ctx context.Context, id string, now, next time.Time, c *GroupCycle, members []GroupCycleMember) (started *GroupCycle, skipped bool, err error) {
	now, next = dbTime(now), dbTime(next)
	if c == nil || !next.After(now) {
		return nil, false, fmt.Errorf("db: start cycle of group %s: %w: no cycle, or next run not after now", id, ErrInvalidArgument)
	}
	body, err := json.Marshal(members)
	if err != nil {
		return nil, false, fmt.Errorf("db: start cycle of group %s: %w", id, err)
	}
	err = d.inTx(ctx, func(tx *gorm.DB) error {
		started, skipped = nil, false
		g, err := d.lockGroup(tx, id, AllProjectsScope())
		if err != nil {
			return err
		}
		if !g.Status.Schedules() || g.FailoverID != nil || g.NextRunAt.After(now) {
			return nil
		}
		ts := d.now()
		upd := map[string]any{"next_run_at": next, "updated_at": ts}
		if g.LastCycleID != "" {
			var last GroupCycle
			err := tx.Select("id", "status").Where("id = ?", g.LastCycleID).Take(&last).Error
			if err != nil && !errors.Is(err, gorm.ErrRecordNotFound) {
				return err
			}
			if err == nil && (last.Status == GroupCycleSnapshotting || last.Status == GroupCycleRunning) {
				upd["cycles_skipped"] = gorm.Expr("cycles_skipped + 1")
				skipped = true
				return tx.Model(&ReplicationGroup{}).Where("id = ?", id).UpdateColumns(upd).Error
			}
		}
		var live []string
		if err := tx.Model(&Replication{}).Where("group_id = ? AND status <> ?", id, ReplicationDeleting).Order("id").Pluck("id", &live).Error; err != nil {
			return err
		}
		got := make([]string, 0, len(members))
		for _, m := range members {
			if m.TransferID == "" {
				return fmt.Errorf("%w: member %s has no transfer id", ErrInvalidArgument, m.ReplicationID)
			}
			got = append(got, m.ReplicationID)
		}
		slices.Sort(got)
		if !slices.Equal(got, live) {
			return fmt.Errorf("%w: the cycle's members %v are not the group's %v", ErrConflict, got, live)
		}
		if c.ID == "" {
			c.ID = uuid.NewString()
		}
		c.GroupID, c.Kind, c.Status, c.MembersJSON = id, "cycle", GroupCycleSnapshotting, string(body)
		c.Error, c.SnapshotAt, c.FinishedAt = nil, nil, nil
		c.CreatedAt, c.UpdatedAt = ts, ts
		if err := tx.Create(c).Error; err != nil {
			return fmt.Errorf("insert cycle: %w", translate(err))
		}
		upd["last_cycle_id"] = c.ID
		if err := tx.Model(&ReplicationGroup{}).Where("id = ?", id).UpdateColumns(upd).Error; err != nil {
			return err
		}
		started = c
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("db: start cycle of group %s: %w", id, err)
	}
	return started, skipped, nil
}

// UnfinishedGroupCycles returns up to limit group cycles snapshotting or
// running, oldest first.
func (d *DB) UnfinishedGroupCycles(ctx context.Context, limit int) ([]GroupCycle, error) {
	if limit <= 0 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	var out []GroupCycle
	err := d.gorm.WithContext(ctx).Where("status IN ?", []GroupCycleStatus{GroupCycleSnapshotting, GroupCycleRunning}).
		Order("created_at ASC").Order("id ASC").Limit(limit).Find(&out).Error
	if err != nil {
		return nil, fmt.Errorf("db: unfinished group cycles: %w", err)
	}
	return out, nil
}

// GroupCycleSnapshotted records that cycle id's consistent snapshot was
// taken at at, and starts its members' transfers (ts, one per member of
// the cycle, in any order: each inserted as StartCycle inserts a cycle,
// with the outbox message msg builds), in one transaction. A cycle that is
// running already is left as it is (nil); one that ended (or a member no
// longer live) is ErrConflict.
func (d *DB) GroupCycleSnapshotted(ctx context.Context, id string, at time.Time, ts []*Transfer, msg func(*Transfer) (*OutboxMessage, error)) error {
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		var c GroupCycle
		if err := d.lockRow(tx).Where("id = ?", id).Take(&c).Error; err != nil {
			return translate(err)
		}
		switch c.Status {
		case GroupCycleRunning:
			return nil
		case GroupCycleSnapshotting:
		default:
			return fmt.Errorf("%w: cycle is %s", ErrConflict, c.Status)
		}
		ms := c.Members()
		if len(ts) != len(ms) {
			return fmt.Errorf("%w: %d transfers for %d members", ErrInvalidArgument, len(ts), len(ms))
		}
		now := d.now()
		for _, t := range ts {
			i := slices.IndexFunc(ms, func(m GroupCycleMember) bool { return m.TransferID == t.ID && m.ReplicationID == t.ReplicationID })
			if i < 0 {
				return fmt.Errorf("%w: transfer %s is not a member's of cycle %s", ErrInvalidArgument, t.ID, id)
			}
			var r Replication
			if err := d.lockRow(tx).Where("id = ?", t.ReplicationID).Take(&r).Error; err != nil {
				return translate(err)
			}
			if r.Status == ReplicationDeleting || r.GroupID == nil || *r.GroupID != c.GroupID {
				return fmt.Errorf("%w: member %s is %s", ErrConflict, r.ID, r.Status)
			}
			if err := insertCycle(tx, now, &r, t, msg, map[string]any{"updated_at": now}, "cycle "+t.ID+" started: group cycle "+id); err != nil {
				return err
			}
		}
		return tx.Model(&GroupCycle{}).Where("id = ?", id).UpdateColumns(map[string]any{
			"status": GroupCycleRunning, "snapshot_at": dbTime(at), "updated_at": now,
		}).Error
	})
	if err != nil {
		return fmt.Errorf("db: group cycle %s snapshotted: %w", id, err)
	}
	return nil
}

// FinishGroupCycle ends cycle id: completed (every member's transfer
// completed: the group's newest point) or error (errMsg), with the
// group's summary updated, in one transaction. A cycle that ended already
// is left as it is (nil).
func (d *DB) FinishGroupCycle(ctx context.Context, id string, status GroupCycleStatus, errMsg string) error {
	if status != GroupCycleCompleted && status != GroupCycleError {
		return fmt.Errorf("db: finish group cycle %s: %w: status %q", id, ErrInvalidArgument, status)
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		var c GroupCycle
		if err := d.lockRow(tx).Where("id = ?", id).Take(&c).Error; err != nil {
			return translate(err)
		}
		if c.Status == GroupCycleCompleted || c.Status == GroupCycleError {
			return nil
		}
		now := d.now()
		cu := map[string]any{"status": status, "finished_at": now, "updated_at": now}
		gu := map[string]any{"updated_at": now}
		if status == GroupCycleCompleted {
			gu["cycles_completed"] = gorm.Expr("cycles_completed + 1")
			gu["last_error"] = nil
		} else {
			cu["error"] = errMsg
			gu["cycles_failed"] = gorm.Expr("cycles_failed + 1")
			gu["last_error"] = errMsg
		}
		if err := tx.Model(&GroupCycle{}).Where("id = ?", id).UpdateColumns(cu).Error; err != nil {
			return err
		}
		points, err := groupPoints(tx, c.GroupID)
		if err != nil {
			return err
		}
		gu["points_count"] = len(points)
		if len(points) > 0 {
			gu["last_sync_at"] = points[0].SnapshotAt
		}
		return tx.Model(&ReplicationGroup{}).Where("id = ?", c.GroupID).UpdateColumns(gu).Error
	})
	if err != nil {
		return fmt.Errorf("db: finish group cycle %s: %w", id, err)
	}
	return nil
}

// GroupCycleTransfers returns the transfers of ids (status, error and
// snapshot) by id; a missing one is absent.
func (d *DB) GroupCycleTransfers(ctx context.Context, ids []string) (map[string]Transfer, error) {
	var ts []Transfer
	if err := d.gorm.WithContext(ctx).Select("id", "status", "error", "dest_snapshot", "replication_id").Where("id IN ?", ids).Find(&ts).Error; err != nil {
		return nil, fmt.Errorf("db: group cycle transfers: %w", err)
	}
	out := make(map[string]Transfer, len(ts))
	for _, t := range ts {
		out[t.ID] = t
	}
	return out, nil
}

// GroupPoints returns the points of group id, newest first: its completed
// cycles whose every member still holds its part (a replication point).
func (d *DB) GroupPoints(ctx context.Context, id string) ([]GroupCycle, error) {
	g := d.gorm.WithContext(ctx)
	var n int64
	if err := g.Model(&ReplicationGroup{}).Where("id = ?", id).Count(&n).Error; err != nil {
		return nil, fmt.Errorf("db: points of group %s: %w", id, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("db: points of group %s: %w", id, ErrNotFound)
	}
	out, err := groupPoints(g, id)
	if err != nil {
		return nil, fmt.Errorf("db: points of group %s: %w", id, err)
	}
	return out, nil
}

func groupPoints(g *gorm.DB, id string) ([]GroupCycle, error) {
	var cycles []GroupCycle
	if err := g.Where("group_id = ? AND status = ?", id, GroupCycleCompleted).Order("snapshot_at DESC").Order("id DESC").Find(&cycles).Error; err != nil {
		return nil, err
	}
	if len(cycles) == 0 {
		return nil, nil
	}
	var pts []ReplicationPoint
	if err := g.Select("replication_id", "name").Where("replication_id IN (?)",
		g.Model(&Replication{}).Select("id").Where("group_id = ?", id)).Find(&pts).Error; err != nil {
		return nil, err
	}
	held := make(map[[2]string]bool, len(pts))
	for _, p := range pts {
		held[[2]string{p.ReplicationID, p.Name}] = true
	}
	out := cycles[:0]
	for _, c := range cycles {
		ms := c.Members()
		all := len(ms) > 0
		for _, m := range ms {
			all = all && held[[2]string{m.ReplicationID, m.Point()}]
		}
		if all {
			out = append(out, c)
		}
	}
	return out, nil
}

// StartGroupFailover starts group failover (or failback) f of a group the
// scope sees, in one transaction: the group goes to status to
// (failing_over or failing_back) from one of expectFrom, with failover_id
// f.ID and f recorded (step set to first, status running, requested_at
// now). A group a failover holds already, or one of whose members is
// failing over on its own, is ErrConflict; a status not in expectFrom
// ErrInvalidTransition.
func (d *DB) StartGroupFailover(ctx context.Context, id string, scope Scope, f *GroupFailover, first string, to ReplicationStatus, expectFrom []ReplicationStatus) (*ReplicationGroup, error) {
	if f == nil || (to != ReplicationFailingOver && to != ReplicationFailingBack) {
		return nil, fmt.Errorf("db: start group failover of %s: %w", id, ErrInvalidArgument)
	}
	if f.ID == "" {
		f.ID = uuid.NewString()
	}
	var out ReplicationGroup
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		g, err := d.lockGroup(tx, id, scope)
		if err != nil {
			return err
		}
		if g.FailoverID != nil {
			return fmt.Errorf("%w: failover %s of the group is under way", ErrConflict, *g.FailoverID)
		}
		if len(expectFrom) > 0 && !slices.Contains(expectFrom, g.Status) || !CanTransitionReplication(g.Status, to) {
			return fmt.Errorf("%w: group is %s, cannot become %s", ErrInvalidTransition, g.Status, to)
		}
		var busy int64
		if err := tx.Model(&Replication{}).Where("group_id = ? AND (failover_id IS NOT NULL OR status = ?)", id, ReplicationDeleting).Count(&busy).Error; err != nil {
			return err
		}
		if busy > 0 {
			return fmt.Errorf("%w: %d members are failing over or being deleted", ErrConflict, busy)
		}
		now := d.now()
		f.Step, f.Status, f.Error, f.RequestedAt = first, FailoverRunning, "", now
		f.AvailableAt, f.FinishedAt, f.Members = nil, nil, nil
		b, err := json.Marshal(f)
		if err != nil {
			return err
		}
		res := tx.Model(&ReplicationGroup{}).Where("id = ? AND failover_id IS NULL", id).UpdateColumns(map[string]any{
			"status": to, "failover_id": f.ID, "failover_state": string(b), "updated_at": now})
		if res.Error != nil {
			return fmt.Errorf("update: %w", translate(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: group changed concurrently", ErrConflict)
		}
		return tx.Where("id = ?", id).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: start group failover of %s: %w", id, err)
	}
	return &out, nil
}

// RunningGroupFailovers returns the groups a failover or failback holds.
func (d *DB) RunningGroupFailovers(ctx context.Context) ([]ReplicationGroup, error) {
	var out []ReplicationGroup
	if err := d.gorm.WithContext(ctx).Where("failover_id IS NOT NULL").Order("updated_at ASC").Order("id ASC").Limit(MaxListLimit).Find(&out).Error; err != nil {
		return nil, fmt.Errorf("db: running group failovers: %w", err)
	}
	return out, nil
}

// UpdateGroupFailover records f, the progress of group id's running
// failover f.ID (ErrConflict when another or none runs).
func (d *DB) UpdateGroupFailover(ctx context.Context, id string, f *GroupFailover) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	res := d.gorm.WithContext(ctx).Model(&ReplicationGroup{}).Where("id = ? AND failover_id = ?", id, f.ID).
		UpdateColumns(map[string]any{"failover_state": string(b), "updated_at": d.now()})
	if res.Error != nil {
		return fmt.Errorf("db: update group failover %s: %w", f.ID, translate(res.Error))
	}
	if res.RowsAffected != 1 {
		return fmt.Errorf("db: update group failover %s: %w: not the group's running failover", f.ID, ErrConflict)
	}
	return nil
}

// FinishGroupFailover ends group id's running failover f.ID: f recorded,
// failover_id cleared, the group to status to; with flip, its source and
// destination regions swapped and its destination pool the members'
// (after their own flips). A next cycle is due at once.
func (d *DB) FinishGroupFailover(ctx context.Context, id string, f *GroupFailover, to ReplicationStatus, flip bool) (*ReplicationGroup, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	var out ReplicationGroup
	err = d.inTx(ctx, func(tx *gorm.DB) error {
		g, err := d.lockGroup(tx, id, AllProjectsScope())
		if err != nil {
			return err
		}
		if g.FailoverID == nil || *g.FailoverID != f.ID {
			return fmt.Errorf("%w: failover %s is not the group's running one", ErrConflict, f.ID)
		}
		now := d.now()
		upd := map[string]any{"status": to, "failover_id": nil, "failover_state": string(b), "updated_at": now, "next_run_at": now}
		if flip {
			upd["source_region"], upd["dest_region"] = g.DestRegion, g.SourceRegion
			var m Replication
			if err := tx.Where("group_id = ?", id).Order("created_at ASC").Order("id ASC").Take(&m).Error; err == nil {
				upd["dest_pool"] = m.DestPool
			}
		}
		if err := tx.Model(&ReplicationGroup{}).Where("id = ?", id).UpdateColumns(upd).Error; err != nil {
			return fmt.Errorf("update: %w", translate(err))
		}
		return tx.Where("id = ?", id).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: finish group failover %s: %w", f.ID, err)
	}
	return &out, nil
}

// StartGroupFinalCycle starts group id's final cycle c (its members'
// transfer ids chosen) for the running failover failoverID, whatever the
// schedule: as StartGroupCycle, without the due check; while the group's
// last cycle has not ended it is ErrConflict (wait).
func (d *DB) StartGroupFinalCycle(ctx context.Context, id, failoverID string, c *GroupCycle, members []GroupCycleMember) error {
	body, err := json.Marshal(members)
	if err != nil {
		return err
	}
	err = d.inTx(ctx, func(tx *gorm.DB) error {
		g, err := d.lockGroup(tx, id, AllProjectsScope())
		if err != nil {
			return err
		}
		if g.FailoverID == nil || *g.FailoverID != failoverID {
			return fmt.Errorf("%w: failover %s is not the group's running one", ErrConflict, failoverID)
		}
		if g.LastCycleID == c.ID {
			return nil // started already
		}
		if g.LastCycleID != "" {
			var last GroupCycle
			err := tx.Select("id", "status").Where("id = ?", g.LastCycleID).Take(&last).Error
			if err != nil && !errors.Is(err, gorm.ErrRecordNotFound) {
				return err
			}
			if err == nil && (last.Status == GroupCycleSnapshotting || last.Status == GroupCycleRunning) {
				return fmt.Errorf("%w: the group's cycle %s still runs", ErrConflict, last.ID)
			}
		}
		ts := d.now()
		c.GroupID, c.Kind, c.Status, c.MembersJSON = id, "final", GroupCycleSnapshotting, string(body)
		c.Error, c.SnapshotAt, c.FinishedAt = nil, nil, nil
		c.CreatedAt, c.UpdatedAt = ts, ts
		if err := tx.Create(c).Error; err != nil {
			return fmt.Errorf("insert cycle: %w", translate(err))
		}
		return tx.Model(&ReplicationGroup{}).Where("id = ?", id).UpdateColumns(map[string]any{"last_cycle_id": c.ID, "updated_at": ts}).Error
	})
	if err != nil {
		return fmt.Errorf("db: start final cycle of group %s: %w", id, err)
	}
	return nil
}

// GetGroupCycle returns cycle id.
func (d *DB) GetGroupCycle(ctx context.Context, id string) (*GroupCycle, error) {
	var c GroupCycle
	if err := d.gorm.WithContext(ctx).Where("id = ?", id).Take(&c).Error; err != nil {
		return nil, fmt.Errorf("db: group cycle %s: %w", id, translate(err))
	}
	return &c, nil
}
