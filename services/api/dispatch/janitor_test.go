package dispatch

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
)

// The janitor sends each failed or cancelled transfer's clean-up once its
// grace is over, to the agents of both its regions, once; never a running
// or completed transfer's.
func TestJanitor(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)}
	d, err := db.Open(testCtx(t), "sqlite:///"+filepath.Join(t.TempDir(), "j.sqlite"), db.WithNowFunc(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	walk := func(tr *db.Transfer, to ...db.Status) {
		t.Helper()
		for _, s := range to {
			if _, err := d.TransitionTransfer(ctx, tr.ID, s, db.TransitionOpts{Message: "test"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	failed, cancelled, running, done := createTransfer(t, d, 1), createTransfer(t, d, 2), createTransfer(t, d, 3), createTransfer(t, d, 4)
	walk(failed, db.StatusAccepted, db.StatusError)
	walk(cancelled, db.StatusCancelled)
	walk(running, db.StatusAccepted)
	walk(done, db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying, db.StatusCompleted)
	// The starts of creation are not what this test looks at.
	if _, err := d.ClaimOutbox(ctx, "drain", time.Hour, 100); err != nil {
		t.Fatal(err)
	}
	kicked := 0
	j := &Janitor{DB: d, Grace: time.Hour, Publish: func() { kicked++ }, Log: quietLog()}
	if n, err := j.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("within the grace: %d %v", n, err)
	}
	clk.Add(61 * time.Minute)
	if n, err := j.Sweep(ctx); err != nil || n != 2 || kicked != 1 {
		t.Fatalf("after the grace: %d %v (kicked %d)", n, err, kicked)
	}
	if n, err := j.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("a second sweep: %d %v", n, err)
	}
	clk.Add(2 * time.Hour) // the claims of the drain expire
	msgs, err := d.ClaimOutbox(ctx, "test", time.Minute, 100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, m := range msgs {
		var sm storedMessage
		if err := json.Unmarshal([]byte(m.Payload), &sm); err != nil {
			t.Fatal(err)
		}
		if sm.Method != rpc.MethodTransferCleanup {
			continue
		}
		var body rpc.TransferCleanup
		if err := json.Unmarshal(sm.Body, &body); err != nil {
			t.Fatal(err)
		}
		got[body.TransferID] = append(got[body.TransferID], m.RoutingKey)
		if body.Source.Image == "" || body.Destination.Region != "RegionTwo" {
			t.Errorf("clean-up body %+v", body)
		}
	}
	for _, tr := range []*db.Transfer{failed, cancelled} {
		if rk := got[tr.ID]; len(rk) != 2 || rk[0] == rk[1] {
			t.Errorf("%s: clean-up sent to %v, want agent.RegionOne and agent.RegionTwo", tr.Name, rk)
		}
	}
	for _, tr := range []*db.Transfer{running, done} {
		if rk := got[tr.ID]; len(rk) != 0 {
			t.Errorf("%s (%s) cleaned: %v", tr.Name, tr.Status, rk)
		}
	}
}
