package db

import (
	"time"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
)

// Migration 0001_initial: transfers, transfer_events, services,
// outbox_messages. FROZEN: these struct copies describe the schema as this
// migration creates it; never edit them. A schema change is a new migration
// with its own structs.

const mysqlTableOptions = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

type m0001Transfer struct {
	ID          string `gorm:"column:id;type:varchar(36);primaryKey;not null"`
	Name        string `gorm:"column:name;type:varchar(255);not null;default:''"`
	Description string `gorm:"column:description;type:text"`
	ProjectID   string `gorm:"column:project_id;type:varchar(64);not null;index:idx_transfers_project_id,priority:1"`
	UserID      string `gorm:"column:user_id;type:varchar(64);not null;index:idx_transfers_user_id"`
	Status      string `gorm:"column:status;type:varchar(32);not null;index:idx_transfers_status"`
	Mode        string `gorm:"column:mode;type:varchar(16);not null"`

	SourceRegion   string `gorm:"column:source_region;type:varchar(255);not null;default:''"`
	SourcePool     string `gorm:"column:source_pool;type:varchar(255);not null;default:''"`
	SourceImage    string `gorm:"column:source_image;type:varchar(255);not null;default:''"`
	SourceSnapshot string `gorm:"column:source_snapshot;type:varchar(255);not null;default:''"`
	SourceVolumeID string `gorm:"column:source_volume_id;type:varchar(64);not null;default:''"`
	SourceBackupID string `gorm:"column:source_backup_id;type:varchar(64);not null;default:''"`

	DestRegion   string `gorm:"column:dest_region;type:varchar(255);not null;default:''"`
	DestPool     string `gorm:"column:dest_pool;type:varchar(255);not null;default:''"`
	DestImage    string `gorm:"column:dest_image;type:varchar(255);not null;default:''"`
	DestSnapshot string `gorm:"column:dest_snapshot;type:varchar(255);not null;default:''"`
	DestVolumeID string `gorm:"column:dest_volume_id;type:varchar(64);not null;default:''"`
	DestBackupID string `gorm:"column:dest_backup_id;type:varchar(64);not null;default:''"`

	BytesTotal         int64  `gorm:"column:bytes_total;type:bigint;not null;default:0"`
	BytesTransferred   int64  `gorm:"column:bytes_transferred;type:bigint;not null;default:0"`
	RateBytesPerSecond int64  `gorm:"column:rate_bytes_per_second;type:bigint;not null;default:0"`
	Digest             string `gorm:"column:digest;type:varchar(160);not null;default:''"`

	Error   *string `gorm:"column:error;type:text"`
	Agent   *string `gorm:"column:agent;type:varchar(255);index:idx_transfers_agent"`
	Attempt int     `gorm:"column:attempt;type:integer;not null;default:1"`
	Epoch   int64   `gorm:"column:epoch;type:bigint;not null;default:1"`

	CreatedAt  time.Time  `gorm:"column:created_at;precision:6;not null;index:idx_transfers_project_id,priority:2;index:idx_transfers_created_at"`
	UpdatedAt  time.Time  `gorm:"column:updated_at;precision:6;not null"`
	StartedAt  *time.Time `gorm:"column:started_at;precision:6"`
	FinishedAt *time.Time `gorm:"column:finished_at;precision:6"`
}

func (m0001Transfer) TableName() string { return "transfers" }

type m0001TransferEvent struct {
	ID         int64          `gorm:"column:id;primaryKey;autoIncrement"`
	TransferID string         `gorm:"column:transfer_id;type:varchar(36);not null;index:idx_transfer_events_transfer_id"`
	Transfer   *m0001Transfer `gorm:"foreignKey:TransferID;references:ID;constraint:fk_transfer_events_transfer,OnDelete:CASCADE"`
	CreatedAt  time.Time      `gorm:"column:created_at;precision:6;not null"`
	Kind       string         `gorm:"column:kind;type:varchar(32);not null"`
	FromStatus string         `gorm:"column:from_status;type:varchar(32);not null;default:''"`
	ToStatus   string         `gorm:"column:to_status;type:varchar(32);not null;default:''"`
	Message    string         `gorm:"column:message;type:text"`
	RequestID  string         `gorm:"column:request_id;type:varchar(64);not null;default:''"`
}

func (m0001TransferEvent) TableName() string { return "transfer_events" }

type m0001Service struct {
	ID              int64     `gorm:"column:id;primaryKey;autoIncrement"`
	Binary          string    `gorm:"column:binary;type:varchar(64);not null;uniqueIndex:uq_services_binary_host,priority:1"`
	Host            string    `gorm:"column:host;type:varchar(255);not null;uniqueIndex:uq_services_binary_host,priority:2"`
	Region          string    `gorm:"column:region;type:varchar(255);not null;default:''"`
	Topic           string    `gorm:"column:topic;type:varchar(255);not null;default:''"`
	Version         string    `gorm:"column:version;type:varchar(64);not null;default:''"`
	Disabled        bool      `gorm:"column:disabled;not null;default:false"`
	CreatedAt       time.Time `gorm:"column:created_at;precision:6;not null"`
	UpdatedAt       time.Time `gorm:"column:updated_at;precision:6;not null"`
	LastHeartbeatAt time.Time `gorm:"column:last_heartbeat_at;precision:6;not null"`
}

func (m0001Service) TableName() string { return "services" }

type m0001OutboxMessage struct {
	ID          int64      `gorm:"column:id;primaryKey;autoIncrement"`
	CreatedAt   time.Time  `gorm:"column:created_at;precision:6;not null"`
	Exchange    string     `gorm:"column:exchange;type:varchar(255);not null;default:''"`
	RoutingKey  string     `gorm:"column:routing_key;type:varchar(255);not null;default:''"`
	Payload     string     `gorm:"column:payload;type:text;not null"`
	Attempts    int        `gorm:"column:attempts;type:integer;not null;default:0"`
	LastError   *string    `gorm:"column:last_error;type:text"`
	PublishedAt *time.Time `gorm:"column:published_at;precision:6;index:idx_outbox_messages_published_at"`
	LeaseOwner  string     `gorm:"column:lease_owner;type:varchar(255);not null;default:''"`
	LeaseUntil  *time.Time `gorm:"column:lease_until;precision:6"`
}

func (m0001OutboxMessage) TableName() string { return "outbox_messages" }

func migration0001Initial() *gormigrate.Migration {
	return &gormigrate.Migration{
		ID: "0001_initial",
		Migrate: func(tx *gorm.DB) error {
			if tx.Dialector.Name() == "mysql" {
				tx = tx.Set("gorm:table_options", mysqlTableOptions).Session(&gorm.Session{})
			}
			return tx.Migrator().CreateTable(
				&m0001Transfer{}, &m0001TransferEvent{}, &m0001Service{}, &m0001OutboxMessage{},
			)
		},
		Rollback: func(tx *gorm.DB) error {
			return tx.Migrator().DropTable(
				"outbox_messages", "services", "transfer_events", "transfers",
			)
		},
	}
}
