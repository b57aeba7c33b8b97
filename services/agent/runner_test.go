package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/internal/config"
)

type recordingCaster struct {
	mu     sync.Mutex
	events []rpc.StatusEvent
}

func (c *recordingCaster) Cast(_ context.Context, _ rpc.Target, _ string, body any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ev, ok := body.(rpc.StatusEvent); ok {
		c.events = append(c.events, ev)
	}
	return nil
}

func start(id string) rpc.TransferStart {
	return rpc.TransferStart{TransferID: id, Epoch: 1,
		Source: rpc.Location{Region: "RegionOne", Pool: "volumes", Image: "i"}, Destination: rpc.Location{Region: "RegionTwo"}}
}

// At most max_transfers run; the rest go back to the queue (a temporary
// error); a redelivered start of a running transfer is ignored; a start
// is answered at once (the delivery is acked long before the transfer
// ends); a cancel stops the job and frees its slot.
func TestRunnerSlots(t *testing.T) {
	cfg := config.Defaults()
	cfg.Agent.MaxTransfers = 2
	cfg.Agent.Region = "RegionOne"
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), host: "h"}
	caster := &recordingCaster{}
	r := newRunner(a, caster, nil)
	release := make(chan struct{})
	var mu sync.Mutex
	runs := map[string]int{}
	r.runJob = func(ctx context.Context, req rpc.TransferStart, _ *rpc.Grant) {
		mu.Lock()
		runs[req.TransferID]++
		mu.Unlock()
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	ctx := context.Background()
	t0 := time.Now()
	for _, id := range []string{"a", "b"} {
		if err := r.start(ctx, start(id), nil); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
	}
	if time.Since(t0) > time.Second {
		t.Error("start waited for the transfer")
	}
	err := r.start(ctx, start("c"), nil)
	if !rpc.IsTemporary(err) || !errors.Is(err, errBusy) {
		t.Errorf("third start: %v, want a temporary busy error", err)
	}
	if err := r.start(ctx, start("a"), nil); err != nil {
		t.Errorf("redelivered start: %v", err)
	}
	if err := r.start(ctx, rpc.TransferStart{TransferID: "x"}, nil); !errors.Is(err, rpc.ErrInvalid) {
		t.Errorf("invalid start: %v", err)
	}
	if !r.cancel("a", 0) || r.cancel("zzz", 0) {
		t.Error("cancel of a running / an unknown transfer")
	}
	// a's slot frees: c now fits.
	deadline := time.Now().Add(5 * time.Second)
	for r.start(ctx, start("c"), nil) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the cancelled transfer's slot never freed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	r.wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if runs["a"] != 1 || runs["b"] != 1 || runs["c"] != 1 {
		t.Errorf("runs %v: each transfer exactly once", runs)
	}
	caster.mu.Lock()
	defer caster.mu.Unlock()
	accepted := 0
	for _, ev := range caster.events {
		if ev.Event == rpc.EventAccepted {
			accepted++
			if ev.Host != "h" || ev.Region != "RegionOne" || ev.Epoch != 1 {
				t.Errorf("report %+v", ev)
			}
		}
	}
	if accepted != 3 {
		t.Errorf("%d accepted reports, want 3", accepted)
	}
}

// A cancel names the epoch it cancels: another epoch's run is left alone.
func TestRunnerCancelEpoch(t *testing.T) {
	cfg := config.Defaults()
	cfg.Agent.Region = "RegionOne"
	r := newRunner(&Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), host: "h"}, &recordingCaster{}, nil)
	stopped := make(chan int64, 1)
	r.runJob = func(ctx context.Context, req rpc.TransferStart, _ *rpc.Grant) {
		<-ctx.Done()
		stopped <- req.Epoch
	}
	s := start("a")
	s.Epoch = 2
	if err := r.start(context.Background(), s, nil); err != nil {
		t.Fatal(err)
	}
	if r.cancel("a", 1) {
		t.Error("a cancel of epoch 1 stopped the run of epoch 2")
	}
	select {
	case e := <-stopped:
		t.Fatalf("epoch %d stopped", e)
	case <-time.After(100 * time.Millisecond):
	}
	if !r.cancel("a", 2) {
		t.Error("cancel of the running epoch refused")
	}
	if e := <-stopped; e != 2 {
		t.Errorf("stopped epoch %d", e)
	}
	r.wg.Wait()
}

// A start of a run that ended here (a redelivery after the end) is not run
// again; a newer epoch (a retry) is.
func TestRunnerForgetsNoFinishedRun(t *testing.T) {
	cfg := config.Defaults()
	cfg.Agent.Region = "RegionOne"
	r := newRunner(&Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), host: "h"}, &recordingCaster{}, nil)
	runs := make(chan int64, 4)
	r.runJob = func(_ context.Context, req rpc.TransferStart, _ *rpc.Grant) { runs <- req.Epoch }
	s := start("a")
	if err := r.start(context.Background(), s, nil); err != nil {
		t.Fatal(err)
	}
	<-runs
	r.wg.Wait()
	if err := r.start(context.Background(), s, nil); err != nil {
		t.Fatal(err)
	}
	s.Epoch = 2
	if err := r.start(context.Background(), s, nil); err != nil {
		t.Fatal(err)
	}
	r.wg.Wait()
	close(runs)
	var got []int64
	for e := range runs {
		got = append(got, e)
	}
	if len(got) != 1 || got[0] != 2 {
		t.Errorf("runs after the first: %v, want only epoch 2", got)
	}
}
