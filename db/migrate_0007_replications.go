package db

import (
	"time"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
)

// Migration 0007_replications: continuous replication. FROZEN: these struct
// copies describe the schema as this migration creates it; never edit them.

// m0007Transfer is the column 0007 adds to transfers: the replication a
// cycle transfer belongs to ("" for an ordinary transfer), indexed with the
// listing's order (a replication's page of cycles is an index range). ID
// and CreatedAt exist already; they are here for the index only.
type m0007Transfer struct {
	ReplicationID string    `gorm:"column:replication_id;type:varchar(36);not null;default:'';index:idx_transfers_replication_id,priority:1"`
	CreatedAt     time.Time `gorm:"column:created_at;index:idx_transfers_replication_id,priority:2"`
	ID            string    `gorm:"column:id;index:idx_transfers_replication_id,priority:3"`
}

func (m0007Transfer) TableName() string { return "transfers" }

// m0007Replication: one source protected into a replica in another region.
type m0007Replication struct {
	ID          string `gorm:"column:id;type:varchar(36);primaryKey;not null;index:idx_replications_project_created,priority:3;index:idx_replications_created,priority:2"`
	Name        string `gorm:"column:name;type:varchar(255);not null;default:''"`
	Description string `gorm:"column:description;type:text"`
	ProjectID   string `gorm:"column:project_id;type:varchar(64);not null;index:idx_replications_project_created,priority:1"`
	UserID      string `gorm:"column:user_id;type:varchar(64);not null;default:''"`
	Status      string `gorm:"column:status;type:varchar(32);not null;index:idx_replications_status_next_run,priority:1"`

	SourceRegion   string `gorm:"column:source_region;type:varchar(255);not null;default:''"`
	SourcePool     string `gorm:"column:source_pool;type:varchar(255);not null;default:''"`
	SourceImage    string `gorm:"column:source_image;type:varchar(255);not null;default:''"`
	SourceVolumeID string `gorm:"column:source_volume_id;type:varchar(64);not null;default:''"`
	// SourceKey is a digest of source region, pool and image while the
	// replication is not deleting, NULL after: its unique index lets one
	// live replication protect an image at a time.
	SourceKey *string `gorm:"column:source_key;type:varchar(64);uniqueIndex:uq_replications_source_key"`

	DestRegion string `gorm:"column:dest_region;type:varchar(255);not null;default:''"`
	DestPool   string `gorm:"column:dest_pool;type:varchar(255);not null;default:''"`
	DestImage  string `gorm:"column:dest_image;type:varchar(255);not null;default:''"`

	IntervalSeconds int   `gorm:"column:interval_seconds;type:integer;not null"`
	RPOSeconds      int   `gorm:"column:rpo_seconds;type:integer;not null"`
	KeepLast        int   `gorm:"column:keep_last;type:integer;not null;default:1"`
	KeepHourly      int   `gorm:"column:keep_hourly;type:integer;not null;default:0"`
	KeepDaily       int   `gorm:"column:keep_daily;type:integer;not null;default:0"`
	BandwidthLimit  int64 `gorm:"column:bandwidth_limit;type:bigint;not null;default:0"`

	NextRunAt      time.Time  `gorm:"column:next_run_at;precision:6;not null;index:idx_replications_status_next_run,priority:2"`
	LastSyncAt     *time.Time `gorm:"column:last_sync_at;precision:6"`
	LastTransferID string     `gorm:"column:last_transfer_id;type:varchar(36);not null;default:''"`
	LastError      *string    `gorm:"column:last_error;type:text"`
	BytesLastCycle int64      `gorm:"column:bytes_last_cycle;type:bigint;not null;default:0"`
	PointsCount    int        `gorm:"column:points_count;type:integer;not null;default:0"`

	CyclesCompleted int64 `gorm:"column:cycles_completed;type:bigint;not null;default:0"`
	CyclesFailed    int64 `gorm:"column:cycles_failed;type:bigint;not null;default:0"`
	CyclesSkipped   int64 `gorm:"column:cycles_skipped;type:bigint;not null;default:0"`
	BytesReplicated int64 `gorm:"column:bytes_replicated;type:bigint;not null;default:0"`

	RPOBreachedAt *time.Time `gorm:"column:rpo_breached_at;precision:6"`
	KeepReplica   bool       `gorm:"column:keep_replica;not null;default:false"`

	CreatedAt time.Time `gorm:"column:created_at;precision:6;not null;index:idx_replications_project_created,priority:2;index:idx_replications_created,priority:1"`
	UpdatedAt time.Time `gorm:"column:updated_at;precision:6;not null"`
}

func (m0007Replication) TableName() string { return "replications" }

