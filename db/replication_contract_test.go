package db

// The replication part of the store contract (run by runStoreContract on
// every backend).

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db/state"
	"github.com/google/uuid"
)

func newTestReplication(project, image string) *Replication {
	return &Replication{
		Name: "rep-" + image, Description: "protects " + image,
		ProjectID: project, UserID: "user-" + project,
		SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: image, SourceVolumeID: strings.TrimPrefix(image, "volume-"),
		DestRegion: "RegionTwo", DestPool: "volumes",
		IntervalSeconds: 60, RPOSeconds: 300, KeepLast: 3, KeepHourly: 2, KeepDaily: 1,
	}
}

func mustCreateReplication(t *testing.T, d *DB, r *Replication) *Replication {
	t.Helper()
	if err := d.CreateReplication(testCtx(t), r); err != nil {
		t.Fatalf("CreateReplication(%s): %v", r.SourceImage, err)
	}
	return r
}

func mustGetReplication(t *testing.T, d *DB, id string) *Replication {
	t.Helper()
	r, err := d.GetReplication(testCtx(t), id, AllProjectsScope())
	if err != nil {
		t.Fatalf("GetReplication(%s): %v", id, err)
	}
	return r
}

// cycleTransfer is the transfer a scheduler would build for a cycle.
func cycleTransfer(r *Replication) *Transfer {
	id := uuid.NewString()
	return &Transfer{
		ID: id, Name: "cycle of " + r.Name, ProjectID: r.ProjectID, UserID: r.UserID,
		SourceRegion: r.SourceRegion, SourcePool: r.SourcePool, SourceImage: r.SourceImage, SourceVolumeID: r.SourceVolumeID,
		DestRegion: r.DestRegion, DestPool: r.DestPool, DestImage: r.DestImage,
	}
}

func startMsg(t *Transfer) (*OutboxMessage, error) {
	return &OutboxMessage{Exchange: "ferry", RoutingKey: "agent." + t.SourceRegion, Payload: `{"method":"transfer.start","id":"` + t.ID + `"}`}, nil
}

func repEventKinds(t *testing.T, d *DB, id string) []ReplicationEventKind {
	t.Helper()
	evs, err := d.ListReplicationEvents(testCtx(t), id)
	if err != nil {
		t.Fatalf("ListReplicationEvents: %v", err)
	}
	var out []ReplicationEventKind
	for _, e := range evs {
		out = append(out, e.Kind)
	}
	return out
}

func countKind(kinds []ReplicationEventKind, k ReplicationEventKind) int {
	n := 0
	for _, x := range kinds {
		if x == k {
			n++
		}
	}
	return n
}

// runCycle walks a started cycle from where it is to completed, as its
// agents report it.
func runCycle(t *testing.T, d *DB, tr *Transfer, bytes int64, oc *CycleOutcome) *Transfer {
	t.Helper()
	cur, err := d.GetTransfer(testCtx(t), tr.ID, AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		to Status
		f  TransferFields
	}{
		{StatusAccepted, TransferFields{Agent: ptr("agent-1")}},
		{StatusPreparing, TransferFields{}},
		{StatusTransferring, TransferFields{BytesTotal: ptr(int64(1 << 30))}},
		{StatusVerifying, TransferFields{BytesTransferred: ptr(bytes)}},
	} {
		if state.Rank(step.to) > state.Rank(cur.Status) {
			mustTransition(t, d, tr.ID, step.to, TransitionOpts{Fields: step.f})
		}
	}
	return mustTransition(t, d, tr.ID, StatusCompleted, TransitionOpts{
		Fields: TransferFields{DestSnapshot: ptr("ferry-" + tr.ID), Digest: ptr("sha256:" + strings.Repeat("a", 64))},
		Cycle:  oc,
	})
}

func contractReplicationCreateGet(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	created := clock.Peek()

	r := newTestReplication("p1", "volume-aaa")
	if err := d.CreateReplication(ctx, r, WithRequestID("req-rep")); err != nil {
		t.Fatalf("CreateReplication: %v", err)
	}
	if _, err := uuid.Parse(r.ID); err != nil {
		t.Fatalf("id %q: %v", r.ID, err)
	}
	if r.Status != ReplicationActive || r.DestImage != ReplicaImagePrefix+r.ID || !r.NextRunAt.Equal(created) ||
		!r.CreatedAt.Equal(created) || r.SourceKey == nil || r.LastSyncAt != nil || r.PointsCount != 0 {
		t.Errorf("created replication = %+v", r)
	}
	for _, scope := range []Scope{ProjectScope("p1"), AllProjectsScope()} {
		got, err := d.GetReplication(ctx, r.ID, scope)
		if err != nil {
			t.Fatalf("GetReplication(%+v): %v", scope, err)
		}
		if got.ID != r.ID || got.Name != r.Name || got.SourceVolumeID != r.SourceVolumeID || got.KeepHourly != 2 ||
			!got.NextRunAt.Equal(r.NextRunAt) || got.NextRunAt.Location() != time.UTC || *got.SourceKey != *r.SourceKey {
			t.Errorf("GetReplication = %+v\nwant            %+v", got, r)
		}
	}
	// Another project sees nothing of it.
	_, err := d.GetReplication(ctx, r.ID, ProjectScope("p2"))
	wantErr(t, err, ErrNotFound)
	_, err = d.GetReplication(ctx, uuid.NewString(), AllProjectsScope())
	wantErr(t, err, ErrNotFound)
	_, err = d.GetReplication(ctx, r.ID, Scope{})
	wantErr(t, err, ErrInvalidArgument)

	evs, err := d.ListReplicationEvents(ctx, r.ID)
	if err != nil || len(evs) != 1 || evs[0].Kind != RepEventCreated || evs[0].RequestID != "req-rep" || !evs[0].CreatedAt.Equal(created) {
		t.Fatalf("events = %+v, %v", evs, err)
	}
	_, err = d.ListReplicationEvents(ctx, uuid.NewString())
	wantErr(t, err, ErrNotFound)

	// One live replication per source image.
	dup := newTestReplication("p2", "volume-aaa")
	wantErr(t, d.CreateReplication(ctx, dup), ErrConflict)
	other := newTestReplication("p1", "volume-aaa")
	other.SourcePool = "volumes-ssd" // another image
	mustCreateReplication(t, d, other)
	if n := countRows(t, d, &Replication{}, ""); n != 2 {
		t.Errorf("%d replications, want 2", n)
	}

	// Validation: nothing written.
	tests := []struct {
		name   string
		mutate func(*Replication)
	}{
		{"no project", func(r *Replication) { r.ProjectID = "" }},
		{"no source image", func(r *Replication) { r.SourceImage = "" }},
		{"no destination pool", func(r *Replication) { r.DestPool = "" }},
		{"zero interval", func(r *Replication) { r.IntervalSeconds = 0 }},
		{"zero rpo", func(r *Replication) { r.RPOSeconds = 0 }},
		{"keep_last 0", func(r *Replication) { r.KeepLast = 0 }},
		{"negative keep_daily", func(r *Replication) { r.KeepDaily = -1 }},
		{"negative bandwidth", func(r *Replication) { r.BandwidthLimit = -1 }},
		{"bad id", func(r *Replication) { r.ID = "nope" }},
		{"status error", func(r *Replication) { r.Status = ReplicationError }},
		{"name too long", func(r *Replication) { r.Name = strings.Repeat("é", MaxNameLength+1) }},
		{"volume id too long", func(r *Replication) { r.SourceVolumeID = strings.Repeat("v", MaxIDLength+1) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := newTestReplication("p1", "volume-bad")
			tt.mutate(bad)
			wantErr(t, d.CreateReplication(ctx, bad), ErrInvalidArgument)
		})
	}
	wantErr(t, d.CreateReplication(ctx, nil), ErrInvalidArgument)
	if n := countRows(t, d, &Replication{}, ""); n != 2 {
		t.Errorf("%d replications after invalid creates, want 2", n)
	}

	// Longest values, multibyte, fit every backend; a paused creation.
	long := newTestReplication(strings.Repeat("p", MaxIDLength), strings.Repeat("ü", MaxNameLength))
	long.Name, long.Description = strings.Repeat("é", MaxNameLength), strings.Repeat("✓", MaxDescriptionLength)
	long.SourceRegion, long.SourcePool = strings.Repeat("r", MaxNameLength), strings.Repeat("ö", MaxNameLength)
	long.UserID, long.SourceVolumeID = "u", strings.Repeat("v", MaxIDLength)
	long.Status = ReplicationPaused
	mustCreateReplication(t, d, long)
	if got := mustGetReplication(t, d, long.ID); got.Name != long.Name || got.Description != long.Description ||
		got.SourcePool != long.SourcePool || got.Status != ReplicationPaused {
		t.Errorf("long values did not round-trip")
	}
}

