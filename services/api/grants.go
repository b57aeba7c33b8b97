package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"github.com/ferry-project/ferry/db"
)

// grantLedger keeps the temporary grants of services/api/cinder in the
// database's leases table, one row per project, so that a grant a stopped
// ferry-api left is recognised as Ferry's and removed by the next
// registration into that project.
type grantLedger struct{ db *db.DB }

const grantLedgerOwner = "ferry-api"

func grantLeaseName(project string) string {
	name := "grant:" + project
	if len(name) > 64 { // the leases table's name column
		sum := sha256.Sum256([]byte(project))
		name = "grant:" + hex.EncodeToString(sum[:])[:58]
	}
	return name
}

func (g grantLedger) Record(ctx context.Context, project string) error {
	_, err := g.db.AcquireLease(ctx, grantLeaseName(project), grantLedgerOwner, 7*24*time.Hour)
	return err
}

func (g grantLedger) Recorded(ctx context.Context, project string) (bool, error) {
	_, err := g.db.GetLease(ctx, grantLeaseName(project))
	if errors.Is(err, db.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (g grantLedger) Clear(ctx context.Context, project string) error {
	return g.db.ReleaseLease(ctx, grantLeaseName(project), grantLedgerOwner)
}
