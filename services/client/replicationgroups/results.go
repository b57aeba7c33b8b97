package replicationgroups

import (
	"net/http"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/ferry-project/ferry/services/client/replications"
)

// Source is the region of a group's volumes.
type Source struct {
	Region string `json:"region"`
}

// Destination is where the group's replicas live.
type Destination struct {
	Region string `json:"region"`
	Pool   string `json:"pool"`
}

// Retention is how many group points the replicas keep, as for a
// replication.
type Retention = replications.Retention

// Cycles counts a group's cycles over its life, as for a replication.
type Cycles = replications.Cycles

// Image is an RBD image of a member: its source volume's, or its replica.
type Image struct {
	Pool  string `json:"pool"`
	Image string `json:"image"`
}

// Member is one volume of a group: an ordinary replication (its own
// actions answer 409 while it is a member), scheduled by the group.
type Member struct {
	ReplicationID string `json:"replication_id"`
	VolumeID      string `json:"volume_id"`
	// Status is the member replication's.
	Status      string `json:"status"`
	Source      Image  `json:"source"`
	Destination Image  `json:"destination"`
}

// ReplicationGroup is the replication of a set of Cinder volumes of one
// project as a unit, as the API shows it.
type ReplicationGroup struct {
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
	BandwidthLimit int64    `json:"bandwidth_limit"`
	Members        []Member `json:"members"`
	// LastSyncAt is when the newest group point's snapshots were taken;
	// nil before the first point.
	LastSyncAt *time.Time `json:"last_sync_at"`
	// LagSeconds is now minus LastSyncAt; nil before the first point.
	LagSeconds *float64 `json:"lag_seconds"`
	// RPOBreached: the lag is beyond the RPO.
	RPOBreached bool `json:"rpo_breached"`
	// LastCycleID is the last group cycle (the name of its point once
	// every member's cycle completed).
	LastCycleID string `json:"last_cycle_id"`
	// LastError is the last failure, cleared by a completed group cycle.
	LastError   string `json:"last_error"`
	PointsCount int    `json:"points_count"`
	// NextRunAt is when the next group cycle starts; nil unless active.
	NextRunAt *time.Time `json:"next_run_at"`
	Cycles    Cycles     `json:"cycles"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
}

// Lag is LagSeconds as a duration, and false before the first point.
func (g ReplicationGroup) Lag() (time.Duration, bool) {
	if g.LagSeconds == nil {
		return 0, false
	}
	return time.Duration(*g.LagSeconds * float64(time.Second)), true
}

// FailoverRunning reports whether a failover or a failback of the group
// runs (status failing_over or failing_back): a group being waited for
// is done once it is false.
func (g ReplicationGroup) FailoverRunning() bool {
	return g.Status == "failing_over" || g.Status == "failing_back"
}

// PointMember is one member's snapshot of a group point.
type PointMember struct {
	ReplicationID string `json:"replication_id"`
	VolumeID      string `json:"volume_id"`
	// Point is the member replica's snapshot, ferry-<transfer id>.
	Point string `json:"point"`
}

// Point is a group point: one crash-consistent point in time of every
// member, kept only when every member's cycle completed.
type Point struct {
	// Name is the group cycle's id; Drill and Failover take it.
	Name      string        `json:"name"`
	CreatedAt time.Time     `json:"created_at"`
	Members   []PointMember `json:"members"`
}

// DrillInfo is one member's drill of a group drill: a replication drill
// (its ReplicationID is the member's).
type DrillInfo = replications.DrillInfo

type commonResult struct {
	gophercloud.Result
}

// Extract returns the group of a Create, Get, Update or action.
func (r commonResult) Extract() (*ReplicationGroup, error) {
	var s ReplicationGroup
	err := r.ExtractInto(&s)
	return &s, err
}

// ExtractInto decodes the "replication_group" object into v.
func (r commonResult) ExtractInto(v any) error {
	return r.ExtractIntoStructPtr(v, "replication_group")
}

// CreateResult is the result of Create; Extract returns the group.
type CreateResult struct {
	commonResult
}

// GetResult is the result of Get; Extract returns the group.
type GetResult struct {
	commonResult
}

// UpdateResult is the result of Update; Extract returns the group.
type UpdateResult struct {
	commonResult
}

// ActionResult is the result of Sync, Pause, Resume, Failover or
// Failback: Extract returns the group as the action left it, ExtractErr
// only the error.
type ActionResult struct {
	commonResult
}

// ExtractErr returns the action's error.
func (r ActionResult) ExtractErr() error {
	return r.Err
}

// DeleteResult is the result of Delete; ExtractErr returns its error.
type DeleteResult struct {
	gophercloud.ErrResult
}

// DrillResult is the result of Drill; Extract returns the member drills.
type DrillResult struct {
	gophercloud.Result
}

// Extract returns the new drills, one per member.
func (r DrillResult) Extract() ([]DrillInfo, error) {
	var s []DrillInfo
	err := r.ExtractIntoSlicePtr(&s, "drills")
	return s, err
}

// DrillsResult is the result of ListDrills.
type DrillsResult struct {
	gophercloud.Result
}

// Extract returns the members' drills of the group's drills.
func (r DrillsResult) Extract() ([]DrillInfo, error) {
	var s []DrillInfo
	err := r.ExtractIntoSlicePtr(&s, "drills")
	return s, err
}

// PointsResult is the result of ListPoints.
type PointsResult struct {
	gophercloud.Result
}

// Extract returns the group points, newest first.
func (r PointsResult) Extract() ([]Point, error) {
	var s []Point
	err := r.ExtractIntoSlicePtr(&s, "points")
	return s, err
}

// ReplicationGroupPage is one page of List.
type ReplicationGroupPage struct {
	pagination.LinkedPageBase
}

// IsEmpty reports whether the page holds no group.
func (r ReplicationGroupPage) IsEmpty() (bool, error) {
	if r.StatusCode == http.StatusNoContent {
		return true, nil
	}
	gs, err := ExtractReplicationGroups(r)
	return len(gs) == 0, err
}

// NextPageURL is the href of the page's replication_groups_links
// rel=next, or "" on the last page.
func (r ReplicationGroupPage) NextPageURL() (string, error) {
	var s struct {
		Links []gophercloud.Link `json:"replication_groups_links"`
	}
	if err := r.ExtractInto(&s); err != nil {
		return "", err
	}
	return gophercloud.ExtractNextURL(s.Links)
}

// ExtractReplicationGroups returns the groups of a page of List.
func ExtractReplicationGroups(r pagination.Page) ([]ReplicationGroup, error) {
	var s []ReplicationGroup
	err := ExtractReplicationGroupsInto(r, &s)
	return s, err
}

// ExtractReplicationGroupsInto decodes the "replication_groups" of a page
// into v.
func ExtractReplicationGroupsInto(r pagination.Page, v any) error {
	return r.(ReplicationGroupPage).ExtractIntoSlicePtr(v, "replication_groups")
}
