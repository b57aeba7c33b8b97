package db

// The store contract: one suite, run over every backend (SQLite in the unit
// tests; SQLite, MariaDB and PostgreSQL in the functional tests). Each case
// gets the URL of a fresh, empty database.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-gormigrate/gormigrate/v2"
	"github.com/google/uuid"
	"gorm.io/gorm"
)

// testClock is a settable clock for WithNowFunc: each reading advances it
// by step (0: it stands still until moved).
type testClock struct {
	mu   sync.Mutex
	now  time.Time
	step time.Duration
}

func newTestClock() *testClock {
	return &testClock{now: time.Date(2030, 1, 2, 3, 4, 5, 123456000, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now
	c.now = c.now.Add(c.step)
	return t
}

func (c *testClock) Peek() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// openDB opens url (closed at the end of the test) without migrating.
func openDB(t *testing.T, url string, opts ...Option) *DB {
	t.Helper()
	d, err := Open(testCtx(t), url, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// openSynced opens url and brings the schema up to date.
func openSynced(t *testing.T, url string, opts ...Option) *DB {
	t.Helper()
	d := openDB(t, url, opts...)
	if err := d.Sync(testCtx(t)); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return d
}

func newTestTransfer(project, name string) *Transfer {
	return &Transfer{
		Name: name, Description: "test transfer " + name,
		ProjectID: project, UserID: "user-" + project,
		SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: "volume-" + name,
		DestRegion: "RegionTwo", DestPool: "volumes", DestImage: "volume-" + name,
		BytesTotal: 1 << 30,
	}
}

func mustCreate(t *testing.T, d *DB, tr *Transfer) *Transfer {
	t.Helper()
	if err := d.CreateTransfer(testCtx(t), tr, nil); err != nil {
		t.Fatalf("CreateTransfer(%s): %v", tr.Name, err)
	}
	return tr
}

func mustTransition(t *testing.T, d *DB, id string, to Status, opts TransitionOpts) *Transfer {
	t.Helper()
	tr, err := d.TransitionTransfer(testCtx(t), id, to, opts)
	if err != nil {
		t.Fatalf("TransitionTransfer(%s → %s): %v", id, to, err)
	}
	if tr.Status != to {
		t.Fatalf("status after transition = %s, want %s", tr.Status, to)
	}
	return tr
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want one wrapping %v", err, target)
	}
}

func ptr[T any](v T) *T { return &v }

func countRows(t *testing.T, d *DB, model any, where string, args ...any) int64 {
	t.Helper()
	var n int64
	q := d.gorm.WithContext(testCtx(t)).Model(model)
	if where != "" {
		q = q.Where(where, args...)
	}
	if err := q.Count(&n).Error; err != nil {
		t.Fatalf("count: %v", err)
	}
	return n
}

// runStoreContract runs the store contract; newURL returns the connection
// URL of a new, empty database for each case.
func runStoreContract(t *testing.T, newURL func(t *testing.T) string) {
	cases := []struct {
		name string
		fn   func(t *testing.T, url string)
	}{
		{"SchemaMatchesModels", contractSchema},
		{"Migrations", contractMigrations},
		{"CreateGet", contractCreateGet},
		{"CreateValidation", contractCreateValidation},
		{"ListPagination", contractList},
		{"ListErrors", contractListErrors},
		{"Transitions", contractTransitions},
		{"RetryRequeueFencing", contractRetryRequeue},
		{"ConcurrentTransitions", contractConcurrentTransitions},
		{"UpdateProgress", contractProgress},
		{"EventsAndNotes", contractEvents},
		{"Delete", contractDelete},
		{"Services", contractServices},
		{"ServiceHeartbeats", contractServiceHeartbeats},
		{"RepublishStart", contractRepublishStart},
		{"Cleanup", contractCleanup},
		{"Quota", contractQuota},
		{"DeleteCleanup", contractDeleteCleanup},
		{"Outbox", contractOutbox},
		{"OutboxConcurrentClaimers", contractOutboxConcurrentClaimers},
		{"Leases", contractLeases},
		{"ListRegions", contractListRegions},
		{"ReplicationCreateGet", contractReplicationCreateGet},
		{"ReplicationConcurrentCreate", contractReplicationConcurrentCreate},
		{"ReplicationList", contractReplicationList},
		{"ReplicationUpdateStatus", contractReplicationUpdateStatus},
		{"ReplicationStartCycle", contractReplicationStartCycle},
		{"ReplicationConcurrentStartCycle", contractReplicationConcurrentStartCycle},
		{"ReplicationCycleOutcome", contractReplicationCycleOutcome},
		{"ReplicationConcurrentOutcome", contractReplicationConcurrentOutcome},
		{"ReplicationRPO", contractReplicationRPO},
		{"ReplicationPrune", contractReplicationPrune},
		{"ReplicationDelete", contractReplicationDelete},
		{"ReplicationDrills", contractReplicationDrills},
		{"FailoverPlanned", contractFailoverPlanned},
		{"FailoverUnplannedUndo", contractFailoverUnplannedUndo},
		{"FailoverConcurrentStart", contractFailoverConcurrentStart},
		{"GroupLifecycle", contractGroupLifecycle},
		{"GroupCycles", contractGroupCycles},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newURL(t)) })
	}
}

func contractSchema(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	if err := d.Sync(ctx); err != nil {
		t.Fatalf("second Sync: %v", err)
	}
	cur, latest, err := d.Version(ctx)
	if err != nil || cur != LatestVersion() || latest != LatestVersion() {
		t.Fatalf("Version = %q, %q, %v; want %q twice", cur, latest, err, LatestVersion())
	}
	if err := d.CheckCurrent(ctx); err != nil {
		t.Fatalf("CheckCurrent: %v", err)
	}
	m := d.gorm.WithContext(ctx).Migrator()
	for _, model := range []any{&Transfer{}, &TransferEvent{}, &Service{}, &OutboxMessage{}, &Lease{},
		&Replication{}, &ReplicationPoint{}, &ReplicationEvent{}, &Drill{}, &Failover{}, &ReplicationGroup{}, &GroupCycle{}} {
		stmt := &gorm.Statement{DB: d.gorm}
		if err := stmt.Parse(model); err != nil {
			t.Fatal(err)
		}
		if !m.HasTable(stmt.Schema.Table) {
			t.Fatalf("table %s missing", stmt.Schema.Table)
		}
		for _, col := range stmt.Schema.DBNames {
			if !m.HasColumn(model, col) {
				t.Errorf("model %T: column %s.%s missing from the migrated schema", model, stmt.Schema.Table, col)
			}
		}
	}
	for table, idx := range map[string][]string{
		"transfers":             {"idx_transfers_status", "idx_transfers_user_id", "idx_transfers_project_id", "idx_transfers_agent", "idx_transfers_replication_id"},
		"replications":          {"idx_replications_project_created", "idx_replications_created", "idx_replications_status_next_run", "uq_replications_source_key"},
		"replication_events":    {"idx_replication_events_replication_id", "idx_replication_events_transfer_id"},
		"replication_drills":    {"idx_replication_drills_replication_id", "idx_replication_drills_status"},
		"replication_failovers": {"idx_replication_failovers_replication", "idx_replication_failovers_status"},
		"transfer_events":       {"idx_transfer_events_transfer_id"},
		"services":              {"uq_services_binary_host"},
		"outbox_messages":       {"idx_outbox_messages_published_at"},
	} {
		for _, name := range idx {
			if !m.HasIndex(table, name) {
				t.Errorf("index %s on %s missing", name, table)
			}
		}
	}
	// The composite indexes of the listing and of the scheduler, in order.
	var idxs []gorm.Index
	for _, table := range []string{"replications", "transfers", "replication_failovers"} {
		ix, err := m.GetIndexes(table)
		if err != nil {
			t.Fatalf("GetIndexes(%s): %v", table, err)
		}
		idxs = append(idxs, ix...)
	}
	want := map[string][]string{
		"idx_replications_project_created":      {"project_id", "created_at", "id"},
		"idx_replications_created":              {"created_at", "id"},
		"idx_transfers_replication_id":          {"replication_id", "created_at", "id"},
		"idx_replications_status_next_run":      {"status", "next_run_at"},
		"uq_replications_source_key":            {"source_key"},
		"idx_replication_failovers_replication": {"replication_id", "created_at", "id"},
	}
	for _, ix := range idxs {
		if cols, ok := want[ix.Name()]; ok {
			got := ix.Columns()
			if d.Dialect() == DialectPostgres {
				// gorm lists PostgreSQL's index columns in table order.
				got, cols = slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(cols))
			}
			if !slices.Equal(got, cols) {
				t.Errorf("index %s columns %v, want %v", ix.Name(), ix.Columns(), cols)
			}
			if u, _ := ix.Unique(); u != (ix.Name() == "uq_replications_source_key") {
				t.Errorf("index %s unique %v", ix.Name(), u)
			}
			delete(want, ix.Name())
		}
	}
	if len(want) > 0 {
		t.Errorf("indexes not found by GetIndexes: %v", want)
	}
}

