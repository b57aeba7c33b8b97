//go:build functional

package db

// Functional tests: the store contract on real database servers. They need
// MariaDB (or MySQL) and PostgreSQL reachable at the URLs below (override
// with FERRY_TEST_MYSQL_URL / FERRY_TEST_POSTGRES_URL, which name the server
// and its admin database). They fail, never skip, when a server is missing.
//
//	go test -race -tags functional ./db/

import (
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"
)

const (
	defaultMySQLAdminURL    = "mysql+pymysql://root:@127.0.0.1:3306/mysql"
	defaultPostgresAdminURL = "postgresql://postgres@127.0.0.1:5432/postgres"
)

func adminURL(env, def string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

func randomDBName(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "ferry_test_" + hex.EncodeToString(b)
}

// serverDB creates a uniquely named database on the server behind admin and
// returns its URL; the database is dropped when the test ends.
func serverDB(t *testing.T, admin string) string {
	t.Helper()
	ctx := testCtx(t)
	a, err := Open(ctx, admin, WithMaxOpenConns(2))
	if err != nil {
		t.Fatalf("database server not reachable (%s): %v", Redact(admin), err)
	}
	t.Cleanup(func() { _ = a.Close() })
	name := randomDBName(t)
	create, drop := "CREATE DATABASE "+name, "DROP DATABASE IF EXISTS "+name
	switch a.Dialect() {
	case DialectMySQL:
		create += " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
	case DialectPostgres:
		drop += " WITH (FORCE)"
	}
	if err := a.gorm.WithContext(ctx).Exec(create).Error; err != nil {
		t.Fatalf("%s: %v", create, err)
	}
	// Registered before the test opens the new database, so it runs after
	// those handles are closed (cleanups run last-in first-out).
	t.Cleanup(func() {
		if err := a.gorm.Exec(drop).Error; err != nil {
			t.Errorf("%s: %v", drop, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

func mysqlDB(t *testing.T) string {
	return serverDB(t, adminURL("FERRY_TEST_MYSQL_URL", defaultMySQLAdminURL))
}

func postgresDB(t *testing.T) string {
	return serverDB(t, adminURL("FERRY_TEST_POSTGRES_URL", defaultPostgresAdminURL))
}

func TestFunctionalSQLite(t *testing.T)     { runStoreContract(t, sqliteURL) }
func TestFunctionalMariaDB(t *testing.T)    { runStoreContract(t, mysqlDB) }
func TestFunctionalPostgreSQL(t *testing.T) { runStoreContract(t, postgresDB) }

func TestFunctionalOutboxSkipLockedMariaDB(t *testing.T) {
	testOutboxSkipLocked(t, mysqlDB(t))
}

func TestFunctionalOutboxSkipLockedPostgreSQL(t *testing.T) {
	testOutboxSkipLocked(t, postgresDB(t))
}

// testOutboxSkipLocked: while one publisher's claim transaction holds rows
// locked, a second publisher (another pool, as in another process) claims
// at once — it neither waits for the lock nor receives the locked rows.
func testOutboxSkipLocked(t *testing.T, url string) {
	ctx := testCtx(t)
	d1 := openSynced(t, url)
	d2 := openDB(t, url)
	var ids []int64
	for i := 0; i < 10; i++ {
		m := &OutboxMessage{Exchange: "ferry", RoutingKey: "agent.RegionOne", Payload: "{}"}
		if err := d1.EnqueueOutbox(ctx, m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}

	// Publisher A: lock the three oldest rows and hold the transaction.
	locked := make(chan []int64)
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- d1.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			var rows []OutboxMessage
			err := d1.lockRow(tx).Where("published_at IS NULL").Order("id").Limit(3).Find(&rows).Error
			if err != nil {
				close(locked)
				return err
			}
			got := make([]int64, len(rows))
			for i, r := range rows {
				got[i] = r.ID
			}
			locked <- got
			<-release
			return nil
		})
	}()
	held, ok := <-locked
	if !ok {
		t.Fatalf("locking rows: %v", <-done)
	}
	if len(held) != 3 || held[0] != ids[0] {
		t.Fatalf("publisher A locked %v", held)
	}

	// Publisher B claims while A holds its locks.
	start := time.Now()
	msgs, err := d2.ClaimOutbox(ctx, "publisher-b", time.Minute, 100)
	if err != nil {
		t.Fatalf("ClaimOutbox while rows are locked: %v", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("ClaimOutbox waited %v for locked rows", waited)
	}
	gotB := map[int64]bool{}
	for _, m := range msgs {
		gotB[m.ID] = true
	}
	for _, id := range held {
		if gotB[id] {
			t.Errorf("publisher B received row %d locked by publisher A", id)
		}
	}
	if len(msgs) != len(ids)-len(held) {
		t.Errorf("publisher B claimed %d rows, want %d", len(msgs), len(ids)-len(held))
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Once A lets go, its rows are free (A never leased them); B's are not.
	msgs, err = d1.ClaimOutbox(ctx, "publisher-a", time.Minute, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(held) {
		t.Errorf("after the lock is released publisher A claimed %d rows, want %d", len(msgs), len(held))
	}
	for _, m := range msgs {
		if gotB[m.ID] {
			t.Errorf("row %d handed to both publishers", m.ID)
		}
	}
}

// TestFunctionalConcurrentWritesServers: concurrent creates and transitions
// through pools of several connections on each server, with no lost or
// failed write (deadlocks, if any, are retried inside the store).
func TestFunctionalConcurrentWritesServers(t *testing.T) {
	for name, newURL := range map[string]func(*testing.T) string{"MariaDB": mysqlDB, "PostgreSQL": postgresDB} {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			url := newURL(t)
			d := openSynced(t, url)
			const goroutines, perG = 10, 15
			var wg sync.WaitGroup
			errs := make(chan error, goroutines*perG)
			for g := 0; g < goroutines; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					for i := 0; i < perG; i++ {
						tr := newTestTransfer("p1", "c")
						err := d.CreateTransfer(ctx, tr, &OutboxMessage{Exchange: "ferry", RoutingKey: "k", Payload: "{}"})
						if err == nil {
							_, err = d.TransitionTransfer(ctx, tr.ID, StatusAccepted, TransitionOpts{})
						}
						if err != nil {
							errs <- err
						}
					}
				}(g)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if n := countRows(t, d, &Transfer{}, "status = ?", StatusAccepted); n != goroutines*perG {
				t.Errorf("%d accepted transfers, want %d", n, goroutines*perG)
			}
		})
	}
}
