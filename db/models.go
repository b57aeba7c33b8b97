package db

import (
	"encoding/json"
	"time"

	"gorm.io/gorm"
)

// The live models below map rows to Go values; they do not define the
// schema. The schema is created by the versioned migrations (migrations.go),
// each of which carries its own frozen copy of the structs it creates, so
// the models may change without altering old migrations. A test checks that
// every column named here exists after Sync.

// Column sizes of the schema (characters). CreateTransfer refuses longer
// values with ErrInvalidArgument; the API validates with the same limits.
const (
	MaxNameLength       = 255 // name, region, pool, image, snapshot, agent host
	MaxIDLength         = 64  // project, user, volume and backup ids
	MaxDigestLength     = 160 // "<alg>:<hex>"
	MaxRequestIDLength  = 64
	MaxBinaryLength     = 64 // service binary name
	MaxVersionLength    = 64 // service version
	MaxRoutingKeyLength = 255
	transferIDLength    = 36 // canonical UUID
	statusColumnWidth   = 32
)

// Transfer is one copy of an image (or volume, or backup) from a source
// region to a destination region. All times are UTC.
type Transfer struct {
	ID          string `gorm:"column:id;primaryKey"`
	Name        string `gorm:"column:name"`
	Description string `gorm:"column:description"`
	ProjectID   string `gorm:"column:project_id"`
	UserID      string `gorm:"column:user_id"`
	Status      Status `gorm:"column:status"`
	Mode        Mode   `gorm:"column:mode"`

	SourceRegion   string `gorm:"column:source_region"`
	SourcePool     string `gorm:"column:source_pool"`
	SourceImage    string `gorm:"column:source_image"`
	SourceSnapshot string `gorm:"column:source_snapshot"`
	SourceVolumeID string `gorm:"column:source_volume_id"`
	SourceBackupID string `gorm:"column:source_backup_id"`

	DestRegion   string `gorm:"column:dest_region"`
	DestPool     string `gorm:"column:dest_pool"`
	DestImage    string `gorm:"column:dest_image"`
	DestSnapshot string `gorm:"column:dest_snapshot"`
	DestVolumeID string `gorm:"column:dest_volume_id"`
	DestBackupID string `gorm:"column:dest_backup_id"`

	// OwnerProjectID is the project a Cinder result (volume or backup)
	// goes to: the source resource's project, which may differ from
	// ProjectID when an admin moves another project's volume.
	OwnerProjectID string `gorm:"column:owner_project_id"`
	// CinderSpec is JSON describing the Cinder source (see services/api).
	CinderSpec *string `gorm:"column:cinder_spec"`
	// RegisterStartedAt is when the finalizer sent the Cinder request that
	// creates the destination volume (its ledger, before the call); nil
	// when no such request is outstanding. DestVolumeID records the answer.
	RegisterStartedAt *time.Time `gorm:"column:register_started_at"`

	BytesTotal         int64  `gorm:"column:bytes_total"`
	BytesTransferred   int64  `gorm:"column:bytes_transferred"`
	RateBytesPerSecond int64  `gorm:"column:rate_bytes_per_second"`
	Digest             string `gorm:"column:digest"` // "<alg>:<hex>", set when verified

	// Error is the last failure's message; nil unless the transfer failed.
	Error *string `gorm:"column:error"`
	// Agent is the host of the agent holding the transfer; nil while queued.
	Agent *string `gorm:"column:agent"`
	// Attempt counts runs: 1 at creation, +1 on every retry.
	Attempt int `gorm:"column:attempt"`
	// Epoch is a fencing token: 1 at creation, +1 every time the transfer
	// goes back to queued (re-dispatch or retry). Reports carrying an older
	// epoch are refused (TransitionOpts.ExpectEpoch).
	Epoch int64 `gorm:"column:epoch"`

	CreatedAt  time.Time  `gorm:"column:created_at"`
	UpdatedAt  time.Time  `gorm:"column:updated_at"`
	StartedAt  *time.Time `gorm:"column:started_at"`  // first entry into accepted
	FinishedAt *time.Time `gorm:"column:finished_at"` // entry into a terminal status
	// CleanedAt is when the clean-up of a failed or cancelled transfer's
	// leftovers was sent to its agents (nil: not yet; a retry clears it).
	CleanedAt *time.Time `gorm:"column:cleaned_at"`

	// ReplicationID is the replication this transfer is a cycle of; ""
	// for an ordinary transfer. Set by StartCycle.
	ReplicationID string `gorm:"column:replication_id"`
}

