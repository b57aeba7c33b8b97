package replicationgroups

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"

	ferry "github.com/ferry-project/ferry/services/client"
	"github.com/ferry-project/ferry/services/client/replications"
)

// Microversion is the API version that introduced replication groups:
// every function of this package needs sc.Microversion >= "1.2", and asks
// for it on its requests when sc.Microversion is empty or older (sc is
// not changed). A server before 1.2 answers 404.
const Microversion = "1.2"

// ErrInvalidSource is wrapped by the error of a create whose source does
// not name exactly one of a list of volumes, or a Cinder group. No
// request is sent.
var ErrInvalidSource = errors.New("replication group source must name exactly one of volume_ids, or cinder_group_id")

// ErrNoPoint is the error of a Drill without a point. No request is sent.
var ErrNoPoint = errors.New("a drill needs the name of a group point, or latest")

// ErrUnplannedNeedsForce is the error of a Failover to a point without
// Force. No request is sent.
var ErrUnplannedNeedsForce = errors.New("an unplanned failover (to a point) does not contact the source region: it needs Force")

// CreateOptsBuilder allows extensions to add parameters to Create.
type CreateOptsBuilder interface {
	ToReplicationGroupCreateMap() (map[string]any, error)
}

// SourceOpts names the volumes to protect together, all of one project in
// one region: a list of Cinder volumes, or the volumes of a Cinder group
// (its members when the group is created).
type SourceOpts struct {
	// Region is the source region (required).
	Region string `json:"region" required:"true"`
	// VolumeIDs are the volumes (the server takes 1 to 16, none already
	// replicated).
	VolumeIDs     []string `json:"volume_ids,omitempty"`
	CinderGroupID string   `json:"cinder_group_id,omitempty"`
}

// DestinationOpts names where the replicas live. Pool defaults to the
// destination region's Cinder volume pool.
type DestinationOpts struct {
	// Region is the destination region (required).
	Region string `json:"region" required:"true"`
	Pool   string `json:"pool,omitempty"`
}

// RetentionOpts is how many group points the replicas keep, as for a
// replication: a nil field is not sent (the server's default on Create,
// unchanged on Update).
type RetentionOpts = replications.RetentionOpts

// CreateOpts is the body of POST /v1/replication-groups.
type CreateOpts struct {
	Name        string          `json:"name,omitempty"`
	Description string          `json:"description,omitempty"`
	Source      SourceOpts      `json:"source" required:"true"`
	Destination DestinationOpts `json:"destination" required:"true"`
	// IntervalSeconds is the time between two group cycles (required,
	// > 0; the server has a minimum).
	IntervalSeconds int `json:"interval_seconds"`
	// RPOSeconds is the recovery point objective: a lag beyond it is a
	// breach (required, > 0).
	RPOSeconds int `json:"rpo_seconds"`
	// Retention nil means the server's default.
	Retention *RetentionOpts `json:"retention,omitempty"`
	// BandwidthLimit is in bytes/s; zero means the agents' default.
	BandwidthLimit int64 `json:"bandwidth_limit,omitempty"`
}

// ToReplicationGroupCreateMap checks the options and builds the request
// body {"replication_group": {...}}.
func (opts CreateOpts) ToReplicationGroupCreateMap() (map[string]any, error) {
	if err := opts.Source.validate(); err != nil {
		return nil, err
	}
	// BuildRequestBody's required does not check numbers.
	switch {
	case opts.IntervalSeconds <= 0:
		return nil, gophercloud.ErrMissingInput{Argument: "IntervalSeconds"}
	case opts.RPOSeconds <= 0:
		return nil, gophercloud.ErrMissingInput{Argument: "RPOSeconds"}
	}
	return gophercloud.BuildRequestBody(opts, "replication_group")
}

