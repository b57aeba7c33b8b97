package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/api/cinder"
	"github.com/ferry-project/ferry/services/internal/config"
)

// fakeCinder resolves volumes from a table and registers copies in memory.
type fakeCinder struct {
	mu      sync.Mutex
	volumes map[string]*cinder.SourceVolume // id → volume; "" owner: caller's project
	errs    map[string]error
	tokens  []string
	regs    []cinder.Registration
	regErr  error

	backupRegs []cinder.BackupRegistration
	// attached, readOnly: volumes (by fake name) that are attached, or
	// read-only (InspectVolume).
	attached, readOnly map[string]bool
	// quotaFull: the owner's Cinder quota in the destination has no room.
	quotaFull bool
}

func (f *fakeCinder) CheckVolumeQuota(_ context.Context, _, region, project string, sizeGiB int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.quotaFull {
		return fmt.Errorf("%w: project %s in %s is full", cinder.ErrQuota, project, region)
	}
	return nil
}

// InspectVolume is the failover's read of a volume: the spec of the fake's
// volume, attached when the fake says so.
func (f *fakeCinder) InspectVolume(_ context.Context, region, project, id string) (*cinder.VolumeState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := f.nameOf(id)
	v, ok := f.volumes[name]
	if !ok || v.Spec.ProjectID != project {
		return nil, fmt.Errorf("%w: volume %s in %s", cinder.ErrNotFound, id, region)
	}
	st := "available"
	if f.attached[name] {
		st = "in-use"
	}
	return &cinder.VolumeState{Spec: v.Spec, Status: st, Attached: f.attached[name], ReadOnly: f.readOnly[name]}, nil
}

func (f *fakeCinder) VolumePool(region string) string {
	if region == "RegionOne" || region == "RegionTwo" {
		return "volumes"
	}
	return ""
}

// uid is the UUID the tests send for a fake Cinder resource's name.
func uid(name string) string { return uuid.NewSHA1(uuid.NameSpaceOID, []byte(name)).String() }

// nameOf is the fake's name of the resource id (a uid), or id itself.
func (f *fakeCinder) nameOf(id string) string {
	for k := range f.volumes {
		if uid(k) == id {
			return k
		}
	}
	for k := range f.errs {
		if uid(k) == id {
			return k
		}
	}
	if id == uid("b1") {
		return "b1"
	}
	return id
}

func (f *fakeCinder) ResolveVolume(_ context.Context, token, callerProject, region, id string) (*cinder.SourceVolume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, token)
	id = f.nameOf(id)
	if err := f.errs[id]; err != nil {
		return nil, err
	}
	v, ok := f.volumes[id]
	if !ok || (v.Spec.ProjectID != "" && v.Spec.ProjectID != callerProject && callerProject != "admin-project") {
		return nil, fmt.Errorf("%w: volume %s", cinder.ErrNotFound, id)
	}
	out := *v
	if out.Spec.ProjectID == "" {
		out.Spec.ProjectID = callerProject
	}
	return &out, nil
}

func (f *fakeCinder) RegisterVolume(ctx context.Context, r cinder.Registration) (string, error) {
	f.mu.Lock()
	f.regs = append(f.regs, r)
	err := f.regErr
	f.mu.Unlock()
	if err != nil {
		return "", err
	}
	id := r.ExistingVolumeID
	if id == "" && !r.AttemptedAt.IsZero() {
		id = "found-" + r.Spec.ID // the volume of the interrupted attempt
	}
	if id == "" {
		if r.Attempting != nil {
			if err := r.Attempting(ctx, time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)); err != nil {
				return "", err
			}
		}
		id = "new-" + r.Spec.ID
		if err := r.Created(ctx, id); err != nil {
			return "", err
		}
	}
	return id, nil
}

func (f *fakeCinder) BackupPool(region string) string {
	if region == "RegionOne" || region == "RegionTwo" {
		return "backups"
	}
	return ""
}