// Concurrent creations of one source: exactly one wins.
func contractReplicationConcurrentCreate(t *testing.T, url string) {
	ctx := testCtx(t)
	d1 := openSynced(t, url)
	d2 := openDB(t, url)
	for round := 0; round < 3; round++ {
		image := fmt.Sprintf("volume-race-%d", round)
		const n = 8
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			won  int
			errs []error
		)
		start := make(chan struct{})
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				d := d1
				if i%2 == 1 {
					d = d2
				}
				<-start
				err := d.CreateReplication(ctx, newTestReplication("p1", image))
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					won++
				} else {
					errs = append(errs, err)
				}
			}(i)
		}
		close(start)
		wg.Wait()
		if won != 1 {
			t.Fatalf("round %d: %d creations won, want 1 (%v)", round, won, errs)
		}
		for _, err := range errs {
			if !errors.Is(err, ErrConflict) {
				t.Errorf("round %d: loser error %v, want ErrConflict", round, err)
			}
		}
	}
}

func contractReplicationList(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	var p1 []string
	for i := 0; i < 13; i++ {
		project := "p1"
		if i%4 == 3 {
			project = "p2"
		}
		if i%3 != 0 { // ties in created_at every third
			clock.Advance(time.Second)
		}
		r := mustCreateReplication(t, d, newTestReplication(project, fmt.Sprintf("volume-%02d", i)))
		if project == "p1" {
			p1 = append(p1, r.ID)
		}
	}
	// Expected: created_at desc, id desc.
	all, _, err := d.ListReplications(ctx, ListOpts{Scope: ProjectScope("p1")})
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(all)
	slices.SortFunc(want, func(a, b Replication) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	var wantIDs, gotAll []string
	for i := range want {
		wantIDs = append(wantIDs, want[i].ID)
		gotAll = append(gotAll, all[i].ID)
	}
	if !slices.Equal(wantIDs, gotAll) {
		t.Errorf("order = %v\nwant    %v", gotAll, wantIDs)
	}
	sorted := slices.Clone(p1)
	slices.Sort(sorted)
	gotSorted := slices.Clone(gotAll)
	slices.Sort(gotSorted)
	if !slices.Equal(sorted, gotSorted) {
		t.Errorf("p1 sees %v, want its own %v", gotSorted, sorted)
	}
	for _, opts := range []ListOpts{
		{Scope: ProjectScope("p1"), Limit: 4},
		{Scope: ProjectScope("p1"), Limit: 3, SortKey: "name", SortDir: "asc"},
		{Scope: AllProjectsScope(), Limit: 5, SortKey: "id"},
		{Scope: AllProjectsScope(), Limit: 2, SortKey: "updated_at", SortDir: "asc"},
	} {
		var paged []string
		marker := ""
		for pages := 0; ; pages++ {
			o := opts
			o.Marker = marker
			items, more, err := d.ListReplications(ctx, o)
			if err != nil {
				t.Fatalf("ListReplications(%+v): %v", o, err)
			}
			if len(items) > opts.Limit || (more && len(items) != opts.Limit) {
				t.Fatalf("page of %d (more %v) for limit %d", len(items), more, opts.Limit)
			}
			for _, r := range items {
				paged = append(paged, r.ID)
			}
			if !more {
				break
			}
			marker = items[len(items)-1].ID
			if pages > 20 {
				t.Fatal("paging does not end")
			}
		}
		o := opts
		o.Limit = 0
		one, _, err := d.ListReplications(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		var oneIDs []string
		for _, r := range one {
			oneIDs = append(oneIDs, r.ID)
		}
		if !slices.Equal(paged, oneIDs) {
			t.Errorf("%+v: pages give %v\none page gives %v", opts, paged, oneIDs)
		}
	}
	// The other project's marker is not found; filters for transfers refused.
	_, _, err = d.ListReplications(ctx, ListOpts{Scope: ProjectScope("p2"), Marker: p1[0]})
	wantErr(t, err, ErrMarkerNotFound)
	_, _, err = d.ListReplications(ctx, ListOpts{Scope: ProjectScope("p1"), SortKey: "size"})
	wantErr(t, err, ErrInvalidSort)
	_, _, err = d.ListReplications(ctx, ListOpts{Scope: ProjectScope("p1"), Status: StatusQueued})
	wantErr(t, err, ErrInvalidArgument)
	_, _, err = d.ListReplications(ctx, ListOpts{Scope: ProjectScope("p1"), Limit: -1})
	wantErr(t, err, ErrInvalidArgument)
	_, _, err = d.ListReplications(ctx, ListOpts{})
	wantErr(t, err, ErrInvalidArgument)
	if items, _, err := d.ListReplications(ctx, ListOpts{Scope: AllProjectsScope(), DestRegion: "RegionThree"}); err != nil || len(items) != 0 {
		t.Errorf("dest region filter: %d, %v", len(items), err)
	}
}

func contractReplicationUpdateStatus(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	r := mustCreateReplication(t, d, newTestReplication("p1", "volume-upd"))

	clock.Advance(time.Minute)
	got, err := d.UpdateReplication(ctx, r.ID, ProjectScope("p1"), ReplicationFields{
		Name: ptr("renamed"), IntervalSeconds: ptr(30), KeepDaily: ptr(7), BandwidthLimit: ptr(int64(1 << 20)),
	}, ReplicationEventInput{Kind: RepEventUpdated, Message: "interval 30", RequestID: "req-u"})
	if err != nil {
		t.Fatalf("UpdateReplication: %v", err)
	}
	if got.Name != "renamed" || got.IntervalSeconds != 30 || got.KeepDaily != 7 || got.BandwidthLimit != 1<<20 ||
		got.RPOSeconds != r.RPOSeconds || got.KeepLast != r.KeepLast || !got.UpdatedAt.After(r.UpdatedAt) {
		t.Errorf("updated = %+v", got)
	}
	if kinds := repEventKinds(t, d, r.ID); !slices.Equal(kinds, []ReplicationEventKind{RepEventCreated, RepEventUpdated}) {
		t.Errorf("events = %v", kinds)
	}
	_, err = d.UpdateReplication(ctx, r.ID, ProjectScope("p2"), ReplicationFields{Name: ptr("x")}, ReplicationEventInput{})
	wantErr(t, err, ErrNotFound)
	for _, f := range []ReplicationFields{
		{IntervalSeconds: ptr(0)}, {RPOSeconds: ptr(-5)}, {KeepLast: ptr(0)}, {KeepHourly: ptr(-1)},
		{BandwidthLimit: ptr(int64(-1))}, {Name: ptr(strings.Repeat("n", MaxNameLength+1))},
	} {
		_, err := d.UpdateReplication(ctx, r.ID, ProjectScope("p1"), f, ReplicationEventInput{Kind: RepEventUpdated})
		wantErr(t, err, ErrInvalidArgument)
	}
	if kinds := repEventKinds(t, d, r.ID); len(kinds) != 2 {
		t.Errorf("refused updates recorded events: %v", kinds)
	}

	// Sync: next_run_at = now, only when active.
	now := clock.Peek().Add(-time.Second)
	got, err = d.UpdateReplication(ctx, r.ID, ProjectScope("p1"), ReplicationFields{NextRunAt: &now, ExpectStatus: []ReplicationStatus{ReplicationActive}}, ReplicationEventInput{})
	if err != nil || !got.NextRunAt.Equal(now) {
		t.Fatalf("sync: %+v, %v", got, err)
	}

	// Pause, then sync is refused; resume; error; resume.
	got, err = d.SetReplicationStatus(ctx, r.ID, ProjectScope("p1"), ReplicationPaused, []ReplicationStatus{ReplicationActive}, ReplicationEventInput{RequestID: "req-p"})
	if err != nil || got.Status != ReplicationPaused {
		t.Fatalf("pause: %+v, %v", got, err)
	}
	_, err = d.UpdateReplication(ctx, r.ID, ProjectScope("p1"), ReplicationFields{NextRunAt: &now, ExpectStatus: []ReplicationStatus{ReplicationActive}}, ReplicationEventInput{})
	wantErr(t, err, ErrConflict)
	_, err = d.SetReplicationStatus(ctx, r.ID, ProjectScope("p1"), ReplicationPaused, nil, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidTransition) // paused → paused
	_, err = d.SetReplicationStatus(ctx, r.ID, ProjectScope("p2"), ReplicationActive, nil, ReplicationEventInput{})
	wantErr(t, err, ErrNotFound)
	_, err = d.SetReplicationStatus(ctx, r.ID, ProjectScope("p1"), ReplicationActive, []ReplicationStatus{ReplicationError}, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidTransition) // not in expectFrom
	_, err = d.SetReplicationStatus(ctx, r.ID, ProjectScope("p1"), ReplicationDeleting, nil, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidArgument)
	got, err = d.SetReplicationStatus(ctx, r.ID, ProjectScope("p1"), ReplicationActive, nil, ReplicationEventInput{})
	if err != nil || got.Status != ReplicationActive {
		t.Fatalf("resume: %+v, %v", got, err)
	}
	got, err = d.SetReplicationStatus(ctx, r.ID, AllProjectsScope(), ReplicationError, nil, ReplicationEventInput{Message: "source volume gone"})
	if err != nil || got.Status != ReplicationError || got.LastError == nil || *got.LastError != "source volume gone" {
		t.Fatalf("error: %+v, %v", got, err)
	}
	_, err = d.SetReplicationStatus(ctx, r.ID, ProjectScope("p1"), ReplicationPaused, nil, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidTransition) // error → paused
	want := []ReplicationEventKind{RepEventCreated, RepEventUpdated, RepEventPaused, RepEventResumed, RepEventError}
	if kinds := repEventKinds(t, d, r.ID); !slices.Equal(kinds, want) {
		t.Errorf("events = %v, want %v", kinds, want)
	}

	// RecordReplicationEvent.
	if err := d.RecordReplicationEvent(ctx, ReplicationEvent{ReplicationID: r.ID, Kind: RepEventDrillFailed, Message: "m", RequestID: "req-x"}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, d.RecordReplicationEvent(ctx, ReplicationEvent{ReplicationID: uuid.NewString(), Kind: RepEventError}), ErrNotFound)
	wantErr(t, d.RecordReplicationEvent(ctx, ReplicationEvent{ReplicationID: r.ID}), ErrInvalidArgument)
	wantErr(t, d.RecordReplicationEvent(ctx, ReplicationEvent{ReplicationID: r.ID, Kind: ReplicationEventKind(strings.Repeat("k", 33))}), ErrInvalidArgument)
	if kinds := repEventKinds(t, d, r.ID); kinds[len(kinds)-1] != RepEventDrillFailed || len(kinds) != len(want)+1 {
		t.Errorf("events = %v", kinds)
	}
}

func contractReplicationStartCycle(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	t0 := clock.Peek()
	r := mustCreateReplication(t, d, newTestReplication("p1", "volume-cyc"))
	other := mustCreateReplication(t, d, newTestReplication("p1", "volume-not-due"))
	interval := time.Minute
	future := t0.Add(time.Hour)
	if _, err := d.UpdateReplication(ctx, other.ID, AllProjectsScope(), ReplicationFields{NextRunAt: &future}, ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	paused := mustCreateReplication(t, d, newTestReplication("p1", "volume-paused"))
	if _, err := d.SetReplicationStatus(ctx, paused.ID, AllProjectsScope(), ReplicationPaused, nil, ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}

	due, err := d.DueReplications(ctx, t0, 10)
	if err != nil || len(due) != 1 || due[0].ID != r.ID {
		t.Fatalf("DueReplications = %+v, %v; want only %s", due, err, r.ID)
	}

	// The first cycle starts.
	tr := cycleTransfer(r)
	started, skipped, err := d.StartCycle(ctx, r.ID, t0, t0.Add(interval), tr, startMsg)
	if err != nil || skipped || started == nil || started.ID != tr.ID {
		t.Fatalf("StartCycle = %+v, %v, %v", started, skipped, err)
	}
	if started.ReplicationID != r.ID || started.Status != StatusQueued || started.Epoch != 1 {
		t.Errorf("cycle transfer = %+v", started)
	}
	got := mustGetReplication(t, d, r.ID)
	if got.LastTransferID != tr.ID || !got.NextRunAt.Equal(t0.Add(interval)) {
		t.Errorf("after start: last %q next %v", got.LastTransferID, got.NextRunAt)
	}
	if n := countRows(t, d, &OutboxMessage{}, "payload LIKE ?", "%"+tr.ID+"%"); n != 1 {
		t.Errorf("%d start messages, want 1", n)
	}
	if got, err := d.GetTransfer(ctx, tr.ID, ProjectScope("p1")); err != nil || got.ReplicationID != r.ID {
		t.Errorf("GetTransfer = %+v, %v", got, err)
	}
	// A stale call for the same tick does nothing.
	started, skipped, err = d.StartCycle(ctx, r.ID, t0, t0.Add(interval), cycleTransfer(r), startMsg)
	if err != nil || skipped || started != nil {
		t.Fatalf("stale StartCycle = %+v, %v, %v", started, skipped, err)
	}
	if due, _ := d.DueReplications(ctx, t0.Add(interval/2), 10); len(due) != 0 {
		t.Errorf("due before next run: %+v", due)
	}

	// Next tick, the cycle still runs: a skip.
	mustTransition(t, d, tr.ID, StatusAccepted, TransitionOpts{})
	t1 := t0.Add(interval)
	started, skipped, err = d.StartCycle(ctx, r.ID, t1, t1.Add(interval), cycleTransfer(r), startMsg)
	if err != nil || !skipped || started != nil {
		t.Fatalf("StartCycle while running = %+v, %v, %v", started, skipped, err)
	}
	got = mustGetReplication(t, d, r.ID)
	if got.CyclesSkipped != 1 || got.LastTransferID != tr.ID || !got.NextRunAt.Equal(t1.Add(interval)) {
		t.Errorf("after skip: %+v", got)
	}

	// The cycle completes; the next tick starts a new one.
	runCycle(t, d, &Transfer{ID: tr.ID}, 1000, nil)
	t2 := t1.Add(interval)
	tr2 := cycleTransfer(r)
	started, skipped, err = d.StartCycle(ctx, r.ID, t2, t2.Add(interval), tr2, startMsg)
	if err != nil || skipped || started == nil {
		t.Fatalf("StartCycle after completion = %+v, %v, %v", started, skipped, err)
	}
	// A queued cycle (no agent yet) also blocks the next one.
	t3 := t2.Add(interval)
	if _, skipped, err := d.StartCycle(ctx, r.ID, t3, t3.Add(interval), cycleTransfer(r), startMsg); err != nil || !skipped {
		t.Fatalf("StartCycle while queued: skipped %v, %v", skipped, err)
	}
	// A failed cycle does not.
	mustTransition(t, d, tr2.ID, StatusError, TransitionOpts{Error: "agent lost"})
	t4 := t3.Add(interval)
	if started, _, err := d.StartCycle(ctx, r.ID, t4, t4.Add(interval), cycleTransfer(r), nil); err != nil || started == nil {
		t.Fatalf("StartCycle after failure: %+v, %v", started, err)
	}
	kinds := repEventKinds(t, d, r.ID)
	if countKind(kinds, RepEventCycleStarted) != 3 || countKind(kinds, RepEventCycleSkipped) != 2 {
		t.Errorf("events = %v", kinds)
	}
	// The cycles are listed with their replication.
	cycles, _, err := d.ListTransfers(ctx, ListOpts{Scope: ProjectScope("p1"), ReplicationID: r.ID})
	if err != nil || len(cycles) != 3 {
		t.Fatalf("cycles listed: %d, %v", len(cycles), err)
	}
	for _, c := range cycles {
		if c.ReplicationID != r.ID {
			t.Errorf("listed %s of replication %q", c.ID, c.ReplicationID)
		}
	}
	mustCreate(t, d, newTestTransfer("p1", "ordinary"))
	if cycles, _, _ := d.ListTransfers(ctx, ListOpts{Scope: ProjectScope("p1"), ReplicationID: r.ID}); len(cycles) != 3 {
		t.Errorf("an ordinary transfer is listed as a cycle")
	}

	// A paused replication, and one not due, start nothing.
	for _, id := range []string{paused.ID, other.ID} {
		if s, sk, err := d.StartCycle(ctx, id, t0, t0.Add(interval), cycleTransfer(r), startMsg); err != nil || s != nil || sk {
			t.Errorf("StartCycle(%s) = %+v, %v, %v", id, s, sk, err)
		}
	}
	// Bad calls.
	_, _, err = d.StartCycle(ctx, r.ID, t4, t4, cycleTransfer(r), startMsg)
	wantErr(t, err, ErrInvalidArgument)
	_, _, err = d.StartCycle(ctx, uuid.NewString(), t4, t4.Add(interval), cycleTransfer(r), startMsg)
	wantErr(t, err, ErrNotFound)
	// A failing message builder leaves nothing behind.
	before := countRows(t, d, &Transfer{}, "")
	r5 := mustCreateReplication(t, d, newTestReplication("p1", "volume-msg-fails"))
	_, _, err = d.StartCycle(ctx, r5.ID, t4, t4.Add(interval), cycleTransfer(r5), func(*Transfer) (*OutboxMessage, error) { return nil, errors.New("no grant key") })
	if err == nil || countRows(t, d, &Transfer{}, "") != before || mustGetReplication(t, d, r5.ID).LastTransferID != "" {
		t.Errorf("failed message builder: %v; transfers %d → %d", err, before, countRows(t, d, &Transfer{}, ""))
	}
}

// Two schedulers (two pools, as two ferry-api processes) on the same due
// ticks: per tick, exactly one cycle or one skip.
func contractReplicationConcurrentStartCycle(t *testing.T, url string) {
	ctx := testCtx(t)
	d1 := openSynced(t, url)
	d2 := openDB(t, url)
	r := mustCreateReplication(t, d1, newTestReplication("p1", "volume-two-schedulers"))
	interval := time.Minute
	tick := r.NextRunAt
	var wantStarted, wantSkipped int
	var last *Transfer
	for round := 0; round < 8; round++ {
		// Odd rounds: the last cycle still runs, so the tick is a skip.
		if last != nil && round%2 == 0 {
			runCycle(t, d1, last, int64(round), nil)
		}
		const n = 6
		var (
			wg                       sync.WaitGroup
			mu                       sync.Mutex
			starts, skips, noops     int
			errs                     []error
			startedIDs               []string
			start                    = make(chan struct{})
			thisTick, next           = tick, tick.Add(interval)
			replicationBefore        = mustGetReplication(t, d1, r.ID)
			transfersBefore          = countRows(t, d1, &Transfer{}, "replication_id = ?", r.ID)
			outboxBefore             = countRows(t, d1, &OutboxMessage{}, "")
			eventsBefore             = len(repEventKinds(t, d1, r.ID))
			expectSkip               = last != nil && round%2 == 1
			expectedSkippedAfter     = replicationBefore.CyclesSkipped
			expectedLastTransferSame = expectSkip
		)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				d := d1
				if i%2 == 1 {
					d = d2
				}
				<-start
				s, sk, err := d.StartCycle(ctx, r.ID, thisTick, next, cycleTransfer(r), startMsg)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					errs = append(errs, err)
				case s != nil:
					starts++
					startedIDs = append(startedIDs, s.ID)
				case sk:
					skips++
				default:
					noops++
				}
			}(i)
		}
		close(start)
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("round %d: errors %v", round, errs)
		}
		if starts+skips != 1 || noops != n-1 {
			t.Fatalf("round %d: %d started, %d skipped, %d did nothing; want one start or skip", round, starts, skips, noops)
		}
		if expectSkip != (skips == 1) {
			t.Fatalf("round %d: skipped %d, want skip %v", round, skips, expectSkip)
		}
		got := mustGetReplication(t, d1, r.ID)
		if !got.NextRunAt.Equal(next) {
			t.Errorf("round %d: next_run_at %v, want %v", round, got.NextRunAt, next)
		}
		gotTransfers := countRows(t, d1, &Transfer{}, "replication_id = ?", r.ID)
		gotOutbox := countRows(t, d1, &OutboxMessage{}, "")
		if skips == 1 {
			expectedSkippedAfter++
			wantSkipped++
			if gotTransfers != transfersBefore || gotOutbox != outboxBefore || got.CyclesSkipped != expectedSkippedAfter {
				t.Errorf("round %d: skip wrote transfers %d→%d, outbox %d→%d, skipped %d", round, transfersBefore, gotTransfers, outboxBefore, gotOutbox, got.CyclesSkipped)
			}
		} else {
			wantStarted++
			last = &Transfer{ID: startedIDs[0]}
			if gotTransfers != transfersBefore+1 || gotOutbox != outboxBefore+1 || got.LastTransferID != startedIDs[0] {
				t.Errorf("round %d: start wrote transfers %d→%d, outbox %d→%d, last %s", round, transfersBefore, gotTransfers, outboxBefore, gotOutbox, got.LastTransferID)
			}
		}
		if expectedLastTransferSame && got.LastTransferID != replicationBefore.LastTransferID {
			t.Errorf("round %d: a skip changed last_transfer_id", round)
		}
		if evs := len(repEventKinds(t, d1, r.ID)); evs != eventsBefore+1 {
			t.Errorf("round %d: %d new events, want 1", round, evs-eventsBefore)
		}
		tick = next
	}
	got := mustGetReplication(t, d1, r.ID)
	if got.CyclesSkipped != int64(wantSkipped) || countRows(t, d1, &Transfer{}, "replication_id = ?", r.ID) != int64(wantStarted) {
		t.Errorf("in all: %d skipped (want %d), %d cycles (want %d)", got.CyclesSkipped, wantSkipped,
			countRows(t, d1, &Transfer{}, "replication_id = ?", r.ID), wantStarted)
	}
}

