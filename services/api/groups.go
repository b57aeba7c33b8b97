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
	"github.com/ferry-project/ferry/db/state"
	"github.com/ferry-project/ferry/services/api/replicate"
)

// /v1/replication-groups (since 1.2): consistency groups. A group
// replicates a set of Cinder volumes of one project as a unit: each cycle
// snapshots every member at one instant (replicate.GroupRunner), and a
// group point exists when every member holds its part. Members are
// replications (their group_id set) that only the group schedules, pauses,
// changes or deletes. The replication:* policy rules apply.

// GroupSources is what creating a group asks Cinder beyond a volume: the
// volumes of a Cinder group (cinder.Service).
type GroupSources interface {
	GroupVolumes(ctx context.Context, token, region, id string) ([]string, error)
}

// GroupView is a group's REST form.
type GroupView struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Description    string            `json:"description"`
	ProjectID      string            `json:"project_id"`
	UserID         string            `json:"user_id"`
	Status         string            `json:"status"`
	Source         GroupSourceView   `json:"source"`
	Destination    GroupDestView     `json:"destination"`
	Interval       int               `json:"interval_seconds"`
	RPO            int               `json:"rpo_seconds"`
	Retention      RetentionSpec     `json:"retention"`
	BandwidthLimit int64             `json:"bandwidth_limit"`
	Members        []GroupMemberView `json:"members"`
	LastSyncAt     *string           `json:"last_sync_at"`
	LagSeconds     *int64            `json:"lag_seconds"`
	RPOBreached    bool              `json:"rpo_breached"`
	LastCycleID    *string           `json:"last_cycle_id"`
	LastError      *string           `json:"last_error"`
	PointsCount    int               `json:"points_count"`
	NextRunAt      *string           `json:"next_run_at"`
	Cycles         ReplicationCycles `json:"cycles"`
	CreatedAt      string            `json:"created_at"`
	UpdatedAt      string            `json:"updated_at"`
	// Failover is the group's newest failover or failback (null when
	// none).
	Failover *GroupFailoverView `json:"failover"`
}

// GroupFailoverView is a group failover's or failback's progress: the
// group's step, then each member's failover (by replication id).
type GroupFailoverView struct {
	ID          string            `json:"id"`
	Kind        string            `json:"kind"`
	Planned     bool              `json:"planned"`
	Force       bool              `json:"force"`
	Point       *string           `json:"point"`
	Step        string            `json:"step"`
	Status      string            `json:"status"`
	Error       *string           `json:"error"`
	Members     map[string]string `json:"members"`
	RequestedAt string            `json:"requested_at"`
	AvailableAt *string           `json:"available_at"`
	FinishedAt  *string           `json:"finished_at"`
	RTOSeconds  *float64          `json:"rto_seconds"`
}

// GroupSourceView is a group's source region.
type GroupSourceView struct {
	Region string `json:"region"`
}

// GroupDestView is a group's destination region and pool.
type GroupDestView struct {
	Region string `json:"region"`
	Pool   string `json:"pool"`
}

// GroupMemberView is one member of a group.
type GroupMemberView struct {
	ReplicationID string         `json:"replication_id"`
	VolumeID      *string        `json:"volume_id"`
	Status        string         `json:"status"`
	Source        GroupImageView `json:"source"`
	Destination   GroupImageView `json:"destination"`
}

// GroupImageView is a member's image on one side.
type GroupImageView struct {
	Pool  string `json:"pool"`
	Image string `json:"image"`
}

