package db

import (
	"time"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
)

// m0005Service is the frozen shape of the columns 0005_service_liveness
// adds to services: what an agent's last two heartbeats said (its boot,
// the transfers it ran, its capacity) and its cluster's health.
type m0005Service struct {
	BootID       string `gorm:"column:boot_id;type:varchar(64);not null;default:''"`
	HeartbeatSeq int64  `gorm:"column:heartbeat_seq;not null;default:0"`
	// Running is a JSON array of transfer ids.
	Running         *string    `gorm:"column:running;type:text"`
	Capacity        int        `gorm:"column:capacity;type:integer;not null;default:0"`
	PrevBootID      string     `gorm:"column:prev_boot_id;type:varchar(64);not null;default:''"`
	PrevRunning     *string    `gorm:"column:prev_running;type:text"`
	PrevHeartbeatAt *time.Time `gorm:"column:prev_heartbeat_at;precision:6"`
	CephHealth      string     `gorm:"column:ceph_health;type:varchar(32);not null;default:''"`
	// CephHealthDetail is JSON: the checks that matter, the count of the
	// others, the probe's error.
	CephHealthDetail *string    `gorm:"column:ceph_health_detail;type:text"`
	CephHealthAt     *time.Time `gorm:"column:ceph_health_at;precision:6"`
}

func (m0005Service) TableName() string { return "services" }

var m0005Columns = []string{
	"BootID", "HeartbeatSeq", "Running", "Capacity", "PrevBootID", "PrevRunning", "PrevHeartbeatAt",
	"CephHealth", "CephHealthDetail", "CephHealthAt",
}

func migration0005ServiceLiveness() *gormigrate.Migration {
	return &gormigrate.Migration{
		ID: "0005_service_liveness",
		Migrate: func(tx *gorm.DB) error {
			m := tx.Migrator()
			for _, col := range m0005Columns {
				if !m.HasColumn(&m0005Service{}, col) {
					if err := m.AddColumn(&m0005Service{}, col); err != nil {
						return err
					}
				}
			}
			return nil
		},
		Rollback: func(tx *gorm.DB) error {
			m := tx.Migrator()
			for i := len(m0005Columns) - 1; i >= 0; i-- {
				if m.HasColumn(&m0005Service{}, m0005Columns[i]) {
					if err := m.DropColumn(&m0005Service{}, m0005Columns[i]); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
}
