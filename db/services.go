package db

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// AgentBinary is the binary name agents heartbeat with.
const AgentBinary = "ferry-agent"

// UpsertServiceHeartbeat records that binary on host is alive: it creates
// the service row on the first heartbeat and afterwards updates its region,
// version and last_heartbeat_at. Agents never hold database credentials:
// the API calls this when it receives their heartbeats. An agent's topic is
// its own queue, agent.<region>.<host>.
func (d *DB) UpsertServiceHeartbeat(ctx context.Context, binary, host, region, version string) (*Service, error) {
	if binary == "" || host == "" {
		return nil, fmt.Errorf("db: service heartbeat: %w: binary and host are required", ErrInvalidArgument)
	}
	for _, f := range []struct {
		name, value string
		max         int
	}{
		{"binary", binary, MaxBinaryLength},
		{"host", host, MaxNameLength},
		{"region", region, MaxNameLength},
		{"version", version, MaxVersionLength},
	} {
		if utf8.RuneCountInString(f.value) > f.max {
			return nil, fmt.Errorf("db: service heartbeat: %w: %s longer than %d characters", ErrInvalidArgument, f.name, f.max)
		}
	}
	topic := ""
	if binary == AgentBinary {
		topic = "agent." + region + "." + host
		if utf8.RuneCountInString(topic) > MaxNameLength {
			topic = ""
		}
	}
	var out Service
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		now := d.now()
		svc := Service{
			Binary: binary, Host: host, Region: region, Topic: topic, Version: version,
			CreatedAt: now, UpdatedAt: now, LastHeartbeatAt: now,
		}
		err := tx.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "binary"}, {Name: "host"}},
			DoUpdates: clause.AssignmentColumns([]string{"region", "topic", "version", "updated_at", "last_heartbeat_at"}),
		}).Create(&svc).Error
		if err != nil {
			return translate(err)
		}
		// The id gorm reads back after an upsert is not portable: re-read.
		return tx.Where(map[string]any{"binary": binary, "host": host}).Take(&out).Error
	})
	if err != nil {
		return nil, fmt.Errorf("db: heartbeat of %s on %s: %w", binary, host, err)
	}
	return &out, nil
}

// ListServices returns every service, ordered by binary then host.
func (d *DB) ListServices(ctx context.Context) ([]Service, error) {
	var out []Service
	err := d.gorm.WithContext(ctx).
		Order(clause.OrderByColumn{Column: clause.Column{Name: "binary"}}).
		Order(clause.OrderByColumn{Column: clause.Column{Name: "host"}}).
		Find(&out).Error
	if err != nil {
		return nil, fmt.Errorf("db: list services: %w", err)
	}
	return out, nil
}

// SetServiceDisabled disables or enables a service (disabled agents get no
// new transfers); unknown binary/host is ErrNotFound.
func (d *DB) SetServiceDisabled(ctx context.Context, binary, host string, disabled bool) error {
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		res := tx.Model(&Service{}).Where(map[string]any{"binary": binary, "host": host}).
			UpdateColumns(map[string]any{"disabled": disabled, "updated_at": d.now()})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("db: set %s on %s disabled=%t: %w", binary, host, disabled, err)
	}
	return nil
}

// ServiceIsUp reports whether svc heartbeated within timeout of now. A
// disabled service may still be up: the two are reported separately.
func ServiceIsUp(svc *Service, now time.Time, timeout time.Duration) bool {
	if svc == nil || svc.LastHeartbeatAt.IsZero() {
		return false
	}
	return now.Sub(svc.LastHeartbeatAt) <= timeout
}
