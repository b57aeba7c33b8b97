package agent

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/transfer"
)

// transfer.start's ephemeral reaches the job; the completed report of an
// ephemeral transfer names no snapshot (ferry-api would record it as the
// destination's base), the report of another does.
func TestEphemeralStartAndReport(t *testing.T) {
	req := start("t1")
	req.Source.Snapshot, req.Destination.Pool, req.Mode = "snap", "volumes2", "full"
	if job := jobOf(req); job.Ephemeral || job.Snapshot != "snap" || job.DestPool != "volumes2" || job.Mode != "full" || job.Pool != "volumes" {
		t.Errorf("job %+v", job)
	}
	res := transfer.Result{Digest: "d", Mode: "full", Snapshot: "ferry-t1", SourceSnapshot: "ferry-t1", BytesDone: 3, BytesTotal: 4}
	ev := completed(req, res)
	if ev.Event != rpc.EventCompleted || ev.Snapshot != "ferry-t1" || ev.Digest != "d" || ev.Mode != "full" || ev.BytesDone != 3 || ev.BytesTotal != 4 || ev.Epoch != 1 {
		t.Errorf("completed %+v", ev)
	}

	req.Ephemeral = true
	if job := jobOf(req); !job.Ephemeral {
		t.Errorf("job %+v", job)
	}
	res.Ephemeral, res.Snapshot = true, ""
	if ev := completed(req, res); ev.Snapshot != "" || ev.Digest != "d" {
		t.Errorf("ephemeral completed %+v", ev)
	}
	// Even a result that names the copied snapshot reports none.
	res.Snapshot = "ferry-t1"
	if ev := completed(req, res); ev.Snapshot != "" {
		t.Errorf("ephemeral completed %+v", ev)
	}
}

// fakeCaller answers transfer.prepare over JSON, as the bus does.
type fakeCaller struct {
	got   transfer.PrepareRequest
	reply string
}

func (f *fakeCaller) Call(_ context.Context, _ rpc.Target, method string, body, reply any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &f.got); err != nil {
		return err
	}
	return json.Unmarshal([]byte(f.reply), reply)
}

// The prepare RPC carries ephemeral to the destination and its echo back.
func TestRemoteDestEphemeral(t *testing.T) {
	c := &fakeCaller{reply: `{"endpoint":"127.0.0.1:9792","ticket":"x","checkpoint":{},"ephemeral":true,"region":"R2","host":"h"}`}
	d := &RemoteDest{Caller: c, Region: "R2"}
	resp, err := d.Prepare(context.Background(), transfer.PrepareRequest{TransferID: "t1", Ephemeral: true})
	if err != nil || !c.got.Ephemeral || !resp.Ephemeral || resp.Endpoint != "127.0.0.1:9792" {
		t.Errorf("sent %+v, got %+v %v", c.got, resp, err)
	}
	// An older destination agent: no echo.
	c.reply = `{"endpoint":"e","ticket":"x","checkpoint":{},"region":"R2","host":"h"}`
	if resp, err := d.Prepare(context.Background(), transfer.PrepareRequest{TransferID: "t1", Ephemeral: true}); err != nil || resp.Ephemeral {
		t.Errorf("older destination: %+v %v", resp, err)
	}
}