func contractMigrations(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openDB(t, url)
	latest := LatestVersion()

	cur, lat, err := d.Version(ctx)
	if err != nil || cur != "" || lat != latest {
		t.Fatalf("empty database: Version = %q, %q, %v", cur, lat, err)
	}
	err = d.CheckCurrent(ctx)
	wantErr(t, err, ErrSchemaOutdated)
	if !strings.Contains(err.Error(), "empty") || !strings.Contains(err.Error(), latest) {
		t.Errorf("CheckCurrent error %q names neither version", err)
	}

	for i := 0; i < 2; i++ { // idempotent
		if err := d.Sync(ctx); err != nil {
			t.Fatalf("Sync #%d: %v", i+1, err)
		}
		if err := d.CheckCurrent(ctx); err != nil {
			t.Fatalf("CheckCurrent after Sync #%d: %v", i+1, err)
		}
	}

	// Roll everything back, then forward again.
	id, err := d.RollbackLast(ctx)
	if err != nil || id != "0009_groups" {
		t.Fatalf("RollbackLast = %q, %v", id, err)
	}
	for _, table := range []string{"replication_groups", "replication_group_cycles"} {
		if d.gorm.Migrator().HasTable(table) {
			t.Errorf("table %s survived the rollback of 0009_groups", table)
		}
	}
	for _, table := range []string{"replications", "replication_drills", "replication_failovers"} {
		if d.gorm.Migrator().HasColumn(table, "group_id") {
			t.Errorf("column %s.group_id survived the rollback of 0009_groups", table)
		}
	}
	for _, idx := range []string{"idx_replications_project_created", "idx_replications_status_next_run", "uq_replications_source_key"} {
		if !d.gorm.Migrator().HasIndex("replications", idx) {
			t.Errorf("the rollback of 0009_groups dropped the index %s", idx)
		}
	}
	if !d.gorm.Migrator().HasIndex("replication_failovers", "idx_replication_failovers_replication") {
		t.Error("the rollback of 0009_groups dropped the index idx_replication_failovers_replication")
	}
	id, err = d.RollbackLast(ctx)
	if err != nil || id != "0008_failovers" {
		t.Fatalf("RollbackLast = %q, %v", id, err)
	}
	if d.gorm.Migrator().HasTable("replication_failovers") {
		t.Error("table replication_failovers survived the rollback of 0008_failovers")
	}
	for _, col := range []string{"failover_id", "dest_volume_id"} {
		if d.gorm.Migrator().HasColumn("replications", col) {
			t.Errorf("column replications.%s survived the rollback of 0008_failovers", col)
		}
	}
	for _, idx := range []string{"idx_replications_project_created", "idx_replications_status_next_run", "uq_replications_source_key"} {
		if !d.gorm.Migrator().HasIndex("replications", idx) {
			t.Errorf("the rollback of 0008_failovers dropped the index %s", idx)
		}
	}
	if !d.gorm.Migrator().HasColumn("replications", "keep_replica") {
		t.Error("the rollback of 0008_failovers dropped an older column")
	}
	id, err = d.RollbackLast(ctx)
	if err != nil || id != "0007_replications" {
		t.Fatalf("RollbackLast = %q, %v", id, err)
	}
	for _, table := range []string{"replications", "replication_points", "replication_events", "replication_drills"} {
		if d.gorm.Migrator().HasTable(table) {
			t.Errorf("table %s survived the rollback of 0007_replications", table)
		}
	}
	if d.gorm.Migrator().HasColumn("transfers", "replication_id") || d.gorm.Migrator().HasIndex("transfers", "idx_transfers_replication_id") {
		t.Error("transfers.replication_id or its index survived the rollback of 0007_replications")
	}
	if !d.gorm.Migrator().HasColumn("transfers", "cleaned_at") {
		t.Error("the rollback of 0007_replications dropped an older column")
	}
	id, err = d.RollbackLast(ctx)
	if err != nil || id != "0006_cleanup" {
		t.Fatalf("RollbackLast = %q, %v", id, err)
	}
	if d.gorm.Migrator().HasColumn("transfers", "cleaned_at") {
		t.Error("column transfers.cleaned_at survived the rollback of 0006_cleanup")
	}
	id, err = d.RollbackLast(ctx)
	if err != nil || id != "0005_service_liveness" {
		t.Fatalf("RollbackLast = %q, %v", id, err)
	}
	for _, col := range []string{"boot_id", "running", "prev_heartbeat_at", "ceph_health"} {
		if d.gorm.Migrator().HasColumn("services", col) {
			t.Errorf("column services.%s survived the rollback of 0005_service_liveness", col)
		}
	}
	if !d.gorm.Migrator().HasColumn("services", "last_heartbeat_at") {
		t.Error("the rollback of 0005_service_liveness dropped an older column")
	}
	id, err = d.RollbackLast(ctx)
	if err != nil || id != "0004_register_ledger" {
		t.Fatalf("RollbackLast = %q, %v", id, err)
	}
	if d.gorm.Migrator().HasColumn("transfers", "register_started_at") {
		t.Error("column transfers.register_started_at survived the rollback of 0004_register_ledger")
	}
	id, err = d.RollbackLast(ctx)
	if err != nil || id != "0003_leases" {
		t.Fatalf("RollbackLast = %q, %v", id, err)
	}
	if d.gorm.Migrator().HasTable("leases") {
		t.Error("table leases survived the rollback of 0003_leases")
	}
	id, err = d.RollbackLast(ctx)
	if err != nil || id != "0002_cinder" {
		t.Fatalf("RollbackLast = %q, %v", id, err)
	}
	for _, col := range []string{"owner_project_id", "cinder_spec"} {
		if d.gorm.Migrator().HasColumn("transfers", col) {
			t.Errorf("column transfers.%s survived the rollback of 0002_cinder", col)
		}
	}
	if cur, _, _ := d.Version(ctx); cur != "0001_initial" {
		t.Errorf("Version after one rollback = %q", cur)
	}
	id, err = d.RollbackLast(ctx)
	if err != nil || id != "0001_initial" {
		t.Fatalf("RollbackLast = %q, %v", id, err)
	}
	for _, table := range []string{"transfers", "transfer_events", "services", "outbox_messages"} {
		if d.gorm.Migrator().HasTable(table) {
			t.Errorf("table %s survived the rollback", table)
		}
	}
	if cur, _, _ := d.Version(ctx); cur != "" {
		t.Errorf("Version after rollback = %q", cur)
	}
	if id, err := d.RollbackLast(ctx); err != nil || id != "" {
		t.Errorf("RollbackLast on empty = %q, %v", id, err)
	}
	if err := d.Sync(ctx); err != nil {
		t.Fatalf("Sync after rollback: %v", err)
	}
	mustCreate(t, d, newTestTransfer("p1", "after-resync"))

	// Code newer than the database: a migration is pending.
	extra := &gormigrate.Migration{
		ID: "9999_test_extra",
		Migrate: func(tx *gorm.DB) error {
			return tx.Exec("CREATE TABLE ferry_test_extra (id integer PRIMARY KEY)").Error
		},
		Rollback: func(tx *gorm.DB) error { return tx.Exec("DROP TABLE ferry_test_extra").Error },
	}
	newer := append(migrations(), extra)
	st, err := d.schemaState(ctx, newer)
	if err != nil {
		t.Fatal(err)
	}
	err = st.check()
	wantErr(t, err, ErrSchemaOutdated)
	if !strings.Contains(err.Error(), LatestVersion()) || !strings.Contains(err.Error(), "9999_test_extra") {
		t.Errorf("outdated error %q does not name both versions", err)
	}

	// Database newer than the code.
	if err := d.syncWith(ctx, newer); err != nil {
		t.Fatalf("sync with the extra migration: %v", err)
	}
	if !d.gorm.Migrator().HasTable("ferry_test_extra") {
		t.Fatal("extra migration did not run")
	}
	wantErr(t, d.CheckCurrent(ctx), ErrSchemaTooNew)
	wantErr(t, d.Sync(ctx), ErrSchemaTooNew)
	if cur, _, _ := d.Version(ctx); cur != "9999_test_extra" {
		t.Errorf("Version current = %q, want 9999_test_extra", cur)
	}
	if err := d.migrator(ctx, newer).RollbackLast(); err != nil {
		t.Fatalf("roll back the extra migration: %v", err)
	}
	if err := d.CheckCurrent(ctx); err != nil {
		t.Fatalf("CheckCurrent after rolling back the extra: %v", err)
	}
}