func contractReplicationCycleOutcome(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	r := mustCreateReplication(t, d, newTestReplication("p1", "volume-outcome"))
	tick := r.NextRunAt
	start := func() *Transfer {
		t.Helper()
		tick = tick.Add(time.Minute)
		s, _, err := d.StartCycle(ctx, r.ID, tick.Add(-time.Minute), tick, cycleTransfer(r), startMsg)
		if err != nil || s == nil {
			t.Fatalf("StartCycle: %+v, %v", s, err)
		}
		return s
	}

	// Cycle 1 completes with the source snapshot's time.
	c1 := start()
	snap1 := time.Date(2030, 1, 2, 3, 0, 0, 987654321, time.UTC)
	clock.Advance(time.Second)
	done := runCycle(t, d, c1, 1<<20, &CycleOutcome{SnapshotAt: snap1, Size: 10 << 30})
	got := mustGetReplication(t, d, r.ID)
	if got.CyclesCompleted != 1 || got.PointsCount != 1 || got.BytesLastCycle != 1<<20 || got.BytesReplicated != 1<<20 ||
		got.LastSyncAt == nil || !got.LastSyncAt.Equal(snap1.Truncate(time.Microsecond)) || got.LastError != nil {
		t.Fatalf("after cycle 1: %+v", got)
	}
	points, err := d.ListPoints(ctx, r.ID)
	if err != nil || len(points) != 1 {
		t.Fatalf("points = %+v, %v", points, err)
	}
	if p := points[0]; p.Name != "ferry-"+c1.ID || p.TransferID != c1.ID || p.Digest != done.Digest || p.Bytes != 1<<20 ||
		p.Size != 10<<30 || !p.CreatedAt.Equal(snap1.Truncate(time.Microsecond)) || p.CreatedAt.Location() != time.UTC {
		t.Errorf("point = %+v", p)
	}
	// The same report again is refused and counts nothing twice.
	_, err = d.TransitionTransfer(ctx, c1.ID, StatusCompleted, TransitionOpts{Cycle: &CycleOutcome{SnapshotAt: snap1}})
	wantErr(t, err, ErrInvalidTransition)
	_, err = d.TransitionTransfer(ctx, c1.ID, StatusError, TransitionOpts{Error: "late failure"})
	wantErr(t, err, ErrInvalidTransition)
	if again := mustGetReplication(t, d, r.ID); again.CyclesCompleted != 1 || again.BytesReplicated != 1<<20 || again.CyclesFailed != 0 {
		t.Errorf("a refused repeat changed the summary: %+v", again)
	}

	// Cycle 2 fails, then cycle 3 is cancelled.
	c2 := start()
	mustTransition(t, d, c2.ID, StatusAccepted, TransitionOpts{})
	mustTransition(t, d, c2.ID, StatusError, TransitionOpts{Error: "rbd: connection lost"})
	got = mustGetReplication(t, d, r.ID)
	if got.CyclesFailed != 1 || got.LastError == nil || *got.LastError != "rbd: connection lost" || got.CyclesCompleted != 1 || got.PointsCount != 1 {
		t.Errorf("after failure: %+v", got)
	}
	c3 := start()
	mustTransition(t, d, c3.ID, StatusCancelled, TransitionOpts{})
	if got = mustGetReplication(t, d, r.ID); got.CyclesFailed != 2 || got.LastError == nil {
		t.Errorf("after cancel: %+v", got)
	}

	// Cycles 4 and 5 complete; 5 reports point 1 removed. No snapshot
	// time: the point is dated by started_at. Cycle 5's snapshot is older
	// than cycle 4's (clock skew): last_sync_at keeps the newest.
	c4 := start()
	snap4 := snap1.Add(2 * time.Hour)
	runCycle(t, d, c4, 300, &CycleOutcome{SnapshotAt: snap4})
	c5 := start()
	d5 := runCycle(t, d, c5, 200, &CycleOutcome{Removed: []string{"ferry-" + c1.ID, "ferry-" + c5.ID, "not-a-point"}})
	got = mustGetReplication(t, d, r.ID)
	if got.CyclesCompleted != 3 || got.PointsCount != 2 || got.BytesLastCycle != 200 || got.BytesReplicated != 1<<20+500 ||
		got.LastError != nil || !got.LastSyncAt.Equal(maxTime(snap4, *d5.StartedAt).Truncate(time.Microsecond)) {
		t.Errorf("after cycle 5: %+v (last sync %v)", got, got.LastSyncAt)
	}
	points, _ = d.ListPoints(ctx, r.ID)
	var names []string
	for _, p := range points {
		names = append(names, p.Name)
	}
	wantNames := []string{"ferry-" + c4.ID, "ferry-" + c5.ID}
	if !points[0].CreatedAt.After(points[1].CreatedAt) && !points[0].CreatedAt.Equal(points[1].CreatedAt) {
		t.Errorf("points not newest first: %+v", points)
	}
	slices.Sort(names)
	slices.Sort(wantNames)
	if !slices.Equal(names, wantNames) {
		t.Errorf("points = %v, want %v", names, wantNames)
	}
	for _, p := range points {
		if p.Name == "ferry-"+c4.ID && (p.Size != 1<<30 || !p.CreatedAt.Equal(snap4.Truncate(time.Microsecond))) {
			t.Errorf("point of cycle 4 = %+v", p) // no Size reported: bytes_total
		}
		if p.Name == "ferry-"+c5.ID && !p.CreatedAt.Equal(*d5.StartedAt) {
			t.Errorf("point of cycle 5 = %+v, want dated by started_at %v", p, d5.StartedAt)
		}
	}
	kinds := repEventKinds(t, d, r.ID)
	if countKind(kinds, RepEventCycleCompleted) != 3 || countKind(kinds, RepEventCycleFailed) != 2 || countKind(kinds, RepEventPruned) != 1 {
		t.Errorf("events = %v", kinds)
	}
	evs, _ := d.ListReplicationEvents(ctx, r.ID)
	if last := evs[len(evs)-1]; last.Kind != RepEventPruned || last.TransferID != c5.ID || !strings.Contains(last.Message, "ferry-"+c1.ID) || strings.Contains(last.Message, "not-a-point") {
		t.Errorf("pruned event = %+v", last)
	}
	// A retried failed cycle that completes counts once more.
	mustTransition(t, d, c2.ID, StatusQueued, TransitionOpts{})
	runCycle(t, d, c2, 10, nil)
	if got = mustGetReplication(t, d, r.ID); got.CyclesCompleted != 4 || got.PointsCount != 3 || got.CyclesFailed != 2 {
		t.Errorf("after the retry: %+v", got)
	}
	// An ordinary transfer's completion touches no replication.
	o := mustCreate(t, d, newTestTransfer("p1", "plain"))
	runCycle(t, d, o, 5, &CycleOutcome{Removed: []string{"ferry-" + c4.ID}})
	if after := mustGetReplication(t, d, r.ID); after.CyclesCompleted != 4 || after.PointsCount != 3 {
		t.Errorf("an ordinary transfer changed the replication: %+v", after)
	}
	_, err = d.ListPoints(ctx, uuid.NewString())
	wantErr(t, err, ErrNotFound)
}

