package db

import (
	"fmt"
	"strings"

	"github.com/ferry-project/ferry/db/state"
)

// Status is a transfer's state; the state machine is package db/state,
// re-exported here for the store's callers.
type Status = state.Status

// The transfer statuses.
const (
	StatusQueued       = state.Queued
	StatusAccepted     = state.Accepted
	StatusPreparing    = state.Preparing
	StatusTransferring = state.Transferring
	StatusVerifying    = state.Verifying
	StatusFinalizing   = state.Finalizing
	StatusCompleted    = state.Completed
	StatusError        = state.Error
	StatusCancelling   = state.Cancelling
	StatusCancelled    = state.Cancelled
)

// AllStatuses lists every status, in the order of a transfer's life.
func AllStatuses() []Status { return state.All() }

// CanTransition reports whether the state machine allows from → to.
func CanTransition(from, to Status) bool { return state.CanTransition(from, to) }

// IsTerminal reports whether s is a final status (completed, error,
// cancelled). Only transfers in a terminal status may be deleted.
func IsTerminal(s Status) bool { return state.IsTerminal(s) }

// IsActive reports whether an agent is working on a transfer in status s
// (accepted through finalizing): progress reports are accepted only then.
func IsActive(s Status) bool { return state.IsActive(s) }

// ParseStatus returns the status named by s (case-insensitive, surrounding
// space ignored), or an error wrapping ErrInvalidArgument.
func ParseStatus(s string) (Status, error) {
	st, err := state.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return st, nil
}

// Mode is how a transfer copies data.
type Mode string

// The transfer modes. ModeAuto is resolved by the agent to ModeIncremental
// when source and destination share a Ferry base snapshot, else ModeFull.
const (
	ModeAuto        Mode = "auto"
	ModeFull        Mode = "full"
	ModeIncremental Mode = "incremental"
)

// Valid reports whether m is a known mode.
func (m Mode) Valid() bool {
	switch m {
	case ModeAuto, ModeFull, ModeIncremental:
		return true
	}
	return false
}

// ParseMode returns the mode named by s (case-insensitive); "" means auto.
func ParseMode(s string) (Mode, error) {
	m := Mode(strings.ToLower(strings.TrimSpace(s)))
	if m == "" {
		return ModeAuto, nil
	}
	if !m.Valid() {
		return "", fmt.Errorf("%w: unknown transfer mode %q", ErrInvalidArgument, s)
	}
	return m, nil
}

// EventKind classifies a transfer event row.
type EventKind string

// Event kinds recorded by the store.
const (
	// EventStatus: an ordinary status change (also the creation, "" → queued).
	EventStatus EventKind = "status"
	// EventError: a change into the error status.
	EventError EventKind = "error"
	// EventRetry: error → queued on a user's retry.
	EventRetry EventKind = "retry"
	// EventRequeue: an active transfer put back to queued (its agent was
	// lost), to be re-dispatched.
	EventRequeue EventKind = "requeue"
	// EventNote: a free-form event that changes no status (RecordEvent).
	EventNote EventKind = "note"
)

// eventKindFor classifies a transition.
func eventKindFor(from, to Status) EventKind {
	switch {
	case to == StatusError:
		return EventError
	case from == StatusError && to == StatusQueued:
		return EventRetry
	case to == StatusQueued && from != "":
		return EventRequeue
	}
	return EventStatus
}

// ReplicationStatus is a replication's state; its state machine is in
// package db/state, re-exported here.
type ReplicationStatus = state.ReplicationStatus

// The replication statuses.
const (
	ReplicationActive      = state.ReplicationActive
	ReplicationPaused      = state.ReplicationPaused
	ReplicationError       = state.ReplicationError
	ReplicationDeleting    = state.ReplicationDeleting
	ReplicationFailingOver = state.ReplicationFailingOver
	ReplicationFailedOver  = state.ReplicationFailedOver
	ReplicationFailingBack = state.ReplicationFailingBack
)

// CanTransitionReplication reports whether the replication state machine
// allows from → to.
func CanTransitionReplication(from, to ReplicationStatus) bool {
	return state.CanTransitionReplication(from, to)
}

// ParseReplicationStatus returns the replication status named by s, or an
// error wrapping ErrInvalidArgument.
func ParseReplicationStatus(s string) (ReplicationStatus, error) {
	st, err := state.ParseReplication(s)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return st, nil
}

// DrillStatus is a DR drill's state (db/state).
type DrillStatus = state.DrillStatus

// The drill statuses.
const (
	DrillCreating  = state.DrillCreating
	DrillAvailable = state.DrillAvailable
	DrillError     = state.DrillError
)

// CanTransitionDrill reports whether a drill may go from → to.
func CanTransitionDrill(from, to DrillStatus) bool { return state.CanTransitionDrill(from, to) }

// FailoverStatus is a failover's state (db/state).
type FailoverStatus = state.FailoverStatus

// The failover statuses.
const (
	FailoverRunning = state.FailoverRunning
	FailoverDone    = state.FailoverDone
	FailoverError   = state.FailoverError
)

// CanTransitionFailover reports whether a failover may go from → to.
func CanTransitionFailover(from, to FailoverStatus) bool {
	return state.CanTransitionFailover(from, to)
}

// ReplicationEventKind classifies a replication event row.
type ReplicationEventKind string

// Replication event kinds.
const (
	RepEventCreated        ReplicationEventKind = "created"
	RepEventUpdated        ReplicationEventKind = "updated"
	RepEventCycleStarted   ReplicationEventKind = "cycle_started"
	RepEventCycleCompleted ReplicationEventKind = "cycle_completed"
	RepEventCycleFailed    ReplicationEventKind = "cycle_failed"
	RepEventCycleSkipped   ReplicationEventKind = "cycle_skipped"
	RepEventRPOBreached    ReplicationEventKind = "rpo_breached"
	RepEventRPORecovered   ReplicationEventKind = "rpo_recovered"
	RepEventPaused         ReplicationEventKind = "paused"
	RepEventResumed        ReplicationEventKind = "resumed"
	RepEventError          ReplicationEventKind = "error"
	RepEventDrill          ReplicationEventKind = "drill"
	RepEventDrillAvailable ReplicationEventKind = "drill_available"
	RepEventDrillFailed    ReplicationEventKind = "drill_failed"
	RepEventDeleting       ReplicationEventKind = "deleting"
	RepEventPruned         ReplicationEventKind = "pruned"
	// The failover events: a failover or failback started, its flip (or
	// its end, where no flip records it), its failure, and the image an
	// unplanned failover preserved region A's divergent data as.
	RepEventFailoverStarted ReplicationEventKind = "failover_started"
	RepEventFailedOver      ReplicationEventKind = "failed_over"
	// RepEventFailoverAvailable: the new primary volume is available (a
	// failover's or failback's RTO).
	RepEventFailoverAvailable ReplicationEventKind = "failover_available"
	RepEventFailbackStarted   ReplicationEventKind = "failback_started"
	RepEventFailedBack        ReplicationEventKind = "failed_back"
	RepEventFailoverFailed    ReplicationEventKind = "failover_failed"
	RepEventPreserved         ReplicationEventKind = "preserved"
)
