package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	gosqlite "github.com/glebarez/go-sqlite"
	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/gorm"
)

// txAttempts bounds how often a transaction that lost a deadlock or a
// serialization conflict is run again.
const txAttempts = 5

// inTx runs fn in a transaction, retrying it from the start when the
// database reports a deadlock, a serialization failure or a busy SQLite
// file. fn must therefore be repeatable: build rows inside it.
//
// On SQLite the pool has one connection, held by the transaction: fn must
// use tx, never d.gorm, or it waits for itself.
func (d *DB) inTx(ctx context.Context, fn func(tx *gorm.DB) error) error {
	var opts []*sql.TxOptions
	if d.dialect == DialectMySQL {
		// READ COMMITTED, as PostgreSQL's default: no gap locks, and an
		// UPDATE that scans past rows another transaction locked (as in
		// ClaimOutbox, whose rows SKIP LOCKED left to others) checks their
		// last committed version instead of waiting for them.
		opts = append(opts, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	}
	for attempt := 1; ; attempt++ {
		err := d.gorm.WithContext(ctx).Transaction(fn, opts...)
		if err == nil || attempt == txAttempts || !isRetryable(err) {
			return err
		}
		backoff := time.Duration(attempt)*10*time.Millisecond + rand.N(10*time.Millisecond)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (%w)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// isRetryable reports whether err is a transient concurrency failure after
// which the whole transaction may simply be run again.
func isRetryable(err error) bool {
	var myErr *mysql.MySQLError
	if errors.As(err, &myErr) {
		return myErr.Number == 1213 // ER_LOCK_DEADLOCK
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01" // serialization_failure, deadlock_detected
	}
	var liteErr *gosqlite.Error
	if errors.As(err, &liteErr) {
		switch liteErr.Code() & 0xff {
		case 5, 6: // SQLITE_BUSY, SQLITE_LOCKED
			return true
		}
	}
	return false
}

// translate maps gorm's portable errors to this package's sentinels,
// keeping the original in the chain.
func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, gorm.ErrRecordNotFound):
		return fmt.Errorf("%w (%w)", ErrNotFound, err)
	case errors.Is(err, gorm.ErrDuplicatedKey):
		return fmt.Errorf("%w (%w)", ErrConflict, err)
	}
	return err
}