func contractReplicationRPO(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	r := mustCreateReplication(t, d, newTestReplication("p1", "volume-rpo"))
	at := time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)
	notifications := 0
	notify := func(kind string) func() (*OutboxMessage, error) {
		return func() (*OutboxMessage, error) {
			notifications++
			return &OutboxMessage{Exchange: "ferry", RoutingKey: "notifications.warn", Payload: `{"event_type":"` + kind + `"}`}, nil
		}
	}
	steps := []struct {
		breached, changed bool
	}{{false, false}, {true, true}, {true, false}, {true, false}, {false, true}, {false, false}, {true, true}}
	for i, s := range steps {
		kind := "replication.rpo_recovered"
		if s.breached {
			kind = "replication.rpo_breached"
		}
		changed, err := d.SetRPOBreached(ctx, r.ID, s.breached, at.Add(time.Duration(i)*time.Minute), fmt.Sprintf("step %d", i), notify(kind))
		if err != nil || changed != s.changed {
			t.Fatalf("step %d: SetRPOBreached(%v) = %v, %v; want changed %v", i, s.breached, changed, err, s.changed)
		}
		got := mustGetReplication(t, d, r.ID)
		if (got.RPOBreachedAt != nil) != s.breached {
			t.Errorf("step %d: rpo_breached_at = %v", i, got.RPOBreachedAt)
		}
	}
	// The breach keeps its start (step 1), not a later evaluation's.
	if got := mustGetReplication(t, d, r.ID); !got.RPOBreachedAt.Equal(at.Add(6 * time.Minute)) {
		t.Errorf("rpo_breached_at = %v", got.RPOBreachedAt)
	}
	kinds := repEventKinds(t, d, r.ID)
	if countKind(kinds, RepEventRPOBreached) != 2 || countKind(kinds, RepEventRPORecovered) != 1 {
		t.Errorf("events = %v", kinds)
	}
	if notifications != 3 || countRows(t, d, &OutboxMessage{}, "routing_key = ?", "notifications.warn") != 3 ||
		countRows(t, d, &OutboxMessage{}, "payload LIKE ?", "%rpo_recovered%") != 1 {
		t.Errorf("notifications built %d, outbox rows %d", notifications, countRows(t, d, &OutboxMessage{}, ""))
	}
	// A failing builder rolls the edge back; nil builder writes no row.
	_, err := d.SetRPOBreached(ctx, r.ID, false, at, "x", func() (*OutboxMessage, error) { return nil, errors.New("boom") })
	if err == nil || mustGetReplication(t, d, r.ID).RPOBreachedAt == nil {
		t.Errorf("failed notification: %v", err)
	}
	if changed, err := d.SetRPOBreached(ctx, r.ID, false, at, "recovered", nil); err != nil || !changed {
		t.Errorf("nil builder: %v, %v", changed, err)
	}
	if countRows(t, d, &OutboxMessage{}, "") != 3 {
		t.Errorf("outbox rows = %d", countRows(t, d, &OutboxMessage{}, ""))
	}
	_, err = d.SetRPOBreached(ctx, uuid.NewString(), true, at, "", nil)
	wantErr(t, err, ErrNotFound)
}

