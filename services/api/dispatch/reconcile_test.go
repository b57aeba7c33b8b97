package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
)

// liveEnv is a database on a fake clock with a Redispatcher over it.
type liveEnv struct {
	t   *testing.T
	ctx context.Context
	clk *clock
	d   *db.DB
	r   *Redispatcher
}

func newLiveEnv(t *testing.T) *liveEnv {
	ctx := testCtx(t)
	clk := &clock{t: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)}
	d, err := db.Open(ctx, "sqlite:///"+filepath.Join(t.TempDir(), "f.sqlite"), db.WithNowFunc(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return &liveEnv{t: t, ctx: ctx, clk: clk, d: d,
		r: &Redispatcher{DB: d, DownAfter: 15 * time.Second, QueuedAfter: 45 * time.Second, Log: quietLog()}}
}

// beat records a heartbeat of host in region (boot "" is an agent before
// 1.2) received now; it returns whether it was recorded.
func (e *liveEnv) beat(host, region, boot string, seq int64, running ...string) bool {
	e.t.Helper()
	_, rec, err := e.d.RecordHeartbeat(e.ctx, HeartbeatRecord(&rpc.Heartbeat{Binary: db.AgentBinary, Host: host, Region: region,
		BootID: boot, Seq: uint64(seq), Running: running, MaxTransfers: 2}, e.d.Now()))
	if err != nil {
		e.t.Fatal(err)
	}
	return rec
}

// hold creates a transfer and walks it along path, the first step
// naming host as its agent.
func (e *liveEnv) hold(i int, host string, path ...db.Status) *db.Transfer {
	e.t.Helper()
	tr := createTransfer(e.t, e.d, i)
	for j, st := range path {
		opts := db.TransitionOpts{}
		if j == 0 && host != "" {
			opts.Fields.Agent = &host
		}
		var err error
		if tr, err = e.d.TransitionTransfer(e.ctx, tr.ID, st, opts); err != nil {
			e.t.Fatal(err)
		}
	}
	return tr
}

func (e *liveEnv) sweep() int {
	e.t.Helper()
	n, err := e.r.Sweep(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// startsAt returns the transfer ids of the unpublished starts of epoch.
func (e *liveEnv) startsAt(epoch int64) []string {
	e.t.Helper()
	msgs, err := e.d.ClaimOutbox(e.ctx, fmt.Sprintf("test-%d", time.Now().UnixNano()), time.Nanosecond, 1000)
	if err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	for _, m := range msgs {
		var sm storedMessage
		var st rpc.TransferStart
		if json.Unmarshal([]byte(m.Payload), &sm) != nil || json.Unmarshal(sm.Body, &st) != nil {
			e.t.Fatalf("outbox row %s", m.Payload)
		}
		if sm.Method == rpc.MethodTransferStart && st.Epoch == epoch {
			ids = append(ids, st.TransferID)
		}
	}
	if err := e.d.ReleaseOutbox(e.ctx, idsOf(msgs), 0, ""); err != nil {
		e.t.Fatal(err)
	}
	return ids
}

func idsOf(msgs []db.OutboxMessage) []int64 {
	var ids []int64
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	return ids
}

func lastEvent(t *testing.T, d *db.DB, id string) db.TransferEvent {
	t.Helper()
	evs, err := d.ListEvents(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return evs[len(evs)-1]
}

// Reconciliation of an up agent's transfers with its heartbeats. Each
// step is a heartbeat (received at the clock's time) or a change of the
// transfer, then a sweep; the transfer's status after the last sweep is
// checked, and that it did not move before.
func TestReconcileWithHeartbeats(t *testing.T) {
	type step struct {
		at      time.Duration // from the transfer's last change (t0)
		boot    string
		seq     int64
		running bool   // the heartbeat lists the transfer
		host    string // default agent-a
		region  string // default RegionOne
		// progress instead of a heartbeat: the transfer changes (t0 moves).
		progress bool
	}
	for _, tc := range []struct {
		name     string
		path     []db.Status
		before   []step // heartbeats before t0 (at is negative)
		after    []step
		want     db.Status
		wantMsg  string // in the last event
		wantEpoc int64
	}{
		{
			name:   "agent restarted: its first heartbeat settles what the old boot ran",
			path:   []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring},
			before: []step{{at: -5 * time.Second, boot: "b1", seq: 1}},
			after: []step{{at: 2 * time.Second, boot: "b1", seq: 2, running: true},
				{at: 5 * time.Second, boot: "b2", seq: 1}},
			want: db.StatusQueued, wantMsg: "the agent restarted", wantEpoc: 2,
		},
		{
			name:   "agent restarted after the transfer's last progress: its second heartbeat",
			path:   []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring},
			before: []step{{at: -5 * time.Second, boot: "b1", seq: 1}},
			after: []step{{at: 2 * time.Second, boot: "b1", seq: 2, running: true}, {at: 3 * time.Second, progress: true},
				{at: 5 * time.Second, boot: "b2", seq: 1}, {at: 8 * time.Second, boot: "b2", seq: 2}},
			want: db.StatusQueued, wantMsg: "no longer runs it", wantEpoc: 2,
		},
		{
			name:   "missing from two heartbeats of the same boot",
			path:   []db.Status{db.StatusAccepted},
			before: []step{{at: -2 * time.Second, boot: "b1", seq: 1}},
			after:  []step{{at: 1 * time.Second, boot: "b1", seq: 2}, {at: 4 * time.Second, boot: "b1", seq: 3}},
			want:   db.StatusQueued, wantMsg: "no longer runs it", wantEpoc: 2,
		},
		{
			name: "a heartbeat composed before the accept, received after it, then one that lists it",
			path: []db.Status{db.StatusAccepted},
			// received 100 ms after the accept, without it.
			before: []step{{at: -3 * time.Second, boot: "b1", seq: 1}},
			after:  []step{{at: 100 * time.Millisecond, boot: "b1", seq: 2}, {at: 3 * time.Second, boot: "b1", seq: 3, running: true}},
			want:   db.StatusAccepted, wantEpoc: 1,
		},
		{
			name:   "one heartbeat without it is not enough",
			path:   []db.Status{db.StatusAccepted, db.StatusPreparing},
			before: []step{{at: -3 * time.Second, boot: "b1", seq: 1, running: true}},
			after:  []step{{at: 1 * time.Second, boot: "b1", seq: 2, running: true}, {at: 4 * time.Second, boot: "b1", seq: 3}},
			want:   db.StatusPreparing, wantEpoc: 1,
		},
		{
			name:   "progress after the older heartbeat: wait for the next",
			path:   []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring},
			before: []step{{at: -3 * time.Second, boot: "b1", seq: 1, running: true}},
			after: []step{{at: 1 * time.Second, boot: "b1", seq: 2}, {at: 2 * time.Second, progress: true},
				{at: 4 * time.Second, boot: "b1", seq: 3}},
			want: db.StatusTransferring, wantEpoc: 1,
		},
		{
			name:   "a redelivered older heartbeat changes nothing",
			path:   []db.Status{db.StatusAccepted},
			before: []step{{at: -3 * time.Second, boot: "b1", seq: 5, running: true}},
			after:  []step{{at: 1 * time.Second, boot: "b1", seq: 6, running: true}, {at: 2 * time.Second, boot: "b1", seq: 4}, {at: 3 * time.Second, boot: "b1", seq: 3}},
			want:   db.StatusAccepted, wantEpoc: 1,
		},
		{
			name:   "cancel the agent no longer runs: cancelled",
			path:   []db.Status{db.StatusAccepted, db.StatusCancelling},
			before: []step{{at: -3 * time.Second, boot: "b1", seq: 1, running: true}},
			after:  []step{{at: 1 * time.Second, boot: "b1", seq: 2}, {at: 4 * time.Second, boot: "b1", seq: 3}},
			want:   db.StatusCancelled, wantMsg: "no longer runs it", wantEpoc: 1,
		},
		{
			name:   "an agent before 1.2 (no boot id) is never reconciled",
			path:   []db.Status{db.StatusAccepted},
			before: []step{{at: -3 * time.Second}},
			after:  []step{{at: 1 * time.Second}, {at: 4 * time.Second}, {at: 7 * time.Second}},
			want:   db.StatusAccepted, wantEpoc: 1,
		},
		{
			name:   "the same host name in another region",
			path:   []db.Status{db.StatusAccepted},
			before: []step{{at: -3 * time.Second, boot: "x1", seq: 1, region: "RegionTwo"}},
			after:  []step{{at: 1 * time.Second, boot: "x1", seq: 2, region: "RegionTwo"}, {at: 4 * time.Second, boot: "x1", seq: 3, region: "RegionTwo"}},
			want:   db.StatusAccepted, wantEpoc: 1,
		},
		{
			name:   "verifying is the API's: left alone while the agent is up",
			path:   []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying},
			before: []step{{at: -3 * time.Second, boot: "b1", seq: 1}},
			after:  []step{{at: 1 * time.Second, boot: "b1", seq: 2}, {at: 4 * time.Second, boot: "b1", seq: 3}},
			want:   db.StatusVerifying, wantEpoc: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLiveEnv(t)
			tr := createTransfer(t, e.d, 1)
			t0 := e.clk.Now()
			doStep := func(s step) {
				host, region := "agent-a", "RegionOne"
				if s.host != "" {
					host = s.host
				}
				if s.region != "" {
					region = s.region
				}
				if s.progress {
					if err := e.d.UpdateProgress(e.ctx, tr.ID, 10, 100, 1); err != nil {
						t.Fatal(err)
					}
					return
				}
				var running []string
				if s.running {
					running = []string{tr.ID}
				}
				e.beat(host, region, s.boot, s.seq, running...)
			}
			for _, s := range tc.before {
				e.clk.t = t0.Add(s.at)
				doStep(s)
			}
			e.clk.t = t0
			for j, st := range tc.path {
				opts := db.TransitionOpts{}
				if j == 0 {
					h := "agent-a"
					opts.Fields.Agent = &h
				}
				if _, err := e.d.TransitionTransfer(e.ctx, tr.ID, st, opts); err != nil {
					t.Fatal(err)
				}
			}
			held := tc.path[len(tc.path)-1]
			for i, s := range tc.after {
				e.clk.t = t0.Add(s.at)
				doStep(s)
				e.sweep()
				if i < len(tc.after)-1 {
					if got := get(t, e.d, tr.ID); got.Status != held {
						t.Fatalf("after step %d (%+v): %s, want still %s", i, s, got.Status, held)
					}
				}
			}
			got := get(t, e.d, tr.ID)
			if got.Status != tc.want || got.Epoch != tc.wantEpoc {
				t.Fatalf("status %s epoch %d, want %s epoch %d", got.Status, got.Epoch, tc.want, tc.wantEpoc)
			}
			if tc.wantMsg != "" && !strings.Contains(lastEvent(t, e.d, tr.ID).Message, tc.wantMsg) {
				t.Errorf("last event %q does not say %q", lastEvent(t, e.d, tr.ID).Message, tc.wantMsg)
			}
			if tc.want == db.StatusQueued {
				if got.Agent != nil {
					t.Errorf("re-dispatched, still held by %v", *got.Agent)
				}
				if starts := e.startsAt(got.Epoch); len(starts) != 1 || starts[0] != tr.ID {
					t.Errorf("new starts %v, want one for %s", starts, tr.ID)
				}
			}
		})
	}
}

