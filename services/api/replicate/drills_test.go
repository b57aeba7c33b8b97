package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/cinder"
)

type fakeCaller struct {
	mu    sync.Mutex
	calls []rpc.DrillRequest
	keys  []rpc.Target
	err   error
}

func (f *fakeCaller) Call(_ context.Context, target rpc.Target, method string, body, reply any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if method != rpc.MethodReplicationDrill {
		return errors.New("unexpected method " + method)
	}
	f.calls = append(f.calls, body.(rpc.DrillRequest))
	f.keys = append(f.keys, target)
	if f.err != nil {
		return f.err
	}
	b, _ := json.Marshal(rpc.DrillReply{Size: 3<<30 + 1})
	return json.Unmarshal(b, reply)
}

type fakeRegistrar struct {
	mu   sync.Mutex
	regs []cinder.Registration
	err  error
	// clk advances while the volume "becomes available".
	clk *fakeClock
}

func (f *fakeRegistrar) VolumePool(region string) string {
	if region == "RegionTwo" {
		return "cinder-volumes"
	}
	return ""
}

func (f *fakeRegistrar) RegisterVolume(ctx context.Context, r cinder.Registration) (string, error) {
	f.mu.Lock()
	f.regs = append(f.regs, r)
	f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	id := r.ExistingVolumeID
	if id == "" {
		if err := r.Attempting(ctx, time.Now()); err != nil {
			return "", err
		}
		id = "vol-" + r.TransferID
		if err := r.Created(ctx, id); err != nil {
			return "", err
		}
	}
	f.clk.add(12 * time.Second)
	return id, nil
}