// GroupViewOf maps a stored group and its members to the REST form.
func GroupViewOf(g *db.ReplicationGroup, members []db.Replication, now time.Time) GroupView {
	keepH, keepD, keepL := g.KeepHourly, g.KeepDaily, g.KeepLast
	v := GroupView{
		ID: g.ID, Name: g.Name, Description: g.Description, ProjectID: g.ProjectID, UserID: g.UserID, Status: string(g.Status),
		Source: GroupSourceView{Region: g.SourceRegion}, Destination: GroupDestView{Region: g.DestRegion, Pool: g.DestPool},
		Interval: g.IntervalSeconds, RPO: g.RPOSeconds, Retention: RetentionSpec{KeepLast: &keepL, KeepHourly: &keepH, KeepDaily: &keepD},
		BandwidthLimit: g.BandwidthLimit, Members: make([]GroupMemberView, 0, len(members)),
		LastSyncAt: isoTimePtr(g.LastSyncAt), LastCycleID: strPtr(g.LastCycleID), LastError: g.LastError, PointsCount: g.PointsCount,
		Cycles:    ReplicationCycles{Completed: g.CyclesCompleted, Failed: g.CyclesFailed, Skipped: g.CyclesSkipped},
		CreatedAt: isoTime(g.CreatedAt), UpdatedAt: isoTime(g.UpdatedAt),
	}
	if g.Status.Schedules() && g.FailoverID == nil {
		v.NextRunAt = isoTimePtr(&g.NextRunAt)
	}
	if f := g.Failover(); f != nil {
		fv := &GroupFailoverView{ID: f.ID, Kind: string(f.Kind), Planned: f.Planned, Force: f.Force, Point: strPtr(f.Point),
			Step: f.Step, Status: string(f.Status), Error: strPtr(f.Error), Members: f.Members,
			RequestedAt: isoTime(f.RequestedAt), AvailableAt: isoTimePtr(f.AvailableAt), FinishedAt: isoTimePtr(f.FinishedAt)}
		if fv.Members == nil {
			fv.Members = map[string]string{}
		}
		if f.AvailableAt != nil {
			rto := f.AvailableAt.Sub(f.RequestedAt).Seconds()
			fv.RTOSeconds = &rto
		}
		v.Failover = fv
	}
	rpo := time.Duration(g.RPOSeconds) * time.Second
	if g.LastSyncAt != nil {
		lag := max(now.Sub(*g.LastSyncAt), 0)
		secs := int64(lag / time.Second)
		v.LagSeconds = &secs
		v.RPOBreached = lag > rpo
	} else {
		v.RPOBreached = now.Sub(g.CreatedAt) > rpo
	}
	for i := range members {
		m := &members[i]
		v.Members = append(v.Members, GroupMemberView{ReplicationID: m.ID, VolumeID: strPtr(m.SourceVolumeID), Status: string(m.Status),
			Source: GroupImageView{Pool: m.SourcePool, Image: m.SourceImage}, Destination: GroupImageView{Pool: m.DestPool, Image: m.DestImage}})
	}
	return v
}

// GroupPointView is a group point: the group cycle that made it and each
// member's part.
type GroupPointView struct {
	Name      string                 `json:"name"`
	CreatedAt string                 `json:"created_at"`
	Members   []GroupPointMemberView `json:"members"`
}

// GroupPointMemberView is one member's part of a group point.
type GroupPointMemberView struct {
	ReplicationID string  `json:"replication_id"`
	VolumeID      *string `json:"volume_id"`
	Point         string  `json:"point"`
}

// CreateGroupRequest is the body of POST /v1/replication-groups.
type CreateGroupRequest struct {
	Group *CreateGroup `json:"replication_group"`
}

// CreateGroup is what a caller asks for.
type CreateGroup struct {
	Name        string           `json:"name,omitempty"`
	Description string           `json:"description,omitempty"`
	Source      *GroupSourceSpec `json:"source"`
	Destination *DestSpec        `json:"destination"`
	Interval    *int             `json:"interval_seconds"`
	RPO         *int             `json:"rpo_seconds"`
	Retention   *RetentionSpec   `json:"retention"`
	Bandwidth   *int64           `json:"bandwidth_limit"`
}

// GroupSourceSpec names a group's volumes: a list, or a Cinder group.
type GroupSourceSpec struct {
	Region        string   `json:"region"`
	VolumeIDs     []string `json:"volume_ids,omitempty"`
	CinderGroupID string   `json:"cinder_group_id,omitempty"`
}

// UpdateGroupRequest is the body of PUT /v1/replication-groups/{id}.
type UpdateGroupRequest struct {
	Group *UpdateReplication `json:"replication_group"`
}