func (s SourceOpts) validate() error {
	volumes, group := len(s.VolumeIDs) > 0, s.CinderGroupID != ""
	switch {
	case !volumes && !group:
		return fmt.Errorf("%w: none given", ErrInvalidSource)
	case volumes && group:
		return fmt.Errorf("%w: both given", ErrInvalidSource)
	}
	for _, v := range s.VolumeIDs {
		if v == "" {
			return fmt.Errorf("%w: an empty volume id", ErrInvalidSource)
		}
	}
	return nil
}

// Create asks for a replication group (POST /v1/replication-groups, 202
// Accepted): the result is the new group, its members listed; its first
// group cycle is scheduled at once.
func Create(ctx context.Context, client *gophercloud.ServiceClient, opts CreateOptsBuilder) (r CreateResult) {
	client = ferry.WithMicroversion(client, Microversion)
	b, err := opts.ToReplicationGroupCreateMap()
	if err != nil {
		r.Err = err
		return
	}
	resp, err := client.Post(ctx, createURL(client), b, &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusAccepted},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// Get shows a replication group (GET /v1/replication-groups/{id}).
func Get(ctx context.Context, client *gophercloud.ServiceClient, id string) (r GetResult) {
	client = ferry.WithMicroversion(client, Microversion)
	resp, err := client.Get(ctx, getURL(client, id), &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusOK},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// ListOptsBuilder allows extensions to add parameters to List.
type ListOptsBuilder interface {
	ToReplicationGroupListQuery() (string, error)
}

// ListOpts page GET /v1/replication-groups.
type ListOpts struct {
	// Limit is the page size (the server caps it); zero means the
	// server's default.
	Limit int `q:"limit"`
	// Marker is the id of the last group of the previous page.
	Marker string `q:"marker"`
	// AllProjects lists every project's groups (admins only).
	AllProjects bool `q:"all_projects"`
}

// ToReplicationGroupListQuery formats the options into a query string.
func (opts ListOpts) ToReplicationGroupListQuery() (string, error) {
	q, err := gophercloud.BuildQueryString(opts)
	if err != nil {
		return "", err
	}
	return q.String(), nil
}

// List pages through the replication groups (GET
// /v1/replication-groups), following the replication_groups_links "next"
// links.
func List(client *gophercloud.ServiceClient, opts ListOptsBuilder) pagination.Pager {
	client = ferry.WithMicroversion(client, Microversion)
	url := listURL(client)
	if opts != nil {
		query, err := opts.ToReplicationGroupListQuery()
		if err != nil {
			return pagination.Pager{Err: err}
		}
		url += query
	}
	return pagination.NewPager(client, url, func(r pagination.PageResult) pagination.Page {
		return ReplicationGroupPage{pagination.LinkedPageBase{PageResult: r}}
	})
}

// UpdateOptsBuilder allows extensions to add parameters to Update.
type UpdateOptsBuilder interface {
	ToReplicationGroupUpdateMap() (map[string]any, error)
}

// UpdateOpts is the body of PUT /v1/replication-groups/{id}: only the
// fields set (non-nil) are sent and changed.
type UpdateOpts struct {
	Name            *string        `json:"name,omitempty"`
	Description     *string        `json:"description,omitempty"`
	IntervalSeconds *int           `json:"interval_seconds,omitempty"`
	RPOSeconds      *int           `json:"rpo_seconds,omitempty"`
	Retention       *RetentionOpts `json:"retention,omitempty"`
	// BandwidthLimit in bytes/s; a pointer to 0 returns to the agents'
	// default.
	BandwidthLimit *int64 `json:"bandwidth_limit,omitempty"`
}

// ToReplicationGroupUpdateMap builds the request body
// {"replication_group": {...}}.
func (opts UpdateOpts) ToReplicationGroupUpdateMap() (map[string]any, error) {
	return gophercloud.BuildRequestBody(opts, "replication_group")
}

// Update changes a group's schedule, RPO, retention, bandwidth limit,
// name or description (PUT /v1/replication-groups/{id}); the result is
// the updated group.
func Update(ctx context.Context, client *gophercloud.ServiceClient, id string, opts UpdateOptsBuilder) (r UpdateResult) {
	client = ferry.WithMicroversion(client, Microversion)
	b, err := opts.ToReplicationGroupUpdateMap()
	if err != nil {
		r.Err = err
		return
	}
	resp, err := client.Put(ctx, updateURL(client, id), b, &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusOK},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// DeleteOptsBuilder allows extensions to add parameters to Delete.
type DeleteOptsBuilder interface {
	ToReplicationGroupDeleteQuery() (string, error)
}

// DeleteOpts are the options of DELETE /v1/replication-groups/{id}.
type DeleteOpts struct {
	// KeepReplica keeps the members' replica images at the destination.
	KeepReplica bool `q:"keep_replica"`
}

// ToReplicationGroupDeleteQuery formats the options into a query string.
func (opts DeleteOpts) ToReplicationGroupDeleteQuery() (string, error) {
	q, err := gophercloud.BuildQueryString(opts)
	if err != nil {
		return "", err
	}
	return q.String(), nil
}

// Delete removes a replication group and its members (DELETE
// /v1/replication-groups/{id}, 202, no body); opts may be nil.
func Delete(ctx context.Context, client *gophercloud.ServiceClient, id string, opts DeleteOptsBuilder) (r DeleteResult) {
	client = ferry.WithMicroversion(client, Microversion)
	url := deleteURL(client, id)
	if opts != nil {
		q, err := opts.ToReplicationGroupDeleteQuery()
		if err != nil {
			r.Err = err
			return
		}
		url += q
	}
	resp, err := client.Delete(ctx, url, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusAccepted},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// postAction posts an action's body b to the group and expects 202.
func postAction(ctx context.Context, client *gophercloud.ServiceClient, id string, b map[string]any) (r gophercloud.Result) {
	client = ferry.WithMicroversion(client, Microversion)
	resp, err := client.Post(ctx, actionURL(client, id), b, &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusAccepted},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

func action(ctx context.Context, client *gophercloud.ServiceClient, id, name string) (r ActionResult) {
	r.Result = postAction(ctx, client, id, map[string]any{name: nil})
	return
}

// Sync starts a group cycle now (POST /v1/replication-groups/{id}/action
// {"sync": null}, 202); the result is the group.
func Sync(ctx context.Context, client *gophercloud.ServiceClient, id string) (r ActionResult) {
	return action(ctx, client, id, "sync")
}

// Pause stops scheduling group cycles (POST
// /v1/replication-groups/{id}/action {"pause": null}, 202); the result is
// the group.
func Pause(ctx context.Context, client *gophercloud.ServiceClient, id string) (r ActionResult) {
	return action(ctx, client, id, "pause")
}

// Resume schedules group cycles again (POST
// /v1/replication-groups/{id}/action {"resume": null}, 202); the result
// is the group.
func Resume(ctx context.Context, client *gophercloud.ServiceClient, id string) (r ActionResult) {
	return action(ctx, client, id, "resume")
}

// DrillOptsBuilder allows extensions to add parameters to Drill.
type DrillOptsBuilder interface {
	ToReplicationGroupDrillMap() (map[string]any, error)
}

// DrillOpts is the body of the drill action.
type DrillOpts struct {
	// Point is the name of a group point, or "latest" (required).
	Point string `json:"point"`
	// Name is the drills' (and their volumes') name; empty lets the
	// server choose.
	Name string `json:"name,omitempty"`
}

// ToReplicationGroupDrillMap builds {"drill": {"point": ..., "name": ...}}.
func (opts DrillOpts) ToReplicationGroupDrillMap() (map[string]any, error) {
	if opts.Point == "" {
		return nil, ErrNoPoint
	}
	return gophercloud.BuildRequestBody(opts, "drill")
}

// Drill clones a group point of every member into new Cinder volumes of
// the group's project in the destination region, without pausing the
// group (POST /v1/replication-groups/{id}/action {"drill": {...}}, 202).
// The result is one drill per member, in creating; ListDrills follows
// them to available.
func Drill(ctx context.Context, client *gophercloud.ServiceClient, id string, opts DrillOptsBuilder) (r DrillResult) {
	b, err := opts.ToReplicationGroupDrillMap()
	if err != nil {
		r.Err = err
		return
	}
	r.Result = postAction(ctx, client, id, b)
	return
}

// get reads url (a sub-resource of a group) and expects 200.
func get(ctx context.Context, client *gophercloud.ServiceClient, url string) (r gophercloud.Result) {
	client = ferry.WithMicroversion(client, Microversion)
	resp, err := client.Get(ctx, url, &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusOK},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// ListPoints returns the group points (GET
// /v1/replication-groups/{id}/points), newest first.
func ListPoints(ctx context.Context, client *gophercloud.ServiceClient, id string) (r PointsResult) {
	r.Result = get(ctx, client, pointsURL(client, id))
	return
}

// ListDrills returns the members' drills of the group's drills (GET
// /v1/replication-groups/{id}/drills).
func ListDrills(ctx context.Context, client *gophercloud.ServiceClient, id string) (r DrillsResult) {
	r.Result = get(ctx, client, drillsURL(client, id))
	return
}

// FailoverOptsBuilder allows extensions to add parameters to Failover.
type FailoverOptsBuilder interface {
	ToReplicationGroupFailoverMap() (map[string]any, error)
}

// FailoverOpts is the body of the failover action.
type FailoverOpts struct {
	// Point is empty for a planned failover. A group point's name, or
	// "latest", makes an unplanned failover to that point: the source
	// region is not contacted; it needs Force.
	Point string `json:"point,omitempty"`
	// Force fails over attached source volumes and allows an unplanned
	// failover.
	Force bool `json:"force,omitempty"`
}

// ToReplicationGroupFailoverMap builds {"failover": {...}}.
func (opts FailoverOpts) ToReplicationGroupFailoverMap() (map[string]any, error) {
	if opts.Point != "" && !opts.Force {
		return nil, ErrUnplannedNeedsForce
	}
	return gophercloud.BuildRequestBody(opts, "failover")
}

// Failover makes the members' replicas the primary volumes in the
// destination region (POST /v1/replication-groups/{id}/action
// {"failover": {...}}, 202). The result is the group, failing_over; Get
// follows it until it leaves failing_over (FailoverRunning).
func Failover(ctx context.Context, client *gophercloud.ServiceClient, id string, opts FailoverOptsBuilder) (r ActionResult) {
	b, err := opts.ToReplicationGroupFailoverMap()
	if err != nil {
		r.Err = err
		return
	}
	r.Result = postAction(ctx, client, id, b)
	return
}

// FailbackOptsBuilder allows extensions to add parameters to Failback.
type FailbackOptsBuilder interface {
	ToReplicationGroupFailbackMap() (map[string]any, error)
}

// FailbackOpts is the body of the failback action.
type FailbackOpts struct {
	// Force fails back while the failed-over volumes are attached.
	Force bool `json:"force,omitempty"`
}

// ToReplicationGroupFailbackMap builds {"failback": null}, or
// {"failback": {"force": true}}.
func (opts FailbackOpts) ToReplicationGroupFailbackMap() (map[string]any, error) {
	if !opts.Force {
		return map[string]any{"failback": nil}, nil
	}
	return gophercloud.BuildRequestBody(opts, "failback")
}

// Failback returns a failed-over group to its original direction (POST
// /v1/replication-groups/{id}/action {"failback": ...}, 202). The result
// is the group, failing_back; Get follows it until it leaves
// failing_back.
func Failback(ctx context.Context, client *gophercloud.ServiceClient, id string, opts FailbackOptsBuilder) (r ActionResult) {
	b, err := opts.ToReplicationGroupFailbackMap()
	if err != nil {
		r.Err = err
		return
	}
	r.Result = postAction(ctx, client, id, b)
	return
}
