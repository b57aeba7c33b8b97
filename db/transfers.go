package db

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Listing limits.
const (
	DefaultListLimit = 1000
	MaxListLimit     = 1000
	// MaxDescriptionLength bounds descriptions (characters; a MySQL TEXT
	// holds 64 KiB).
	MaxDescriptionLength = 8192
)

// Scope restricts the transfers a caller may see: one project's, or all
// (admins with all_projects). The zero Scope is invalid, so a forgotten
// scope fails loudly instead of matching nothing or everything.
type Scope struct {
	ProjectID   string
	AllProjects bool
}

// ProjectScope limits to one project's transfers.
func ProjectScope(projectID string) Scope { return Scope{ProjectID: projectID} }

// AllProjectsScope sees every transfer.
func AllProjectsScope() Scope { return Scope{AllProjects: true} }

func (s Scope) apply(q *gorm.DB) (*gorm.DB, error) {
	if s.AllProjects {
		return q, nil
	}
	if s.ProjectID == "" {
		return nil, fmt.Errorf("%w: scope names neither a project nor all projects", ErrInvalidArgument)
	}
	return q.Where("project_id = ?", s.ProjectID), nil
}

// CreateOption adjusts CreateTransfer.
type CreateOption func(*createOptions)

type createOptions struct {
	requestID string
	message   string
	quota     *Quota
}

// Quota limits a project's transfers in progress (not terminal): their
// number, and the bytes they still have to copy as their agents report
// them (bytes_total - bytes_transferred). Zero means no limit.
type Quota struct {
	Transfers     int
	BytesInFlight int64
	// NewBytes is what the new transfer will copy, when known (0 when
	// not: its agent reports it).
	NewBytes int64
}

// WithQuota checks q in the creating transaction: a project at its quota
// gets ErrQuotaExceeded and nothing is created. On SQLite the check and the
// insert are serialised; on MariaDB and PostgreSQL concurrent creations of
// one project may overshoot by the requests in flight.
func WithQuota(q Quota) CreateOption {
	return func(o *createOptions) { o.quota = &q }
}

// checkQuota counts the project's transfers in progress within tx.
func checkQuota(tx *gorm.DB, projectID string, q *Quota) error {
	active := tx.Model(&Transfer{}).Where("project_id = ? AND status NOT IN ?", projectID, []Status{StatusCompleted, StatusError, StatusCancelled})
	if q.Transfers > 0 {
		var n int64
		if err := active.Session(&gorm.Session{}).Count(&n).Error; err != nil {
			return translate(err)
		}
		if n >= int64(q.Transfers) {
			return fmt.Errorf("%w: project %s has %d transfers in progress, its quota is %d", ErrQuotaExceeded, projectID, n, q.Transfers)
		}
	}
	if q.BytesInFlight > 0 {
		var left struct{ Sum int64 }
		if err := active.Session(&gorm.Session{}).
			Select("COALESCE(SUM(CASE WHEN bytes_total > bytes_transferred THEN bytes_total - bytes_transferred ELSE 0 END), 0) AS sum").
			Scan(&left).Error; err != nil {
			return translate(err)
		}
		if left.Sum+q.NewBytes > q.BytesInFlight {
			return fmt.Errorf("%w: project %s has %d bytes in flight (and this transfer %d), its quota is %d", ErrQuotaExceeded, projectID, left.Sum, q.NewBytes, q.BytesInFlight)
		}
	}
	return nil
}

// WithRequestID records the API request id on the creation event.
func WithRequestID(requestID string) CreateOption {
	return func(o *createOptions) { o.requestID = requestID }
}

// WithEventMessage sets the creation event's message (default "transfer created").
func WithEventMessage(msg string) CreateOption {
	return func(o *createOptions) { o.message = msg }
}

