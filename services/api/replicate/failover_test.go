package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/cinder"
)

// fakeAgents answers the failover's agent calls (promote, demote,
// rename), recording them as "method region pool/image".
type fakeAgents struct {
	mu    sync.Mutex
	calls []string
	// fail: method → the error it answers (once; then it succeeds).
	fail map[string]error
	// preserved: the demote reports a divergent head copied aside.
	preserved bool
}

func (f *fakeAgents) Call(_ context.Context, target rpc.Target, method string, body, reply any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	region := strings.TrimPrefix(string(target), "agent.")
	var out any
	switch req := body.(type) {
	case rpc.PromoteRequest:
		f.calls = append(f.calls, fmt.Sprintf("%s %s %s/%s@%s", method, region, req.Pool, req.Image, req.Point))
		out = rpc.PromoteReply{FSID: "fsid-" + region, ImageID: "id-" + req.Image, Name: req.Pool + "/" + req.Image, SnapID: 7, Size: 3<<30 + 1, Digest: "d"}
	case rpc.DemoteRequest:
		f.calls = append(f.calls, fmt.Sprintf("%s %s %s/%s@%s peer %s preserve %s", method, region, req.Pool, req.Image, req.Point, req.Peer.Name, req.PreserveAs))
		r := rpc.DemoteReply{SnapID: 9}
		if f.preserved {
			r.Preserved, r.PreservedBytes = req.PreserveAs, 4096
		}
		out = r
	case rpc.RenameRequest:
		f.calls = append(f.calls, fmt.Sprintf("%s %s %s/%s to %s", method, region, req.Pool, req.Image, req.To))
		out = rpc.RenameReply{Name: req.Pool + "/" + req.To}
	default:
		return fmt.Errorf("unexpected call %s %T", method, body)
	}
	if err := f.fail[method]; err != nil {
		delete(f.fail, method)
		return err
	}
	b, _ := json.Marshal(out)
	return json.Unmarshal(b, reply)
}

// fakeFailoverCinder records the failover's Cinder calls.
type fakeFailoverCinder struct {
	mu    sync.Mutex
	calls []string
	regs  []cinder.Registration
	// regErr: the registration's error (once).
	regErr error
	clk    *fakeClock
}

func (f *fakeFailoverCinder) VolumePool(string) string { return "volumes" }

func (f *fakeFailoverCinder) RegisterVolume(ctx context.Context, r cinder.Registration) (string, error) {
	f.mu.Lock()
	f.regs = append(f.regs, r)
	err := f.regErr
	f.regErr = nil
	f.mu.Unlock()
	if err != nil {
		return "", err
	}
	id := r.ExistingVolumeID
	if id == "" {
		if err := r.Attempting(ctx, time.Now()); err != nil {
			return "", err
		}
		id = "x1"
		if err := r.Created(ctx, id); err != nil {
			return "", err
		}
	}
	f.clk.add(5 * time.Second)
	return id, nil
}

func (f *fakeFailoverCinder) SetReadOnly(_ context.Context, region, project, id string, ro bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("readonly %s %s %s %v", region, project, id, ro))
	return nil
}

func (f *fakeFailoverCinder) UnmanageVolume(_ context.Context, region, project, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("unmanage %s %s %s", region, project, id))
	return nil
}

func (f *fakeFailoverCinder) MapVolumeType(src, typ, dst string) string {
	if typ == "" {
		return ""
	}
	return dst + "-" + typ
}

