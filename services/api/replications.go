package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/api/dispatch"
	"github.com/ferry-project/ferry/services/api/replicate"
)

// /v1/replications (since 1.1): continuous replication of a volume (or an
// admin's image) into a replica in another region, a cycle (a transfer)
// every interval. The scheduler (services/api/replicate) runs the cycles;
// these handlers keep the rows.

// ReplicationView is a replication as the REST API shows it.
type ReplicationView struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Description    string            `json:"description"`
	ProjectID      string            `json:"project_id"`
	UserID         string            `json:"user_id"`
	Status         string            `json:"status"`
	Source         ReplicationSource `json:"source"`
	Destination    ReplicationDest   `json:"destination"`
	Interval       int               `json:"interval_seconds"`
	RPO            int               `json:"rpo_seconds"`
	Retention      RetentionSpec     `json:"retention"`
	BandwidthLimit int64             `json:"bandwidth_limit"`
	LastSyncAt     *string           `json:"last_sync_at"`
	LagSeconds     *int64            `json:"lag_seconds"`
	RPOBreached    bool              `json:"rpo_breached"`
	LastTransferID *string           `json:"last_transfer_id"`
	LastError      *string           `json:"last_error"`
	PointsCount    int               `json:"points_count"`
	BytesLastCycle int64             `json:"bytes_last_cycle"`
	NextRunAt      *string           `json:"next_run_at"`
	Cycles         ReplicationCycles `json:"cycles"`
	CreatedAt      string            `json:"created_at"`
	UpdatedAt      string            `json:"updated_at"`
	// GroupID is the replication group the replication is a member of
	// (since 1.2; absent when none): its group schedules it.
	GroupID *string `json:"group_id,omitempty"`
}

// ReplicationSource is what a replication protects.
type ReplicationSource struct {
	Region   string  `json:"region"`
	VolumeID *string `json:"volume_id"`
	Pool     string  `json:"pool"`
	Image    string  `json:"image"`
}

// ReplicationDest is the replica.
type ReplicationDest struct {
	Region string `json:"region"`
	Pool   string `json:"pool"`
	Image  string `json:"image"`
}

// RetentionSpec is a replication's retention, in views and requests.
type RetentionSpec struct {
	KeepLast   *int `json:"keep_last"`
	KeepHourly *int `json:"keep_hourly"`
	KeepDaily  *int `json:"keep_daily"`
}

// ReplicationCycles is the history summary.
type ReplicationCycles struct {
	Completed int64 `json:"completed"`
	Failed    int64 `json:"failed"`
	Skipped   int64 `json:"skipped"`
}

// ReplicationViewOf maps a stored replication to its REST form at now.
func ReplicationViewOf(r *db.Replication, now time.Time) ReplicationView {
	kl, kh, kd := r.KeepLast, r.KeepHourly, r.KeepDaily
	v := ReplicationView{
		ID: r.ID, Name: r.Name, Description: r.Description, ProjectID: r.ProjectID, UserID: r.UserID,
		Status:      string(r.Status),
		Source:      ReplicationSource{Region: r.SourceRegion, VolumeID: strPtr(r.SourceVolumeID), Pool: r.SourcePool, Image: r.SourceImage},
		Destination: ReplicationDest{Region: r.DestRegion, Pool: r.DestPool, Image: r.DestImage},
		Interval:    r.IntervalSeconds, RPO: r.RPOSeconds,
		Retention:      RetentionSpec{KeepLast: &kl, KeepHourly: &kh, KeepDaily: &kd},
		BandwidthLimit: r.BandwidthLimit, LastSyncAt: isoTimePtr(r.LastSyncAt),
		LastTransferID: strPtr(r.LastTransferID), LastError: r.LastError,
		PointsCount: r.PointsCount, BytesLastCycle: r.BytesLastCycle,
		Cycles:    ReplicationCycles{Completed: r.CyclesCompleted, Failed: r.CyclesFailed, Skipped: r.CyclesSkipped},
		CreatedAt: isoTime(r.CreatedAt), UpdatedAt: isoTime(r.UpdatedAt),
	}
	lag, ok, breached := replicate.Lag(r, now)
	if ok {
		secs := int64(lag / time.Second)
		v.LagSeconds = &secs
	}
	v.RPOBreached = breached
	if r.Status.Schedules() && r.FailoverID == nil && r.GroupID == nil {
		v.NextRunAt = isoTimePtr(&r.NextRunAt)
	}
	v.GroupID = r.GroupID
	return v
}

