//go:build functional

package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"

	"github.com/ferry-project/ferry/rpc/amqp/amqptest"
)

// A broker restart needs no process restart: casts during the outage wait
// and then succeed, consumers resume, calls work again, and every message
// (queued before the stop, or cast during the outage) is consumed, none
// lost. Runs on a private node (about 20 s).
func TestBrokerRestart(t *testing.T) {
	b := amqptest.StartBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	opts := DefaultOptions()
	opts.Name = "restart"
	// A dead first host: every (re)connection fails over to the node.
	url := fmt.Sprintf("rabbit://guest:guest@127.0.0.1:%d,127.0.0.1:%d/", amqptest.FreePorts(t, 1)[0], b.Port)
	tr := newTransport(t, url, opts)

	const live, stored, calls = "restart.live", "restart.stored", "restart.rpc"
	var mu sync.Mutex
	seen := map[string]map[int]int{live: {}, stored: {}}
	handler := func(queue string) rpc.Handler {
		return func(_ context.Context, env rpc.Envelope) (any, error) {
			var body numBody
			if err := env.DecodeBody(&body); err != nil {
				return nil, err
			}
			mu.Lock()
			seen[queue][body.N]++
			mu.Unlock()
			return nil, nil
		}
	}
	distinct := func(queue string) int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen[queue])
	}
	consume(t, tr, live, handler(live))
	consume(t, tr, calls, func(_ context.Context, env rpc.Envelope) (any, error) {
		var body numBody
		err := env.DecodeBody(&body)
		return numBody{body.N + 1}, err
	})
	if err := tr.DeclareQueue(ctx, stored, []string{stored}); err != nil {
		t.Fatal(err)
	}
	call := func(n int) {
		t.Helper()
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		var r numBody
		if err := tr.Call(cctx, calls, "test.inc", numBody{n}, &r); err != nil || r.N != n+1 {
			t.Fatalf("call: %+v %v", r, err)
		}
	}
	call(1)

	const before, during = 50, 10
	for i := range before {
		for _, q := range []rpc.Target{live, stored} {
			if err := tr.Cast(ctx, q, "test.msg", numBody{i}); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, 10*time.Second, "the live consumer to get the first casts", func() bool { return distinct(live) == before })

	b.Stop()
	outage := time.Now()

	// A cast whose context ends during the outage fails with ErrUnavailable.
	sctx, scancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err := tr.Cast(sctx, live, "test.msg", numBody{-1})
	scancel()
	if !errors.Is(err, rpc.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cast with a short context during the outage: %v", err)
	} else {
		t.Logf("short cast during the outage: %v", err)
	}

	// Casts with time to spare block until the broker is back.
	results := make(chan error, 2*during)
	for i := before; i < before+during; i++ {
		for _, q := range []rpc.Target{live, stored} {
			go func() { results <- tr.Cast(ctx, q, "test.msg", numBody{i}) }()
		}
	}
	time.Sleep(2 * time.Second)
	if n := len(results); n != 0 {
		t.Fatalf("%d casts returned during the outage (%v): they must wait", n, <-results)
	}

	stopped := time.Since(outage)
	b.Start()
	up := time.Now()
	for range 2 * during {
		select {
		case err := <-results:
			if err != nil {
				t.Errorf("cast during the outage: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("casts during the outage still blocked 60 s after the restart")
		}
	}
	t.Logf("node down %v (+ %v start-up); the casts made meanwhile were confirmed %v after the node was up",
		stopped.Round(time.Millisecond), up.Sub(outage.Add(stopped)).Round(time.Millisecond), time.Since(up).Round(time.Millisecond))

	call(2) // the reply queue is back
	consume(t, tr, stored, handler(stored))
	eventually(t, 60*time.Second, "every message consumed after the restart", func() bool {
		return distinct(live) == before+during && distinct(stored) == before+during
	})
	time.Sleep(time.Second) // late duplicates
	mu.Lock()
	defer mu.Unlock()
	for _, q := range []string{live, stored} {
		dups := 0
		for i := range before + during {
			switch c := seen[q][i]; {
			case c == 0:
				t.Errorf("%s: message %d lost", q, i)
			case c > 1:
				dups += c - 1
			}
		}
		if _, ok := seen[q][-1]; ok {
			t.Errorf("%s: the cast that failed with ErrUnavailable was delivered", q)
		}
		t.Logf("%s: %d messages consumed, %d duplicates (at-least-once)", q, len(seen[q]), dups)
	}
}