// TableName implements gorm's tabler.
func (Transfer) TableName() string { return "transfers" }

// AfterFind normalises times read back to UTC (drivers may return local time).
func (t *Transfer) AfterFind(*gorm.DB) error {
	t.CreatedAt = t.CreatedAt.UTC()
	t.UpdatedAt = t.UpdatedAt.UTC()
	t.StartedAt = utcPtr(t.StartedAt)
	t.FinishedAt = utcPtr(t.FinishedAt)
	t.CleanedAt = utcPtr(t.CleanedAt)
	return nil
}

// ProgressPercent returns bytes transferred as a percentage of bytes total
// (0–100); a completed transfer is 100.
func (t *Transfer) ProgressPercent() float64 {
	if t.Status == StatusCompleted || t.Status == StatusFinalizing {
		return 100 // finalizing: the data is copied and verified
	}
	if t.BytesTotal <= 0 || t.BytesTransferred <= 0 {
		return 0
	}
	p := float64(t.BytesTransferred) * 100 / float64(t.BytesTotal)
	return min(p, 100)
}

// ETASeconds estimates the seconds left from the current rate; ok is false
// when no estimate can be made (not running, rate or total unknown).
func (t *Transfer) ETASeconds() (secs int64, ok bool) {
	if !IsActive(t.Status) || t.Status == StatusFinalizing || t.RateBytesPerSecond <= 0 || t.BytesTotal <= 0 {
		return 0, false
	}
	left := max(t.BytesTotal-t.BytesTransferred, 0)
	return (left + t.RateBytesPerSecond - 1) / t.RateBytesPerSecond, true
}

// TransferEvent is one entry of a transfer's history: a status change (with
// its from and to), an error, a retry, or a note.
type TransferEvent struct {
	ID         int64     `gorm:"column:id;primaryKey;autoIncrement"`
	TransferID string    `gorm:"column:transfer_id"`
	CreatedAt  time.Time `gorm:"column:created_at"`
	Kind       EventKind `gorm:"column:kind"`
	FromStatus Status    `gorm:"column:from_status"` // "" for the creation event
	ToStatus   Status    `gorm:"column:to_status"`
	Message    string    `gorm:"column:message"`
	RequestID  string    `gorm:"column:request_id"`
}

// TableName implements gorm's tabler.
func (TransferEvent) TableName() string { return "transfer_events" }

// AfterFind normalises times read back to UTC.
func (e *TransferEvent) AfterFind(*gorm.DB) error {
	e.CreatedAt = e.CreatedAt.UTC()
	return nil
}

// Service is a Ferry process that heartbeats (an agent), unique by binary
// and host.
type Service struct {
	ID              int64     `gorm:"column:id;primaryKey;autoIncrement"`
	Binary          string    `gorm:"column:binary"`
	Host            string    `gorm:"column:host"`
	Region          string    `gorm:"column:region"`
	Topic           string    `gorm:"column:topic"` // its own RPC queue
	Version         string    `gorm:"column:version"`
	Disabled        bool      `gorm:"column:disabled"`
	CreatedAt       time.Time `gorm:"column:created_at"`
	UpdatedAt       time.Time `gorm:"column:updated_at"`
	LastHeartbeatAt time.Time `gorm:"column:last_heartbeat_at"`

	// What the last heartbeat said (agents since 1.2; see
	// RecordHeartbeat): the process's boot id and the heartbeat's number
	// within it, the transfers it ran (JSON array) and how many it may.
	BootID       string  `gorm:"column:boot_id"`
	HeartbeatSeq int64   `gorm:"column:heartbeat_seq"`
	Running      *string `gorm:"column:running"`
	Capacity     int     `gorm:"column:capacity"`
	// The heartbeat before it, and when it was received.
	PrevBootID      string     `gorm:"column:prev_boot_id"`
	PrevRunning     *string    `gorm:"column:prev_running"`
	PrevHeartbeatAt *time.Time `gorm:"column:prev_heartbeat_at"`
	// CephHealth is HEALTH_OK, HEALTH_WARN or HEALTH_ERR from the agent's
	// last probe ("" when it failed or never ran); CephHealthDetail is
	// its JSON (ServiceHealth); CephHealthAt when the probe ran.
	CephHealth       string     `gorm:"column:ceph_health"`
	CephHealthDetail *string    `gorm:"column:ceph_health_detail"`
	CephHealthAt     *time.Time `gorm:"column:ceph_health_at"`
}

