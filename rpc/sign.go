package rpc

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Commands are signed. ferry-api is the only authority on the bus: it signs
// every agent-bound command (Ed25519, the key pair `ferry-manage pki
// signing-key` makes) and agents hold only the public key. A signature
// covers the method, an expiry and the body's exact bytes; the body of a
// transfer command names the transfer, its epoch, project, source and
// destination, so the signature binds them all. An agent refuses a command
// that is unsigned, signed by another key, expired or altered, and
// dead-letters it. A source agent forwards the start it was given (a Grant)
// with its prepare, finish and abort, so that the destination checks them
// against what ferry-api asked for, not against what the source says.

// Signature is the envelope's proof that ferry-api sent the command.
type Signature struct {
	// KeyID names the signing key (Fingerprint of its public key).
	KeyID   string    `json:"key_id"`
	Expires time.Time `json:"expires"`
	// Value is the base64 Ed25519 signature of signedBytes.
	Value string `json:"value"`
}

// Signed is a body with its signature: NewEnvelope sends Body as is and
// puts Signature in the envelope.
type Signed struct {
	Body      json.RawMessage
	Signature *Signature
}

// Grant is a signed command as one agent forwards it to another.
type Grant struct {
	Method    string          `json:"method"`
	Body      json.RawMessage `json:"body"`
	Signature *Signature      `json:"signature"`
}

// GrantOf is the grant env carries (a signed command as received).
func GrantOf(env Envelope) *Grant {
	if env.Signature == nil {
		return nil
	}
	return &Grant{Method: env.Method, Body: env.Body, Signature: env.Signature}
}

func signedBytes(method string, expires time.Time, body []byte) []byte {
	b := fmt.Appendf(nil, "ferry-command-1\x00%s\x00%s\x00", method, expires.UTC().Format(time.RFC3339Nano))
	return append(b, body...)
}

// Fingerprint names a public key: the first 8 bytes of its SHA-256, hex.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Signer signs commands with ferry-api's private key.
type Signer struct {
	key ed25519.PrivateKey
	id  string
	ttl time.Duration
	now func() time.Time
}

// NewSigner signs with key; signatures expire ttl after signing.
func NewSigner(key ed25519.PrivateKey, ttl time.Duration) *Signer {
	return &Signer{key: key, id: Fingerprint(key.Public().(ed25519.PublicKey)), ttl: ttl, now: time.Now}
}

// Sign encodes body and signs it for method.
func (s *Signer) Sign(method string, body any) (Signed, error) {
	raw, err := encodeBody(body)
	if err != nil {
		return Signed{}, fmt.Errorf("rpc: body of %s: %w", method, err)
	}
	exp := s.now().Add(s.ttl).UTC().Truncate(time.Millisecond)
	sig := ed25519.Sign(s.key, signedBytes(method, exp, raw))
	return Signed{Body: raw, Signature: &Signature{KeyID: s.id, Expires: exp, Value: base64.StdEncoding.EncodeToString(sig)}}, nil
}

// SigningCaster signs the agent commands (IsAgentCommand) before the inner
// Caster sends them: ferry-api's one place where commands are signed.
type SigningCaster struct {
	Caster Caster
	Signer *Signer
}

// IsAgentCommand reports whether ferry-api sends method to agents (and so
// signs it, and agents verify it).
func IsAgentCommand(method string) bool {
	switch method {
	case MethodTransferStart, MethodTransferCancel, MethodTransferQuery, MethodTransferCleanup,
		MethodReplicationDrill, MethodReplicationCleanup, MethodReplicationPromote, MethodReplicationDemote,
		MethodReplicationRename, MethodTransferSettle, MethodReplicationGroupSnapshot:
		return true
	}
	return false
}

// Cast implements Caster.
func (c SigningCaster) Cast(ctx context.Context, target Target, method string, body any) error {
	if IsAgentCommand(method) {
		s, err := c.Signer.Sign(method, body)
		if err != nil {
			return err
		}
		body = s
	}
	return c.Caster.Cast(ctx, target, method, body)
}

// SigningCaller signs the agent commands that are calls (transfer.query,
// replication.drill, replication.promote, replication.demote,
// replication.rename, replication.group_snapshot) before the inner Caller
// sends them.
type SigningCaller struct {
	Caller Caller
	Signer *Signer
}

// Call implements Caller.
func (c SigningCaller) Call(ctx context.Context, target Target, method string, body, reply any) error {
	if IsAgentCommand(method) {
		s, err := c.Signer.Sign(method, body)
		if err != nil {
			return err
		}
		body = s
	}
	return c.Caller.Call(ctx, target, method, body, reply)
}

// Verifier checks commands with ferry-api's public key.
type Verifier struct {
	key ed25519.PublicKey
	id  string
	now func() time.Time
}

// NewVerifier verifies with pub.
func NewVerifier(pub ed25519.PublicKey) *Verifier {
	return &Verifier{key: pub, id: Fingerprint(pub), now: time.Now}
}

// Verify checks a command's signature; every failure wraps ErrForbidden.
func (v *Verifier) Verify(method string, body json.RawMessage, sig *Signature) error {
	switch {
	case sig == nil:
		return fmt.Errorf("%w: %s is not signed by ferry-api", ErrForbidden, method)
	case sig.KeyID != v.id:
		return fmt.Errorf("%w: %s is signed by key %q, this agent trusts %q", ErrForbidden, method, sig.KeyID, v.id)
	}
	raw, err := base64.StdEncoding.DecodeString(sig.Value)
	if err != nil || !ed25519.Verify(v.key, signedBytes(method, sig.Expires, body), raw) {
		return fmt.Errorf("%w: the signature of %s does not verify", ErrForbidden, method)
	}
	if now := v.now(); now.After(sig.Expires) {
		return fmt.Errorf("%w: %s expired at %s", ErrForbidden, method, sig.Expires.Format(time.RFC3339))
	}
	return nil
}

// VerifyEnvelope checks a received command.
func (v *Verifier) VerifyEnvelope(env Envelope) error {
	return v.Verify(env.Method, env.Body, env.Signature)
}

// VerifyGrant checks a forwarded command of method and decodes its body
// into body.
func (v *Verifier) VerifyGrant(g *Grant, method string, body any) error {
	if g == nil {
		return fmt.Errorf("%w: no %s grant from ferry-api", ErrForbidden, method)
	}
	if g.Method != method {
		return fmt.Errorf("%w: grant of %s, want %s", ErrForbidden, g.Method, method)
	}
	if err := v.Verify(g.Method, g.Body, g.Signature); err != nil {
		return err
	}
	if err := json.Unmarshal(g.Body, body); err != nil {
		return fmt.Errorf("%w: grant body: %w", ErrForbidden, err)
	}
	return nil
}

// RequireSigned wraps h: a message whose signature does not verify is
// refused with an error wrapping ErrForbidden (the transport dead-letters a
// cast, or answers a call with it), and refused is told why.
func RequireSigned(v *Verifier, h Handler, refused func(env Envelope, err error)) Handler {
	return func(ctx context.Context, env Envelope) (any, error) {
		if err := v.VerifyEnvelope(env); err != nil {
			if refused != nil {
				refused(env, err)
			}
			return nil, err
		}
		return h(ctx, env)
	}
}
