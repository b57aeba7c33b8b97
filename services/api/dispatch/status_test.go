package dispatch

import (
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
)

func send(t *testing.T, h rpc.Handler, method string, body any) error {
	t.Helper()
	return sendAs(t, h, "", method, body)
}

// sendAs handles a message published by broker user user.
func sendAs(t *testing.T, h rpc.Handler, user, method string, body any) error {
	t.Helper()
	ctx := rpc.WithSender(rpc.WithRequestID(testCtx(t), "req-agent"), user)
	env, err := rpc.NewEnvelope(ctx, method, body)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h(ctx, env)
	return err
}

func report(t *testing.T, h rpc.Handler, ev rpc.StatusEvent) {
	t.Helper()
	if ev.Host == "" {
		ev.Host, ev.Region = "agent-a", "RegionOne"
	}
	ev.Time = time.Now().UTC()
	if err := send(t, h, rpc.MethodAgentStatus, ev); err != nil {
		t.Fatalf("report %s: %v", ev.Event, err)
	}
}

func get(t *testing.T, d *db.DB, id string) *db.Transfer {
	t.Helper()
	tr, err := d.GetTransfer(testCtx(t), id, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func transitions(t *testing.T, d *db.DB, id string) []string {
	t.Helper()
	evs, err := d.ListEvents(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		out = append(out, string(e.FromStatus)+">"+string(e.ToStatus))
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStatusHappyPath(t *testing.T) {
	d, _ := newDB(t)
	h := StatusHandler(d, quietLog())
	tr := createTransfer(t, d, 1)
	id := tr.ID

	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventAccepted, Epoch: 1})
	got := get(t, d, id)
	if got.Status != db.StatusAccepted || got.Agent == nil || *got.Agent != "agent-a" || got.StartedAt == nil {
		t.Fatalf("after accepted: %s agent=%v", got.Status, got.Agent)
	}
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventProgress, Epoch: 1, BytesDone: 100, BytesTotal: 1000, Rate: 50})
	got = get(t, d, id)
	if got.Status != db.StatusTransferring || got.BytesTransferred != 100 || got.BytesTotal != 1000 || got.RateBytesPerSecond != 50 {
		t.Fatalf("after progress: %+v", got)
	}
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventProgress, Epoch: 1, BytesDone: 600, Rate: 70})
	got = get(t, d, id)
	if got.Status != db.StatusTransferring || got.BytesTransferred != 600 || got.BytesTotal != 1000 {
		t.Fatalf("after second progress: %+v", got)
	}
	// The report's total is the image's size; the transfer's is what it copied.
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventCompleted, Epoch: 1, BytesDone: 1000, BytesTotal: 4096,
		Digest: "blake3:abcd", Mode: "full", Snapshot: "ferry-" + id})
	got = get(t, d, id)
	if got.Status != db.StatusCompleted || got.BytesTransferred != 1000 || got.BytesTotal != 1000 || got.Digest != "blake3:abcd" ||
		got.Mode != db.ModeFull || got.DestSnapshot != "ferry-"+id || got.FinishedAt == nil || got.RateBytesPerSecond != 0 {
		t.Fatalf("after completed: %+v", got)
	}
	want := []string{">queued", "queued>accepted", "accepted>preparing", "preparing>transferring",
		"transferring>verifying", "verifying>completed"}
	if ev := transitions(t, d, id); !equal(ev, want) {
		t.Fatalf("events %v, want %v", ev, want)
	}

	// Redelivered reports change nothing and are acked.
	for _, e := range []string{rpc.EventCompleted, rpc.EventAccepted, rpc.EventProgress, rpc.EventError, rpc.EventCancelled} {
		report(t, h, rpc.StatusEvent{TransferID: id, Event: e, Epoch: 1, BytesDone: 5, Digest: "blake3:ffff", Error: "late"})
	}
	got = get(t, d, id)
	if got.Status != db.StatusCompleted || got.BytesTransferred != 1000 || got.Digest != "blake3:abcd" || got.Error != nil {
		t.Fatalf("after redeliveries: %+v", got)
	}
	if ev := transitions(t, d, id); !equal(ev, want) {
		t.Fatalf("events after redeliveries %v, want %v", ev, want)
	}
}

