package rpc

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

type recordingCaster struct{ envs []Envelope }

func (r *recordingCaster) Cast(ctx context.Context, _ Target, method string, body any) error {
	env, err := NewEnvelope(ctx, method, body)
	if err != nil {
		return err
	}
	// Through the wire format, as the transport sends it.
	b, err := env.Marshal()
	if err != nil {
		return err
	}
	got, err := Decode(b)
	r.envs = append(r.envs, got)
	return err
}

func TestSignedCommands(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	otherPub, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	_ = otherPub
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	signer := NewSigner(priv, time.Hour)
	signer.now = func() time.Time { return now }
	v := NewVerifier(pub)
	v.now = func() time.Time { return now.Add(time.Minute) }

	rc := &recordingCaster{}
	c := SigningCaster{Caster: rc, Signer: signer}
	start := TransferStart{TransferID: "t1", Epoch: 2, ProjectID: "p<&>", Source: Location{Region: "R1", Pool: "volumes", Image: "i"},
		Destination: Location{Region: "R2"}}
	if err := c.Cast(context.Background(), AgentTarget("R1"), MethodTransferStart, start); err != nil {
		t.Fatal(err)
	}
	if err := c.Cast(context.Background(), StatusTarget, MethodAgentHeartbeat, Heartbeat{Host: "h"}); err != nil {
		t.Fatal(err)
	}
	signed, plain := rc.envs[0], rc.envs[1]
	if err := v.VerifyEnvelope(signed); err != nil {
		t.Fatalf("a signed start does not verify: %v", err)
	}
	if plain.Signature != nil {
		t.Error("a heartbeat was signed")
	}
	var back TransferStart
	if err := signed.DecodeBody(&back); err != nil || back.Epoch != 2 || back.ProjectID != "p<&>" {
		t.Errorf("body %+v %v", back, err)
	}
	// The grant forwarded to another agent verifies there too.
	var g TransferStart
	if err := v.VerifyGrant(GrantOf(signed), MethodTransferStart, &g); err != nil || g.TransferID != "t1" {
		t.Errorf("grant: %+v %v", g, err)
	}

	tamper := func(f func(*Envelope)) Envelope {
		e := signed
		s := *e.Signature
		e.Signature = &s
		f(&e)
		return e
	}
	other := NewSigner(otherPriv, time.Hour)
	forged, _ := other.Sign(MethodTransferStart, start)
	for name, env := range map[string]Envelope{
		"unsigned": tamper(func(e *Envelope) { e.Signature = nil }),
		"epoch changed": tamper(func(e *Envelope) {
			e.Body = json.RawMessage(strings.Replace(string(e.Body), `"epoch":2`, `"epoch":3`, 1))
		}),
		"other method":   tamper(func(e *Envelope) { e.Method = MethodTransferCancel }),
		"expiry moved":   tamper(func(e *Envelope) { e.Signature.Expires = e.Signature.Expires.Add(time.Hour) }),
		"garbage value":  tamper(func(e *Envelope) { e.Signature.Value = "!!" }),
		"another key":    tamper(func(e *Envelope) { e.Signature = forged.Signature }),
		"another key id": tamper(func(e *Envelope) { e.Signature.KeyID = "0011" }),
	} {
		if err := v.VerifyEnvelope(env); !errors.Is(err, ErrForbidden) {
			t.Errorf("%s: %v, want ErrForbidden", name, err)
		}
	}
	late := NewVerifier(pub)
	late.now = func() time.Time { return now.Add(2 * time.Hour) }
	if err := late.VerifyEnvelope(signed); !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired: %v", err)
	}
	if err := v.VerifyGrant(GrantOf(signed), MethodTransferCancel, &g); !errors.Is(err, ErrForbidden) {
		t.Errorf("a start used as a cancel grant: %v", err)
	}

	// RequireSigned refuses before the handler runs.
	ran, refused := false, false
	h := RequireSigned(v, func(context.Context, Envelope) (any, error) { ran = true; return nil, nil },
		func(Envelope, error) { refused = true })
	if _, err := h(context.Background(), plain); !errors.Is(err, ErrForbidden) || ran || !refused {
		t.Errorf("unsigned: err %v ran %v refused %v", err, ran, refused)
	}
	if _, err := h(context.Background(), signed); err != nil || !ran {
		t.Errorf("signed: err %v ran %v", err, ran)
	}
}
