package db

import (
	"context"
	"fmt"

	"gorm.io/gorm"
)

// RepublishStart gives a transfer that stayed queued a new epoch and a new
// start message, in one transaction, and records a requeue event (queued →
// queued) with msg: its start was taken by an agent that never reported
// (died, or dropped it), and the old start, should it surface, is fenced
// off by the epoch. The transfer must still be queued at expectEpoch, else
// ErrInvalidTransition or ErrStaleEpoch; an unknown id is ErrNotFound.
// outbox builds the message from the updated transfer (required).
func (d *DB) RepublishStart(ctx context.Context, id string, expectEpoch int64, msg string, outbox func(*Transfer) (*OutboxMessage, error)) (*Transfer, error) {
	if outbox == nil {
		return nil, fmt.Errorf("db: republish %s: %w: no outbox message", id, ErrInvalidArgument)
	}
	var out Transfer
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		var cur Transfer
		if err := d.lockRow(tx).Where("id = ?", id).Take(&cur).Error; err != nil {
			return translate(err)
		}
		if cur.Epoch != expectEpoch {
			return fmt.Errorf("%w: transfer is at epoch %d, expected %d", ErrStaleEpoch, cur.Epoch, expectEpoch)
		}
		if cur.Status != StatusQueued {
			return fmt.Errorf("%w: transfer is %s, not queued", ErrInvalidTransition, cur.Status)
		}
		now := d.now()
		res := tx.Model(&Transfer{}).Where("id = ? AND status = ? AND epoch = ?", id, StatusQueued, cur.Epoch).
			UpdateColumns(map[string]any{"epoch": gorm.Expr("epoch + 1"), "updated_at": now})
		if res.Error != nil {
			return fmt.Errorf("update: %w", translate(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: transfer changed concurrently", ErrConflict)
		}
		ev := TransferEvent{TransferID: id, CreatedAt: now, Kind: EventRequeue,
			FromStatus: StatusQueued, ToStatus: StatusQueued, Message: msg}
		if err := tx.Create(&ev).Error; err != nil {
			return fmt.Errorf("insert event: %w", translate(err))
		}
		if err := tx.Where("id = ?", id).Take(&out).Error; err != nil {
			return err
		}
		m, err := outbox(&out)
		if err != nil {
			return fmt.Errorf("outbox message: %w", err)
		}
		if m == nil {
			return fmt.Errorf("%w: no outbox message", ErrInvalidArgument)
		}
		return insertOutbox(tx, now, m)
	})
	if err != nil {
		return nil, fmt.Errorf("db: republish %s: %w", id, err)
	}
	return &out, nil
}

// CountRepublishes counts the RepublishStart events of a transfer since
// its last retry (a retry starts the count again).
func (d *DB) CountRepublishes(ctx context.Context, id string) (int, error) {
	g := d.gorm.WithContext(ctx)
	var since int64
	err := g.Model(&TransferEvent{}).Where("transfer_id = ? AND kind = ?", id, EventRetry).
		Select("COALESCE(MAX(id), 0)").Scan(&since).Error
	if err != nil {
		return 0, fmt.Errorf("db: count republishes of %s: %w", id, err)
	}
	var n int64
	err = g.Model(&TransferEvent{}).
		Where("transfer_id = ? AND kind = ? AND from_status = ? AND to_status = ? AND id > ?", id, EventRequeue, StatusQueued, StatusQueued, since).
		Count(&n).Error
	if err != nil {
		return 0, fmt.Errorf("db: count republishes of %s: %w", id, err)
	}
	return int(n), nil
}
