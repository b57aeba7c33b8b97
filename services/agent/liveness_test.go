package agent

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/config"
)

// heartbeatRecorder records heartbeats; block makes the first cast hang
// until its context ends (a broker that never confirms).
type heartbeatRecorder struct {
	mu    sync.Mutex
	hbs   []rpc.Heartbeat
	block bool
	calls int
}

func (c *heartbeatRecorder) Cast(ctx context.Context, _ rpc.Target, method string, body any) error {
	c.mu.Lock()
	c.calls++
	first := c.calls == 1
	c.mu.Unlock()
	if method != rpc.MethodAgentHeartbeat {
		return nil
	}
	if c.block && first {
		<-ctx.Done()
		return ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hbs = append(c.hbs, body.(rpc.Heartbeat))
	return nil
}

func (c *heartbeatRecorder) heartbeats() []rpc.Heartbeat {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.hbs)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A stalled cluster (a probe that never returns) and a broker that does
// not confirm one heartbeat delay neither the heartbeats nor each other:
// heartbeats keep coming, numbered, with the running set, and carry the
// probe's timeout as its result.
func TestHeartbeatsNeverWaitOnCephOrBroker(t *testing.T) {
	for _, tc := range []struct {
		name        string
		blockBroker bool
	}{{"ceph stalled", false}, {"ceph stalled and a heartbeat unconfirmed", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			log := slog.New(slog.DiscardHandler)
			stalled := make(chan struct{})
			defer close(stalled)
			p := &healthProber{interval: time.Hour, timeout: 30 * time.Millisecond, now: time.Now, log: log,
				probe: func(ctx context.Context) (rbd.Health, error) {
					<-stalled // librados stuck: ignores ctx
					return rbd.Health{}, nil
				}}
			// The probe ignores its context; Run must not: wrap it the
			// way rbd.Cluster.Health does.
			raw := p.probe
			p.probe = func(ctx context.Context) (rbd.Health, error) {
				done := make(chan struct{})
				go func() { _, _ = raw(ctx); close(done) }()
				select {
				case <-done:
					return rbd.Health{Status: "HEALTH_OK"}, nil
				case <-ctx.Done():
					return rbd.Health{}, ctx.Err()
				}
			}
			go func() { _ = p.Run(ctx) }()

			rec := &heartbeatRecorder{block: tc.blockBroker}
			h := &heartbeater{caster: rec, interval: 20 * time.Millisecond, host: "h", region: "R", boot: "boot-1", capacity: 2,
				running: func() []string { return []string{"t1"} }, health: p, log: log}
			go func() { _ = h.Run(ctx) }()
			waitFor(t, "five heartbeats", func() bool { return len(rec.heartbeats()) >= 5 })
			hbs := rec.heartbeats()
			for i, hb := range hbs {
				if hb.BootID != "boot-1" || hb.Host != "h" || hb.Region != "R" || hb.MaxTransfers != 2 || !slices.Equal(hb.Running, []string{"t1"}) {
					t.Errorf("heartbeat %d: %+v", i, hb)
				}
				if i > 0 && hb.Seq <= hbs[i-1].Seq {
					t.Errorf("seq %d after %d", hb.Seq, hbs[i-1].Seq)
				}
			}
			if tc.blockBroker && hbs[0].Seq != 2 {
				t.Errorf("first delivered heartbeat has seq %d, want 2 (the first one was never confirmed)", hbs[0].Seq)
			}
			waitFor(t, "the probe's timeout in a heartbeat", func() bool {
				hbs := rec.heartbeats()
				last := hbs[len(hbs)-1]
				return last.CephHealth != nil && strings.Contains(last.CephHealth.Error, "did not answer")
			})
		})
	}
}