func contractCreateGet(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))

	tr := newTestTransfer("p1", "transfert — 数据 🚀")
	ob := &OutboxMessage{Exchange: "ferry", RoutingKey: "agent.RegionOne", Payload: `{"method":"transfer"}`}
	created := clock.Peek()
	if err := d.CreateTransfer(ctx, tr, ob, WithRequestID("req-create")); err != nil {
		t.Fatalf("CreateTransfer: %v", err)
	}
	if _, err := uuid.Parse(tr.ID); err != nil {
		t.Fatalf("generated id %q: %v", tr.ID, err)
	}
	if tr.Status != StatusQueued || tr.Mode != ModeAuto || tr.Attempt != 1 || tr.Epoch != 1 || !tr.CreatedAt.Equal(created) {
		t.Errorf("created transfer = %+v", tr)
	}
	if ob.ID == 0 || !ob.CreatedAt.Equal(created) {
		t.Errorf("outbox row = %+v", ob)
	}

	for _, scope := range []Scope{ProjectScope("p1"), AllProjectsScope()} {
		got, err := d.GetTransfer(ctx, tr.ID, scope)
		if err != nil {
			t.Fatalf("GetTransfer(%+v): %v", scope, err)
		}
		if *got != *tr {
			t.Errorf("GetTransfer = %+v\nwant        %+v", got, tr)
		}
		if got.CreatedAt.Location() != time.UTC {
			t.Errorf("created_at location = %v", got.CreatedAt.Location())
		}
	}
	_, err := d.GetTransfer(ctx, tr.ID, ProjectScope("p2"))
	wantErr(t, err, ErrNotFound)
	_, err = d.GetTransfer(ctx, uuid.NewString(), AllProjectsScope())
	wantErr(t, err, ErrNotFound)
	_, err = d.GetTransfer(ctx, "not-a-uuid", AllProjectsScope())
	wantErr(t, err, ErrNotFound)
	_, err = d.GetTransfer(ctx, tr.ID, Scope{})
	wantErr(t, err, ErrInvalidArgument)

	evs, err := d.ListEvents(ctx, tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 {
		t.Fatalf("events = %+v", evs)
	}
	if e := evs[0]; e.Kind != EventStatus || e.FromStatus != "" || e.ToStatus != StatusQueued ||
		e.RequestID != "req-create" || e.Message != "transfer created" || !e.CreatedAt.Equal(created) {
		t.Errorf("creation event = %+v", e)
	}
	if n := countRows(t, d, &OutboxMessage{}, "routing_key = ?", "agent.RegionOne"); n != 1 {
		t.Errorf("outbox rows = %d", n)
	}

	// Duplicate id: nothing of the second create is written.
	dup := newTestTransfer("p1", "dup")
	dup.ID = strings.ToUpper(tr.ID)
	err = d.CreateTransfer(ctx, dup, &OutboxMessage{Payload: "x"})
	wantErr(t, err, ErrConflict)
	if n := countRows(t, d, &OutboxMessage{}, ""); n != 1 {
		t.Errorf("outbox rows after failed create = %d, want 1", n)
	}

	// A caller-chosen id is kept, in canonical form.
	own := newTestTransfer("p2", "own-id")
	id := uuid.New()
	own.ID = strings.ToUpper(id.String())
	own.Mode = ModeIncremental
	mustCreate(t, d, own)
	if own.ID != id.String() {
		t.Errorf("id = %q, want %q", own.ID, id.String())
	}
	if got, err := d.GetTransfer(ctx, id.String(), ProjectScope("p2")); err != nil || got.Mode != ModeIncremental {
		t.Errorf("GetTransfer = %+v, %v", got, err)
	}

	// Longest names, multibyte, fit every backend.
	long := newTestTransfer("p1", strings.Repeat("é", MaxNameLength))
	long.SourceImage, long.DestImage = strings.Repeat("i", MaxNameLength), strings.Repeat("ü", MaxNameLength)
	long.SourceVolumeID = strings.Repeat("v", MaxIDLength)
	long.OwnerProjectID = strings.Repeat("o", MaxIDLength)
	spec := `{"name": "` + strings.Repeat("ü", 20000) + `"}` // 40 KB of JSON fits TEXT everywhere
	long.CinderSpec = &spec
	long.Description = strings.Repeat("✓", MaxDescriptionLength)
	mustCreate(t, d, long)
	if got, err := d.GetTransfer(ctx, long.ID, ProjectScope("p1")); err != nil || got.Name != long.Name || got.Description != long.Description ||
		got.OwnerProjectID != long.OwnerProjectID || got.CinderSpec == nil || *got.CinderSpec != spec {
		t.Errorf("long values did not round-trip: %v", err)
	}
}

func contractCreateValidation(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	tests := []struct {
		name   string
		mutate func(*Transfer)
	}{
		{"unknown mode", func(tr *Transfer) { tr.Mode = "diff" }},
		{"no project", func(tr *Transfer) { tr.ProjectID = "" }},
		{"preset status", func(tr *Transfer) { tr.Status = StatusAccepted }},
		{"bad id", func(tr *Transfer) { tr.ID = "not-a-uuid" }},
		{"unhyphenated id", func(tr *Transfer) { tr.ID = strings.ReplaceAll(uuid.NewString(), "-", "") }},
		{"name too long", func(tr *Transfer) { tr.Name = strings.Repeat("é", MaxNameLength+1) }},
		{"volume id too long", func(tr *Transfer) { tr.SourceVolumeID = strings.Repeat("v", MaxIDLength+1) }},
		{"negative total", func(tr *Transfer) { tr.BytesTotal = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTestTransfer("p1", "bad")
			tt.mutate(tr)
			wantErr(t, d.CreateTransfer(ctx, tr, nil), ErrInvalidArgument)
		})
	}
	wantErr(t, d.CreateTransfer(ctx, nil, nil), ErrInvalidArgument)
	wantErr(t, d.CreateTransfer(ctx, newTestTransfer("p1", "x"), &OutboxMessage{}), ErrInvalidArgument)
	if n := countRows(t, d, &Transfer{}, ""); n != 0 {
		t.Errorf("%d transfers written by invalid creates", n)
	}
}

