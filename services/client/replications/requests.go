package replications

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"

	ferry "github.com/ferry-project/ferry/services/client"
)

// Microversion is the API version that introduced replications: every
// function of this package needs sc.Microversion >= "1.1", and asks for it
// on its requests when sc.Microversion is empty or older (sc is not
// changed). A server before 1.1 answers 404.
const Microversion = "1.1"

// ErrInvalidSource is wrapped by the error of a create whose source does
// not name exactly one of a volume, or a pool and an image. No request is
// sent.
var ErrInvalidSource = errors.New("replication source must name exactly one of volume_id, or pool and image")

// ErrNoPoint is the error of a Drill without a point. No request is sent.
var ErrNoPoint = errors.New("a drill needs the name of a point")

// CreateOptsBuilder allows extensions to add parameters to Create.
type CreateOptsBuilder interface {
	ToReplicationCreateMap() (map[string]any, error)
}

// SourceOpts names what to protect: a Cinder volume (resolved with the
// caller's token), or an RBD pool and image (admins by default).
type SourceOpts struct {
	// Region is the source region (required).
	Region   string `json:"region" required:"true"`
	VolumeID string `json:"volume_id,omitempty"`
	Pool     string `json:"pool,omitempty"`
	Image    string `json:"image,omitempty"`
}

// DestinationOpts names where the replica lives. Pool defaults to the
// destination region's Cinder volume pool, else the source's.
type DestinationOpts struct {
	// Region is the destination region (required).
	Region string `json:"region" required:"true"`
	Pool   string `json:"pool,omitempty"`
}

// RetentionOpts is how many points the replica keeps: the newest
// KeepLast, plus the newest point of each of the last KeepHourly hours and
// KeepDaily days that have one. The newest point is always kept. A nil
// field is not sent: on Create the server's default (keep_last 3, no
// hourly or daily points), on Update unchanged. gophercloud.IntToPointer
// makes the pointers.
type RetentionOpts struct {
	KeepLast   *int `json:"keep_last,omitempty"`
	KeepHourly *int `json:"keep_hourly,omitempty"`
	KeepDaily  *int `json:"keep_daily,omitempty"`
}

// CreateOpts is the body of POST /v1/replications.
type CreateOpts struct {
	Name        string          `json:"name,omitempty"`
	Description string          `json:"description,omitempty"`
	Source      SourceOpts      `json:"source" required:"true"`
	Destination DestinationOpts `json:"destination" required:"true"`
	// IntervalSeconds is the time between two cycles (required, > 0;
	// the server has a minimum).
	IntervalSeconds int `json:"interval_seconds"`
	// RPOSeconds is the recovery point objective: a lag beyond it is a
	// breach (required, > 0).
	RPOSeconds int `json:"rpo_seconds"`
	// Retention nil means the server's default.
	Retention *RetentionOpts `json:"retention,omitempty"`
	// BandwidthLimit is in bytes/s; zero means the agents' default.
	BandwidthLimit int64 `json:"bandwidth_limit,omitempty"`
}

// ToReplicationCreateMap checks the options and builds the request body
// {"replication": {...}}.
func (opts CreateOpts) ToReplicationCreateMap() (map[string]any, error) {
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
	return gophercloud.BuildRequestBody(opts, "replication")
}

func (s SourceOpts) validate() error {
	volume, image := s.VolumeID != "", s.Pool != "" || s.Image != ""
	switch {
	case !volume && !image:
		return fmt.Errorf("%w: none given", ErrInvalidSource)
	case volume && image:
		return fmt.Errorf("%w: both given", ErrInvalidSource)
	case image && (s.Pool == "" || s.Image == ""):
		return fmt.Errorf("%w: pool and image go together", ErrInvalidSource)
	}
	return nil
}

// Create asks for a replication (POST /v1/replications, 202 Accepted):
// the result is the new replication; its first cycle (a full copy) is
// scheduled at once.
func Create(ctx context.Context, client *gophercloud.ServiceClient, opts CreateOptsBuilder) (r CreateResult) {
	client = ferry.WithMicroversion(client, Microversion)
	b, err := opts.ToReplicationCreateMap()
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

// Get shows a replication (GET /v1/replications/{id}).
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
	ToReplicationListQuery() (string, error)
}

// ListOpts page GET /v1/replications (newest first).
type ListOpts struct {
	// Limit is the page size (the server caps it); zero means the
	// server's default.
	Limit int `q:"limit"`
	// Marker is the id of the last replication of the previous page.
	Marker string `q:"marker"`
	// AllProjects lists every project's replications (admins only).
	AllProjects bool `q:"all_projects"`
}

// ToReplicationListQuery formats the options into a query string.
func (opts ListOpts) ToReplicationListQuery() (string, error) {
	q, err := gophercloud.BuildQueryString(opts)
	if err != nil {
		return "", err
	}
	return q.String(), nil
}

