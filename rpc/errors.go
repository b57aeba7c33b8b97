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
)

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
	switch code {
	case CodeNotFound:
		return ErrNotFound
	case CodeConflict:
		return ErrConflict
	case CodeInvalid:
		return ErrInvalid
	case CodeUnknownMethod:
		return ErrUnknownMethod
	case CodeUnsupportedVersion:
		return ErrMajorVersion
	}
	return nil
}

// ToRemoteError turns a handler's error into what the reply carries: a
// RemoteError found in its chain as is, else the code of the first sentinel
// it wraps (ErrNotFound, ErrConflict, ErrInvalid, ErrUnknownMethod,
// ErrMajorVersion, ErrMalformed as invalid), else internal. The message is
// err.Error().
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
	switch {
	case errors.Is(err, ErrNotFound):
		code = CodeNotFound
	case errors.Is(err, ErrConflict):
		code = CodeConflict
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrMalformed):
		code = CodeInvalid
	case errors.Is(err, ErrUnknownMethod):
		code = CodeUnknownMethod
	case errors.Is(err, ErrMajorVersion):
		code = CodeUnsupportedVersion
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
