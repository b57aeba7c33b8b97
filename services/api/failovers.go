package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/db/state"
	"github.com/ferry-project/ferry/services/api/cinder"
)

// Failover and failback of replications: the actions, the views and the
// listing (the runner, replicate.FailoverRunner, does the work).

// FailoverVolumes is what the failover actions read of Cinder
// (cinder.Service): the old primary volume's state and spec.
type FailoverVolumes interface {
	InspectVolume(ctx context.Context, region, project, id string) (*cinder.VolumeState, error)
}

// FailoverView is a failover or failback of a replication.
type FailoverView struct {
	ID              string       `json:"id"`
	ReplicationID   string       `json:"replication_id"`
	Kind            string       `json:"kind"` // failover or failback
	Planned         bool         `json:"planned"`
	Force           bool         `json:"force"`
	Point           *string      `json:"point"`
	Status          string       `json:"status"` // running, done, error
	Step            string       `json:"step"`
	From            FailoverSide `json:"from"`
	To              FailoverSide `json:"to"`
	FinalTransferID *string      `json:"final_transfer_id"`
	Preserved       *string      `json:"preserved_image"`
	PreservedBytes  int64        `json:"preserved_bytes"`
	RequestedAt     string       `json:"requested_at"`
	AvailableAt     *string      `json:"available_at"`
	FinishedAt      *string      `json:"finished_at"`
	RTOSeconds      *float64     `json:"rto_seconds"`
	Error           *string      `json:"error"`
	UserID          string       `json:"user_id"`
}

// FailoverSide is one side of a failover: the old primary (from) or the
// new one (to).
type FailoverSide struct {
	Region   string  `json:"region"`
	Pool     string  `json:"pool"`
	Image    string  `json:"image"`
	VolumeID *string `json:"volume_id"`
}

// FailoverViewOf maps a stored failover to its REST form.
func FailoverViewOf(f *db.Failover) FailoverView {
	v := FailoverView{
		ID: f.ID, ReplicationID: f.ReplicationID, Kind: string(f.Kind), Planned: f.Planned, Force: f.Force,
		Point: strPtr(f.Point), Status: string(f.Status), Step: f.Step,
		From:            FailoverSide{Region: f.FromRegion, Pool: f.FromPool, Image: f.FromImage, VolumeID: strPtr(f.FromVolumeID)},
		To:              FailoverSide{Region: f.ToRegion, Pool: f.ToPool, Image: f.ToImage, VolumeID: strPtr(f.ToVolumeID)},
		FinalTransferID: strPtr(f.FinalTransferID), Preserved: strPtr(f.Preserved), PreservedBytes: f.PreservedBytes,
		RequestedAt: isoTime(f.RequestedAt), AvailableAt: isoTimePtr(f.AvailableAt), FinishedAt: isoTimePtr(f.FinishedAt),
		Error: f.Error, UserID: f.UserID,
	}
	if f.AvailableAt != nil {
		rto := f.AvailableAt.Sub(f.RequestedAt).Seconds()
		v.RTOSeconds = &rto
	}
	return v
}

// failoverRequest is the failover and failback actions' argument.
type failoverRequest struct {
	Point string `json:"point,omitempty"`
	Force bool   `json:"force,omitempty"`
}

// parseFailoverAction decodes and checks a failover or failback action's
// argument (of a replication or a group): a failback takes no point, an
// unplanned failover (a point) needs force. A refusal is written and
// false returned.
func parseFailoverAction(c *gin.Context, kind db.FailoverKind, arg json.RawMessage) (failoverRequest, bool) {
	var req failoverRequest
	if a := strings.TrimSpace(string(arg)); a != "null" {
		if err := decodeStrict(bytes.NewReader(arg), 4096, &req); err != nil {
			writeError(c, statusOf(err), err.Error())
			return req, false
		}
	}
	switch planned := req.Point == ""; {
	case kind == db.FailoverKindFailback && !planned:
		writeError(c, http.StatusBadRequest, `failback takes no point: it is planned ({"failback": null} or {"failback": {"force": true}}).`)
		return req, false
	case !planned && !req.Force:
		writeError(c, http.StatusBadRequest, fmt.Sprintf(`An unplanned failover (to point %q) does not contact the source region: it needs "force": true.`, truncate(req.Point, 64)))
		return req, false
	case len(req.Point) > db.MaxNameLength:
		writeError(c, http.StatusBadRequest, fmt.Sprintf("failover.point is longer than %d characters.", db.MaxNameLength))
		return req, false
	}
	return req, true
}

