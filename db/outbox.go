package db

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// MaxOutboxClaim bounds the rows one ClaimOutbox call returns.
const MaxOutboxClaim = 1000

func checkOutbox(m *OutboxMessage) error {
	if m.Payload == "" {
		return fmt.Errorf("%w: outbox message has no payload", ErrInvalidArgument)
	}
	if utf8.RuneCountInString(m.Exchange) > MaxRoutingKeyLength || utf8.RuneCountInString(m.RoutingKey) > MaxRoutingKeyLength {
		return fmt.Errorf("%w: outbox exchange or routing key longer than %d characters", ErrInvalidArgument, MaxRoutingKeyLength)
	}
	return nil
}

// resetOutbox prepares m for insertion (again, when a transaction is retried).
func resetOutbox(m *OutboxMessage, now time.Time) {
	m.ID = 0
	m.CreatedAt = now
	m.Attempts = 0
	m.LastError = nil
	m.PublishedAt = nil
	m.LeaseOwner = ""
	m.LeaseUntil = nil
}

// insertOutbox checks msgs and inserts them within tx (the transaction of
// the change they belong to), created at now.
func insertOutbox(tx *gorm.DB, now time.Time, msgs ...*OutboxMessage) error {
	for _, m := range msgs {
		if err := checkOutbox(m); err != nil {
			return err
		}
		resetOutbox(m, now)
		if err := tx.Create(m).Error; err != nil {
			return fmt.Errorf("insert outbox message: %w", translate(err))
		}
	}
	return nil
}

// EnqueueOutbox adds a message on its own (CreateTransfer adds the one for a
// new transfer in its transaction).
func (d *DB) EnqueueOutbox(ctx context.Context, m *OutboxMessage) error {
	if m == nil {
		return fmt.Errorf("db: enqueue outbox: %w: nil message", ErrInvalidArgument)
	}
	if err := checkOutbox(m); err != nil {
		return fmt.Errorf("db: enqueue outbox: %w", err)
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		resetOutbox(m, d.now())
		return tx.Create(m).Error
	})
	if err != nil {
		return fmt.Errorf("db: enqueue outbox: %w", err)
	}
	return nil
}

// ClaimOutbox leases up to limit unpublished messages whose lease is free
// (never leased, released, or expired) to owner for the lease duration and
// returns them, oldest first. Several publishers (API processes) may claim
// at once: on MySQL/MariaDB and PostgreSQL the rows are read with
// SELECT … FOR UPDATE SKIP LOCKED, so no two claimers get the same row;
// SQLite serialises writers. A message whose publisher dies is claimed
// again once its lease expires (delivery is at least once).
func (d *DB) ClaimOutbox(ctx context.Context, owner string, lease time.Duration, limit int) ([]OutboxMessage, error) {
	switch {
	case owner == "" || utf8.RuneCountInString(owner) > MaxNameLength:
		return nil, fmt.Errorf("db: claim outbox: %w: owner must be 1–%d characters", ErrInvalidArgument, MaxNameLength)
	case lease <= 0:
		return nil, fmt.Errorf("db: claim outbox: %w: lease must be positive", ErrInvalidArgument)
	case limit <= 0:
		return nil, fmt.Errorf("db: claim outbox: %w: limit must be positive", ErrInvalidArgument)
	}
	limit = min(limit, MaxOutboxClaim)
	var out []OutboxMessage
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		out = nil
		now := d.now()
		q := tx.Where("published_at IS NULL AND (lease_until IS NULL OR lease_until <= ?)", now).
			Order("id").Limit(limit)
		if d.dialect != DialectSQLite {
			q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate, Options: clause.LockingOptionsSkipLocked})
		}
		if err := q.Find(&out).Error; err != nil {
			return err
		}
		if len(out) == 0 {
			return nil
		}
		ids := make([]int64, len(out))
		for i := range out {
			ids[i] = out[i].ID
		}
		until := now.Add(lease)
		res := tx.Model(&OutboxMessage{}).Where("id IN ?", ids).
			UpdateColumns(map[string]any{"lease_owner": owner, "lease_until": until})
		if res.Error != nil {
			return res.Error
		}
		for i := range out {
			out[i].LeaseOwner = owner
			out[i].LeaseUntil = &until
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("db: claim outbox for %s: %w", owner, err)
	}
	return out, nil
}

// MarkPublished records that the broker confirmed the messages.
func (d *DB) MarkPublished(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		return tx.Model(&OutboxMessage{}).Where("id IN ? AND published_at IS NULL", ids).
			UpdateColumns(map[string]any{"published_at": d.now(), "lease_owner": "", "lease_until": nil}).Error
	})
	if err != nil {
		return fmt.Errorf("db: mark outbox published: %w", err)
	}
	return nil
}

// ReleaseOutbox gives claimed messages back after a failed publish: their
// attempts are bumped, reason is kept as last_error, and the lease is
// cleared so they may be claimed again after retryAfter (0: at once).
func (d *DB) ReleaseOutbox(ctx context.Context, ids []int64, retryAfter time.Duration, reason string) error {
	if len(ids) == 0 {
		return nil
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		var until any
		if retryAfter > 0 {
			until = d.now().Add(retryAfter)
		}
		return tx.Model(&OutboxMessage{}).Where("id IN ? AND published_at IS NULL", ids).
			UpdateColumns(map[string]any{
				"attempts":    gorm.Expr("attempts + 1"),
				"last_error":  reason,
				"lease_owner": "",
				"lease_until": until,
			}).Error
	})
	if err != nil {
		return fmt.Errorf("db: release outbox: %w", err)
	}
	return nil
}

// PurgePublishedOutbox deletes messages published before cutoff and
// returns how many went.
func (d *DB) PurgePublishedOutbox(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		res := tx.Where("published_at IS NOT NULL AND published_at < ?", before.UTC()).Delete(&OutboxMessage{})
		n = res.RowsAffected
		return res.Error
	})
	if err != nil {
		return 0, fmt.Errorf("db: purge outbox: %w", err)
	}
	return n, nil
}
