//go:build functional && bench

package db

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
)

// Scale of the bench: 1,000 volumes on a 5-minute interval make 288k
// cycle transfers a day; the bench keeps 100k of them (cycle_retention
// prunes the rest) beside 10k replications.
const (
	scaleTransfers    = 100_000
	scaleReplications = 10_000
	scaleProjects     = 20
	scaleInterval     = 300 * time.Second
	scaleSamples      = 200
)

// TestScaleBench records, on SQLite and PostgreSQL: the p99 of a page of
// 50 transfers and of 50 replications (a project's first page, a page
// deep in it by marker, an admin's all-projects page), and the database
// cost of one scheduler tick with 10k replications on a 5-minute
// interval (the due ones found and their cycles started or skipped).
// The figures go to .bench/results.json (./tox-like-ci -e bench).
func TestScaleBench(t *testing.T) {
	var records []map[string]any
	for _, c := range []struct {
		name string
		url  func(*testing.T) string
	}{{"sqlite", sqliteURL}, {"postgresql", postgresDB}} {
		t.Run(c.name, func(t *testing.T) {
			records = append(records, scaleBench(t, c.name, c.url(t))...)
		})
	}
	writeBenchRecords(t, records)
}

func scaleBench(t *testing.T, dialect, url string) []map[string]any {
	clock := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	d := openSynced(t, url, WithNowFunc(func() time.Time { return clock }))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	// Seed with batched inserts (the store's own create path is measured
	// by the contract tests; here only the volume matters).
	seedStart := time.Now()
	reps := make([]Replication, scaleReplications)
	for i := range reps {
		p := fmt.Sprintf("project-%02d", i%scaleProjects)
		reps[i] = Replication{
			ID: uuid.NewString(), Name: fmt.Sprintf("r%d", i), ProjectID: p, UserID: "u", Status: ReplicationActive,
			SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: fmt.Sprintf("volume-%d", i),
			DestRegion: "RegionTwo", DestPool: "volumes", DestImage: fmt.Sprintf("ferry-replica-%d", i),
			IntervalSeconds: int(scaleInterval / time.Second), RPOSeconds: 900, KeepLast: 3,
			// Spread over one interval, as jitter does.
			NextRunAt: clock.Add(time.Duration(i) * scaleInterval / scaleReplications),
			CreatedAt: clock.Add(-time.Duration(scaleReplications-i) * time.Second), UpdatedAt: clock,
		}
	}
	// One transaction: SQLite commits (fsyncs) once.
	tx := d.gorm.WithContext(ctx).Begin()
	if err := tx.CreateInBatches(reps, 500).Error; err != nil {
		t.Fatal(err)
	}
	batch := make([]Transfer, 0, 1000)
	done := clock.Add(-time.Hour)
	for i := range scaleTransfers {
		r := reps[i%scaleReplications]
		at := clock.Add(-time.Duration(scaleTransfers-i) * time.Second)
		batch = append(batch, Transfer{
			ID: uuid.NewString(), Name: "cycle", ProjectID: r.ProjectID, UserID: "u", Status: StatusCompleted, Mode: ModeIncremental,
			SourceRegion: r.SourceRegion, SourcePool: r.SourcePool, SourceImage: r.SourceImage,
			DestRegion: r.DestRegion, DestPool: r.DestPool, DestImage: r.DestImage, ReplicationID: r.ID,
			Attempt: 1, Epoch: 1, CreatedAt: at, UpdatedAt: at, StartedAt: &at, FinishedAt: &done,
		})
		if len(batch) == cap(batch) {
			if err := tx.CreateInBatches(batch, 500).Error; err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := tx.Commit().Error; err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: seeded %d replications and %d transfers in %s", dialect, scaleReplications, scaleTransfers, time.Since(seedStart).Round(time.Millisecond))

	var recs []map[string]any
	p99 := func(metric string, fn func() error) {
		t.Helper()
		lat := make([]time.Duration, 0, scaleSamples)
		for range scaleSamples {
			t0 := time.Now()
			if err := fn(); err != nil {
				t.Fatalf("%s: %v", metric, err)
			}
			lat = append(lat, time.Since(t0))
		}
		slices.Sort(lat)
		p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
		t.Logf("%s %-34s p50 %8.2f ms  p99 %8.2f ms", dialect, metric, ms(p50), ms(p99))
		recs = append(recs, map[string]any{"case": "db-" + dialect, "metric": metric + "_p99_ms", "value": ms(p99), "unit": "ms"})
	}
	project := ProjectScope("project-07")
	var deepMarker string
	{
		// A marker half-way down the project's transfers.
		page, _, err := d.ListTransfers(ctx, ListOpts{Scope: project, Limit: 1000})
		if err != nil || len(page) == 0 {
			t.Fatalf("list: %v (%d)", err, len(page))
		}
		deepMarker = page[len(page)-1].ID
	}
	check := func(n int, more bool, want int) error {
		if n != want || !more {
			return fmt.Errorf("page of %d (more %v), want %d and more", n, more, want)
		}
		return nil
	}
	p99("transfers_page50_project", func() error {
		page, more, err := d.ListTransfers(ctx, ListOpts{Scope: project, Limit: 50})
		if err != nil {
			return err
		}
		return check(len(page), more, 50)
	})
	p99("transfers_page50_project_marker", func() error {
		page, more, err := d.ListTransfers(ctx, ListOpts{Scope: project, Limit: 50, Marker: deepMarker})
		if err != nil {
			return err
		}
		return check(len(page), more, 50)
	})
	p99("transfers_page50_all_projects", func() error {
		page, more, err := d.ListTransfers(ctx, ListOpts{Scope: AllProjectsScope(), Limit: 50})
		if err != nil {
			return err
		}
		return check(len(page), more, 50)
	})
	p99("transfers_page50_replication", func() error {
		// One replication's cycles (10 of them here): the filter's index.
		_, _, err := d.ListTransfers(ctx, ListOpts{Scope: project, ReplicationID: reps[7].ID, Limit: 50})
		return err
	})
	p99("replications_page50_project", func() error {
		page, more, err := d.ListReplications(ctx, ListOpts{Scope: project, Limit: 50})
		if err != nil {
			return err
		}
		return check(len(page), more, 50)
	})
	p99("replications_page50_all_projects", func() error {
		page, more, err := d.ListReplications(ctx, ListOpts{Scope: AllProjectsScope(), Limit: 50})
		if err != nil {
			return err
		}
		return check(len(page), more, 50)
	})

	// Scheduler ticks: the clock moves 1 s per tick; each tick finds the
	// replications due (about 10k/300 s = 33) and starts their cycles.
	// Half of the last cycles are still running, so about half are skips.
	for i := 0; i < scaleReplications; i += 2 {
		id := uuid.NewString()
		at := clock
		if err := d.gorm.WithContext(ctx).Create(&Transfer{ID: id, Name: "running", ProjectID: reps[i].ProjectID, UserID: "u",
			Status: StatusTransferring, Mode: ModeIncremental, SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: reps[i].SourceImage,
			DestRegion: "RegionTwo", DestPool: "volumes", DestImage: reps[i].DestImage, ReplicationID: reps[i].ID,
			Attempt: 1, Epoch: 1, CreatedAt: at, UpdatedAt: at}).Error; err != nil {
			t.Fatal(err)
		}
		if err := d.gorm.WithContext(ctx).Model(&Replication{}).Where("id = ?", reps[i].ID).Update("last_transfer_id", id).Error; err != nil {
			t.Fatal(err)
		}
	}
	const ticks = 60
	var tickCost []time.Duration
	started, skipped := 0, 0
	for range ticks {
		clock = clock.Add(time.Second)
		now := clock
		t0 := time.Now()
		due, err := d.DueReplications(ctx, now, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range due {
			tr := &Transfer{ID: uuid.NewString(), Name: "cycle", ProjectID: r.ProjectID, UserID: r.UserID, Mode: ModeAuto,
				SourceRegion: r.SourceRegion, SourcePool: r.SourcePool, SourceImage: r.SourceImage,
				DestRegion: r.DestRegion, DestPool: r.DestPool, DestImage: r.DestImage, ReplicationID: r.ID}
			got, skip, err := d.StartCycle(ctx, r.ID, now, now.Add(scaleInterval), tr, func(tr *Transfer) (*OutboxMessage, error) {
				return &OutboxMessage{Exchange: "ferry", RoutingKey: "agent." + tr.SourceRegion, Payload: `{"transfer_id":"` + tr.ID + `"}`}, nil
			})
			switch {
			case err != nil:
				t.Fatal(err)
			case skip:
				skipped++
			case got != nil:
				started++
			}
		}
		tickCost = append(tickCost, time.Since(t0))
	}
	if started == 0 || skipped == 0 {
		t.Fatalf("%d ticks started %d cycles and skipped %d: the bench does not exercise both", ticks, started, skipped)
	}
	slices.Sort(tickCost)
	perCycle := time.Duration(0)
	for _, c := range tickCost {
		perCycle += c
	}
	perCycle /= time.Duration(started + skipped)
	t.Logf("%s scheduler tick (10k replications, 5 min interval): %d started, %d skipped in %d ticks; p50 %.2f ms, p99 %.2f ms, %.2f ms per due replication",
		dialect, started, skipped, ticks, ms(tickCost[len(tickCost)/2]), ms(tickCost[len(tickCost)*99/100]), ms(perCycle))
	recs = append(recs,
		map[string]any{"case": "db-" + dialect, "metric": "scheduler_tick_p50_ms", "value": ms(tickCost[len(tickCost)/2]), "unit": "ms"},
		map[string]any{"case": "db-" + dialect, "metric": "scheduler_tick_p99_ms", "value": ms(tickCost[len(tickCost)*99/100]), "unit": "ms"},
		map[string]any{"case": "db-" + dialect, "metric": "scheduler_ms_per_due_replication", "value": ms(perCycle), "unit": "ms"},
	)
	return recs
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// writeBenchRecords appends records to .bench/results.json.
func writeBenchRecords(t *testing.T, records []map[string]any) {
	t.Helper()
	path, err := filepath.Abs(filepath.Join("..", ".bench", "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var all []map[string]any
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &all); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	all = append(all, records...)
	b, _ := json.MarshalIndent(all, "", "  ")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, r := range records {
		fmt.Printf("%-16s %-40s %v %v\n", r["case"], r["metric"], r["value"], r["unit"])
	}
}