// CreateTransfer inserts t in status queued together with its first event
// ("" → queued) and, when outbox is not nil, the message announcing it, all
// in one transaction. An empty t.ID gets a new UUID (set the id beforehand
// when the outbox payload must carry it). The store sets the status, mode
// (auto when empty), counters, attempt and epoch (1), and times; t and
// outbox are updated with what was written. A duplicate id is ErrConflict;
// bad values are ErrInvalidArgument.
func (d *DB) CreateTransfer(ctx context.Context, t *Transfer, outbox *OutboxMessage, opts ...CreateOption) error {
	if t == nil {
		return fmt.Errorf("db: create transfer: %w: nil transfer", ErrInvalidArgument)
	}
	co := createOptions{message: "transfer created"}
	for _, o := range opts {
		o(&co)
	}
	if err := prepareNewTransfer(t); err != nil {
		return fmt.Errorf("db: create transfer: %w", err)
	}
	if utf8.RuneCountInString(co.requestID) > MaxRequestIDLength {
		return fmt.Errorf("db: create transfer: %w: request id longer than %d characters", ErrInvalidArgument, MaxRequestIDLength)
	}
	if outbox != nil {
		if err := checkOutbox(outbox); err != nil {
			return fmt.Errorf("db: create transfer: %w", err)
		}
	}
	now := d.now()
	t.CreatedAt, t.UpdatedAt = now, now
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		if co.quota != nil {
			if err := checkQuota(tx, t.ProjectID, co.quota); err != nil {
				return err
			}
		}
		if err := tx.Create(t).Error; err != nil {
			return fmt.Errorf("insert transfer: %w", translate(err))
		}
		ev := TransferEvent{
			TransferID: t.ID, CreatedAt: now, Kind: EventStatus,
			FromStatus: "", ToStatus: StatusQueued, Message: co.message, RequestID: co.requestID,
		}
		if err := tx.Create(&ev).Error; err != nil {
			return fmt.Errorf("insert event: %w", translate(err))
		}
		if outbox != nil {
			resetOutbox(outbox, now)
			if err := tx.Create(outbox).Error; err != nil {
				return fmt.Errorf("insert outbox message: %w", translate(err))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("db: create transfer %s: %w", t.ID, err)
	}
	return nil
}

// prepareNewTransfer validates a transfer to insert and sets the fields the
// store owns.
func prepareNewTransfer(t *Transfer) error {
	if t.ID == "" {
		t.ID = uuid.NewString()
	} else {
		u, err := uuid.Parse(t.ID)
		if err != nil || len(t.ID) != transferIDLength {
			return fmt.Errorf("%w: transfer id %q is not a UUID", ErrInvalidArgument, t.ID)
		}
		t.ID = u.String() // canonical lower case
	}
	if t.Status != "" && t.Status != StatusQueued {
		return fmt.Errorf("%w: a new transfer is queued, not %q", ErrInvalidArgument, t.Status)
	}
	t.Status = StatusQueued
	if t.Mode == "" {
		t.Mode = ModeAuto
	}
	if !t.Mode.Valid() {
		return fmt.Errorf("%w: unknown transfer mode %q", ErrInvalidArgument, t.Mode)
	}
	if t.ProjectID == "" {
		return fmt.Errorf("%w: transfer has no project_id", ErrInvalidArgument)
	}
	if t.BytesTotal < 0 {
		return fmt.Errorf("%w: negative bytes_total", ErrInvalidArgument)
	}
	for _, f := range []struct {
		name, value string
		max         int
	}{
		{"name", t.Name, MaxNameLength},
		{"description", t.Description, MaxDescriptionLength},
		{"project_id", t.ProjectID, MaxIDLength},
		{"user_id", t.UserID, MaxIDLength},
		{"source.region", t.SourceRegion, MaxNameLength},
		{"source.pool", t.SourcePool, MaxNameLength},
		{"source.image", t.SourceImage, MaxNameLength},
		{"source.snapshot", t.SourceSnapshot, MaxNameLength},
		{"source.volume_id", t.SourceVolumeID, MaxIDLength},
		{"source.backup_id", t.SourceBackupID, MaxIDLength},
		{"destination.region", t.DestRegion, MaxNameLength},
		{"destination.pool", t.DestPool, MaxNameLength},
		{"destination.image", t.DestImage, MaxNameLength},
		{"destination.snapshot", t.DestSnapshot, MaxNameLength},
		{"destination.volume_id", t.DestVolumeID, MaxIDLength},
		{"destination.backup_id", t.DestBackupID, MaxIDLength},
		{"owner_project_id", t.OwnerProjectID, MaxIDLength},
		{"digest", t.Digest, MaxDigestLength},
		{"replication_id", t.ReplicationID, transferIDLength},
	} {
		if utf8.RuneCountInString(f.value) > f.max {
			return fmt.Errorf("%w: %s longer than %d characters", ErrInvalidArgument, f.name, f.max)
		}
	}
	t.BytesTransferred, t.RateBytesPerSecond = 0, 0
	t.Error, t.Agent = nil, nil
	t.Attempt, t.Epoch = 1, 1
	t.StartedAt, t.FinishedAt = nil, nil
	return nil
}

// GetTransfer returns the transfer with id if the scope sees it, else
// ErrNotFound.
func (d *DB) GetTransfer(ctx context.Context, id string, scope Scope) (*Transfer, error) {
	q, err := scope.apply(d.gorm.WithContext(ctx).Where("id = ?", id))
	if err != nil {
		return nil, fmt.Errorf("db: get transfer %s: %w", id, err)
	}
	var t Transfer
	if err := q.Take(&t).Error; err != nil {
		return nil, fmt.Errorf("db: get transfer %s: %w", id, translate(err))
	}
	return &t, nil
}

// ListOpts selects and orders a page of transfers.
type ListOpts struct {
	Scope Scope
	// Status, when set, keeps transfers in that status; Statuses keeps any
	// of several. Both may be given (their union is kept).
	Status   Status
	Statuses []Status
	// Agent, when set, keeps transfers held by that agent host.
	Agent string
	// SourceRegion and DestRegion, when set, keep transfers from or to
	// that region.
	SourceRegion, DestRegion string
	// ReplicationID, when set, keeps the cycles of that replication
	// (ListTransfers only).
	ReplicationID string
	// Limit is the page size: 0 means DefaultListLimit; at most MaxListLimit.
	Limit int
	// Marker is the id of the last transfer of the previous page. It is
	// looked up within Scope only (not the filters), so a marker whose
	// status changed since still works.
	Marker string
	// SortKey is one of created_at (default), updated_at, name, status, id;
	// ties are broken by id in the same direction, so pages are stable.
	SortKey string
	// SortDir is asc or desc (default).
	SortDir string
}

var sortKeys = []string{"created_at", "updated_at", "name", "status", "id"}

// SortKeys lists the accepted ListOpts.SortKey values.
func SortKeys() []string { return slices.Clone(sortKeys) }

// ListTransfers returns one page of transfers and whether more follow. An
// unknown sort key or direction is ErrInvalidSort; a marker the scope does
// not see is ErrMarkerNotFound.
func (d *DB) ListTransfers(ctx context.Context, opts ListOpts) ([]Transfer, bool, error) {
	pg, err := parsePage(opts)
	if err != nil {
		return nil, false, fmt.Errorf("db: list transfers: %w", err)
	}
	statuses := slices.Clone(opts.Statuses)
	if opts.Status != "" {
		statuses = append(statuses, opts.Status)
	}
	for _, s := range statuses {
		if !s.Valid() {
			return nil, false, fmt.Errorf("db: list transfers: %w: unknown status %q", ErrInvalidArgument, s)
		}
	}

	g := d.gorm.WithContext(ctx)
	q, err := opts.Scope.apply(g.Model(&Transfer{}))
	if err != nil {
		return nil, false, fmt.Errorf("db: list transfers: %w", err)
	}
	if len(statuses) > 0 {
		q = q.Where("status IN ?", statuses)
	}
	if opts.Agent != "" {
		q = q.Where("agent = ?", opts.Agent)
	}
	if opts.SourceRegion != "" {
		q = q.Where("source_region = ?", opts.SourceRegion)
	}
	if opts.DestRegion != "" {
		q = q.Where("dest_region = ?", opts.DestRegion)
	}
	if opts.ReplicationID != "" {
		q = q.Where("replication_id = ?", opts.ReplicationID)
	}
	if opts.Marker != "" {
		mq, _ := opts.Scope.apply(g.Where("id = ?", opts.Marker))
		var m Transfer
		if err := mq.Take(&m).Error; err != nil {
			if errors.Is(err, gorm.ErrRecordNotFound) {
				return nil, false, fmt.Errorf("db: list transfers: %w: %q", ErrMarkerNotFound, opts.Marker)
			}
			return nil, false, fmt.Errorf("db: list transfers: marker: %w", err)
		}
		q = pg.after(q, sortValue(&m, pg.key), m.ID)
	}
	var items []Transfer
	if err := pg.order(q).Limit(pg.limit + 1).Find(&items).Error; err != nil {
		return nil, false, fmt.Errorf("db: list transfers: %w", err)
	}
	more := len(items) > pg.limit
	if more {
		items = items[:pg.limit]
	}
	return items, more, nil
}

// page is a listing's parsed sort and size (ListOpts).
type page struct {
	key   string
	desc  bool
	limit int
}

func parsePage(opts ListOpts) (page, error) {
	pg := page{key: strings.ToLower(opts.SortKey), desc: true, limit: opts.Limit}
	if pg.key == "" {
		pg.key = "created_at"
	}
	if !slices.Contains(sortKeys, pg.key) {
		return pg, fmt.Errorf("%w: unknown sort key %q (want one of %s)", ErrInvalidSort, opts.SortKey, strings.Join(sortKeys, ", "))
	}
	switch strings.ToLower(opts.SortDir) {
	case "", "desc":
	case "asc":
		pg.desc = false
	default:
		return pg, fmt.Errorf("%w: unknown sort direction %q (want asc or desc)", ErrInvalidSort, opts.SortDir)
	}
	switch {
	case pg.limit < 0:
		return pg, fmt.Errorf("%w: negative limit %d", ErrInvalidArgument, pg.limit)
	case pg.limit == 0:
		pg.limit = DefaultListLimit
	case pg.limit > MaxListLimit:
		pg.limit = MaxListLimit
	}
	return pg, nil
}

// after keeps the rows that follow the marker row (its sort value v and id)
// in the page's order.
func (pg page) after(q *gorm.DB, v any, id string) *gorm.DB {
	col, idCol := clause.Column{Name: pg.key}, clause.Column{Name: "id"}
	op := ">"
	if pg.desc {
		op = "<"
	}
	if pg.key == "id" {
		return q.Where(gorm.Expr("? "+op+" ?", idCol, id))
	}
	return q.Where(gorm.Expr("(? "+op+" ?) OR (? = ? AND ? "+op+" ?)", col, v, col, v, idCol, id))
}

// order sorts by the page's key, ties broken by id in the same direction.
func (pg page) order(q *gorm.DB) *gorm.DB {
	q = q.Order(clause.OrderByColumn{Column: clause.Column{Name: pg.key}, Desc: pg.desc})
	if pg.key != "id" {
		q = q.Order(clause.OrderByColumn{Column: clause.Column{Name: "id"}, Desc: pg.desc})
	}
	return q
}

func sortValue(t *Transfer, key string) any {
	switch key {
	case "created_at":
		return t.CreatedAt
	case "updated_at":
		return t.UpdatedAt
	case "name":
		return t.Name
	case "status":
		return string(t.Status)
	}
	return t.ID
}

// TransferFields are optional column updates made with a transition; nil
// fields are left alone.
type TransferFields struct {
	Agent              *string
	Mode               *Mode // the agent resolves auto to full or incremental
	SourceSnapshot     *string
	DestPool           *string
	DestImage          *string
	DestSnapshot       *string
	DestVolumeID       *string
	DestBackupID       *string
	BytesTotal         *int64
	BytesTransferred   *int64
	RateBytesPerSecond *int64
	Digest             *string
	// RegisterStartedAt sets register_started_at; a zero time clears it.
	RegisterStartedAt *time.Time
}

func (f TransferFields) columns() (map[string]any, error) {
	cols := map[string]any{}
	if f.RegisterStartedAt != nil {
		if f.RegisterStartedAt.IsZero() {
			cols["register_started_at"] = nil
		} else {
			cols["register_started_at"] = f.RegisterStartedAt.UTC()
		}
	}
	str := func(col string, v *string, maxLen int) error {
		if v == nil {
			return nil
		}
		if utf8.RuneCountInString(*v) > maxLen {
			return fmt.Errorf("%w: %s longer than %d characters", ErrInvalidArgument, col, maxLen)
		}
		cols[col] = *v
		return nil
	}
	num := func(col string, v *int64) error {
		if v == nil {
			return nil
		}
		if *v < 0 {
			return fmt.Errorf("%w: negative %s", ErrInvalidArgument, col)
		}
		cols[col] = *v
		return nil
	}
	if f.Mode != nil {
		if !f.Mode.Valid() {
			return nil, fmt.Errorf("%w: unknown transfer mode %q", ErrInvalidArgument, *f.Mode)
		}
		cols["mode"] = *f.Mode
	}
	for _, err := range []error{
		str("agent", f.Agent, MaxNameLength),
		str("source_snapshot", f.SourceSnapshot, MaxNameLength),
		str("dest_pool", f.DestPool, MaxNameLength),
		str("dest_image", f.DestImage, MaxNameLength),
		str("dest_snapshot", f.DestSnapshot, MaxNameLength),
		str("dest_volume_id", f.DestVolumeID, MaxIDLength),
		str("dest_backup_id", f.DestBackupID, MaxIDLength),
		str("digest", f.Digest, MaxDigestLength),
		num("bytes_total", f.BytesTotal),
		num("bytes_transferred", f.BytesTransferred),
		num("rate_bytes_per_second", f.RateBytesPerSecond),
	} {
		if err != nil {
			return nil, err
		}
	}
	return cols, nil
}

// TransitionOpts describes a status change.
type TransitionOpts struct {
	// Message is the event's message.
	Message string
	// Error is stored in the transfer's error column; when moving to error
	// it is required in spirit (Message, or "unknown error", stands in).
	Error string
	// RequestID is recorded on the event.
	RequestID string
	// ExpectFrom, when not empty, lists the statuses the transfer must be
	// in; any other is ErrInvalidTransition even if the state machine would
	// allow the change (an agent's "accepted" must come from queued).
	ExpectFrom []Status
	// ExpectEpoch, when not 0, must equal the transfer's epoch, else
	// ErrStaleEpoch: a report from before a re-dispatch is fenced off.
	ExpectEpoch int64
	// Fields are further columns to update in the same statement.
	Fields TransferFields
	// Outbox, when set, builds a message from the transfer as updated
	// (new status and epoch); it is written in the same transaction, so
	// that a retry or a cancel and its message are never separated.
	Outbox func(*Transfer) (*OutboxMessage, error)
	// Cycle is what a replication cycle's completion adds to its
	// replication (the point's time, the points the finish removed); see
	// TransitionTransfer. Ignored for other transfers and transitions.
	Cycle *CycleOutcome
}

// TransitionTransfer moves transfer id to status to, if the state machine
// (CanTransition) and opts allow it, and records an event; it returns the
// updated transfer. It runs in a transaction whose UPDATE is conditional on
// the status read (WHERE id = ? AND status = ?), so of concurrent
// transitions exactly one wins; a loser sees ErrInvalidTransition (or
// ErrConflict if it raced past the read).
//
// Besides opts.Fields, the store sets: started_at on the first entry into
// accepted; finished_at on entering completed, error or cancelled (and a
// zero rate); on entering queued the agent is cleared and the epoch bumped,
// and on a retry (error → queued) the attempt is bumped and error,
// started_at and finished_at are cleared. The event's kind is error, retry,
// requeue or status (see EventKind).
//
// A replication cycle (replication_id set) reaching completed, error or
// cancelled updates its replication in the same transaction, once (a
// repeated transition is refused): completed inserts the point (named
// dest_snapshot, created at opts.Cycle.SnapshotAt, else started_at), deletes
// the points named in opts.Cycle.Removed, and updates last_sync_at (the
// newest point's time), bytes_last_cycle, bytes_replicated,
// cycles_completed and points_count, clears last_error, and records the
// event cycle_completed; error and cancelled count cycles_failed, set
// last_error and record cycle_failed.
func (d *DB) TransitionTransfer(ctx context.Context, id string, to Status, opts TransitionOpts) (*Transfer, error) {
	if !to.Valid() {
		return nil, fmt.Errorf("db: transition transfer %s: %w: unknown status %q", id, ErrInvalidArgument, to)
	}
	cols, err := opts.Fields.columns()
	if err != nil {
		return nil, fmt.Errorf("db: transition transfer %s: %w", id, err)
	}
	if utf8.RuneCountInString(opts.RequestID) > MaxRequestIDLength {
		return nil, fmt.Errorf("db: transition transfer %s: %w: request id longer than %d characters", id, ErrInvalidArgument, MaxRequestIDLength)
	}
	var out Transfer
	err = d.inTx(ctx, func(tx *gorm.DB) error {
		var cur Transfer
		if err := d.lockRow(tx).Where("id = ?", id).Take(&cur).Error; err != nil {
			return translate(err)
		}
		if opts.ExpectEpoch != 0 && cur.Epoch != opts.ExpectEpoch {
			return fmt.Errorf("%w: report for epoch %d, transfer is at epoch %d", ErrStaleEpoch, opts.ExpectEpoch, cur.Epoch)
		}
		if len(opts.ExpectFrom) > 0 && !slices.Contains(opts.ExpectFrom, cur.Status) {
			return fmt.Errorf("%w: %s → %s: transfer is %s, expected %v", ErrInvalidTransition, cur.Status, to, cur.Status, opts.ExpectFrom)
		}
		if !CanTransition(cur.Status, to) {
			return fmt.Errorf("%w: %s → %s is not allowed", ErrInvalidTransition, cur.Status, to)
		}
		now := d.now()
		upd := make(map[string]any, len(cols)+8)
		for k, v := range cols {
			upd[k] = v
		}
		upd["status"] = to
		upd["updated_at"] = now
		msg := opts.Message
		switch {
		case to == StatusQueued:
			upd["agent"] = nil
			upd["epoch"] = gorm.Expr("epoch + 1")
			upd["rate_bytes_per_second"] = 0
			if cur.Status == StatusError {
				upd["attempt"] = gorm.Expr("attempt + 1")
				upd["error"] = nil
				upd["started_at"] = nil
				upd["finished_at"] = nil
				upd["cleaned_at"] = nil
			}
		case to == StatusAccepted && cur.StartedAt == nil:
			upd["started_at"] = now
		case IsTerminal(to):
			upd["finished_at"] = now
			upd["rate_bytes_per_second"] = 0
		}
		if to == StatusError {
			e := opts.Error
			if e == "" {
				e = opts.Message
			}
			if e == "" {
				e = "unknown error"
			}
			upd["error"] = e
			if msg == "" {
				msg = e
			}
		} else if opts.Error != "" && to != StatusQueued {
			upd["error"] = opts.Error
		}
		res := tx.Model(&Transfer{}).Where("id = ? AND status = ? AND epoch = ?", id, cur.Status, cur.Epoch).UpdateColumns(upd)
		if res.Error != nil {
			return fmt.Errorf("update: %w", translate(res.Error))
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: transfer changed concurrently (was %s)", ErrConflict, cur.Status)
		}
		ev := TransferEvent{
			TransferID: id, CreatedAt: now, Kind: eventKindFor(cur.Status, to),
			FromStatus: cur.Status, ToStatus: to, Message: msg, RequestID: opts.RequestID,
		}
		if err := tx.Create(&ev).Error; err != nil {
			return fmt.Errorf("insert event: %w", translate(err))
		}
		if err := tx.Where("id = ?", id).Take(&out).Error; err != nil {
			return err
		}
		if err := d.applyCycleOutcome(tx, now, &out, to, opts.Cycle); err != nil {
			return err
		}
		if opts.Outbox != nil {
			m, err := opts.Outbox(&out)
			if err != nil {
				return fmt.Errorf("outbox message: %w", err)
			}
			if m != nil {
				if err := insertOutbox(tx, now, m); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("db: transition transfer %s to %s: %w", id, to, err)
	}
	return &out, nil
}

// lockRow adds FOR UPDATE on servers with row locks; SQLite transactions
// here are IMMEDIATE, which already excludes other writers.
func (d *DB) lockRow(tx *gorm.DB) *gorm.DB {
	if d.dialect == DialectSQLite {
		return tx
	}
	return tx.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
}

// UpdateProgress records an agent's progress report: bytes transferred, the
// total (when bytesTotal > 0; 0 leaves it) and the current rate. It writes no
// event. The transfer must be active (accepted … finalizing), else
// ErrConflict; unknown id is ErrNotFound.
func (d *DB) UpdateProgress(ctx context.Context, id string, bytesTransferred, bytesTotal, rate int64) error {
	if bytesTransferred < 0 || bytesTotal < 0 || rate < 0 {
		return fmt.Errorf("db: update progress of %s: %w: negative value", id, ErrInvalidArgument)
	}
	upd := map[string]any{
		"bytes_transferred":     bytesTransferred,
		"rate_bytes_per_second": rate,
		"updated_at":            d.now(),
	}
	if bytesTotal > 0 {
		upd["bytes_total"] = bytesTotal
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		res := tx.Model(&Transfer{}).Where("id = ? AND status IN ?", id, activeStatuses()).UpdateColumns(upd)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected > 0 {
			return nil
		}
		var cur Transfer
		if err := tx.Select("id", "status").Where("id = ?", id).Take(&cur).Error; err != nil {
			return translate(err)
		}
		return fmt.Errorf("%w: transfer is %s, not active", ErrConflict, cur.Status)
	})
	if err != nil {
		return fmt.Errorf("db: update progress of %s: %w", id, err)
	}
	return nil
}

func activeStatuses() []Status {
	var out []Status
	for _, s := range AllStatuses() {
		if IsActive(s) {
			out = append(out, s)
		}
	}
	return out
}

func terminalStatuses() []Status {
	var out []Status
	for _, s := range AllStatuses() {
		if IsTerminal(s) {
			out = append(out, s)
		}
	}
	return out
}

// ListEvents returns a transfer's events, oldest first; an unknown transfer
// is ErrNotFound. It does not check scope: look the transfer up with
// GetTransfer first.
func (d *DB) ListEvents(ctx context.Context, transferID string) ([]TransferEvent, error) {
	g := d.gorm.WithContext(ctx)
	var n int64
	if err := g.Model(&Transfer{}).Where("id = ?", transferID).Count(&n).Error; err != nil {
		return nil, fmt.Errorf("db: list events of %s: %w", transferID, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("db: list events of %s: %w", transferID, ErrNotFound)
	}
	var evs []TransferEvent
	if err := g.Where("transfer_id = ?", transferID).Order("id").Find(&evs).Error; err != nil {
		return nil, fmt.Errorf("db: list events of %s: %w", transferID, err)
	}
	return evs, nil
}

// RecordEvent adds a note to a transfer's history without changing its
// status (kind EventNote unless given).
func (d *DB) RecordEvent(ctx context.Context, transferID string, kind EventKind, message, requestID string) error {
	if kind == "" {
		kind = EventNote
	}
	if len(kind) > statusColumnWidth || utf8.RuneCountInString(requestID) > MaxRequestIDLength {
		return fmt.Errorf("db: record event for %s: %w: kind or request id too long", transferID, ErrInvalidArgument)
	}
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		var cur Transfer
		if err := tx.Select("id", "status").Where("id = ?", transferID).Take(&cur).Error; err != nil {
			return translate(err)
		}
		ev := TransferEvent{
			TransferID: transferID, CreatedAt: d.now(), Kind: kind,
			FromStatus: cur.Status, ToStatus: cur.Status, Message: message, RequestID: requestID,
		}
		return translate(tx.Create(&ev).Error)
	})
	if err != nil {
		return fmt.Errorf("db: record event for %s: %w", transferID, err)
	}
	return nil
}

// DeleteTransfer deletes a transfer the scope sees, with its events. Only
// terminal transfers (completed, error, cancelled) may be deleted; others
// are ErrConflict.
func (d *DB) DeleteTransfer(ctx context.Context, id string, scope Scope) error {
	return d.DeleteTransferWith(ctx, id, scope, nil)
}

// DeleteTransferWith is DeleteTransfer that, for a failed or cancelled
// transfer whose leftovers were not cleaned yet, writes the clean-up
// messages cleanup builds to the outbox in the same transaction: the
// garbage collector works from the row, which is gone afterwards.
func (d *DB) DeleteTransferWith(ctx context.Context, id string, scope Scope, cleanup func(*Transfer) ([]*OutboxMessage, error)) error {
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		q, err := scope.apply(d.lockRow(tx).Where("id = ?", id))
		if err != nil {
			return err
		}
		var cur Transfer
		if err := q.Take(&cur).Error; err != nil {
			return translate(err)
		}
		if !IsTerminal(cur.Status) {
			return fmt.Errorf("%w: transfer is %s; only completed, error or cancelled transfers can be deleted", ErrConflict, cur.Status)
		}
		// transfer_events rows go with it (ON DELETE CASCADE).
		res := tx.Where("id = ? AND status IN ?", id, terminalStatuses()).Delete(&Transfer{})
		if res.Error != nil {
			return translate(res.Error)
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: transfer changed concurrently", ErrConflict)
		}
		if cleanup == nil || cur.Status == StatusCompleted || cur.CleanedAt != nil {
			return nil
		}
		msgs, err := cleanup(&cur)
		if err != nil {
			return fmt.Errorf("clean-up messages: %w", err)
		}
		return insertOutbox(tx, d.now(), msgs...)
	})
	if err != nil {
		return fmt.Errorf("db: delete transfer %s: %w", id, err)
	}
	return nil
}

