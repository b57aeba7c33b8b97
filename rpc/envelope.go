// Package rpc is Ferry's messaging contract: the versioned JSON envelope,
// method names, routing targets, the error carried in replies, request ids in
// contexts and the small interfaces (Caster, Caller, Handler) that services
// use. It imports the standard library only; the RabbitMQ transport lives in
// rpc/amqp.
//
// Every message on the wire is one Envelope:
//
//	{"version": "1.0", "method": "transfer.start", "request_id": "req-…", "body": {…}}
//
// A reply to a call is an Envelope with the same method and request id and
// either a body or an "error" object ({"code": "not_found", "message": "…"}).
//
// Rolling upgrades: a receiver accepts any minor version of its major version
// and ignores fields it does not know (in the envelope and in bodies); a
// message of another major version is refused (ErrMajorVersion) and the
// transport dead-letters it. Add fields in a minor version; rename or remove
// them only in a new major version.
package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The envelope version this side writes. Receivers accept every minor version
// of VersionMajor. Minor versions:
//
//	1.0  the first contract
//	1.1  TransferStart.ephemeral
//	1.2  Envelope.signature (signed agent commands), epochs and grants in
//	     the agent-to-agent calls, TransferCancel.epoch
//	1.3  replication cycles: TransferStart.replication_id, retain and
//	     bandwidth_limit; StatusEvent.snapshot_time and removed (and the
//	     same in TransferQueryReply); replication.drill,
//	     replication.cleanup, replication.promote, replication.demote,
//	     replication.rename and replication.group_snapshot
const (
	VersionMajor = 1
	VersionMinor = 3
	Version      = "1.3"
)

var (
	// ErrMajorVersion: the message is of a major version this side does not
	// speak. Such messages are dead-lettered, never retried.
	ErrMajorVersion = errors.New("rpc: unsupported major version")
	// ErrMalformed: not an envelope (bad JSON, no version or method).
	ErrMalformed = errors.New("rpc: malformed message")
)

// Envelope is one message on the wire. Body is kept raw so that a receiver
// decodes it into the type its method expects (DecodeBody); Error is set only
// in the reply to a call that failed.
type Envelope struct {
	Version   string          `json:"version"`
	Method    string          `json:"method"`
	RequestID string          `json:"request_id"`
	Body      json.RawMessage `json:"body,omitempty"`
	Error     *RemoteError    `json:"error,omitempty"`
	// Signature is ferry-api's, on the commands it sends to agents (see
	// Signer); it covers Body's exact bytes.
	Signature *Signature `json:"signature,omitempty"`
}

// NewEnvelope builds the envelope of a request: the current version, the
// method, the request id of ctx (a new one when ctx has none) and body
// encoded as JSON (nil for no body; a json.RawMessage is used as is).
func NewEnvelope(ctx context.Context, method string, body any) (Envelope, error) {
	if method == "" {
		return Envelope{}, fmt.Errorf("%w: empty method", ErrMalformed)
	}
	env := Envelope{Version: Version, Method: method, RequestID: RequestIDFrom(ctx)}
	if env.RequestID == "" {
		env.RequestID = NewRequestID()
	}
	if s, ok := body.(Signed); ok {
		env.Body, env.Signature = s.Body, s.Signature
		return env, nil
	}
	raw, err := encodeBody(body)
	if err != nil {
		return Envelope{}, fmt.Errorf("rpc: body of %s: %w", method, err)
	}
	env.Body = raw
	return env, nil
}

// NewReply builds the reply to req: the body on success, else the error as a
// RemoteError (see ToRemoteError).
func NewReply(req Envelope, body any, err error) (Envelope, error) {
	env := Envelope{Version: Version, Method: req.Method, RequestID: req.RequestID}
	if err != nil {
		env.Error = ToRemoteError(err)
		return env, nil
	}
	raw, err := encodeBody(body)
	if err != nil {
		return Envelope{}, fmt.Errorf("rpc: reply body of %s: %w", req.Method, err)
	}
	env.Body = raw
	return env, nil
}

func encodeBody(body any) (json.RawMessage, error) {
	if body == nil {
		return nil, nil
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	if string(raw) == "null" {
		return nil, nil
	}
	return raw, nil
}

// Marshal encodes the envelope. An empty Version is written as Version.
func (e Envelope) Marshal() ([]byte, error) {
	if e.Method == "" {
		return nil, fmt.Errorf("%w: empty method", ErrMalformed)
	}
	if e.Version == "" {
		e.Version = Version
	}
	return json.Marshal(e)
}

// Decode parses one message. Unknown fields and unknown minor versions are
// accepted. A message of another major version returns ErrMajorVersion; one
// that is not an envelope returns ErrMalformed. On ErrMajorVersion the
// returned envelope holds what could be read (method, request id) for logs.
func Decode(data []byte) (Envelope, error) {
	var env Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return Envelope{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	major, _, err := ParseVersion(env.Version)
	if err != nil {
		return env, err
	}
	if major != VersionMajor {
		return env, fmt.Errorf("%w: message version %q, this side speaks %d.x", ErrMajorVersion, env.Version, VersionMajor)
	}
	if env.Method == "" {
		return env, fmt.Errorf("%w: no method", ErrMalformed)
	}
	return env, nil
}

// ParseVersion splits "major.minor" (digits only).
func ParseVersion(v string) (major, minor int, err error) {
	ma, mi, ok := strings.Cut(v, ".")
	if !ok || !digits(ma) || !digits(mi) {
		return 0, 0, fmt.Errorf("%w: version %q is not major.minor", ErrMalformed, v)
	}
	major, err1 := strconv.Atoi(ma)
	minor, err2 := strconv.Atoi(mi)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("%w: version %q: %w", ErrMalformed, v, err)
	}
	return major, minor, nil
}

func digits(s string) bool {
	if s == "" || len(s) > 9 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// DecodeBody decodes the body into v. Unknown fields are ignored; an absent
// or null body leaves v untouched. A body that does not fit v is ErrInvalid
// (the sender's fault: a permanent error).
func (e Envelope) DecodeBody(v any) error {
	b := bytes.TrimSpace(e.Body)
	if len(b) == 0 || string(b) == "null" {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: body of %s: %w", ErrInvalid, e.Method, err)
	}
	return nil
}