// ParseCreateGroup decodes and checks a group creation body.
func ParseCreateGroup(r io.Reader, maxBytes int64, minInterval int) (*CreateGroup, error) {
	var req CreateGroupRequest
	if err := decodeStrict(r, maxBytes, &req); err != nil {
		return nil, err
	}
	c := req.Group
	switch {
	case c == nil:
		return nil, invalid("the body must be {\"replication_group\": {...}}")
	case c.Source == nil:
		return nil, invalid("replication_group.source is required")
	case c.Destination == nil:
		return nil, invalid("replication_group.destination is required")
	case c.Interval == nil:
		return nil, invalid("replication_group.interval_seconds is required")
	case c.RPO == nil:
		return nil, invalid("replication_group.rpo_seconds is required")
	}
	s, d := c.Source, c.Destination
	switch {
	case s.Region == "":
		return nil, invalid("replication_group.source.region is required")
	case d.Region == "":
		return nil, invalid("replication_group.destination.region is required")
	case s.Region == d.Region:
		return nil, invalid("source and destination are both in region %q: a group protects volumes in another region", s.Region)
	case d.Image != "":
		return nil, invalid("replication_group.destination.image cannot be given: each replica is ferry-replica-<replication id>")
	case len(s.VolumeIDs) > 0 && s.CinderGroupID != "":
		return nil, invalid("replication_group.source takes volume_ids or cinder_group_id, not both")
	case len(s.VolumeIDs) == 0 && s.CinderGroupID == "":
		return nil, invalid("replication_group.source needs volume_ids (1 to %d) or cinder_group_id", db.MaxGroupMembers)
	case len(s.VolumeIDs) > db.MaxGroupMembers:
		return nil, invalid("replication_group.source.volume_ids lists %d volumes: at most %d", len(s.VolumeIDs), db.MaxGroupMembers)
	}
	for i, v := range s.VolumeIDs {
		id, ok := CanonicalUUID(v)
		if !ok {
			return nil, invalid("replication_group.source.volume_ids[%d] %q is not a UUID", i, truncate(v, 64))
		}
		if slices.Contains(s.VolumeIDs[:i], id) {
			return nil, invalid("replication_group.source.volume_ids lists %s twice", id)
		}
		s.VolumeIDs[i] = id
	}
	if s.CinderGroupID != "" {
		id, ok := CanonicalUUID(s.CinderGroupID)
		if !ok {
			return nil, invalid("replication_group.source.cinder_group_id %q is not a UUID", truncate(s.CinderGroupID, 64))
		}
		s.CinderGroupID = id
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
	}{
		{"replication_group.name", c.Name, db.MaxNameLength},
		{"replication_group.description", c.Description, db.MaxDescriptionLength},
		{"replication_group.source.region", s.Region, db.MaxNameLength},
		{"replication_group.destination.region", d.Region, db.MaxNameLength},
		{"replication_group.destination.pool", d.Pool, db.MaxNameLength},
	} {
		if err := checkText(f.name, f.v, f.max); err != nil {
			return nil, err
		}
	}
	if strings.ContainsAny(d.Pool, "/@") {
		return nil, invalid("replication_group.destination.pool %q is not a valid RBD name (no '/', '@')", d.Pool)
	}
	return c, nil
}

// groupFor finds the group of the path's id that the caller may see (404
// otherwise) and enforces rule on its project (403).
func (s *Server) groupFor(c *gin.Context, rule string) (*Caller, *db.ReplicationGroup, bool) {
	caller := s.hooks.CallerOf(c)
	if caller == nil {
		writeError(c, http.StatusUnauthorized, "Authentication required.")
		return nil, nil, false
	}
	id, ok := CanonicalUUID(c.Param("id"))
	if !ok {
		writeError(c, http.StatusNotFound, fmt.Sprintf("Replication group %q could not be found.", truncate(c.Param("id"), 64)))
		return nil, nil, false
	}
	g, err := s.db.GetGroup(c.Request.Context(), id, s.replicationScope(caller))
	if err != nil {
		s.dbError(c, err, "Replication group "+id)
		return nil, nil, false
	}
	if _, ok := s.authorize(c, rule, g.ProjectID); !ok {
		return nil, nil, false
	}
	return caller, g, true
}

