package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/api/cinder"
)

// Group failover steps (db.GroupFailover.Step). A planned failover or
// failback quiesces every member (Cinder's read-only flag on each source
// volume), runs one final group cycle (a consistent point of all), then
// starts one failover of each member at its part of that point (their
// steps skip the quiesce and the final cycle: stepsOf), and waits until
// every member has flipped. An unplanned one starts the members'
// failovers at once, at the chosen group point.
const (
	GroupStepQuiesce    = "quiesce"
	GroupStepFinalCycle = "final_cycle"
	GroupStepMembers    = "members"
	GroupStepWait       = "wait"
	GroupStepDone       = "done"
)

// GroupVolumes is what group cycles and failovers ask Cinder
// (cinder.Service): a member volume's state, and its read-only flag.
type GroupVolumes interface {
	AttachmentChecker
	SetReadOnly(ctx context.Context, region, project, id string, readOnly bool) error
}

// MemberFailoverID is the id of member replication rid's failover within
// group failover gf: the same at every attempt, so a resumed step does
// not start a second one.
func MemberFailoverID(gf, rid string) string {
	return uuid.NewSHA1(uuid.MustParse(gf), []byte(rid)).String()
}

// failovers advances the groups a failover or failback holds.
func (g *GroupRunner) failovers(ctx context.Context) error {
	gs, err := g.DB.RunningGroupFailovers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for i := range gs {
		grp := &gs[i]
		f := grp.Failover()
		if f == nil || grp.FailoverID == nil || f.ID != *grp.FailoverID {
			errs = append(errs, fmt.Errorf("group %s: its failover %v has no readable state", grp.ID, grp.FailoverID))
			continue
		}
		log := g.Log.With("group_id", grp.ID, "group_failover_id", f.ID, "kind", f.Kind, "step", f.Step)
		if err := g.failoverStep(ctx, grp, f, log); err != nil && !errors.Is(err, errWait) {
			errs = append(errs, fmt.Errorf("group %s failover %s: %w", grp.ID, f.ID, err))
		}
	}
	return errors.Join(errs...)
}

// failoverStep runs group failover f's current step (and the next ones
// while they finish at once).
func (g *GroupRunner) failoverStep(ctx context.Context, grp *db.ReplicationGroup, f *db.GroupFailover, log *slog.Logger) error {
	for {
		members, err := g.DB.GroupMembers(ctx, grp.ID)
		if err != nil {
			return err
		}
		var next string
		switch f.Step {
		case GroupStepQuiesce:
			if err := g.quiesce(ctx, grp, f, members); err != nil {
				return g.undoGroupFailover(ctx, grp, f, err, log)
			}
			next = GroupStepFinalCycle
		case GroupStepFinalCycle:
			point, err := g.finalCycle(ctx, grp, f, log)
			if errors.Is(err, errWait) {
				return err
			}
			if err != nil {
				return g.undoGroupFailover(ctx, grp, f, err, log)
			}
			f.Point = point
			next = GroupStepMembers
		case GroupStepMembers:
			if err := g.startMemberFailovers(ctx, grp, f, members, log); err != nil {
				// Some may have started: the step runs again (each
				// member's failover id is fixed).
				f.Error = err.Error()
				if uerr := g.DB.UpdateGroupFailover(ctx, grp.ID, f); uerr != nil {
					log.Warn("recording a group failover's error", "error", uerr)
				}
				return err
			}
			next = GroupStepWait
		case GroupStepWait:
			return g.waitMembers(ctx, grp, f, members, log)
		default:
			return fmt.Errorf("unknown group failover step %q", f.Step)
		}
		log.Info("group failover step done", "step", f.Step, "next", next)
		f.Step, f.Error = next, ""
		if err := g.DB.UpdateGroupFailover(ctx, grp.ID, f); err != nil {
			return err
		}
	}
}

// quiesce sets Cinder's read-only flag on every member's source volume,
// recording which were read-only already; an attached one is refused
// unless forced.
func (g *GroupRunner) quiesce(ctx context.Context, grp *db.ReplicationGroup, f *db.GroupFailover, members []db.Replication) error {
	if g.Volumes == nil {
		return errors.New("group failovers of volumes need Cinder ([cinder] volume_pools)")
	}
	if f.ReadOnly == nil {
		f.ReadOnly = map[string]bool{}
	}
	for i := range members {
		r := &members[i]
		if r.SourceVolumeID == "" {
			continue
		}
		if _, seen := f.ReadOnly[r.ID]; !seen {
			st, err := g.Volumes.InspectVolume(ctx, r.SourceRegion, r.ProjectID, r.SourceVolumeID)
			if err != nil {
				return fmt.Errorf("member volume %s in %s: %w", r.SourceVolumeID, r.SourceRegion, err)
			}
			if st.Attached && !f.Force {
				return fmt.Errorf("member volume %s in %s is attached: detach it first, or force the %s", r.SourceVolumeID, r.SourceRegion, f.Kind)
			}
			f.ReadOnly[r.ID] = st.ReadOnly
			if f.Kind == db.FailoverKindFailback {
				f.ReadOnly[r.ID] = false // the failed-over volume: read-write again on an undo
			}
			if err := g.DB.UpdateGroupFailover(ctx, grp.ID, f); err != nil {
				return err
			}
		}
		err := g.Volumes.SetReadOnly(ctx, r.SourceRegion, r.ProjectID, r.SourceVolumeID, true)
		if errors.Is(err, cinder.ErrInUse) && f.Force {
			continue // attached and forced: its later writes are preserved by the demote
		}
		if err != nil {
			return fmt.Errorf("member volume %s in %s: read-only: %w", r.SourceVolumeID, r.SourceRegion, err)
		}
	}
	return nil
}