func TestStatusCompletedWithoutEarlierReports(t *testing.T) {
	d, _ := newDB(t)
	h := StatusHandler(d, quietLog())
	id := createTransfer(t, d, 1).ID
	// accepted and progress lost or reordered: completed walks the whole path.
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventCompleted, Epoch: 1, BytesDone: 10, Digest: "blake3:01"})
	got := get(t, d, id)
	if got.Status != db.StatusCompleted || got.BytesTotal != 10 || got.BytesTransferred != 10 {
		t.Fatalf("%+v", got)
	}
	// A late accepted is dropped.
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventAccepted, Epoch: 1})
	if n := len(transitions(t, d, id)); n != 6 {
		t.Fatalf("%d events, want 6", n)
	}
}

func TestStatusError(t *testing.T) {
	d, _ := newDB(t)
	h := StatusHandler(d, quietLog())
	id := createTransfer(t, d, 1).ID
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventAccepted, Epoch: 1})
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventProgress, Epoch: 1, BytesDone: 10})
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventError, Epoch: 1, Error: "rbd: image not found"})
	got := get(t, d, id)
	if got.Status != db.StatusError || got.Error == nil || *got.Error != "rbd: image not found" || got.FinishedAt == nil {
		t.Fatalf("%+v", got)
	}
	// Redelivered error, late progress and completed are dropped.
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventError, Epoch: 1, Error: "again"})
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventProgress, Epoch: 1, BytesDone: 20})
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventCompleted, Epoch: 1})
	got = get(t, d, id)
	if got.Status != db.StatusError || *got.Error != "rbd: image not found" || got.BytesTransferred != 10 {
		t.Fatalf("after redeliveries: %+v", got)
	}
	ev := transitions(t, d, id)
	if ev[len(ev)-1] != "transferring>error" || len(ev) != 5 {
		t.Fatalf("events %v", ev)
	}
}

func TestStatusStaleEpoch(t *testing.T) {
	d, _ := newDB(t)
	h := StatusHandler(d, quietLog())
	ctx := testCtx(t)
	id := createTransfer(t, d, 1).ID
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventAccepted, Epoch: 1})
	// Re-dispatch: back to queued, epoch 2.
	if _, err := d.TransitionTransfer(ctx, id, db.StatusQueued, db.TransitionOpts{Message: "agent lost"}); err != nil {
		t.Fatal(err)
	}
	before := transitions(t, d, id)
	for _, e := range []string{rpc.EventAccepted, rpc.EventProgress, rpc.EventCompleted, rpc.EventError} {
		report(t, h, rpc.StatusEvent{TransferID: id, Event: e, Epoch: 1, BytesDone: 99, Error: "old"})
	}
	got := get(t, d, id)
	if got.Status != db.StatusQueued || got.Epoch != 2 || got.BytesTransferred != 0 || got.Agent != nil {
		t.Fatalf("stale reports applied: %+v", got)
	}
	if ev := transitions(t, d, id); !equal(ev, before) {
		t.Fatalf("events %v, want %v", ev, before)
	}
	// The new epoch's reports apply.
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventAccepted, Epoch: 2, Region: "RegionOne", Host: "agent-b"})
	if got := get(t, d, id); got.Status != db.StatusAccepted || *got.Agent != "agent-b" {
		t.Fatalf("%+v", got)
	}
}

