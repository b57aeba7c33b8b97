package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/api/dispatch"
)

// Caller is who makes a request, as the authentication middleware found
// it. Ferry keeps ids, never the token.
type Caller struct {
	UserID    string
	ProjectID string
	Roles     []string
	// Regions are the regions where the caller's catalog has a
	// volume-ferry endpoint: the regions a transfer may name.
	Regions []string
	// creds is what the policy engine evaluates (*auth.Context).
	creds any
}

// Hooks are ferry-api's collaborators, behind functions so that the
// handlers are tested with fakes and wired to Keystone, the policy engine
// and the dispatcher in Run.
type Hooks struct {
	// Authenticate is the middleware that identifies the caller (401s).
	Authenticate gin.HandlerFunc
	// CallerOf returns the caller the middleware found.
	CallerOf func(*gin.Context) *Caller
	// Allowed enforces a policy rule on a target.
	Allowed func(rule string, c *Caller, target map[string]string) bool
	// StartMessage builds the outbox row that dispatches a transfer.
	StartMessage func(ctx context.Context, t *db.Transfer) (*db.OutboxMessage, error)
	// CancelMessage builds the outbox row that stops a running transfer.
	CancelMessage func(ctx context.Context, t *db.Transfer) (*db.OutboxMessage, error)
	// CleanupMessages builds the clean-up of a failed or cancelled
	// transfer's leftovers, sent when it is deleted before the garbage
	// collector got to it (nil: none).
	CleanupMessages func(t *db.Transfer) ([]*db.OutboxMessage, error)
	// Kick wakes the outbox publisher after a write.
	Kick func()
	// EndMessage builds the transfer.end notification of a transfer the
	// API ends (a cancel of a queued one); nil: none.
	EndMessage dispatch.EndNotifier
	// KickScheduler wakes the replication scheduler (a new replication,
	// a sync, a resume); KickDrills the drill runner. nil: none runs.
	KickScheduler, KickDrills func()
	// KickFailovers wakes the failover runner; nil: none runs.
	KickFailovers func()
	// KickGroups wakes the group runner; nil: none runs.
	KickGroups func()
	// Failovers reads the old primary volume of a failover; nil: Cinder
	// is not configured (failovers are 501).
	Failovers FailoverVolumes
	// Cinder resolves volume sources; nil: they are not configured (501).
	Cinder CinderSources
}

// routes adds /v1.
func (s *Server) routes(r *gin.Engine) {
	if s.hooks.Authenticate == nil {
		return
	}
	v1 := r.Group("/v1", microversion(), s.hooks.Authenticate, jsonBody())
	v1.POST("/transfers", s.createTransfer)
	v1.GET("/transfers", s.listTransfers)
	v1.GET("/transfers/:id", s.showTransfer)
	v1.GET("/transfers/:id/events", s.transferEvents)
	v1.POST("/transfers/:id/action", s.transferAction)
	v1.DELETE("/transfers/:id", s.deleteTransfer)
	// Replications are since 1.1: an older request sees no such path.
	rep := r.Group(replicationsPath, microversion(), since(replicationsSince), s.hooks.Authenticate, jsonBody())
	rep.POST("", s.createReplication)
	rep.GET("", s.listReplications)
	rep.GET("/:id", s.showReplication)
	rep.PUT("/:id", s.updateReplication)
	rep.DELETE("/:id", s.deleteReplication)
	rep.GET("/:id/points", s.replicationPoints)
	rep.GET("/:id/events", s.replicationEvents)
	rep.GET("/:id/drills", s.replicationDrills)
	rep.GET("/:id/failovers", s.replicationFailovers)
	rep.GET("/:id/failovers/:fid", s.showFailover)
	rep.POST("/:id/action", s.replicationAction)
	// Replication groups are since 1.2.
	grp := r.Group(groupsPath, microversion(), since(groupsSince), s.hooks.Authenticate, jsonBody())
	grp.POST("", s.createGroup)
	grp.GET("", s.listGroups)
	grp.GET("/:id", s.showGroup)
	grp.PUT("/:id", s.updateGroup)
	grp.DELETE("/:id", s.deleteGroup)
	grp.GET("/:id/points", s.groupPoints)
	grp.GET("/:id/drills", s.groupDrills)
	grp.POST("/:id/action", s.groupAction)
	v1.GET("/services", s.listServices)
	// /metrics is for admins here; [api] metrics_listen serves it on an
	// address of its own instead (and not here).
	if s.cfg.API.MetricsListen == "" {
		r.GET("/metrics", s.hooks.Authenticate, func(c *gin.Context) {
			if _, ok := s.authorize(c, "metrics:get", s.callerProject(c)); !ok {
				return
			}
			c.Next()
		}, s.metrics.handler())
	}
}

