package stream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
)

// Sentinel errors. Callers test them with errors.Is; the wrapped error keeps
// the detail.
var (
	// ErrProtocol is a malformed or unexpected frame.
	ErrProtocol = errors.New("stream: protocol error")
	// ErrFrameTooLarge is a frame whose declared length exceeds the limit;
	// it is detected from the header, before anything is allocated.
	ErrFrameTooLarge = errors.New("stream: frame too large")
	// ErrTruncated is a stream that ended inside a frame.
	ErrTruncated = errors.New("stream: truncated frame")
	// ErrInvalidChunk is a chunk that fails validation (bounds, lengths,
	// kind, decompression); nothing of it was written.
	ErrInvalidChunk = errors.New("stream: invalid chunk")
	// ErrDigestMismatch is a chunk or transfer digest that does not match.
	ErrDigestMismatch = errors.New("stream: digest mismatch")
	// ErrIncomplete is a Done that arrived before every chunk was written.
	ErrIncomplete = errors.New("stream: transfer incomplete")
	// ErrTicketInvalid is a ticket that is malformed or not the one issued
	// for the transfer presented with it.
	ErrTicketInvalid = errors.New("stream: invalid ticket")
	// ErrTicketExpired is a ticket whose session was idle longer than its TTL.
	ErrTicketExpired = errors.New("stream: ticket expired")
	// ErrNoSession is a transfer with no open session (never prepared, or
	// already ended: its ticket is dead).
	ErrNoSession = errors.New("stream: no open session")
	// ErrSessionEnded is returned for work on a session that has ended.
	ErrSessionEnded = errors.New("stream: session ended")
	// ErrSuperseded ends a session replaced by a newer PrepareSession for
	// the same transfer.
	ErrSuperseded = errors.New("stream: session superseded")
	// ErrServerClosed ends sessions when the server is closed.
	ErrServerClosed = errors.New("stream: server closed")
	// ErrInvalidExtents is an extent list that is unsorted, overlapping or
	// beyond the image.
	ErrInvalidExtents = errors.New("stream: invalid extents")
	// ErrCheckpoint is a checkpoint that cannot be used for this transfer.
	ErrCheckpoint = errors.New("stream: unusable checkpoint")
	// ErrTooManyStreams refuses a connection beyond the session's limit.
	ErrTooManyStreams = errors.New("stream: too many streams")
	// ErrTooManySessions refuses a prepare beyond the server's
	// MaxSessions (the transfer is tried again later).
	ErrTooManySessions = errors.New("stream: too many sessions")
)

// RemoteError is a refusal or failure reported by the peer in an Error frame.
// It is permanent: the sender does not retry it.
type RemoteError struct {
	Reason string
}

func (e *RemoteError) Error() string { return "stream: peer reported: " + e.Reason }

// permanentError marks an error that reconnecting cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// isPermanent tells whether a stream error must not be retried: the peer
// refused us (Error frame, TLS alert), certificates do not verify, or the
// protocol is broken.
func isPermanent(err error) bool {
	var pe *permanentError
	var re *RemoteError
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	switch {
	case errors.As(err, &pe), errors.As(err, &re), errors.As(err, &cve),
		errors.As(err, &uae), errors.As(err, &hne), errors.As(err, &cie):
		return true
	case errors.Is(err, ErrProtocol), errors.Is(err, ErrFrameTooLarge):
		return true
	}
	// A TLS alert received from the server ("remote error: tls: bad
	// certificate", "certificate required", ...) means it refused us.
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		return true
	}
	return false
}

func protoErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}