// listFixture creates 21 transfers (15 in p1, 6 in p2) with ties in
// created_at and updated_at, a name order unlike the creation order, and a
// mix of statuses and agents; it returns them as stored.
func listFixture(t *testing.T, d *DB, clock *testClock) []Transfer {
	t.Helper()
	ctx := testCtx(t)
	var ids []string
	for i := 0; i < 21; i++ {
		project := "p1"
		if i%7 >= 5 {
			project = "p2"
		}
		tr := mustCreate(t, d, newTestTransfer(project, fmt.Sprintf("n%02d", (i*5)%21)))
		ids = append(ids, tr.ID)
		if i%2 == 1 {
			clock.Advance(time.Second) // pairs share created_at
		}
	}
	for i, id := range ids {
		switch i % 3 {
		case 1:
			agent := "host-a"
			if i%2 == 1 {
				agent = "host-b"
			}
			mustTransition(t, d, id, StatusAccepted, TransitionOpts{Fields: TransferFields{Agent: &agent}})
		case 2:
			mustTransition(t, d, id, StatusCancelled, TransitionOpts{})
		}
		if i%4 == 3 {
			clock.Advance(time.Millisecond) // runs of four share updated_at
		}
	}
	var all []Transfer
	for _, id := range ids {
		tr, err := d.GetTransfer(ctx, id, AllProjectsScope())
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, *tr)
	}
	return all
}

func expectedOrder(items []Transfer, keep func(*Transfer) bool, key string, desc bool) []string {
	var sel []Transfer
	for i := range items {
		if keep(&items[i]) {
			sel = append(sel, items[i])
		}
	}
	cmpKey := func(a, b *Transfer) int {
		switch key {
		case "created_at":
			return a.CreatedAt.Compare(b.CreatedAt)
		case "updated_at":
			return a.UpdatedAt.Compare(b.UpdatedAt)
		case "name":
			return strings.Compare(a.Name, b.Name)
		case "status":
			return strings.Compare(string(a.Status), string(b.Status))
		}
		return 0
	}
	sort.Slice(sel, func(i, j int) bool {
		c := cmpKey(&sel[i], &sel[j])
		if c == 0 {
			c = strings.Compare(sel[i].ID, sel[j].ID)
		}
		if desc {
			return c > 0
		}
		return c < 0
	})
	out := make([]string, len(sel))
	for i := range sel {
		out[i] = sel[i].ID
	}
	return out
}

// pageThrough lists every page of opts, checking page sizes and the more
// flag, and returns the ids in order.
func pageThrough(t *testing.T, d *DB, opts ListOpts) []string {
	t.Helper()
	var ids []string
	for pages := 0; ; pages++ {
		if pages > 50 {
			t.Fatal("pagination does not end")
		}
		items, more, err := d.ListTransfers(testCtx(t), opts)
		if err != nil {
			t.Fatalf("ListTransfers(%+v): %v", opts, err)
		}
		if len(items) > opts.Limit || (more && len(items) != opts.Limit) {
			t.Fatalf("page of %d items (more=%v) with limit %d", len(items), more, opts.Limit)
		}
		for _, it := range items {
			ids = append(ids, it.ID)
		}
		if !more {
			return ids
		}
		opts.Marker = items[len(items)-1].ID
	}
}

func contractList(t *testing.T, url string) {
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	all := listFixture(t, d, clock)

	scopes := []struct {
		scope Scope
		keep  func(*Transfer) bool
	}{
		{ProjectScope("p1"), func(tr *Transfer) bool { return tr.ProjectID == "p1" }},
		{ProjectScope("p2"), func(tr *Transfer) bool { return tr.ProjectID == "p2" }},
		{AllProjectsScope(), func(*Transfer) bool { return true }},
	}
	for _, sc := range scopes {
		for _, key := range append(SortKeys(), "") {
			for _, dir := range []string{"asc", "desc", ""} {
				for _, limit := range []int{4, 7} {
					name := fmt.Sprintf("%s/%s/%s/%d", sc.scope.ProjectID, key, dir, limit)
					effKey := key
					if effKey == "" {
						effKey = "created_at"
					}
					want := expectedOrder(all, sc.keep, effKey, dir != "asc")
					got := pageThrough(t, d, ListOpts{Scope: sc.scope, SortKey: key, SortDir: dir, Limit: limit})
					if !slices.Equal(got, want) {
						t.Errorf("%s: got  %v\nwant %v", name, got, want)
					}
				}
			}
		}
	}

	filters := []struct {
		name string
		opts ListOpts
		keep func(*Transfer) bool
	}{
		{"status accepted", ListOpts{Scope: ProjectScope("p1"), Status: StatusAccepted},
			func(tr *Transfer) bool { return tr.ProjectID == "p1" && tr.Status == StatusAccepted }},
		{"statuses", ListOpts{Scope: AllProjectsScope(), Statuses: []Status{StatusQueued, StatusCancelled}},
			func(tr *Transfer) bool { return tr.Status != StatusAccepted }},
		{"status and statuses", ListOpts{Scope: AllProjectsScope(), Status: StatusQueued, Statuses: []Status{StatusAccepted}},
			func(tr *Transfer) bool { return tr.Status != StatusCancelled }},
		{"agent", ListOpts{Scope: AllProjectsScope(), Agent: "host-a"},
			func(tr *Transfer) bool { return tr.Agent != nil && *tr.Agent == "host-a" }},
	}
	for _, f := range filters {
		for _, dir := range []string{"asc", "desc"} {
			opts := f.opts
			opts.SortKey, opts.SortDir, opts.Limit = "name", dir, 3
			want := expectedOrder(all, f.keep, "name", dir == "desc")
			if len(want) == 0 {
				t.Fatalf("%s: fixture has no match", f.name)
			}
			if got := pageThrough(t, d, opts); !slices.Equal(got, want) {
				t.Errorf("%s %s: got  %v\nwant %v", f.name, dir, got, want)
			}
		}
	}

	// Limit 0 is the default page size; one page holds everything.
	items, more, err := d.ListTransfers(testCtx(t), ListOpts{Scope: AllProjectsScope()})
	if err != nil || more || len(items) != len(all) {
		t.Errorf("default limit: %d items, more=%v, %v", len(items), more, err)
	}
	items, more, err = d.ListTransfers(testCtx(t), ListOpts{Scope: AllProjectsScope(), Limit: MaxListLimit + 10})
	if err != nil || more || len(items) != len(all) {
		t.Errorf("over-large limit: %d items, more=%v, %v", len(items), more, err)
	}
	// Exactly limit items left: more is false.
	items, more, err = d.ListTransfers(testCtx(t), ListOpts{Scope: ProjectScope("p2"), Limit: 6})
	if err != nil || more || len(items) != 6 {
		t.Errorf("exact page: %d items, more=%v, %v", len(items), more, err)
	}
}

func contractListErrors(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	p1 := mustCreate(t, d, newTestTransfer("p1", "a"))
	p2 := mustCreate(t, d, newTestTransfer("p2", "b"))
	tests := []struct {
		name string
		opts ListOpts
		want error
	}{
		{"unknown marker", ListOpts{Scope: ProjectScope("p1"), Marker: uuid.NewString()}, ErrMarkerNotFound},
		{"marker of another project", ListOpts{Scope: ProjectScope("p1"), Marker: p2.ID}, ErrMarkerNotFound},
		{"bad sort key", ListOpts{Scope: ProjectScope("p1"), SortKey: "size"}, ErrInvalidSort},
		{"injected sort key", ListOpts{Scope: ProjectScope("p1"), SortKey: "id; DROP TABLE transfers"}, ErrInvalidSort},
		{"bad sort dir", ListOpts{Scope: ProjectScope("p1"), SortDir: "up"}, ErrInvalidSort},
		{"negative limit", ListOpts{Scope: ProjectScope("p1"), Limit: -1}, ErrInvalidArgument},
		{"bad status", ListOpts{Scope: ProjectScope("p1"), Status: "bogus"}, ErrInvalidArgument},
		{"zero scope", ListOpts{}, ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := d.ListTransfers(ctx, tt.opts)
			wantErr(t, err, tt.want)
		})
	}
	// The marker of the scope's own transfer works, and nothing follows it
	// in ascending id order when it is the last.
	items, more, err := d.ListTransfers(ctx, ListOpts{Scope: ProjectScope("p1"), Marker: p1.ID})
	if err != nil || more || len(items) != 0 {
		t.Errorf("after the only item: %v, %v, %v", items, more, err)
	}
}