// m0007ReplicationPoint: one retained snapshot of a replica.
type m0007ReplicationPoint struct {
	ReplicationID string            `gorm:"column:replication_id;type:varchar(36);primaryKey;not null"`
	Replication   *m0007Replication `gorm:"foreignKey:ReplicationID;references:ID;constraint:fk_replication_points_replication,OnDelete:CASCADE"`
	Name          string            `gorm:"column:name;type:varchar(255);primaryKey;not null"`
	TransferID    string            `gorm:"column:transfer_id;type:varchar(36);not null;default:''"`
	CreatedAt     time.Time         `gorm:"column:created_at;precision:6;not null"`
	Digest        string            `gorm:"column:digest;type:varchar(160);not null;default:''"`
	Bytes         int64             `gorm:"column:bytes;type:bigint;not null;default:0"`
	Size          int64             `gorm:"column:size;type:bigint;not null;default:0"`
}

func (m0007ReplicationPoint) TableName() string { return "replication_points" }

// m0007ReplicationEvent: one entry of a replication's history.
type m0007ReplicationEvent struct {
	ID            int64             `gorm:"column:id;primaryKey;autoIncrement"`
	ReplicationID string            `gorm:"column:replication_id;type:varchar(36);not null;index:idx_replication_events_replication_id"`
	Replication   *m0007Replication `gorm:"foreignKey:ReplicationID;references:ID;constraint:fk_replication_events_replication,OnDelete:CASCADE"`
	CreatedAt     time.Time         `gorm:"column:created_at;precision:6;not null"`
	Kind          string            `gorm:"column:kind;type:varchar(32);not null"`
	Message       string            `gorm:"column:message;type:text"`
	TransferID    string            `gorm:"column:transfer_id;type:varchar(36);not null;default:'';index:idx_replication_events_transfer_id"`
	RequestID     string            `gorm:"column:request_id;type:varchar(64);not null;default:''"`
}

func (m0007ReplicationEvent) TableName() string { return "replication_events" }

// m0007Drill: a DR drill, a clone of a point registered as a Cinder volume.
type m0007Drill struct {
	ID                string            `gorm:"column:id;type:varchar(36);primaryKey;not null"`
	ReplicationID     string            `gorm:"column:replication_id;type:varchar(36);not null;index:idx_replication_drills_replication_id"`
	Replication       *m0007Replication `gorm:"foreignKey:ReplicationID;references:ID;constraint:fk_replication_drills_replication,OnDelete:CASCADE"`
	ProjectID         string            `gorm:"column:project_id;type:varchar(64);not null"`
	Name              string            `gorm:"column:name;type:varchar(255);not null;default:''"`
	Point             string            `gorm:"column:point;type:varchar(255);not null"`
	Status            string            `gorm:"column:status;type:varchar(32);not null;index:idx_replication_drills_status"`
	Image             string            `gorm:"column:image;type:varchar(255);not null;default:''"`
	VolumeID          string            `gorm:"column:volume_id;type:varchar(64);not null;default:''"`
	RegisterStartedAt *time.Time        `gorm:"column:register_started_at;precision:6"`
	RequestedAt       time.Time         `gorm:"column:requested_at;precision:6;not null"`
	AvailableAt       *time.Time        `gorm:"column:available_at;precision:6"`
	Error             *string           `gorm:"column:error;type:text"`
	CreatedAt         time.Time         `gorm:"column:created_at;precision:6;not null"`
	UpdatedAt         time.Time         `gorm:"column:updated_at;precision:6;not null"`
}

func (m0007Drill) TableName() string { return "replication_drills" }

func migration0007Replications() *gormigrate.Migration {
	return &gormigrate.Migration{
		ID: "0007_replications",
		Migrate: func(tx *gorm.DB) error {
			if tx.Dialector.Name() == "mysql" {
				tx = tx.Set("gorm:table_options", mysqlTableOptions).Session(&gorm.Session{})
			}
			m := tx.Migrator()
			if !m.HasColumn(&m0007Transfer{}, "ReplicationID") {
				if err := m.AddColumn(&m0007Transfer{}, "ReplicationID"); err != nil {
					return err
				}
			}
			if !m.HasIndex(&m0007Transfer{}, "idx_transfers_replication_id") {
				if err := m.CreateIndex(&m0007Transfer{}, "idx_transfers_replication_id"); err != nil {
					return err
				}
			}
			// idx_replications_project_created (project_id, created_at, id)
			// is the listing's order, so that a page is an index range
			// (idx_replications_created the same for all projects);
			// idx_replications_status_next_run serves the scheduler.
			return m.CreateTable(&m0007Replication{}, &m0007ReplicationPoint{}, &m0007ReplicationEvent{}, &m0007Drill{})
		},
		Rollback: func(tx *gorm.DB) error {
			m := tx.Migrator()
			if err := m.DropTable("replication_drills", "replication_events", "replication_points", "replications"); err != nil {
				return err
			}
			if m.HasIndex(&m0007Transfer{}, "idx_transfers_replication_id") {
				if err := m.DropIndex(&m0007Transfer{}, "idx_transfers_replication_id"); err != nil {
					return err
				}
			}
			if m.HasColumn(&m0007Transfer{}, "ReplicationID") {
				return m.DropColumn(&m0007Transfer{}, "ReplicationID")
			}
			return nil
		},
	}
}