// withPoint makes a replication with one point, as a completed cycle
// leaves it.
func withPoint(t *testing.T, d *db.DB) (*db.Replication, string) {
	t.Helper()
	ctx := context.Background()
	r := newReplication(t, d, nil)
	tr := CycleTransfer(r, nil, nil, d.Now())
	st, _, err := d.StartCycle(ctx, r.ID, d.Now(), d.Now().Add(time.Minute), tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying} {
		if _, err := d.TransitionTransfer(ctx, st.ID, to, db.TransitionOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	snap, n := SnapshotPrefix+st.ID, int64(1<<20)
	if _, err := d.TransitionTransfer(ctx, st.ID, db.StatusCompleted, db.TransitionOpts{
		Fields: db.TransferFields{DestSnapshot: &snap, BytesTransferred: &n}, Cycle: &db.CycleOutcome{SnapshotAt: d.Now()}}); err != nil {
		t.Fatal(err)
	}
	return r, snap
}

func drillEvents(t *testing.T, d *db.DB, id string) []string {
	t.Helper()
	evs, err := d.ListReplicationEvents(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if strings.HasPrefix(string(e.Kind), "drill") {
			out = append(out, string(e.Kind)+": "+e.Message)
		}
	}
	return out
}

func TestDrillRunner(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	r, point := withPoint(t, d)
	caller, reg := &fakeCaller{}, &fakeRegistrar{clk: clk}
	run := &DrillRunner{DB: d, Caller: caller, Cinder: reg, Flatten: true, Owner: "api-1", Log: quiet()}
	dr := &db.Drill{ReplicationID: r.ID, Point: point, Name: "dr"}
	if err := d.CreateDrill(ctx, dr, db.ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	run.RunDrill(ctx, dr)
	got, err := d.GetDrill(ctx, dr.ID, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	rto, ok := got.RTO()
	if got.Status != db.DrillAvailable || got.VolumeID != "vol-"+dr.ID || !ok || rto != 12*time.Second || got.RegisterStartedAt != nil {
		t.Fatalf("drill after the run: %+v (rto %s)", got, rto)
	}
	// The clone: the point of the replica, into the destination's Cinder
	// pool, flattened, asked of the destination region's agents.
	if len(caller.calls) != 1 || caller.keys[0] != "agent.RegionTwo" {
		t.Fatalf("calls %+v to %v", caller.calls, caller.keys)
	}
	c := caller.calls[0]
	if c.DrillID != dr.ID || c.Pool != r.DestPool || c.Image != db.ReplicaImagePrefix+r.ID || c.Snapshot != point ||
		c.ClonePool != "cinder-volumes" || c.CloneName != db.DrillImagePrefix+dr.ID || !c.Flatten || c.ReplicationID != r.ID {
		t.Errorf("drill request %+v", c)
	}
	// Registered into the replication's project, sized from the clone.
	if len(reg.regs) != 1 || reg.regs[0].Spec.ProjectID != "demo" || reg.regs[0].Region != "RegionTwo" ||
		reg.regs[0].Image != db.DrillImagePrefix+dr.ID || reg.regs[0].Spec.SizeGiB != 4 {
		t.Errorf("registrations %+v", reg.regs)
	}
	if ev := drillEvents(t, d, r.ID); len(ev) != 2 || !strings.HasPrefix(ev[1], "drill_available: ") || !strings.Contains(ev[1], "after 12.0 s") {
		t.Errorf("events %v", ev)
	}
}

func TestDrillRunnerResumesARegistration(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	r, point := withPoint(t, d)
	caller, reg := &fakeCaller{}, &fakeRegistrar{clk: clk}
	run := &DrillRunner{DB: d, Caller: caller, Cinder: reg, Owner: "api-1", Log: quiet()}
	dr := &db.Drill{ReplicationID: r.ID, Point: point}
	if err := d.CreateDrill(ctx, dr, db.ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	// A stopped ferry-api recorded the volume Cinder made: no new clone
	// and no second manage-existing, the volume is waited for.
	vol := "vol-earlier"
	dr2, err := d.UpdateDrill(ctx, dr.ID, db.DrillFields{VolumeID: &vol})
	if err != nil {
		t.Fatal(err)
	}
	run.RunDrill(ctx, dr2)
	if len(caller.calls) != 0 || len(reg.regs) != 1 || reg.regs[0].ExistingVolumeID != vol {
		t.Errorf("resumed drill: calls %+v, registrations %+v", caller.calls, reg.regs)
	}
	if got, _ := d.GetDrill(ctx, dr.ID, db.AllProjectsScope()); got.Status != db.DrillAvailable || got.VolumeID != vol {
		t.Errorf("drill %+v", got)
	}
}

func TestDrillRunnerFailure(t *testing.T) {
	d, clk := newStore(t)
	ctx := context.Background()
	r, point := withPoint(t, d)
	caller := &fakeCaller{err: &rpc.RemoteError{Code: "conflict", Message: "not a verified point"}}
	reg := &fakeRegistrar{clk: clk}
	run := &DrillRunner{DB: d, Caller: caller, Cinder: reg, Owner: "api-1", Log: quiet()}
	dr := &db.Drill{ReplicationID: r.ID, Point: point}
	if err := d.CreateDrill(ctx, dr, db.ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	run.RunDrill(ctx, dr)
	got, _ := d.GetDrill(ctx, dr.ID, db.AllProjectsScope())
	if got.Status != db.DrillError || got.Error == nil || !strings.Contains(*got.Error, "not a verified point") || len(reg.regs) != 0 {
		t.Errorf("failed drill %+v (registrations %d)", got, len(reg.regs))
	}
	if ev := drillEvents(t, d, r.ID); len(ev) != 2 || !strings.HasPrefix(ev[1], "drill_failed: ") {
		t.Errorf("events %v", ev)
	}
	// The scan finds no pending drill any more.
	run.scan(ctx)
	run.workers.wait()
	if len(caller.calls) != 1 {
		t.Errorf("a failed drill was run again: %d calls", len(caller.calls))
	}
}

func TestCollector(t *testing.T) {
	d, clk := newStore(t)
	r1, _ := withPoint(t, d) // a point now
	r2 := newReplication(t, d, func(r *db.Replication) { r.SourceImage, r.ProjectID, r.RPOSeconds = "volume-v2", "alt", 60 })
	clk.add(90 * time.Second)
	reg := prometheus.NewRegistry()
	reg.MustRegister(&Collector{DB: d})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			v := m.GetGauge().GetValue()
			if m.GetCounter() != nil {
				v = m.GetCounter().GetValue()
			}
			got[key] = v
		}
	}
	want := map[string]float64{
		"ferry_replication_cycle_bytes,project_id=alt,replication_id=" + r2.ID:   0,
		"ferry_replication_cycle_bytes,project_id=demo,replication_id=" + r1.ID:  1 << 20,
		"ferry_replication_cycles_total,result=completed":                        1,
		"ferry_replication_cycles_total,result=failed":                           0,
		"ferry_replication_cycles_total,result=skipped":                          0,
		"ferry_replication_lag_seconds,project_id=demo,replication_id=" + r1.ID:  90,
		"ferry_replication_rpo_breached,project_id=alt,replication_id=" + r2.ID:  1,
		"ferry_replication_rpo_breached,project_id=demo,replication_id=" + r1.ID: 0,
	}
	if len(got) != len(want) {
		t.Errorf("metrics %v, want %v", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}

func TestTransferEndNotification(t *testing.T) {
	now := t0
	msg := "boom"
	tr := &db.Transfer{ID: "t1", Status: db.StatusError, ProjectID: "demo", ReplicationID: "r1", Error: &msg, FinishedAt: &now, CreatedAt: now}
	m, err := Notifier{Host: "api-1"}.TransferEnded(tr)
	if err != nil {
		t.Fatal(err)
	}
	notes := notifications(t, []sent{decodeRow(t, m)})
	if len(notes) != 1 || notes[0].key != "notifications.error" || notes[0].EventType != EventTransferEnd || notes[0].Priority != "ERROR" ||
		notes[0].Payload["transfer_id"] != "t1" || notes[0].Payload["status"] != "error" || notes[0].Payload["replication_id"] != "r1" ||
		notes[0].Timestamp != "2026-12-03 12:00:00.000000" {
		t.Errorf("transfer.end %+v", notes)
	}
}

func decodeRow(t *testing.T, m *db.OutboxMessage) sent {
	t.Helper()
	var sm struct {
		Method string          `json:"method"`
		Body   json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal([]byte(m.Payload), &sm); err != nil {
		t.Fatal(err)
	}
	return sent{m.RoutingKey, sm.Method, sm.Body}
}
