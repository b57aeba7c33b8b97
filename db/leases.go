package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Lease is a named lock with an expiry among the processes that share the
// database: the holder renews it before it expires; when it does not (it
// stopped), another process may take it.
type Lease struct {
	Name      string    `gorm:"column:name;primaryKey"`
	Owner     string    `gorm:"column:owner"`
	ExpiresAt time.Time `gorm:"column:expires_at"`
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName implements gorm's tabler.
func (Lease) TableName() string { return "leases" }

// AcquireLease takes lease name for owner until ttl from now (by the
// database's clock), or renews it when owner holds it already. It reports
// whether owner holds the lease after the call; another owner's unexpired
// lease is false, not an error.
func (d *DB) AcquireLease(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	if name == "" || owner == "" || ttl <= 0 {
		return false, fmt.Errorf("db: acquire lease: %w: name, owner and a positive ttl are needed", ErrInvalidArgument)
	}
	held := false
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		now := d.now()
		var cur Lease
		err := d.lockRow(tx).Where("name = ?", name).Take(&cur).Error
		switch {
		case errors.Is(err, gorm.ErrRecordNotFound):
			res := tx.Clauses(clause.OnConflict{DoNothing: true}).Create(&Lease{Name: name, Owner: owner, ExpiresAt: now.Add(ttl), UpdatedAt: now})
			if res.Error != nil {
				return res.Error
			}
			// Another process may have created it first (RowsAffected does
			// not tell on MySQL with found rows): read who holds it.
			if err := d.lockRow(tx).Where("name = ?", name).Take(&cur).Error; err != nil {
				return err
			}
			held = cur.Owner == owner
			return nil
		case err != nil:
			return err
		case cur.Owner != owner && cur.ExpiresAt.After(now):
			return nil
		}
		res := tx.Model(&Lease{}).Where("name = ?", name).
			UpdateColumns(map[string]any{"owner": owner, "expires_at": now.Add(ttl), "updated_at": now})
		if res.Error != nil {
			return res.Error
		}
		held = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("db: acquire lease %s: %w", name, translate(err))
	}
	return held, nil
}

// ReleaseLease gives lease name up if owner holds it (so that another
// process need not wait for it to expire).
func (d *DB) ReleaseLease(ctx context.Context, name, owner string) error {
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		return tx.Where("name = ? AND owner = ?", name, owner).Delete(&Lease{}).Error
	})
	if err != nil {
		return fmt.Errorf("db: release lease %s: %w", name, translate(err))
	}
	return nil
}

// GetLease returns lease name, expired or not; ErrNotFound when there is
// none.
func (d *DB) GetLease(ctx context.Context, name string) (*Lease, error) {
	var l Lease
	if err := d.gorm.WithContext(ctx).Where("name = ?", name).Take(&l).Error; err != nil {
		return nil, fmt.Errorf("db: lease %s: %w", name, translate(err))
	}
	return &l, nil
}