// groupView reads the group's members and maps it.
func (s *Server) groupView(c *gin.Context, g *db.ReplicationGroup) (GroupView, bool) {
	members, err := s.db.GroupMembers(c.Request.Context(), g.ID)
	if err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return GroupView{}, false
	}
	return GroupViewOf(g, members, s.db.Now()), true
}

func (s *Server) createGroup(c *gin.Context) {
	caller, ok := s.authorize(c, "replication:create", s.callerProject(c))
	if !ok {
		return
	}
	req, err := ParseCreateGroup(c.Request.Body, int64(s.cfg.API.MaxRequestBodySize), s.cfg.API.ReplicationMinInterval)
	if err != nil {
		writeError(c, statusOf(err), err.Error())
		return
	}
	src, dst := req.Source, req.Destination
	for _, r := range []struct{ side, region string }{{"source", src.Region}, {"destination", dst.Region}} {
		if !slices.Contains(caller.Regions, r.region) {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("replication_group.%s.region %q is not a region with a volume-ferry endpoint (known: %s).",
				r.side, r.region, strings.Join(caller.Regions, ", ")))
			return
		}
	}
	if s.hooks.Cinder == nil {
		writeError(c, http.StatusNotImplemented, "Groups protect Cinder volumes: Cinder is not configured in this deployment ([cinder] volume_pools).")
		return
	}
	ctx, token := c.Request.Context(), c.GetHeader("X-Auth-Token")
	ids := src.VolumeIDs
	if src.CinderGroupID != "" {
		gs, ok := s.hooks.Cinder.(GroupSources)
		if !ok {
			writeError(c, http.StatusNotImplemented, "Cinder groups are not supported by this deployment's Cinder client.")
			return
		}
		ids, err = gs.GroupVolumes(ctx, token, src.Region, src.CinderGroupID)
		if !s.cinderError(c, err, "Group", src.CinderGroupID, src.Region) {
			return
		}
		if len(ids) > db.MaxGroupMembers {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("Cinder group %s has %d volumes: a replication group has at most %d.", src.CinderGroupID, len(ids), db.MaxGroupMembers))
			return
		}
	}
	now := s.db.Now()
	g := &db.ReplicationGroup{
		ID: uuid.NewString(), Name: req.Name, Description: req.Description,
		ProjectID: caller.ProjectID, UserID: caller.UserID, Status: db.ReplicationActive,
		SourceRegion: src.Region, DestRegion: dst.Region, DestPool: dst.Pool,
		IntervalSeconds: *req.Interval, RPOSeconds: *req.RPO,
		KeepLast: *req.Retention.KeepLast, KeepHourly: deref0(req.Retention.KeepHourly), KeepDaily: deref0(req.Retention.KeepDaily),
	}
	if req.Bandwidth != nil {
		g.BandwidthLimit = *req.Bandwidth
	}
	members := make([]*db.Replication, 0, len(ids))
	for _, id := range ids {
		sv, err := s.hooks.Cinder.ResolveVolume(ctx, token, caller.ProjectID, src.Region, id)
		if !s.cinderError(c, err, "Volume", id, src.Region) {
			return
		}
		if len(members) > 0 && sv.Spec.ProjectID != members[0].ProjectID {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("Volumes %s and %s are of different projects: a group's volumes are of one project.", members[0].SourceVolumeID, id))
			return
		}
		members = append(members, &db.Replication{
			Name: firstNonEmpty(sv.Spec.Name, id), ProjectID: sv.Spec.ProjectID, UserID: caller.UserID,
			SourceRegion: src.Region, SourcePool: sv.Pool, SourceImage: sv.Image, SourceVolumeID: sv.Spec.ID, DestRegion: dst.Region,
		})
	}
	g.ProjectID = members[0].ProjectID
	if g.DestPool == "" {
		g.DestPool = s.hooks.Cinder.VolumePool(dst.Region)
	}
	g.DestPool = firstNonEmpty(g.DestPool, members[0].SourcePool)
	for _, m := range members {
		m.DestPool = g.DestPool
	}
	g.NextRunAt = replicate.FirstRun(g.ID, now, time.Duration(g.IntervalSeconds)*time.Second)
	if err := s.db.CreateGroup(ctx, g, members, db.WithRequestID(requestIDOf(c))); err != nil {
		s.dbError(c, err, "Replication group")
		return
	}
	ms := make([]db.Replication, 0, len(members))
	for _, m := range members {
		ms = append(ms, *m)
	}
	s.kickGroups()
	c.JSON(http.StatusAccepted, gin.H{"replication_group": GroupViewOf(g, ms, now)})
}