// completeFinal completes the failover's final cycle as the agents would.
func completeFinal(t *testing.T, d *db.DB, id string) {
	t.Helper()
	ctx := context.Background()
	f, err := d.GetFailover(ctx, id, db.AllProjectsScope())
	if err != nil || f.FinalTransferID == "" {
		t.Fatalf("no final cycle: %+v %v", f, err)
	}
	for _, to := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying} {
		if _, err := d.TransitionTransfer(ctx, f.FinalTransferID, to, db.TransitionOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	snap, n := SnapshotPrefix+f.FinalTransferID, int64(1<<20)
	if _, err := d.TransitionTransfer(ctx, f.FinalTransferID, db.StatusCompleted, db.TransitionOpts{
		Fields: db.TransferFields{DestSnapshot: &snap, BytesTransferred: &n}, Cycle: &db.CycleOutcome{SnapshotAt: d.Now()}}); err != nil {
		t.Fatal(err)
	}
}

func getFailover(t *testing.T, d *db.DB, id string) *db.Failover {
	t.Helper()
	f, err := d.GetFailover(context.Background(), id, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func startFailover(t *testing.T, d *db.DB, r *db.Replication, kind db.FailoverKind, planned bool, point string, mut ...func(*db.Failover)) *db.Failover {
	t.Helper()
	to, from := db.ReplicationFailingOver, []db.ReplicationStatus{db.ReplicationActive, db.ReplicationPaused, db.ReplicationError}
	if kind == db.FailoverKindFailback {
		to, from = db.ReplicationFailingBack, []db.ReplicationStatus{db.ReplicationFailedOver}
	}
	f := &db.Failover{ReplicationID: r.ID, UserID: "u", Kind: kind, Planned: planned, Point: point,
		Spec: `{"kind":"volume","name":"data","description":"d","bootable":true,"volume_type":"ceph","metadata":{"k":"v"}}`}
	for _, m := range mut {
		m(f)
	}
	if _, err := d.StartFailover(context.Background(), f, db.AllProjectsScope(), to, from, db.ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	return f
}

// A planned failover and its failback, step by step: the old primary
// quiesced, a final cycle, the replica promoted and managed into Cinder
// with the source's spec and mapped type, the old primary demoted (peer:
// the replica under its Cinder name), the direction flipped; the failback
// the same way back, ending with the original volume read-write, the
// failed-over volume unmanaged and its image named the replica again.
func TestFailoverRunnerPlannedRoundTrip(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	r, _ := withPoint(t, d)
	agents, cin := &fakeAgents{}, &fakeFailoverCinder{clk: clk}
	run := &FailoverRunner{DB: d, Caller: agents, Cinder: cin, Owner: "api-1", Log: quiet()}

	f := startFailover(t, d, r, db.FailoverKindFailover, true, "")
	run.Advance(ctx, f.ID)
	// Quiesced, the final cycle started: it waits for the cycle.
	got := getFailover(t, d, f.ID)
	if got.Step != StepFinalCycle || got.FinalTransferID == "" || got.Status != db.FailoverRunning {
		t.Fatalf("after the first run: %+v", got)
	}
	if len(cin.calls) != 1 || cin.calls[0] != "readonly RegionOne demo v1 true" || len(agents.calls) != 0 {
		t.Fatalf("cinder %v agents %v", cin.calls, agents.calls)
	}
	run.Advance(ctx, f.ID) // still running: nothing changes
	if g := getFailover(t, d, f.ID); g.Step != StepFinalCycle || g.FinalTransferID != got.FinalTransferID {
		t.Fatalf("a second run while the final cycle runs: %+v", g)
	}
	clk.add(3 * time.Second)
	completeFinal(t, d, f.ID)
	run.Advance(ctx, f.ID)
	got = getFailover(t, d, f.ID)
	point := SnapshotPrefix + got.FinalTransferID
	rto, ok := got.RTO()
	if got.Status != db.FailoverDone || got.Point != point || got.ToVolumeID != "x1" || !ok || rto != 8*time.Second {
		t.Fatalf("the failover: %+v (rto %s)", got, rto)
	}
	replica := db.ReplicaImagePrefix + r.ID
	want := []string{
		"replication.promote RegionTwo volumes/" + replica + "@" + point,
		"replication.demote RegionOne volumes/volume-v1@" + point + " peer volumes/volume-x1 preserve " + PreservedPrefix + f.ID,
	}
	if strings.Join(agents.calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("agent calls:\n%s\nwant\n%s", strings.Join(agents.calls, "\n"), strings.Join(want, "\n"))
	}
	if len(cin.regs) != 1 || cin.regs[0].Region != "RegionTwo" || cin.regs[0].Image != replica || !cin.regs[0].KeepImage ||
		cin.regs[0].Spec.Name != "data" || !cin.regs[0].Spec.Bootable || cin.regs[0].Spec.Metadata["k"] != "v" ||
		cin.regs[0].Spec.ProjectID != "demo" || cin.regs[0].Spec.SizeGiB != 4 || cin.regs[0].VolumeType != "RegionTwo-ceph" {
		t.Errorf("registration %+v", cin.regs)
	}
	rep := getRep(t, d, r.ID)
	if rep.Status != db.ReplicationFailedOver || rep.FailoverID != nil || rep.SourceRegion != "RegionTwo" || rep.SourceImage != "volume-x1" ||
		rep.SourceVolumeID != "x1" || rep.DestRegion != "RegionOne" || rep.DestImage != "volume-v1" || rep.DestVolumeID != "v1" {
		t.Fatalf("the replication after the failover: %+v", rep)
	}
	if ps, _ := d.ListPoints(ctx, r.ID); len(ps) != 1 || ps[0].Name != point {
		t.Errorf("points after the flip: %+v", ps)
	}

	// The failback.
	agents.calls, cin.calls, cin.regs = nil, nil, nil
	b := startFailover(t, d, rep, db.FailoverKindFailback, true, "")
	run.Advance(ctx, b.ID)
	completeFinal(t, d, b.ID)
	run.Advance(ctx, b.ID)
	gb := getFailover(t, d, b.ID)
	bpoint := SnapshotPrefix + gb.FinalTransferID
	if gb.Status != db.FailoverDone || gb.AvailableAt == nil {
		t.Fatalf("the failback: %+v", gb)
	}
	want = []string{
		"replication.promote RegionOne volumes/volume-v1@" + bpoint,
		"replication.demote RegionTwo volumes/volume-x1@" + bpoint + " peer volumes/volume-v1 preserve " + PreservedPrefix + b.ID,
		"replication.rename RegionTwo volumes/volume-x1 to " + replica,
	}
	if strings.Join(agents.calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("failback agent calls:\n%s\nwant\n%s", strings.Join(agents.calls, "\n"), strings.Join(want, "\n"))
	}
	wantC := []string{"readonly RegionTwo demo x1 true", "readonly RegionOne demo v1 false", "unmanage RegionTwo demo x1"}
	if strings.Join(cin.calls, "\n") != strings.Join(wantC, "\n") || len(cin.regs) != 0 {
		t.Errorf("failback cinder calls %v (registrations %v), want %v", cin.calls, cin.regs, wantC)
	}
	rep = getRep(t, d, r.ID)
	if rep.Status != db.ReplicationActive || rep.SourceRegion != "RegionOne" || rep.SourceImage != "volume-v1" || rep.SourceVolumeID != "v1" ||
		rep.DestRegion != "RegionTwo" || rep.DestImage != replica || rep.DestVolumeID != "" || rep.FailoverID != nil {
		t.Fatalf("the replication after the failback: %+v", rep)
	}
	evs, _ := d.ListReplicationEvents(ctx, r.ID)
	var kinds []string
	for _, e := range evs {
		if strings.Contains(string(e.Kind), "fail") {
			kinds = append(kinds, string(e.Kind))
		}
	}
	if k := strings.Join(kinds, ","); k != "failover_started,failover_available,failed_over,failback_started,failover_available,failed_back" {
		t.Errorf("events %s", k)
	}
}

// A final cycle that fails undoes the failover: the volume read-write
// again, the replication active, the failover in error; nothing promoted.
func TestFailoverRunnerUndoneBeforePromote(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	r, _ := withPoint(t, d)
	agents, cin := &fakeAgents{}, &fakeFailoverCinder{clk: clk}
	run := &FailoverRunner{DB: d, Caller: agents, Cinder: cin, Owner: "api-1", Log: quiet()}
	f := startFailover(t, d, r, db.FailoverKindFailover, true, "")
	run.Advance(ctx, f.ID)
	got := getFailover(t, d, f.ID)
	msg := "source image gone"
	if _, err := d.TransitionTransfer(ctx, got.FinalTransferID, db.StatusError, db.TransitionOpts{Error: msg}); err != nil {
		t.Fatal(err)
	}
	run.Advance(ctx, f.ID)
	got = getFailover(t, d, f.ID)
	if got.Status != db.FailoverError || got.Error == nil || !strings.Contains(*got.Error, "source image gone") {
		t.Fatalf("the failover: %+v", got)
	}
	if rep := getRep(t, d, r.ID); rep.Status != db.ReplicationActive || rep.FailoverID != nil || rep.SourceRegion != "RegionOne" {
		t.Fatalf("the replication: %+v", rep)
	}
	if len(agents.calls) != 0 || strings.Join(cin.calls, ",") != "readonly RegionOne demo v1 true,readonly RegionOne demo v1 false" {
		t.Errorf("agents %v cinder %v", agents.calls, cin.calls)
	}
}

// An unplanned failover promotes the named point without the source
// region, flips at once (the replica is the primary) and keeps the
// replication held until the old primary's region answers the demote,
// which preserves its divergent head; a failed step after the promote
// is retried, never undone.
func TestFailoverRunnerUnplanned(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	r, point := withPoint(t, d)
	agents := &fakeAgents{fail: map[string]error{rpc.MethodReplicationDemote: rpc.Temporary(errors.New("no agent answered"))}, preserved: true}
	cin := &fakeFailoverCinder{clk: clk, regErr: errors.New("cinder is down")}
	run := &FailoverRunner{DB: d, Caller: agents, Cinder: cin, Owner: "api-1", Log: quiet()}
	// The cycle the source region had queued when it went.
	cur := getRep(t, d, r.ID)
	stale, _, err := d.StartCycle(ctx, r.ID, cur.NextRunAt, cur.NextRunAt.Add(time.Minute), CycleTransfer(cur, nil, nil, d.Now()), nil)
	if err != nil || stale == nil {
		t.Fatalf("a cycle before the failover: %v %v", stale, err)
	}
	f := startFailover(t, d, r, db.FailoverKindFailover, false, point)
	run.Advance(ctx, f.ID)
	got := getFailover(t, d, f.ID)
	if got.Status != db.FailoverRunning || got.Step != StepRegister || got.Error == nil || !strings.Contains(*got.Error, "cinder is down") {
		t.Fatalf("after a failed registration: %+v", got)
	}
	run.succeeded(f.ID) // the backoff is the scan's, not Advance's
	run.Advance(ctx, f.ID)
	got = getFailover(t, d, f.ID)
	rep := getRep(t, d, r.ID)
	if got.Status != db.FailoverRunning || got.Step != StepDemote || got.ToVolumeID != "x1" || got.AvailableAt == nil ||
		rep.Status != db.ReplicationFailedOver || rep.FailoverID == nil || *rep.FailoverID != f.ID || rep.SourceRegion != "RegionTwo" {
		t.Fatalf("after the flip, the demote refused: %+v / %+v", got, rep)
	}
	if len(cin.calls) != 0 {
		t.Errorf("an unplanned failover touched the source region's Cinder: %v", cin.calls)
	}
	if st, err := d.GetTransfer(ctx, stale.ID, db.AllProjectsScope()); err != nil || st.Status != db.StatusCancelled {
		t.Errorf("the old direction's queued cycle after the flip: %+v %v", st, err)
	}
	run.Advance(ctx, f.ID)
	got = getFailover(t, d, f.ID)
	rep = getRep(t, d, r.ID)
	if got.Status != db.FailoverDone || got.Preserved != PreservedPrefix+f.ID || got.PreservedBytes != 4096 || rep.FailoverID != nil || rep.Status != db.ReplicationFailedOver {
		t.Fatalf("after the demote: %+v / %+v", got, rep)
	}
	if !strings.HasPrefix(agents.calls[0], "replication.promote RegionTwo volumes/"+db.ReplicaImagePrefix+r.ID+"@"+point) {
		t.Errorf("calls %v", agents.calls)
	}
	evs, _ := d.ListReplicationEvents(ctx, r.ID)
	found := false
	for _, e := range evs {
		found = found || e.Kind == db.RepEventPreserved && strings.Contains(e.Message, PreservedPrefix+f.ID)
	}
	if !found {
		t.Errorf("no preserved event naming the image: %+v", evs)
	}
}

// A runner that does not hold the lease (another ferry-api took it) runs
// no step.
func TestFailoverRunnerNeedsTheLease(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	r, point := withPoint(t, d)
	agents, cin := &fakeAgents{}, &fakeFailoverCinder{clk: clk}
	if held, err := d.AcquireLease(ctx, FailoverLease, "api-2", time.Minute); err != nil || !held {
		t.Fatalf("api-2 takes the lease: %v %v", held, err)
	}
	run := &FailoverRunner{DB: d, Caller: agents, Cinder: cin, Owner: "api-1", Log: quiet()}
	f := startFailover(t, d, r, db.FailoverKindFailover, false, point)
	run.Advance(ctx, f.ID)
	run.scan(ctx)
	run.workers.wait()
	if got := getFailover(t, d, f.ID); got.Step != "" || len(agents.calls) != 0 || len(cin.regs) != 0 {
		t.Fatalf("a runner without the lease ran %q: calls %v, registrations %d", got.Step, agents.calls, len(cin.regs))
	}
	clk.add(2 * time.Minute) // api-2's lease expired: api-1 takes over
	run.Advance(ctx, f.ID)
	if got := getFailover(t, d, f.ID); got.Status != db.FailoverDone || len(agents.calls) != 2 {
		t.Fatalf("after the lease expired: %+v, calls %v", got, agents.calls)
	}
}

// A volume that was read-only before the failover stays so: neither the
// undo nor the failback clears the flag.
func TestFailoverRunnerKeepsAReadOnlyVolume(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	r, _ := withPoint(t, d)
	agents, cin := &fakeAgents{}, &fakeFailoverCinder{clk: clk}
	run := &FailoverRunner{DB: d, Caller: agents, Cinder: cin, Owner: "api-1", Log: quiet()}
	ro := func(f *db.Failover) { f.OriginalReadOnly = true }
	f := startFailover(t, d, r, db.FailoverKindFailover, true, "", ro)
	run.Advance(ctx, f.ID)
	msg := "source image gone"
	if _, err := d.TransitionTransfer(ctx, getFailover(t, d, f.ID).FinalTransferID, db.StatusError, db.TransitionOpts{Error: msg}); err != nil {
		t.Fatal(err)
	}
	run.Advance(ctx, f.ID)
	if got := getFailover(t, d, f.ID); got.Status != db.FailoverError || strings.Join(cin.calls, ",") != "readonly RegionOne demo v1 true" {
		t.Fatalf("the undone failover of a read-only volume: %+v, cinder %v", got, cin.calls)
	}
	// Failed over for good, then back: the original stays read-only.
	f = startFailover(t, d, r, db.FailoverKindFailover, true, "", ro)
	run.Advance(ctx, f.ID)
	completeFinal(t, d, f.ID)
	run.Advance(ctx, f.ID)
	cin.calls = nil
	b := startFailover(t, d, getRep(t, d, r.ID), db.FailoverKindFailback, true, "", ro)
	run.Advance(ctx, b.ID)
	completeFinal(t, d, b.ID)
	run.Advance(ctx, b.ID)
	if got := getFailover(t, d, b.ID); got.Status != db.FailoverDone || strings.Contains(strings.Join(cin.calls, ","), "v1 false") {
		t.Fatalf("the failback of a read-only volume: %+v, cinder %v", got, cin.calls)
	}
}