// PointView is a retained point.
type PointView struct {
	Name       string  `json:"name"`
	CreatedAt  string  `json:"created_at"`
	Digest     *string `json:"digest"`
	Bytes      int64   `json:"bytes"`
	Size       int64   `json:"size"`
	TransferID *string `json:"transfer_id"`
}

// DrillView is a DR drill.
type DrillView struct {
	ID            string   `json:"id"`
	ReplicationID string   `json:"replication_id"`
	Name          string   `json:"name"`
	Point         string   `json:"point"`
	Status        string   `json:"status"`
	VolumeID      *string  `json:"volume_id"`
	RequestedAt   string   `json:"requested_at"`
	AvailableAt   *string  `json:"available_at"`
	RTOSeconds    *float64 `json:"rto_seconds"`
	Error         *string  `json:"error"`
}

// DrillViewOf maps a stored drill to its REST form.
func DrillViewOf(d *db.Drill) DrillView {
	v := DrillView{ID: d.ID, ReplicationID: d.ReplicationID, Name: d.Name, Point: d.Point, Status: string(d.Status),
		VolumeID: strPtr(d.VolumeID), RequestedAt: isoTime(d.RequestedAt), AvailableAt: isoTimePtr(d.AvailableAt), Error: d.Error}
	if rto, ok := d.RTO(); ok {
		secs := rto.Seconds()
		v.RTOSeconds = &secs
	}
	return v
}

// CreateReplicationRequest is the body of POST /v1/replications.
type CreateReplicationRequest struct {
	Replication *CreateReplication `json:"replication"`
}

// CreateReplication is what a caller asks for.
type CreateReplication struct {
	Name        string         `json:"name,omitempty"`
	Description string         `json:"description,omitempty"`
	Source      *SourceSpec    `json:"source"`
	Destination *DestSpec      `json:"destination"`
	Interval    *int           `json:"interval_seconds"`
	RPO         *int           `json:"rpo_seconds"`
	Retention   *RetentionSpec `json:"retention"`
	Bandwidth   *int64         `json:"bandwidth_limit"`
}

// UpdateReplicationRequest is the body of PUT /v1/replications/{id}.
type UpdateReplicationRequest struct {
	Replication *UpdateReplication `json:"replication"`
}

// UpdateReplication names the settings to change.
type UpdateReplication struct {
	Name        *string        `json:"name"`
	Description *string        `json:"description"`
	Interval    *int           `json:"interval_seconds"`
	RPO         *int           `json:"rpo_seconds"`
	Retention   *RetentionSpec `json:"retention"`
	Bandwidth   *int64         `json:"bandwidth_limit"`
}

// Limits of a replication's settings.
const (
	maxIntervalSeconds = 366 * 86400
	maxKeep            = 10000
	// DefaultKeepLast is the retention of a request that names none.
	DefaultKeepLast = 3
)

// decodeStrict reads a JSON body of at most maxBytes into v: unknown
// fields and trailing data are refused.
func decodeStrict(r io.Reader, maxBytes int64, v any) error {
	body, err := io.ReadAll(io.LimitReader(r, maxBytes+1))
	if err != nil {
		return invalid("cannot read the request body: %v", err)
	}
	if int64(len(body)) > maxBytes {
		return errBodyTooLarge
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalid("malformed request body: %s", jsonError(err))
	}
	if dec.More() {
		return invalid("malformed request body: data after the JSON object")
	}
	return nil
}