func (f *fakeCinder) ResolveBackup(_ context.Context, token, callerProject, region, dstRegion, id string) (*cinder.SourceBackup, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, token)
	id = f.nameOf(id)
	if err := f.errs[id]; err != nil {
		return nil, err
	}
	if id != "b1" || callerProject != "demo-project" && callerProject != "admin-project" {
		return nil, fmt.Errorf("%w: backup %s", cinder.ErrNotFound, id)
	}
	return &cinder.SourceBackup{Spec: cinder.BackupSpec{Kind: "backup", ID: "b1", ProjectID: "demo-project", Service: "ceph",
		Record: []byte(`{"id": "b1"}`)}, Pool: "backups", Image: "volume-v1.backup.b0", SnapshotPattern: "backup.b1.snap.*"}, nil
}

func (f *fakeCinder) RegisterBackup(ctx context.Context, r cinder.BackupRegistration) (string, error) {
	f.mu.Lock()
	f.backupRegs = append(f.backupRegs, r)
	err := f.regErr
	f.mu.Unlock()
	if err != nil {
		return "", err
	}
	if !r.Existing {
		if err := r.Created(ctx, r.Spec.ID); err != nil {
			return "", err
		}
	}
	return r.Spec.ID, nil
}

func TestBackupSourceCreate(t *testing.T) {
	fc := &fakeCinder{errs: map[string]error{
		"incr":   fmt.Errorf("%w: backup incr is incremental: move its parent backup b0 to RegionTwo first", cinder.ErrInvalid),
		"there":  fmt.Errorf("%w: backup there already exists in region RegionTwo", cinder.ErrConflict),
		"swifty": fmt.Errorf("%w: backup swifty was made by swift; Ferry moves backups of ceph only", cinder.ErrInvalid),
	}}
	a := newCinderAPITest(t, fc)
	body := func(id, extra string) string {
		return `{"transfer": {"source": {"region": "RegionOne", "backup_id": "` + uid(id) + `"` + extra + `}, "destination": {"region": "RegionTwo"}}}`
	}
	code, m := a.do(demo, "POST", "/v1/transfers", body("b1", ""))
	if code != 202 {
		t.Fatalf("create: %d %v", code, m)
	}
	tr := m["transfer"].(map[string]any)
	src, dst := tr["source"].(map[string]any), tr["destination"].(map[string]any)
	if src["backup_id"] != "b1" || src["pool"] != "backups" || src["image"] != "volume-v1.backup.b0" || src["snapshot"] != "backup.b1.snap.*" ||
		dst["pool"] != "backups" || dst["image"] != "volume-v1.backup.b0" || tr["mode"] != "auto" {
		t.Errorf("transfer = %v", tr)
	}
	for _, tc := range []struct {
		body, message string
		code          int
	}{
		{body("nope", ""), "Backup " + uid("nope") + " could not be found in region RegionOne.", 404},
		{body("incr", ""), "Backup incr is incremental: move its parent backup b0 to RegionTwo first.", 400},
		{body("there", ""), "Backup there already exists in region RegionTwo.", 409},
		{body("swifty", ""), "Backup swifty was made by swift; Ferry moves backups of ceph only.", 400},
		{body("b1", `, "snapshot": "s"`), "transfer.source.snapshot cannot be given with a backup source", 400},
	} {
		code, m := a.do(demo, "POST", "/v1/transfers", tc.body)
		var msg string
		for _, v := range m {
			msg, _ = v.(map[string]any)["message"].(string)
		}
		if code != tc.code || !strings.HasPrefix(msg, tc.message) {
			t.Errorf("%s: %d %q, want %d %q", tc.body, code, msg, tc.code, tc.message)
		}
	}
}

