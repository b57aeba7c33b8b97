package db

import (
	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
)

// m0002Transfer is the frozen shape of the columns 0002_cinder adds to
// transfers: what Ferry needs to register a copied Cinder volume or backup
// at the destination.
type m0002Transfer struct {
	// OwnerProjectID is the project the destination volume or backup
	// belongs to: the source volume's or backup's project.
	OwnerProjectID string `gorm:"column:owner_project_id;type:varchar(64);not null;default:''"`
	// CinderSpec is JSON describing the source resource (name,
	// description, size, metadata, bootable; a backup's record).
	CinderSpec *string `gorm:"column:cinder_spec;type:text"`
}

func (m0002Transfer) TableName() string { return "transfers" }

func migration0002Cinder() *gormigrate.Migration {
	return &gormigrate.Migration{
		ID: "0002_cinder",
		Migrate: func(tx *gorm.DB) error {
			m := tx.Migrator()
			for _, col := range []string{"OwnerProjectID", "CinderSpec"} {
				if !m.HasColumn(&m0002Transfer{}, col) {
					if err := m.AddColumn(&m0002Transfer{}, col); err != nil {
						return err
					}
				}
			}
			return nil
		},
		Rollback: func(tx *gorm.DB) error {
			m := tx.Migrator()
			for _, col := range []string{"CinderSpec", "OwnerProjectID"} {
				if m.HasColumn(&m0002Transfer{}, col) {
					if err := m.DropColumn(&m0002Transfer{}, col); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
}