// UpdateFields sets fields of a transfer that is in status expect, without
// a transition (no event): e.g. the id of the Cinder volume a finalization
// created, before it is available. Another status is ErrConflict; an
// unknown id ErrNotFound.
func (d *DB) UpdateFields(ctx context.Context, id string, expect Status, f TransferFields) error {
	upd, err := f.columns()
	if err != nil {
		return fmt.Errorf("db: update %s: %w", id, err)
	}
	if len(upd) == 0 {
		return nil
	}
	upd["updated_at"] = d.now()
	err = d.inTx(ctx, func(tx *gorm.DB) error {
		res := tx.Model(&Transfer{}).Where("id = ? AND status = ?", id, expect).UpdateColumns(upd)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected > 0 {
			return nil
		}
		var cur Transfer
		if err := tx.Select("id", "status").Where("id = ?", id).Take(&cur).Error; err != nil {
			return translate(err)
		}
		return fmt.Errorf("%w: transfer is %s, not %s", ErrConflict, cur.Status, expect)
	})
	if err != nil {
		return fmt.Errorf("db: update %s: %w", id, err)
	}
	return nil
}

// ListCleanable returns up to limit transfers whose leftovers may be
// cleaned up: failed or cancelled before before, and not cleaned yet (a
// retry makes a transfer cleanable again when it ends anew). Oldest first.
func (d *DB) ListCleanable(ctx context.Context, before time.Time, limit int) ([]Transfer, error) {
	if limit <= 0 || limit > MaxListLimit {
		limit = MaxListLimit
	}
	var out []Transfer
	err := d.gorm.WithContext(ctx).
		Where("status IN ? AND finished_at < ? AND cleaned_at IS NULL", []Status{StatusError, StatusCancelled}, before.UTC()).
		Order("finished_at ASC").Order("id ASC").Limit(limit).Find(&out).Error
	if err != nil {
		return nil, fmt.Errorf("db: list cleanable transfers: %w", translate(err))
	}
	return out, nil
}

// MarkCleaned records that transfer id's clean-up is sent, writing msgs
// (its agents' clean-up commands) to the outbox in the same transaction.
// The transfer must still be failed or cancelled, uncleaned, and finished
// at finishedAt (not retried since), else ErrConflict.
func (d *DB) MarkCleaned(ctx context.Context, id string, finishedAt time.Time, msgs ...*OutboxMessage) error {
	err := d.inTx(ctx, func(tx *gorm.DB) error {
		now := d.now()
		res := tx.Model(&Transfer{}).
			Where("id = ? AND status IN ? AND finished_at = ? AND cleaned_at IS NULL", id, []Status{StatusError, StatusCancelled}, finishedAt.UTC()).
			UpdateColumns(map[string]any{"cleaned_at": now})
		if res.Error != nil {
			return translate(res.Error)
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("%w: transfer %s is no longer a failed or cancelled transfer to clean", ErrConflict, id)
		}
		return insertOutbox(tx, now, msgs...)
	})
	if err != nil {
		return fmt.Errorf("db: mark %s cleaned: %w", id, err)
	}
	return nil
}
