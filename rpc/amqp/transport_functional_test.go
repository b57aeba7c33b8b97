//go:build functional

package amqp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ferry-project/ferry/rpc/amqp/amqptest"
)

// tlog is a slog destination that writes into the test log until the test
// ends (logs from goroutines after that are dropped, not a panic).
type tlog struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tlog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	w := &tlog{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// uniq is a name unique to this test run.
func uniq(prefix string) string {
	return fmt.Sprintf("%s.%s", prefix, strings.ToLower(newID()[:10]))
}

// newTransport opens a Transport closed at the end of the test.
func newTransport(t testing.TB, url string, opts Options) *Transport {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := New(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := tr.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return tr
}

// admin runs f on a fresh raw channel (a failed broker operation closes its
// channel, so each use gets its own).
func admin(t testing.TB, url string, f func(ch *amqp.Channel) error) error {
	t.Helper()
	uris, err := ParseTransportURL(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := dial(ctx, uris[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	return f(ch)
}

// cleanupQueues deletes the queues when the test ends (after the transports
// registered later have closed).
func cleanupQueues(t testing.TB, url string, queues ...string) {
	t.Cleanup(func() {
		for _, q := range queues {
			if err := admin(t, url, func(ch *amqp.Channel) error {
				_, err := ch.QueueDelete(q, false, false, false)
				return err
			}); err != nil {
				t.Errorf("delete queue %s: %v", q, err)
			}
		}
	})
}

// readyCount is the number of ready messages in a queue.
func readyCount(t testing.TB, url, queue string) int {
	t.Helper()
	var n int
	if err := admin(t, url, func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		n = q.Messages
		return err
	}); err != nil {
		t.Fatalf("inspect %s: %v", queue, err)
	}
	return n
}

// consume declares queue bound to its own name and runs Consume in the
// background; the returned stop cancels it and waits for it to return.
func consume(t testing.TB, tr *Transport, queue string, h rpc.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	if err := tr.DeclareQueue(dctx, queue, []string{queue}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- tr.Consume(ctx, queue, []string{queue}, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Consume %s: %v", queue, err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("Consume %s did not return", queue)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type numBody struct {
	N int `json:"n"`
}

func TestTopology(t *testing.T) {
	url := transportURL(t)
	tr := newTransport(t, url, DefaultOptions())
	q := uniq("ferry.test.topology")
	cleanupQueues(t, url, q)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.DeclareQueue(ctx, q, []string{q, q + ".alias"}); err != nil {
		t.Fatal(err)
	}
	checks := map[string]func(ch *amqp.Channel) error{
		"exchange ferry (topic, durable)": func(ch *amqp.Channel) error {
			return ch.ExchangeDeclarePassive("ferry", amqp.ExchangeTopic, true, false, false, false, nil)
		},
		"exchange ferry.dlx": func(ch *amqp.Channel) error {
			return ch.ExchangeDeclarePassive("ferry.dlx", amqp.ExchangeTopic, true, false, false, false, nil)
		},
		"queue ferry.dead": func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclarePassive("ferry.dead", true, false, false, false, nil)
			return err
		},
		// Declaring again with the expected arguments succeeds only if they
		// are those of the queue (else 406 PRECONDITION_FAILED).
		"service queue durable, quorum, dead-lettering": func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum", "x-dead-letter-exchange": "ferry.dlx"})
			return err
		},
	}
	for name, check := range checks {
		if err := admin(t, url, check); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Both routing keys reach the queue.
	for _, key := range []rpc.Target{rpc.Target(q), rpc.Target(q + ".alias")} {
		if err := tr.Cast(ctx, key, "test.topology", nil); err != nil {
			t.Errorf("cast to %s: %v", key, err)
		}
	}
	eventually(t, 5*time.Second, "2 messages in the queue", func() bool { return readyCount(t, url, q) == 2 })

	// A queue of another type is used as it is, with a warning.
	classic := uniq("ferry.test.classic")
	cleanupQueues(t, url, classic)
	if err := admin(t, url, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(classic, true, false, false, false, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := tr.DeclareQueue(ctx, classic, []string{classic}); err != nil {
		t.Errorf("existing classic queue: %v", err)
	}
}

func TestCastConsumeAck(t *testing.T) {
	url := transportURL(t)
	tr := newTransport(t, url, DefaultOptions())
	q := uniq("ferry.test.cast")
	cleanupQueues(t, url, q)
	var mu sync.Mutex
	got := map[int]string{}
	stop := consume(t, tr, q, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var b numBody
		if err := env.DecodeBody(&b); err != nil {
			return nil, err
		}
		mu.Lock()
		got[b.N] = rpc.RequestIDFrom(ctx)
		mu.Unlock()
		return nil, nil
	})
	const n = 40
	start := time.Now()
	var wg sync.WaitGroup
	for g := range 4 { // concurrent casts share the channel pool
		wg.Go(func() {
			for i := g; i < n; i += 4 {
				ctx := rpc.WithRequestID(context.Background(), fmt.Sprintf("req-%d", i))
				if err := tr.Cast(ctx, rpc.Target(q), "test.cast", numBody{i}); err != nil {
					t.Errorf("cast %d: %v", i, err)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d casts confirmed in %v", n, time.Since(start))
	eventually(t, 10*time.Second, "all casts consumed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == n
	})
	for i := range n {
		if got[i] != fmt.Sprintf("req-%d", i) {
			t.Errorf("message %d handled with request id %q", i, got[i])
		}
	}
	stop()
	if c := readyCount(t, url, q); c != 0 {
		t.Errorf("%d messages left after acks", c)
	}
}

func TestCallReply(t *testing.T) {
	url := transportURL(t)
	callee := newTransport(t, url, Options{QuorumQueues: true, Name: "callee"})
	caller := newTransport(t, url, Options{QuorumQueues: true, Name: "caller"})
	q := uniq("ferry.test.call")
	cleanupQueues(t, url, q)
	consume(t, callee, q, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var b numBody
		if err := env.DecodeBody(&b); err != nil {
			return nil, err
		}
		return map[string]any{"n": b.N * 2, "request_id": rpc.RequestIDFrom(ctx), "method": env.Method}, nil
	})
	ctx, cancel := context.WithTimeout(rpc.WithRequestID(context.Background(), "req-call-1"), 10*time.Second)
	defer cancel()
	var reply struct {
		N         int    `json:"n"`
		RequestID string `json:"request_id"`
		Method    string `json:"method"`
	}
	if err := caller.Call(ctx, rpc.Target(q), rpc.MethodTransferPrepare, numBody{21}, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.N != 42 || reply.RequestID != "req-call-1" || reply.Method != rpc.MethodTransferPrepare {
		t.Errorf("reply %+v", reply)
	}
	// Concurrent calls each get their own reply.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			var r numBody
			if err := caller.Call(ctx, rpc.Target(q), "test.double", numBody{i}, &r); err != nil || r.N != 2*i {
				t.Errorf("call %d: %+v %v", i, r, err)
			}
		})
	}
	wg.Wait()
	// A nil reply discards the body.
	if err := caller.Call(ctx, rpc.Target(q), "test.double", numBody{1}, nil); err != nil {
		t.Error(err)
	}
}

func TestCallRemoteError(t *testing.T) {
	url := transportURL(t)
	tr := newTransport(t, url, DefaultOptions())
	q := uniq("ferry.test.callerr")
	cleanupQueues(t, url, q)
	var mux rpc.Mux
	mux.Handle("test.missing", func(context.Context, rpc.Envelope) (any, error) {
		return nil, fmt.Errorf("%w: transfer t-1", rpc.ErrNotFound)
	})
	mux.Handle("test.conflict", func(context.Context, rpc.Envelope) (any, error) {
		return nil, rpc.Errorf(rpc.CodeConflict, "image %s exists", "vol-1")
	})
	consume(t, tr, q, mux.Serve)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cases := []struct {
		method   string
		sentinel error
		code     string
	}{
		{"test.missing", rpc.ErrNotFound, rpc.CodeNotFound},
		{"test.conflict", rpc.ErrConflict, rpc.CodeConflict},
		{"test.nonexistent", rpc.ErrUnknownMethod, rpc.CodeUnknownMethod},
	}
	for _, tc := range cases {
		err := tr.Call(ctx, rpc.Target(q), tc.method, nil, nil)
		var re *rpc.RemoteError
		if !errors.Is(err, tc.sentinel) || !errors.As(err, &re) || re.Code != tc.code {
			t.Errorf("%s: %v, want a RemoteError %s", tc.method, err, tc.code)
		}
		if errors.Is(err, rpc.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: a remote error looks like a transport error: %v", tc.method, err)
		}
	}
	// Error replies are answers: nothing is left in the queue or dead-lettered.
	if c := readyCount(t, url, q); c != 0 {
		t.Errorf("%d messages left", c)
	}
}

// A call to a queue nobody consumes times out with the caller's context; a
// consumer that starts later drops the stale request unhandled.
func TestCallTimeoutNoConsumer(t *testing.T) {
	url := transportURL(t)
	tr := newTransport(t, url, DefaultOptions())
	q := uniq("ferry.test.nocons")
	cleanupQueues(t, url, q)
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if err := tr.DeclareQueue(dctx, q, []string{q}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := tr.Call(ctx, rpc.Target(q), "test.nobody", nil, nil)
	el := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call without a consumer: %v", err)
	}
	if el < 700*time.Millisecond || el > 2*time.Second {
		t.Errorf("timed out after %v, want about 800ms", el)
	}
	t.Logf("call timed out after %v: %v", el.Round(time.Millisecond), err)

	var handled atomic.Int32
	consume(t, tr, q, func(context.Context, rpc.Envelope) (any, error) {
		handled.Add(1)
		return nil, nil
	})
	eventually(t, 5*time.Second, "the stale call to leave the queue", func() bool { return readyCount(t, url, q) == 0 })
	time.Sleep(100 * time.Millisecond)
	if handled.Load() != 0 {
		t.Error("a call whose caller had given up was handled")
	}
}

func TestUnroutable(t *testing.T) {
	url := transportURL(t)
	tr := newTransport(t, url, DefaultOptions())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	target := rpc.Target(uniq("ferry.test.nowhere"))
	if err := tr.Cast(ctx, target, "test.lost", numBody{1}); !errors.Is(err, rpc.ErrUnroutable) {
		t.Errorf("unroutable cast: %v", err)
	} else {
		t.Logf("unroutable cast: %v", err)
	}
	if err := tr.Call(ctx, target, "test.lost", nil, nil); !errors.Is(err, rpc.ErrUnroutable) {
		t.Errorf("unroutable call: %v", err)
	}
	// The channel pool is still healthy afterwards.
	q := uniq("ferry.test.after")
	cleanupQueues(t, url, q)
	if err := tr.DeclareQueue(ctx, q, []string{q}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := tr.Cast(ctx, rpc.Target(q), "test.ok", nil); err != nil {
			t.Errorf("cast after an unroutable one: %v", err)
		}
	}
}

// Messages that cannot be handled land in the dead-letter queue with their
// reason; the consumer carries on. A private exchange keeps the shared
// ferry.dead clean.
func TestDeadLetter(t *testing.T) {
	url := transportURL(t)
	ex := uniq("ferry-test-dlx")
	opts := DefaultOptions()
	opts.Exchange = ex
	opts.RequeueDelay = 50 * time.Millisecond
	q := uniq("ferry.test.dead")
	t.Cleanup(func() {
		for _, e := range []string{ex, ex + ".dlx"} {
			if err := admin(t, url, func(ch *amqp.Channel) error { return ch.ExchangeDelete(e, false, false) }); err != nil {
				t.Errorf("delete exchange %s: %v", e, err)
			}
		}
	})
	cleanupQueues(t, url, q, ex+".dead")
	tr := newTransport(t, url, opts)

	var handled sync.Map
	consume(t, tr, q, func(_ context.Context, env rpc.Envelope) (any, error) {
		var b numBody
		if err := env.DecodeBody(&b); err != nil {
			return nil, err
		}
		handled.Store(b.N, true)
		if b.N == 3 {
			return nil, errors.New("pool not allowed") // permanent
		}
		return nil, nil
	})
	raw := func(body string) {
		t.Helper()
		if err := admin(t, url, func(ch *amqp.Channel) error {
			return ch.Publish(ex, q, true, false, amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", MessageId: body[:12], Body: []byte(body)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	raw(`{"version":"2.0","method":"transfer.start","request_id":"req-v2","body":{"n":1}}`)
	raw(`{"version":"1.0", "method": "tr`)
	if err := tr.Cast(ctx, rpc.Target(q), "transfer.start", numBody{3}); err != nil {
		t.Fatal(err)
	}
	raw(`{"version":"1.3","method":"transfer.start","request_id":"req-v13","body":{"n":4,"future":"field"}}`)
	if err := tr.Cast(ctx, rpc.Target(q), "transfer.start", numBody{5}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "messages 4 and 5 handled after the bad ones", func() bool {
		_, ok4 := handled.Load(4)
		_, ok5 := handled.Load(5)
		return ok4 && ok5
	})
	if _, ok := handled.Load(1); ok {
		t.Error("the major-version message reached the handler")
	}
	eventually(t, 10*time.Second, "3 dead letters", func() bool { return readyCount(t, url, ex+".dead") == 3 })

	// A consumer that rejects without requeue (any client) dead-letters
	// through the queue's x-dead-letter-exchange.
	if err := admin(t, url, func(ch *amqp.Channel) error {
		qq := uniq("ferry.test.reject")
		defer ch.QueueDelete(qq, false, false, false)
		if _, err := ch.QueueDeclare(qq, true, false, false, false, opts.withDefaults().queueArgs()); err != nil {
			return err
		}
		if err := ch.Publish("", qq, false, false, amqp.Publishing{Body: []byte("x")}); err != nil {
			return err
		}
		for {
			d, ok, err := ch.Get(qq, false)
			if err != nil {
				return err
			}
			if ok {
				return d.Nack(false, false)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "4 dead letters", func() bool { return readyCount(t, url, ex+".dead") == 4 })

	reasons := map[string]bool{}
	if err := admin(t, url, func(ch *amqp.Channel) error {
		for range 4 {
			d, ok, err := ch.Get(ex+".dead", true)
			if err != nil || !ok {
				return fmt.Errorf("get: %v %v", ok, err)
			}
			if r, ok := d.Headers[headerDeadReason].(string); ok {
				reasons[strings.SplitN(r, ":", 2)[0]] = true
				if d.Headers[headerDeadQueue] != q {
					t.Errorf("dead letter from queue %v", d.Headers[headerDeadQueue])
				}
				t.Logf("dead letter %s: %s", d.MessageId, r)
			} else if _, ok := d.Headers["x-death"]; ok {
				reasons["x-death"] = true
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"major version mismatch", "undecodable message", "handler error", "x-death"} {
		if !reasons[want] {
			t.Errorf("no dead letter for %q (got %v)", want, reasons)
		}
	}
}

func TestCompetingConsumers(t *testing.T) {
	url := transportURL(t)
	q := uniq("ferry.test.compete")
	cleanupQueues(t, url, q)
	var mu sync.Mutex
	count := map[int]int{}
	per := [2]int{}
	for i := range 2 {
		opts := DefaultOptions()
		opts.Prefetch = 1
		opts.Name = fmt.Sprintf("agent%d", i)
		tr := newTransport(t, url, opts)
		consume(t, tr, q, func(_ context.Context, env rpc.Envelope) (any, error) {
			var b numBody
			_ = env.DecodeBody(&b)
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			count[b.N]++
			per[i]++
			mu.Unlock()
			return nil, nil
		})
	}
	sender := newTransport(t, url, DefaultOptions())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 60
	for i := range n {
		if err := sender.Cast(ctx, rpc.Target(q), "test.work", numBody{i}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 15*time.Second, "all messages handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(count) == n
	})
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		if count[i] != 1 {
			t.Errorf("message %d handled %d times", i, count[i])
		}
	}
	if per[0] == 0 || per[1] == 0 {
		t.Errorf("one consumer got nothing: %v", per)
	}
	t.Logf("consumers handled %d and %d messages", per[0], per[1])
}

func TestPrefetch(t *testing.T) {
	url := transportURL(t)
	q := uniq("ferry.test.prefetch")
	cleanupQueues(t, url, q)
	opts := DefaultOptions()
	opts.Prefetch = 3
	tr := newTransport(t, url, opts)
	var inflight, peak, total atomic.Int32
	release := make(chan struct{})
	consume(t, tr, q, func(ctx context.Context, _ rpc.Envelope) (any, error) {
		n := inflight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		defer inflight.Add(-1)
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		total.Add(1)
		return nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 10
	for i := range n {
		if err := tr.Cast(ctx, rpc.Target(q), "test.slow", numBody{i}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "3 handlers running", func() bool { return inflight.Load() == 3 })
	time.Sleep(300 * time.Millisecond)
	if p := peak.Load(); p != 3 {
		t.Errorf("%d handlers ran at once with prefetch 3", p)
	}
	if c := readyCount(t, url, q); c != n-3 {
		t.Errorf("%d messages ready, want %d (the rest held by the consumer)", c, n-3)
	}
	close(release)
	eventually(t, 10*time.Second, "all handled", func() bool { return total.Load() == n })
	if p := peak.Load(); p != 3 {
		t.Errorf("peak concurrency %d with prefetch 3", p)
	}
}

func TestTemporaryErrorRequeues(t *testing.T) {
	url := transportURL(t)
	q := uniq("ferry.test.requeue")
	cleanupQueues(t, url, q)
	opts := DefaultOptions()
	opts.RequeueDelay = 200 * time.Millisecond
	tr := newTransport(t, url, opts)
	var mu sync.Mutex
	var attempts []time.Time
	stop := consume(t, tr, q, func(context.Context, rpc.Envelope) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, time.Now())
		if len(attempts) < 3 {
			return nil, rpc.Temporary(errors.New("agent at max_transfers"))
		}
		return nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Cast(ctx, rpc.Target(q), rpc.MethodTransferStart, numBody{1}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "3 attempts", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts) >= 3
	})
	time.Sleep(300 * time.Millisecond)
	stop()
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 3 {
		t.Errorf("%d attempts, want 3", len(attempts))
	}
	for i := 1; i < len(attempts); i++ {
		if gap := attempts[i].Sub(attempts[i-1]); gap < 180*time.Millisecond {
			t.Errorf("attempt %d came %v after the previous one: no requeue delay", i+1, gap)
		}
	}
	if c := readyCount(t, url, q); c != 0 {
		t.Errorf("%d messages left", c)
	}
}

// Close lets an in-flight handler finish (its context stays alive), acks it,
// and then refuses new work.
func TestCloseDrains(t *testing.T) {
	url := transportURL(t)
	q := uniq("ferry.test.drain")
	cleanupQueues(t, url, q)
	opts := DefaultOptions()
	opts.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := New(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.DeclareQueue(ctx, q, []string{q}); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var finished atomic.Bool
	done := make(chan error, 1)
	go func() {
		done <- tr.Consume(context.Background(), q, []string{q}, func(hctx context.Context, _ rpc.Envelope) (any, error) {
			close(started)
			select {
			case <-time.After(500 * time.Millisecond):
				finished.Store(true)
				return nil, nil
			case <-hctx.Done():
				return nil, hctx.Err()
			}
		})
	}()
	if err := tr.Cast(ctx, rpc.Target(q), "test.drain", nil); err != nil {
		t.Fatal(err)
	}
	<-started
	start := time.Now()
	if err := tr.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if !finished.Load() {
		t.Error("Close did not wait for the handler")
	}
	t.Logf("Close drained in %v", time.Since(start).Round(time.Millisecond))
	if err := <-done; err != nil {
		t.Errorf("Consume after Close: %v", err)
	}
	if c := readyCount(t, url, q); c != 0 {
		t.Errorf("the drained message was not acked (%d ready)", c)
	}
	if err := tr.Cast(ctx, rpc.Target(q), "test.late", nil); !errors.Is(err, rpc.ErrClosed) {
		t.Errorf("cast after close: %v", err)
	}
	if err := tr.Consume(ctx, q, nil, func(context.Context, rpc.Envelope) (any, error) { return nil, nil }); !errors.Is(err, rpc.ErrClosed) {
		t.Errorf("consume after close: %v", err)
	}
	if err := tr.Close(ctx); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// Close with an expired context cancels the handlers' contexts; the message
// is requeued, not lost.
func TestCloseTimeoutRequeues(t *testing.T) {
	url := transportURL(t)
	q := uniq("ferry.test.hardstop")
	cleanupQueues(t, url, q)
	opts := DefaultOptions()
	opts.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := New(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.DeclareQueue(ctx, q, []string{q}); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	go tr.Consume(context.Background(), q, []string{q}, func(hctx context.Context, _ rpc.Envelope) (any, error) {
		close(started)
		<-hctx.Done()
		return nil, hctx.Err()
	})
	if err := tr.Cast(ctx, rpc.Target(q), "test.stuck", nil); err != nil {
		t.Fatal(err)
	}
	<-started
	cctx, ccancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer ccancel()
	if err := tr.Close(cctx); err == nil {
		t.Error("Close reported a complete drain")
	} else {
		t.Logf("close: %v", err)
	}
	eventually(t, 5*time.Second, "the interrupted message back in the queue", func() bool { return readyCount(t, url, q) == 1 })
}

func TestEnvelopeOnTheWire(t *testing.T) {
	url := transportURL(t)
	tr := newTransport(t, url, DefaultOptions())
	q := uniq("ferry.test.wire")
	cleanupQueues(t, url, q)
	ctx, cancel := context.WithTimeout(rpc.WithRequestID(context.Background(), "req-wire"), 10*time.Second)
	defer cancel()
	if err := tr.DeclareQueue(ctx, q, []string{q}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Cast(ctx, rpc.Target(q), rpc.MethodAgentStatus, map[string]string{"event": "progress"}); err != nil {
		t.Fatal(err)
	}
	var d amqp.Delivery
	eventually(t, 5*time.Second, "the message", func() bool {
		var ok bool
		_ = admin(t, url, func(ch *amqp.Channel) error {
			var err error
			d, ok, err = ch.Get(q, true)
			return err
		})
		return ok
	})
	var wire map[string]any
	if err := json.Unmarshal(d.Body, &wire); err != nil {
		t.Fatal(err)
	}
	if wire["version"] != rpc.Version || wire["method"] != "agent.status" || wire["request_id"] != "req-wire" || fmt.Sprint(wire["body"]) != "map[event:progress]" {
		t.Errorf("wire form %s", d.Body)
	}
	if d.DeliveryMode != amqp.Persistent || d.ContentType != "application/json" || d.MessageId == "" || d.Type != "agent.status" {
		t.Errorf("properties %+v", d)
	}
}

// The hosts of the transport URL are tried in turn: a dead first host does
// not stop the transport.
func TestSeveralHosts(t *testing.T) {
	url := transportURL(t)
	i := strings.Index(url, "@")
	if i < 0 {
		t.Fatalf("TRANSPORT_URL %q has no credentials", url)
	}
	dead := amqptest.FreePorts(t, 1)[0]
	multi := fmt.Sprintf("%s127.0.0.1:%d,%s", url[:i+1], dead, url[i+1:])
	start := time.Now()
	tr := newTransport(t, multi, DefaultOptions())
	t.Logf("connected past a dead host in %v", time.Since(start).Round(time.Millisecond))
	q := uniq("ferry.test.hosts")
	cleanupQueues(t, url, q)
	var got atomic.Int32
	consume(t, tr, q, func(context.Context, rpc.Envelope) (any, error) {
		got.Add(1)
		return nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Cast(ctx, rpc.Target(q), "test.hosts", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the cast consumed", func() bool { return got.Load() == 1 })
}

// A call's handler runs within its caller's deadline: a handler that
// would wait for ever sees its context end when the caller gives up, and
// the call is not redelivered.
func TestCallHandlerBoundByDeadline(t *testing.T) {
	url := transportURL(t)
	callee := newTransport(t, url, Options{QuorumQueues: true, Name: "callee"})
	caller := newTransport(t, url, Options{QuorumQueues: true, Name: "caller"})
	q := uniq("ferry.test.deadline")
	cleanupQueues(t, url, q)
	ended := make(chan time.Duration, 4)
	var calls atomic.Int32
	consume(t, callee, q, func(ctx context.Context, env rpc.Envelope) (any, error) {
		calls.Add(1)
		start := time.Now()
		<-ctx.Done()
		ended <- time.Since(start)
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := caller.Call(ctx, rpc.Target(q), "test.block", numBody{1}, nil); err == nil {
		t.Fatal("a call whose handler never answers succeeded")
	}
	select {
	case d := <-ended:
		if d > 5*time.Second {
			t.Errorf("the handler ran %v past a 2 s call", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler of a call its caller gave up still runs 10 s later")
	}
	time.Sleep(2 * time.Second)
	if n := calls.Load(); n != 1 {
		t.Errorf("the abandoned call ran %d times", n)
	}
}