func newCinderAPITest(t *testing.T, fc *fakeCinder) *apiTest {
	t.Helper()
	d := testDB(t)
	at := &apiTest{t: t, db: d}
	hooks := fakeHooks(&at.kicks)
	hooks.Cinder, hooks.Failovers = fc, fc
	s := &Server{cfg: config.Defaults(), log: slog.New(slog.DiscardHandler), db: d, hooks: hooks}
	ts := httptest.NewServer(s.Router())
	t.Cleanup(ts.Close)
	s.cfg.API.PublicEndpoint = ts.URL
	at.url = ts.URL
	return at
}

func volumeBody(id, extra string) string {
	return `{"transfer": {"source": {"region": "RegionOne", "volume_id": "` + uid(id) + `"}, "destination": {"region": "RegionTwo"` + extra + `}}}`
}

func TestVolumeSourceCreate(t *testing.T) {
	fc := &fakeCinder{
		volumes: map[string]*cinder.SourceVolume{
			"v1": {Spec: cinder.VolumeSpec{Kind: "volume", ID: "v1", Name: "data", SizeGiB: 1, ProjectID: "demo-project"}, Pool: "volumes", Image: "volume-v1"},
		},
		errs: map[string]error{
			"broken":    fmt.Errorf("%w: volume broken is error; only an available or in-use volume can be moved", cinder.ErrInvalid),
			"encrypted": fmt.Errorf("%w: volume encrypted is encrypted; Ferry cannot move its key yet", cinder.ErrInvalid),
			"down":      errors.New("dial tcp: connection refused"),
		},
	}
	a := newCinderAPITest(t, fc)
	// A member moves a volume of its project; no pool or image is named.
	code, m := a.do(demo, "POST", "/v1/transfers", volumeBody("v1", ""))
	if code != 202 {
		t.Fatalf("create: %d %v", code, m)
	}
	tr := m["transfer"].(map[string]any)
	src, dst := tr["source"].(map[string]any), tr["destination"].(map[string]any)
	if src["volume_id"] != "v1" || src["pool"] != "volumes" || src["image"] != "volume-v1" || tr["mode"] != "full" ||
		dst["pool"] != "volumes" || dst["image"] != "ferry-"+tr["id"].(string) || dst["volume_id"] != nil {
		t.Errorf("transfer = %v", tr)
	}
	got, err := a.db.GetTransfer(context.Background(), tr["id"].(string), db.AllProjectsScope())
	if err != nil || got.OwnerProjectID != "demo-project" || got.CinderSpec == nil || !strings.Contains(*got.CinderSpec, `"name":"data"`) {
		t.Errorf("stored = %+v, %v", got, err)
	}
	// The other project's member: Cinder does not show it (404).
	if code, m := a.do(alt, "POST", "/v1/transfers", volumeBody("v1", "")); code != 404 ||
		m["itemNotFound"].(map[string]any)["message"] != "Volume "+uid("v1")+" could not be found in region RegionOne." {
		t.Errorf("alt: %d %v", code, m)
	}
	// An admin moves it; the result still belongs to demo's project.
	code, m = a.do(admin, "POST", "/v1/transfers", volumeBody("v1", ""))
	if code != 202 {
		t.Fatalf("admin create: %d %v", code, m)
	}
	got, _ = a.db.GetTransfer(context.Background(), m["transfer"].(map[string]any)["id"].(string), db.AllProjectsScope())
	if got.OwnerProjectID != "demo-project" || got.ProjectID != "admin-project" {
		t.Errorf("admin's transfer: owner %q, project %q", got.OwnerProjectID, got.ProjectID)
	}
	for _, tc := range []struct {
		body    string
		code    int
		message string
	}{
		{volumeBody("missing", ""), 404, "Volume " + uid("missing") + " could not be found in region RegionOne."},
		{volumeBody("broken", ""), 400, "Volume broken is error; only an available or in-use volume can be moved."},
		{volumeBody("encrypted", ""), 400, "Volume encrypted is encrypted; Ferry cannot move its key yet."},
		{volumeBody("down", ""), 503, "Cinder in region RegionOne could not be asked about volume " + uid("down") + "; try again later."},
		{volumeBody("v1", `, "pool": "other"`), 400, "transfer.destination.pool and image cannot be given with a volume source"},
		{`{"transfer": {"source": {"region": "RegionOne", "volume_id": "` + uid("v1") + `", "snapshot": "s"}, "destination": {"region": "RegionTwo"}}}`, 400, "transfer.source.snapshot cannot be given"},
		{`{"transfer": {"source": {"region": "RegionOne", "volume_id": "` + uid("v1") + `"}, "destination": {"region": "RegionTwo"}, "mode": "incremental"}}`, 400, "transfer.mode incremental is not possible"},
	} {
		code, m := a.do(demo, "POST", "/v1/transfers", tc.body)
		var msg string
		for _, v := range m {
			msg, _ = v.(map[string]any)["message"].(string)
		}
		if code != tc.code || !strings.HasPrefix(msg, tc.message) {
			t.Errorf("%s: %d %q, want %d %q", tc.body, code, msg, tc.code, tc.message)
		}
	}
	// The owner's Cinder quota in the destination is full: 413, nothing
	// created.
	before, _, _ := a.db.ListTransfers(context.Background(), db.ListOpts{Scope: db.AllProjectsScope(), Limit: 100})
	fc.mu.Lock()
	fc.quotaFull = true
	fc.mu.Unlock()
	code, m = a.do(demo, "POST", "/v1/transfers", volumeBody("v1", ""))
	if ol, _ := m["overLimit"].(map[string]any); code != 413 || ol == nil || !strings.HasPrefix(ol["message"].(string), "Cinder quota exceeded: project demo-project in RegionTwo is full") {
		t.Errorf("full quota: %d %v", code, m)
	}
	after, _, _ := a.db.ListTransfers(context.Background(), db.ListOpts{Scope: db.AllProjectsScope(), Limit: 100})
	if len(after) != len(before) {
		t.Errorf("a transfer was created over the Cinder quota")
	}
	fc.mu.Lock()
	fc.quotaFull = false
	fc.mu.Unlock()
	// A reader may not create at all (before Cinder is asked).
	n := len(fc.tokens)
	if code, _ := a.do(reader, "POST", "/v1/transfers", volumeBody("v1", "")); code != 403 {
		t.Errorf("reader: %d", code)
	}
	if len(fc.tokens) != n {
		t.Error("Cinder was asked on behalf of a reader")
	}
}

