package dispatch

import (
	"encoding/json"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestRedispatchOfDownAgent(t *testing.T) {
	ctx := testCtx(t)
	clk := &clock{t: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)}
	d, err := db.Open(ctx, "sqlite:///"+filepath.Join(t.TempDir(), "f.sqlite"), db.WithNowFunc(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"agent-a", "agent-b"} {
		if _, err := d.UpsertServiceHeartbeat(ctx, "ferry-agent", h, "RegionOne", "1"); err != nil {
			t.Fatal(err)
		}
	}
	// Drive transfers held by agent-a (and one by agent-b) to statuses.
	hold := func(i int, host string, path ...db.Status) *db.Transfer {
		tr := createTransfer(t, d, i)
		for j, st := range path {
			opts := db.TransitionOpts{}
			if j == 0 {
				opts.Fields.Agent = &host
			}
			if _, err := d.TransitionTransfer(ctx, tr.ID, st, opts); err != nil {
				t.Fatal(err)
			}
		}
		return tr
	}
	moving := hold(1, "agent-a", db.StatusAccepted, db.StatusPreparing, db.StatusTransferring)
	verifying := hold(2, "agent-a", db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying)
	cancelling := hold(3, "agent-a", db.StatusAccepted, db.StatusCancelling)
	finalizing := hold(5, "agent-a", db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying, db.StatusFinalizing)
	other := hold(4, "agent-b", db.StatusAccepted)

	r := &Redispatcher{DB: d, DownAfter: time.Minute, Log: quietLog()}
	if n, err := r.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("sweep with every agent up: %d %v", n, err)
	}
	// agent-a stops heartbeating; agent-b goes on.
	clk.Add(2 * time.Minute)
	if _, err := d.UpsertServiceHeartbeat(ctx, "ferry-agent", "agent-b", "RegionOne", "1"); err != nil {
		t.Fatal(err)
	}
	// Publish the creation starts first, to see only the new one after.
	if _, err := d.ClaimOutbox(ctx, "test", time.Hour, 100); err != nil {
		t.Fatal(err)
	}
	kicked := false
	r.Publish = func() { kicked = true }
	if n, err := r.Sweep(ctx); err != nil || n != 3 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if got := get(t, d, moving.ID); got.Status != db.StatusQueued || got.Epoch != 2 || got.Agent != nil {
		t.Errorf("moving transfer: %s epoch %d agent %v", got.Status, got.Epoch, got.Agent)
	}
	if got := get(t, d, verifying.ID); got.Status != db.StatusError || got.Error == nil {
		t.Errorf("verifying transfer: %s", got.Status)
	}
	if got := get(t, d, cancelling.ID); got.Status != db.StatusCancelled {
		t.Errorf("cancelling transfer: %s", got.Status)
	}
	if got := get(t, d, finalizing.ID); got.Status != db.StatusFinalizing {
		t.Errorf("a finalizing transfer (the API's work, not the agent's) moved: %s", got.Status)
	}
	if got := get(t, d, other.ID); got.Status != db.StatusAccepted {
		t.Errorf("a live agent's transfer moved: %s", got.Status)
	}
	if !kicked {
		t.Error("publisher not kicked")
	}
	// One new start, for the re-dispatched transfer, at epoch 2.
	clk.Add(2 * time.Hour) // the test's leases expire
	msgs, err := d.ClaimOutbox(ctx, "test2", time.Hour, 100)
	if err != nil {
		t.Fatal(err)
	}
	var starts []rpc.TransferStart
	for _, m := range msgs {
		var sm storedMessage
		if err := json.Unmarshal([]byte(m.Payload), &sm); err != nil {
			t.Fatal(err)
		}
		var st rpc.TransferStart
		if err := json.Unmarshal(sm.Body, &st); err != nil {
			t.Fatal(err)
		}
		if st.Epoch == 2 {
			starts = append(starts, st)
		}
	}
	if len(starts) != 1 || starts[0].TransferID != moving.ID {
		t.Errorf("new starts %+v", starts)
	}
	// A second sweep (agent-b still alive) finds nothing more to do.
	if _, err := d.UpsertServiceHeartbeat(ctx, "ferry-agent", "agent-b", "RegionOne", "1"); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Sweep(ctx); err != nil || n != 0 {
		t.Errorf("second sweep: %d %v", n, err)
	}
}