func requestIDOf(c *gin.Context) string { return c.GetString("request_id") }

// authorize checks rule for the caller on a project's resource; a denial
// is written as 403 and false returned.
func (s *Server) authorize(c *gin.Context, rule, projectID string) (*Caller, bool) {
	caller := s.hooks.CallerOf(c)
	if caller == nil {
		writeError(c, http.StatusUnauthorized, "Authentication required.")
		return nil, false
	}
	if !s.hooks.Allowed(rule, caller, map[string]string{"project_id": projectID}) {
		writeError(c, http.StatusForbidden, fmt.Sprintf("Policy doesn't allow %s to be performed.", rule))
		return nil, false
	}
	return caller, true
}

// transferFor finds the transfer of the path's id that the caller may see
// (404 otherwise) and enforces rule with the transfer's own project as the
// target (403): what a caller may do to a transfer depends on whose it
// is, not on the project of the caller's token.
func (s *Server) transferFor(c *gin.Context, rule string) (*Caller, *db.Transfer, bool) {
	caller := s.hooks.CallerOf(c)
	if caller == nil {
		writeError(c, http.StatusUnauthorized, "Authentication required.")
		return nil, nil, false
	}
	t, ok := s.visible(c, caller)
	if !ok {
		return nil, nil, false
	}
	if _, ok := s.authorize(c, rule, t.ProjectID); !ok {
		return nil, nil, false
	}
	return caller, t, true
}

func (s *Server) createTransfer(c *gin.Context) {
	caller, ok := s.authorize(c, "transfer:create", s.callerProject(c))
	if !ok {
		return
	}
	// The body is checked before the rest of the policy: a bad body is a
	// 400 whoever sends it.
	req, err := ParseCreate(c.Request.Body, int64(s.cfg.API.MaxRequestBodySize))
	if err != nil {
		writeError(c, statusOf(err), err.Error())
		return
	}
	if !s.hooks.Allowed("transfer:create", caller, map[string]string{"project_id": caller.ProjectID}) {
		writeError(c, http.StatusForbidden, "Policy doesn't allow transfer:create to be performed.")
		return
	}
	src, dst := req.Source, req.Destination
	// A raw RBD image has no project: by default only admins name one.
	if src.VolumeID == "" && src.BackupID == "" && !s.hooks.Allowed("transfer:create:image_source", caller, map[string]string{"project_id": caller.ProjectID}) {
		writeError(c, http.StatusForbidden, "Policy doesn't allow transfer:create:image_source to be performed: name a volume instead of a pool and image.")
		return
	}
	for _, r := range []struct{ side, region string }{{"source", src.Region}, {"destination", dst.Region}} {
		if !slices.Contains(caller.Regions, r.region) {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("transfer.%s.region %q is not a region with a volume-ferry endpoint (known: %s).",
				r.side, r.region, strings.Join(caller.Regions, ", ")))
			return
		}
	}
	mode, _ := db.ParseMode(req.Mode)
	t := &db.Transfer{
		ID: uuid.NewString(), Name: req.Name, Description: req.Description,
		ProjectID: caller.ProjectID, UserID: caller.UserID, Mode: mode,
		SourceRegion: src.Region, SourcePool: src.Pool, SourceImage: src.Image, SourceSnapshot: src.Snapshot,
		DestRegion: dst.Region, DestPool: firstNonEmpty(dst.Pool, src.Pool), DestImage: firstNonEmpty(dst.Image, src.Image),
	}
	if src.VolumeID != "" && !s.volumeSource(c, caller, req, t) {
		return
	}
	if src.BackupID != "" && !s.backupSource(c, caller, req, t) {
		return
	}
	msg, err := s.hooks.StartMessage(c.Request.Context(), t)
	if err != nil {
		s.dbError(c, err, "Transfer")
		return
	}
	quota := db.Quota{Transfers: s.cfg.API.QuotaTransfers, BytesInFlight: int64(s.cfg.API.QuotaBytesInFlight), NewBytes: knownSize(t)}
	if err := s.db.CreateTransfer(c.Request.Context(), t, msg, db.WithRequestID(requestIDOf(c)), db.WithQuota(quota)); err != nil {
		s.dbError(c, err, "Transfer")
		return
	}
	s.hooks.Kick()
	c.JSON(http.StatusAccepted, gin.H{"transfer": transferView(c, t)})
}

