package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openDB(t *testing.T, url string, sync bool) *db.DB {
	t.Helper()
	d, err := db.Open(testCtx(t), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	if sync {
		if err := d.Sync(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func newDB(t *testing.T) (*db.DB, string) {
	url := "sqlite:///" + filepath.Join(t.TempDir(), "f.sqlite")
	return openDB(t, url, true), url
}

func newTransfer(i int) *db.Transfer {
	return &db.Transfer{
		Name: fmt.Sprintf("t%d", i), ProjectID: "p1", UserID: "u1",
		SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: fmt.Sprintf("img%d", i),
		DestRegion: "RegionTwo", DestPool: "backup",
	}
}

// createTransfer creates a transfer with its transfer.start outbox row.
func createTransfer(t *testing.T, d *db.DB, i int) *db.Transfer {
	t.Helper()
	tr := newTransfer(i)
	msg, err := NewStartMessageWithRequestID(tr, "req-test")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateTransfer(testCtx(t), tr, msg); err != nil {
		t.Fatal(err)
	}
	return tr
}

type cast struct {
	target    rpc.Target
	method    string
	requestID string
	body      []byte
}

// fakeCaster records casts; it fails the first failN of them.
type fakeCaster struct {
	mu    sync.Mutex
	failN int
	// unroutable lists targets without a queue (until declared).
	unroutable map[rpc.Target]bool
	declared   []string
	casts      []cast
	tries      int
}

func (f *fakeCaster) Cast(ctx context.Context, target rpc.Target, method string, body any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if f.unroutable[target] {
		return fmt.Errorf("fake: %w", rpc.ErrUnroutable)
	}
	if f.failN > 0 {
		f.failN--
		return fmt.Errorf("fake: %w", rpc.ErrUnavailable)
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return err
	}
	f.casts = append(f.casts, cast{target, method, rpc.RequestIDFrom(ctx), raw})
	return nil
}

func (f *fakeCaster) DeclareQueue(ctx context.Context, queue string, bindings []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(bindings) != 1 || bindings[0] != queue {
		return fmt.Errorf("fake: unexpected bindings %v", bindings)
	}
	f.declared = append(f.declared, queue)
	delete(f.unroutable, rpc.Target(queue))
	return nil
}

func (f *fakeCaster) recorded() []cast {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]cast(nil), f.casts...)
}

func startBodies(t *testing.T, cs []cast) map[string]rpc.TransferStart {
	t.Helper()
	out := map[string]rpc.TransferStart{}
	for _, c := range cs {
		if c.method != rpc.MethodTransferStart {
			t.Fatalf("cast of %s", c.method)
		}
		var ts rpc.TransferStart
		if err := json.Unmarshal(c.body, &ts); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[ts.TransferID]; dup {
			t.Errorf("transfer %s published twice", ts.TransferID)
		}
		out[ts.TransferID] = ts
	}
	return out
}

// unpublished counts outbox rows not yet published (a claim with a zero
// lease would hide leased rows, so claim and release them).
func unpublished(t *testing.T, d *db.DB) int {
	t.Helper()
	ctx := testCtx(t)
	msgs, err := d.ClaimOutbox(ctx, "counter", time.Millisecond, db.MaxOutboxClaim)
	if err != nil {
		t.Fatal(err)
	}
	return len(msgs)
}

func TestNewStartMessage(t *testing.T) {
	tr := newTransfer(1)
	tr.SourceSnapshot = "base"
	msg, err := NewStartMessage(tr)
	if err != nil {
		t.Fatal(err)
	}
	if tr.ID == "" {
		t.Fatal("no id assigned")
	}
	if msg.RoutingKey != "agent.RegionOne" || msg.Exchange != Exchange {
		t.Fatalf("routing: %q %q", msg.Exchange, msg.RoutingKey)
	}
	target, sm, err := decodeOutbox(msg)
	if err != nil || target != rpc.AgentTarget("RegionOne") || sm.Method != rpc.MethodTransferStart {
		t.Fatalf("decode: %v %v %+v", err, target, sm)
	}
	var ts rpc.TransferStart
	if err := json.Unmarshal(sm.Body, &ts); err != nil {
		t.Fatal(err)
	}
	want := rpc.TransferStart{
		TransferID: tr.ID, ProjectID: "p1", Mode: "auto", Epoch: 1,
		Source:      rpc.Location{Region: "RegionOne", Pool: "volumes", Image: "img1", Snapshot: "base"},
		Destination: rpc.Location{Region: "RegionTwo", Pool: "backup"},
	}
	if !reflect.DeepEqual(ts, want) {
		t.Fatalf("body %+v, want %+v", ts, want)
	}
	if err := ts.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := NewStartMessage(&db.Transfer{}); err == nil {
		t.Fatal("no error without a source region")
	}
}

func TestPublisherPublishesOnce(t *testing.T) {
	d, _ := newDB(t)
	ctx := testCtx(t)
	want := map[string]bool{}
	for i := range 7 {
		want[createTransfer(t, d, i).ID] = true
	}
	fc := &fakeCaster{}
	p := &Publisher{DB: d, Caster: fc, Owner: "api-1", Batch: 3, Log: quietLog()}
	total := 0
	for {
		n, err := p.Flush(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		total += n
	}
	if total != 7 {
		t.Fatalf("claimed %d rows, want 7", total)
	}
	got := startBodies(t, fc.recorded())
	if len(got) != 7 {
		t.Fatalf("%d casts, want 7", len(got))
	}
	for _, c := range fc.recorded() {
		if c.target != "agent.RegionOne" || c.requestID != "req-test" {
			t.Errorf("cast to %s with request id %q", c.target, c.requestID)
		}
	}
	for id, ts := range got {
		if !want[id] || ts.Epoch != 1 || ts.Source.Image == "" {
			t.Errorf("unexpected body %+v", ts)
		}
	}
	if n := unpublished(t, d); n != 0 {
		t.Fatalf("%d rows left unpublished", n)
	}
	// Nothing is published again.
	if n, err := p.Flush(ctx); n != 0 || err != nil {
		t.Fatalf("second flush: %d, %v", n, err)
	}
	if len(fc.recorded()) != 7 {
		t.Fatal("rows published again")
	}
}

func TestPublisherRetriesAfterOutage(t *testing.T) {
	d, _ := newDB(t)
	ctx := testCtx(t)
	for i := range 5 {
		createTransfer(t, d, i)
	}
	fc := &fakeCaster{failN: 3}
	p := &Publisher{DB: d, Caster: fc, Owner: "api-1", Log: quietLog(),
		RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}
	n, err := p.Flush(ctx)
	if n != 5 || !errors.Is(err, rpc.ErrUnavailable) {
		t.Fatalf("flush during outage: %d, %v", n, err)
	}
	if len(fc.recorded()) != 0 {
		t.Fatal("published during the outage")
	}
	// The first failure releases the whole batch: one try, not five.
	if fc.tries != 1 {
		t.Fatalf("%d tries during the outage, want 1", fc.tries)
	}
	time.Sleep(20 * time.Millisecond)
	if got := unpublished(t, d); got != 5 {
		t.Fatalf("%d unpublished rows, want 5", got)
	}
	// Run through the rest of the outage and the recovery.
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	p.Interval = 5 * time.Millisecond
	go func() { done <- p.Run(rctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(fc.recorded()) < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := startBodies(t, fc.recorded()); len(got) != 5 {
		t.Fatalf("%d transfers published, want 5", len(got))
	}
	time.Sleep(5 * time.Millisecond)
	if n := unpublished(t, d); n != 0 {
		t.Fatalf("%d rows left unpublished", n)
	}
}

func TestPublisherKick(t *testing.T) {
	d, _ := newDB(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	fc := &fakeCaster{}
	p := &Publisher{DB: d, Caster: fc, Owner: "api-1", Interval: time.Hour, Log: quietLog()}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(50 * time.Millisecond) // the first round found nothing
	createTransfer(t, d, 1)
	p.Kick()
	deadline := time.Now().Add(5 * time.Second)
	for len(fc.recorded()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(fc.recorded()) != 1 {
		t.Fatalf("%d casts after a kick, want 1", len(fc.recorded()))
	}
}

func TestPublisherPoisonRow(t *testing.T) {
	d, _ := newDB(t)
	ctx := testCtx(t)
	if err := d.EnqueueOutbox(ctx, &db.OutboxMessage{Exchange: "ferry", RoutingKey: "agent.X", Payload: "not json"}); err != nil {
		t.Fatal(err)
	}
	createTransfer(t, d, 1)
	fc := &fakeCaster{}
	p := &Publisher{DB: d, Caster: fc, Owner: "api-1", Log: quietLog()}
	if _, err := p.Flush(ctx); err == nil {
		t.Fatal("no error for an undecodable row")
	}
	// The good row behind it is published all the same.
	if len(fc.recorded()) != 1 {
		t.Fatalf("%d casts, want 1", len(fc.recorded()))
	}
}

func TestTwoPublishersNeverPublishTwice(t *testing.T) {
	d1, url := newDB(t)
	d2 := openDB(t, url, false)
	ctx, cancel := context.WithCancel(testCtx(t))
	fc := &fakeCaster{}
	ps := []*Publisher{
		{DB: d1, Caster: fc, Owner: "api-1", Interval: time.Millisecond, Batch: 4, Log: quietLog()},
		{DB: d2, Caster: fc, Owner: "api-2", Interval: time.Millisecond, Batch: 4, Log: quietLog()},
	}
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() {
			if err := p.Run(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	const n = 60
	for i := range n {
		d := d1
		if i%2 == 1 {
			d = d2
		}
		createTransfer(t, d, i)
		ps[i%2].Kick()
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(fc.recorded()) < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // a duplicate would show up now
	cancel()
	wg.Wait()
	if got := startBodies(t, fc.recorded()); len(got) != n || len(fc.recorded()) != n {
		t.Fatalf("%d transfers in %d casts, want %d", len(got), len(fc.recorded()), n)
	}
}

func TestPublisherUnroutable(t *testing.T) {
	d, _ := newDB(t)
	ctx := testCtx(t)
	other := newTransfer(9)
	other.SourceRegion = "RegionNowhere"
	msg, err := NewStartMessage(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateTransfer(ctx, other, msg); err != nil {
		t.Fatal(err)
	}
	createTransfer(t, d, 1)
	fc := &fakeCaster{unroutable: map[rpc.Target]bool{"agent.RegionNowhere": true}}
	p := &Publisher{DB: d, Caster: fc, Owner: "api-1", Log: quietLog(), RetryMin: time.Hour}
	// Without a declarer: the unroutable row waits, the other one goes.
	n, err := p.Flush(ctx)
	if n != 2 || !errors.Is(err, rpc.ErrUnroutable) {
		t.Fatalf("flush: %d, %v", n, err)
	}
	if got := fc.recorded(); len(got) != 1 || got[0].target != "agent.RegionOne" {
		t.Fatalf("casts %+v", got)
	}
	// With one: the queue is declared and the message cast.
	other2 := newTransfer(10)
	other2.SourceRegion = "RegionNowhere"
	msg, _ = NewStartMessage(other2)
	if err := d.CreateTransfer(ctx, other2, msg); err != nil {
		t.Fatal(err)
	}
	p.Declarer = fc
	if _, err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := fc.recorded(); len(got) != 2 || got[1].target != "agent.RegionNowhere" || len(fc.declared) != 1 {
		t.Fatalf("casts %+v, declared %v", got, fc.declared)
	}
}

func TestBackoff(t *testing.T) {
	p := &Publisher{RetryMin: time.Second, RetryMax: 10 * time.Second}
	for attempts, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second} {
		if got := p.backoff(attempts); got != want {
			t.Errorf("backoff(%d) = %v, want %v", attempts, got, want)
		}
	}
	if got := (&Publisher{}).backoff(100); got != DefaultRetryMax {
		t.Errorf("default backoff(100) = %v", got)
	}
}

// Published rows older than Retention go; younger ones and unpublished
// ones stay; without Retention nothing goes.
func TestPublisherPurgesPublishedRows(t *testing.T) {
	d, _ := newDB(t)
	ctx := testCtx(t)
	for i := range 3 {
		createTransfer(t, d, i)
	}
	p := &Publisher{DB: d, Caster: &fakeCaster{}, Owner: "api-1", Log: quietLog()}
	if _, err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	createTransfer(t, d, 3) // not published yet
	if n, err := p.Purge(ctx); err != nil || n != 0 {
		t.Fatalf("Purge without Retention = %d, %v", n, err)
	}
	p.Retention = time.Hour
	if n, err := p.Purge(ctx); err != nil || n != 0 {
		t.Fatalf("Purge of rows younger than an hour = %d, %v", n, err)
	}
	time.Sleep(20 * time.Millisecond)
	p.Retention = 10 * time.Millisecond
	if n, err := p.Purge(ctx); err != nil || n != 3 {
		t.Fatalf("Purge = %d, %v; want the 3 published rows", n, err)
	}
	if n := unpublished(t, d); n != 1 {
		t.Errorf("%d unpublished rows left, want 1", n)
	}
}
