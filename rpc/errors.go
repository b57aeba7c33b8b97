package rpc

import (
	"errors"
	"fmt"
)

// Codes of a RemoteError. A caller tells them apart with errors.Is against
// the sentinels below (errors.Is(err, rpc.ErrNotFound)) or reads Code.
const (
	CodeNotFound           = "not_found"
	CodeConflict           = "conflict"
	CodeInvalid            = "invalid"
	CodeUnknownMethod      = "unknown_method"
	CodeUnsupportedVersion = "unsupported_version"
	CodeForbidden          = "forbidden"
	CodeInternal           = "internal"
)

// Sentinels a handler wraps (fmt.Errorf("%w: transfer %s", rpc.ErrNotFound,
// id)) to choose the code of the reply, and that a caller matches the
// RemoteError of a reply against.
var (
	ErrNotFound      = errors.New("not found")
	ErrConflict      = errors.New("conflict")
	ErrInvalid       = errors.New("invalid")
	ErrUnknownMethod = errors.New("unknown method")
	// ErrForbidden: a command that is not signed by ferry-api, whose
	// signature does not verify or has expired, or that does not match
	// the grant it claims (see Verifier). Never retried.
	ErrForbidden = errors.New("forbidden")
)

// The errors of a transfer that cross the bus between agents (the transfer
// package uses these very values), each with its code below.
var (
	ErrNotOwned       = errors.New("destination image exists and was not created by Ferry for this source")
	ErrPoolNotAllowed = errors.New("pool is not in this agent's allow-list")
	ErrNoBase         = errors.New("no common base snapshot for an incremental transfer")
	ErrNoSession      = errors.New("no open session for this transfer on this agent")
	ErrDigestMismatch = errors.New("transfer digests differ between source and destination")
	ErrBadRequest     = errors.New("bad transfer request")
	// ErrStaleEpoch: a message of an older dispatch of the transfer than
	// the one the receiver serves (re-dispatched since).
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrDestConflict: the destination holds something the transfer must
	// not touch (a snapshot of that name from another source snapshot, or
	// one Ferry did not take). Nothing was changed.
	ErrDestConflict = errors.New("destination conflict")
)

// codes is the bus's one registry of error codes: the code a reply carries
// for each sentinel, most specific first (ToRemoteError takes the first
// match), and the sentinel errors.Is finds in a RemoteError of that code.
var codes = []struct {
	code string
	err  error
}{
	{"not_owned", ErrNotOwned},
	{"pool_not_allowed", ErrPoolNotAllowed},
	{"no_base", ErrNoBase},
	{"no_session", ErrNoSession},
	{"digest_mismatch", ErrDigestMismatch},
	{"bad_request", ErrBadRequest},
	{"stale_epoch", ErrStaleEpoch},
	{"destination_conflict", ErrDestConflict},
	{CodeForbidden, ErrForbidden},
	{CodeNotFound, ErrNotFound},
	{CodeConflict, ErrConflict},
	{CodeInvalid, ErrInvalid},
	{CodeInvalid, ErrMalformed},
	{CodeUnknownMethod, ErrUnknownMethod},
	{CodeUnsupportedVersion, ErrMajorVersion},
}

// Transport errors, distinct from any RemoteError.
var (
	// ErrUnavailable: no broker connection before the context expired (the
	// message was not sent), or the broker did not confirm it in time (it may
	// or may not have been queued).
	ErrUnavailable = errors.New("rpc: messaging unavailable")
	// ErrUnroutable: the broker had no queue for the target; nothing was queued.
	ErrUnroutable = errors.New("rpc: no queue for target")
	// ErrNacked: the broker refused the message (publisher confirm nack).
	ErrNacked = errors.New("rpc: message refused by the broker")
	// ErrClosed: the transport is closed.
	ErrClosed = errors.New("rpc: transport closed")
)

// RemoteError is the error a handler returned, carried in the reply to a
// call. It is an answer, not a transport failure: the request was delivered
// and handled.
type RemoteError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Errorf returns a RemoteError with the given code.
func Errorf(code, format string, args ...any) *RemoteError {
	return &RemoteError{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return "remote error: " + e.Code
	}
	return "remote error: " + e.Code + ": " + e.Message
}

// Is matches another RemoteError of the same code and the sentinel of the
// code (ErrNotFound for not_found, …).
func (e *RemoteError) Is(target error) bool {
	if t, ok := target.(*RemoteError); ok {
		return t.Code == e.Code
	}
	return sentinel(e.Code) == target && target != nil
}

func sentinel(code string) error {
	for _, c := range codes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}

// ToRemoteError turns a handler's error into what the reply carries: a
// RemoteError found in its chain as is, else the code of the first sentinel
// of the registry it wraps (ErrMalformed as invalid), else internal. The
// message is err.Error().
func ToRemoteError(err error) *RemoteError {
	if err == nil {
		return nil
	}
	var re *RemoteError
	if errors.As(err, &re) {
		c := *re
		return &c
	}
	code := CodeInternal
	for _, c := range codes {
		if errors.Is(err, c.err) {
			code = c.code
			break
		}
	}
	return &RemoteError{Code: code, Message: err.Error()}
}

// Temporary marks err as temporary: the transport requeues the message
// (after a short delay) instead of dead-lettering it or replying with the
// error, so that it is handled again, here or by a competing consumer. Use it
// for "busy, try later" (an agent at its max_transfers) and for outages of a
// dependency. Temporary(nil) is nil.
func Temporary(err error) error {
	if err == nil {
		return nil
	}
	return temporaryError{err}
}

type temporaryError struct{ err error }

func (t temporaryError) Error() string   { return t.err.Error() }
func (t temporaryError) Unwrap() error   { return t.err }
func (t temporaryError) Temporary() bool { return true }

// IsTemporary reports whether err, or an error it wraps, has a Temporary()
// method that returns true (errors marked with Temporary,
// context.DeadlineExceeded, some net errors).
func IsTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}
