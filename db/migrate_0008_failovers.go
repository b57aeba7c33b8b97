package db

import (
	"time"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Migration 0008_failovers: failover and failback of replications. FROZEN:
// these struct copies describe the schema as this migration creates it;
// never edit them.

// m0008Replication is the columns 0008 adds to replications: the failover
// or failback under way (NULL when none), and the Cinder volume the
// destination image is ("" while it is Ferry's replica; after a failover,
// the original volume).
type m0008Replication struct {
	FailoverID   *string `gorm:"column:failover_id;type:varchar(36)"`
	DestVolumeID string  `gorm:"column:dest_volume_id;type:varchar(64);not null;default:''"`
}

func (m0008Replication) TableName() string { return "replications" }

// m0008ReplicationColumns are m0008Replication's fields and columns.
var m0008ReplicationColumns = []struct{ field, column string }{
	{"FailoverID", "failover_id"}, {"DestVolumeID", "dest_volume_id"},
}

// m0008Failover: one failover or failback of a replication, the steps it
// has done and what it recorded on the way.
type m0008Failover struct {
	ID            string            `gorm:"column:id;type:varchar(36);primaryKey;not null;index:idx_replication_failovers_replication,priority:3"`
	ReplicationID string            `gorm:"column:replication_id;type:varchar(36);not null;index:idx_replication_failovers_replication,priority:1"`
	Replication   *m0007Replication `gorm:"foreignKey:ReplicationID;references:ID;constraint:fk_replication_failovers_replication,OnDelete:CASCADE"`
	ProjectID     string            `gorm:"column:project_id;type:varchar(64);not null"`
	UserID        string            `gorm:"column:user_id;type:varchar(64);not null;default:''"`
	RequestID     string            `gorm:"column:request_id;type:varchar(64);not null;default:''"`
	Kind          string            `gorm:"column:kind;type:varchar(32);not null"`
	Planned       bool              `gorm:"column:planned;not null;default:false"`
	Force         bool              `gorm:"column:force;not null;default:false"`
	// OriginalReadOnly: the original volume was read-only before Ferry
	// set the flag; it stays so.
	OriginalReadOnly bool `gorm:"column:original_read_only;not null;default:false"`

	RequestedPoint  string  `gorm:"column:requested_point;type:varchar(255);not null;default:''"`
	Point           string  `gorm:"column:point;type:varchar(255);not null;default:''"`
	Step            string  `gorm:"column:step;type:varchar(32);not null;default:''"`
	Status          string  `gorm:"column:status;type:varchar(32);not null;index:idx_replication_failovers_status"`
	Error           *string `gorm:"column:error;type:text"`
	FinalTransferID string  `gorm:"column:final_transfer_id;type:varchar(36);not null;default:''"`

	FromRegion   string `gorm:"column:from_region;type:varchar(255);not null;default:''"`
	FromPool     string `gorm:"column:from_pool;type:varchar(255);not null;default:''"`
	FromImage    string `gorm:"column:from_image;type:varchar(255);not null;default:''"`
	FromVolumeID string `gorm:"column:from_volume_id;type:varchar(64);not null;default:''"`
	ToRegion     string `gorm:"column:to_region;type:varchar(255);not null;default:''"`
	ToPool       string `gorm:"column:to_pool;type:varchar(255);not null;default:''"`
	ToImage      string `gorm:"column:to_image;type:varchar(255);not null;default:''"`
	ToVolumeID   string `gorm:"column:to_volume_id;type:varchar(64);not null;default:''"`

	// Spec and Peer are JSON documents of the API's.
	Spec           string `gorm:"column:spec;type:text"`
	Peer           string `gorm:"column:peer;type:text"`
	Preserved      string `gorm:"column:preserved;type:varchar(255);not null;default:''"`
	PreservedBytes int64  `gorm:"column:preserved_bytes;type:bigint;not null;default:0"`

	RegisterStartedAt *time.Time `gorm:"column:register_started_at;precision:6"`
	RequestedAt       time.Time  `gorm:"column:requested_at;precision:6;not null"`
	AvailableAt       *time.Time `gorm:"column:available_at;precision:6"`
	FinishedAt        *time.Time `gorm:"column:finished_at;precision:6"`
	CreatedAt         time.Time  `gorm:"column:created_at;precision:6;not null;index:idx_replication_failovers_replication,priority:2"`
	UpdatedAt         time.Time  `gorm:"column:updated_at;precision:6;not null"`
}

func (m0008Failover) TableName() string { return "replication_failovers" }

func migration0008Failovers() *gormigrate.Migration {
	return &gormigrate.Migration{
		ID: "0008_failovers",
		Migrate: func(tx *gorm.DB) error {
			if tx.Dialector.Name() == "mysql" {
				tx = tx.Set("gorm:table_options", mysqlTableOptions).Session(&gorm.Session{})
			}
			m := tx.Migrator()
			for _, col := range m0008ReplicationColumns {
				if !m.HasColumn(&m0008Replication{}, col.field) {
					if err := m.AddColumn(&m0008Replication{}, col.field); err != nil {
						return err
					}
				}
			}
			// idx_replication_failovers_replication (replication_id,
			// created_at, id) is the listing's order;
			// idx_replication_failovers_status serves the runner.
			return m.CreateTable(&m0008Failover{})
		},
		Rollback: func(tx *gorm.DB) error {
			m := tx.Migrator()
			if err := m.DropTable("replication_failovers"); err != nil {
				return err
			}
			for i := len(m0008ReplicationColumns) - 1; i >= 0; i-- {
				col := m0008ReplicationColumns[i]
				if !m.HasColumn(&m0008Replication{}, col.field) {
					continue
				}
				var err error
				if tx.Dialector.Name() == "sqlite" {
					// gorm's SQLite DropColumn rebuilds the table, which
					// loses its indexes (and cascades into the tables
					// that reference it): SQLite drops an unindexed
					// column itself.
					err = tx.Exec("ALTER TABLE replications DROP COLUMN ?", clause.Column{Name: col.column}).Error
				} else {
					err = m.DropColumn(&m0008Replication{}, col.field)
				}
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
}
