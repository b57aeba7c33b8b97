package db

import (
	"time"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Migration 0009_groups: consistency groups of replications. FROZEN: these
// struct copies describe the schema as this migration creates it; never
// edit them.

// m0009Replication, m0009Drill and m0009Failover are the column 0009 adds to
// replications, replication drills and replication failovers: the group the member replication
// belongs to, or the group whose drill or failover the row is a part of
// (NULL / ” when none).
type m0009Replication struct {
	GroupID *string `gorm:"column:group_id;type:varchar(36);index:idx_replications_group"`
}

func (m0009Replication) TableName() string { return "replications" }

type m0009Drill struct {
	GroupID string `gorm:"column:group_id;type:varchar(36);not null;default:'';index:idx_replication_drills_group"`
}

func (m0009Drill) TableName() string { return "replication_drills" }

type m0009Failover struct {
	GroupID string `gorm:"column:group_id;type:varchar(36);not null;default:'';index:idx_replication_failovers_group"`
}

func (m0009Failover) TableName() string { return "replication_failovers" }

// m0009Group: a set of replications of one project between two regions
// whose cycles snapshot every member at one instant.
type m0009Group struct {
	ID          string  `gorm:"column:id;type:varchar(36);primaryKey;not null;index:idx_replication_groups_project_created,priority:3;index:idx_replication_groups_created,priority:2"`
	Name        string  `gorm:"column:name;type:varchar(255);not null;default:''"`
	Description string  `gorm:"column:description;type:text"`
	ProjectID   string  `gorm:"column:project_id;type:varchar(64);not null;index:idx_replication_groups_project_created,priority:1"`
	UserID      string  `gorm:"column:user_id;type:varchar(64);not null;default:''"`
	Status      string  `gorm:"column:status;type:varchar(32);not null;index:idx_replication_groups_status_next_run,priority:1"`
	FailoverID  *string `gorm:"column:failover_id;type:varchar(36)"`
	// FailoverState is the group failover's or failback's progress (the
	// newest one's), a JSON document of the API's.
	FailoverState string `gorm:"column:failover_state;type:text"`

	SourceRegion string `gorm:"column:source_region;type:varchar(255);not null;default:''"`
	DestRegion   string `gorm:"column:dest_region;type:varchar(255);not null;default:''"`
	DestPool     string `gorm:"column:dest_pool;type:varchar(255);not null;default:''"`

	IntervalSeconds int   `gorm:"column:interval_seconds;type:integer;not null"`
	RPOSeconds      int   `gorm:"column:rpo_seconds;type:integer;not null"`
	KeepLast        int   `gorm:"column:keep_last;type:integer;not null;default:1"`
	KeepHourly      int   `gorm:"column:keep_hourly;type:integer;not null;default:0"`
	KeepDaily       int   `gorm:"column:keep_daily;type:integer;not null;default:0"`
	BandwidthLimit  int64 `gorm:"column:bandwidth_limit;type:bigint;not null;default:0"`

	NextRunAt   time.Time  `gorm:"column:next_run_at;precision:6;not null;index:idx_replication_groups_status_next_run,priority:2"`
	LastSyncAt  *time.Time `gorm:"column:last_sync_at;precision:6"`
	LastCycleID string     `gorm:"column:last_cycle_id;type:varchar(36);not null;default:''"`
	LastError   *string    `gorm:"column:last_error;type:text"`
	PointsCount int        `gorm:"column:points_count;type:integer;not null;default:0"`

	CyclesCompleted int64 `gorm:"column:cycles_completed;type:bigint;not null;default:0"`
	CyclesFailed    int64 `gorm:"column:cycles_failed;type:bigint;not null;default:0"`
	CyclesSkipped   int64 `gorm:"column:cycles_skipped;type:bigint;not null;default:0"`
	KeepReplica     bool  `gorm:"column:keep_replica;not null;default:false"`

	CreatedAt time.Time `gorm:"column:created_at;precision:6;not null;index:idx_replication_groups_project_created,priority:2;index:idx_replication_groups_created,priority:1"`
	UpdatedAt time.Time `gorm:"column:updated_at;precision:6;not null"`
}

func (m0009Group) TableName() string { return "replication_groups" }

// m0009GroupCycle: one cycle of a group: its consistent snapshot, then its
// members' cycle transfers (Members, JSON). A completed cycle is a group
// point while every member keeps its part.
type m0009GroupCycle struct {
	ID         string      `gorm:"column:id;type:varchar(36);primaryKey;not null;index:idx_replication_group_cycles_group,priority:3"`
	GroupID    string      `gorm:"column:group_id;type:varchar(36);not null;index:idx_replication_group_cycles_group,priority:1"`
	Group      *m0009Group `gorm:"foreignKey:GroupID;references:ID;constraint:fk_replication_group_cycles_group,OnDelete:CASCADE"`
	Kind       string      `gorm:"column:kind;type:varchar(32);not null;default:'cycle'"`
	Status     string      `gorm:"column:status;type:varchar(32);not null;index:idx_replication_group_cycles_status"`
	Members    string      `gorm:"column:members;type:text"`
	Error      *string     `gorm:"column:error;type:text"`
	SnapshotAt *time.Time  `gorm:"column:snapshot_at;precision:6"`
	FinishedAt *time.Time  `gorm:"column:finished_at;precision:6"`
	CreatedAt  time.Time   `gorm:"column:created_at;precision:6;not null;index:idx_replication_group_cycles_group,priority:2"`
	UpdatedAt  time.Time   `gorm:"column:updated_at;precision:6;not null"`
}

func (m0009GroupCycle) TableName() string { return "replication_group_cycles" }

func migration0009Groups() *gormigrate.Migration {
	added := []struct {
		model any
		table string
	}{{&m0009Replication{}, "replications"}, {&m0009Drill{}, "replication_drills"}, {&m0009Failover{}, "replication_failovers"}}
	return &gormigrate.Migration{
		ID: "0009_groups",
		Migrate: func(tx *gorm.DB) error {
			if tx.Dialector.Name() == "mysql" {
				tx = tx.Set("gorm:table_options", mysqlTableOptions).Session(&gorm.Session{})
			}
			m := tx.Migrator()
			for _, a := range added {
				if !m.HasColumn(a.model, "GroupID") {
					if err := m.AddColumn(a.model, "GroupID"); err != nil {
						return err
					}
				}
				for _, idx := range m0009Indexes(a.table) {
					if !m.HasIndex(a.model, idx) {
						if err := m.CreateIndex(a.model, idx); err != nil {
							return err
						}
					}
				}
			}
			// idx_replication_groups_project_created and _created are the
			// listings' orders, _status_next_run the scheduler's;
			// idx_replication_group_cycles_group a group's cycles in
			// order, _status the runner's.
			return m.CreateTable(&m0009Group{}, &m0009GroupCycle{})
		},
		Rollback: func(tx *gorm.DB) error {
			m := tx.Migrator()
			if err := m.DropTable("replication_group_cycles", "replication_groups"); err != nil {
				return err
			}
			for i := len(added) - 1; i >= 0; i-- {
				a := added[i]
				for _, idx := range m0009Indexes(a.table) {
					if m.HasIndex(a.model, idx) {
						if err := m.DropIndex(a.model, idx); err != nil {
							return err
						}
					}
				}
				if !m.HasColumn(a.model, "GroupID") {
					continue
				}
				var err error
				if tx.Dialector.Name() == "sqlite" {
					// As in 0008: SQLite drops an unindexed column itself;
					// gorm's rebuild of the table would lose its indexes.
					err = tx.Exec("ALTER TABLE ? DROP COLUMN group_id", clause.Table{Name: a.table}).Error
				} else {
					err = m.DropColumn(a.model, "GroupID")
				}
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// m0009Indexes are the indexes 0009 adds to table.
func m0009Indexes(table string) []string {
	return map[string][]string{
		"replications":          {"idx_replications_group"},
		"replication_drills":    {"idx_replication_drills_group"},
		"replication_failovers": {"idx_replication_failovers_group"},
	}[table]
}