// checkSettings validates interval, RPO, retention and limit (nil: not
// given) against minInterval.
func checkSettings(interval, rpo *int, ret *RetentionSpec, bw *int64, minInterval int) error {
	if interval != nil && (*interval < minInterval || *interval > maxIntervalSeconds) {
		return invalid("replication.interval_seconds must be between %d ([api] replication_min_interval) and %d", minInterval, maxIntervalSeconds)
	}
	if rpo != nil && (*rpo < 1 || *rpo > maxIntervalSeconds) {
		return invalid("replication.rpo_seconds must be between 1 and %d", maxIntervalSeconds)
	}
	if ret != nil {
		if ret.KeepLast != nil && (*ret.KeepLast < 1 || *ret.KeepLast > maxKeep) {
			return invalid("replication.retention.keep_last must be between 1 and %d", maxKeep)
		}
		for _, k := range []struct {
			name string
			v    *int
		}{{"keep_hourly", ret.KeepHourly}, {"keep_daily", ret.KeepDaily}} {
			if k.v != nil && (*k.v < 0 || *k.v > maxKeep) {
				return invalid("replication.retention.%s must be between 0 and %d", k.name, maxKeep)
			}
		}
	}
	if bw != nil && *bw < 0 {
		return invalid("replication.bandwidth_limit must not be negative (0: the agents' default)")
	}
	return nil
}

func checkText(name, v string, maxLen int) error {
	if len([]rune(v)) > maxLen {
		return invalid("%s is longer than %d characters", name, maxLen)
	}
	if strings.ContainsRune(v, 0) {
		return invalid("%s contains a NUL character", name)
	}
	return nil
}

// ParseCreateReplication decodes and checks a create body (the regions'
// existence is the caller's to check).
func ParseCreateReplication(r io.Reader, maxBytes int64, minInterval int) (*CreateReplication, error) {
	var req CreateReplicationRequest
	if err := decodeStrict(r, maxBytes, &req); err != nil {
		return nil, err
	}
	c := req.Replication
	switch {
	case c == nil:
		return nil, invalid("the body must be {\"replication\": {...}}")
	case c.Source == nil:
		return nil, invalid("replication.source is required")
	case c.Destination == nil:
		return nil, invalid("replication.destination is required")
	case c.Interval == nil:
		return nil, invalid("replication.interval_seconds is required")
	case c.RPO == nil:
		return nil, invalid("replication.rpo_seconds is required")
	}
	s, d := c.Source, c.Destination
	switch {
	case s.Region == "":
		return nil, invalid("replication.source.region is required")
	case d.Region == "":
		return nil, invalid("replication.destination.region is required")
	case s.Region == d.Region:
		return nil, invalid("source and destination are both in region %q: a replication protects a volume in another region", s.Region)
	case s.BackupID != "" || s.Snapshot != "":
		return nil, invalid("replication.source takes volume_id, or pool and image (an image, not a backup or a snapshot: each cycle takes its own snapshot)")
	case d.Image != "":
		return nil, invalid("replication.destination.image cannot be given: the replica is ferry-replica-<replication id>")
	case s.VolumeID != "" && (s.Pool != "" || s.Image != ""):
		return nil, invalid("replication.source takes one of volume_id, or pool and image")
	case s.VolumeID == "" && (s.Pool == "" || s.Image == ""):
		return nil, invalid("replication.source needs volume_id, or both pool and image")
	}
	if s.VolumeID != "" {
		id, ok := CanonicalUUID(s.VolumeID)
		if !ok {
			return nil, invalid("replication.source.volume_id %q is not a UUID", truncate(s.VolumeID, 64))
		}
		s.VolumeID = id
	}
	if c.Retention == nil {
		c.Retention = &RetentionSpec{}
	}
	if c.Retention.KeepLast == nil {
		n := DefaultKeepLast
		c.Retention.KeepLast = &n
	}
	if err := checkSettings(c.Interval, c.RPO, c.Retention, c.Bandwidth, minInterval); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name, v string
		max     int
		rbdName bool
	}{
		{"replication.name", c.Name, db.MaxNameLength, false},
		{"replication.description", c.Description, db.MaxDescriptionLength, false},
		{"replication.source.region", s.Region, db.MaxNameLength, false},
		{"replication.destination.region", d.Region, db.MaxNameLength, false},
		{"replication.source.pool", s.Pool, db.MaxNameLength, true},
		{"replication.source.image", s.Image, db.MaxNameLength, true},
		{"replication.destination.pool", d.Pool, db.MaxNameLength, true},
	} {
		if err := checkText(f.name, f.v, f.max); err != nil {
			return nil, err
		}
		if f.rbdName && strings.ContainsAny(f.v, "/@") {
			return nil, invalid("%s %q is not a valid RBD name (no '/', '@')", f.name, f.v)
		}
	}
	return c, nil
}