func contractReplicationPrune(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	ra := mustCreateReplication(t, d, newTestReplication("p1", "volume-prune-a"))
	rb := mustCreateReplication(t, d, newTestReplication("p1", "volume-prune-b"))
	ticks := map[string]time.Time{ra.ID: ra.NextRunAt, rb.ID: rb.NextRunAt}
	cycle := func(r *Replication, complete bool) *Transfer {
		t.Helper()
		now := ticks[r.ID]
		ticks[r.ID] = now.Add(time.Minute)
		s, _, err := d.StartCycle(ctx, r.ID, now, now.Add(time.Minute), cycleTransfer(r), startMsg)
		if err != nil || s == nil {
			t.Fatalf("StartCycle: %+v, %v", s, err)
		}
		clock.Advance(time.Minute)
		if complete {
			return runCycle(t, d, s, 100, nil)
		}
		return mustTransition(t, d, s.ID, StatusError, TransitionOpts{Error: "boom"})
	}
	var aDone []*Transfer
	for i := 0; i < 4; i++ {
		aDone = append(aDone, cycle(ra, true))
	}
	failed := cycle(ra, false)
	aLast := cycle(ra, true)
	bOnly := cycle(rb, true)
	plain := runCycle(t, d, mustCreate(t, d, newTestTransfer("p1", "plain")), 1, nil)
	summary := mustGetReplication(t, d, ra.ID)
	cutoff := clock.Peek().Add(time.Hour)

	// Limit 2: the two oldest go first.
	n, err := d.PruneCycleTransfers(ctx, cutoff, 2)
	if err != nil || n != 2 {
		t.Fatalf("PruneCycleTransfers(limit 2) = %d, %v", n, err)
	}
	for i, tr := range aDone {
		_, err := d.GetTransfer(ctx, tr.ID, AllProjectsScope())
		if gone := errors.Is(err, ErrNotFound); gone != (i < 2) {
			t.Errorf("cycle %d gone %v after the first prune", i, gone)
		}
	}
	n, err = d.PruneCycleTransfers(ctx, cutoff, 0)
	if err != nil || n != 2 {
		t.Fatalf("PruneCycleTransfers = %d, %v", n, err)
	}
	// Kept: each replication's last cycle, the failed one, the ordinary transfer.
	for _, tr := range []*Transfer{failed, aLast, bOnly, plain} {
		if _, err := d.GetTransfer(ctx, tr.ID, AllProjectsScope()); err != nil {
			t.Errorf("%s (%s) pruned: %v", tr.ID, tr.Name, err)
		}
	}
	for _, tr := range aDone {
		if n := countRows(t, d, &TransferEvent{}, "transfer_id = ?", tr.ID); n != 0 {
			t.Errorf("%d transfer events of a pruned cycle left", n)
		}
		if n := countRows(t, d, &ReplicationEvent{}, "transfer_id = ?", tr.ID); n != 0 {
			t.Errorf("%d replication events of a pruned cycle left", n)
		}
	}
	if n := countRows(t, d, &ReplicationEvent{}, "transfer_id = ?", aLast.ID); n == 0 {
		t.Error("the kept cycle's events went")
	}
	after := mustGetReplication(t, d, ra.ID)
	if after.CyclesCompleted != summary.CyclesCompleted || after.CyclesFailed != 1 || after.BytesReplicated != summary.BytesReplicated ||
		after.LastTransferID != aLast.ID || after.PointsCount != summary.PointsCount {
		t.Errorf("the summary changed with pruning: %+v", after)
	}
	if n, err := d.PruneCycleTransfers(ctx, cutoff, 0); err != nil || n != 0 {
		t.Errorf("second prune = %d, %v", n, err)
	}
	// The failed cycle goes once the garbage collector sent its clean-up.
	if err := d.MarkCleaned(ctx, failed.ID, *failed.FinishedAt); err != nil {
		t.Fatal(err)
	}
	if n, err := d.PruneCycleTransfers(ctx, cutoff, 0); err != nil || n != 1 {
		t.Errorf("prune of the cleaned failed cycle = %d, %v", n, err)
	}
	if _, err := d.GetTransfer(ctx, failed.ID, AllProjectsScope()); !errors.Is(err, ErrNotFound) {
		t.Errorf("the cleaned failed cycle was kept: %v", err)
	}
	if after := mustGetReplication(t, d, ra.ID); after.CyclesFailed != 1 {
		t.Errorf("cycles_failed after pruning the failed cycle: %d", after.CyclesFailed)
	}
	// Nothing finished before the cutoff: nothing goes.
	c := cycle(ra, true)
	if n, err := d.PruneCycleTransfers(ctx, *aLast.FinishedAt, 0); err != nil || n != 0 {
		t.Errorf("prune before the finish = %d, %v", n, err)
	}
	if n, err := d.PruneCycleTransfers(ctx, c.FinishedAt.Add(time.Second), 0); err != nil || n != 1 {
		t.Errorf("prune of the previous last cycle = %d, %v (want aLast, now superseded)", n, err)
	}
}