// knownSize is what a new transfer will copy at most, when the API knows
// it: a Cinder volume's size (a raw image's is reported by its agent).
func knownSize(t *db.Transfer) int64 {
	if t.CinderSpec == nil || t.SourceVolumeID == "" {
		return 0
	}
	var spec struct {
		SizeGiB int64 `json:"size_gib"`
	}
	if json.Unmarshal([]byte(*t.CinderSpec), &spec) != nil || spec.SizeGiB <= 0 {
		return 0
	}
	return spec.SizeGiB << 30
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// scopeFor is the caller's project, or every project for an admin asking
// all_projects.
func (s *Server) scopeFor(c *gin.Context, caller *Caller) (db.Scope, bool) {
	v := c.Query("all_projects")
	if v == "" {
		return db.ProjectScope(caller.ProjectID), true
	}
	all, err := strconv.ParseBool(v)
	if err != nil {
		writeError(c, http.StatusBadRequest, fmt.Sprintf("all_projects=%q is not a boolean.", truncate(v, 64)))
		return db.Scope{}, false
	}
	if !all {
		return db.ProjectScope(caller.ProjectID), true
	}
	if !s.hooks.Allowed("transfer:get_all_projects", caller, map[string]string{"project_id": caller.ProjectID}) {
		writeError(c, http.StatusForbidden, "Policy doesn't allow transfer:get_all_projects to be performed.")
		return db.Scope{}, false
	}
	return db.AllProjectsScope(), true
}

// visible is GetTransfer in the caller's scope: another project's transfer
// is a 404, never a 403 (its existence is not disclosed).
func (s *Server) visible(c *gin.Context, caller *Caller) (*db.Transfer, bool) {
	scope := db.ProjectScope(caller.ProjectID)
	if s.hooks.Allowed("transfer:get_all_projects", caller, map[string]string{"project_id": caller.ProjectID}) {
		scope = db.AllProjectsScope()
	}
	// Not a UUID: no transfer has that id (404, not 400: the CLI looks a
	// name up when an id is not found).
	id, ok := CanonicalUUID(c.Param("id"))
	if !ok {
		writeError(c, http.StatusNotFound, fmt.Sprintf("Transfer %q could not be found.", truncate(c.Param("id"), 64)))
		return nil, false
	}
	t, err := s.db.GetTransfer(c.Request.Context(), id, scope)
	if err != nil {
		s.dbError(c, err, "Transfer "+id)
		return nil, false
	}
	return t, true
}

func (s *Server) listTransfers(c *gin.Context) {
	caller, ok := s.authorize(c, "transfer:get_all", s.callerProject(c))
	if !ok {
		return
	}
	scope, ok := s.scopeFor(c, caller)
	if !ok {
		return
	}
	limit := s.cfg.API.DefaultPageSize
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("limit=%q must be a positive integer.", truncate(v, 64)))
			return
		}
		limit = min(n, s.cfg.API.MaxPageSize)
	}
	opts := db.ListOpts{Scope: scope, Limit: limit, Marker: c.Query("marker"), SortKey: c.Query("sort_key"), SortDir: c.Query("sort_dir")}
	if v := c.Query("status"); v != "" {
		st, err := db.ParseStatus(v)
		if err != nil {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("status=%q is not a transfer status.", truncate(v, 64)))
			return
		}
		opts.Status = st
	}
	for _, f := range []struct {
		param string
		into  *string
	}{{"source_region", &opts.SourceRegion}, {"destination_region", &opts.DestRegion}} {
		if v := c.Query(f.param); v != "" {
			if len(v) > db.MaxNameLength {
				writeError(c, http.StatusBadRequest, fmt.Sprintf("%s is longer than %d characters.", f.param, db.MaxNameLength))
				return
			}
			*f.into = v
		}
	}
	// replication_id is a filter since 1.1; before, an unknown parameter
	// is ignored, as any other.
	if v := c.Query("replication_id"); v != "" && atLeast(c, "1.1") {
		id, ok := CanonicalUUID(v)
		if !ok {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("replication_id=%q is not a UUID.", truncate(v, 64)))
			return
		}
		opts.ReplicationID = id
	}
	if !s.canonicalMarker(c, &opts) {
		return
	}
	items, more, err := s.db.ListTransfers(c.Request.Context(), opts)
	if err != nil {
		s.dbError(c, err, "Transfer")
		return
	}
	views := make([]any, 0, len(items))
	for i := range items {
		views = append(views, transferView(c, &items[i]))
	}
	body := gin.H{"transfers": views}
	if more && len(items) > 0 {
		body["transfers_links"] = s.nextLink(c, "/v1/transfers", items[len(items)-1].ID, limit)
	}
	c.JSON(http.StatusOK, body)
}