// ParseUpdateReplication decodes and checks an update body.
func ParseUpdateReplication(r io.Reader, maxBytes int64, minInterval int) (*UpdateReplication, error) {
	var req UpdateReplicationRequest
	if err := decodeStrict(r, maxBytes, &req); err != nil {
		return nil, err
	}
	u := req.Replication
	if u == nil {
		return nil, invalid("the body must be {\"replication\": {...}}")
	}
	if u.Name == nil && u.Description == nil && u.Interval == nil && u.RPO == nil && u.Retention == nil && u.Bandwidth == nil {
		return nil, invalid("replication names nothing to change (name, description, interval_seconds, rpo_seconds, retention, bandwidth_limit)")
	}
	if err := checkSettings(u.Interval, u.RPO, u.Retention, u.Bandwidth, minInterval); err != nil {
		return nil, err
	}
	if u.Name != nil {
		if err := checkText("replication.name", *u.Name, db.MaxNameLength); err != nil {
			return nil, err
		}
	}
	if u.Description != nil {
		if err := checkText("replication.description", *u.Description, db.MaxDescriptionLength); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// replicationScope is the scope a caller sees replications in for a show
// or an action: every project for whoever may list them all.
func (s *Server) replicationScope(caller *Caller) db.Scope {
	if s.hooks.Allowed("replication:get_all_projects", caller, map[string]string{"project_id": caller.ProjectID}) {
		return db.AllProjectsScope()
	}
	return db.ProjectScope(caller.ProjectID)
}

// replicationFor finds the replication of the path's id that the caller
// may see (404 otherwise) and enforces rule on its project (403).
func (s *Server) replicationFor(c *gin.Context, rule string) (*Caller, *db.Replication, bool) {
	caller := s.hooks.CallerOf(c)
	if caller == nil {
		writeError(c, http.StatusUnauthorized, "Authentication required.")
		return nil, nil, false
	}
	id, ok := CanonicalUUID(c.Param("id"))
	if !ok {
		writeError(c, http.StatusNotFound, fmt.Sprintf("Replication %q could not be found.", truncate(c.Param("id"), 64)))
		return nil, nil, false
	}
	r, err := s.db.GetReplication(c.Request.Context(), id, s.replicationScope(caller))
	if err != nil {
		s.dbError(c, err, "Replication "+id)
		return nil, nil, false
	}
	if _, ok := s.authorize(c, rule, r.ProjectID); !ok {
		return nil, nil, false
	}
	return caller, r, true
}

func (s *Server) createReplication(c *gin.Context) {
	caller, ok := s.authorize(c, "replication:create", s.callerProject(c))
	if !ok {
		return
	}
	req, err := ParseCreateReplication(c.Request.Body, int64(s.cfg.API.MaxRequestBodySize), s.cfg.API.ReplicationMinInterval)
	if err != nil {
		writeError(c, statusOf(err), err.Error())
		return
	}
	src, dst := req.Source, req.Destination
	if src.VolumeID == "" && !s.hooks.Allowed("replication:create:image_source", caller, map[string]string{"project_id": caller.ProjectID}) {
		writeError(c, http.StatusForbidden, "Policy doesn't allow replication:create:image_source to be performed: name a volume instead of a pool and image.")
		return
	}
	for _, r := range []struct{ side, region string }{{"source", src.Region}, {"destination", dst.Region}} {
		if !slices.Contains(caller.Regions, r.region) {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("replication.%s.region %q is not a region with a volume-ferry endpoint (known: %s).",
				r.side, r.region, strings.Join(caller.Regions, ", ")))
			return
		}
	}
	now := s.db.Now()
	r := &db.Replication{
		ID: uuid.NewString(), Name: req.Name, Description: req.Description,
		ProjectID: caller.ProjectID, UserID: caller.UserID, Status: db.ReplicationActive,
		SourceRegion: src.Region, SourcePool: src.Pool, SourceImage: src.Image,
		DestRegion: dst.Region, DestPool: dst.Pool,
		IntervalSeconds: *req.Interval, RPOSeconds: *req.RPO,
		KeepLast: *req.Retention.KeepLast, KeepHourly: deref0(req.Retention.KeepHourly), KeepDaily: deref0(req.Retention.KeepDaily),
	}
	if req.Bandwidth != nil {
		r.BandwidthLimit = *req.Bandwidth
	}
	if src.VolumeID != "" {
		if s.hooks.Cinder == nil {
			writeError(c, http.StatusNotImplemented, "Cinder volume sources are not configured in this deployment ([cinder] volume_pools).")
			return
		}
		// The caller must see the volume (Cinder decides, with the
		// caller's token); the replication is its project's.
		sv, err := s.hooks.Cinder.ResolveVolume(c.Request.Context(), c.GetHeader("X-Auth-Token"), caller.ProjectID, src.Region, src.VolumeID)
		if !s.cinderError(c, err, "Volume", src.VolumeID, src.Region) {
			return
		}
		r.SourceVolumeID, r.SourcePool, r.SourceImage, r.ProjectID = sv.Spec.ID, sv.Pool, sv.Image, sv.Spec.ProjectID
	}
	if r.DestPool == "" && s.hooks.Cinder != nil {
		r.DestPool = s.hooks.Cinder.VolumePool(dst.Region)
	}
	r.DestPool = firstNonEmpty(r.DestPool, r.SourcePool)
	r.DestImage = db.ReplicaImagePrefix + r.ID
	r.NextRunAt = replicate.FirstRun(r.ID, now, time.Duration(r.IntervalSeconds)*time.Second)
	if err := s.db.CreateReplication(c.Request.Context(), r, db.WithRequestID(requestIDOf(c))); err != nil {
		s.dbError(c, err, "Replication")
		return
	}
	s.kickScheduler()
	c.JSON(http.StatusAccepted, gin.H{"replication": ReplicationViewOf(r, now)})
}

func deref0(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

func (s *Server) kickScheduler() {
	if s.hooks.KickScheduler != nil {
		s.hooks.KickScheduler()
	}
}

// pageLimit is the limit query parameter (400 when bad).
func (s *Server) pageLimit(c *gin.Context) (int, bool) {
	limit := s.cfg.API.DefaultPageSize
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("limit=%q must be a positive integer.", truncate(v, 64)))
			return 0, false
		}
		limit = min(n, s.cfg.API.MaxPageSize)
	}
	return limit, true
}