// TableName implements gorm's tabler.
func (Service) TableName() string { return "services" }

// AfterFind normalises times read back to UTC.
func (s *Service) AfterFind(*gorm.DB) error {
	s.CreatedAt = s.CreatedAt.UTC()
	s.UpdatedAt = s.UpdatedAt.UTC()
	s.LastHeartbeatAt = s.LastHeartbeatAt.UTC()
	s.PrevHeartbeatAt = utcPtr(s.PrevHeartbeatAt)
	s.CephHealthAt = utcPtr(s.CephHealthAt)
	return nil
}

// OutboxMessage is a message to publish to the broker, written in the same
// transaction as the change it announces (transactional outbox). A publisher
// claims rows (ClaimOutbox), publishes them, then marks them published
// (MarkPublished) or releases them for a later try (ReleaseOutbox).
type OutboxMessage struct {
	ID          int64      `gorm:"column:id;primaryKey;autoIncrement"`
	CreatedAt   time.Time  `gorm:"column:created_at"`
	Exchange    string     `gorm:"column:exchange"`
	RoutingKey  string     `gorm:"column:routing_key"`
	Payload     string     `gorm:"column:payload"` // the encoded message body
	Attempts    int        `gorm:"column:attempts"`
	LastError   *string    `gorm:"column:last_error"`
	PublishedAt *time.Time `gorm:"column:published_at"`
	LeaseOwner  string     `gorm:"column:lease_owner"` // "" when not leased
	LeaseUntil  *time.Time `gorm:"column:lease_until"` // claimable when nil or past
}

// TableName implements gorm's tabler.
func (OutboxMessage) TableName() string { return "outbox_messages" }

// AfterFind normalises times read back to UTC.
func (m *OutboxMessage) AfterFind(*gorm.DB) error {
	m.CreatedAt = m.CreatedAt.UTC()
	m.PublishedAt = utcPtr(m.PublishedAt)
	m.LeaseUntil = utcPtr(m.LeaseUntil)
	return nil
}

