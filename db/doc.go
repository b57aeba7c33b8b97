// Package db is Ferry's database layer: the gorm models, the versioned schema
// migrations, and the store functions that the API service uses.
//
// It is the one place where transfer status transitions are checked (see
// CanTransition): handlers ask for a transition and the store either records
// it, together with an event row, or refuses it with ErrInvalidTransition.
// Replications (replications.go, drills.go) follow the same rule with
// their own machine (CanTransitionReplication, from db/state), and a
// replication cycle is a transfer: its outcome is applied to the
// replication inside the transfer's terminal transition (TransitionOpts.Cycle).
// A failover or failback (failovers.go) is a row of its own that holds its
// replication (failover_id) from StartFailover until FlipReplication or
// FinishFailover lets go: meanwhile no ordinary cycle starts and the
// replication's other changes are ErrConflict.
//
// Every function that does I/O takes a context.Context first. Failures are
// reported with the sentinel errors of this package (ErrNotFound, ErrConflict,
// ErrInvalidTransition, …), wrapped with %w, so callers test them with
// errors.Is; the underlying driver error is kept in the chain.
//
// The package imports nothing from services/ or rpc/.
package db