func contractTransitions(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	clock.step = time.Millisecond
	d := openSynced(t, url, WithNowFunc(clock.Now))
	tr := mustCreate(t, d, newTestTransfer("p1", "happy"))

	acceptedAt := clock.Peek()
	got := mustTransition(t, d, tr.ID, StatusAccepted, TransitionOpts{
		Message: "accepted by host-a", RequestID: "req-a", ExpectFrom: []Status{StatusQueued},
		Fields: TransferFields{Agent: ptr("host-a"), Mode: ptr(ModeFull)},
	})
	if got.Agent == nil || *got.Agent != "host-a" || got.Mode != ModeFull || got.StartedAt == nil ||
		!got.StartedAt.Equal(acceptedAt) || got.FinishedAt != nil || !got.UpdatedAt.Equal(acceptedAt) {
		t.Errorf("after accepted: %+v", got)
	}
	mustTransition(t, d, tr.ID, StatusPreparing, TransitionOpts{Fields: TransferFields{
		DestImage: ptr("volume-happy"), DestSnapshot: ptr("ferry-" + tr.ID), SourceSnapshot: ptr("ferry-" + tr.ID),
	}})
	mustTransition(t, d, tr.ID, StatusTransferring, TransitionOpts{Fields: TransferFields{BytesTotal: ptr(int64(4096)), RateBytesPerSecond: ptr(int64(100))}})
	mustTransition(t, d, tr.ID, StatusVerifying, TransitionOpts{Fields: TransferFields{BytesTransferred: ptr(int64(4096))}})
	mustTransition(t, d, tr.ID, StatusFinalizing, TransitionOpts{Fields: TransferFields{Digest: ptr("sha256:abcd")}})
	doneAt := clock.Peek()
	got = mustTransition(t, d, tr.ID, StatusCompleted, TransitionOpts{Message: "done"})
	if got.FinishedAt == nil || !got.FinishedAt.Equal(doneAt) || !got.StartedAt.Equal(acceptedAt) ||
		got.BytesTotal != 4096 || got.BytesTransferred != 4096 || got.RateBytesPerSecond != 0 ||
		got.Digest != "sha256:abcd" || got.DestSnapshot != "ferry-"+tr.ID || got.Error != nil || got.Epoch != 1 || got.Attempt != 1 {
		t.Errorf("after completed: %+v", got)
	}
	if got.ProgressPercent() != 100 {
		t.Errorf("progress = %v", got.ProgressPercent())
	}

	evs, err := d.ListEvents(ctx, tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	path := []Status{"", StatusQueued, StatusAccepted, StatusPreparing, StatusTransferring, StatusVerifying, StatusFinalizing, StatusCompleted}
	if len(evs) != len(path)-1 {
		t.Fatalf("%d events, want %d", len(evs), len(path)-1)
	}
	for i, e := range evs {
		if e.FromStatus != path[i] || e.ToStatus != path[i+1] || e.Kind != EventStatus || e.TransferID != tr.ID {
			t.Errorf("event %d = %+v", i, e)
		}
		if i > 0 && !e.CreatedAt.After(evs[i-1].CreatedAt) {
			t.Errorf("event %d not after event %d", i, i-1)
		}
	}
	if evs[1].RequestID != "req-a" || evs[1].Message != "accepted by host-a" || evs[7-1].Message != "done" {
		t.Errorf("event details: %+v / %+v", evs[1], evs[6])
	}

	// Illegal transitions are refused and leave no trace.
	for _, to := range []Status{StatusQueued, StatusError, StatusCancelling, StatusAccepted} {
		_, err := d.TransitionTransfer(ctx, tr.ID, to, TransitionOpts{})
		wantErr(t, err, ErrInvalidTransition)
		if !strings.Contains(err.Error(), "completed") || !strings.Contains(err.Error(), string(to)) {
			t.Errorf("error %q does not name from and to", err)
		}
	}
	if n := countRows(t, d, &TransferEvent{}, "transfer_id = ?", tr.ID); n != 7 {
		t.Errorf("%d events after refused transitions, want 7", n)
	}

	_, err = d.TransitionTransfer(ctx, uuid.NewString(), StatusAccepted, TransitionOpts{})
	wantErr(t, err, ErrNotFound)
	_, err = d.TransitionTransfer(ctx, tr.ID, "bogus", TransitionOpts{})
	wantErr(t, err, ErrInvalidArgument)
	_, err = d.TransitionTransfer(ctx, tr.ID, StatusQueued, TransitionOpts{Fields: TransferFields{BytesTotal: ptr(int64(-5))}})
	wantErr(t, err, ErrInvalidArgument)
	_, err = d.TransitionTransfer(ctx, tr.ID, StatusQueued, TransitionOpts{Fields: TransferFields{Mode: ptr(Mode("x"))}})
	wantErr(t, err, ErrInvalidArgument)

	// Cancel paths: directly from queued, and through cancelling.
	c1 := mustCreate(t, d, newTestTransfer("p1", "cancel-direct"))
	_, err = d.TransitionTransfer(ctx, c1.ID, StatusCancelled, TransitionOpts{ExpectFrom: []Status{StatusAccepted}})
	wantErr(t, err, ErrInvalidTransition)
	got = mustTransition(t, d, c1.ID, StatusCancelled, TransitionOpts{ExpectFrom: []Status{StatusQueued}})
	if got.FinishedAt == nil || got.StartedAt != nil {
		t.Errorf("cancelled from queued: %+v", got)
	}
	c2 := mustCreate(t, d, newTestTransfer("p1", "cancel-running"))
	mustTransition(t, d, c2.ID, StatusAccepted, TransitionOpts{})
	_, err = d.TransitionTransfer(ctx, c2.ID, StatusTransferring, TransitionOpts{}) // skips preparing
	wantErr(t, err, ErrInvalidTransition)
	mustTransition(t, d, c2.ID, StatusCancelling, TransitionOpts{RequestID: "req-cancel"})
	got = mustTransition(t, d, c2.ID, StatusCancelled, TransitionOpts{})
	if got.FinishedAt == nil || got.StartedAt == nil || got.Error != nil {
		t.Errorf("cancelled: %+v", got)
	}
}

func contractRetryRequeue(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	clock.step = time.Millisecond
	d := openSynced(t, url, WithNowFunc(clock.Now))

	// error, then retry.
	tr := mustCreate(t, d, newTestTransfer("p1", "failing"))
	mustTransition(t, d, tr.ID, StatusAccepted, TransitionOpts{Fields: TransferFields{Agent: ptr("host-a")}})
	mustTransition(t, d, tr.ID, StatusPreparing, TransitionOpts{})
	mustTransition(t, d, tr.ID, StatusTransferring, TransitionOpts{})
	got := mustTransition(t, d, tr.ID, StatusError, TransitionOpts{Error: "rbd: image not found"})
	if got.Error == nil || *got.Error != "rbd: image not found" || got.FinishedAt == nil {
		t.Errorf("after error: %+v", got)
	}
	got = mustTransition(t, d, tr.ID, StatusQueued, TransitionOpts{Message: "retry requested", RequestID: "req-retry"})
	if got.Attempt != 2 || got.Epoch != 2 || got.Error != nil || got.Agent != nil || got.StartedAt != nil || got.FinishedAt != nil {
		t.Errorf("after retry: %+v", got)
	}
	evs, err := d.ListEvents(ctx, tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	last2 := evs[len(evs)-2:]
	if last2[0].Kind != EventError || last2[0].Message != "rbd: image not found" || last2[0].ToStatus != StatusError {
		t.Errorf("error event = %+v", last2[0])
	}
	if last2[1].Kind != EventRetry || last2[1].FromStatus != StatusError || last2[1].ToStatus != StatusQueued || last2[1].RequestID != "req-retry" {
		t.Errorf("retry event = %+v", last2[1])
	}
	// An error without a message still records one.
	mustTransition(t, d, tr.ID, StatusAccepted, TransitionOpts{})
	got = mustTransition(t, d, tr.ID, StatusError, TransitionOpts{})
	if got.Error == nil || *got.Error != "unknown error" {
		t.Errorf("anonymous error: %+v", got.Error)
	}

	// Requeue (agent lost) and epoch fencing.
	rq := mustCreate(t, d, newTestTransfer("p1", "requeued"))
	got = mustTransition(t, d, rq.ID, StatusAccepted, TransitionOpts{ExpectEpoch: 1, Fields: TransferFields{Agent: ptr("host-a")}})
	started := *got.StartedAt
	mustTransition(t, d, rq.ID, StatusPreparing, TransitionOpts{ExpectEpoch: 1})
	got = mustTransition(t, d, rq.ID, StatusQueued, TransitionOpts{Message: "agent host-a is down"})
	if got.Epoch != 2 || got.Attempt != 1 || got.Agent != nil || got.StartedAt == nil || !got.StartedAt.Equal(started) {
		t.Errorf("after requeue: %+v", got)
	}
	if evs, _ := d.ListEvents(ctx, rq.ID); evs[len(evs)-1].Kind != EventRequeue {
		t.Errorf("requeue event = %+v", evs[len(evs)-1])
	}
	// The lost agent's late report carries the old epoch.
	_, err = d.TransitionTransfer(ctx, rq.ID, StatusAccepted, TransitionOpts{ExpectEpoch: 1})
	wantErr(t, err, ErrStaleEpoch)
	mustTransition(t, d, rq.ID, StatusAccepted, TransitionOpts{ExpectEpoch: 2, Fields: TransferFields{Agent: ptr("host-b")}})
}

func contractConcurrentTransitions(t *testing.T, url string) {
	ctx := testCtx(t)
	d1 := openSynced(t, url)
	d2 := openDB(t, url) // a second pool, as a second API process would have
	targets := []Status{StatusAccepted, StatusCancelling, StatusError, StatusCancelled}
	for round := 0; round < 4; round++ {
		tr := mustCreate(t, d1, newTestTransfer("p1", fmt.Sprintf("race-%d", round)))
		const n = 16
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			mu      sync.Mutex
			winners []Status
			errs    []error
		)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				d := d1
				if i%2 == 1 {
					d = d2
				}
				to := targets[i%len(targets)]
				<-start
				_, err := d.TransitionTransfer(ctx, tr.ID, to, TransitionOpts{ExpectFrom: []Status{StatusQueued}, Error: "boom"})
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					winners = append(winners, to)
				} else {
					errs = append(errs, err)
				}
			}(i)
		}
		close(start)
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("round %d: %d winners (%v), want exactly 1", round, len(winners), winners)
		}
		for _, err := range errs {
			if !errors.Is(err, ErrInvalidTransition) && !errors.Is(err, ErrConflict) {
				t.Errorf("round %d: loser error %v", round, err)
			}
		}
		got, err := d1.GetTransfer(ctx, tr.ID, AllProjectsScope())
		if err != nil || got.Status != winners[0] {
			t.Fatalf("round %d: status %v, %v; winner %s", round, got, err, winners[0])
		}
		if n := countRows(t, d1, &TransferEvent{}, "transfer_id = ?", tr.ID); n != 2 {
			t.Errorf("round %d: %d events, want 2", round, n)
		}
	}
}

