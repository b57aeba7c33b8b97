package db

import (
	"fmt"
	"strings"
)

// Status is a transfer's state.
type Status string

// The transfer statuses.
const (
	StatusQueued       Status = "queued"
	StatusAccepted     Status = "accepted"
	StatusPreparing    Status = "preparing"
	StatusTransferring Status = "transferring"
	StatusVerifying    Status = "verifying"
	StatusFinalizing   Status = "finalizing"
	StatusCompleted    Status = "completed"
	StatusError        Status = "error"
	StatusCancelling   Status = "cancelling"
	StatusCancelled    Status = "cancelled"
)

// transitions is the transfer state machine. A transition not listed here is
// refused with ErrInvalidTransition; a status never moves to itself.
//
//	from          allowed to
//	------------  -----------------------------------------------
//	queued        accepted, cancelling, cancelled, error
//	accepted      preparing, cancelling, error, queued (re-dispatch)
//	preparing     transferring, cancelling, error, queued (re-dispatch)
//	transferring  verifying, cancelling, error, queued (re-dispatch)
//	verifying     finalizing, completed, cancelling, error
//	finalizing    completed, error
//	cancelling    cancelled, error
//	error         queued (retry: same id, resumes from the checkpoint)
//	completed     – (terminal)
//	cancelled     – (terminal)
//
// queued → cancelled is the direct cancel of a transfer no agent holds yet;
// active transfers go through cancelling so that the agent can stop first.
// error is terminal too, but a retry may bring it back to queued.
var transitions = map[Status][]Status{
	StatusQueued:       {StatusAccepted, StatusCancelling, StatusCancelled, StatusError},
	StatusAccepted:     {StatusPreparing, StatusCancelling, StatusError, StatusQueued},
	StatusPreparing:    {StatusTransferring, StatusCancelling, StatusError, StatusQueued},
	StatusTransferring: {StatusVerifying, StatusCancelling, StatusError, StatusQueued},
	StatusVerifying:    {StatusFinalizing, StatusCompleted, StatusCancelling, StatusError},
	StatusFinalizing:   {StatusCompleted, StatusError},
	StatusCancelling:   {StatusCancelled, StatusError},
	StatusError:        {StatusQueued},
	StatusCompleted:    nil,
	StatusCancelled:    nil,
}

// AllStatuses lists every status, in the order of a transfer's life.
func AllStatuses() []Status {
	return []Status{
		StatusQueued, StatusAccepted, StatusPreparing, StatusTransferring,
		StatusVerifying, StatusFinalizing, StatusCompleted, StatusError,
		StatusCancelling, StatusCancelled,
	}
}

// CanTransition reports whether the state machine allows from → to.
func CanTransition(from, to Status) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// IsTerminal reports whether s is a final status (completed, error,
// cancelled). Only transfers in a terminal status may be deleted.
func IsTerminal(s Status) bool {
	switch s {
	case StatusCompleted, StatusError, StatusCancelled:
		return true
	}
	return false
}

// IsActive reports whether an agent is working on a transfer in status s
// (accepted through finalizing): progress reports are accepted only then.
func IsActive(s Status) bool {
	switch s {
	case StatusAccepted, StatusPreparing, StatusTransferring, StatusVerifying, StatusFinalizing:
		return true
	}
	return false
}

// Valid reports whether s is one of the known statuses.
func (s Status) Valid() bool {
	_, ok := transitions[s]
	return ok
}

// String returns the status value.
func (s Status) String() string { return string(s) }

// ParseStatus returns the status named by s (case-insensitive, surrounding
// space ignored), or an error wrapping ErrInvalidArgument.
func ParseStatus(s string) (Status, error) {
	st := Status(strings.ToLower(strings.TrimSpace(s)))
	if !st.Valid() {
		return "", fmt.Errorf("%w: unknown transfer status %q", ErrInvalidArgument, s)
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