// startFailover takes the failover and failback actions: the checks the
// caller must hear of at once (status, point, an attached volume), then
// one transaction moves the replication to failing_over (failing_back)
// with the failover recorded; a concurrent one gets 409. The runner does
// the rest; the answer is the failover (202).
func (s *Server) startFailover(c *gin.Context, caller *Caller, r *db.Replication, kind db.FailoverKind, arg json.RawMessage) {
	req, ok := parseFailoverAction(c, kind, arg)
	if !ok {
		return
	}
	planned := req.Point == ""
	from, to := state.FailoverFrom(kind == db.FailoverKindFailback, planned), db.ReplicationFailingOver
	if kind == db.FailoverKindFailback {
		to = db.ReplicationFailingBack
	}
	if !slices.Contains(from, r.Status) {
		code := http.StatusConflict
		writeError(c, code, fmt.Sprintf("Replication %s is %s: a %s needs it %s.", r.ID, r.Status, failoverWhat(kind, planned), joinStatuses(from)))
		return
	}
	if s.hooks.Failovers == nil {
		writeError(c, http.StatusNotImplemented, "Failovers make Cinder volumes: Cinder is not configured in this deployment ([cinder] volume_pools).")
		return
	}
	ctx := c.Request.Context()
	points, err := s.db.ListPoints(ctx, r.ID)
	if err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	point := ""
	switch {
	case planned:
		if len(points) == 0 && kind == db.FailoverKindFailover {
			writeError(c, http.StatusConflict, fmt.Sprintf("Replication %s has no point yet: nothing to fail over to.", r.ID))
			return
		}
	case req.Point == "latest":
		if len(points) == 0 {
			writeError(c, http.StatusConflict, fmt.Sprintf("Replication %s has no point yet: nothing to fail over to.", r.ID))
			return
		}
		newest := points[0]
		for _, p := range points[1:] {
			if p.CreatedAt.After(newest.CreatedAt) {
				newest = p
			}
		}
		point = newest.Name
	default:
		if !hasPoint(c, r, points, req.Point) {
			return
		}
		point = req.Point
	}
	// The old primary volume: attached → refused unless forced; its name,
	// description, metadata, bootable flag and type go to the new one.
	spec, readOnly := "", false
	if r.SourceVolumeID != "" {
		st, err := s.hooks.Failovers.InspectVolume(ctx, r.SourceRegion, r.ProjectID, r.SourceVolumeID)
		switch {
		case err != nil && planned:
			code := http.StatusServiceUnavailable
			if errors.Is(err, cinder.ErrNotFound) {
				code = http.StatusConflict
			}
			writeError(c, code, fmt.Sprintf("The source volume %s in %s could not be read in Cinder (%v): a planned %s needs it; an unplanned failover ({\"point\": \"latest\", \"force\": true}) does not.",
				r.SourceVolumeID, r.SourceRegion, err, kind))
			return
		case err == nil && st.Attached && !req.Force:
			writeError(c, http.StatusConflict, fmt.Sprintf("Volume %s in %s is attached: detach it first, or force the %s (its writes after the final point are preserved, not replicated).",
				r.SourceVolumeID, r.SourceRegion, kind))
			return
		case err == nil:
			b, _ := json.Marshal(st.Spec)
			spec = string(b)
			readOnly = st.ReadOnly
		}
	}
	if kind == db.FailoverKindFailback {
		// The original volume's own flag, as its failover found it.
		fos, err := s.db.ListFailovers(ctx, r.ID)
		if err != nil {
			s.dbError(c, err, "Replication "+r.ID)
			return
		}
		readOnly = false
		for _, f := range fos { // newest first
			if f.Kind == db.FailoverKindFailover && f.Status == db.FailoverDone {
				readOnly = f.OriginalReadOnly
				break
			}
		}
	}
	f := &db.Failover{
		ID: uuid.NewString(), ReplicationID: r.ID, UserID: caller.UserID, RequestID: requestIDOf(c),
		Kind: kind, Planned: planned, Force: req.Force, RequestedPoint: req.Point, Point: point, Spec: spec,
		OriginalReadOnly: readOnly,
	}
	if _, err := s.db.StartFailover(ctx, f, db.ProjectScope(r.ProjectID), to, from, db.ReplicationEventInput{
		Message: fmt.Sprintf("%s %s requested by %s", failoverWhat(kind, planned), f.ID, caller.UserID),
	}); err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	if s.hooks.KickFailovers != nil {
		s.hooks.KickFailovers()
	}
	c.JSON(http.StatusAccepted, gin.H{"failover": FailoverViewOf(f)})
}

func failoverWhat(kind db.FailoverKind, planned bool) string {
	switch {
	case kind == db.FailoverKindFailback:
		return "failback"
	case planned:
		return "planned failover"
	}
	return "unplanned failover"
}

func joinStatuses(ss []db.ReplicationStatus) string {
	out := make([]string, len(ss))
	for i, st := range ss {
		out[i] = string(st)
	}
	return strings.Join(out, " or ")
}

// replicationFailovers lists a replication's failovers and failbacks,
// newest first.
func (s *Server) replicationFailovers(c *gin.Context) {
	_, r, ok := s.replicationFor(c, "replication:get")
	if !ok {
		return
	}
	fos, err := s.db.ListFailovers(c.Request.Context(), r.ID)
	if err != nil {
		s.dbError(c, err, "Replication "+r.ID)
		return
	}
	out := make([]FailoverView, len(fos))
	for i := range fos {
		out[i] = FailoverViewOf(&fos[i])
	}
	c.JSON(http.StatusOK, gin.H{"failovers": out})
}

// showFailover shows one failover of a replication.
func (s *Server) showFailover(c *gin.Context) {
	_, r, ok := s.replicationFor(c, "replication:get")
	if !ok {
		return
	}
	f, err := s.db.GetFailover(c.Request.Context(), c.Param("fid"), db.ProjectScope(r.ProjectID))
	if err == nil && f.ReplicationID != r.ID {
		err = db.ErrNotFound
	}
	if err != nil {
		s.dbError(c, err, fmt.Sprintf("Failover %s of replication %s", truncate(c.Param("fid"), 64), r.ID))
		return
	}
	c.JSON(http.StatusOK, gin.H{"failover": FailoverViewOf(f)})
}

// hasPoint reports whether point is one of replication r's points, and
// writes the 404 when it is not.
func hasPoint(c *gin.Context, r *db.Replication, points []db.ReplicationPoint, point string) bool {
	if slices.ContainsFunc(points, func(p db.ReplicationPoint) bool { return p.Name == point }) {
		return true
	}
	writeError(c, http.StatusNotFound, fmt.Sprintf("Point %q of replication %s could not be found.", truncate(point, 64), r.ID))
	return false
}