func TestStatusCancelled(t *testing.T) {
	d, _ := newDB(t)
	h := StatusHandler(d, quietLog())
	ctx := testCtx(t)

	// A cancel the user asked for.
	id := createTransfer(t, d, 1).ID
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventProgress, Epoch: 1, BytesDone: 1})
	if _, err := d.TransitionTransfer(ctx, id, db.StatusCancelling, db.TransitionOpts{}); err != nil {
		t.Fatal(err)
	}
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventProgress, Epoch: 1, BytesDone: 2})
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventCancelled, Epoch: 1})
	if got := get(t, d, id); got.Status != db.StatusCancelled || got.BytesTransferred != 1 {
		t.Fatalf("%+v", got)
	}

	// An agent stopping a transfer on its own.
	id2 := createTransfer(t, d, 2).ID
	report(t, h, rpc.StatusEvent{TransferID: id2, Event: rpc.EventAccepted, Epoch: 1})
	report(t, h, rpc.StatusEvent{TransferID: id2, Event: rpc.EventCancelled, Epoch: 1})
	ev := transitions(t, d, id2)
	if got := get(t, d, id2); got.Status != db.StatusCancelled || ev[len(ev)-2] != "accepted>cancelling" {
		t.Fatalf("%s %v", got.Status, ev)
	}
}

func TestStatusDrops(t *testing.T) {
	d, _ := newDB(t)
	h := StatusHandler(d, quietLog())
	// Unknown transfer, no epoch, unknown event: acked (nil), nothing done.
	for _, ev := range []rpc.StatusEvent{
		{TransferID: "6f1c2f3e-0000-4000-8000-000000000000", Event: rpc.EventAccepted, Epoch: 1},
		{TransferID: createTransfer(t, d, 1).ID, Event: rpc.EventAccepted},
		{TransferID: createTransfer(t, d, 2).ID, Event: "paused", Epoch: 1},
	} {
		if err := send(t, h, rpc.MethodAgentStatus, ev); err != nil {
			t.Errorf("%+v: %v", ev, err)
		}
	}
	// A body that is not a StatusEvent is a permanent error (dead letter).
	err := send(t, h, rpc.MethodAgentStatus, []int{1})
	if err == nil || rpc.IsTemporary(err) {
		t.Fatalf("bad body: %v", err)
	}
	if err := send(t, h, "agent.unknown", nil); err == nil {
		t.Fatal("unknown method accepted")
	}
}

func TestStatusDatabaseDownIsTemporary(t *testing.T) {
	d, _ := newDB(t)
	h := StatusHandler(d, quietLog())
	id := createTransfer(t, d, 1).ID
	_ = d.Close()
	err := send(t, h, rpc.MethodAgentStatus, rpc.StatusEvent{TransferID: id, Event: rpc.EventAccepted, Epoch: 1})
	if !rpc.IsTemporary(err) {
		t.Fatalf("error %v is not temporary", err)
	}
	err = send(t, h, rpc.MethodAgentHeartbeat, rpc.Heartbeat{Host: "h", Region: "r"})
	if !rpc.IsTemporary(err) {
		t.Fatalf("heartbeat error %v is not temporary", err)
	}
}

func TestHeartbeat(t *testing.T) {
	d, _ := newDB(t)
	h := StatusHandler(d, quietLog())
	ctx := testCtx(t)
	hb := rpc.Heartbeat{Binary: "ferry-agent", Host: "agent-a", Region: "RegionOne", Version: "1.0", Time: time.Now()}
	if err := send(t, h, rpc.MethodAgentHeartbeat, hb); err != nil {
		t.Fatal(err)
	}
	hb.Version = "1.1"
	if err := send(t, h, rpc.MethodAgentHeartbeat, hb); err != nil {
		t.Fatal(err)
	}
	svcs, err := d.ListServices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || svcs[0].Binary != db.AgentBinary || svcs[0].Host != "agent-a" || svcs[0].Region != "RegionOne" ||
		svcs[0].Version != "1.1" || svcs[0].Topic != "agent.RegionOne.agent-a" || !db.ServiceIsUp(&svcs[0], time.Now(), time.Minute) {
		t.Fatalf("services %+v", svcs)
	}
	// No host: dropped, not dead-lettered.
	if err := send(t, h, rpc.MethodAgentHeartbeat, rpc.Heartbeat{Region: "RegionOne"}); err != nil {
		t.Fatal(err)
	}
}