// A cancel of a transfer no agent holds ends cancelled; one held by a
// live agent that lists it waits for the agent.
func TestCancelWithoutAgent(t *testing.T) {
	e := newLiveEnv(t)
	e.beat("agent-a", "RegionOne", "b1", 1)
	orphan := e.hold(1, "", db.StatusCancelling) // queued → cancelling, no agent
	held := e.hold(2, "agent-a", db.StatusAccepted, db.StatusCancelling)
	e.clk.Add(time.Second)
	e.beat("agent-a", "RegionOne", "b1", 2, held.ID)
	if n := e.sweep(); n != 1 {
		t.Errorf("sweep moved %d, want 1", n)
	}
	if got := get(t, e.d, orphan.ID); got.Status != db.StatusCancelled || !strings.Contains(lastEvent(t, e.d, orphan.ID).Message, "no agent holds") {
		t.Errorf("agentless cancel: %s (%q)", got.Status, lastEvent(t, e.d, orphan.ID).Message)
	}
	if got := get(t, e.d, held.ID); got.Status != db.StatusCancelling {
		t.Errorf("a cancel the agent still runs: %s", got.Status)
	}
}

// A start left in queued is re-published while its region has a free
// agent, at most MaxRepublish times, then the transfer fails; a busy
// region, an agent that runs the transfer (at an older epoch) or agents
// before 1.2 leave it alone.
func TestRepublishLostStart(t *testing.T) {
	t.Run("re-published, bounded, then error", func(t *testing.T) {
		e := newLiveEnv(t)
		tr := createTransfer(t, e.d, 1)
		e.startsAt(1) // the creation's start was published (and lost)
		seq := int64(0)
		// Heartbeats every 3 s for d; a sweep after each.
		run := func(d time.Duration) int {
			moved := 0
			for end := e.clk.Now().Add(d); e.clk.Now().Before(end); {
				e.clk.Add(3 * time.Second)
				seq++
				e.beat("agent-a", "RegionOne", "b1", seq)
				moved += e.sweep()
			}
			return moved
		}
		if n := run(42 * time.Second); n != 0 {
			t.Fatalf("re-published before QueuedAfter: %d", n)
		}
		if n := run(6 * time.Second); n != 1 {
			t.Fatalf("after QueuedAfter: moved %d, want 1", n)
		}
		got := get(t, e.d, tr.ID)
		ev := lastEvent(t, e.d, tr.ID)
		if got.Status != db.StatusQueued || got.Epoch != 2 || ev.Kind != db.EventRequeue || !strings.Contains(ev.Message, "(1 of 3)") {
			t.Fatalf("after the first re-publication: %s epoch %d, event %+v", got.Status, got.Epoch, ev)
		}
		if starts := e.startsAt(2); len(starts) != 1 || starts[0] != tr.ID {
			t.Errorf("starts at epoch 2: %v", starts)
		}
		// Twice more, each after another QueuedAfter; then error.
		if n := run(2 * 48 * time.Second); n != 2 {
			t.Fatalf("two more periods: moved %d, want 2", n)
		}
		if got := get(t, e.d, tr.ID); got.Epoch != 4 || got.Status != db.StatusQueued {
			t.Fatalf("after three: %s epoch %d", got.Status, got.Epoch)
		}
		if n := run(48 * time.Second); n != 1 {
			t.Fatalf("fourth period: moved %d, want 1", n)
		}
		got = get(t, e.d, tr.ID)
		if got.Status != db.StatusError || got.Error == nil || !strings.Contains(*got.Error, "after 3 re-published starts") {
			t.Fatalf("after the bound: %s %v", got.Status, got.Error)
		}
		// A retry starts the count again.
		if _, err := e.d.TransitionTransfer(e.ctx, tr.ID, db.StatusQueued, db.TransitionOpts{Message: "retry"}); err != nil {
			t.Fatal(err)
		}
		if n := run(48 * time.Second); n != 1 || !strings.Contains(lastEvent(t, e.d, tr.ID).Message, "(1 of 3)") {
			t.Errorf("after a retry: moved %d, %q", n, lastEvent(t, e.d, tr.ID).Message)
		}
	})
	for _, tc := range []struct {
		name  string
		setup func(e *liveEnv, tr *db.Transfer)
		beat  func(e *liveEnv, tr *db.Transfer, seq int64)
	}{
		{"region busy", nil, func(e *liveEnv, tr *db.Transfer, seq int64) {
			e.beat("agent-a", "RegionOne", "b1", seq, "x", "y") // capacity 2
		}},
		{"an agent runs it at an older epoch", nil, func(e *liveEnv, tr *db.Transfer, seq int64) {
			e.beat("agent-a", "RegionOne", "b1", seq, tr.ID)
		}},
		{"agents before 1.2", nil, func(e *liveEnv, tr *db.Transfer, seq int64) {
			e.beat("agent-a", "RegionOne", "", 0)
		}},
		{"only another region's agent is free", nil, func(e *liveEnv, tr *db.Transfer, seq int64) {
			e.beat("agent-z", "RegionTwo", "z1", seq)
		}},
		{"the free agent is disabled", func(e *liveEnv, tr *db.Transfer) {
			e.beat("agent-a", "RegionOne", "b0", 1)
			if err := e.d.SetServiceDisabled(e.ctx, db.AgentBinary, "agent-a", true); err != nil {
				e.t.Fatal(err)
			}
		}, func(e *liveEnv, tr *db.Transfer, seq int64) {
			e.beat("agent-a", "RegionOne", "b1", seq)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLiveEnv(t)
			tr := createTransfer(t, e.d, 1)
			if tc.setup != nil {
				tc.setup(e, tr)
			}
			for seq := int64(1); seq <= 60; seq++ {
				e.clk.Add(3 * time.Second)
				tc.beat(e, tr, seq)
				if n := e.sweep(); n != 0 {
					t.Fatalf("moved %d at +%ds", n, seq*3)
				}
			}
			if got := get(t, e.d, tr.ID); got.Status != db.StatusQueued || got.Epoch != 1 {
				t.Errorf("%s epoch %d", got.Status, got.Epoch)
			}
		})
	}
	t.Run("at most RepublishPerSweep per sweep", func(t *testing.T) {
		e := newLiveEnv(t)
		e.r.RepublishPerSweep = 3
		for i := range 5 {
			createTransfer(t, e.d, i)
		}
		e.clk.Add(50 * time.Second)
		e.beat("agent-a", "RegionOne", "b1", 1)
		e.clk.Add(3 * time.Second)
		e.beat("agent-a", "RegionOne", "b1", 2)
		if n := e.sweep(); n != 3 {
			t.Errorf("first sweep moved %d, want 3", n)
		}
		if n := e.sweep(); n != 2 {
			t.Errorf("second sweep moved %d, want the 2 left", n)
		}
	})
}