func (s *Server) listReplications(c *gin.Context) {
	opts, ok := s.replicationListOpts(c)
	if !ok {
		return
	}
	items, more, err := s.db.ListReplications(c.Request.Context(), opts)
	if err != nil {
		s.dbError(c, err, "Replication")
		return
	}
	now := s.db.Now()
	views := make([]ReplicationView, 0, len(items))
	for i := range items {
		views = append(views, ReplicationViewOf(&items[i], now))
	}
	body := gin.H{"replications": views}
	if more && len(items) > 0 {
		body["replications_links"] = s.nextLink(c, replicationsPath, items[len(items)-1].ID, opts.Limit)
	}
	c.JSON(http.StatusOK, body)
}

// replicationListOpts reads a replication or group listing's query: the
// caller's project, or every project (all_projects, policy
// replication:get_all_projects), limit, marker and sort; a refusal is
// written and false returned.
func (s *Server) replicationListOpts(c *gin.Context) (db.ListOpts, bool) {
	caller, ok := s.authorize(c, "replication:get_all", s.callerProject(c))
	if !ok {
		return db.ListOpts{}, false
	}
	scope := db.ProjectScope(caller.ProjectID)
	if v := c.Query("all_projects"); v != "" {
		all, err := strconv.ParseBool(v)
		if err != nil {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("all_projects=%q is not a boolean.", truncate(v, 64)))
			return db.ListOpts{}, false
		}
		if all {
			if !s.hooks.Allowed("replication:get_all_projects", caller, map[string]string{"project_id": caller.ProjectID}) {
				writeError(c, http.StatusForbidden, "Policy doesn't allow replication:get_all_projects to be performed.")
				return db.ListOpts{}, false
			}
			scope = db.AllProjectsScope()
		}
	}
	limit, ok := s.pageLimit(c)
	if !ok {
		return db.ListOpts{}, false
	}
	opts := db.ListOpts{Scope: scope, Limit: limit, Marker: c.Query("marker"), SortKey: c.Query("sort_key"), SortDir: c.Query("sort_dir")}
	return opts, s.canonicalMarker(c, &opts)
}

