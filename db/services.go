package db

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// AgentBinary is the binary name agents heartbeat with.
const AgentBinary = "ferry-agent"

// UpsertServiceHeartbeat records a heartbeat that says nothing but who is
// alive (see RecordHeartbeat).
func (d *DB) UpsertServiceHeartbeat(ctx context.Context, binary, host, region, version string) (*Service, error) {
	s, _, err := d.RecordHeartbeat(ctx, Heartbeat{Binary: binary, Host: host, Region: region, Version: version})
	return s, err
}

// Heartbeat is what RecordHeartbeat stores of one heartbeat.
type Heartbeat struct {
	Binary, Host, Region, Version string
	// BootID is random per agent process; Seq numbers its heartbeats.
	BootID string
	Seq    int64
	// Running are the transfers the agent runs; Capacity how many it may.
	Running  []string
	Capacity int
	// ReceivedAt is when the heartbeat arrived (zero: now, the store's
	// clock). It becomes last_heartbeat_at: the reconciliation compares
	// it with the transfers' updated_at, so take it before handling.
	ReceivedAt time.Time
	// Health is the agent's last cluster health probe (nil: none).
	Health *ServiceHealth
}

// ServiceHealth is an agent's cluster health, as stored (Service.Health).
type ServiceHealth struct {
	Status string        `json:"status,omitempty"`
	Checks []HealthCheck `json:"checks,omitempty"`
	Others int           `json:"others,omitempty"`
	Error  string        `json:"error,omitempty"`
	// CheckedAt is when the probe ran (the store's clock).
	CheckedAt time.Time `json:"-"`
}

// HealthCheck is one Ceph health check.
type HealthCheck struct {
	Code     string `json:"code"`
	Severity string `json:"severity"`
	Message  string `json:"message,omitempty"`
}

// Limits of what a heartbeat may carry.
const (
	MaxBootIDLength   = 64
	MaxRunningPerBeat = 1024
	maxHealthDetail   = 16 << 10
)

func (hb *Heartbeat) validate() error {
	if hb.Binary == "" || hb.Host == "" {
		return fmt.Errorf("%w: binary and host are required", ErrInvalidArgument)
	}
	for _, f := range []struct {
		name, value string
		max         int
	}{
		{"binary", hb.Binary, MaxBinaryLength},
		{"host", hb.Host, MaxNameLength},
		{"region", hb.Region, MaxNameLength},
		{"version", hb.Version, MaxVersionLength},
		{"boot id", hb.BootID, MaxBootIDLength},
	} {
		if utf8.RuneCountInString(f.value) > f.max {
			return fmt.Errorf("%w: %s longer than %d characters", ErrInvalidArgument, f.name, f.max)
		}
	}
	if hb.Seq < 0 || hb.Capacity < 0 || len(hb.Running) > MaxRunningPerBeat {
		return fmt.Errorf("%w: negative seq or capacity, or more than %d running transfers", ErrInvalidArgument, MaxRunningPerBeat)
	}
	for _, id := range hb.Running {
		if utf8.RuneCountInString(id) > MaxIDLength {
			return fmt.Errorf("%w: running transfer id longer than %d characters", ErrInvalidArgument, MaxIDLength)
		}
	}
	if h := hb.Health; h != nil && utf8.RuneCountInString(h.Status) > statusColumnWidth {
		return fmt.Errorf("%w: health status longer than %d characters", ErrInvalidArgument, statusColumnWidth)
	}
	return nil
}

