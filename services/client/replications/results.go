package replications

import (
	"net/http"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
)

// Source is what a replication protects. The server sends null for what
// does not apply; it reads as "".
type Source struct {
	Region   string `json:"region"`
	VolumeID string `json:"volume_id"`
	Pool     string `json:"pool"`
	Image    string `json:"image"`
}

// Destination is the replica: a Ferry-owned RBD image,
// pool/ferry-replica-<replication id>, in the destination region.
type Destination struct {
	Region string `json:"region"`
	Pool   string `json:"pool"`
	Image  string `json:"image"`
}

// Retention is how many points the replica keeps.
type Retention struct {
	KeepLast   int `json:"keep_last"`
	KeepHourly int `json:"keep_hourly"`
	KeepDaily  int `json:"keep_daily"`
}

// Cycles counts a replication's cycles over its life (pruning the cycle
// transfers does not change it).
type Cycles struct {
	Completed int64 `json:"completed"`
	Failed    int64 `json:"failed"`
	Skipped   int64 `json:"skipped"`
}

// Replication is the continuous protection of a volume or an image in
// another region, as the API shows it.
type Replication struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description"`
	ProjectID   string `json:"project_id"`
	UserID      string `json:"user_id"`
	// Status: active, paused, error, deleting, failing_over, failed_over,
	// failing_back.
	Status          string      `json:"status"`
	Source          Source      `json:"source"`
	Destination     Destination `json:"destination"`
	IntervalSeconds int         `json:"interval_seconds"`
	RPOSeconds      int         `json:"rpo_seconds"`
	Retention       Retention   `json:"retention"`
	// BandwidthLimit in bytes/s; 0 is the agents' default.
	BandwidthLimit int64 `json:"bandwidth_limit"`
	// LastSyncAt is when the source snapshot of the newest point was
	// taken; nil before the first point.
	LastSyncAt *time.Time `json:"last_sync_at"`
	// LagSeconds is now minus LastSyncAt (whole seconds from ferry-api
	// 1.1); nil before the first point.
	LagSeconds *float64 `json:"lag_seconds"`
	// RPOBreached: the lag is beyond the RPO (or, without a point, the
	// replication is older than its RPO).
	RPOBreached    bool   `json:"rpo_breached"`
	LastTransferID string `json:"last_transfer_id"`
	// LastError is the last failure, cleared by a completed cycle.
	LastError      string `json:"last_error"`
	PointsCount    int    `json:"points_count"`
	BytesLastCycle int64  `json:"bytes_last_cycle"`
	// NextRunAt is when the next cycle starts; nil unless active.
	NextRunAt *time.Time `json:"next_run_at"`
	Cycles    Cycles     `json:"cycles"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
	// GroupID is the replication group the replication is a member of
	// ("" when none). Since microversion 1.2: set sc.Microversion = "1.2"
	// to see it (below it the field is absent).
	GroupID string `json:"group_id"`
}

// Lag is LagSeconds as a duration, and false before the first point.
func (r Replication) Lag() (time.Duration, bool) {
	if r.LagSeconds == nil {
		return 0, false
	}
	return time.Duration(*r.LagSeconds * float64(time.Second)), true
}

// Point is one retained snapshot of the replica.
type Point struct {
	// Name is the replica's snapshot, ferry-<cycle transfer id>.
	Name string `json:"name"`
	// CreatedAt is when the source snapshot was taken.
	CreatedAt time.Time `json:"created_at"`
	// Digest is "<alg>:<hex>" of the image at that point.
	Digest string `json:"digest"`
	// Bytes moved by the cycle; Size is the image's size.
	Bytes      int64  `json:"bytes"`
	Size       int64  `json:"size"`
	TransferID string `json:"transfer_id"`
}

// DrillInfo is a test failover: a point cloned into a new Cinder volume in
// the destination region.
type DrillInfo struct {
	ID            string `json:"id"`
	ReplicationID string `json:"replication_id"`
	Name          string `json:"name"`
	Point         string `json:"point"`
	// Status: creating, available, error.
	Status string `json:"status"`
	// VolumeID is the drill's Cinder volume, once registered.
	VolumeID    string     `json:"volume_id"`
	RequestedAt time.Time  `json:"requested_at"`
	AvailableAt *time.Time `json:"available_at"`
	// RTOSeconds is the time from request to available (the drill's
	// recovery time); nil until available.
	RTOSeconds *float64 `json:"rto_seconds"`
	Error      string   `json:"error"`
}

// FailoverSide is one side of a failover: From is the old primary, To
// the new one. The server sends null for what does not apply; it reads as
// "".
type FailoverSide struct {
	Region string `json:"region"`
	Pool   string `json:"pool"`
	Image  string `json:"image"`
	// VolumeID is the side's Cinder volume: the new primary's once
	// registered.
	VolumeID string `json:"volume_id"`
}

// FailoverInfo is a failover (the replica made the primary volume in the
// destination region) or a failback (the reverse, to the original
// volume) of a replication.
type FailoverInfo struct {
	ID            string `json:"id"`
	ReplicationID string `json:"replication_id"`
	// Kind: failover or failback.
	Kind string `json:"kind"`
	// Planned: no point was asked for (a final cycle loses nothing).
	Planned bool `json:"planned"`
	Force   bool `json:"force"`
	// Point is the point an unplanned failover went to ("" when
	// planned).
	Point string `json:"point"`
	// Status: running, done, error.
	Status string `json:"status"`
	// Step is the next step to run (quiesce, final_cycle, promote,
	// register, readwrite, unmanage, demote, rename, flip; "" before the
	// first), done once done.
	Step            string       `json:"step"`
	From            FailoverSide `json:"from"`
	To              FailoverSide `json:"to"`
	FinalTransferID string       `json:"final_transfer_id"`
	// PreservedImage is where the demoted side's writes after the point
	// were kept (ferry-preserved-<id>), if it had any.
	PreservedImage string     `json:"preserved_image"`
	PreservedBytes int64      `json:"preserved_bytes"`
	RequestedAt    time.Time  `json:"requested_at"`
	AvailableAt    *time.Time `json:"available_at"`
	FinishedAt     *time.Time `json:"finished_at"`
	// RTOSeconds is the time from request to the new primary available
	// (the recovery time); nil until then.
	RTOSeconds *float64 `json:"rto_seconds"`
	Error      string   `json:"error"`
	UserID     string   `json:"user_id"`
}

// RTO is RTOSeconds as a duration, and false until the new primary is
// available.
func (f FailoverInfo) RTO() (time.Duration, bool) {
	if f.RTOSeconds == nil {
		return 0, false
	}
	return time.Duration(*f.RTOSeconds * float64(time.Second)), true
}

// Ended reports whether the failover is done or in error.
func (f FailoverInfo) Ended() bool { return f.Status == "done" || f.Status == "error" }

// Event is one entry of a replication's history.
type Event struct {
	CreatedAt time.Time `json:"created_at"`
	// Kind: created, updated, cycle_started, cycle_completed,
	// cycle_failed, cycle_skipped, rpo_breached, rpo_recovered, paused,
	// resumed, error, drill, drill_available, drill_failed, deleting,
	// pruned, failover_started, failed_over, failback_started,
	// failed_back, failover_failed, preserved.
	Kind    string `json:"kind"`
	Message string `json:"message"`
	// TransferID is the cycle the event is about, if any.
	TransferID string `json:"transfer_id"`
	// RequestID is the API request that caused the event, if any.
	RequestID string `json:"request_id"`
}

type commonResult struct {
	gophercloud.Result
}

// Extract returns the replication of a Create, Get or Update.
func (r commonResult) Extract() (*Replication, error) {
	var s Replication
	err := r.ExtractInto(&s)
	return &s, err
}

// ExtractInto decodes the "replication" object into v.
func (r commonResult) ExtractInto(v any) error {
	return r.ExtractIntoStructPtr(v, "replication")
}

// CreateResult is the result of Create; Extract returns the replication.
type CreateResult struct {
	commonResult
}

// GetResult is the result of Get; Extract returns the replication.
type GetResult struct {
	commonResult
}

// UpdateResult is the result of Update; Extract returns the replication.
type UpdateResult struct {
	commonResult
}

// ActionResult is the result of Sync, Pause or Resume; ExtractErr returns
// its error.
type ActionResult struct {
	gophercloud.ErrResult
}

// DeleteResult is the result of Delete; ExtractErr returns its error.
type DeleteResult struct {
	gophercloud.ErrResult
}

// DrillResult is the result of Drill; Extract returns the drill.
type DrillResult struct {
	gophercloud.Result
}

// Extract returns the new drill.
func (r DrillResult) Extract() (*DrillInfo, error) {
	var s DrillInfo
	err := r.ExtractIntoStructPtr(&s, "drill")
	return &s, err
}

// FailoverResult is the result of Failover, Failback or GetFailover;
// Extract returns the failover.
type FailoverResult struct {
	gophercloud.Result
}

// Extract returns the failover.
func (r FailoverResult) Extract() (*FailoverInfo, error) {
	var s FailoverInfo
	err := r.ExtractIntoStructPtr(&s, "failover")
	return &s, err
}

// FailoversResult is the result of ListFailovers.
type FailoversResult struct {
	gophercloud.Result
}

// Extract returns the failovers and failbacks, newest first.
func (r FailoversResult) Extract() ([]FailoverInfo, error) {
	var s []FailoverInfo
	err := r.ExtractIntoSlicePtr(&s, "failovers")
	return s, err
}

// PointsResult is the result of ListPoints.
type PointsResult struct {
	gophercloud.Result
}

// Extract returns the points, newest first.
func (r PointsResult) Extract() ([]Point, error) {
	var s []Point
	err := r.ExtractIntoSlicePtr(&s, "points")
	return s, err
}

// EventsResult is the result of ListEvents.
type EventsResult struct {
	gophercloud.Result
}

// Extract returns the events.
func (r EventsResult) Extract() ([]Event, error) {
	var s []Event
	err := r.ExtractIntoSlicePtr(&s, "events")
	return s, err
}

// DrillsResult is the result of ListDrills.
type DrillsResult struct {
	gophercloud.Result
}

// Extract returns the drills.
func (r DrillsResult) Extract() ([]DrillInfo, error) {
	var s []DrillInfo
	err := r.ExtractIntoSlicePtr(&s, "drills")
	return s, err
}

// ReplicationPage is one page of List.
type ReplicationPage struct {
	pagination.LinkedPageBase
}

// IsEmpty reports whether the page holds no replication.
func (r ReplicationPage) IsEmpty() (bool, error) {
	if r.StatusCode == http.StatusNoContent {
		return true, nil
	}
	rs, err := ExtractReplications(r)
	return len(rs) == 0, err
}

// NextPageURL is the href of the page's replications_links rel=next, or
// "" on the last page.
func (r ReplicationPage) NextPageURL() (string, error) {
	var s struct {
		Links []gophercloud.Link `json:"replications_links"`
	}
	if err := r.ExtractInto(&s); err != nil {
		return "", err
	}
	return gophercloud.ExtractNextURL(s.Links)
}

// ExtractReplications returns the replications of a page of List.
func ExtractReplications(r pagination.Page) ([]Replication, error) {
	var s []Replication
	err := ExtractReplicationsInto(r, &s)
	return s, err
}

// ExtractReplicationsInto decodes the "replications" of a page into v.
func ExtractReplicationsInto(r pagination.Page, v any) error {
	return r.(ReplicationPage).ExtractIntoSlicePtr(v, "replications")
}