// A transfer cancelled while queued, whose start an agent picked up
// anyway, gets a transfer.cancel to that agent; a running one does not.
func TestStatusCancelsAgentOfCancelledTransfer(t *testing.T) {
	d, _ := newDB(t)
	caster := &fakeCaster{}
	h := StatusHandler(d, quietLog(), WithCanceller(caster))
	ctx := testCtx(t)
	id := createTransfer(t, d, 1).ID
	if _, err := d.TransitionTransfer(ctx, id, db.StatusCancelled, db.TransitionOpts{}); err != nil {
		t.Fatal(err)
	}
	report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventAccepted, Epoch: 1, Region: "RegionOne", Host: "agent-x"})
	cs := caster.recorded()
	if len(cs) != 1 || cs[0].target != rpc.AgentHostTarget("RegionOne", "agent-x") || cs[0].method != rpc.MethodTransferCancel {
		t.Fatalf("casts %+v", cs)
	}
	if got := get(t, d, id); got.Status != db.StatusCancelled {
		t.Errorf("status %s", got.Status)
	}
	id2 := createTransfer(t, d, 2).ID
	report(t, h, rpc.StatusEvent{TransferID: id2, Event: rpc.EventAccepted, Epoch: 1, Region: "RegionOne", Host: "agent-x"})
	if n := len(caster.recorded()); n != 1 {
		t.Errorf("a cancel was sent for a live transfer (%d casts)", n)
	}
}

// A completed copy of a Cinder volume goes to finalizing and wakes the
// finalizer; a redelivered completion changes nothing; the start message
// asks the agents for an ephemeral copy.
func TestStatusCompletedVolumeGoesToFinalizing(t *testing.T) {
	d, _ := newDB(t)
	kicks := 0
	h := StatusHandler(d, quietLog(), WithFinalizer(func() { kicks++ }))
	tr := newTransfer(1)
	tr.SourceVolumeID = "v1"
	msg, err := NewStartMessageWithRequestID(tr, "req-test")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg.Payload, `"ephemeral":true`) {
		t.Errorf("start of a volume transfer is not ephemeral: %s", msg.Payload)
	}
	if err := d.CreateTransfer(testCtx(t), tr, msg); err != nil {
		t.Fatal(err)
	}
	plain := createTransfer(t, d, 2)
	for _, id := range []string{tr.ID, plain.ID} {
		report(t, h, rpc.StatusEvent{TransferID: id, Event: rpc.EventCompleted, Epoch: 1, Digest: "blake3-sha256:ab", BytesDone: 10, BytesTotal: 10})
	}
	if got := get(t, d, tr.ID); got.Status != db.StatusFinalizing || got.Digest != "blake3-sha256:ab" || kicks != 1 {
		t.Errorf("volume transfer: %s digest %q, %d kicks", got.Status, got.Digest, kicks)
	}
	if got := get(t, d, plain.ID); got.Status != db.StatusCompleted || kicks != 1 {
		t.Errorf("image transfer: %s, %d kicks", got.Status, kicks)
	}
	report(t, h, rpc.StatusEvent{TransferID: tr.ID, Event: rpc.EventCompleted, Epoch: 1, Digest: "blake3-sha256:ab"})
	if got := get(t, d, tr.ID); got.Status != db.StatusFinalizing {
		t.Errorf("after a redelivered completion: %s", got.Status)
	}
	if m, err := NewStartMessage(plain); err != nil || strings.Contains(m.Payload, "ephemeral") {
		t.Errorf("start of an image transfer: %v %s", err, m.Payload)
	}
}