func contractProgress(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	tr := mustCreate(t, d, newTestTransfer("p1", "progress"))
	wantErr(t, d.UpdateProgress(ctx, tr.ID, 10, 100, 5), ErrConflict) // queued
	wantErr(t, d.UpdateProgress(ctx, uuid.NewString(), 10, 100, 5), ErrNotFound)
	wantErr(t, d.UpdateProgress(ctx, tr.ID, -1, 100, 5), ErrInvalidArgument)

	mustTransition(t, d, tr.ID, StatusAccepted, TransitionOpts{})
	mustTransition(t, d, tr.ID, StatusPreparing, TransitionOpts{})
	mustTransition(t, d, tr.ID, StatusTransferring, TransitionOpts{})
	steps := []struct {
		done, total, rate int64
		wantTotal         int64
	}{
		{100, 1000, 50, 1000},
		{100, 1000, 50, 1000}, // same values again (MySQL reports 0 changed rows)
		{500, 0, 80, 1000},    // total 0 keeps the known total
		{900, 2000, 90, 2000},
	}
	for i, s := range steps {
		if err := d.UpdateProgress(ctx, tr.ID, s.done, s.total, s.rate); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		got, err := d.GetTransfer(ctx, tr.ID, ProjectScope("p1"))
		if err != nil {
			t.Fatal(err)
		}
		if got.BytesTransferred != s.done || got.BytesTotal != s.wantTotal || got.RateBytesPerSecond != s.rate {
			t.Errorf("step %d: %d/%d at %d", i, got.BytesTransferred, got.BytesTotal, got.RateBytesPerSecond)
		}
	}
	if n := countRows(t, d, &TransferEvent{}, "transfer_id = ?", tr.ID); n != 4 {
		t.Errorf("%d events, want 4 (progress writes none)", n)
	}
	mustTransition(t, d, tr.ID, StatusCancelling, TransitionOpts{})
	wantErr(t, d.UpdateProgress(ctx, tr.ID, 1000, 2000, 1), ErrConflict)

	// UpdateFields: only in the expected status, no event.
	vol := uuid.NewString()
	wantErr(t, d.UpdateFields(ctx, tr.ID, StatusFinalizing, TransferFields{DestVolumeID: &vol}), ErrConflict)
	wantErr(t, d.UpdateFields(ctx, uuid.NewString(), StatusCancelling, TransferFields{DestVolumeID: &vol}), ErrNotFound)
	long := strings.Repeat("x", MaxIDLength+1)
	wantErr(t, d.UpdateFields(ctx, tr.ID, StatusCancelling, TransferFields{DestBackupID: &long}), ErrInvalidArgument)
	if err := d.UpdateFields(ctx, tr.ID, StatusCancelling, TransferFields{DestVolumeID: &vol, DestBackupID: &vol}); err != nil {
		t.Fatal(err)
	}
	got, err := d.GetTransfer(ctx, tr.ID, ProjectScope("p1"))
	if err != nil || got.DestVolumeID != vol || got.DestBackupID != vol || got.Status != StatusCancelling {
		t.Errorf("after UpdateFields: %+v, %v", got, err)
	}
	if n := countRows(t, d, &TransferEvent{}, "transfer_id = ?", tr.ID); n != 5 {
		t.Errorf("%d events, want 5 (UpdateFields writes none)", n)
	}
	// The finalizer's ledger: set (microseconds kept, UTC), then cleared.
	at := time.Date(2026, 12, 3, 10, 11, 12, 345678000, time.FixedZone("X", 3600))
	if err := d.UpdateFields(ctx, tr.ID, StatusCancelling, TransferFields{RegisterStartedAt: &at}); err != nil {
		t.Fatal(err)
	}
	if got, err := d.GetTransfer(ctx, tr.ID, ProjectScope("p1")); err != nil || got.RegisterStartedAt == nil || !got.RegisterStartedAt.Equal(at) {
		t.Errorf("register_started_at: %v, %v, want %v", got.RegisterStartedAt, err, at)
	}
	var zero time.Time
	if err := d.UpdateFields(ctx, tr.ID, StatusCancelling, TransferFields{RegisterStartedAt: &zero}); err != nil {
		t.Fatal(err)
	}
	if got, err := d.GetTransfer(ctx, tr.ID, ProjectScope("p1")); err != nil || got.RegisterStartedAt != nil {
		t.Errorf("register_started_at after clearing: %v, %v", got.RegisterStartedAt, err)
	}
}

