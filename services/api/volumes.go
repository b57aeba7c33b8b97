package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/api/cinder"
)

// CinderSources resolves Cinder volumes into RBD images (cinder.Service).
type CinderSources interface {
	VolumePool(region string) string
	ResolveVolume(ctx context.Context, token, callerProject, region, id string) (*cinder.SourceVolume, error)
}

// volumeSource fills t from the caller's Cinder volume: the RBD image behind
// it, the destination pool of the region's Cinder backend, a full copy into
// a new image that finalization hands to Cinder, and the owner's project.
// A refusal is written and false returned.
func (s *Server) volumeSource(c *gin.Context, caller *Caller, req *CreateTransfer, t *db.Transfer) bool {
	src, dst := req.Source, req.Destination
	switch {
	case s.hooks.Cinder == nil:
		writeError(c, http.StatusNotImplemented, "Cinder volume sources are not configured in this deployment ([cinder] volume_pools).")
		return false
	case dst.Pool != "" || dst.Image != "":
		writeError(c, http.StatusBadRequest, "transfer.destination.pool and image cannot be given with a volume source: the copy becomes a Cinder volume in the destination region's Cinder pool.")
		return false
	case src.Snapshot != "":
		writeError(c, http.StatusBadRequest, "transfer.source.snapshot cannot be given with a volume source: Ferry takes its own snapshot of the volume.")
		return false
	case t.Mode == db.ModeIncremental:
		writeError(c, http.StatusBadRequest, "transfer.mode incremental is not possible for a volume source: each transfer makes a new Cinder volume, copied in full.")
		return false
	}
	dstPool := s.hooks.Cinder.VolumePool(dst.Region)
	if dstPool == "" {
		writeError(c, http.StatusBadRequest, fmt.Sprintf("transfer.destination.region %q has no Cinder volume backend known to Ferry.", dst.Region))
		return false
	}
	sv, err := s.hooks.Cinder.ResolveVolume(c.Request.Context(), c.GetHeader("X-Auth-Token"), caller.ProjectID, src.Region, src.VolumeID)
	switch {
	case errors.Is(err, cinder.ErrNotFound):
		writeError(c, http.StatusNotFound, fmt.Sprintf("Volume %s could not be found in region %s.", src.VolumeID, src.Region))
		return false
	case errors.Is(err, cinder.ErrInvalid), errors.Is(err, cinder.ErrNotConfigured):
		writeError(c, http.StatusBadRequest, capitalize(errorDetail(err))+".")
		return false
	case err != nil:
		s.log.Error("resolving a volume source", "volume_id", src.VolumeID, "region", src.Region, "error", err)
		writeError(c, http.StatusServiceUnavailable, fmt.Sprintf("Cinder in region %s could not be asked about volume %s; try again later.", src.Region, src.VolumeID))
		return false
	}
	spec := sv.Spec.Marshal()
	t.Mode = db.ModeFull
	t.SourceVolumeID, t.SourcePool, t.SourceImage = sv.Spec.ID, sv.Pool, sv.Image
	t.DestPool, t.DestImage = dstPool, "ferry-"+t.ID
	t.OwnerProjectID, t.CinderSpec = sv.Spec.ProjectID, &spec
	return true
}

// errorDetail drops the sentinel's own text from "invalid: volume x is ...".
func errorDetail(err error) string {
	msg := err.Error()
	for _, sentinel := range []error{cinder.ErrInvalid, cinder.ErrNotConfigured, cinder.ErrNotFound} {
		if p := sentinel.Error() + ": "; len(msg) > len(p) && msg[:len(p)] == p {
			return msg[len(p):]
		}
	}
	return msg
}

func capitalize(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
