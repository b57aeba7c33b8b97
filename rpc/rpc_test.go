package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		wantErr error
		method  string
		body    string
	}{
		{"current", `{"version":"1.0","method":"transfer.start","request_id":"req-1","body":{"id":"t1"}}`, nil, "transfer.start", `{"id":"t1"}`},
		{"newer minor, unknown fields", `{"version":"1.7","method":"agent.status","request_id":"r","body":{"id":"t1","new":true},"trace":{"x":1}}`, nil, "agent.status", `{"id":"t1","new":true}`},
		{"no body", `{"version":"1.0","method":"agent.heartbeat","request_id":"r"}`, nil, "agent.heartbeat", ""},
		{"no request id", `{"version":"1.0","method":"agent.heartbeat"}`, nil, "agent.heartbeat", ""},
		{"major 2", `{"version":"2.0","method":"transfer.start","request_id":"r","body":{}}`, ErrMajorVersion, "transfer.start", "{}"},
		{"major 0", `{"version":"0.9","method":"transfer.start"}`, ErrMajorVersion, "transfer.start", ""},
		{"bad JSON", `{"version":"1.0",`, ErrMalformed, "", ""},
		{"not an object", `[1,2]`, ErrMalformed, "", ""},
		{"empty", ``, ErrMalformed, "", ""},
		{"no version", `{"method":"transfer.start"}`, ErrMalformed, "transfer.start", ""},
		{"numeric version", `{"version":1.0,"method":"transfer.start"}`, ErrMalformed, "", ""},
		{"version without minor", `{"version":"1","method":"transfer.start"}`, ErrMalformed, "transfer.start", ""},
		{"version with letters", `{"version":"1.x","method":"transfer.start"}`, ErrMalformed, "transfer.start", ""},
		{"no method", `{"version":"1.0","body":{}}`, ErrMalformed, "", "{}"},
		{"body not an object", `{"version":"1.0","method":"m","body":"text"}`, nil, "m", `"text"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env, err := Decode([]byte(tc.in))
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Decode err = %v, want %v", err, tc.wantErr)
			}
			if env.Method != tc.method || string(env.Body) != tc.body {
				t.Errorf("Decode = method %q body %s, want %q %s", env.Method, env.Body, tc.method, tc.body)
			}
		})
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	type startBody struct {
		TransferID string `json:"transfer_id"`
		Size       int64  `json:"size"`
	}
	ctx := WithRequestID(context.Background(), "req-abc")
	env, err := NewEnvelope(ctx, MethodTransferStart, startBody{"t1", 42})
	if err != nil {
		t.Fatal(err)
	}
	data, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"version":"1.3","method":"transfer.start","request_id":"req-abc","body":{"transfer_id":"t1","size":42}}`
	if string(data) != want {
		t.Errorf("wire form\n got %s\nwant %s", data, want)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	var b startBody
	if err := got.DecodeBody(&b); err != nil || b != (startBody{"t1", 42}) {
		t.Errorf("DecodeBody = %+v, %v", b, err)
	}
	// An older receiver (fewer fields) reads a newer body.
	var old struct {
		TransferID string `json:"transfer_id"`
	}
	if err := got.DecodeBody(&old); err != nil || old.TransferID != "t1" {
		t.Errorf("DecodeBody into an older struct = %+v, %v", old, err)
	}
	// A body of the wrong shape is the sender's fault.
	var wrong struct {
		Size string `json:"size"`
	}
	if err := got.DecodeBody(&wrong); !errors.Is(err, ErrInvalid) {
		t.Errorf("DecodeBody into a mismatched struct: %v, want ErrInvalid", err)
	}
}

func TestNewEnvelope(t *testing.T) {
	env, err := NewEnvelope(context.Background(), MethodAgentHeartbeat, nil)
	if err != nil {
		t.Fatal(err)
	}
	if env.Body != nil || env.Version != Version {
		t.Errorf("envelope without body: %+v", env)
	}
	if !regexp.MustCompile(`^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(env.RequestID) {
		t.Errorf("generated request id %q", env.RequestID)
	}
	raw := json.RawMessage(`{"a":1}`)
	if env, err := NewEnvelope(context.Background(), "m", raw); err != nil || string(env.Body) != `{"a":1}` {
		t.Errorf("raw body: %s %v", env.Body, err)
	}
	if _, err := NewEnvelope(context.Background(), "", nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty method: %v", err)
	}
	if _, err := NewEnvelope(context.Background(), "m", func() {}); err == nil {
		t.Error("unencodable body accepted")
	}
	if _, err := (Envelope{}).Marshal(); !errors.Is(err, ErrMalformed) {
		t.Errorf("Marshal of an empty envelope: %v", err)
	}
	if data, err := (Envelope{Method: "m"}).Marshal(); err != nil || string(data) != `{"version":"1.3","method":"m","request_id":""}` {
		t.Errorf("Marshal fills the version: %s %v", data, err)
	}
}

func TestRequestID(t *testing.T) {
	ctx := context.Background()
	if id := RequestIDFrom(ctx); id != "" {
		t.Errorf("empty context has request id %q", id)
	}
	ctx = WithRequestID(ctx, "req-1")
	child, cancel := context.WithCancel(ctx)
	defer cancel()
	if id := RequestIDFrom(child); id != "req-1" {
		t.Errorf("derived context: %q", id)
	}
	if id := RequestIDFrom(WithRequestID(child, "req-2")); id != "req-2" {
		t.Errorf("overridden: %q", id)
	}
	env, _ := NewEnvelope(child, "m", nil)
	if env.RequestID != "req-1" {
		t.Errorf("envelope request id %q", env.RequestID)
	}
	reply, _ := NewReply(env, map[string]int{"n": 1}, nil)
	if reply.RequestID != "req-1" || reply.Method != "m" || string(reply.Body) != `{"n":1}` || reply.Error != nil {
		t.Errorf("reply %+v", reply)
	}
	if a, b := NewRequestID(), NewRequestID(); a == b {
		t.Error("two equal request ids")
	}
}

func TestRemoteError(t *testing.T) {
	cases := []struct {
		err      error
		code     string
		sentinel error
	}{
		{fmt.Errorf("%w: transfer t1", ErrNotFound), CodeNotFound, ErrNotFound},
		{fmt.Errorf("image: %w", ErrConflict), CodeConflict, ErrConflict},
		{fmt.Errorf("%w: pool not allowed", ErrInvalid), CodeInvalid, ErrInvalid},
		{fmt.Errorf("%w: x", ErrMalformed), CodeInvalid, ErrInvalid},
		{fmt.Errorf("%w: m", ErrUnknownMethod), CodeUnknownMethod, ErrUnknownMethod},
		{fmt.Errorf("%w: 2.0", ErrMajorVersion), CodeUnsupportedVersion, ErrMajorVersion},
		{errors.New("boom"), CodeInternal, nil},
		{fmt.Errorf("wrapped: %w", Errorf(CodeConflict, "image %s exists", "i")), CodeConflict, ErrConflict},
	}
	for _, tc := range cases {
		re := ToRemoteError(tc.err)
		if re.Code != tc.code {
			t.Errorf("ToRemoteError(%v).Code = %q, want %q", tc.err, re.Code, tc.code)
		}
		// What the caller gets after the reply crossed the wire.
		data, _ := json.Marshal(re)
		var back *RemoteError
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatal(err)
		}
		err := fmt.Errorf("call: %w", back)
		if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
			t.Errorf("%v is not %v", err, tc.sentinel)
		}
		for _, other := range []error{ErrNotFound, ErrConflict, ErrInvalid, ErrUnavailable, ErrClosed} {
			if other != tc.sentinel && errors.Is(err, other) {
				t.Errorf("%v matches %v", err, other)
			}
		}
		if !errors.Is(err, &RemoteError{Code: tc.code}) {
			t.Errorf("%v does not match a RemoteError of code %s", err, tc.code)
		}
		var as *RemoteError
		if !errors.As(err, &as) || as.Message == "" {
			t.Errorf("errors.As: %+v", as)
		}
	}
	if ToRemoteError(nil) != nil {
		t.Error("ToRemoteError(nil) != nil")
	}
	if s := Errorf(CodeNotFound, "transfer %s", "t1").Error(); s != "remote error: not_found: transfer t1" {
		t.Errorf("Error() = %q", s)
	}
	reply, _ := NewReply(Envelope{Method: "m", RequestID: "r"}, "ignored", ErrConflict)
	if reply.Error == nil || reply.Error.Code != CodeConflict || reply.Body != nil {
		t.Errorf("error reply %+v", reply)
	}
}

func TestTemporary(t *testing.T) {
	base := errors.New("agent busy")
	tmp := Temporary(base)
	if !IsTemporary(tmp) || !IsTemporary(fmt.Errorf("x: %w", tmp)) {
		t.Error("marked error is not temporary")
	}
	if !errors.Is(tmp, base) || tmp.Error() != "agent busy" {
		t.Error("Temporary hides the error")
	}
	if IsTemporary(base) || IsTemporary(nil) || Temporary(nil) != nil {
		t.Error("unmarked error is temporary")
	}
	if !IsTemporary(context.DeadlineExceeded) {
		t.Error("deadline exceeded is not temporary")
	}
	if IsTemporary(context.Canceled) {
		t.Error("canceled is temporary")
	}
}

func TestMux(t *testing.T) {
	var m Mux
	m.Handle(MethodTransferStart, func(ctx context.Context, env Envelope) (any, error) {
		return RequestIDFrom(ctx), nil
	})
	m.Handle(MethodTransferCancel, func(context.Context, Envelope) (any, error) { return nil, ErrNotFound })
	var h Handler = m.Serve
	ctx := WithRequestID(context.Background(), "req-9")
	if r, err := h(ctx, Envelope{Method: MethodTransferStart}); err != nil || r != "req-9" {
		t.Errorf("start: %v %v", r, err)
	}
	if _, err := h(ctx, Envelope{Method: MethodTransferCancel}); !errors.Is(err, ErrNotFound) {
		t.Errorf("cancel: %v", err)
	}
	if _, err := h(ctx, Envelope{Method: "transfer.bogus"}); !errors.Is(err, ErrUnknownMethod) {
		t.Errorf("unknown: %v", err)
	}
	if got := fmt.Sprint(m.Methods()); got != "[transfer.cancel transfer.start]" {
		t.Errorf("Methods = %s", got)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("duplicate Handle did not panic")
			}
		}()
		m.Handle(MethodTransferStart, func(context.Context, Envelope) (any, error) { return nil, nil })
	}()
}

func TestTargets(t *testing.T) {
	if AgentTarget("RegionOne") != "agent.RegionOne" || AgentHostTarget("RegionOne", "host1") != "agent.RegionOne.host1" || StatusTarget != "ferry.status" {
		t.Error("targets")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"version":"1.0","method":"transfer.start","request_id":"r","body":{"id":"t"}}`))
	f.Add([]byte(`{"version":"2.1","method":"m"}`))
	f.Add([]byte(`{"version":"1.99999999999","method":"m"}`))
	f.Add([]byte(`{"version":"1.0","method":"m","error":{"code":"not_found","message":"x"}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrMajorVersion) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		// What decodes re-encodes and decodes to the same envelope.
		out, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		env2, err := Decode(out)
		if err != nil || env2.Method != env.Method || env2.RequestID != env.RequestID || env2.Version != env.Version {
			t.Fatalf("round trip: %+v %v", env2, err)
		}
		var v any
		_ = env.DecodeBody(&v)
	})
}

// ephemeral is on the wire only when set; a 1.0 receiver (a body without
// the field) decodes a 1.1 start and ignores it; a 1.1 receiver decodes a
// 1.0 start as not ephemeral.
func TestTransferStartEphemeral(t *testing.T) {
	st := TransferStart{TransferID: "t1", Source: Location{Region: "R1", Pool: "p", Image: "i"}, Destination: Location{Region: "R2"}, Epoch: 1}
	env, err := NewEnvelope(context.Background(), MethodTransferStart, st)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(env.Body), "ephemeral") {
		t.Errorf("a non-ephemeral start carries the field: %s", env.Body)
	}
	st.Ephemeral = true
	if env, err = NewEnvelope(context.Background(), MethodTransferStart, st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(env.Body), `"ephemeral":true`) {
		t.Errorf("body %s", env.Body)
	}
	data, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	var back TransferStart
	if err := got.DecodeBody(&back); err != nil || !back.Ephemeral || back.Validate() != nil {
		t.Errorf("decoded %+v %v", back, err)
	}
	var old struct {
		TransferID string `json:"transfer_id"`
		Epoch      int64  `json:"epoch"`
	}
	if err := got.DecodeBody(&old); err != nil || old.TransferID != "t1" || old.Epoch != 1 {
		t.Errorf("an older receiver: %+v %v", old, err)
	}
	v10 := Envelope{Version: "1.0", Method: MethodTransferStart, Body: []byte(`{"transfer_id":"t1","source":{"region":"R1","pool":"p","image":"i"},"destination":{"region":"R2"},"epoch":1}`)}
	back = TransferStart{}
	if err := v10.DecodeBody(&back); err != nil || back.Ephemeral {
		t.Errorf("a 1.0 start decoded as %+v %v", back, err)
	}
}
