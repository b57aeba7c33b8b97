package transfer

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/services/agent/rbd"
)

func validPrepare() PrepareRequest {
	return PrepareRequest{TransferID: "t1", Mode: ModeFull, Pool: "volumes", Image: "i", SourceFSID: "fsid",
		SourceImageID: "id", SourceName: "volumes/i", Size: 4096, Order: 22, Snapshot: "ferry-t1", SourceSnapID: 4, ChunkSize: 1 << 20}
}

func TestPrepareRequestEphemeral(t *testing.T) {
	for _, tc := range []struct {
		mode      string
		ephemeral bool
		ok        bool
	}{
		{ModeFull, true, true},
		{ModeAuto, true, true}, // the destination treats it as full
		{ModeIncremental, true, false},
		{ModeIncremental, false, true},
	} {
		r := validPrepare()
		r.Mode, r.Ephemeral = tc.mode, tc.ephemeral
		err := r.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrBadRequest)) {
			t.Errorf("mode %s ephemeral %v: %v", tc.mode, tc.ephemeral, err)
		}
	}
	// On the wire only when set: an older destination sees the request it
	// always saw.
	r := validPrepare()
	b, _ := json.Marshal(r)
	if strings.Contains(string(b), "ephemeral") {
		t.Errorf("non-ephemeral prepare: %s", b)
	}
	r.Ephemeral = true
	b, _ = json.Marshal(r)
	var back PrepareRequest
	if err := json.Unmarshal(b, &back); err != nil || !back.Ephemeral || !strings.Contains(string(b), `"ephemeral":true`) {
		t.Errorf("ephemeral prepare %s → %+v %v", b, back, err)
	}
	// The destination's echo; absent in an older agent's answer.
	var resp PrepareResponse
	if err := json.Unmarshal([]byte(`{"endpoint":"e","ticket":"x","checkpoint":{}}`), &resp); err != nil || resp.Ephemeral {
		t.Errorf("older answer %+v %v", resp, err)
	}
}

// failPreparer fails the test when the source reaches the destination.
type failPreparer struct{ t *testing.T }

func (f failPreparer) Prepare(context.Context, PrepareRequest) (PrepareResponse, error) {
	f.t.Error("prepare called")
	return PrepareResponse{}, errors.New("no")
}

func (f failPreparer) Finish(context.Context, FinishRequest) (FinishResponse, error) {
	f.t.Error("finish called")
	return FinishResponse{}, errors.New("no")
}

func (f failPreparer) Abort(context.Context, AbortRequest) error {
	f.t.Error("abort called")
	return nil
}

// An ephemeral incremental is refused before anything is touched: no
// connection, no snapshot, no prepare.
func TestEphemeralIncrementalRefused(t *testing.T) {
	connected := false
	connect := func(context.Context) (*rbd.Cluster, func(), error) {
		connected = true
		return nil, nil, errors.New("no cluster in a unit test")
	}
	s := NewSource(connect, []string{"volumes"}, Options{}, slog.New(slog.DiscardHandler))
	_, err := s.Run(context.Background(), Job{TransferID: "t1", Pool: "volumes", Image: "i", Mode: ModeIncremental, Ephemeral: true}, failPreparer{t})
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "ephemeral") || !strings.Contains(err.Error(), "full") {
		t.Errorf("err = %v, want a clear ErrBadRequest", err)
	}
	if connected {
		t.Error("the source connected to its cluster for a refused job")
	}
	// auto and full go on (here to the connection, which fails).
	for _, mode := range []string{"", ModeAuto, ModeFull} {
		connected = false
		_, err := s.Run(context.Background(), Job{TransferID: "t1", Pool: "volumes", Image: "i", Mode: mode, Ephemeral: true}, failPreparer{t})
		if errors.Is(err, ErrBadRequest) || !connected {
			t.Errorf("mode %q: %v (connected %v)", mode, err, connected)
		}
	}
}
