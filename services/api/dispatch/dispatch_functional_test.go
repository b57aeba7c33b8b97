//go:build functional

package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	ferryamqp "github.com/ferry-project/ferry/rpc/amqp"
	amqp "github.com/rabbitmq/amqp091-go"
)

var _ QueueDeclarer = (*ferryamqp.Transport)(nil)

func transportURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("TRANSPORT_URL")
	if url == "" {
		t.Fatal("TRANSPORT_URL is not set (source $FERRY_STACK_DIR/stack.env)")
	}
	return url
}

func randHex(t *testing.T) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// cleanupBroker deletes the test's queues and exchanges when the test ends
// (registered first, so it runs after the transport has closed).
func cleanupBroker(t *testing.T, url string, queues, exchanges []string) {
	t.Cleanup(func() {
		uris, err := ferryamqp.ParseTransportURL(url)
		if err != nil {
			t.Error(err)
			return
		}
		conn, err := amqp.Dial(uris[0])
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close()
		for _, q := range queues {
			ch, err := conn.Channel()
			if err != nil {
				t.Errorf("cleanup: %v", err)
				return
			}
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				t.Errorf("delete queue %s: %v", q, err)
			}
			_ = ch.Close()
		}
		for _, ex := range exchanges {
			ch, err := conn.Channel()
			if err != nil {
				t.Errorf("cleanup: %v", err)
				return
			}
			if err := ch.ExchangeDelete(ex, false, false); err != nil {
				t.Errorf("delete exchange %s: %v", ex, err)
			}
			_ = ch.Close()
		}
	})
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFunctionalPublishAndStatus(t *testing.T) {
	url := transportURL(t)
	id := randHex(t)
	exchange := "ferry-test-dispatch-" + id
	region := "DispatchTest" + id
	agentQueue := string(rpc.AgentTarget(region))
	statusQueue := "ferry.status.test-" + id
	d, _ := newDB(t) // closed after the consumers and the publisher stop
	cleanupBroker(t, url, []string{agentQueue, statusQueue, exchange + ".dead"}, []string{exchange, exchange + ".dlx"})

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	opts := ferryamqp.DefaultOptions()
	opts.Exchange, opts.Name, opts.Logger = exchange, "dispatch-test-"+id, log
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
	cctx, stopConsumers := context.WithCancel(ctx)
	consumersDone := make(chan struct{}, 3)
	t.Cleanup(func() {
		stopConsumers()
		for range 3 {
			<-consumersDone
		}
	})

	// An agent of the test region.
	starts := make(chan rpc.Envelope, 4)
	if err := tp.DeclareQueue(ctx, agentQueue, []string{agentQueue}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer func() { consumersDone <- struct{}{} }()
		err := tp.Consume(cctx, agentQueue, []string{agentQueue}, func(ctx context.Context, env rpc.Envelope) (any, error) {
			starts <- env
			return nil, nil
		})
		if err != nil {
			t.Errorf("consume %s: %v", agentQueue, err)
		}
	}()

	tr := newTransfer(1)
	tr.SourceRegion = region
	msg, err := NewStartMessageWithRequestID(tr, "req-functional-"+id)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateTransfer(ctx, tr, msg); err != nil {
		t.Fatal(err)
	}
	p := &Publisher{DB: d, Caster: tp, Owner: "functional-" + id, Interval: time.Hour, Declarer: tp, Log: log}
	go func() {
		defer func() { consumersDone <- struct{}{} }()
		if err := p.Run(cctx); err != nil {
			t.Errorf("publisher: %v", err)
		}
	}()
	p.Kick()

	var env rpc.Envelope
	select {
	case env = <-starts:
	case <-ctx.Done():
		t.Fatal("transfer.start not received")
	}
	var ts rpc.TransferStart
	if err := env.DecodeBody(&ts); err != nil {
		t.Fatal(err)
	}
	if env.Method != rpc.MethodTransferStart || env.RequestID != "req-functional-"+id {
		t.Fatalf("envelope %s %s", env.Method, env.RequestID)
	}
	if ts.TransferID != tr.ID || ts.Epoch != 1 || ts.Source.Region != region || ts.Source.Image != "img1" ||
		ts.Destination.Region != "RegionTwo" || ts.ProjectID != "p1" || ts.Mode != "auto" {
		t.Fatalf("body %+v", ts)
	}
	waitFor(t, 10*time.Second, "outbox row marked published", func() bool { return unpublished(t, d) == 0 })

	// ferry-api's status consumer, on a queue of its own.
	if err := tp.DeclareQueue(ctx, statusQueue, []string{string(rpc.StatusTarget)}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer func() { consumersDone <- struct{}{} }()
		if err := tp.Consume(cctx, statusQueue, []string{string(rpc.StatusTarget)}, StatusHandler(d, log)); err != nil {
			t.Errorf("consume %s: %v", statusQueue, err)
		}
	}()
	ev := rpc.StatusEvent{TransferID: tr.ID, Event: rpc.EventAccepted, Epoch: 1, Region: region, Host: "agent-f", Time: time.Now()}
	if err := tp.Cast(ctx, rpc.StatusTarget, rpc.MethodAgentStatus, ev); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "accepted", func() bool { return get(t, d, tr.ID).Status == db.StatusAccepted })
	ev.Event, ev.BytesDone, ev.BytesTotal, ev.Digest = rpc.EventCompleted, 4096, 4096, "blake3:0123"
	if err := tp.Cast(ctx, rpc.StatusTarget, rpc.MethodAgentStatus, ev); err != nil {
		t.Fatal(err)
	}
	hb := rpc.Heartbeat{Binary: db.AgentBinary, Host: "agent-f", Region: region, Version: "test"}
	if err := tp.Cast(ctx, rpc.StatusTarget, rpc.MethodAgentHeartbeat, hb); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "completed", func() bool { return get(t, d, tr.ID).Status == db.StatusCompleted })
	if got := get(t, d, tr.ID); got.Digest != "blake3:0123" || got.BytesTransferred != 4096 || *got.Agent != "agent-f" {
		t.Fatalf("%+v", got)
	}
	waitFor(t, 20*time.Second, "agent service row", func() bool {
		svcs, err := d.ListServices(ctx)
		return err == nil && len(svcs) == 1 && svcs[0].Host == "agent-f" && svcs[0].Region == region
	})
}