func (s *Server) kickGroups() {
	if s.hooks.KickGroups != nil {
		s.hooks.KickGroups()
	}
}

func (s *Server) listGroups(c *gin.Context) {
	opts, ok := s.replicationListOpts(c)
	if !ok {
		return
	}
	items, more, err := s.db.ListGroups(c.Request.Context(), opts)
	if err != nil {
		s.dbError(c, err, "Replication group")
		return
	}
	views := make([]GroupView, 0, len(items))
	for i := range items {
		v, ok := s.groupView(c, &items[i])
		if !ok {
			return
		}
		views = append(views, v)
	}
	body := gin.H{"replication_groups": views}
	if more && len(items) > 0 {
		body["replication_groups_links"] = s.nextLink(c, groupsPath, items[len(items)-1].ID, opts.Limit)
	}
	c.JSON(http.StatusOK, body)
}

func (s *Server) showGroup(c *gin.Context) {
	_, g, ok := s.groupFor(c, "replication:get")
	if !ok {
		return
	}
	if v, ok := s.groupView(c, g); ok {
		c.JSON(http.StatusOK, gin.H{"replication_group": v})
	}
}

func (s *Server) groupPoints(c *gin.Context) {
	_, g, ok := s.groupFor(c, "replication:get")
	if !ok {
		return
	}
	points, err := s.db.GroupPoints(c.Request.Context(), g.ID)
	if err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return
	}
	vols := map[string]string{}
	members, err := s.db.GroupMembers(c.Request.Context(), g.ID)
	if err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return
	}
	for _, m := range members {
		vols[m.ID] = m.SourceVolumeID
	}
	out := make([]GroupPointView, 0, len(points))
	for i := range points {
		p := &points[i]
		v := GroupPointView{Name: p.ID, CreatedAt: isoTime(*p.SnapshotAt)}
		for _, m := range p.Members() {
			v.Members = append(v.Members, GroupPointMemberView{ReplicationID: m.ReplicationID, VolumeID: strPtr(vols[m.ReplicationID]), Point: m.Point()})
		}
		out = append(out, v)
	}
	c.JSON(http.StatusOK, gin.H{"points": out})
}

func (s *Server) groupDrills(c *gin.Context) {
	_, g, ok := s.groupFor(c, "replication:get")
	if !ok {
		return
	}
	drills, err := s.db.GroupDrills(c.Request.Context(), g.ID)
	if err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return
	}
	out := make([]DrillView, 0, len(drills))
	for i := range drills {
		out = append(out, DrillViewOf(&drills[i]))
	}
	c.JSON(http.StatusOK, gin.H{"drills": out})
}