// canonicalMarker checks and canonicalizes opts.Marker (a UUID); a bad
// one is the 400 of a marker not found, written.
func (s *Server) canonicalMarker(c *gin.Context, opts *db.ListOpts) bool {
	if opts.Marker == "" {
		return true
	}
	id, ok := CanonicalUUID(opts.Marker)
	if !ok {
		writeError(c, http.StatusBadRequest, fmt.Sprintf("marker not found: %q", truncate(opts.Marker, 64)))
		return false
	}
	opts.Marker = id
	return true
}

// nextLink is a page's "next" link: the request's query with the last
// item's id as the marker.
func (s *Server) nextLink(c *gin.Context, path, last string, limit int) []gin.H {
	q := c.Request.URL.Query()
	q.Set("marker", last)
	q.Set("limit", strconv.Itoa(limit))
	return []gin.H{{"rel": "next", "href": s.baseURL(c) + path + "?" + q.Encode()}}
}

func (s *Server) showReplication(c *gin.Context) {
	_, r, ok := s.replicationFor(c, "replication:get")
	if !ok {
		return
	}
	c.JSON(http.StatusOK, gin.H{"replication": ReplicationViewOf(r, s.db.Now())})
}

func (s *Server) replicationPoints(c *gin.Context) {
	_, r, ok := s.replicationFor(c, "replication:get")
	if !ok {
		return
	}
	points, err := s.db.ListPoints(c.Request.Context(), r.ID)
	if err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	out := make([]PointView, 0, len(points))
	for _, p := range points {
		out = append(out, PointView{Name: p.Name, CreatedAt: isoTime(p.CreatedAt), Digest: strPtr(p.Digest),
			Bytes: p.Bytes, Size: p.Size, TransferID: strPtr(p.TransferID)})
	}
	c.JSON(http.StatusOK, gin.H{"points": out})
}

func (s *Server) replicationEvents(c *gin.Context) {
	_, r, ok := s.replicationFor(c, "replication:get")
	if !ok {
		return
	}
	events, err := s.db.ListReplicationEvents(c.Request.Context(), r.ID)
	if err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	out := make([]gin.H, 0, len(events))
	for _, e := range events {
		out = append(out, gin.H{"created_at": isoTime(e.CreatedAt), "kind": string(e.Kind), "message": e.Message,
			"transfer_id": strPtr(e.TransferID), "request_id": strPtr(e.RequestID)})
	}
	c.JSON(http.StatusOK, gin.H{"events": out})
}

func (s *Server) replicationDrills(c *gin.Context) {
	_, r, ok := s.replicationFor(c, "replication:get")
	if !ok {
		return
	}
	drills, err := s.db.ListDrills(c.Request.Context(), r.ID)
	if err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	out := make([]DrillView, 0, len(drills))
	for i := range drills {
		out = append(out, DrillViewOf(&drills[i]))
	}
	c.JSON(http.StatusOK, gin.H{"drills": out})
}

