package db

import (
	"time"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
)

// m0004Transfer is the frozen shape of the column 0004_register_ledger adds
// to transfers: the finalizer's own record that it sent a Cinder
// registration request (manage-existing) whose answer it may not have
// seen, so that a resumed finalization looks for what that request made
// instead of trusting anything a user can write (volume metadata).
type m0004Transfer struct {
	RegisterStartedAt *time.Time `gorm:"column:register_started_at;precision:6"`
}

func (m0004Transfer) TableName() string { return "transfers" }

func migration0004RegisterLedger() *gormigrate.Migration {
	return &gormigrate.Migration{
		ID: "0004_register_ledger",
		Migrate: func(tx *gorm.DB) error {
			if m := tx.Migrator(); !m.HasColumn(&m0004Transfer{}, "RegisterStartedAt") {
				return m.AddColumn(&m0004Transfer{}, "RegisterStartedAt")
			}
			return nil
		},
		Rollback: func(tx *gorm.DB) error {
			if m := tx.Migrator(); m.HasColumn(&m0004Transfer{}, "RegisterStartedAt") {
				return m.DropColumn(&m0004Transfer{}, "RegisterStartedAt")
			}
			return nil
		},
	}
}