func (s *Server) updateGroup(c *gin.Context) {
	caller, g, ok := s.groupFor(c, "replication:update")
	if !ok {
		return
	}
	var req UpdateGroupRequest
	if err := decodeStrict(c.Request.Body, int64(s.cfg.API.MaxRequestBodySize), &req); err != nil {
		writeError(c, statusOf(err), err.Error())
		return
	}
	b, _ := json.Marshal(UpdateReplicationRequest{Replication: req.Group})
	if req.Group == nil {
		writeError(c, http.StatusBadRequest, "The body must be {\"replication_group\": {...}}.")
		return
	}
	u, err := ParseUpdateReplication(bytes.NewReader(b), int64(s.cfg.API.MaxRequestBodySize), s.cfg.API.ReplicationMinInterval)
	if err != nil {
		writeError(c, statusOf(err), strings.ReplaceAll(err.Error(), "replication.", "replication_group."))
		return
	}
	f := db.ReplicationFields{Name: u.Name, Description: u.Description, IntervalSeconds: u.Interval, RPOSeconds: u.RPO, BandwidthLimit: u.Bandwidth}
	if u.Retention != nil {
		f.KeepLast, f.KeepHourly, f.KeepDaily = u.Retention.KeepLast, u.Retention.KeepHourly, u.Retention.KeepDaily
	}
	if u.Interval != nil {
		// A shorter interval takes effect now, not after the old one.
		if next := s.db.Now().Add(time.Duration(*u.Interval) * time.Second); next.Before(g.NextRunAt) {
			f.NextRunAt = &next
		}
	}
	ng, err := s.db.UpdateGroup(c.Request.Context(), g.ID, db.ProjectScope(g.ProjectID), f,
		db.ReplicationEventInput{Kind: db.RepEventUpdated, Message: "group " + g.ID + " updated by " + caller.UserID, RequestID: requestIDOf(c)})
	if err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return
	}
	s.kickGroups()
	if v, ok := s.groupView(c, ng); ok {
		c.JSON(http.StatusOK, gin.H{"replication_group": v})
	}
}

func (s *Server) deleteGroup(c *gin.Context) {
	caller, g, ok := s.groupFor(c, "replication:delete")
	if !ok {
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
	switch {
	case g.Status == db.ReplicationDeleting:
		writeError(c, http.StatusConflict, fmt.Sprintf("Replication group %s is being deleted already.", g.ID))
		return
	case g.Status.InFailover() || g.FailoverID != nil:
		writeError(c, http.StatusConflict, fmt.Sprintf("A failover of replication group %s is running.", g.ID))
		return
	}
	ctx := c.Request.Context()
	members, err := s.db.GroupMembers(ctx, g.ID)
	if err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return
	}
	for i := range members {
		s.cancelCycle(ctx, &members[i], "replication group deleted by "+caller.UserID, requestIDOf(c))
	}
	if _, err := s.db.DeleteGroup(ctx, g.ID, db.ProjectScope(g.ProjectID), keep, replicate.CleanupMessages); err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return
	}
	s.hooks.Kick()
	s.kickScheduler()
	s.kickGroups()
	c.Status(http.StatusAccepted)
}

func (s *Server) groupAction(c *gin.Context) {
	var body map[string]json.RawMessage
	if !strictJSON(c, &body) {
		return
	}
	const usage = `{"sync": null}, {"pause": null}, {"resume": null}, {"drill": {"point": NAME|"latest"}}, {"failover": {...}} or {"failback": null}`
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
	caller, g, ok := s.groupFor(c, rule)
	if !ok {
		return
	}
	ctx, rid := c.Request.Context(), requestIDOf(c)
	scope := db.ProjectScope(g.ProjectID)
	var ng *db.ReplicationGroup
	var err error
	switch action {
	case "sync":
		now := s.db.Now()
		ng, err = s.db.UpdateGroup(ctx, g.ID, scope, db.ReplicationFields{NextRunAt: &now, ExpectStatus: []db.ReplicationStatus{db.ReplicationActive, db.ReplicationFailedOver}},
			db.ReplicationEventInput{Kind: db.RepEventUpdated, Message: "group sync requested by " + caller.UserID, RequestID: rid})
	case "pause":
		ng, err = s.db.SetGroupStatus(ctx, g.ID, scope, db.ReplicationPaused, []db.ReplicationStatus{db.ReplicationActive},
			db.ReplicationEventInput{Kind: db.RepEventPaused, Message: "group paused by " + caller.UserID, RequestID: rid})
	case "resume":
		ng, err = s.db.SetGroupStatus(ctx, g.ID, scope, db.ReplicationActive, []db.ReplicationStatus{db.ReplicationPaused, db.ReplicationError},
			db.ReplicationEventInput{Kind: db.RepEventResumed, Message: "group resumed by " + caller.UserID, RequestID: rid})
	case "drill":
		s.startGroupDrill(c, caller, g, arg)
		return
	case "failover":
		s.startGroupFailover(c, caller, g, db.FailoverKindFailover, arg)
		return
	case "failback":
		s.startGroupFailover(c, caller, g, db.FailoverKindFailback, arg)
		return
	}
	if err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return
	}
	s.kickGroups()
	if v, ok := s.groupView(c, ng); ok {
		c.JSON(http.StatusAccepted, gin.H{"replication_group": v})
	}
}