// Reports are applied only from the agent and region the transfer is
// assigned to, and (with [api] agent_users) from that region's broker
// user; anything else is dropped and changes nothing.
func TestStatusReportsOnlyFromTheTransfersAgent(t *testing.T) {
	d, _ := newDB(t)
	h := StatusHandler(d, quietLog(), WithAgentUsers(map[string]string{"RegionOne": "agents-r1", "RegionTwo": "agents-r2"}))
	id := createTransfer(t, d, 1).ID
	as := func(user string, ev rpc.StatusEvent) {
		t.Helper()
		ev.TransferID, ev.Epoch, ev.Time = id, 1, time.Now().UTC()
		if err := sendAs(t, h, user, rpc.MethodAgentStatus, ev); err != nil {
			t.Fatal(err)
		}
	}
	// Not from RegionOne's broker user, or about another region: nothing.
	as("agents-r2", rpc.StatusEvent{Event: rpc.EventAccepted, Region: "RegionOne", Host: "agent-a"})
	as("agents-r2", rpc.StatusEvent{Event: rpc.EventAccepted, Region: "RegionTwo", Host: "agent-z"})
	as("", rpc.StatusEvent{Event: rpc.EventAccepted, Region: "RegionOne", Host: "agent-a"})
	if got := get(t, d, id); got.Status != db.StatusQueued || got.Agent != nil {
		t.Fatalf("forged accepted applied: %+v", got)
	}
	as("agents-r1", rpc.StatusEvent{Event: rpc.EventAccepted, Region: "RegionOne", Host: "agent-a"})
	// Another agent of the region forges a completion.
	as("agents-r1", rpc.StatusEvent{Event: rpc.EventCompleted, Region: "RegionOne", Host: "agent-b", Digest: "blake3-sha256:00", BytesDone: 1})
	if got := get(t, d, id); got.Status != db.StatusAccepted || got.Digest != "" {
		t.Fatalf("a completion from another agent applied: %+v", got)
	}
	as("agents-r1", rpc.StatusEvent{Event: rpc.EventCompleted, Region: "RegionOne", Host: "agent-a", Digest: "blake3-sha256:11", BytesDone: 1})
	if got := get(t, d, id); got.Status != db.StatusCompleted || got.Digest != "blake3-sha256:11" {
		t.Fatalf("the agent's completion: %+v", got)
	}
	// Heartbeats too: a region's record only from its agents' user.
	if err := sendAs(t, h, "agents-r2", rpc.MethodAgentHeartbeat, rpc.Heartbeat{Binary: "ferry-agent", Host: "fake", Region: "RegionOne", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	svcs, err := d.ListServices(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.Host == "fake" {
			t.Errorf("a heartbeat from another region's user recorded: %+v", s)
		}
	}
}

// Every terminal transition carries one transfer.end (the notifier's row),
// written with the transition: none for the steps before, none again for
// a redelivered completion, one for an error.
func TestStatusEndNotification(t *testing.T) {
	d, _ := newDB(t)
	var ended []string
	end := EndNotifier(func(tr *db.Transfer) (*db.OutboxMessage, error) {
		ended = append(ended, tr.ID+":"+string(tr.Status))
		return NewOutboxMessage("", "notifications.info", rpc.MethodNotification, map[string]string{"transfer_id": tr.ID})
	})
	h := StatusHandler(d, quietLog(), WithEndNotifier(end))
	a, b := createTransfer(t, d, 1), createTransfer(t, d, 2)
	if _, err := d.ClaimOutbox(testCtx(t), "test", time.Hour, 10); err != nil { // the starts
		t.Fatal(err)
	}
	report(t, h, rpc.StatusEvent{TransferID: a.ID, Event: rpc.EventAccepted, Epoch: 1})
	report(t, h, rpc.StatusEvent{TransferID: a.ID, Event: rpc.EventProgress, Epoch: 1, BytesDone: 1, BytesTotal: 2})
	if len(ended) != 0 {
		t.Fatalf("transfer.end before the end: %v", ended)
	}
	done := rpc.StatusEvent{TransferID: a.ID, Event: rpc.EventCompleted, Epoch: 1, BytesDone: 2, Digest: "sha256:00"}
	report(t, h, done)
	report(t, h, done) // redelivered
	report(t, h, rpc.StatusEvent{TransferID: b.ID, Event: rpc.EventError, Epoch: 1, Error: "boom"})
	if want := []string{a.ID + ":completed", b.ID + ":error"}; !equal(ended, want) {
		t.Errorf("transfer.end built for %v, want %v", ended, want)
	}
	msgs, err := d.ClaimOutbox(testCtx(t), "test", time.Hour, 10)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range msgs {
		if m.RoutingKey == "notifications.info" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d notification rows, want 2: %+v", n, msgs)
	}
	if (EndNotifier)(nil).For(db.StatusCompleted) != nil || end.For(db.StatusTransferring) != nil || end.For(db.StatusCancelled) == nil {
		t.Error("EndNotifier.For")
	}
}
