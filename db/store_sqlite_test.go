package db

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// sqliteURL returns the URL of a new SQLite file in the test's temp dir.
func sqliteURL(t *testing.T) string {
	return "sqlite:///" + filepath.Join(t.TempDir(), "ferry.sqlite")
}

func TestStoreContractSQLite(t *testing.T) {
	runStoreContract(t, sqliteURL)
}

// TestSQLiteConcurrentCreates: concurrent API writes queue behind the single
// connection, and a second process on the same file waits on the busy
// timeout: no "database is locked" reaches the caller.
func TestSQLiteConcurrentCreates(t *testing.T) {
	url := sqliteURL(t)
	d1 := openSynced(t, url)
	d2 := openDB(t, url) // another process on the same file
	ctx := testCtx(t)
	const goroutines, perG = 20, 20
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			d := d1
			if g%4 == 3 {
				d = d2
			}
			for i := 0; i < perG; i++ {
				tr := newTestTransfer(fmt.Sprintf("p%d", g%3), fmt.Sprintf("g%d-%d", g, i))
				err := d.CreateTransfer(ctx, tr, &OutboxMessage{Exchange: "ferry", RoutingKey: "agent.RegionOne", Payload: tr.Name})
				if err == nil && i%5 == 0 {
					_, err = d.TransitionTransfer(ctx, tr.ID, StatusAccepted, TransitionOpts{})
				}
				if err == nil && i%7 == 0 {
					_, _, err = d.ListTransfers(ctx, ListOpts{Scope: AllProjectsScope(), Limit: 5})
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}(g)
	}
	wg.Wait()
	for _, err := range errs {
		if strings.Contains(err.Error(), "locked") || strings.Contains(err.Error(), "busy") {
			t.Errorf("lock error surfaced: %v", err)
		} else {
			t.Errorf("error: %v", err)
		}
	}
	if n := countRows(t, d1, &Transfer{}, ""); n != goroutines*perG {
		t.Errorf("%d transfers, want %d", n, goroutines*perG)
	}
	if n := countRows(t, d1, &OutboxMessage{}, ""); n != goroutines*perG {
		t.Errorf("%d outbox rows, want %d", n, goroutines*perG)
	}
}

// TestSQLiteMemory: sqlite:// is a private in-memory database usable from
// many goroutines (one connection keeps it alive).
func TestSQLiteMemory(t *testing.T) {
	ctx := testCtx(t)
	d := openSynced(t, "sqlite://")
	other := openSynced(t, "sqlite://")
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- d.CreateTransfer(ctx, newTestTransfer("p1", fmt.Sprint(i)), nil)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	items, _, err := d.ListTransfers(ctx, ListOpts{Scope: ProjectScope("p1")})
	if err != nil || len(items) != 40 {
		t.Fatalf("listed %d, %v", len(items), err)
	}
	if items, _, _ := other.ListTransfers(ctx, ListOpts{Scope: ProjectScope("p1")}); len(items) != 0 {
		t.Errorf("a second sqlite:// database shares the first's rows")
	}
}

func TestCheckCurrentOnEmptyDatabase(t *testing.T) {
	ctx := testCtx(t)
	d := openDB(t, sqliteURL(t))
	err := d.CheckCurrent(ctx)
	if !errors.Is(err, ErrSchemaOutdated) {
		t.Fatalf("CheckCurrent = %v, want ErrSchemaOutdated", err)
	}
	_, err = d.GetTransfer(ctx, "x", AllProjectsScope())
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("GetTransfer without a schema = %v, want a plain error", err)
	}
}

func TestIsRetryable(t *testing.T) {
	if isRetryable(errors.New("database is locked")) {
		t.Error("a plain error is retryable")
	}
	if isRetryable(nil) {
		t.Error("nil is retryable")
	}
}