// A transfer in finalizing is registered and completed; a failure puts it in
// error with the registrar's message; an interrupted registration resumes
// with the volume it created.
func TestFinalizer(t *testing.T) {
	ctx := context.Background()
	d := testDB(t)
	spec := cinder.VolumeSpec{Kind: "volume", ID: "v1", Name: "data", SizeGiB: 1, ProjectID: "demo-project"}.Marshal()
	finalizing := func(name, destVolume string) *db.Transfer {
		tr := &db.Transfer{Name: name, ProjectID: "demo-project", UserID: "u", SourceRegion: "RegionOne", SourcePool: "volumes",
			SourceImage: "volume-v1", SourceVolumeID: "v1", DestRegion: "RegionTwo", DestPool: "volumes", DestImage: "ferry-x",
			OwnerProjectID: "demo-project", CinderSpec: &spec}
		if err := d.CreateTransfer(ctx, tr, nil); err != nil {
			t.Fatal(err)
		}
		for _, s := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying, db.StatusFinalizing} {
			if _, err := d.TransitionTransfer(ctx, tr.ID, s, db.TransitionOpts{}); err != nil {
				t.Fatal(err)
			}
		}
		if destVolume != "" {
			if err := d.UpdateFields(ctx, tr.ID, db.StatusFinalizing, db.TransferFields{DestVolumeID: &destVolume}); err != nil {
				t.Fatal(err)
			}
		}
		return tr
	}
	wait := func(id string) *db.Transfer {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			tr, err := d.GetTransfer(ctx, id, db.AllProjectsScope())
			if err != nil {
				t.Fatal(err)
			}
			if db.IsTerminal(tr.Status) {
				return tr
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("transfer %s still finalizing", id)
		return nil
	}
	fc := &fakeCinder{}
	fin := &Finalizer{DB: d, Cinder: fc, Log: slog.New(slog.DiscardHandler), Interval: time.Hour}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- fin.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	fresh := finalizing("fresh", "")
	resumed := finalizing("resumed", "vol-made-before")
	// The ledger says a manage-existing went out unanswered at 08:00.
	unanswered := finalizing("unanswered", "")
	sent := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	if err := d.UpdateFields(ctx, unanswered.ID, db.StatusFinalizing, db.TransferFields{RegisterStartedAt: &sent}); err != nil {
		t.Fatal(err)
	}
	fin.Kick()
	if tr := wait(unanswered.ID); tr.Status != db.StatusCompleted || tr.DestVolumeID != "found-v1" || tr.RegisterStartedAt != nil {
		t.Errorf("unanswered: %s, volume %q, ledger %v", tr.Status, tr.DestVolumeID, tr.RegisterStartedAt)
	}
	if tr := wait(fresh.ID); tr.Status != db.StatusCompleted || tr.DestVolumeID != "new-v1" || tr.DestImage != "volume-new-v1" {
		t.Errorf("fresh: %s, volume %q", tr.Status, tr.DestVolumeID)
	}
	if tr := wait(resumed.ID); tr.Status != db.StatusCompleted || tr.DestVolumeID != "vol-made-before" {
		t.Errorf("resumed: %s, volume %q", tr.Status, tr.DestVolumeID)
	}
	if len(fc.regs) != 3 {
		t.Fatalf("%d registrations, want 3", len(fc.regs))
	}
	for _, r := range fc.regs {
		if wantAt := map[string]time.Time{unanswered.ID: sent}[r.TransferID]; !r.AttemptedAt.Equal(wantAt) {
			t.Errorf("%s: attempted at %v from the ledger, want %v", r.TransferID, r.AttemptedAt, wantAt)
		}
		if r.Region != "RegionTwo" || r.Image != "ferry-x" || r.Spec.Name != "data" || r.Spec.ProjectID != "demo-project" {
			t.Errorf("registration = %+v", r)
		}
	}
	evs, _ := d.ListEvents(ctx, fresh.ID)
	if last := evs[len(evs)-1]; !strings.Contains(last.Message, "registered as Cinder volume new-v1 of project demo-project in RegionTwo") {
		t.Errorf("last event = %q", last.Message)
	}

	bspec := cinder.BackupSpec{Kind: "backup", ID: "b1", ProjectID: "demo-project", Service: "ceph", Record: []byte(`{"id":"b1"}`)}.Marshal()
	bt := &db.Transfer{Name: "backup", ProjectID: "demo-project", UserID: "u", SourceRegion: "RegionOne", SourcePool: "backups",
		SourceImage: "volume-v1.backup.b1", SourceSnapshot: "backup.b1.snap.*", SourceBackupID: "b1", DestRegion: "RegionTwo",
		DestPool: "backups", DestImage: "volume-v1.backup.b1", OwnerProjectID: "demo-project", CinderSpec: &bspec}
	if err := d.CreateTransfer(ctx, bt, nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying, db.StatusFinalizing} {
		if _, err := d.TransitionTransfer(ctx, bt.ID, s, db.TransitionOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	fin.Kick()
	if tr := wait(bt.ID); tr.Status != db.StatusCompleted || tr.DestBackupID != "b1" {
		t.Errorf("backup: %s, backup %q", tr.Status, tr.DestBackupID)
	}
	if len(fc.backupRegs) != 1 || fc.backupRegs[0].Pool != "backups" || fc.backupRegs[0].Spec.ID != "b1" || fc.backupRegs[0].Existing {
		t.Errorf("backup registrations: %+v", fc.backupRegs)
	}

	fc.mu.Lock()
	fc.regErr = errors.New("registering the copy as a Cinder volume in RegionTwo: volume x went to error_managing; the copied image is left in region RegionTwo, pool volumes, as ferry-x")
	fc.mu.Unlock()
	failed := finalizing("failed", "")
	fin.Kick()
	tr := wait(failed.ID)
	if tr.Status != db.StatusError || tr.Error == nil || !strings.Contains(*tr.Error, "the copied image is left in region RegionTwo, pool volumes, as ferry-x") {
		t.Errorf("failed: %s %v", tr.Status, tr.Error)
	}
}

// Two ferry-api processes: only the lease holder finalizes; when it stops,
// the other takes over.
func TestFinalizerLease(t *testing.T) {
	ctx := context.Background()
	d := testDB(t)
	spec := cinder.VolumeSpec{Kind: "volume", ID: "v1", ProjectID: "p"}.Marshal()
	finalizing := func(name string) string {
		tr := &db.Transfer{Name: name, ProjectID: "p", UserID: "u", SourceRegion: "RegionOne", SourcePool: "volumes",
			SourceImage: "volume-v1", SourceVolumeID: "v1", DestRegion: "RegionTwo", DestPool: "volumes", DestImage: "ferry-" + name,
			OwnerProjectID: "p", CinderSpec: &spec}
		if err := d.CreateTransfer(ctx, tr, nil); err != nil {
			t.Fatal(err)
		}
		for _, s := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying, db.StatusFinalizing} {
			if _, err := d.TransitionTransfer(ctx, tr.ID, s, db.TransitionOpts{}); err != nil {
				t.Fatal(err)
			}
		}
		return tr.ID
	}
	completed := func(id string) bool {
		tr, err := d.GetTransfer(ctx, id, db.AllProjectsScope())
		return err == nil && tr.Status == db.StatusCompleted
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	start := func(owner string, fc *fakeCinder) (*Finalizer, context.CancelFunc, chan error) {
		f := &Finalizer{DB: d, Cinder: fc, Log: slog.New(slog.DiscardHandler), Interval: 20 * time.Millisecond, Owner: owner, LeaseTTL: 300 * time.Millisecond}
		c, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- f.Run(c) }()
		return f, cancel, done
	}
	fa, fb := &fakeCinder{}, &fakeCinder{}
	_, stopA, doneA := start("api-a", fa)
	waitFor("api-a to hold the lease", func() bool {
		ok, _ := d.AcquireLease(ctx, FinalizerLease, "probe", time.Millisecond)
		return !ok
	})
	_, stopB, doneB := start("api-b", fb)
	defer func() { stopB(); <-doneB }()
	first := finalizing("first")
	second := finalizing("second")
	waitFor("both transfers completed", func() bool { return completed(first) && completed(second) })
	fa.mu.Lock()
	na := len(fa.regs)
	fa.mu.Unlock()
	fb.mu.Lock()
	nb := len(fb.regs)
	fb.mu.Unlock()
	if na != 2 || nb != 0 {
		t.Errorf("registrations: api-a %d, api-b %d; want 2 and 0 (api-a holds the lease)", na, nb)
	}
	stopA()
	<-doneA
	third := finalizing("third")
	waitFor("api-b to take over", func() bool { return completed(third) })
	fb.mu.Lock()
	defer fb.mu.Unlock()
	if len(fb.regs) != 1 {
		t.Errorf("api-b registered %d, want 1", len(fb.regs))
	}
}

// GroupVolumes answers the Cinder group "grp" (v1 and v2).
func (f *fakeCinder) GroupVolumes(_ context.Context, token, region, id string) ([]string, error) {
	if id != uid("grp") {
		return nil, fmt.Errorf("%w: group %s", cinder.ErrNotFound, id)
	}
	return []string{uid("v1"), uid("v2")}, nil
}