// groupPoint finds the group point named point ("latest": the newest); a
// missing one is a 404 written.
func (s *Server) groupPoint(c *gin.Context, g *db.ReplicationGroup, point string) (*db.GroupCycle, bool) {
	points, err := s.db.GroupPoints(c.Request.Context(), g.ID)
	if err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return nil, false
	}
	for i := range points {
		if points[i].ID == point || point == "latest" {
			return &points[i], true
		}
	}
	msg := fmt.Sprintf("Point %q of replication group %s could not be found.", truncate(point, 64), g.ID)
	if point == "latest" {
		msg = fmt.Sprintf("Replication group %s has no point yet.", g.ID)
	}
	writeError(c, http.StatusNotFound, msg)
	return nil, false
}

// startGroupDrill makes one drill per member of a group point, in one
// transaction: each a clone of the member's part, registered as a Cinder
// volume by the drill runner.
func (s *Server) startGroupDrill(c *gin.Context, caller *Caller, g *db.ReplicationGroup, arg json.RawMessage) {
	var req drillRequest
	if err := decodeStrict(bytes.NewReader(arg), 4096, &req); err != nil {
		writeError(c, statusOf(err), err.Error())
		return
	}
	switch {
	case req.Point == "":
		writeError(c, http.StatusBadRequest, `drill.point is required: {"drill": {"point": NAME|"latest"}} (GET /v1/replication-groups/{id}/points lists them).`)
		return
	case len(req.Point) > db.MaxNameLength:
		writeError(c, http.StatusBadRequest, fmt.Sprintf("drill.point is longer than %d characters.", db.MaxNameLength))
		return
	}
	if err := checkText("drill.name", req.Name, db.MaxNameLength); err != nil {
		writeError(c, http.StatusBadRequest, err.Error())
		return
	}
	if g.Status == db.ReplicationDeleting {
		writeError(c, http.StatusConflict, fmt.Sprintf("Replication group %s is being deleted.", g.ID))
		return
	}
	if s.hooks.Cinder == nil {
		writeError(c, http.StatusNotImplemented, "Drills make Cinder volumes: Cinder is not configured in this deployment ([cinder] volume_pools).")
		return
	}
	p, ok := s.groupPoint(c, g, req.Point)
	if !ok {
		return
	}
	name := firstNonEmpty(req.Name, "drill of group point "+p.ID)
	var drills []*db.Drill
	now := s.db.Now()
	for _, m := range p.Members() {
		id := uuid.NewString()
		drills = append(drills, &db.Drill{ID: id, ReplicationID: m.ReplicationID, Name: name, Point: m.Point(), GroupID: g.ID,
			Status: db.DrillCreating, Image: db.DrillImagePrefix + id, RequestedAt: now})
	}
	if err := s.db.CreateDrills(c.Request.Context(), drills, db.ReplicationEventInput{Kind: db.RepEventDrill,
		Message: fmt.Sprintf("drill of group %s point %s requested by %s", g.ID, p.ID, caller.UserID), RequestID: requestIDOf(c)}); err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return
	}
	if s.hooks.KickDrills != nil {
		s.hooks.KickDrills()
	}
	out := make([]DrillView, 0, len(drills))
	for _, d := range drills {
		out = append(out, DrillViewOf(d))
	}
	c.JSON(http.StatusAccepted, gin.H{"drills": out})
}

