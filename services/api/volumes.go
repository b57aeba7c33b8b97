package api

import (
	"context"
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
	CheckVolumeQuota(ctx context.Context, token, region, project string, sizeGiB int) error
	BackupPool(region string) string
	ResolveBackup(ctx context.Context, token, callerProject, region, dstRegion, id string) (*cinder.SourceBackup, error)
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
	if !s.cinderError(c, err, "Volume", src.VolumeID, src.Region) {
		return false
	}
	// The copy becomes a volume of the owner's project there: a full
	// Cinder quota refuses it now, before the copy fills the pool.
	err = s.hooks.Cinder.CheckVolumeQuota(c.Request.Context(), c.GetHeader("X-Auth-Token"), dst.Region, sv.Spec.ProjectID, sv.Spec.SizeGiB)
	if !s.cinderError(c, err, "Volume", src.VolumeID, dst.Region) {
		return false
	}
	spec := sv.Spec.Marshal()
	t.Mode = db.ModeFull
	t.SourceVolumeID, t.SourcePool, t.SourceImage = sv.Spec.ID, sv.Pool, sv.Image
	t.DestPool, t.DestImage = dstPool, "ferry-"+t.ID
	t.OwnerProjectID, t.CinderSpec = sv.Spec.ProjectID, &spec
	return true
}

// backupSource fills t from the caller's Cinder backup: the base image of
// its chain in the source region's backup pool, read at the backup's own
// snapshot, into the same image in the destination's backup pool (an
// incremental copy when an earlier backup of the chain was moved before),
// then registered there by import-record for the backup's project.
func (s *Server) backupSource(c *gin.Context, caller *Caller, req *CreateTransfer, t *db.Transfer) bool {
	src, dst := req.Source, req.Destination
	switch {
	case s.hooks.Cinder == nil:
		writeError(c, http.StatusNotImplemented, "Cinder backup sources are not configured in this deployment ([cinder] backup_pools).")
		return false
	case dst.Pool != "" || dst.Image != "":
		writeError(c, http.StatusBadRequest, "transfer.destination.pool and image cannot be given with a backup source: the copy goes to the destination region's backup pool.")
		return false
	case src.Snapshot != "":
		writeError(c, http.StatusBadRequest, "transfer.source.snapshot cannot be given with a backup source: the backup names its snapshot.")
		return false
	}
	dstPool := s.hooks.Cinder.BackupPool(dst.Region)
	if dstPool == "" {
		writeError(c, http.StatusBadRequest, fmt.Sprintf("transfer.destination.region %q has no Cinder backup pool known to Ferry.", dst.Region))
		return false
	}
	sb, err := s.hooks.Cinder.ResolveBackup(c.Request.Context(), c.GetHeader("X-Auth-Token"), caller.ProjectID, src.Region, dst.Region, src.BackupID)
	if !s.cinderError(c, err, "Backup", src.BackupID, src.Region) {
		return false
	}
	spec := sb.Spec.Marshal()
	t.SourceBackupID, t.SourcePool, t.SourceImage, t.SourceSnapshot = sb.Spec.ID, sb.Pool, sb.Image, sb.SnapshotPattern
	t.DestPool, t.DestImage = dstPool, sb.Image
	t.OwnerProjectID, t.CinderSpec = sb.Spec.ProjectID, &spec
	return true
}
