package cinder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/backups"
)

// BackupSpec is what registering a copied backup needs: Cinder's export
// record of the source backup. It is kept as JSON in the transfer.
type BackupSpec struct {
	Kind      string `json:"kind"` // "backup"
	ID        string `json:"id"`
	ProjectID string `json:"project_id"`
	ParentID  string `json:"parent_id,omitempty"`
	// Service is the backup driver (the record's backup_service).
	Service string `json:"service"`
	// Record is the export record's backup_url, decoded (a JSON object of
	// the backup's fields).
	Record json.RawMessage `json:"record"`
}

// SourceBackup is a resolved backup source: the Ceph backup driver keeps
// a backup of an RBD volume as a snapshot backup.<id>.snap.<time> of a base
// image (volume-<volume id>.backup.<first backup id>) in its pool, one
// snapshot per backup of the chain.
type SourceBackup struct {
	Spec BackupSpec
	Pool string
	// Image is the base image; SnapshotPattern matches the backup's one
	// snapshot (only the image knows its time).
	Image, SnapshotPattern string
}

// Marshal returns spec as the JSON kept in the transfer.
func (b BackupSpec) Marshal() string {
	out, _ := json.Marshal(b)
	return string(out)
}

// ParseBackupSpec reads a transfer's cinder_spec.
func ParseBackupSpec(s string) (BackupSpec, error) {
	var b BackupSpec
	if err := json.Unmarshal([]byte(s), &b); err != nil || b.Kind != "backup" || len(b.Record) == 0 {
		return b, fmt.Errorf("cinder_spec is not a backup spec")
	}
	return b, nil
}

// BackupPool is the RBD pool of region's Ceph backup driver; empty when
// Ferry has none for it.
func (s *Service) BackupPool(region string) string { return s.cfg.BackupPools[region] }

// backupRecord is the part of an export record Ferry reads.
type backupRecord struct {
	ID              string  `json:"id"`
	VolumeID        string  `json:"volume_id"`
	Container       string  `json:"container"`
	ServiceMetadata string  `json:"service_metadata"`
	ParentID        *string `json:"parent_id"`
	ProjectID       string  `json:"project_id"`
}

// ResolveBackup finds the caller's backup in region (with the caller's
// token), exports its record (as the service user: export is admin-only)
// and checks that its copy can be registered in dstRegion.
func (s *Service) ResolveBackup(ctx context.Context, token, callerProject, region, dstRegion, id string) (*SourceBackup, error) {
	if s.cfg.BackupPools[region] == "" {
		return nil, fmt.Errorf("%w: region %q has no Cinder backup pool in Ferry's [cinder] backup_pools", ErrNotConfigured, region)
	}
	ref, err := pathID("backup", id)
	if err != nil {
		return nil, err
	}
	sc, err := s.client(ctx, region, token)
	if err != nil {
		return nil, err
	}
	b, err := backups.Get(ctx, sc, ref).Extract()
	if err != nil {
		if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return nil, fmt.Errorf("%w: backup %s could not be found in region %s", ErrNotFound, id, region)
		}
		return nil, fmt.Errorf("cinder in %s: %w", region, err)
	}
	if b.ID != id {
		return nil, fmt.Errorf("cinder in %s: asked for backup %s, answered with %q", region, id, b.ID)
	}
	if b.Status != "available" {
		return nil, fmt.Errorf("%w: backup %s is %s; only an available backup can be moved", ErrInvalid, id, b.Status)
	}
	svc, err := s.serviceClient(ctx, region)
	if err != nil {
		return nil, err
	}
	rec, err := backups.Export(ctx, svc, ref).Extract()
	if err != nil {
		return nil, fmt.Errorf("exporting the record of backup %s in %s: %w", id, region, err)
	}
	if rec.BackupService != s.cfg.VolumeBackupDriver {
		return nil, fmt.Errorf("%w: backup %s was made by %s; Ferry moves backups of %s only", ErrInvalid, id, rec.BackupService, s.cfg.VolumeBackupDriver)
	}
	var r backupRecord
	if err := json.Unmarshal(rec.BackupURL, &r); err != nil {
		return nil, fmt.Errorf("backup %s: unreadable export record: %w", id, err)
	}
	var meta struct {
		Base string `json:"base"`
	}
	if r.ServiceMetadata != "" {
		_ = json.Unmarshal([]byte(r.ServiceMetadata), &meta)
	}
	if meta.Base == "" || r.Container == "" {
		return nil, fmt.Errorf("%w: backup %s is not an RBD backup of an RBD volume (no base image in its record); Ferry cannot copy it", ErrInvalid, id)
	}
	owner := r.ProjectID
	if owner == "" {
		owner = callerProject
	}
	spec := BackupSpec{Kind: "backup", ID: id, ProjectID: owner, Service: rec.BackupService, Record: json.RawMessage(rec.BackupURL)}
	if r.ParentID != nil {
		spec.ParentID = *r.ParentID
	}
	// At the destination: not there yet, and its parent already is.
	dsvc, err := s.serviceClient(ctx, dstRegion)
	if err != nil {
		return nil, err
	}
	switch _, err := backups.Get(ctx, dsvc, ref).Extract(); {
	case err == nil:
		return nil, fmt.Errorf("%w: backup %s already exists in region %s", ErrConflict, id, dstRegion)
	case !gophercloud.ResponseCodeIs(err, http.StatusNotFound):
		return nil, fmt.Errorf("cinder in %s: %w", dstRegion, err)
	}
	if spec.ParentID != "" {
		parent, err := pathID("parent backup", spec.ParentID)
		if err != nil {
			return nil, err
		}
		if _, err := backups.Get(ctx, dsvc, parent).Extract(); gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return nil, fmt.Errorf("%w: backup %s is incremental: move its parent backup %s to %s first", ErrInvalid, id, spec.ParentID, dstRegion)
		} else if err != nil {
			return nil, fmt.Errorf("cinder in %s: %w", dstRegion, err)
		}
	}
	return &SourceBackup{Spec: spec, Pool: r.Container, Image: meta.Base, SnapshotPattern: "backup." + id + ".snap.*"}, nil
}