// List pages through the replications (GET /v1/replications), following
// the replications_links "next" links.
func List(client *gophercloud.ServiceClient, opts ListOptsBuilder) pagination.Pager {
	client = ferry.WithMicroversion(client, Microversion)
	url := listURL(client)
	if opts != nil {
		query, err := opts.ToReplicationListQuery()
		if err != nil {
			return pagination.Pager{Err: err}
		}
		url += query
	}
	return pagination.NewPager(client, url, func(r pagination.PageResult) pagination.Page {
		return ReplicationPage{pagination.LinkedPageBase{PageResult: r}}
	})
}

// UpdateOptsBuilder allows extensions to add parameters to Update.
type UpdateOptsBuilder interface {
	ToReplicationUpdateMap() (map[string]any, error)
}

// UpdateOpts is the body of PUT /v1/replications/{id}: only the fields
// set (non-nil) are sent and changed.
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

// ToReplicationUpdateMap builds the request body {"replication": {...}}.
func (opts UpdateOpts) ToReplicationUpdateMap() (map[string]any, error) {
	return gophercloud.BuildRequestBody(opts, "replication")
}

// Update changes a replication's schedule, RPO, retention, bandwidth
// limit, name or description (PUT /v1/replications/{id}); the result is
// the updated replication.
func Update(ctx context.Context, client *gophercloud.ServiceClient, id string, opts UpdateOptsBuilder) (r UpdateResult) {
	client = ferry.WithMicroversion(client, Microversion)
	b, err := opts.ToReplicationUpdateMap()
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
	ToReplicationDeleteQuery() (string, error)
}

// DeleteOpts are the options of DELETE /v1/replications/{id}.
type DeleteOpts struct {
	// KeepReplica keeps the replica image at the destination (its head
	// is the newest point); Ferry's snapshots go either way.
	KeepReplica bool `q:"keep_replica"`
}

// ToReplicationDeleteQuery formats the options into a query string.
func (opts DeleteOpts) ToReplicationDeleteQuery() (string, error) {
	q, err := gophercloud.BuildQueryString(opts)
	if err != nil {
		return "", err
	}
	return q.String(), nil
}

