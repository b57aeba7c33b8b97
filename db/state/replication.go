package state

import (
	"fmt"
	"slices"
	"strings"
)

// ReplicationStatus is a replication's state.
type ReplicationStatus string

// The replication statuses.
const (
	// ReplicationActive: the scheduler starts a cycle every interval.
	ReplicationActive ReplicationStatus = "active"
	// ReplicationPaused: a user paused it; no cycle starts.
	ReplicationPaused ReplicationStatus = "paused"
	// ReplicationError: it cannot go on (its source volume was deleted,
	// say); no cycle starts, the replica is kept.
	ReplicationError ReplicationStatus = "error"
	// ReplicationDeleting: its clean-up was sent; the rows go once it is
	// done. Nothing leaves it.
	ReplicationDeleting ReplicationStatus = "deleting"
	// ReplicationFailingOver: a failover runs (its failover_id is set);
	// no cycle starts but the failover's final one, and nothing else may
	// change the replication until the failover ends.
	ReplicationFailingOver ReplicationStatus = "failing_over"
	// ReplicationFailedOver: the replica became the primary; source and
	// destination are swapped, and cycles copy it back into the original
	// image (unless the failover still demotes it: failover_id set).
	ReplicationFailedOver ReplicationStatus = "failed_over"
	// ReplicationFailingBack: a failback runs (failover_id set), as
	// failing_over in the other direction.
	ReplicationFailingBack ReplicationStatus = "failing_back"
)

// replicationTransitions is the replication state machine. A transition
// not listed here is refused; a status never moves to itself.
//
//	from          allowed to
//	------------  ---------------------------------------------------
//	active        paused, error, deleting, failing_over
//	paused        active (resume), error, deleting, failing_over
//	error         active (resume, once the cause is fixed), deleting,
//	              failing_over (unplanned only: the API checks)
//	failing_over  failed_over (the flip), active (undone before the
//	              promote), error
//	failed_over   failing_back, deleting (the original volume is kept)
//	failing_back  active (the flip back), failed_over (undone before the
//	              promote), error
//	deleting      – (terminal: the rows are removed)
//
// The failover transitions are the failover store functions' (a
// failover row goes with them); a user's pause or resume never leaves
// failing_over or failing_back (CanResume).
func replicationTransitions(from ReplicationStatus) []ReplicationStatus {
	switch from {
	case ReplicationActive:
		return []ReplicationStatus{ReplicationPaused, ReplicationError, ReplicationDeleting, ReplicationFailingOver}
	case ReplicationPaused:
		return []ReplicationStatus{ReplicationActive, ReplicationError, ReplicationDeleting, ReplicationFailingOver}
	case ReplicationError:
		return []ReplicationStatus{ReplicationActive, ReplicationDeleting, ReplicationFailingOver}
	case ReplicationFailingOver:
		return []ReplicationStatus{ReplicationFailedOver, ReplicationActive, ReplicationError}
	case ReplicationFailedOver:
		return []ReplicationStatus{ReplicationFailingBack, ReplicationDeleting}
	case ReplicationFailingBack:
		return []ReplicationStatus{ReplicationActive, ReplicationFailedOver, ReplicationError}
	}
	return nil
}

// AllReplication lists every replication status.
func AllReplication() []ReplicationStatus {
	return []ReplicationStatus{
		ReplicationActive, ReplicationPaused, ReplicationError, ReplicationDeleting,
		ReplicationFailingOver, ReplicationFailedOver, ReplicationFailingBack,
	}
}

// CanTransitionReplication reports whether the replication state machine
// allows from → to.
func CanTransitionReplication(from, to ReplicationStatus) bool {
	return slices.Contains(replicationTransitions(from), to)
}

// Schedules reports whether the scheduler starts cycles of a replication
// in status s: active, and failed_over (the cycles copy the new primary
// back). A replication whose failover_id is set is not scheduled either.
func (s ReplicationStatus) Schedules() bool {
	return s == ReplicationActive || s == ReplicationFailedOver
}