func contractEvents(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	tr := mustCreate(t, d, newTestTransfer("p1", "notes"))
	if err := d.RecordEvent(ctx, tr.ID, "", "checkpoint found at 4 GiB", "req-n"); err != nil {
		t.Fatal(err)
	}
	evs, err := d.ListEvents(ctx, tr.ID)
	if err != nil || len(evs) != 2 {
		t.Fatalf("events = %v, %v", evs, err)
	}
	if e := evs[1]; e.Kind != EventNote || e.FromStatus != StatusQueued || e.ToStatus != StatusQueued || e.Message != "checkpoint found at 4 GiB" {
		t.Errorf("note = %+v", e)
	}
	wantErr(t, d.RecordEvent(ctx, uuid.NewString(), EventNote, "x", ""), ErrNotFound)
	_, err = d.ListEvents(ctx, uuid.NewString())
	wantErr(t, err, ErrNotFound)
}

func contractDelete(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	tr := mustCreate(t, d, newTestTransfer("p1", "to-delete"))
	for _, step := range []Status{"", StatusAccepted, StatusPreparing, StatusTransferring, StatusVerifying, StatusFinalizing} {
		if step != "" {
			mustTransition(t, d, tr.ID, step, TransitionOpts{})
		}
		wantErr(t, d.DeleteTransfer(ctx, tr.ID, ProjectScope("p1")), ErrConflict)
	}
	mustTransition(t, d, tr.ID, StatusCompleted, TransitionOpts{})
	wantErr(t, d.DeleteTransfer(ctx, tr.ID, ProjectScope("p2")), ErrNotFound)
	wantErr(t, d.DeleteTransfer(ctx, tr.ID, Scope{}), ErrInvalidArgument)
	if n := countRows(t, d, &TransferEvent{}, "transfer_id = ?", tr.ID); n != 7 {
		t.Fatalf("%d events before delete", n)
	}
	if err := d.DeleteTransfer(ctx, tr.ID, ProjectScope("p1")); err != nil {
		t.Fatalf("DeleteTransfer: %v", err)
	}
	_, err := d.GetTransfer(ctx, tr.ID, AllProjectsScope())
	wantErr(t, err, ErrNotFound)
	if n := countRows(t, d, &TransferEvent{}, "transfer_id = ?", tr.ID); n != 0 {
		t.Errorf("%d events survived the delete (no cascade)", n)
	}
	wantErr(t, d.DeleteTransfer(ctx, tr.ID, ProjectScope("p1")), ErrNotFound)

	for _, end := range []Status{StatusError, StatusCancelled} {
		x := mustCreate(t, d, newTestTransfer("p2", "end-"+string(end)))
		mustTransition(t, d, x.ID, end, TransitionOpts{})
		if err := d.DeleteTransfer(ctx, x.ID, AllProjectsScope()); err != nil {
			t.Errorf("delete %s transfer: %v", end, err)
		}
	}
}

func contractServices(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	first := clock.Peek()
	s1, err := d.UpsertServiceHeartbeat(ctx, AgentBinary, "host-a", "RegionOne", "1.0")
	if err != nil {
		t.Fatal(err)
	}
	if s1.ID == 0 || s1.Topic != "agent.RegionOne.host-a" || !s1.LastHeartbeatAt.Equal(first) || !s1.CreatedAt.Equal(first) || s1.Disabled {
		t.Errorf("first heartbeat: %+v", s1)
	}
	clock.Advance(30 * time.Second)
	s1b, err := d.UpsertServiceHeartbeat(ctx, AgentBinary, "host-a", "RegionOne", "1.1")
	if err != nil {
		t.Fatal(err)
	}
	if s1b.ID != s1.ID || s1b.Version != "1.1" || !s1b.CreatedAt.Equal(first) || !s1b.LastHeartbeatAt.Equal(first.Add(30*time.Second)) {
		t.Errorf("second heartbeat: %+v (first %+v)", s1b, s1)
	}
	if _, err := d.UpsertServiceHeartbeat(ctx, AgentBinary, "host-b", "RegionTwo", "1.0"); err != nil {
		t.Fatal(err)
	}
	api, err := d.UpsertServiceHeartbeat(ctx, "ferry-api", "api-1", "", "1.0")
	if err != nil || api.Topic != "" {
		t.Fatalf("api heartbeat: %+v, %v", api, err)
	}
	_, err = d.UpsertServiceHeartbeat(ctx, AgentBinary, "", "RegionOne", "1.0")
	wantErr(t, err, ErrInvalidArgument)

	if err := d.SetServiceDisabled(ctx, AgentBinary, "host-b", true); err != nil {
		t.Fatal(err)
	}
	wantErr(t, d.SetServiceDisabled(ctx, AgentBinary, "nowhere", true), ErrNotFound)
	svcs, err := d.ListServices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range svcs {
		names = append(names, fmt.Sprintf("%s/%s/%t", s.Binary, s.Host, s.Disabled))
	}
	want := []string{"ferry-agent/host-a/false", "ferry-agent/host-b/true", "ferry-api/api-1/false"}
	if !slices.Equal(names, want) {
		t.Errorf("ListServices = %v, want %v", names, want)
	}

	hb := s1b.LastHeartbeatAt
	for _, tt := range []struct {
		now  time.Time
		want bool
	}{
		{hb.Add(10 * time.Second), true},
		{hb.Add(60 * time.Second), true},
		{hb.Add(61 * time.Second), false},
	} {
		if got := ServiceIsUp(s1b, tt.now, time.Minute); got != tt.want {
			t.Errorf("ServiceIsUp at +%v = %v", tt.now.Sub(hb), got)
		}
	}
	if ServiceIsUp(nil, hb, time.Minute) || ServiceIsUp(&Service{}, hb, time.Minute) {
		t.Error("a service that never heartbeated is up")
	}
}

func claimIDs(t *testing.T, d *DB, owner string, lease time.Duration, limit int) []int64 {
	t.Helper()
	msgs, err := d.ClaimOutbox(testCtx(t), owner, lease, limit)
	if err != nil {
		t.Fatalf("ClaimOutbox(%s): %v", owner, err)
	}
	ids := make([]int64, len(msgs))
	for i, m := range msgs {
		if m.LeaseOwner != owner || m.LeaseUntil == nil || m.PublishedAt != nil {
			t.Errorf("claimed message %+v", m)
		}
		ids[i] = m.ID
	}
	return ids
}