// finalCycle starts the group's final cycle (once its last cycle ended)
// and waits until it is a group point, which it returns.
func (g *GroupRunner) finalCycle(ctx context.Context, grp *db.ReplicationGroup, f *db.GroupFailover, log *slog.Logger) (string, error) {
	if f.CycleID == "" {
		f.CycleID = uuid.NewSHA1(uuid.MustParse(f.ID), []byte("final")).String()
		if err := g.DB.UpdateGroupFailover(ctx, grp.ID, f); err != nil {
			return "", err
		}
	}
	c, err := g.DB.GetGroupCycle(ctx, f.CycleID)
	if errors.Is(err, db.ErrNotFound) {
		ms, err := g.cycleMembers(ctx, grp, f.CycleID)
		if err != nil {
			return "", err
		}
		err = g.DB.StartGroupFinalCycle(ctx, grp.ID, f.ID, &db.GroupCycle{ID: f.CycleID}, ms)
		if errors.Is(err, db.ErrConflict) {
			return "", errWait // the last cycle still runs
		}
		if err != nil {
			return "", err
		}
		log.Info("group final cycle started", "cycle_id", f.CycleID)
		if c, err = g.DB.GetGroupCycle(ctx, f.CycleID); err != nil {
			return "", err
		}
		g.startSnapshot(ctx, c)
		return "", errWait
	}
	if err != nil {
		return "", err
	}
	switch c.Status {
	case db.GroupCycleCompleted:
		return c.ID, nil
	case db.GroupCycleError:
		return "", fmt.Errorf("the final group cycle %s failed: %s", c.ID, derefStr(c.Error))
	}
	return "", errWait
}

