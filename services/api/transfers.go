package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
)

// The transfer as the REST API shows it (ARCHITECTURE §3: the field names
// are the contract of the client library, the CLI's -c and the dashboard).
type TransferView struct {
	ID                 string       `json:"id"`
	Name               string       `json:"name"`
	Description        string       `json:"description"`
	ProjectID          string       `json:"project_id"`
	UserID             string       `json:"user_id"`
	Status             string       `json:"status"`
	Mode               string       `json:"mode"`
	Source             LocationView `json:"source"`
	Destination        LocationView `json:"destination"`
	BytesTotal         int64        `json:"bytes_total"`
	BytesTransferred   int64        `json:"bytes_transferred"`
	Progress           float64      `json:"progress"`
	RateBytesPerSecond int64        `json:"rate_bytes_per_second"`
	ETASeconds         *int64       `json:"eta_seconds"`
	Digest             *string      `json:"digest"`
	Error              *string      `json:"error"`
	CreatedAt          string       `json:"created_at"`
	UpdatedAt          string       `json:"updated_at"`
	StartedAt          *string      `json:"started_at"`
	FinishedAt         *string      `json:"finished_at"`
	// ReplicationID is the replication this transfer is a cycle of
	// (null for an ordinary transfer). Since 1.1.
	ReplicationID *string `json:"replication_id"`
}

// transferView is a transfer as the request's microversion shows it:
// replication_id is a field since 1.1.
func transferView(c *gin.Context, t *db.Transfer) any {
	v := ViewOf(t)
	if atLeast(c, "1.1") {
		return v
	}
	return transferView10{TransferView: v}
}

// transferView10 is a transfer at 1.0: its nil ReplicationID, shallower
// than the embedded one, hides replication_id.
type transferView10 struct {
	TransferView
	ReplicationID *string `json:"replication_id,omitempty"`
}

// LocationView is a transfer's source or destination.
type LocationView struct {
	Region   string  `json:"region"`
	Pool     *string `json:"pool"`
	Image    *string `json:"image"`
	Snapshot *string `json:"snapshot"`
	VolumeID *string `json:"volume_id"`
	BackupID *string `json:"backup_id"`
}

// isoTime renders UTC ISO 8601 with seconds, as OpenStack APIs do.
func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z") }