func contractOutbox(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	var all []int64
	for i := 0; i < 5; i++ {
		m := &OutboxMessage{Exchange: "ferry", RoutingKey: "agent.RegionOne", Payload: fmt.Sprintf(`{"n":%d}`, i)}
		if err := d.EnqueueOutbox(ctx, m); err != nil {
			t.Fatal(err)
		}
		all = append(all, m.ID)
	}
	wantErr(t, d.EnqueueOutbox(ctx, &OutboxMessage{}), ErrInvalidArgument)

	a := claimIDs(t, d, "pub-a", time.Minute, 3)
	if !slices.Equal(a, all[:3]) {
		t.Fatalf("first claim = %v, want %v", a, all[:3])
	}
	msgs, err := d.ClaimOutbox(ctx, "pub-b", time.Minute, 10)
	if err != nil || len(msgs) != 2 || msgs[0].ID != all[3] || msgs[1].ID != all[4] {
		t.Fatalf("second claim = %+v, %v", msgs, err)
	}
	if msgs[0].Payload != `{"n":3}` || msgs[0].RoutingKey != "agent.RegionOne" || !msgs[0].LeaseUntil.Equal(clock.Peek().Add(time.Minute)) {
		t.Errorf("claimed row = %+v", msgs[0])
	}
	if ids := claimIDs(t, d, "pub-c", time.Minute, 10); len(ids) != 0 {
		t.Fatalf("everything is leased, yet claimed %v", ids)
	}

	if err := d.MarkPublished(ctx, a[:2]); err != nil {
		t.Fatal(err)
	}
	if err := d.ReleaseOutbox(ctx, a[2:], 0, "broker down"); err != nil {
		t.Fatal(err)
	}
	msgs, err = d.ClaimOutbox(ctx, "pub-c", time.Minute, 10)
	if err != nil || len(msgs) != 1 || msgs[0].ID != a[2] || msgs[0].Attempts != 1 || msgs[0].LastError == nil || *msgs[0].LastError != "broker down" {
		t.Fatalf("claim after release = %+v, %v", msgs, err)
	}
	if err := d.ReleaseOutbox(ctx, a[2:], 30*time.Second, "still down"); err != nil {
		t.Fatal(err)
	}
	if ids := claimIDs(t, d, "pub-c", time.Minute, 10); len(ids) != 0 {
		t.Fatalf("claimed %v during the retry delay", ids)
	}
	clock.Advance(31 * time.Second)
	if ids := claimIDs(t, d, "pub-c", time.Minute, 10); !slices.Equal(ids, a[2:]) {
		t.Fatalf("claim after the retry delay = %v", ids)
	}
	// Leases expire: a dead publisher's messages are claimed again.
	clock.Advance(2 * time.Minute)
	if ids := claimIDs(t, d, "pub-d", time.Minute, 10); !slices.Equal(ids, all[2:]) {
		t.Fatalf("claim after lease expiry = %v, want %v", ids, all[2:])
	}
	if err := d.MarkPublished(ctx, all); err != nil {
		t.Fatal(err)
	}
	clock.Advance(5 * time.Minute)
	if ids := claimIDs(t, d, "pub-e", time.Minute, 10); len(ids) != 0 {
		t.Fatalf("published messages claimed: %v", ids)
	}
	var rows []OutboxMessage
	if err := d.gorm.WithContext(ctx).Order("id").Find(&rows).Error; err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.PublishedAt == nil || r.LeaseOwner != "" || r.LeaseUntil != nil {
			t.Errorf("published row = %+v", r)
		}
	}
	if n, err := d.PurgePublishedOutbox(ctx, clock.Peek()); err != nil || n != 5 {
		t.Errorf("PurgePublishedOutbox = %d, %v", n, err)
	}

	for _, bad := range []struct {
		owner string
		lease time.Duration
		limit int
	}{{"", time.Minute, 1}, {"x", 0, 1}, {"x", time.Minute, 0}} {
		_, err := d.ClaimOutbox(ctx, bad.owner, bad.lease, bad.limit)
		wantErr(t, err, ErrInvalidArgument)
	}
}

// contractOutboxConcurrentClaimers: two processes (pools), two publishers
// each, drain the outbox; no message may be handed out twice.
func contractOutboxConcurrentClaimers(t *testing.T, url string) {
	ctx := testCtx(t)
	d1 := openSynced(t, url)
	d2 := openDB(t, url)
	const total = 120
	for i := 0; i < total; i++ {
		if err := d1.EnqueueOutbox(ctx, &OutboxMessage{Exchange: "ferry", RoutingKey: "k", Payload: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu   sync.Mutex
		seen = map[int64]string{}
		dups []string
		wg   sync.WaitGroup
	)
	for i, d := range []*DB{d1, d1, d2, d2} {
		wg.Add(1)
		go func(owner string, d *DB) {
			defer wg.Done()
			for {
				msgs, err := d.ClaimOutbox(ctx, owner, time.Hour, 7)
				if err != nil {
					t.Errorf("%s: %v", owner, err)
					return
				}
				if len(msgs) == 0 {
					return
				}
				ids := make([]int64, len(msgs))
				mu.Lock()
				for j, m := range msgs {
					ids[j] = m.ID
					if prev, ok := seen[m.ID]; ok {
						dups = append(dups, fmt.Sprintf("%d (%s and %s)", m.ID, prev, owner))
					}
					seen[m.ID] = owner
				}
				mu.Unlock()
				if err := d.MarkPublished(ctx, ids); err != nil {
					t.Errorf("%s: %v", owner, err)
					return
				}
			}
		}(fmt.Sprintf("publisher-%d", i), d)
	}
	wg.Wait()
	if len(dups) > 0 {
		t.Fatalf("%d messages claimed twice, first: %v", len(dups), dups[:min(len(dups), 5)])
	}
	if len(seen) != total {
		t.Fatalf("%d messages claimed, want %d", len(seen), total)
	}
	if n := countRows(t, d1, &OutboxMessage{}, "published_at IS NULL"); n != 0 {
		t.Errorf("%d messages left unpublished", n)
	}
}

func contractLeases(t *testing.T, url string) {
	ctx := testCtx(t)
	clock := newTestClock()
	d := openSynced(t, url, WithNowFunc(clock.Now))
	must := func(owner string, want bool) {
		t.Helper()
		got, err := d.AcquireLease(ctx, "finalizer", owner, time.Minute)
		if err != nil || got != want {
			t.Fatalf("AcquireLease(%s) = %v, %v; want %v", owner, got, err, want)
		}
	}
	must("api-a", true)
	must("api-b", false) // held by a
	clock.Advance(50 * time.Second)
	must("api-a", true) // renewed until +110 s
	clock.Advance(50 * time.Second)
	must("api-b", false) // the renewal counts
	clock.Advance(20 * time.Second)
	must("api-b", true) // a stopped renewing: expired
	must("api-a", false)
	if err := d.ReleaseLease(ctx, "finalizer", "api-a"); err != nil { // not a's: no effect
		t.Fatal(err)
	}
	must("api-a", false)
	if err := d.ReleaseLease(ctx, "finalizer", "api-b"); err != nil {
		t.Fatal(err)
	}
	must("api-a", true)
	if l, err := d.GetLease(ctx, "finalizer"); err != nil || l.Owner != "api-a" {
		t.Errorf("GetLease = %+v, %v", l, err)
	}
	if _, err := d.GetLease(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetLease of nothing: %v", err)
	}
	if _, err := d.AcquireLease(ctx, "", "x", time.Second); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("lease without a name: %v", err)
	}
	// Many processes race for a new lease: exactly one gets it.
	var wg sync.WaitGroup
	var mu sync.Mutex
	winners := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := d.AcquireLease(ctx, "race", fmt.Sprintf("p%d", i), time.Minute)
			if err != nil {
				t.Errorf("racer %d: %v", i, err)
			}
			if ok {
				mu.Lock()
				winners++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if winners != 1 {
		t.Errorf("%d processes hold the lease", winners)
	}
}

func contractListRegions(t *testing.T, url string) {
	ctx := testCtx(t)
	d := openSynced(t, url)
	for i, r := range [][2]string{{"RegionOne", "RegionTwo"}, {"RegionTwo", "RegionOne"}, {"RegionOne", "RegionThree"}} {
		tr := newTestTransfer("p1", fmt.Sprint("r", i))
		tr.SourceRegion, tr.DestRegion = r[0], r[1]
		mustCreate(t, d, tr)
	}
	for _, tc := range []struct {
		src, dst string
		want     []string
	}{
		{"RegionOne", "", []string{"r0", "r2"}},
		{"", "RegionOne", []string{"r1"}},
		{"RegionOne", "RegionThree", []string{"r2"}},
		{"RegionNine", "", nil},
	} {
		items, _, err := d.ListTransfers(ctx, ListOpts{Scope: ProjectScope("p1"), SourceRegion: tc.src, DestRegion: tc.dst, SortKey: "name", SortDir: "asc"})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, it := range items {
			got = append(got, it.Name)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("from %q to %q: %v, want %v", tc.src, tc.dst, got, tc.want)
		}
	}
}