func TestHealthSnapshotAndChecks(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	var p *healthProber
	if p.snapshot(now) != nil {
		t.Error("nil prober has a result")
	}
	checks := []rbd.HealthCheck{
		{Code: "OSD_FULL", Severity: "HEALTH_ERR", Message: "1 full osd(s)"},
		{Code: "SOME_NEW_ERR", Severity: "HEALTH_ERR", Message: "x"},
		{Code: "OSD_NEARFULL", Severity: "HEALTH_WARN", Message: "1 nearfull osd(s)"},
		{Code: "SLOW_OPS", Severity: "HEALTH_WARN", Message: strings.Repeat("s", 300)},
		{Code: "AUTH_INSECURE_GLOBAL_ID_RECLAIM_ALLOWED", Severity: "HEALTH_WARN", Message: "noise"},
	}
	calls := 0
	p = &healthProber{interval: time.Hour, timeout: time.Second, log: slog.New(slog.DiscardHandler),
		now: func() time.Time { return now },
		probe: func(context.Context) (rbd.Health, error) {
			calls++
			if calls == 2 {
				return rbd.Health{}, rbd.ErrTimeout
			}
			return rbd.Health{Status: "HEALTH_ERR", Checks: checks}, nil
		}}
	if p.snapshot(now) != nil {
		t.Error("result before the first probe")
	}
	p.probeOnce(context.Background())
	got := p.snapshot(now.Add(90 * time.Second))
	codes := []string{}
	for _, c := range got.Checks {
		codes = append(codes, c.Code)
		if len(c.Message) > 200 {
			t.Errorf("%s: message of %d bytes", c.Code, len(c.Message))
		}
	}
	if got.Status != "HEALTH_ERR" || !slices.Equal(codes, []string{"OSD_FULL", "SOME_NEW_ERR", "OSD_NEARFULL", "SLOW_OPS"}) || got.Others != 1 || got.AgeSeconds != 90 {
		t.Errorf("snapshot %+v (codes %v)", got, codes)
	}
	got.Checks[0].Code = "changed"
	if p.snapshot(now).Checks[0].Code != "OSD_FULL" {
		t.Error("snapshot shares its checks with the prober")
	}
	p.probeOnce(context.Background())
	got = p.snapshot(now)
	if got.Status != "" || !strings.Contains(got.Error, "did not answer") {
		t.Errorf("after a timeout: %+v", got)
	}
}

// A start of a newer epoch of a transfer the agent still runs stops the
// older run (without a report) and is taken once it stopped; an older or
// equal epoch is a redelivery and is dropped.
func TestRunnerNewerEpochSupersedes(t *testing.T) {
	cfg := config.Defaults()
	cfg.Agent.Region = "RegionOne"
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), host: "h"}
	caster := &recordingCaster{}
	r := newRunner(a, caster, nil)
	var mu sync.Mutex
	epochs := []int64{}
	stopped := []int64{}
	r.runJob = func(ctx context.Context, req rpc.TransferStart, _ *rpc.Grant) {
		mu.Lock()
		epochs = append(epochs, req.Epoch)
		mu.Unlock()
		<-ctx.Done()
		mu.Lock()
		stopped = append(stopped, req.Epoch)
		mu.Unlock()
	}
	ctx := context.Background()
	at := func(epoch int64) rpc.TransferStart { s := start("t"); s.Epoch = epoch; return s }
	if err := r.start(ctx, at(2), nil); err != nil {
		t.Fatal(err)
	}
	for _, e := range []int64{1, 2} {
		if err := r.start(ctx, at(e), nil); err != nil {
			t.Errorf("start of epoch %d while 2 runs: %v, want nil (dropped)", e, err)
		}
	}
	err := r.start(ctx, at(3), nil)
	if !rpc.IsTemporary(err) || !errors.Is(err, errSuperseded) {
		t.Fatalf("start of epoch 3: %v, want a temporary superseded error", err)
	}
	waitFor(t, "epoch 3 to be taken", func() bool {
		return r.start(ctx, at(3), nil) == nil && slices.Equal(r.runningIDs(), []string{"t"}) && func() bool { mu.Lock(); defer mu.Unlock(); return len(epochs) == 2 }()
	})
	r.stopAll()
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(epochs, []int64{2, 3}) || !slices.Equal(stopped, []int64{2, 3}) {
		t.Errorf("runs %v stopped %v, want [2 3] both", epochs, stopped)
	}
	caster.mu.Lock()
	defer caster.mu.Unlock()
	var acc []int64
	for _, ev := range caster.events {
		if ev.Event != rpc.EventAccepted {
			t.Errorf("unexpected report %+v", ev)
		}
		acc = append(acc, ev.Epoch)
	}
	if !slices.Equal(acc, []int64{2, 3}) {
		t.Errorf("accepted reports for epochs %v, want [2 3]", acc)
	}
}
