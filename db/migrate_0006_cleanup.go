package db

import (
	"time"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
)

// m0006Transfer is the frozen shape of the column 0006_cleanup adds to
// transfers: when the garbage collector sent the clean-up of a failed or
// cancelled transfer's leftovers (images, snapshots) to its agents.
type m0006Transfer struct {
	CleanedAt *time.Time `gorm:"column:cleaned_at;precision:6"`
}

func (m0006Transfer) TableName() string { return "transfers" }

func migration0006Cleanup() *gormigrate.Migration {
	return &gormigrate.Migration{
		ID: "0006_cleanup",
		Migrate: func(tx *gorm.DB) error {
			if m := tx.Migrator(); !m.HasColumn(&m0006Transfer{}, "CleanedAt") {
				return m.AddColumn(&m0006Transfer{}, "CleanedAt")
			}
			return nil
		},
		Rollback: func(tx *gorm.DB) error {
			if m := tx.Migrator(); m.HasColumn(&m0006Transfer{}, "CleanedAt") {
				return m.DropColumn(&m0006Transfer{}, "CleanedAt")
			}
			return nil
		},
	}
}