// RecordHeartbeat records that binary on host is alive: it creates the
// service row on the first heartbeat and afterwards updates its region,
// version and last_heartbeat_at, and keeps what the heartbeat said next to
// what the one before it said (boot id, running transfers: the
// reconciliation of an agent's transfers needs two). A heartbeat of the
// boot recorded last whose Seq is not newer than the recorded one (a
// redelivery, or one overtaken by a later one) changes nothing: recorded
// is false. Agents never hold database credentials: the API calls this
// when it receives their heartbeats. An agent's topic is its own queue,
// agent.<region>.<host>.
func (d *DB) RecordHeartbeat(ctx context.Context, hb Heartbeat) (svc *Service, recorded bool, err error) {
	if err := hb.validate(); err != nil {
		return nil, false, fmt.Errorf("db: service heartbeat: %w", err)
	}
	topic := ""
	if hb.Binary == AgentBinary {
		topic = "agent." + hb.Region + "." + hb.Host
		if utf8.RuneCountInString(topic) > MaxNameLength {
			topic = ""
		}
	}
	running, err := jsonText(hb.Running)
	if err != nil {
		return nil, false, fmt.Errorf("db: service heartbeat: %w", err)
	}
	var out Service
	err = d.inTx(ctx, func(tx *gorm.DB) error {
		now := d.now()
		at := hb.ReceivedAt.UTC().Truncate(time.Microsecond)
		if hb.ReceivedAt.IsZero() || at.After(now) {
			at = now
		}
		// The row exists from here on (a first heartbeat creates it).
		err := tx.Clauses(clause.OnConflict{
			Columns: []clause.Column{{Name: "binary"}, {Name: "host"}}, DoNothing: true,
		}).Create(&Service{Binary: hb.Binary, Host: hb.Host, Region: hb.Region, Topic: topic, Version: hb.Version,
			CreatedAt: now, UpdatedAt: now, LastHeartbeatAt: at}).Error
		if err != nil {
			return translate(err)
		}
		var cur Service
		if err := d.lockRow(tx).Where(map[string]any{"binary": hb.Binary, "host": hb.Host}).Take(&cur).Error; err != nil {
			return translate(err)
		}
		if hb.BootID != "" && hb.BootID == cur.BootID && hb.Seq > 0 && hb.Seq <= cur.HeartbeatSeq {
			out, recorded = cur, false
			return nil
		}
		upd := map[string]any{
			"region": hb.Region, "topic": topic, "version": hb.Version, "updated_at": now,
			"last_heartbeat_at": maxTime(at, cur.LastHeartbeatAt),
			"boot_id":           hb.BootID, "heartbeat_seq": hb.Seq, "running": running, "capacity": hb.Capacity,
			"prev_boot_id": cur.BootID, "prev_running": cur.Running, "prev_heartbeat_at": nil,
			"ceph_health": "", "ceph_health_detail": nil, "ceph_health_at": nil,
		}
		if cur.HeartbeatSeq > 0 || cur.BootID != "" || cur.Running != nil {
			// Not the row's first heartbeat.
			prev := cur.LastHeartbeatAt
			upd["prev_heartbeat_at"] = &prev
		}
		if h := hb.Health; h != nil {
			detail, err := jsonText(h)
			if err != nil {
				return err
			}
			if detail != nil && len(*detail) > maxHealthDetail {
				return fmt.Errorf("%w: health detail longer than %d bytes", ErrInvalidArgument, maxHealthDetail)
			}
			checked := h.CheckedAt.UTC().Truncate(time.Microsecond)
			if h.CheckedAt.IsZero() || checked.After(now) {
				checked = now
			}
			upd["ceph_health"], upd["ceph_health_detail"], upd["ceph_health_at"] = h.Status, detail, checked
		}
		res := tx.Model(&Service{}).Where("id = ?", cur.ID).UpdateColumns(upd)
		if res.Error != nil {
			return translate(res.Error)
		}
		recorded = true
		return tx.Where("id = ?", cur.ID).Take(&out).Error
	})
	if err != nil {
		return nil, false, fmt.Errorf("db: heartbeat of %s on %s: %w", hb.Binary, hb.Host, err)
	}
	return &out, recorded, nil
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// jsonText is v as JSON text, nil for a nil slice or pointer.
func jsonText(v any) (*string, error) {
	switch x := v.(type) {
	case []string:
		if x == nil {
			return nil, nil
		}
	case *ServiceHealth:
		if x == nil {
			return nil, nil
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	s := string(b)
	return &s, nil
}

// RunningIDs are the transfers the last heartbeat listed.
func (s *Service) RunningIDs() []string { return idList(s.Running) }

// PrevRunningIDs are the transfers the heartbeat before it listed.
func (s *Service) PrevRunningIDs() []string { return idList(s.PrevRunning) }

func idList(js *string) []string {
	if js == nil || *js == "" {
		return nil
	}
	var ids []string
	if json.Unmarshal([]byte(*js), &ids) != nil {
		return nil
	}
	return ids
}

// Health is the agent's last cluster health probe; nil when it reported
// none.
func (s *Service) Health() *ServiceHealth {
	if s.CephHealthAt == nil {
		return nil
	}
	h := &ServiceHealth{}
	if s.CephHealthDetail != nil {
		_ = json.Unmarshal([]byte(*s.CephHealthDetail), h) // a bad detail still has a status
	}
	h.Status = s.CephHealth
	h.CheckedAt = *s.CephHealthAt
	return h
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
