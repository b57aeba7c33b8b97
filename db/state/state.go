// Package state holds Ferry's state machines: the transfer one (state.go:
// the statuses, the legal transitions and what each status means:
// terminal, active, cancellable, retryable), and the replication, DR
// drill and failover ones (replication.go). It is the one place of these rules: the
// store enforces them (package db re-exports them), the dispatcher and the
// replication scheduler walk them, and the CLI and the dashboard read them.
// It imports the standard library only, so that clients can use it without
// the database drivers.
package state

import (
	"fmt"
	"slices"
	"strings"
)

// Status is a transfer's state.
type Status string

// The transfer statuses.
const (
	Queued       Status = "queued"
	Accepted     Status = "accepted"
	Preparing    Status = "preparing"
	Transferring Status = "transferring"
	Verifying    Status = "verifying"
	Finalizing   Status = "finalizing"
	Completed    Status = "completed"
	Error        Status = "error"
	Cancelling   Status = "cancelling"
	Cancelled    Status = "cancelled"
)

// transitions is the state machine. A transition not listed here is
// refused; a status never moves to itself.
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
func transitions(from Status) []Status {
	switch from {
	case Queued:
		return []Status{Accepted, Cancelling, Cancelled, Error}
	case Accepted:
		return []Status{Preparing, Cancelling, Error, Queued}
	case Preparing:
		return []Status{Transferring, Cancelling, Error, Queued}
	case Transferring:
		return []Status{Verifying, Cancelling, Error, Queued}
	case Verifying:
		return []Status{Finalizing, Completed, Cancelling, Error}
	case Finalizing:
		return []Status{Completed, Error}
	case Cancelling:
		return []Status{Cancelled, Error}
	case Error:
		return []Status{Queued}
	}
	return nil
}

// All lists every status, in the order of a transfer's life.
func All() []Status {
	return []Status{Queued, Accepted, Preparing, Transferring, Verifying, Finalizing, Completed, Error, Cancelling, Cancelled}
}

// HappyPath is a transfer's life without trouble, as agents report it:
// queued → accepted → preparing → transferring → verifying, then
// finalizing (Cinder registration, when needed) and completed.
func HappyPath() []Status {
	return []Status{Queued, Accepted, Preparing, Transferring, Verifying, Finalizing, Completed}
}

// Rank is s's position on HappyPath, or -1 off it (error, cancelling,
// cancelled): a report never moves a transfer back along the path.
func Rank(s Status) int { return slices.Index(HappyPath(), s) }

// CanTransition reports whether the state machine allows from → to.
func CanTransition(from, to Status) bool { return slices.Contains(transitions(from), to) }

// IsTerminal reports whether s is a final status (completed, error,
// cancelled). Only transfers in a terminal status may be deleted.
func IsTerminal(s Status) bool { return s == Completed || s == Error || s == Cancelled }

// IsActive reports whether an agent (or, finalizing, ferry-api) works on
// a transfer in status s: progress reports are accepted only then.
func IsActive(s Status) bool {
	switch s {
	case Accepted, Preparing, Transferring, Verifying, Finalizing:
		return true
	}
	return false
}

// CanCancel reports whether a user may cancel a transfer in status s.
func CanCancel(s Status) bool { return CanTransition(s, Cancelling) }

// CanRetry reports whether a user may retry a transfer in status s.
func CanRetry(s Status) bool { return s == Error && CanTransition(s, Queued) }

// Valid reports whether s is one of the known statuses.
func (s Status) Valid() bool { return slices.Contains(All(), s) }

// String returns the status value.
func (s Status) String() string { return string(s) }

// Parse returns the status named by s (case-insensitive, surrounding space
// ignored), or an error.
func Parse(s string) (Status, error) {
	st := Status(strings.ToLower(strings.TrimSpace(s)))
	if !st.Valid() {
		return "", fmt.Errorf("unknown transfer status %q", s)
	}
	return st, nil
}