// Delete removes a replication (DELETE /v1/replications/{id}, 202): it
// goes to deleting while Ferry removes its snapshots on both sides and,
// unless opts keeps it, the replica. opts may be nil.
func Delete(ctx context.Context, client *gophercloud.ServiceClient, id string, opts DeleteOptsBuilder) (r DeleteResult) {
	client = ferry.WithMicroversion(client, Microversion)
	url := deleteURL(client, id)
	if opts != nil {
		q, err := opts.ToReplicationDeleteQuery()
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

func action(ctx context.Context, client *gophercloud.ServiceClient, id, name string) (r ActionResult) {
	client = ferry.WithMicroversion(client, Microversion)
	b := map[string]any{name: nil}
	resp, err := client.Post(ctx, actionURL(client, id), b, nil, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusAccepted},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// Sync starts a cycle now (POST /v1/replications/{id}/action {"sync":
// null}, 202); a replication that is not active or failed over (paused,
// in error, deleting, failing over or back) is a 409.
func Sync(ctx context.Context, client *gophercloud.ServiceClient, id string) (r ActionResult) {
	return action(ctx, client, id, "sync")
}

// Pause stops scheduling cycles (POST /v1/replications/{id}/action
// {"pause": null}, 202); a running cycle ends normally.
func Pause(ctx context.Context, client *gophercloud.ServiceClient, id string) (r ActionResult) {
	return action(ctx, client, id, "pause")
}

// Resume schedules cycles again (POST /v1/replications/{id}/action
// {"resume": null}, 202).
func Resume(ctx context.Context, client *gophercloud.ServiceClient, id string) (r ActionResult) {
	return action(ctx, client, id, "resume")
}

// DrillOptsBuilder allows extensions to add parameters to Drill.
type DrillOptsBuilder interface {
	ToReplicationDrillMap() (map[string]any, error)
}

// DrillOpts is the body of the drill action.
type DrillOpts struct {
	// Point is the name of a retained point (required).
	Point string `json:"point"`
	// Name is the drill's (and its volume's) name; empty lets the
	// server choose.
	Name string `json:"name,omitempty"`
}

// ToReplicationDrillMap builds {"drill": {"point": ..., "name": ...}}.
func (opts DrillOpts) ToReplicationDrillMap() (map[string]any, error) {
	if opts.Point == "" {
		return nil, ErrNoPoint
	}
	return gophercloud.BuildRequestBody(opts, "drill")
}

// Drill clones a point into a new Cinder volume of the replication's
// project in the destination region, without pausing the replication
// (POST /v1/replications/{id}/action {"drill": {...}}, 202). The result
// is the drill, in creating; ListDrills follows it to available.
func Drill(ctx context.Context, client *gophercloud.ServiceClient, id string, opts DrillOptsBuilder) (r DrillResult) {
	b, err := opts.ToReplicationDrillMap()
	if err != nil {
		r.Err = err
		return
	}
	r.Result = postAction(ctx, client, id, b)
	return
}

// postAction posts an action's body b that answers an object (drill,
// failover, failback) and expects 202.
func postAction(ctx context.Context, client *gophercloud.ServiceClient, id string, b map[string]any) (r gophercloud.Result) {
	client = ferry.WithMicroversion(client, Microversion)
	resp, err := client.Post(ctx, actionURL(client, id), b, &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusAccepted},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// get reads url (a sub-resource of a replication) and expects 200.
func get(ctx context.Context, client *gophercloud.ServiceClient, url string) (r gophercloud.Result) {
	client = ferry.WithMicroversion(client, Microversion)
	resp, err := client.Get(ctx, url, &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusOK},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// ListPoints returns the retained points of the replica (GET
// /v1/replications/{id}/points), newest first.
func ListPoints(ctx context.Context, client *gophercloud.ServiceClient, id string) (r PointsResult) {
	r.Result = get(ctx, client, pointsURL(client, id))
	return
}

// ListEvents returns a replication's history (GET
// /v1/replications/{id}/events): cycles, skips, errors, breaches, drills.
func ListEvents(ctx context.Context, client *gophercloud.ServiceClient, id string) (r EventsResult) {
	r.Result = get(ctx, client, eventsURL(client, id))
	return
}

// ListDrills returns a replication's drills (GET
// /v1/replications/{id}/drills).
func ListDrills(ctx context.Context, client *gophercloud.ServiceClient, id string) (r DrillsResult) {
	r.Result = get(ctx, client, drillsURL(client, id))
	return
}

// FailoverOptsBuilder allows extensions to add parameters to Failover.
type FailoverOptsBuilder interface {
	ToReplicationFailoverMap() (map[string]any, error)
}

// FailoverOpts is the body of the failover action.
type FailoverOpts struct {
	// Point is empty for a planned failover: the source volume is
	// quiesced, a final cycle copies its last writes, nothing is lost.
	// A point name, or "latest", makes an unplanned failover to that
	// point: the source region is not contacted; it needs Force.
	Point string `json:"point,omitempty"`
	// Force fails over an attached source volume (its writes after the
	// final point are preserved, not replicated) and allows an
	// unplanned failover.
	Force bool `json:"force,omitempty"`
}

// ToReplicationFailoverMap builds {"failover": {...}}.
func (opts FailoverOpts) ToReplicationFailoverMap() (map[string]any, error) {
	if opts.Point != "" && !opts.Force {
		return nil, ErrUnplannedNeedsForce
	}
	return gophercloud.BuildRequestBody(opts, "failover")
}

// ErrUnplannedNeedsForce is the error of a Failover to a point without
// Force. No request is sent.
var ErrUnplannedNeedsForce = errors.New("an unplanned failover (to a point) does not contact the source region: it needs Force")

// Failover makes the replica the primary volume in the destination region
// (POST /v1/replications/{id}/action {"failover": {...}}, 202): the
// replication goes to failing_over, then failed_over, its cycles copying
// the new primary back to the source. The result is the failover, running;
// GetFailover follows it to done (RTOSeconds) or error. A replication in
// another status, or whose source volume is attached (unless forced), is
// a 409.
func Failover(ctx context.Context, client *gophercloud.ServiceClient, id string, opts FailoverOptsBuilder) (r FailoverResult) {
	b, err := opts.ToReplicationFailoverMap()
	if err != nil {
		r.Err = err
		return
	}
	r.Result = postAction(ctx, client, id, b)
	return
}

// FailbackOptsBuilder allows extensions to add parameters to Failback.
type FailbackOptsBuilder interface {
	ToReplicationFailbackMap() (map[string]any, error)
}

// FailbackOpts is the body of the failback action; a failback is always
// planned.
type FailbackOpts struct {
	// Force fails back while the failed-over volume is attached.
	Force bool `json:"force,omitempty"`
}

// ToReplicationFailbackMap builds {"failback": null}, or {"failback":
// {"force": true}}.
func (opts FailbackOpts) ToReplicationFailbackMap() (map[string]any, error) {
	if !opts.Force {
		return map[string]any{"failback": nil}, nil
	}
	return gophercloud.BuildRequestBody(opts, "failback")
}

// Failback returns a failed-over replication to its original direction
// (POST /v1/replications/{id}/action {"failback": ...}, 202): it goes to
// failing_back, then active. The result is the failback, running.
func Failback(ctx context.Context, client *gophercloud.ServiceClient, id string, opts FailbackOptsBuilder) (r FailoverResult) {
	b, err := opts.ToReplicationFailbackMap()
	if err != nil {
		r.Err = err
		return
	}
	r.Result = postAction(ctx, client, id, b)
	return
}

// ListFailovers returns a replication's failovers and failbacks, newest
// first (GET /v1/replications/{id}/failovers).
func ListFailovers(ctx context.Context, client *gophercloud.ServiceClient, id string) (r FailoversResult) {
	r.Result = get(ctx, client, failoversURL(client, id))
	return
}

// GetFailover shows one failover or failback of a replication (GET
// /v1/replications/{id}/failovers/{failover_id}).
func GetFailover(ctx context.Context, client *gophercloud.ServiceClient, id, failoverID string) (r FailoverResult) {
	r.Result = get(ctx, client, failoverURL(client, id, failoverID))
	return
}
