package db

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"
)

// migrationsTable records the applied migration ids.
const migrationsTable = "ferry_migrations"

// migrations returns the schema history, oldest first. IDs are
// "NNNN_description" and never change once released; their lexical order is
// their order. Each migration creates or alters tables through its own frozen
// structs (see migrate_0001_initial.go) and has a Rollback.
func migrations() []*gormigrate.Migration {
	return []*gormigrate.Migration{
		migration0001Initial(),
		migration0002Cinder(),
		migration0003Leases(),
		migration0004RegisterLedger(),
		migration0005ServiceLiveness(),
		migration0006Cleanup(),
		migration0007Replications(),
		migration0008Failovers(),
		migration0009Groups(),
	}
}

// LatestVersion is the id of the newest migration this code knows.
func LatestVersion() string { return latestOf(migrations()) }

func latestOf(ms []*gormigrate.Migration) string {
	if len(ms) == 0 {
		return ""
	}
	return ms[len(ms)-1].ID
}

func (d *DB) migrator(ctx context.Context, ms []*gormigrate.Migration) *gormigrate.Gormigrate {
	g := d.gorm.WithContext(ctx)
	if d.dialect == DialectMySQL {
		// Set returns an instance whose statement later calls would share
		// (gormigrate's Table() leaked into the migrations): start a session.
		g = g.Set("gorm:table_options", mysqlTableOptions).Session(&gorm.Session{})
	}
	return gormigrate.New(g, &gormigrate.Options{
		TableName:    migrationsTable,
		IDColumnName: "id",
		IDColumnSize: 255,
		// PostgreSQL and SQLite run DDL in transactions, so a failed
		// migration leaves nothing half-done; MySQL commits each DDL.
		UseTransaction:            d.dialect != DialectMySQL,
		ValidateUnknownMigrations: true,
	}, ms)
}

// Sync applies every migration not yet applied (ferry-manage db sync). It is
// idempotent. A database migrated by newer code gives ErrSchemaTooNew.
func (d *DB) Sync(ctx context.Context) error {
	return d.syncWith(ctx, migrations())
}

func (d *DB) syncWith(ctx context.Context, ms []*gormigrate.Migration) error {
	if err := d.migrator(ctx, ms).Migrate(); err != nil {
		if errors.Is(err, gormigrate.ErrUnknownPastMigration) {
			return fmt.Errorf("db: sync schema: %w: it holds migrations unknown to this code (latest known %q)", ErrSchemaTooNew, latestOf(ms))
		}
		return fmt.Errorf("db: sync schema: %w", err)
	}
	return nil
}

// RollbackLast undoes the newest applied migration and returns its id
// ("" when none was applied). For development and tests: it drops data.
func (d *DB) RollbackLast(ctx context.Context) (string, error) {
	current, _, err := d.Version(ctx)
	if err != nil || current == "" {
		return "", err
	}
	if err := d.migrator(ctx, migrations()).RollbackLast(); err != nil {
		return "", fmt.Errorf("db: roll back %s: %w", current, err)
	}
	return current, nil
}

// Version returns the newest migration applied to the database ("" for an
// empty database) and the newest this code knows.
func (d *DB) Version(ctx context.Context) (current, latest string, err error) {
	st, err := d.schemaState(ctx, migrations())
	if err != nil {
		return "", "", err
	}
	return st.current, st.latest, nil
}

// CheckCurrent returns nil when the database schema is exactly the one this
// code expects, an error wrapping ErrSchemaOutdated (naming both versions)
// when migrations are missing, and one wrapping ErrSchemaTooNew when the
// database was migrated by newer code. ferry-api calls it at start.
func (d *DB) CheckCurrent(ctx context.Context) error {
	st, err := d.schemaState(ctx, migrations())
	if err != nil {
		return err
	}
	return st.check()
}

type schemaState struct {
	current, latest string
	pending         []string // known, not applied
	unknown         []string // applied, not known
}

func (s schemaState) check() error {
	if len(s.pending) > 0 {
		cur := s.current
		if cur == "" {
			cur = "empty"
		}
		return fmt.Errorf("%w: database is at %s, this code needs %s (missing %v): run ferry-manage db sync",
			ErrSchemaOutdated, cur, s.latest, s.pending)
	}
	if len(s.unknown) > 0 {
		return fmt.Errorf("%w: database is at %s, this code knows up to %s", ErrSchemaTooNew, s.current, s.latest)
	}
	return nil
}

func (d *DB) schemaState(ctx context.Context, ms []*gormigrate.Migration) (schemaState, error) {
	st := schemaState{latest: latestOf(ms)}
	g := d.gorm.WithContext(ctx)
	var applied []string
	if g.Migrator().HasTable(migrationsTable) {
		if err := g.Table(migrationsTable).Order("id").Pluck("id", &applied).Error; err != nil {
			return st, fmt.Errorf("db: read schema version: %w", err)
		}
	} else if err := d.sql.PingContext(ctx); err != nil {
		// HasTable reports a failed query as "no table": tell them apart.
		return st, fmt.Errorf("db: read schema version: %w", err)
	}
	known := make(map[string]bool, len(ms))
	for _, m := range ms {
		known[m.ID] = true
		if !slices.Contains(applied, m.ID) {
			st.pending = append(st.pending, m.ID)
		}
	}
	for _, id := range applied {
		if !known[id] {
			st.unknown = append(st.unknown, id)
		}
	}
	if len(applied) > 0 {
		st.current = slices.Max(applied)
	}
	return st, nil
}
