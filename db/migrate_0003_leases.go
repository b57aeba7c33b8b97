package db

import (
	"time"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
)

// m0003Lease is the frozen shape of the leases table: named, time-limited
// locks among the processes that share the database.
type m0003Lease struct {
	Name      string    `gorm:"column:name;type:varchar(64);primaryKey"`
	Owner     string    `gorm:"column:owner;type:varchar(255);not null"`
	ExpiresAt time.Time `gorm:"column:expires_at;precision:6;not null"`
	UpdatedAt time.Time `gorm:"column:updated_at;precision:6;not null"`
}

func (m0003Lease) TableName() string { return "leases" }

func migration0003Leases() *gormigrate.Migration {
	return &gormigrate.Migration{
		ID: "0003_leases",
		Migrate: func(tx *gorm.DB) error {
			if tx.Dialector.Name() == "mysql" {
				tx = tx.Set("gorm:table_options", mysqlTableOptions).Session(&gorm.Session{})
			}
			return tx.Migrator().CreateTable(&m0003Lease{})
		},
		Rollback: func(tx *gorm.DB) error { return tx.Migrator().DropTable("leases") },
	}
}