func derefStr(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// startMemberFailovers starts each member's failover (or failback) at its
// part of the group point, unless started already.
func (g *GroupRunner) startMemberFailovers(ctx context.Context, grp *db.ReplicationGroup, f *db.GroupFailover, members []db.Replication, log *slog.Logger) error {
	var parts map[string]string
	if f.Point != "" {
		c, err := g.DB.GetGroupCycle(ctx, f.Point)
		if err != nil {
			return fmt.Errorf("group point %s: %w", f.Point, err)
		}
		parts = map[string]string{}
		for _, m := range c.Members() {
			parts[m.ReplicationID] = m.Point()
		}
	}
	if f.Members == nil {
		f.Members = map[string]string{}
	}
	to := db.ReplicationFailingOver
	if f.Kind == db.FailoverKindFailback {
		to = db.ReplicationFailingBack
	}
	var errs []error
	for i := range members {
		r := &members[i]
		id := MemberFailoverID(f.ID, r.ID)
		if _, err := g.DB.GetFailover(ctx, id, db.AllProjectsScope()); err == nil {
			f.Members[r.ID] = id
			continue
		}
		point := parts[r.ID]
		if point == "" {
			errs = append(errs, fmt.Errorf("member %s has no part in group point %s", r.ID, f.Point))
			continue
		}
		mf := &db.Failover{ID: id, ReplicationID: r.ID, UserID: f.UserID, RequestID: f.RequestID, Kind: f.Kind,
			Planned: f.Planned, Force: f.Force, RequestedPoint: f.RequestedPoint, Point: point, GroupID: grp.ID}
		switch f.Kind {
		case db.FailoverKindFailover:
			mf.OriginalReadOnly = f.ReadOnly[r.ID]
		case db.FailoverKindFailback:
			mf.OriginalReadOnly = g.originalReadOnly(ctx, r.ID)
		}
		if r.SourceVolumeID != "" && g.Volumes != nil {
			// The new volume takes the old one's name, description,
			// metadata, bootable flag and type (unknown when the old
			// region does not answer: an unplanned failover goes on).
			if st, err := g.Volumes.InspectVolume(ctx, r.SourceRegion, r.ProjectID, r.SourceVolumeID); err == nil {
				b, _ := json.Marshal(st.Spec)
				mf.Spec = string(b)
			} else if f.Planned {
				errs = append(errs, fmt.Errorf("member volume %s in %s: %w", r.SourceVolumeID, r.SourceRegion, err))
				continue
			}
		}
		from := []db.ReplicationStatus{db.ReplicationActive, db.ReplicationPaused, db.ReplicationError}
		if f.Kind == db.FailoverKindFailback {
			from = []db.ReplicationStatus{db.ReplicationFailedOver}
		}
		_, err := g.DB.StartFailover(ctx, mf, db.AllProjectsScope(), to, from, db.ReplicationEventInput{
			Message: fmt.Sprintf("%s %s of the member, part of group %s's %s %s at group point %s", f.Kind, id, grp.ID, f.Kind, f.ID, f.Point)})
		if err != nil {
			errs = append(errs, fmt.Errorf("member %s: %w", r.ID, err))
			continue
		}
		f.Members[r.ID] = id
		log.Info("member failover started", "replication_id", r.ID, "failover_id", id, "point", point)
	}
	if g.KickFailovers != nil {
		g.KickFailovers()
	}
	return errors.Join(errs...)
}

// originalReadOnly is the read-only flag member rid's original volume had
// before its last failover (it keeps it after the failback).
func (g *GroupRunner) originalReadOnly(ctx context.Context, rid string) bool {
	fos, err := g.DB.ListFailovers(ctx, rid)
	if err != nil {
		return false
	}
	for _, f := range fos { // newest first
		if f.Kind == db.FailoverKindFailover && f.Status != db.FailoverError {
			return f.OriginalReadOnly
		}
	}
	return false
}

// waitMembers ends the group failover once every member has flipped
// (failed_over after a failover, active after a failback): the group
// flips too. A member's failover that failed (undone before its promote)
// ends the group's in error, with the members as they are.
func (g *GroupRunner) waitMembers(ctx context.Context, grp *db.ReplicationGroup, f *db.GroupFailover, members []db.Replication, log *slog.Logger) error {
	want := db.ReplicationFailedOver
	if f.Kind == db.FailoverKindFailback {
		want = db.ReplicationActive
	}
	var pending, failed []string
	var available *time.Time
	for i := range members {
		r := &members[i]
		mf, err := g.DB.GetFailover(ctx, f.Members[r.ID], db.AllProjectsScope())
		if err != nil {
			return fmt.Errorf("member %s's failover %s: %w", r.ID, f.Members[r.ID], err)
		}
		switch {
		case mf.Status == db.FailoverError:
			failed = append(failed, fmt.Sprintf("member %s: %s", r.ID, derefStr(mf.Error)))
		case r.Status != want || r.FailoverID != nil && f.Planned:
			pending = append(pending, r.ID)
		}
		if mf.AvailableAt != nil && (available == nil || mf.AvailableAt.After(*available)) {
			available = mf.AvailableAt
		}
	}
	if len(pending) > 0 {
		return errWait // (a failed member's group ends once the others have)
	}
	now := g.DB.Now()
	f.FinishedAt, f.AvailableAt = &now, available
	if len(failed) > 0 {
		f.Status, f.Error, f.Step = db.FailoverError, "member failovers failed: "+strings.Join(failed, "; "), GroupStepDone
		_, err := g.DB.FinishGroupFailover(ctx, grp.ID, f, db.ReplicationError, false)
		log.Error("group failover failed", "error", f.Error)
		return err
	}
	f.Status, f.Step = db.FailoverDone, GroupStepDone
	if _, err := g.DB.FinishGroupFailover(ctx, grp.ID, f, want, true); err != nil {
		return err
	}
	rto := 0.0
	if available != nil {
		rto = available.Sub(f.RequestedAt).Seconds()
	}
	log.Info("group failover done", "status", want, "rto_seconds", rto)
	return nil
}

// undoGroupFailover ends a group failover that failed before any member
// was promoted: the members' volumes read-write again (those that were),
// the group back where it was.
func (g *GroupRunner) undoGroupFailover(ctx context.Context, grp *db.ReplicationGroup, f *db.GroupFailover, cause error, log *slog.Logger) error {
	ctx = context.WithoutCancel(ctx)
	members, err := g.DB.GroupMembers(ctx, grp.ID)
	if err != nil {
		return err
	}
	if g.Volumes != nil {
		for i := range members {
			r := &members[i]
			if ro, seen := f.ReadOnly[r.ID]; !seen || ro || r.SourceVolumeID == "" {
				continue
			}
			if err := g.Volumes.SetReadOnly(ctx, r.SourceRegion, r.ProjectID, r.SourceVolumeID, false); err != nil {
				log.Warn("a member volume stays read-only", "volume_id", r.SourceVolumeID, "error", err)
			}
		}
	}
	back := db.ReplicationActive
	if f.Kind == db.FailoverKindFailback {
		back = db.ReplicationFailedOver
	}
	now := g.DB.Now()
	f.Status, f.Error, f.FinishedAt = db.FailoverError, cause.Error(), &now
	log.Error("group failover undone", "error", cause)
	_, err = g.DB.FinishGroupFailover(ctx, grp.ID, f, back, false)
	return err
}