// Replication protects one source image (a Cinder volume's, or an admin's
// pool/image) in one region into a Ferry-owned replica image in another,
// with a cycle (a transfer) every interval. All times are UTC.
type Replication struct {
	ID          string            `gorm:"column:id;primaryKey"`
	Name        string            `gorm:"column:name"`
	Description string            `gorm:"column:description"`
	ProjectID   string            `gorm:"column:project_id"` // the source volume's project
	UserID      string            `gorm:"column:user_id"`
	Status      ReplicationStatus `gorm:"column:status"`

	SourceRegion   string `gorm:"column:source_region"`
	SourcePool     string `gorm:"column:source_pool"`
	SourceImage    string `gorm:"column:source_image"`
	SourceVolumeID string `gorm:"column:source_volume_id"`
	// SourceKey is set by the store while the replication is not deleting
	// (see CreateReplication): one live replication per source image.
	SourceKey *string `gorm:"column:source_key"`

	DestRegion string `gorm:"column:dest_region"`
	DestPool   string `gorm:"column:dest_pool"`
	DestImage  string `gorm:"column:dest_image"` // ferry-replica-<id>
	// DestVolumeID is the Cinder volume the destination image is: "" while
	// it is Ferry's replica; after a failover, the original source volume
	// (its image is then the one cycles write).
	DestVolumeID string `gorm:"column:dest_volume_id"`

	// FailoverID is the failover or failback under way (nil when none):
	// while it is set no ordinary cycle starts, and no other failover,
	// status change or deletion is accepted. An unplanned failover keeps
	// it after its flip, until region A's image is demoted.
	FailoverID *string `gorm:"column:failover_id"`

	IntervalSeconds int `gorm:"column:interval_seconds"`
	RPOSeconds      int `gorm:"column:rpo_seconds"`
	KeepLast        int `gorm:"column:keep_last"`
	KeepHourly      int `gorm:"column:keep_hourly"`
	KeepDaily       int `gorm:"column:keep_daily"`
	// BandwidthLimit is bytes/s for each cycle; 0: the agents' default.
	BandwidthLimit int64 `gorm:"column:bandwidth_limit"`

	// NextRunAt is when the scheduler next starts a cycle.
	NextRunAt time.Time `gorm:"column:next_run_at"`
	// LastSyncAt is the created_at of the newest point (nil: none yet).
	LastSyncAt *time.Time `gorm:"column:last_sync_at"`
	// LastTransferID is the newest cycle started ("" before the first).
	LastTransferID string `gorm:"column:last_transfer_id"`
	// LastError is the last failure, cleared by a completed cycle.
	LastError      *string `gorm:"column:last_error"`
	BytesLastCycle int64   `gorm:"column:bytes_last_cycle"`
	PointsCount    int     `gorm:"column:points_count"`

	// The history summary, which survives the pruning of cycle transfers.
	CyclesCompleted int64 `gorm:"column:cycles_completed"`
	CyclesFailed    int64 `gorm:"column:cycles_failed"`
	CyclesSkipped   int64 `gorm:"column:cycles_skipped"`
	BytesReplicated int64 `gorm:"column:bytes_replicated"`

	// RPOBreachedAt is when the replication entered its current RPO
	// breach; nil when not in breach (SetRPOBreached).
	RPOBreachedAt *time.Time `gorm:"column:rpo_breached_at"`
	// KeepReplica: the deletion keeps the replica image.
	KeepReplica bool `gorm:"column:keep_replica"`
	// GroupID is the consistency group the replication is a member of
	// (nil when none): the group schedules its cycles.
	GroupID *string `gorm:"column:group_id"`

	CreatedAt time.Time `gorm:"column:created_at"`
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName implements gorm's tabler.
func (Replication) TableName() string { return "replications" }

// AfterFind normalises times read back to UTC.
func (r *Replication) AfterFind(*gorm.DB) error {
	r.CreatedAt = r.CreatedAt.UTC()
	r.UpdatedAt = r.UpdatedAt.UTC()
	r.NextRunAt = r.NextRunAt.UTC()
	r.LastSyncAt = utcPtr(r.LastSyncAt)
	r.RPOBreachedAt = utcPtr(r.RPOBreachedAt)
	return nil
}

// ReplicationPoint is one retained snapshot of a replica: Name is the
// snapshot's (ferry-<transfer id>, like the cycle's), CreatedAt when the
// source snapshot was taken.
type ReplicationPoint struct {
	ReplicationID string    `gorm:"column:replication_id;primaryKey"`
	Name          string    `gorm:"column:name;primaryKey"`
	TransferID    string    `gorm:"column:transfer_id"`
	CreatedAt     time.Time `gorm:"column:created_at"`
	Digest        string    `gorm:"column:digest"`
	Bytes         int64     `gorm:"column:bytes"` // the cycle's bytes_transferred
	Size          int64     `gorm:"column:size"`  // the image's size
}

// TableName implements gorm's tabler.
func (ReplicationPoint) TableName() string { return "replication_points" }

// AfterFind normalises times read back to UTC.
func (p *ReplicationPoint) AfterFind(*gorm.DB) error {
	p.CreatedAt = p.CreatedAt.UTC()
	return nil
}

// ReplicationEvent is one entry of a replication's history.
type ReplicationEvent struct {
	ID            int64                `gorm:"column:id;primaryKey;autoIncrement"`
	ReplicationID string               `gorm:"column:replication_id"`
	CreatedAt     time.Time            `gorm:"column:created_at"`
	Kind          ReplicationEventKind `gorm:"column:kind"`
	Message       string               `gorm:"column:message"`
	TransferID    string               `gorm:"column:transfer_id"` // the cycle concerned, if any
	RequestID     string               `gorm:"column:request_id"`
}

// TableName implements gorm's tabler.
func (ReplicationEvent) TableName() string { return "replication_events" }

// AfterFind normalises times read back to UTC.
func (e *ReplicationEvent) AfterFind(*gorm.DB) error {
	e.CreatedAt = e.CreatedAt.UTC()
	return nil
}

// Drill is a DR drill: a clone of one of a replication's points in the
// destination region (Image, in the replica's pool), registered as a
// Cinder volume (VolumeID) of the replication's project.
type Drill struct {
	ID            string      `gorm:"column:id;primaryKey"`
	ReplicationID string      `gorm:"column:replication_id"`
	ProjectID     string      `gorm:"column:project_id"`
	Name          string      `gorm:"column:name"`
	Point         string      `gorm:"column:point"` // the point's name
	Status        DrillStatus `gorm:"column:status"`
	Image         string      `gorm:"column:image"` // ferry-drill-<id>
	VolumeID      string      `gorm:"column:volume_id"`
	// RegisterStartedAt is the Cinder registration's ledger, as for
	// transfers (Transfer.RegisterStartedAt).
	RegisterStartedAt *time.Time `gorm:"column:register_started_at"`
	RequestedAt       time.Time  `gorm:"column:requested_at"`
	AvailableAt       *time.Time `gorm:"column:available_at"`
	Error             *string    `gorm:"column:error"`
	// GroupID is the group whose drill this member's drill is part of
	// ("" for a drill of the replication alone).
	GroupID   string    `gorm:"column:group_id"`
	CreatedAt time.Time `gorm:"column:created_at"`
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName implements gorm's tabler.
func (Drill) TableName() string { return "replication_drills" }

// AfterFind normalises times read back to UTC.
func (dr *Drill) AfterFind(*gorm.DB) error {
	dr.CreatedAt = dr.CreatedAt.UTC()
	dr.UpdatedAt = dr.UpdatedAt.UTC()
	dr.RequestedAt = dr.RequestedAt.UTC()
	dr.RegisterStartedAt = utcPtr(dr.RegisterStartedAt)
	dr.AvailableAt = utcPtr(dr.AvailableAt)
	return nil
}

// RTO is the drill's time to available (requested_at → available_at);
// ok is false until it is available.
func (dr *Drill) RTO() (d time.Duration, ok bool) {
	if dr.AvailableAt == nil {
		return 0, false
	}
	return dr.AvailableAt.Sub(dr.RequestedAt), true
}

// FailoverKind says which way a Failover goes.
type FailoverKind string

// The failover kinds.
const (
	// FailoverKindFailover: the replica becomes the primary (status
	// failing_over, then failed_over).
	FailoverKindFailover FailoverKind = "failover"
	// FailoverKindFailback: back to the original direction (status
	// failing_back, then active).
	FailoverKindFailback FailoverKind = "failback"
)

// Failover is one failover or failback of a replication: a resumable
// workflow whose runner records each step once it is done (Step), and
// what the steps learnt on the way. From is the replication's source when
// it started, To its destination (the image that becomes the primary).
// All times are UTC.
type Failover struct {
	ID            string       `gorm:"column:id;primaryKey"`
	ReplicationID string       `gorm:"column:replication_id"`
	ProjectID     string       `gorm:"column:project_id"` // the replication's
	UserID        string       `gorm:"column:user_id"`
	RequestID     string       `gorm:"column:request_id"`
	Kind          FailoverKind `gorm:"column:kind"`
	// Planned: the source is quiesced and a final cycle runs; else
	// (unplanned) a retained point is promoted as it is.
	Planned bool `gorm:"column:planned"`
	// Force: an attached volume does not stop it.
	Force bool `gorm:"column:force"`
	// OriginalReadOnly: the replication's original volume was read-only
	// in Cinder before the failover set the flag, so neither an undo nor
	// the failback clears it (the caller sets it; a failback copies its
	// failover's).
	OriginalReadOnly bool `gorm:"column:original_read_only"`

	// RequestedPoint is what the request named ("", a point name or
	// "latest"); Point the point it resolved to (the one promoted).
	RequestedPoint string `gorm:"column:requested_point"`
	Point          string `gorm:"column:point"`
	// Step is the last step done ("" before the first).
	Step   string         `gorm:"column:step"`
	Status FailoverStatus `gorm:"column:status"`
	Error  *string        `gorm:"column:error"`
	// FinalTransferID is the final cycle's transfer (StartFinalCycle).
	FinalTransferID string `gorm:"column:final_transfer_id"`

	FromRegion   string `gorm:"column:from_region"`
	FromPool     string `gorm:"column:from_pool"`
	FromImage    string `gorm:"column:from_image"`
	FromVolumeID string `gorm:"column:from_volume_id"`
	ToRegion     string `gorm:"column:to_region"`
	ToPool       string `gorm:"column:to_pool"`
	ToImage      string `gorm:"column:to_image"`
	// ToVolumeID is the Cinder volume To is, once registered (a
	// failback's: the original volume, from the start).
	ToVolumeID string `gorm:"column:to_volume_id"`

	// Spec is the source volume's Cinder spec (JSON), read when the
	// failover was requested; Peer is JSON the runner keeps about the
	// other side (the API's).
	Spec string `gorm:"column:spec"`
	Peer string `gorm:"column:peer"`
	// Preserved names the image an unplanned failover's demote preserved
	// region A's divergent data as ("" when none), PreservedBytes its
	// size.
	Preserved      string `gorm:"column:preserved"`
	PreservedBytes int64  `gorm:"column:preserved_bytes"`

	// RegisterStartedAt is the Cinder registration's ledger, as for
	// drills.
	RegisterStartedAt *time.Time `gorm:"column:register_started_at"`
	RequestedAt       time.Time  `gorm:"column:requested_at"`
	// AvailableAt is when the promoted volume was available in Cinder.
	AvailableAt *time.Time `gorm:"column:available_at"`
	FinishedAt  *time.Time `gorm:"column:finished_at"`
	// GroupID is the group whose failover or failback this member's is
	// part of ("" for the replication's alone).
	GroupID   string    `gorm:"column:group_id"`
	CreatedAt time.Time `gorm:"column:created_at"`
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName implements gorm's tabler.
func (Failover) TableName() string { return "replication_failovers" }

// AfterFind normalises times read back to UTC.
func (f *Failover) AfterFind(*gorm.DB) error {
	f.CreatedAt = f.CreatedAt.UTC()
	f.UpdatedAt = f.UpdatedAt.UTC()
	f.RequestedAt = f.RequestedAt.UTC()
	f.RegisterStartedAt = utcPtr(f.RegisterStartedAt)
	f.AvailableAt = utcPtr(f.AvailableAt)
	f.FinishedAt = utcPtr(f.FinishedAt)
	return nil
}

// RTO is the failover's recovery time: requested_at → available_at (the
// promoted volume available in Cinder); ok is false until then.
func (f *Failover) RTO() (d time.Duration, ok bool) {
	if f.AvailableAt == nil {
		return 0, false
	}
	return f.AvailableAt.Sub(f.RequestedAt), true
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// ReplicationGroup is a consistency group: replications of one project
// between two regions (its members, Replication.GroupID) whose cycles it
// schedules, each a GroupCycle that snapshots every member at one instant.
// The schedule, RPO and retention fields mean what a replication's do; the
// members carry copies of them.
type ReplicationGroup struct {
	ID          string            `gorm:"column:id;primaryKey"`
	Name        string            `gorm:"column:name"`
	Description string            `gorm:"column:description"`
	ProjectID   string            `gorm:"column:project_id"`
	UserID      string            `gorm:"column:user_id"`
	Status      ReplicationStatus `gorm:"column:status"`
	// FailoverID is the group failover or failback under way (nil when
	// none); FailoverState the newest one's progress (GroupFailover, as
	// JSON).
	FailoverID    *string `gorm:"column:failover_id"`
	FailoverState string  `gorm:"column:failover_state"`

	SourceRegion string `gorm:"column:source_region"`
	DestRegion   string `gorm:"column:dest_region"`
	DestPool     string `gorm:"column:dest_pool"`

	IntervalSeconds int   `gorm:"column:interval_seconds"`
	RPOSeconds      int   `gorm:"column:rpo_seconds"`
	KeepLast        int   `gorm:"column:keep_last"`
	KeepHourly      int   `gorm:"column:keep_hourly"`
	KeepDaily       int   `gorm:"column:keep_daily"`
	BandwidthLimit  int64 `gorm:"column:bandwidth_limit"`

	NextRunAt time.Time `gorm:"column:next_run_at"`
	// LastSyncAt is the snapshot time of the newest group point.
	LastSyncAt  *time.Time `gorm:"column:last_sync_at"`
	LastCycleID string     `gorm:"column:last_cycle_id"`
	LastError   *string    `gorm:"column:last_error"`
	PointsCount int        `gorm:"column:points_count"`

	CyclesCompleted int64 `gorm:"column:cycles_completed"`
	CyclesFailed    int64 `gorm:"column:cycles_failed"`
	CyclesSkipped   int64 `gorm:"column:cycles_skipped"`
	KeepReplica     bool  `gorm:"column:keep_replica"`

	CreatedAt time.Time `gorm:"column:created_at"`
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName implements gorm's tabler.
func (ReplicationGroup) TableName() string { return "replication_groups" }

// AfterFind normalises times read back to UTC.
func (g *ReplicationGroup) AfterFind(*gorm.DB) error {
	g.CreatedAt = g.CreatedAt.UTC()
	g.UpdatedAt = g.UpdatedAt.UTC()
	g.NextRunAt = g.NextRunAt.UTC()
	g.LastSyncAt = utcPtr(g.LastSyncAt)
	return nil
}

// GroupCycleStatus is where a group cycle is: snapshotting (the consistent
// snapshot is being taken), running (the members' cycle transfers run),
// completed (every member's completed: a group point) or error.
type GroupCycleStatus string

// Group cycle statuses.
const (
	GroupCycleSnapshotting GroupCycleStatus = "snapshotting"
	GroupCycleRunning      GroupCycleStatus = "running"
	GroupCycleCompleted    GroupCycleStatus = "completed"
	GroupCycleError        GroupCycleStatus = "error"
)

// GroupCycle is one cycle of a group. Its id names the group point it
// makes; each member's part is the point ferry-<member transfer id>.
type GroupCycle struct {
	ID      string           `gorm:"column:id;primaryKey"`
	GroupID string           `gorm:"column:group_id"`
	Kind    string           `gorm:"column:kind"` // "cycle"
	Status  GroupCycleStatus `gorm:"column:status"`
	// MembersJSON is the JSON of Members (see GroupCycle.Members).
	MembersJSON string     `gorm:"column:members"`
	Error       *string    `gorm:"column:error"`
	SnapshotAt  *time.Time `gorm:"column:snapshot_at"`
	FinishedAt  *time.Time `gorm:"column:finished_at"`
	CreatedAt   time.Time  `gorm:"column:created_at"`
	UpdatedAt   time.Time  `gorm:"column:updated_at"`
}

// GroupCycleMember is one member's part of a group cycle: its cycle
// transfer (chosen before the snapshot, which is named after it) and the
// points its destination keeps.
type GroupCycleMember struct {
	ReplicationID string   `json:"replication_id"`
	TransferID    string   `json:"transfer_id"`
	Retain        []string `json:"retain"`
}

// TableName implements gorm's tabler.
func (GroupCycle) TableName() string { return "replication_group_cycles" }

// AfterFind normalises times read back to UTC.
func (c *GroupCycle) AfterFind(*gorm.DB) error {
	c.CreatedAt = c.CreatedAt.UTC()
	c.UpdatedAt = c.UpdatedAt.UTC()
	c.SnapshotAt = utcPtr(c.SnapshotAt)
	c.FinishedAt = utcPtr(c.FinishedAt)
	return nil
}

// Members decodes the cycle's members (nil when unreadable).
func (c *GroupCycle) Members() []GroupCycleMember {
	var ms []GroupCycleMember
	if json.Unmarshal([]byte(c.MembersJSON), &ms) != nil {
		return nil
	}
	return ms
}

// Point is the name of the member's part of the cycle's group point.
func (m GroupCycleMember) Point() string { return PointPrefix + m.TransferID }

// GroupFailover is a group failover's or failback's progress, kept on the
// group (ReplicationGroup.FailoverState): the group's own steps (Step:
// quiesce, final_cycle, members, wait, done), then one failover of each
// member (Members: replication id → its failover id), all at the group
// point Point.
type GroupFailover struct {
	ID             string            `json:"id"`
	Kind           FailoverKind      `json:"kind"`
	Planned        bool              `json:"planned"`
	Force          bool              `json:"force"`
	RequestedPoint string            `json:"requested_point,omitempty"`
	Point          string            `json:"point,omitempty"`
	CycleID        string            `json:"cycle_id,omitempty"`
	Step           string            `json:"step"`
	Status         FailoverStatus    `json:"status"`
	Error          string            `json:"error,omitempty"`
	UserID         string            `json:"user_id,omitempty"`
	RequestID      string            `json:"request_id,omitempty"`
	ReadOnly       map[string]bool   `json:"read_only,omitempty"`
	Members        map[string]string `json:"members,omitempty"`
	RequestedAt    time.Time         `json:"requested_at"`
	AvailableAt    *time.Time        `json:"available_at,omitempty"`
	FinishedAt     *time.Time        `json:"finished_at,omitempty"`
}

// Failover decodes the group's newest failover (nil when none or
// unreadable).
func (g *ReplicationGroup) Failover() *GroupFailover {
	if g.FailoverState == "" {
		return nil
	}
	var f GroupFailover
	if json.Unmarshal([]byte(g.FailoverState), &f) != nil {
		return nil
	}
	return &f
}