func contractReplicationDelete(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	r := mustCreateReplication(t, d, newTestReplication("p1", "volume-del"))
	keep := mustCreateReplication(t, d, newTestReplication("p2", "volume-keep"))
	s, _, err := d.StartCycle(ctx, r.ID, r.NextRunAt, r.NextRunAt.Add(time.Minute), cycleTransfer(r), startMsg)
	if err != nil {
		t.Fatal(err)
	}
	runCycle(t, d, s, 10, nil)
	if stats, err := d.ReplicationStats(ctx); err != nil || len(stats) != 2 {
		t.Fatalf("ReplicationStats = %d, %v", len(stats), err)
	}

	_, err = d.DeleteReplication(ctx, r.ID, ProjectScope("p2"), false, nil)
	wantErr(t, err, ErrNotFound)
	wantErr(t, d.FinishDeleteReplication(ctx, r.ID), ErrConflict) // not deleting
	// A failing builder leaves the replication as it was.
	_, err = d.DeleteReplication(ctx, r.ID, ProjectScope("p1"), false, func(*Replication, []ReplicationPoint) ([]*OutboxMessage, error) {
		return nil, errors.New("boom")
	})
	if err == nil || mustGetReplication(t, d, r.ID).Status != ReplicationActive {
		t.Fatalf("failed clean-up builder: %v", err)
	}
	var seenPoints []ReplicationPoint
	got, err := d.DeleteReplication(ctx, r.ID, ProjectScope("p1"), true, func(rr *Replication, ps []ReplicationPoint) ([]*OutboxMessage, error) {
		seenPoints = ps
		return []*OutboxMessage{
			{RoutingKey: "agent." + rr.SourceRegion, Payload: `{"method":"replication.cleanup","side":"source"}`},
			{RoutingKey: "agent." + rr.DestRegion, Payload: `{"method":"replication.cleanup","side":"destination"}`},
		}, nil
	})
	if err != nil || got.Status != ReplicationDeleting || !got.KeepReplica || got.SourceKey != nil {
		t.Fatalf("DeleteReplication = %+v, %v", got, err)
	}
	if len(seenPoints) != 1 || seenPoints[0].TransferID != s.ID {
		t.Errorf("clean-up saw points %+v", seenPoints)
	}
	if n := countRows(t, d, &OutboxMessage{}, "payload LIKE ?", "%replication.cleanup%"); n != 2 {
		t.Errorf("%d clean-up messages, want 2", n)
	}
	_, err = d.DeleteReplication(ctx, r.ID, ProjectScope("p1"), false, nil)
	wantErr(t, err, ErrInvalidTransition)
	_, err = d.UpdateReplication(ctx, r.ID, ProjectScope("p1"), ReplicationFields{Name: ptr("x")}, ReplicationEventInput{})
	wantErr(t, err, ErrConflict)
	_, err = d.SetReplicationStatus(ctx, r.ID, ProjectScope("p1"), ReplicationActive, nil, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidTransition)
	if due, _ := d.DueReplications(ctx, r.NextRunAt.Add(time.Hour), 0); len(due) != 1 || due[0].ID != keep.ID {
		t.Errorf("a deleting replication is due: %+v", due)
	}
	if stats, _ := d.ReplicationStats(ctx); len(stats) != 1 || stats[0].ID != keep.ID {
		t.Errorf("ReplicationStats lists the deleting one: %+v", stats)
	}
	// The source may be protected anew while the old one is deleting.
	again := mustCreateReplication(t, d, newTestReplication("p1", "volume-del"))
	deleting, err := d.DeletingReplications(ctx, 0)
	if err != nil || len(deleting) != 1 || deleting[0].ID != r.ID {
		t.Fatalf("DeletingReplications = %+v, %v", deleting, err)
	}

	if err := d.FinishDeleteReplication(ctx, r.ID); err != nil {
		t.Fatalf("FinishDeleteReplication: %v", err)
	}
	_, err = d.GetReplication(ctx, r.ID, AllProjectsScope())
	wantErr(t, err, ErrNotFound)
	for _, m := range []any{&ReplicationPoint{}, &ReplicationEvent{}, &Drill{}} {
		if n := countRows(t, d, m, "replication_id = ?", r.ID); n != 0 {
			t.Errorf("%d %T rows left", n, m)
		}
	}
	if _, err := d.GetTransfer(ctx, s.ID, AllProjectsScope()); err != nil {
		t.Errorf("the cycle transfer went with the replication: %v", err)
	}
	wantErr(t, d.FinishDeleteReplication(ctx, r.ID), ErrNotFound)
	if mustGetReplication(t, d, again.ID).Status != ReplicationActive {
		t.Error("the new replication changed")
	}
}