func (s *Server) updateReplication(c *gin.Context) {
	caller, r, ok := s.replicationFor(c, "replication:update")
	if !ok || memberOfGroup(c, r, "update") {
		return
	}
	u, err := ParseUpdateReplication(c.Request.Body, int64(s.cfg.API.MaxRequestBodySize), s.cfg.API.ReplicationMinInterval)
	if err != nil {
		writeError(c, statusOf(err), err.Error())
		return
	}
	f := db.ReplicationFields{Name: u.Name, Description: u.Description, IntervalSeconds: u.Interval, RPOSeconds: u.RPO, BandwidthLimit: u.Bandwidth}
	if u.Retention != nil {
		f.KeepLast, f.KeepHourly, f.KeepDaily = u.Retention.KeepLast, u.Retention.KeepHourly, u.Retention.KeepDaily
	}
	var changed []string
	if u.Interval != nil && *u.Interval != r.IntervalSeconds {
		changed = append(changed, fmt.Sprintf("interval %d s → %d s", r.IntervalSeconds, *u.Interval))
		// A shorter interval takes effect now, not after the old one.
		if next := s.db.Now().Add(time.Duration(*u.Interval) * time.Second); next.Before(r.NextRunAt) {
			f.NextRunAt = &next
		}
	}
	if u.RPO != nil && *u.RPO != r.RPOSeconds {
		changed = append(changed, fmt.Sprintf("RPO %d s → %d s", r.RPOSeconds, *u.RPO))
	}
	if u.Retention != nil {
		changed = append(changed, "retention")
	}
	if u.Bandwidth != nil && *u.Bandwidth != r.BandwidthLimit {
		changed = append(changed, fmt.Sprintf("bandwidth limit %d → %d bytes/s", r.BandwidthLimit, *u.Bandwidth))
	}
	if u.Name != nil || u.Description != nil {
		changed = append(changed, "name or description")
	}
	msg := "updated by " + caller.UserID
	if len(changed) > 0 {
		msg += ": " + strings.Join(changed, ", ")
	}
	nr, err := s.db.UpdateReplication(c.Request.Context(), r.ID, db.ProjectScope(r.ProjectID), f,
		db.ReplicationEventInput{Kind: db.RepEventUpdated, Message: msg, RequestID: requestIDOf(c)})
	if err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	s.kickScheduler()
	c.JSON(http.StatusOK, gin.H{"replication": ReplicationViewOf(nr, s.db.Now())})
}

func (s *Server) deleteReplication(c *gin.Context) {
	caller, r, ok := s.replicationFor(c, "replication:delete")
	if !ok || memberOfGroup(c, r, "delete") {
		return
	}
	keep := false
	if v := c.Query("keep_replica"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("keep_replica=%q is not a boolean.", truncate(v, 64)))
			return
		}
		keep = b
	}
	if r.Status == db.ReplicationDeleting {
		writeError(c, http.StatusConflict, fmt.Sprintf("Replication %s is being deleted already.", r.ID))
		return
	}
	// Before its cycle is cancelled: a failover's final cycle must run.
	if r.Status.InFailover() || r.FailoverID != nil {
		writeError(c, http.StatusConflict, fmt.Sprintf("A failover of replication %s is running.", r.ID))
		return
	}
	ctx := c.Request.Context()
	// A cycle that still runs is cancelled: the clean-up removes what it
	// writes.
	s.cancelCycle(ctx, r, "replication deleted by "+caller.UserID, requestIDOf(c))
	if _, err := s.db.DeleteReplication(ctx, r.ID, db.ProjectScope(r.ProjectID), keep, replicate.CleanupMessages); err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	s.hooks.Kick()
	s.kickScheduler()
	c.Status(http.StatusAccepted)
}

// cancelCycle asks the replication's running cycle, if any, to stop (best
// effort: a cycle that ends meanwhile is left as it ended).
func (s *Server) cancelCycle(ctx context.Context, r *db.Replication, why, rid string) {
	if r.LastTransferID == "" {
		return
	}
	if _, err := dispatch.CancelRunning(ctx, s.db, r.LastTransferID, why, rid, s.hooks.EndMessage); err != nil {
		s.log.Info("the running cycle of a deleted replication was not cancelled", "replication_id", r.ID, "transfer_id", r.LastTransferID, "error", err)
	}
}