type fakeProber struct {
	state DestinationState
	err   error
	asked []string
}

func (f *fakeProber) Probe(_ context.Context, t *db.Transfer) (DestinationState, error) {
	f.asked = append(f.asked, t.ID)
	return f.state, f.err
}

// A transfer whose agent is gone is first looked for at the destination:
// a completed copy (its report lost) completes, or goes to finalizing for
// a Cinder copy; otherwise, or when the destination cannot say, it is
// re-dispatched or ends as before.
func TestDestinationProbeRecoversLostReport(t *testing.T) {
	complete := DestinationState{Complete: true, Snapshot: "ferry-x", Digest: "blake3-sha256:ab", Mode: "full", BytesDone: 4096}
	for _, tc := range []struct {
		name     string
		prober   *fakeProber
		volume   bool
		path     []db.Status
		want     db.Status
		wantNote bool
	}{
		{"complete at the destination", &fakeProber{state: complete}, false,
			[]db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring}, db.StatusCompleted, true},
		{"a verifying volume copy goes to finalizing", &fakeProber{state: complete}, true,
			[]db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying}, db.StatusFinalizing, true},
		{"not complete: re-dispatched", &fakeProber{state: DestinationState{}}, false,
			[]db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring}, db.StatusQueued, false},
		{"destination cannot say: re-dispatched", &fakeProber{err: errors.New("no reply")}, false,
			[]db.Status{db.StatusAccepted}, db.StatusQueued, false},
		{"verifying, not complete: error", &fakeProber{}, false,
			[]db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying}, db.StatusError, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLiveEnv(t)
			e.r.Prober = tc.prober
			finalized := false
			e.r.Finalize = func() { finalized = true }
			e.beat("agent-a", "RegionOne", "b1", 1)
			tr := newTransfer(1)
			if tc.volume {
				tr.SourceVolumeID = "vol-1"
			}
			msg, _ := NewStartMessage(tr)
			if err := e.d.CreateTransfer(e.ctx, tr, msg); err != nil {
				t.Fatal(err)
			}
			for j, st := range tc.path {
				opts := db.TransitionOpts{}
				if j == 0 {
					h := "agent-a"
					opts.Fields.Agent = &h
				}
				if _, err := e.d.TransitionTransfer(e.ctx, tr.ID, st, opts); err != nil {
					t.Fatal(err)
				}
			}
			e.clk.Add(time.Minute) // agent-a is down
			if n := e.sweep(); n != 1 {
				t.Fatalf("sweep moved %d", n)
			}
			got := get(t, e.d, tr.ID)
			if got.Status != tc.want {
				t.Fatalf("status %s, want %s", got.Status, tc.want)
			}
			if len(tc.prober.asked) != 1 {
				t.Errorf("prober asked %v", tc.prober.asked)
			}
			if tc.wantNote {
				if got.Digest != complete.Digest || got.BytesTotal != 4096 {
					t.Errorf("completed without the destination's result: %+v", got)
				}
				if tc.volume != finalized {
					t.Errorf("finalizer kicked: %t", finalized)
				}
				found := false
				evs, _ := e.d.ListEvents(e.ctx, tr.ID)
				for _, ev := range evs {
					found = found || (ev.Kind == db.EventNote && strings.Contains(ev.Message, "holds the completed copy"))
				}
				if !found {
					t.Errorf("no note says why: %+v", evs)
				}
			}
			// The source agent missed the completion: it is told to
			// remove what the completion superseded there.
			e.clk.Add(2 * time.Hour) // claims of earlier drains expire
			msgs, err := e.d.ClaimOutbox(e.ctx, "test", time.Minute, 100)
			if err != nil {
				t.Fatal(err)
			}
			var settles []rpc.TransferSettle
			for _, m := range msgs {
				var sm storedMessage
				if err := json.Unmarshal([]byte(m.Payload), &sm); err != nil {
					t.Fatal(err)
				}
				if sm.Method != rpc.MethodTransferSettle {
					continue
				}
				var body rpc.TransferSettle
				if err := json.Unmarshal(sm.Body, &body); err != nil {
					t.Fatal(err)
				}
				if m.RoutingKey != string(rpc.AgentTarget(tr.SourceRegion)) {
					t.Errorf("settle sent to %s", m.RoutingKey)
				}
				settles = append(settles, body)
			}
			switch {
			case !tc.wantNote && len(settles) > 0:
				t.Errorf("settle sent for a transfer not completed: %+v", settles)
			case tc.wantNote && (len(settles) != 1 || settles[0].TransferID != tr.ID || settles[0].Source.Image != tr.SourceImage ||
				settles[0].Source.Region != tr.SourceRegion || settles[0].Ephemeral != tc.volume):
				t.Errorf("settles %+v, want one of %s (ephemeral %t)", settles, tr.ID, tc.volume)
			}
		})
	}
}