func contractReplicationDrills(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	r := mustCreateReplication(t, d, newTestReplication("p1", "volume-drill"))
	s, _, err := d.StartCycle(ctx, r.ID, r.NextRunAt, r.NextRunAt.Add(time.Minute), cycleTransfer(r), startMsg)
	if err != nil {
		t.Fatal(err)
	}
	runCycle(t, d, s, 10, nil)
	point := "ferry-" + s.ID

	err = d.CreateDrill(ctx, &Drill{ReplicationID: r.ID, Point: "ferry-unknown"}, ReplicationEventInput{})
	wantErr(t, err, ErrNotFound)
	err = d.CreateDrill(ctx, &Drill{ReplicationID: uuid.NewString(), Point: point}, ReplicationEventInput{})
	wantErr(t, err, ErrNotFound)
	err = d.CreateDrill(ctx, &Drill{ReplicationID: r.ID}, ReplicationEventInput{})
	wantErr(t, err, ErrInvalidArgument)

	requested := clock.Peek()
	dr := &Drill{ReplicationID: r.ID, Point: point, Name: "dr test"}
	if err := d.CreateDrill(ctx, dr, ReplicationEventInput{RequestID: "req-drill"}); err != nil {
		t.Fatalf("CreateDrill: %v", err)
	}
	if dr.Status != DrillCreating || dr.ProjectID != "p1" || dr.Image != DrillImagePrefix+dr.ID || !dr.RequestedAt.Equal(requested) {
		t.Errorf("drill = %+v", dr)
	}
	clock.Advance(time.Second)
	dr2 := &Drill{ReplicationID: r.ID, Point: point}
	if err := d.CreateDrill(ctx, dr2, ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	got, err := d.GetDrill(ctx, dr.ID, ProjectScope("p1"))
	if err != nil || got.Point != point || got.Name != "dr test" {
		t.Fatalf("GetDrill = %+v, %v", got, err)
	}
	_, err = d.GetDrill(ctx, dr.ID, ProjectScope("p2"))
	wantErr(t, err, ErrNotFound)
	list, err := d.ListDrills(ctx, r.ID)
	if err != nil || len(list) != 2 || list[0].ID != dr2.ID {
		t.Fatalf("ListDrills = %+v, %v", list, err)
	}
	pending, err := d.PendingDrills(ctx, 10)
	if err != nil || len(pending) != 2 || pending[0].ID != dr.ID {
		t.Fatalf("PendingDrills = %+v, %v", pending, err)
	}
	if kinds := repEventKinds(t, d, r.ID); countKind(kinds, RepEventDrill) != 2 {
		t.Errorf("events = %v", kinds)
	}

	// The runner: ledger, volume id, available.
	ledger := clock.Peek()
	if _, err := d.UpdateDrill(ctx, dr.ID, DrillFields{RegisterStartedAt: &ledger, VolumeID: ptr("vol-123")}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(42 * time.Second)
	got, err = d.UpdateDrill(ctx, dr.ID, DrillFields{Status: ptr(DrillAvailable), RegisterStartedAt: &time.Time{}})
	if err != nil || got.Status != DrillAvailable || got.VolumeID != "vol-123" || got.RegisterStartedAt != nil || got.AvailableAt == nil {
		t.Fatalf("available: %+v, %v", got, err)
	}
	if rto, ok := got.RTO(); !ok || rto < 42*time.Second {
		t.Errorf("RTO = %v, %v", rto, ok)
	}
	_, err = d.UpdateDrill(ctx, dr.ID, DrillFields{Status: ptr(DrillError)})
	wantErr(t, err, ErrInvalidTransition)
	got, err = d.UpdateDrill(ctx, dr2.ID, DrillFields{Status: ptr(DrillError), Error: ptr("manage-existing failed")})
	if err != nil || got.Error == nil || *got.Error != "manage-existing failed" {
		t.Fatalf("error: %+v, %v", got, err)
	}
	if _, ok := got.RTO(); ok {
		t.Error("a failed drill has an RTO")
	}
	_, err = d.UpdateDrill(ctx, uuid.NewString(), DrillFields{VolumeID: ptr("x")})
	wantErr(t, err, ErrNotFound)
	if pending, _ := d.PendingDrills(ctx, 10); len(pending) != 0 {
		t.Errorf("pending after the runner: %+v", pending)
	}
	// No drill of a deleting replication.
	if _, err := d.DeleteReplication(ctx, r.ID, AllProjectsScope(), false, nil); err != nil {
		t.Fatal(err)
	}
	wantErr(t, d.CreateDrill(ctx, &Drill{ReplicationID: r.ID, Point: point}, ReplicationEventInput{}), ErrConflict)
}

// Duplicate completion reports (two API processes) race each other and
// the scheduler's next tick: the outcome is applied exactly once, and the
// tick is either a skip or a start, never an error or a deadlock.
func contractReplicationConcurrentOutcome(t *testing.T, url string) {
	ctx := testCtx(t)
	d1 := openSynced(t, url)
	d2 := openDB(t, url)
	r := mustCreateReplication(t, d1, newTestReplication("p1", "volume-race-outcome"))
	tick := r.NextRunAt
	startNext := func() *Transfer {
		t.Helper()
		s, _, err := d1.StartCycle(ctx, r.ID, tick, tick.Add(time.Minute), cycleTransfer(r), startMsg)
		tick = tick.Add(time.Minute)
		if err != nil || s == nil {
			t.Fatalf("StartCycle: %+v, %v", s, err)
		}
		return s
	}
	toVerifying := func(c *Transfer, bytes int64) {
		t.Helper()
		mustTransition(t, d1, c.ID, StatusAccepted, TransitionOpts{})
		mustTransition(t, d1, c.ID, StatusPreparing, TransitionOpts{})
		mustTransition(t, d1, c.ID, StatusTransferring, TransitionOpts{})
		mustTransition(t, d1, c.ID, StatusVerifying, TransitionOpts{Fields: TransferFields{BytesTransferred: ptr(bytes)}})
	}
	cur := startNext()
	var wantBytes int64
	const rounds = 6
	for round := 0; round < rounds; round++ {
		bytes := int64(1000 + round)
		wantBytes += bytes
		toVerifying(cur, bytes)
		var (
			wg         sync.WaitGroup
			mu         sync.Mutex
			wins       int
			errs       []error
			tickResult *Transfer
			tickSkip   bool
			tickErr    error
			start      = make(chan struct{})
		)
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				d := d1
				if i%2 == 1 {
					d = d2
				}
				<-start
				_, err := d.TransitionTransfer(ctx, cur.ID, StatusCompleted, TransitionOpts{
					ExpectFrom: []Status{StatusVerifying},
					Fields:     TransferFields{DestSnapshot: ptr("ferry-" + cur.ID)},
					Cycle:      &CycleOutcome{Removed: []string{fmt.Sprintf("ferry-gone-%d", round)}},
				})
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					wins++
				} else {
					errs = append(errs, err)
				}
			}(i)
		}
		wg.Add(1)
		thisTick := tick
		go func() {
			defer wg.Done()
			<-start
			tickResult, tickSkip, tickErr = d2.StartCycle(ctx, r.ID, thisTick, thisTick.Add(time.Minute), cycleTransfer(r), startMsg)
		}()
		close(start)
		wg.Wait()
		tick = tick.Add(time.Minute)
		if wins != 1 {
			t.Fatalf("round %d: %d completions applied, want 1 (%v)", round, wins, errs)
		}
		for _, err := range errs {
			if !errors.Is(err, ErrInvalidTransition) && !errors.Is(err, ErrConflict) {
				t.Errorf("round %d: loser error %v", round, err)
			}
		}
		if tickErr != nil || (tickResult == nil) == !tickSkip {
			t.Fatalf("round %d: tick = %+v, skipped %v, %v", round, tickResult, tickSkip, tickErr)
		}
		got := mustGetReplication(t, d1, r.ID)
		if got.CyclesCompleted != int64(round+1) || got.BytesReplicated != wantBytes || got.PointsCount != round+1 {
			t.Fatalf("round %d: summary %+v", round, got)
		}
		if tickResult != nil {
			cur = tickResult
		} else {
			cur = startNext()
		}
	}
	if n := countRows(t, d1, &ReplicationEvent{}, "replication_id = ? AND kind = ?", r.ID, RepEventCycleCompleted); n != rounds {
		t.Errorf("%d cycle_completed events, want %d", n, rounds)
	}
}