func isoTimePtr(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := isoTime(*t)
	return &s
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// ViewOf maps a stored transfer to its REST form.
func ViewOf(t *db.Transfer) TransferView {
	v := TransferView{
		ID: t.ID, Name: t.Name, Description: t.Description, ProjectID: t.ProjectID, UserID: t.UserID,
		Status: string(t.Status), Mode: string(t.Mode),
		Source: LocationView{Region: t.SourceRegion, Pool: strPtr(t.SourcePool), Image: strPtr(t.SourceImage),
			Snapshot: strPtr(t.SourceSnapshot), VolumeID: strPtr(t.SourceVolumeID), BackupID: strPtr(t.SourceBackupID)},
		Destination: LocationView{Region: t.DestRegion, Pool: strPtr(t.DestPool), Image: strPtr(t.DestImage),
			Snapshot: strPtr(t.DestSnapshot), VolumeID: strPtr(t.DestVolumeID), BackupID: strPtr(t.DestBackupID)},
		BytesTotal: t.BytesTotal, BytesTransferred: t.BytesTransferred, Progress: t.ProgressPercent(),
		RateBytesPerSecond: t.RateBytesPerSecond, Digest: strPtr(t.Digest), Error: t.Error,
		CreatedAt: isoTime(t.CreatedAt), UpdatedAt: isoTime(t.UpdatedAt),
		StartedAt: isoTimePtr(t.StartedAt), FinishedAt: isoTimePtr(t.FinishedAt),
		ReplicationID: strPtr(t.ReplicationID),
	}
	if eta, ok := t.ETASeconds(); ok {
		v.ETASeconds = &eta
	}
	return v
}

// CreateRequest is the body of POST /v1/transfers.
type CreateRequest struct {
	Transfer *CreateTransfer `json:"transfer"`
}

// CreateTransfer is what a caller asks for.
type CreateTransfer struct {
	Source      *SourceSpec `json:"source"`
	Destination *DestSpec   `json:"destination"`
	Mode        string      `json:"mode,omitempty"`
	Name        string      `json:"name,omitempty"`
	Description string      `json:"description,omitempty"`
}

// SourceSpec names what to copy: a volume, a backup, or pool+image.
type SourceSpec struct {
	Region   string `json:"region"`
	VolumeID string `json:"volume_id,omitempty"`
	BackupID string `json:"backup_id,omitempty"`
	Pool     string `json:"pool,omitempty"`
	Image    string `json:"image,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
}

// DestSpec names where to copy to.
type DestSpec struct {
	Region string `json:"region"`
	Pool   string `json:"pool,omitempty"`
	Image  string `json:"image,omitempty"`
}

// ParseCreate decodes and checks a create body: strict JSON (unknown
// fields and trailing data refused), types, required fields, sizes, one
// kind of source, and source and destination regions that differ. The
// regions' existence is checked by the caller (it knows the catalog).
func ParseCreate(r io.Reader, maxBytes int64) (*CreateTransfer, error) {
	body, err := io.ReadAll(io.LimitReader(r, maxBytes+1))
	if err != nil {
		return nil, invalid("cannot read the request body: %v", err)
	}
	if int64(len(body)) > maxBytes {
		return nil, errBodyTooLarge
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req CreateRequest
	if err := dec.Decode(&req); err != nil {
		return nil, invalid("malformed request body: %s", jsonError(err))
	}
	if dec.More() {
		return nil, invalid("malformed request body: data after the JSON object")
	}
	t := req.Transfer
	if t == nil {
		return nil, invalid("the body must be {\"transfer\": {...}}")
	}
	if t.Source == nil {
		return nil, invalid("transfer.source is required")
	}
	if t.Destination == nil {
		return nil, invalid("transfer.destination is required")
	}
	s, d := t.Source, t.Destination
	if s.Region == "" {
		return nil, invalid("transfer.source.region is required")
	}
	if d.Region == "" {
		return nil, invalid("transfer.destination.region is required")
	}
	if s.Region == d.Region {
		return nil, invalid("source and destination are both in region %q: Ferry moves data between regions", s.Region)
	}
	kinds := 0
	for _, set := range []bool{s.VolumeID != "", s.BackupID != "", s.Pool != "" || s.Image != ""} {
		if set {
			kinds++
		}
	}
	switch {
	case kinds == 0:
		return nil, invalid("transfer.source needs volume_id, backup_id, or pool and image")
	case kinds > 1:
		return nil, invalid("transfer.source takes one of volume_id, backup_id, or pool and image")
	case (s.Pool == "") != (s.Image == ""):
		return nil, invalid("transfer.source needs both pool and image")
	}
	// Cinder ids go into Cinder's URLs: only a UUID is one.
	for _, f := range []struct {
		name string
		v    *string
	}{{"transfer.source.volume_id", &s.VolumeID}, {"transfer.source.backup_id", &s.BackupID}} {
		if *f.v == "" {
			continue
		}
		id, ok := CanonicalUUID(*f.v)
		if !ok {
			return nil, invalid("%s %q is not a UUID", f.name, truncate(*f.v, 64))
		}
		*f.v = id
	}
	if t.Mode == "" {
		t.Mode = string(db.ModeAuto)
	}
	if _, err := db.ParseMode(t.Mode); err != nil {
		return nil, invalid("transfer.mode %q is not one of auto, full, incremental", t.Mode)
	}
	for _, f := range []struct {
		name, v string
		max     int
		rbdName bool
	}{
		{"transfer.name", t.Name, db.MaxNameLength, false},
		{"transfer.source.region", s.Region, db.MaxNameLength, false},
		{"transfer.destination.region", d.Region, db.MaxNameLength, false},
		{"transfer.source.pool", s.Pool, db.MaxNameLength, true},
		{"transfer.source.image", s.Image, db.MaxNameLength, true},
		{"transfer.source.snapshot", s.Snapshot, db.MaxNameLength, true},
		{"transfer.destination.pool", d.Pool, db.MaxNameLength, true},
		{"transfer.destination.image", d.Image, db.MaxNameLength, true},
		{"transfer.source.volume_id", s.VolumeID, db.MaxIDLength, false},
		{"transfer.source.backup_id", s.BackupID, db.MaxIDLength, false},
		{"transfer.description", t.Description, 4096, false},
	} {
		if len([]rune(f.v)) > f.max {
			return nil, invalid("%s is longer than %d characters", f.name, f.max)
		}
		if f.rbdName && strings.ContainsAny(f.v, "/@\x00") {
			return nil, invalid("%s %q is not a valid RBD name (no '/', '@')", f.name, f.v)
		}
		if strings.ContainsRune(f.v, 0) {
			return nil, invalid("%s contains a NUL character", f.name)
		}
	}
	return t, nil
}

// CanonicalUUID returns id in the canonical form
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, lower case); ok is false for
// anything else, the other spellings uuid.Parse accepts included.
func CanonicalUUID(id string) (string, bool) {
	if len(id) != 36 {
		return "", false
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return "", false
	}
	return u.String(), true
}

// jsonError says what is wrong with a body without echoing it.
func jsonError(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be a %s, not a %s", te.Field, te.Type.Kind(), te.Value)
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	case errors.Is(err, io.EOF):
		return "empty body"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	}
	// DisallowUnknownFields: `json: unknown field "x"`.
	return strings.TrimPrefix(err.Error(), "json: ")
}
