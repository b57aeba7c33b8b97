package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/dispatch"
)

// fakeClock is the database's clock in these tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newStore(t *testing.T) (*db.DB, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: t0}
	ctx := context.Background()
	d, err := db.Open(ctx, "sqlite:///"+filepath.Join(t.TempDir(), "ferry.sqlite"), db.WithNowFunc(clk.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return d, clk
}

type fakeVolumes struct {
	mu      sync.Mutex
	deleted bool
	err     error
	asked   int
}

func (f *fakeVolumes) VolumeExists(_ context.Context, region, id string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked++
	return !f.deleted, f.err
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type sent struct {
	key    string
	method string
	body   json.RawMessage
}

// outbox returns the rows written since the last call.
func outbox(t *testing.T, d *db.DB) []sent {
	t.Helper()
	ctx := context.Background()
	msgs, err := d.ClaimOutbox(ctx, "test", time.Hour, 100)
	if err != nil {
		t.Fatal(err)
	}
	var out []sent
	var ids []int64
	for _, m := range msgs {
		var sm struct {
			Method string          `json:"method"`
			Body   json.RawMessage `json:"body"`
		}
		if err := json.Unmarshal([]byte(m.Payload), &sm); err != nil {
			t.Fatal(err)
		}
		out = append(out, sent{m.RoutingKey, sm.Method, sm.Body})
		ids = append(ids, m.ID)
	}
	if err := d.MarkPublished(ctx, ids); err != nil {
		t.Fatal(err)
	}
	return out
}

func starts(t *testing.T, msgs []sent) []rpc.TransferStart {
	t.Helper()
	var out []rpc.TransferStart
	for _, m := range msgs {
		if m.method != rpc.MethodTransferStart {
			continue
		}
		var ts rpc.TransferStart
		if err := json.Unmarshal(m.body, &ts); err != nil {
			t.Fatal(err)
		}
		out = append(out, ts)
	}
	return out
}

func newReplication(t *testing.T, d *db.DB, mut func(*db.Replication)) *db.Replication {
	t.Helper()
	r := &db.Replication{Name: "r", ProjectID: "demo", UserID: "u", SourceRegion: "RegionOne", SourcePool: "volumes",
		SourceImage: "volume-v1", SourceVolumeID: "v1", DestRegion: "RegionTwo", DestPool: "volumes",
		IntervalSeconds: 60, RPOSeconds: 300, KeepLast: 2, BandwidthLimit: 1000, NextRunAt: d.Now()}
	if mut != nil {
		mut(r)
	}
	if err := d.CreateReplication(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return r
}

func getRep(t *testing.T, d *db.DB, id string) *db.Replication {
	t.Helper()
	r, err := d.GetReplication(context.Background(), id, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func tick(t *testing.T, s *Scheduler) TickResult {
	t.Helper()
	res, err := s.RunOnce(context.Background())
	if err != nil {
		t.Fatalf("tick: %v", err)
	}
	return res
}

// complete drives a cycle to completed through the status handler, as the
// agent's reports would: the source snapshot taken at snapAt, and the
// destination's finish removing removed.
func complete(t *testing.T, d *db.DB, h rpc.Handler, id string, snapAt time.Time, removed ...string) {
	t.Helper()
	ctx := context.Background()
	for _, ev := range []rpc.StatusEvent{
		{TransferID: id, Event: rpc.EventAccepted, Epoch: 1},
		{TransferID: id, Event: rpc.EventCompleted, Epoch: 1, BytesDone: 4096, BytesTotal: 1 << 30, Digest: "sha256:00", Mode: "full",
			Snapshot: SnapshotPrefix + id, SnapshotTime: &snapAt, Removed: removed},
	} {
		ev.Host, ev.Region, ev.Time = "agent-a", "RegionOne", time.Now()
		env, err := rpc.NewEnvelope(ctx, rpc.MethodAgentStatus, ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h(ctx, env); err != nil {
			t.Fatalf("%s: %v", ev.Event, err)
		}
	}
	tr, err := d.GetTransfer(ctx, id, db.AllProjectsScope())
	if err != nil || tr.Status != db.StatusCompleted {
		t.Fatalf("cycle %s after completion: %+v %v", id, tr, err)
	}
}

func pointNames(t *testing.T, d *db.DB, id string) []string {
	t.Helper()
	ps, err := d.ListPoints(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func TestSchedulerCycles(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	vols := &fakeVolumes{}
	kicks := 0
	s := &Scheduler{DB: d, Volumes: vols, Notifier: &Notifier{Host: "api-1"}, Tick: time.Second, Owner: "api-1", Log: quiet(),
		Publish: func() { kicks++ }}
	// The finalizer is wired: a cycle must complete without it anyway.
	h := dispatch.StatusHandler(d, quiet(), dispatch.WithFinalizer(func() { t.Error("a cycle was sent to the finalizer") }))
	r := newReplication(t, d, nil)

	// First cycle: an auto transfer into the replica, nothing to retain
	// yet, the limit carried, not ephemeral.
	if res := tick(t, s); res.Started != 1 || kicks != 1 {
		t.Fatalf("first tick: %+v, %d kicks", res, kicks)
	}
	rep := getRep(t, d, r.ID)
	c1 := rep.LastTransferID
	if c1 == "" || !rep.NextRunAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after the first cycle: last %q, next run %s", c1, rep.NextRunAt)
	}
	tr, err := d.GetTransfer(ctx, c1, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	if tr.ReplicationID != r.ID || tr.Mode != db.ModeAuto || tr.SourceVolumeID != "v1" || tr.DestImage != db.ReplicaImagePrefix+r.ID || tr.ProjectID != "demo" {
		t.Errorf("cycle transfer %+v", tr)
	}
	st := starts(t, outbox(t, d))
	if len(st) != 1 || st[0].ReplicationID != r.ID || len(st[0].Retain) != 0 || st[0].BandwidthLimit != 1000 || st[0].Ephemeral ||
		st[0].Destination.Image != db.ReplicaImagePrefix+r.ID {
		t.Fatalf("start messages %+v", st)
	}
	// Not due yet: nothing.
	clk.add(30 * time.Second)
	if res := tick(t, s); res.Started+res.Skipped != 0 {
		t.Errorf("a tick before the interval: %+v", res)
	}
	// Due while the first still runs: skipped and counted.
	clk.add(30 * time.Second)
	if res := tick(t, s); res.Skipped != 1 || res.Started != 0 {
		t.Errorf("tick while the cycle runs: %+v", res)
	}
	if rep := getRep(t, d, r.ID); rep.CyclesSkipped != 1 || !rep.NextRunAt.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("after the skip: skipped %d, next %s", rep.CyclesSkipped, rep.NextRunAt)
	}
	snap1 := t0.Add(time.Second)
	complete(t, d, h, c1, snap1)
	rep = getRep(t, d, r.ID)
	if rep.LastSyncAt == nil || !rep.LastSyncAt.Equal(snap1) || rep.PointsCount != 1 || rep.CyclesCompleted != 1 || rep.BytesLastCycle != 4096 {
		t.Fatalf("after the first completion: %+v", rep)
	}
	// Second and third cycles: the destination is told to keep the
	// retained points (keep_last 2: the new one and the newest before).
	clk.add(time.Minute)
	tick(t, s)
	c2 := getRep(t, d, r.ID).LastTransferID
	if st := starts(t, outbox(t, d)); len(st) != 1 || !slices.Equal(st[0].Retain, []string{SnapshotPrefix + c1}) {
		t.Fatalf("second start %+v", st)
	}
	complete(t, d, h, c2, clk.now())
	clk.add(time.Minute)
	tick(t, s)
	c3 := getRep(t, d, r.ID).LastTransferID
	if st := starts(t, outbox(t, d)); len(st) != 1 || !slices.Equal(st[0].Retain, []string{SnapshotPrefix + c2}) {
		t.Fatalf("third start %+v", st)
	}
	complete(t, d, h, c3, clk.now(), SnapshotPrefix+c1)
	if got := pointNames(t, d, r.ID); !slices.Equal(got, []string{SnapshotPrefix + c3, SnapshotPrefix + c2}) {
		t.Errorf("points after the third cycle: %v", got)
	}
	if ps, _ := d.ListPoints(ctx, r.ID); len(ps) == 0 || ps[0].Size != 1<<30 || ps[0].Bytes != 4096 || ps[0].TransferID != c3 {
		t.Errorf("the newest point %+v: want the image's size 1 GiB and 4096 bytes copied", ps)
	}

	// A drill being created pins its point: kept although retention
	// would drop it.
	if err := d.CreateDrill(ctx, &db.Drill{ReplicationID: r.ID, Point: SnapshotPrefix + c2, Name: "d"}, db.ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	clk.add(time.Minute)
	tick(t, s)
	c4 := getRep(t, d, r.ID).LastTransferID
	if st := starts(t, outbox(t, d)); len(st) != 1 || !slices.Equal(st[0].Retain, []string{SnapshotPrefix + c3, SnapshotPrefix + c2}) {
		t.Fatalf("start with a pinned point %+v", st)
	}

	// The RPO (300 s) passes without a new point: breached once, with a
	// notification, then recovered when a cycle completes.
	clk.add(5 * time.Minute)
	res := tick(t, s)
	if res.Breached != 1 {
		t.Fatalf("tick past the RPO: %+v", res)
	}
	if res := tick(t, s); res.Breached != 0 {
		t.Errorf("the breach was recorded twice: %+v", res)
	}
	notes := notifications(t, outbox(t, d))
	if len(notes) != 1 || notes[0].key != "notifications.warn" || notes[0].EventType != EventRPOBreached || notes[0].Priority != "WARN" ||
		notes[0].PublisherID != "volume-ferry.api-1" || notes[0].Payload["replication_id"] != r.ID {
		t.Fatalf("notifications %+v", notes)
	}
	if getRep(t, d, r.ID).RPOBreachedAt == nil {
		t.Error("rpo_breached_at not set")
	}
	complete(t, d, h, c4, clk.now())
	if res := tick(t, s); res.Recovered != 1 {
		t.Errorf("tick after a completed cycle: %+v", res)
	}
	if notes := notifications(t, outbox(t, d)); len(notes) == 0 || notes[len(notes)-1].EventType != EventRPORecovered {
		t.Errorf("recovery notifications %+v", notes)
	}

	// The source volume is deleted in Cinder: error, replica kept, no
	// more cycles.
	vols.deleted = true
	clk.add(2 * time.Minute)
	if res := tick(t, s); res.Started != 0 {
		t.Errorf("a cycle of a deleted volume: %+v", res)
	}
	rep = getRep(t, d, r.ID)
	if rep.Status != db.ReplicationError || rep.LastError == nil || !strings.Contains(*rep.LastError, "was deleted in Cinder") {
		t.Errorf("after the source's deletion: %s %v", rep.Status, rep.LastError)
	}

	// Deletion: clean-up to both regions, then the rows go.
	if _, err := d.DeleteReplication(ctx, r.ID, db.AllProjectsScope(), false, CleanupMessages); err != nil {
		t.Fatal(err)
	}
	var cleanups []rpc.ReplicationCleanup
	for _, m := range outbox(t, d) {
		if m.method != rpc.MethodReplicationCleanup {
			continue
		}
		var c rpc.ReplicationCleanup
		if err := json.Unmarshal(m.body, &c); err != nil {
			t.Fatal(err)
		}
		if (c.Side == rpc.CleanupSideSource) != (m.key == "agent.RegionOne") {
			t.Errorf("clean-up of the %s side sent to %s", c.Side, m.key)
		}
		cleanups = append(cleanups, c)
	}
	if len(cleanups) != 2 {
		t.Fatalf("clean-ups %+v", cleanups)
	}
	for _, c := range cleanups {
		switch c.Side {
		case rpc.CleanupSideSource:
			if c.Image != "volume-v1" || c.RemoveImage || !slices.Contains(c.Snapshots, SnapshotPrefix+c4) {
				t.Errorf("source clean-up %+v", c)
			}
		case rpc.CleanupSideDestination:
			if c.Image != db.ReplicaImagePrefix+r.ID || !c.RemoveImage || len(c.Snapshots) != 3 {
				t.Errorf("destination clean-up %+v", c)
			}
		}
	}
	if res := tick(t, s); res.Deleted != 1 {
		t.Errorf("tick after the deletion: %+v", res)
	}
	if _, err := d.GetReplication(ctx, r.ID, db.AllProjectsScope()); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("the deleted replication is still there: %v", err)
	}
}

type note struct {
	key         string
	EventType   string         `json:"event_type"`
	Priority    string         `json:"priority"`
	PublisherID string         `json:"publisher_id"`
	MessageID   string         `json:"message_id"`
	Timestamp   string         `json:"timestamp"`
	Payload     map[string]any `json:"payload"`
}

func notifications(t *testing.T, msgs []sent) []note {
	t.Helper()
	var out []note
	for _, m := range msgs {
		if m.method != rpc.MethodNotification {
			continue
		}
		var env map[string]string
		if err := json.Unmarshal(m.body, &env); err != nil || env["oslo.version"] != "2.0" {
			t.Fatalf("notification envelope %s: %v", m.body, err)
		}
		var n note
		if err := json.Unmarshal([]byte(env["oslo.message"]), &n); err != nil || n.MessageID == "" || n.Timestamp == "" {
			t.Fatalf("notification message %q: %v", env["oslo.message"], err)
		}
		n.key = m.key
		out = append(out, n)
	}
	return out
}

func TestSchedulerCatchUpAfterDowntime(t *testing.T) {
	d, clk := newStore(t)
	s := &Scheduler{DB: d, Tick: time.Second, Owner: "api-1", Log: quiet()}
	r := newReplication(t, d, nil)
	h := dispatch.StatusHandler(d, quiet())
	tick(t, s)
	complete(t, d, h, getRep(t, d, r.ID).LastTransferID, clk.now())
	// ferry-api is down for three hours (180 missed cycles).
	clk.add(3 * time.Hour)
	if res := tick(t, s); res.Started != 1 {
		t.Fatalf("first tick after the downtime: %+v", res)
	}
	complete(t, d, h, getRep(t, d, r.ID).LastTransferID, clk.now())
	back := clk.now()
	started := 0
	for range 59 { // the rest of the interval, a tick a second
		clk.add(time.Second)
		started += tick(t, s).Started
	}
	if started != 0 {
		t.Errorf("%d more cycles within the interval after the catch-up: a burst", started)
	}
	next := getRep(t, d, r.ID).NextRunAt
	if want := back.Add(time.Minute + Jitter(r.ID, time.Minute)); next.Sub(want).Abs() > time.Microsecond {
		t.Errorf("next run %s, want %s (now + interval + jitter)", next, want)
	}
}

func TestSchedulerLease(t *testing.T) {
	d, _ := newStore(t)
	a := &Scheduler{DB: d, Tick: time.Second, Owner: "api-1", Log: quiet()}
	b := &Scheduler{DB: d, Tick: time.Second, Owner: "api-2", Log: quiet()}
	for range 3 {
		newReplication(t, d, func(r *db.Replication) { r.SourceImage = "volume-" + time.Now().Format("150405.000000000") })
	}
	ra, rb := tick(t, a), tick(t, b)
	if !ra.Held || rb.Held || ra.Started != 3 || rb.Started != 0 {
		t.Errorf("two schedulers: %+v and %+v", ra, rb)
	}
}

func TestSchedulerCinderUnreachable(t *testing.T) {
	d, _ := newStore(t)
	vols := &fakeVolumes{err: errors.New("connection refused")}
	s := &Scheduler{DB: d, Volumes: vols, Tick: time.Second, Owner: "api-1", Log: quiet()}
	r := newReplication(t, d, nil)
	if res := tick(t, s); res.Started != 1 || vols.asked != 1 {
		t.Errorf("tick with Cinder down: %+v (asked %d)", res, vols.asked)
	}
	if rep := getRep(t, d, r.ID); rep.Status != db.ReplicationActive {
		t.Errorf("status %s", rep.Status)
	}
}

// TestSchedulerFailedOver: a failed-over replication's cycles copy the new
// primary back (source and destination flipped); none starts while a
// failover holds it; its source volume's deletion cannot move it to error
// (the machine has no failed_over → error), so the cycle goes ahead and
// fails on its own.
func TestSchedulerFailedOver(t *testing.T) {
	ctx := context.Background()
	d, clk := newStore(t)
	vols := &fakeVolumes{}
	s := &Scheduler{DB: d, Volumes: vols, Tick: time.Second, Owner: "api-1", Log: quiet()}
	h := dispatch.StatusHandler(d, quiet())
	r := newReplication(t, d, nil)
	if res := tick(t, s); res.Started != 1 {
		t.Fatalf("first tick: %+v", res)
	}
	first := getRep(t, d, r.ID).LastTransferID
	complete(t, d, h, first, clk.now())

	f := &db.Failover{ReplicationID: r.ID, Planned: false}
	if _, err := d.StartFailover(ctx, f, db.AllProjectsScope(), db.ReplicationFailingOver, nil, db.ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	clk.add(2 * time.Minute)
	if res := tick(t, s); res.Started != 0 || res.Skipped != 0 {
		t.Errorf("tick while failing over: %+v", res)
	}
	if _, err := d.FlipReplication(ctx, f.ID, db.Flip{
		To: db.ReplicationFailedOver, KeepPoint: SnapshotPrefix + first, Finish: true,
		Source: db.FlipSide{Region: "RegionTwo", Pool: "volumes", Image: "volume-vx", VolumeID: "vx"},
		Dest:   db.FlipSide{Region: "RegionOne", Pool: "volumes", Image: "volume-v1", VolumeID: "v1"},
	}, db.ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	outbox(t, d)
	vols.deleted = true
	if res := tick(t, s); res.Started != 1 {
		t.Fatalf("tick after the flip: %+v", res)
	}
	rep := getRep(t, d, r.ID)
	if rep.Status != db.ReplicationFailedOver {
		t.Errorf("status %s after the source's deletion", rep.Status)
	}
	st := starts(t, outbox(t, d))
	if len(st) != 1 || st[0].Source.Region != "RegionTwo" || st[0].Source.Image != "volume-vx" ||
		st[0].Destination.Region != "RegionOne" || st[0].Destination.Image != "volume-v1" {
		t.Errorf("reverse cycle starts %+v", st)
	}
}
