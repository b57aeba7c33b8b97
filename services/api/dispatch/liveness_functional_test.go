//go:build functional

package dispatch

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	ferryamqp "github.com/ferry-project/ferry/rpc/amqp"
)

// Through the real broker: an agent that restarts (new boot id, nothing
// running) has its transfer re-dispatched with a new epoch and a new
// transfer.start long before agent_down_time, and its heartbeats carry
// its cluster's health to the service row.
func TestFunctionalRestartedAgentRedispatched(t *testing.T) {
	url := transportURL(t)
	id := randHex(t)
	exchange := "ferry-test-live-" + id
	region := "LiveTest" + id
	agentQueue := string(rpc.AgentTarget(region))
	statusQueue := "ferry.status.test-" + id
	d, _ := newDB(t)
	cleanupBroker(t, url, []string{agentQueue, statusQueue, exchange + ".dead"}, []string{exchange, exchange + ".dlx"})

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	opts := ferryamqp.DefaultOptions()
	opts.Exchange, opts.Name, opts.Logger = exchange, "live-test-"+id, log
	tp, err := ferryamqp.New(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer ccancel()
		if err := tp.Close(cctx); err != nil {
			t.Errorf("close transport: %v", err)
		}
	})
	cctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })

	// ferry-api: publisher, re-dispatcher (agent_down_time 60 s), status
	// consumer kicking the re-dispatcher on heartbeats.
	p := &Publisher{DB: d, Caster: tp, Owner: "live-" + id, Interval: 200 * time.Millisecond, Declarer: tp, Log: log}
	r := &Redispatcher{DB: d, DownAfter: time.Minute, Interval: time.Hour, Publish: p.Kick, Log: log}
	if err := tp.DeclareQueue(ctx, statusQueue, []string{string(rpc.StatusTarget)}); err != nil {
		t.Fatal(err)
	}
	if err := tp.DeclareQueue(ctx, agentQueue, []string{agentQueue}); err != nil {
		t.Fatal(err)
	}
	wg.Add(3)
	go func() { defer wg.Done(); _ = p.Run(cctx) }()
	go func() { defer wg.Done(); _ = r.Run(cctx) }()
	go func() {
		defer wg.Done()
		h := StatusHandler(d, log, WithHeartbeatKick(r.Kick))
		if err := tp.Consume(cctx, statusQueue, []string{string(rpc.StatusTarget)}, h); err != nil {
			t.Errorf("consume %s: %v", statusQueue, err)
		}
	}()

	// The agent: takes starts and reports accepted.
	starts := make(chan rpc.TransferStart, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := tp.Consume(cctx, agentQueue, []string{agentQueue}, func(ctx context.Context, env rpc.Envelope) (any, error) {
			var ts rpc.TransferStart
			if err := env.DecodeBody(&ts); err != nil {
				return nil, err
			}
			starts <- ts
			return nil, tp.Cast(ctx, rpc.StatusTarget, rpc.MethodAgentStatus, rpc.StatusEvent{
				TransferID: ts.TransferID, Event: rpc.EventAccepted, Epoch: ts.Epoch, Region: region, Host: "agent-f", Time: time.Now()})
		})
		if err != nil {
			t.Errorf("consume %s: %v", agentQueue, err)
		}
	}()
	var seq uint64
	beat := func(boot string, running ...string) {
		t.Helper()
		seq++
		hb := rpc.Heartbeat{Binary: db.AgentBinary, Host: "agent-f", Region: region, Version: "test", Time: time.Now(),
			BootID: boot, Seq: seq, Running: running, MaxTransfers: 2,
			CephHealth: &rpc.CephHealth{Status: "HEALTH_WARN", Checks: []rpc.HealthCheck{{Code: "SLOW_OPS", Severity: "HEALTH_WARN", Message: "1 slow ops"}}, AgeSeconds: 3}}
		if err := tp.Cast(ctx, rpc.StatusTarget, rpc.MethodAgentHeartbeat, hb); err != nil {
			t.Fatal(err)
		}
	}

	tr := newTransfer(1)
	tr.SourceRegion = region
	msg, err := NewStartMessage(tr)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateTransfer(ctx, tr, msg); err != nil {
		t.Fatal(err)
	}
	p.Kick()
	first := <-starts
	if first.Epoch != 1 {
		t.Fatalf("first start at epoch %d", first.Epoch)
	}
	waitFor(t, 20*time.Second, "accepted", func() bool { return get(t, d, tr.ID).Status == db.StatusAccepted })
	// Boot b1 runs it, for a few heartbeats: nothing moves.
	for range 3 {
		beat("b1", tr.ID)
		time.Sleep(200 * time.Millisecond)
	}
	if got := get(t, d, tr.ID); got.Status != db.StatusAccepted || got.Epoch != 1 {
		t.Fatalf("a running transfer moved: %s epoch %d", got.Status, got.Epoch)
	}
	// The agent restarts: boot b2 runs nothing.
	restarted := time.Now()
	seq = 0
	beat("b2")
	var second rpc.TransferStart
	select {
	case second = <-starts:
	case <-time.After(20 * time.Second):
		t.Fatalf("no new transfer.start after the restart (transfer %s)", get(t, d, tr.ID).Status)
	}
	took := time.Since(restarted)
	if second.TransferID != tr.ID || second.Epoch != 2 {
		t.Fatalf("new start %+v", second)
	}
	if took > 10*time.Second {
		t.Errorf("re-dispatched %v after the restart; agent_down_time is %v", took, r.DownAfter)
	}
	waitFor(t, 20*time.Second, "accepted at epoch 2", func() bool {
		got := get(t, d, tr.ID)
		return got.Status == db.StatusAccepted && got.Epoch == 2
	})
	evs, err := d.ListEvents(ctx, tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range evs {
		found = found || (ev.Kind == db.EventRequeue && strings.Contains(ev.Message, "the agent restarted"))
	}
	if !found {
		t.Errorf("no requeue event says the agent restarted: %+v", evs)
	}
	svcs, err := d.ListServices(ctx)
	if err != nil || len(svcs) != 1 {
		t.Fatalf("services %+v %v", svcs, err)
	}
	if h := svcs[0].Health(); h == nil || h.Status != "HEALTH_WARN" || len(h.Checks) != 1 || h.Checks[0].Code != "SLOW_OPS" || svcs[0].BootID != "b2" {
		t.Errorf("service row %+v health %+v", svcs[0], h)
	}
	t.Logf("re-dispatched %v after the restart", took.Round(time.Millisecond))
}