// The status consumer records heartbeats with the clock of their arrival,
// ignores stale ones, and kicks the reconciliation for agents since 1.2.
func TestHeartbeatHandlerRecordsAndKicks(t *testing.T) {
	e := newLiveEnv(t)
	kicks := 0
	h := StatusHandler(e.d, quietLog(), WithHeartbeatKick(func() { kicks++ }))
	send := func(hb rpc.Heartbeat) {
		t.Helper()
		env, err := rpc.NewEnvelope(e.ctx, rpc.MethodAgentHeartbeat, hb)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h(e.ctx, env); err != nil {
			t.Fatal(err)
		}
	}
	send(rpc.Heartbeat{Host: "agent-a", Region: "RegionOne", BootID: "b1", Seq: 1, Running: []string{"t1"}, MaxTransfers: 4,
		CephHealth: &rpc.CephHealth{Status: "HEALTH_WARN", Checks: []rpc.HealthCheck{{Code: "OSD_NEARFULL", Severity: "HEALTH_WARN", Message: "1 nearfull osd(s)"}}, AgeSeconds: 12.5}})
	send(rpc.Heartbeat{Host: "agent-a", Region: "RegionOne", BootID: "b1", Seq: 1}) // redelivered
	send(rpc.Heartbeat{Host: "agent-old", Region: "RegionOne"})                     // before 1.2
	if kicks != 1 {
		t.Errorf("kicked %d times, want 1", kicks)
	}
	svcs, err := e.d.ListServices(e.ctx)
	if err != nil || len(svcs) != 2 {
		t.Fatalf("services %+v, %v", svcs, err)
	}
	s := svcs[0]
	hl := s.Health()
	if s.Binary != db.AgentBinary || s.Capacity != 4 || len(s.RunningIDs()) != 1 || hl == nil || hl.Status != "HEALTH_WARN" ||
		len(hl.Checks) != 1 || !hl.CheckedAt.Equal(e.clk.Now().Add(-12500*time.Millisecond)) {
		t.Errorf("service %+v health %+v", s, hl)
	}
}

