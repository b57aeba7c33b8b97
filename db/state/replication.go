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
)

// replicationTransitions is the replication state machine. A transition
// not listed here is refused; a status never moves to itself.
//
//	from      allowed to
//	--------  ---------------------------------------------
//	active    paused, error, deleting
//	paused    active (resume), error, deleting
//	error     active (resume, once the cause is fixed), deleting
//	deleting  – (terminal: the rows are removed)
func replicationTransitions(from ReplicationStatus) []ReplicationStatus {
	switch from {
	case ReplicationActive:
		return []ReplicationStatus{ReplicationPaused, ReplicationError, ReplicationDeleting}
	case ReplicationPaused:
		return []ReplicationStatus{ReplicationActive, ReplicationError, ReplicationDeleting}
	case ReplicationError:
		return []ReplicationStatus{ReplicationActive, ReplicationDeleting}
	}
	return nil
}

// AllReplication lists every replication status.
func AllReplication() []ReplicationStatus {
	return []ReplicationStatus{ReplicationActive, ReplicationPaused, ReplicationError, ReplicationDeleting}
}

// CanTransitionReplication reports whether the replication state machine
// allows from → to.
func CanTransitionReplication(from, to ReplicationStatus) bool {
	return slices.Contains(replicationTransitions(from), to)
}

// Schedules reports whether the scheduler starts cycles of a replication
// in status s (active only).
func (s ReplicationStatus) Schedules() bool { return s == ReplicationActive }

// CanPause reports whether a user may pause a replication in status s.
func (s ReplicationStatus) CanPause() bool { return CanTransitionReplication(s, ReplicationPaused) }

// CanResume reports whether a user may resume a replication in status s.
func (s ReplicationStatus) CanResume() bool { return CanTransitionReplication(s, ReplicationActive) }

// CanDelete reports whether a replication in status s may be deleted.
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