// callerProject is the caller's own project, the target of list rules.
func (s *Server) callerProject(c *gin.Context) string {
	if caller := s.hooks.CallerOf(c); caller != nil {
		return caller.ProjectID
	}
	return ""
}

func (s *Server) showTransfer(c *gin.Context) {
	_, t, ok := s.transferFor(c, "transfer:get")
	if !ok {
		return
	}
	c.JSON(http.StatusOK, gin.H{"transfer": transferView(c, t)})
}

func (s *Server) transferEvents(c *gin.Context) {
	_, t, ok := s.transferFor(c, "transfer:events")
	if !ok {
		return
	}
	events, err := s.db.ListEvents(c.Request.Context(), t.ID)
	if err != nil {
		s.dbError(c, err, "Transfer "+t.ID)
		return
	}
	out := make([]gin.H, 0, len(events))
	for _, e := range events {
		out = append(out, gin.H{
			"created_at": isoTime(e.CreatedAt), "kind": string(e.Kind), "from_status": strPtr(string(e.FromStatus)),
			"to_status": strPtr(string(e.ToStatus)), "message": e.Message, "request_id": strPtr(e.RequestID),
		})
	}
	c.JSON(http.StatusOK, gin.H{"events": out})
}

func (s *Server) transferAction(c *gin.Context) {
	var body map[string]any
	dec := strictJSON(c, &body)
	if !dec {
		return
	}
	if len(body) != 1 {
		writeError(c, http.StatusBadRequest, `The action body must hold exactly one action: {"cancel": null} or {"retry": null}.`)
		return
	}
	var action string
	for k := range body {
		action = k
	}
	if action != "cancel" && action != "retry" {
		writeError(c, http.StatusBadRequest, fmt.Sprintf("Unknown action %q: use cancel or retry.", action))
		return
	}
	caller, t, ok := s.transferFor(c, "transfer:"+action)
	if !ok {
		return
	}
	if action == "retry" && t.ReplicationID != "" {
		writeError(c, http.StatusConflict, fmt.Sprintf("Transfer %s is a cycle of replication %s: a failed cycle is not retried, the next cycle replaces it (POST /v1/replications/%s/action {\"sync\": null} runs one now).",
			t.ID, t.ReplicationID, t.ReplicationID))
		return
	}
	rid := requestIDOf(c)
	ctx := c.Request.Context()
	var err error
	switch action {
	case "retry":
		_, err = s.db.TransitionTransfer(ctx, t.ID, db.StatusQueued, db.TransitionOpts{
			ExpectFrom: []db.Status{db.StatusError}, RequestID: rid, Message: "retry requested by " + caller.UserID,
			Outbox: func(nt *db.Transfer) (*db.OutboxMessage, error) { return s.hooks.StartMessage(ctx, nt) }})
	case "cancel":
		if t.Status == db.StatusQueued {
			// Nothing runs yet. A start already published may still
			// reach an agent: its "accepted" report for a cancelled
			// transfer must be answered with a cancel (dispatcher).
			_, err = s.db.TransitionTransfer(ctx, t.ID, db.StatusCancelled, db.TransitionOpts{
				ExpectFrom: []db.Status{db.StatusQueued}, RequestID: rid, Message: "cancelled by " + caller.UserID,
				Outbox: s.hooks.EndMessage.For(db.StatusCancelled)})
			break
		}
		_, err = s.db.TransitionTransfer(ctx, t.ID, db.StatusCancelling, db.TransitionOpts{
			RequestID: rid, Message: "cancel requested by " + caller.UserID,
			Outbox: func(nt *db.Transfer) (*db.OutboxMessage, error) { return s.hooks.CancelMessage(ctx, nt) }})
	}
	if err != nil {
		s.dbError(c, err, "Transfer "+t.ID)
		return
	}
	s.hooks.Kick()
	c.Status(http.StatusAccepted)
}