// Run sweeps at once, then when kicked (not only every Interval), and
// stops with its context.
func TestRunSweepsWhenKicked(t *testing.T) {
	e := newLiveEnv(t)
	e.r.Interval = time.Hour
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.r.Run(ctx) }()
	first := e.hold(1, "", db.StatusCancelling)
	e.r.Kick() // the first sweep may have run before the transfer existed
	deadline := time.Now().Add(10 * time.Second)
	for get(t, e.d, first.ID).Status != db.StatusCancelled {
		if time.Now().After(deadline) {
			t.Fatal("a kick did not sweep")
		}
		time.Sleep(10 * time.Millisecond)
	}
	second := e.hold(2, "", db.StatusCancelling)
	e.r.Kick()
	e.r.Kick() // coalesced, never blocks
	for get(t, e.d, second.ID).Status != db.StatusCancelled {
		if time.Now().After(deadline) {
			t.Fatal("a second kick did not sweep")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// A sweep sees every held transfer, however many pages they fill.
func TestSweepPagesThroughHeldTransfers(t *testing.T) {
	e := newLiveEnv(t)
	e.r.pageSize = 2
	e.beat("agent-a", "RegionOne", "b1", 1)
	var ids []string
	for i := range 5 {
		ids = append(ids, e.hold(i, "agent-a", db.StatusAccepted).ID)
	}
	e.hold(9, "", db.StatusCancelling)
	e.clk.Add(time.Minute) // agent-a down
	if n := e.sweep(); n != 6 {
		t.Errorf("sweep moved %d, want 6", n)
	}
	for _, id := range ids {
		if got := get(t, e.d, id); got.Status != db.StatusQueued {
			t.Errorf("%s: %s", id, got.Status)
		}
	}
}

type fakeCaller struct {
	target rpc.Target
	method string
	body   any
	reply  rpc.TransferQueryReply
	err    error
}

func (f *fakeCaller) Call(_ context.Context, target rpc.Target, method string, body, reply any) error {
	f.target, f.method, f.body = target, method, body
	if f.err != nil {
		return f.err
	}
	*reply.(*rpc.TransferQueryReply) = f.reply
	return nil
}

// RPCProber asks the destination region's agents with transfer.query and
// maps the reply; a transfer without a destination image is not asked.
func TestRPCProber(t *testing.T) {
	tr := &db.Transfer{ID: "t1", Epoch: 3, DestRegion: "RegionTwo", DestPool: "volumes", DestImage: "img"}
	at := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	c := &fakeCaller{reply: rpc.TransferQueryReply{Complete: true, Exists: true, Snapshot: "ferry-t1", Digest: "d", Mode: "full", BytesDone: 9,
		Removed: []string{"ferry-t0"}, SnapshotTime: &at}}
	st, err := RPCProber{Caller: c}.Probe(testCtx(t), tr)
	if err != nil {
		t.Fatal(err)
	}
	want := DestinationState{Complete: true, Snapshot: "ferry-t1", Digest: "d", Mode: "full", BytesDone: 9, Removed: []string{"ferry-t0"}, SnapshotTime: &at}
	if !reflect.DeepEqual(st, want) || c.target != rpc.AgentTarget("RegionTwo") || c.method != rpc.MethodTransferQuery {
		t.Errorf("state %+v to %s %s", st, c.target, c.method)
	}
	if q := c.body.(rpc.TransferQuery); q != (rpc.TransferQuery{TransferID: "t1", Epoch: 3, Pool: "volumes", Image: "img"}) {
		t.Errorf("query %+v", q)
	}
	c.err = errors.New("unknown method")
	if _, err := (RPCProber{Caller: c}).Probe(testCtx(t), tr); err == nil {
		t.Error("a failed call is no answer")
	}
	if _, err := (RPCProber{Caller: c}).Probe(testCtx(t), &db.Transfer{ID: "t2", DestRegion: "RegionTwo"}); err == nil {
		t.Error("probed a transfer without a destination image")
	}
}

// A replication cycle whose agent is gone and whose completion the
// destination holds completes (never via the finalizer, though it names a
// volume) with the point's source time and the points its finish removed,
// as the lost report would have; its end is announced once.
func TestDestinationProbeCompletesACycle(t *testing.T) {
	e := newLiveEnv(t)
	var ended []string
	e.r.EndNotify = func(tr *db.Transfer) (*db.OutboxMessage, error) {
		ended = append(ended, string(tr.Status))
		return nil, nil
	}
	e.r.Finalize = func() { t.Error("the finalizer was kicked for a cycle") }
	e.beat("agent-a", "RegionOne", "b1", 1)
	r := &db.Replication{ProjectID: "p1", SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: "volume-v1", SourceVolumeID: "v1",
		DestRegion: "RegionTwo", DestPool: "volumes", IntervalSeconds: 60, RPOSeconds: 600, KeepLast: 1}
	if err := e.d.CreateReplication(e.ctx, r); err != nil {
		t.Fatal(err)
	}
	spec := CycleSpec{Retain: []string{}}.Marshal()
	now := e.d.Now()
	tr := &db.Transfer{ProjectID: "p1", Mode: db.ModeAuto, SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: "volume-v1",
		SourceVolumeID: "v1", DestRegion: "RegionTwo", DestPool: "volumes", DestImage: r.DestImage, CinderSpec: spec}
	st, _, err := e.d.StartCycle(e.ctx, r.ID, now, now.Add(time.Minute), tr, func(t *db.Transfer) (*db.OutboxMessage, error) { return NewStartMessage(t) })
	if err != nil || st == nil {
		t.Fatalf("start cycle: %v %v", st, err)
	}
	for j, s := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring} {
		opts := db.TransitionOpts{}
		if j == 0 {
			h := "agent-a"
			opts.Fields.Agent = &h
		}
		if _, err := e.d.TransitionTransfer(e.ctx, st.ID, s, opts); err != nil {
			t.Fatal(err)
		}
	}
	snapAt := now.Add(-3 * time.Second)
	e.r.Prober = &fakeProber{state: DestinationState{Complete: true, Snapshot: "ferry-" + st.ID, Digest: "blake3-sha256:ab", Mode: "full",
		BytesDone: 4096, SnapshotTime: &snapAt}}
	e.clk.Add(time.Minute) // agent-a is down
	if n := e.sweep(); n != 1 {
		t.Fatalf("sweep moved %d", n)
	}
	if got := get(t, e.d, st.ID); got.Status != db.StatusCompleted {
		t.Fatalf("cycle %s after the probe", got.Status)
	}
	ps, err := e.d.ListPoints(e.ctx, r.ID)
	if err != nil || len(ps) != 1 || ps[0].Name != "ferry-"+st.ID || !ps[0].CreatedAt.Equal(snapAt) {
		t.Errorf("points %+v %v, want one taken at %s", ps, err, snapAt)
	}
	if len(ended) != 1 || ended[0] != "completed" {
		t.Errorf("transfer.end built for %v", ended)
	}
}