// ErrConflict: the resource already exists at the destination (409).
var ErrConflict = errors.New("conflict")

// serviceClient is a Cinder client of region acting as the service user in
// its own project (admin).
func (s *Service) serviceClient(ctx context.Context, region string) (*gophercloud.ServiceClient, error) {
	p, err := s.service(ctx)
	if err != nil {
		return nil, err
	}
	url, err := s.endpoint(ctx, region)
	if err != nil {
		return nil, err
	}
	return volumeClient(p, url), nil
}

// BackupRegistration is a request to register a copied backup.
type BackupRegistration struct {
	TransferID string
	Region     string // destination region
	Pool       string // where the copy is: the destination's backup pool
	Image      string
	Spec       BackupSpec
	// Existing is true when an earlier, interrupted attempt imported the
	// record already: only the wait is left.
	Existing bool
	Created  func(ctx context.Context, backupID string) error
}

// RegisterBackup imports the backup's record, adapted to the destination
// (its pool), in the owner's project and waits until the backup is
// available. On failure the error says what is left where.
func (s *Service) RegisterBackup(ctx context.Context, r BackupRegistration) (string, error) {
	var rec map[string]any
	if err := json.Unmarshal(r.Spec.Record, &rec); err != nil {
		return "", fmt.Errorf("backup %s: unreadable record: %w", r.Spec.ID, err)
	}
	// Its new home: the destination's pool. The importing backup service
	// sets host, availability zone and service itself.
	rec["container"] = r.Pool
	for _, k := range []string{"host", "availability_zone", "service", "status", "fail_reason"} {
		delete(rec, k)
	}
	url, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	ref, err := pathID("backup", r.Spec.ID)
	if err != nil {
		return "", err
	}
	imported := false
	err = s.asOwner(ctx, r.Region, r.Spec.ProjectID, func(ctx context.Context, sc *gophercloud.ServiceClient) error {
		if !r.Existing {
			// An attempt that stopped after the import: the backup is
			// there already, only the wait is left.
			if _, err := backups.Get(ctx, sc, ref).Extract(); err == nil {
				r.Existing = true
			} else if !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
				return fmt.Errorf("backup %s: %w", r.Spec.ID, err)
			}
		}
		if !r.Existing {
			if _, err := backups.Import(ctx, sc, backups.ImportOpts{BackupService: r.Spec.Service, BackupURL: url}).Extract(); err != nil {
				return fmt.Errorf("import-record of backup %s: %w", r.Spec.ID, err)
			}
			imported = true
			if r.Created != nil {
				if err := r.Created(ctx, r.Spec.ID); err != nil {
					return err
				}
			}
		}
		return s.waitBackup(ctx, sc, ref, r.Spec.ID)
	})
	if err != nil {
		left := fmt.Sprintf("the copied data stays in region %s, pool %s, image %s", r.Region, r.Pool, r.Image)
		if imported || r.Existing {
			// Deleting the record through Cinder would delete the data
			// as well: both are left for an operator to look at.
			left = fmt.Sprintf("the imported record of backup %s (project %s) and %s", r.Spec.ID, r.Spec.ProjectID, left)
		}
		return "", fmt.Errorf("registering the copy as a Cinder backup in %s: %w; %s", r.Region, err, left)
	}
	return r.Spec.ID, nil
}

func (s *Service) waitBackup(ctx context.Context, sc *gophercloud.ServiceClient, ref, id string) error {
	return s.waitFor(ctx, "backup "+id, func(ctx context.Context) (string, error) {
		b, err := backups.Get(ctx, sc, ref).Extract()
		if err != nil {
			return "", err
		}
		if b.Status == "error" {
			return "", failedState(fmt.Sprintf("backup %s went to error: %s", id, b.FailReason))
		}
		return b.Status, nil
	})
}