// InFailover reports whether a failover or failback of a replication in
// status s is under way (failing_over, failing_back).
func (s ReplicationStatus) InFailover() bool {
	return s == ReplicationFailingOver || s == ReplicationFailingBack
}

// CanPause reports whether a user may pause a replication in status s.
func (s ReplicationStatus) CanPause() bool { return CanTransitionReplication(s, ReplicationPaused) }

// CanResume reports whether a user may resume a replication in status s
// (paused or error: leaving failing_over or failing_back for active is
// the failover's own).
func (s ReplicationStatus) CanResume() bool {
	return !s.InFailover() && CanTransitionReplication(s, ReplicationActive)
}

// CanFailover reports whether a failover may start from status s
// (active, paused, error; the API allows error for an unplanned one
// only).
func (s ReplicationStatus) CanFailover() bool {
	return CanTransitionReplication(s, ReplicationFailingOver)
}

// FailoverFrom lists the statuses a failback (failback) or a failover may
// start from: those the machine lets go to failing_back or failing_over,
// but for a planned failover not error (its source must answer).
func FailoverFrom(failback, planned bool) []ReplicationStatus {
	var out []ReplicationStatus
	for _, s := range AllReplication() {
		ok := s.CanFailover() && !(planned && s == ReplicationError)
		if failback {
			ok = s.CanFailback()
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// CanFailback reports whether a failback may start from status s
// (failed_over).
func (s ReplicationStatus) CanFailback() bool {
	return CanTransitionReplication(s, ReplicationFailingBack)
}

// CanDelete reports whether a replication in status s may be deleted (not
// while a failover or failback runs, nor once deleting).
func (s ReplicationStatus) CanDelete() bool {
	return CanTransitionReplication(s, ReplicationDeleting)
}

// Valid reports whether s is one of the known replication statuses.
func (s ReplicationStatus) Valid() bool { return slices.Contains(AllReplication(), s) }

// String returns the status value.
func (s ReplicationStatus) String() string { return string(s) }

// ParseReplication returns the replication status named by s
// (case-insensitive, surrounding space ignored), or an error.
func ParseReplication(s string) (ReplicationStatus, error) {
	st := ReplicationStatus(strings.ToLower(strings.TrimSpace(s)))
	if !st.Valid() {
		return "", fmt.Errorf("unknown replication status %q", s)
	}
	return st, nil
}

// DrillStatus is a DR drill's state: creating until its volume is
// available in Cinder, or error.
type DrillStatus string

// The drill statuses.
const (
	DrillCreating  DrillStatus = "creating"
	DrillAvailable DrillStatus = "available"
	DrillError     DrillStatus = "error"
)

// AllDrill lists every drill status.
func AllDrill() []DrillStatus { return []DrillStatus{DrillCreating, DrillAvailable, DrillError} }

// CanTransitionDrill reports whether a drill may go from → to: creating →
// available or error; available and error are final.
func CanTransitionDrill(from, to DrillStatus) bool {
	return from == DrillCreating && (to == DrillAvailable || to == DrillError)
}

// Valid reports whether s is one of the known drill statuses.
func (s DrillStatus) Valid() bool { return slices.Contains(AllDrill(), s) }

// String returns the status value.
func (s DrillStatus) String() string { return string(s) }

// FailoverStatus is the state of a failover or failback (a
// replication_failovers row): running until it is done or failed.
type FailoverStatus string

// The failover statuses.
const (
	FailoverRunning FailoverStatus = "running"
	FailoverDone    FailoverStatus = "done"
	FailoverError   FailoverStatus = "error"
)

// AllFailover lists every failover status.
func AllFailover() []FailoverStatus {
	return []FailoverStatus{FailoverRunning, FailoverDone, FailoverError}
}

// CanTransitionFailover reports whether a failover may go from → to:
// running → done or error; done and error are final.
func CanTransitionFailover(from, to FailoverStatus) bool {
	return from == FailoverRunning && (to == FailoverDone || to == FailoverError)
}

// Valid reports whether s is one of the known failover statuses.
func (s FailoverStatus) Valid() bool { return slices.Contains(AllFailover(), s) }

// String returns the status value.
func (s FailoverStatus) String() string { return string(s) }
