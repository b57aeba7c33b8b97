package db

import "errors"

// Sentinel errors. Store functions wrap them with context (fmt.Errorf with
// %w), so test them with errors.Is.
var (
	// ErrNotFound: the row does not exist, or is outside the caller's scope.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request clashes with the row's current state (for
	// example deleting a transfer that is still running, a duplicate id, or a
	// concurrent change that won first).
	ErrConflict = errors.New("conflict")
	// ErrQuotaExceeded: creating the transfer would exceed its project's
	// quota (WithQuota).
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrInvalidTransition: the state machine does not allow the requested
	// status change from the transfer's current status.
	ErrInvalidTransition = errors.New("invalid status transition")
	// ErrStaleEpoch: a report carried an epoch older than the transfer's
	// current one (the transfer was re-dispatched since); it is fenced off.
	ErrStaleEpoch = errors.New("stale transfer epoch")
	// ErrInvalidArgument: a value passed to the store is malformed or out of
	// range (unknown status or mode, negative limit, over-long name, …).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrMarkerNotFound: the pagination marker names no transfer visible in
	// the scope.
	ErrMarkerNotFound = errors.New("marker not found")
	// ErrInvalidSort: unknown sort key or sort direction.
	ErrInvalidSort = errors.New("invalid sort")
	// ErrInvalidConnection: the database connection URL cannot be used.
	ErrInvalidConnection = errors.New("invalid database connection URL")
	// ErrSchemaOutdated: the database schema lacks migrations that this code
	// needs; run `ferry-manage db sync`.
	ErrSchemaOutdated = errors.New("database schema is outdated")
	// ErrSchemaTooNew: the database holds migrations this code does not know
	// (it was migrated by a newer Ferry).
	ErrSchemaTooNew = errors.New("database schema is newer than this code")
)