func (s *Server) deleteTransfer(c *gin.Context) {
	_, t, ok := s.transferFor(c, "transfer:delete")
	if !ok {
		return
	}
	if !db.IsTerminal(t.Status) {
		writeError(c, http.StatusConflict, fmt.Sprintf("Transfer %s is %s: only completed, error or cancelled transfers can be deleted.", t.ID, t.Status))
		return
	}
	if err := s.db.DeleteTransferWith(c.Request.Context(), t.ID, db.ProjectScope(t.ProjectID), s.hooks.CleanupMessages); err != nil {
		s.dbError(c, err, "Transfer "+t.ID)
		return
	}
	c.Status(http.StatusNoContent)
}

func (s *Server) listServices(c *gin.Context) {
	if _, ok := s.authorize(c, "service:get_all", s.callerProject(c)); !ok {
		return
	}
	svcs, err := s.db.ListServices(c.Request.Context())
	if err != nil {
		s.dbError(c, err, "Service")
		return
	}
	now := s.db.Now()
	out := make([]gin.H, 0, len(svcs))
	for i := range svcs {
		sv := &svcs[i]
		state := "down"
		if db.ServiceIsUp(sv, now, secondsDur(s.cfg.API.AgentDownTime)) {
			state = "up"
		}
		status := "enabled"
		if sv.Disabled {
			status = "disabled"
		}
		svc := gin.H{"binary": sv.Binary, "host": sv.Host, "region": sv.Region, "state": state, "status": status,
			"version": sv.Version, "updated_at": isoTime(sv.LastHeartbeatAt), "ceph_health": cephHealthView(sv.Health())}
		if sv.BootID != "" {
			svc["running_transfers"] = len(sv.RunningIDs())
			svc["max_transfers"] = sv.Capacity
		}
		out = append(out, svc)
	}
	c.JSON(http.StatusOK, gin.H{"services": out})
}

// cephHealthView is an agent's last cluster health probe in the service
// list: null when it reported none (an agent before 1.2, or no probe yet).
func cephHealthView(h *db.ServiceHealth) gin.H {
	if h == nil {
		return nil
	}
	checks := make([]gin.H, 0, len(h.Checks))
	for _, c := range h.Checks {
		checks = append(checks, gin.H{"code": c.Code, "severity": c.Severity, "message": c.Message})
	}
	v := gin.H{"status": nil, "checks": checks, "others": h.Others, "error": nil, "checked_at": isoTime(h.CheckedAt)}
	if h.Status != "" {
		v["status"] = h.Status
	}
	if h.Error != "" {
		v["error"] = h.Error
	}
	return v
}

// jsonBody refuses a request body that is not JSON (415): a POST, PUT or
// PATCH with a body must say application/json (or a +json type) or say
// nothing, as OpenStack services assume JSON then.
func jsonBody() gin.HandlerFunc {
	return func(c *gin.Context) {
		r := c.Request
		if r.Method != http.MethodPost && r.Method != http.MethodPut && r.Method != http.MethodPatch || r.ContentLength == 0 {
			c.Next()
			return
		}
		ct := r.Header.Get("Content-Type")
		if ct == "" {
			c.Next()
			return
		}
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" && !(strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")) {
			writeError(c, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q is not supported: the body must be application/json.", truncate(ct, 64)))
			return
		}
		c.Next()
	}
}

// truncate shortens s (a client's value quoted in a message) to n bytes.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// strictJSON decodes a small JSON body into v; bad JSON is written as 400.
func strictJSON(c *gin.Context, v any) bool {
	body, err := io.ReadAll(io.LimitReader(c.Request.Body, 4096+1))
	if err != nil || len(body) > 4096 {
		writeError(c, http.StatusRequestEntityTooLarge, "Request body too large.")
		return false
	}
	if err := json.Unmarshal(body, v); err != nil {
		writeError(c, http.StatusBadRequest, "Malformed request body: "+jsonError(err))
		return false
	}
	return true
}

func secondsDur(n int) time.Duration { return time.Duration(n) * time.Second }