// memberOfGroup refuses (409, written) an action on a group's member that
// only its group may take.
func memberOfGroup(c *gin.Context, r *db.Replication, what string) bool {
	if r.GroupID == nil {
		return false
	}
	writeError(c, http.StatusConflict, fmt.Sprintf("Replication %s is a member of replication group %s: %s the group (%s/%s).", r.ID, *r.GroupID, what, groupsPath, *r.GroupID))
	return true
}

// startGroupFailover takes a group's failover and failback actions: the
// checks the caller must hear of at once (status, point, an attached
// member), then one transaction moves the group to failing_over
// (failing_back) with its failover recorded; a concurrent one gets 409.
// The group runner does the rest (replicate.GroupStepQuiesce…).
func (s *Server) startGroupFailover(c *gin.Context, caller *Caller, g *db.ReplicationGroup, kind db.FailoverKind, arg json.RawMessage) {
	req, ok := parseFailoverAction(c, kind, arg)
	if !ok {
		return
	}
	planned := req.Point == ""
	from, to := state.FailoverFrom(kind == db.FailoverKindFailback, planned), db.ReplicationFailingOver
	if kind == db.FailoverKindFailback {
		to = db.ReplicationFailingBack
	}
	if !slices.Contains(from, g.Status) || g.FailoverID != nil {
		writeError(c, http.StatusConflict, fmt.Sprintf("Replication group %s is %s: a %s needs it %s, with no failover running.", g.ID, g.Status, failoverWhat(kind, planned), joinStatuses(from)))
		return
	}
	if s.hooks.Failovers == nil {
		writeError(c, http.StatusNotImplemented, "Failovers make Cinder volumes: Cinder is not configured in this deployment ([cinder] volume_pools).")
		return
	}
	ctx := c.Request.Context()
	point := ""
	if !planned {
		p, ok := s.groupPoint(c, g, req.Point)
		if !ok {
			return
		}
		point = p.ID
	} else if kind == db.FailoverKindFailover {
		points, err := s.db.GroupPoints(ctx, g.ID)
		if err != nil {
			s.dbError(c, err, "Replication group "+g.ID)
			return
		}
		if len(points) == 0 {
			writeError(c, http.StatusConflict, fmt.Sprintf("Replication group %s has no point yet: nothing to fail over to.", g.ID))
			return
		}
	}
	if planned && !req.Force {
		members, err := s.db.GroupMembers(ctx, g.ID)
		if err != nil {
			s.dbError(c, err, "Replication group "+g.ID)
			return
		}
		for _, m := range members {
			if m.SourceVolumeID == "" {
				continue
			}
			st, err := s.hooks.Failovers.InspectVolume(ctx, m.SourceRegion, m.ProjectID, m.SourceVolumeID)
			switch {
			case err != nil:
				writeError(c, http.StatusServiceUnavailable, fmt.Sprintf("Member volume %s in %s could not be read in Cinder (%v): a planned %s needs it.", m.SourceVolumeID, m.SourceRegion, err, kind))
				return
			case st.Attached:
				writeError(c, http.StatusConflict, fmt.Sprintf("Member volume %s in %s is attached: detach it first, or force the %s (its writes after the final point are preserved, not replicated).", m.SourceVolumeID, m.SourceRegion, kind))
				return
			}
		}
	}
	f := &db.GroupFailover{ID: uuid.NewString(), Kind: kind, Planned: planned, Force: req.Force, RequestedPoint: req.Point, Point: point,
		UserID: caller.UserID, RequestID: requestIDOf(c)}
	first := replicate.GroupStepMembers
	if planned {
		first = replicate.GroupStepQuiesce
	}
	ng, err := s.db.StartGroupFailover(ctx, g.ID, db.ProjectScope(g.ProjectID), f, first, to, from)
	if err != nil {
		s.dbError(c, err, "Replication group "+g.ID)
		return
	}
	s.kickGroups()
	if v, ok := s.groupView(c, ng); ok {
		c.JSON(http.StatusAccepted, gin.H{"replication_group": v})
	}
}