func (s *Server) replicationAction(c *gin.Context) {
	var body map[string]json.RawMessage
	if !strictJSON(c, &body) {
		return
	}
	const usage = `{"sync": null}, {"pause": null}, {"resume": null}, {"drill": {"point": NAME}}, {"failover": {...}} or {"failback": null}`
	if len(body) != 1 {
		writeError(c, http.StatusBadRequest, "The action body must hold exactly one action: "+usage+".")
		return
	}
	var action string
	var arg json.RawMessage
	for k, v := range body {
		action, arg = k, v
	}
	rule := "replication:action"
	switch action {
	case "sync", "pause", "resume":
		if a := strings.TrimSpace(string(arg)); a != "null" && a != "{}" {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("The %s action takes no argument: {%q: null}.", action, action))
			return
		}
	case "drill":
		rule = "replication:drill"
	case "failover", "failback":
		rule = "replication:failover"
	default:
		writeError(c, http.StatusBadRequest, fmt.Sprintf("Unknown action %q: use %s.", truncate(action, 64), usage))
		return
	}
	caller, r, ok := s.replicationFor(c, rule)
	if !ok || action != "drill" && memberOfGroup(c, r, action) {
		return
	}
	ctx, rid := c.Request.Context(), requestIDOf(c)
	scope := db.ProjectScope(r.ProjectID)
	var err error
	switch action {
	case "sync":
		now := s.db.Now()
		_, err = s.db.UpdateReplication(ctx, r.ID, scope, db.ReplicationFields{NextRunAt: &now, ExpectStatus: []db.ReplicationStatus{db.ReplicationActive, db.ReplicationFailedOver}},
			db.ReplicationEventInput{Kind: db.RepEventUpdated, Message: "sync requested by " + caller.UserID, RequestID: rid})
		if err == nil {
			s.kickScheduler()
		}
	case "pause":
		_, err = s.db.SetReplicationStatus(ctx, r.ID, scope, db.ReplicationPaused, []db.ReplicationStatus{db.ReplicationActive},
			db.ReplicationEventInput{Kind: db.RepEventPaused, Message: "paused by " + caller.UserID, RequestID: rid})
	case "resume":
		// Due at once when it missed cycles: one catch-up cycle.
		_, err = s.db.SetReplicationStatus(ctx, r.ID, scope, db.ReplicationActive, []db.ReplicationStatus{db.ReplicationPaused, db.ReplicationError},
			db.ReplicationEventInput{Kind: db.RepEventResumed, Message: "resumed by " + caller.UserID, RequestID: rid})
		if err == nil {
			s.kickScheduler()
		}
	case "drill":
		s.startDrill(c, caller, r, arg)
		return
	case "failover":
		s.startFailover(c, caller, r, db.FailoverKindFailover, arg)
		return
	case "failback":
		s.startFailover(c, caller, r, db.FailoverKindFailback, arg)
		return
	}
	if err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	c.Status(http.StatusAccepted)
}

// drillRequest is the drill action's argument.
type drillRequest struct {
	Point string `json:"point"`
	Name  string `json:"name,omitempty"`
}

func (s *Server) startDrill(c *gin.Context, caller *Caller, r *db.Replication, arg json.RawMessage) {
	var req drillRequest
	if err := decodeStrict(bytes.NewReader(arg), 4096, &req); err != nil {
		writeError(c, statusOf(err), err.Error())
		return
	}
	switch {
	case req.Point == "":
		writeError(c, http.StatusBadRequest, `drill.point is required: {"drill": {"point": NAME}} (GET /v1/replications/{id}/points lists them).`)
		return
	case len(req.Point) > db.MaxNameLength:
		writeError(c, http.StatusBadRequest, fmt.Sprintf("drill.point is longer than %d characters.", db.MaxNameLength))
		return
	}
	if err := checkText("drill.name", req.Name, db.MaxNameLength); err != nil {
		writeError(c, http.StatusBadRequest, err.Error())
		return
	}
	if r.Status == db.ReplicationDeleting {
		writeError(c, http.StatusConflict, fmt.Sprintf("Replication %s is being deleted.", r.ID))
		return
	}
	if s.hooks.Cinder == nil {
		writeError(c, http.StatusNotImplemented, "Drills make Cinder volumes: Cinder is not configured in this deployment ([cinder] volume_pools).")
		return
	}
	ctx := c.Request.Context()
	points, err := s.db.ListPoints(ctx, r.ID)
	if err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	if !hasPoint(c, r, points, req.Point) {
		return
	}
	now := s.db.Now()
	id := uuid.NewString()
	d := &db.Drill{ID: id, ReplicationID: r.ID, ProjectID: r.ProjectID, Name: firstNonEmpty(req.Name, "drill of "+req.Point),
		Point: req.Point, Status: db.DrillCreating, Image: db.DrillImagePrefix + id, RequestedAt: now}
	if err := s.db.CreateDrill(ctx, d, db.ReplicationEventInput{Kind: db.RepEventDrill,
		Message: fmt.Sprintf("drill %s of point %s requested by %s", id, req.Point, caller.UserID), RequestID: requestIDOf(c)}); err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	if s.hooks.KickDrills != nil {
		s.hooks.KickDrills()
	}
	c.JSON(http.StatusAccepted, gin.H{"drill": DrillViewOf(d)})
}
