package cinder

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/ferry-project/ferry/services/internal/config"
)

// What a failover asks of Cinder about the volumes at either end of a
// replication: their state, their read-only flag (the quiesce of the side
// that stops being written), and the unmanage of a failed-over volume at
// failback (its image stays, to be renamed back into the replica).
//
// These run as Ferry's service user in its own project, the way
// VolumeExists does: role admin there is Cinder's admin (is_admin), whom
// Cinder's default policy lets see every project's volumes, change their
// read-only flag (volume:update_readonly_flag, admin or owner) and unmanage
// them (volume_extension:volume_unmanage, admin only). No role is granted on
// the owner's project; instead every call checks that the volume is the
// project's (os-vol-tenant-attr:tenant_id, shown to admins), and treats
// another project's volume as not found.

// ErrInUse: the volume is attached, or being attached or detached, and
// Cinder refuses the action while it is (409).
var ErrInUse = errors.New("in use")

// VolumeState is a volume as a failover sees it.
type VolumeState struct {
	// Spec is what a volume registered in its place takes from it
	// (Spec.VolumeType is its type in its own region).
	Spec   VolumeSpec
	Status string // Cinder's status: available, in-use, ...
	// Attached: the volume has attachments, or is being attached or
	// detached (reserved, attaching, detaching).
	Attached bool
	// ReadOnly is Cinder's read-only flag (admin metadata "readonly"):
	// a new attachment of the volume is read-only. An attachment made
	// before the flag was set stays as it was.
	ReadOnly bool
}

// InspectVolume reads volume id of project in region. A volume Cinder does
// not have, or that is another project's, is ErrNotFound.
func (s *Service) InspectVolume(ctx context.Context, region, project, id string) (*VolumeState, error) {
	v, err := s.projectVolume(ctx, region, project, id)
	if err != nil {
		return nil, err
	}
	return stateOf(v, project), nil
}

// SetReadOnly sets (or clears) the read-only flag of volume id of project
// in region (os-update_readonly_flag). A flag that is already so is
// success, whatever the volume's status. Cinder changes the flag of an
// available volume only: an attached one is ErrInUse, another status
// (creating, maintenance, ...) ErrInvalid.
func (s *Service) SetReadOnly(ctx context.Context, region, project, id string, readOnly bool) error {
	v, err := s.projectVolume(ctx, region, project, id)
	if err != nil {
		return err
	}
	st := stateOf(v, project)
	if st.ReadOnly == readOnly {
		return nil
	}
	if err := st.changeable("change the read-only flag of"); err != nil {
		return err
	}
	return s.asService(ctx, region, func(ctx context.Context, sc *gophercloud.ServiceClient) error {
		ref, err := pathID("volume", id)
		if err != nil {
			return err
		}
		err = updateReadOnlyFlag(ctx, sc, ref, readOnly).ExtractErr()
		switch {
		case err == nil:
			return nil
		case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
			return fmt.Errorf("%w: volume %s could not be found in region %s", ErrNotFound, id, region)
		case gophercloud.ResponseCodeIs(err, http.StatusBadRequest):
			// Its status changed since it was read.
			return fmt.Errorf("%w: cinder in %s refused the read-only flag of volume %s: %w", ErrInvalid, region, id, err)
		}
		return fmt.Errorf("cinder in %s: read-only flag of volume %s: %w", region, id, err)
	})
}

// UnmanageVolume makes Cinder forget volume id of project in region
// (os-unmanage) and waits until it is gone; the RBD image behind it stays,
// under its name volume-<id> (the RBD driver's unmanage does not touch it).
// A volume already gone is success; an attached one is ErrInUse; another
// project's volume is ErrNotFound.
func (s *Service) UnmanageVolume(ctx context.Context, region, project, id string) error {
	v, err := s.projectVolume(ctx, region, project, id)
	var gone goneError
	switch {
	case errors.As(err, &gone):
		return nil
	case err != nil:
		return err
	}
	ref, err := pathID("volume", id)
	if err != nil {
		return err
	}
	return s.asService(ctx, region, func(ctx context.Context, sc *gophercloud.ServiceClient) error {
		switch v.Status {
		case "unmanaging", "deleting":
			// A request before this one (an interrupted attempt) is
			// under way.
		default:
			if st := stateOf(v, project); st.Attached || !slices.Contains(unmanageStatuses, v.Status) {
				return st.changeable("unmanage")
			}
			err := volumes.Unmanage(ctx, sc, ref).ExtractErr()
			switch {
			case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
				return nil
			case gophercloud.ResponseCodeIs(err, http.StatusBadRequest):
				return fmt.Errorf("%w: cinder in %s refused to unmanage volume %s: %w", ErrInvalid, region, id, err)
			case err != nil:
				return fmt.Errorf("cinder in %s: unmanage of volume %s: %w", region, id, err)
			}
		}
		return s.waitForStatus(ctx, "the unmanage of volume "+id, "gone", func(ctx context.Context) (string, error) {
			v, err := volumes.Get(ctx, sc, ref).Extract()
			switch {
			case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
				return "gone", nil
			case err != nil:
				return "", err
			case v.Status == "error_unmanaging":
				return "", failedState(fmt.Sprintf("volume %s went to error_unmanaging (see cinder-volume's log in %s)", id, region))
			}
			return v.Status, nil
		})
	})
}

// MapVolumeType is the volume type that a volume of type srcType in
// srcRegion takes in dstRegion, by [cinder] volume_type_map; "" (Cinder's
// default type in dstRegion) when the map has none.
func (s *Service) MapVolumeType(srcRegion, srcType, dstRegion string) string {
	return s.types[config.VolumeTypeRoute{FromRegion: srcRegion, FromType: srcType, ToRegion: dstRegion}]
}

// unmanageStatuses are those in which Cinder unmanages a volume (as it
// deletes one: cinder.volume.api.API.delete).
var unmanageStatuses = []string{"available", "error", "error_restoring", "error_extending", "error_managing"}

// goneError is a 404 from Cinder: the volume does not exist (it wraps
// ErrNotFound).
type goneError struct{ error }

func (g goneError) Unwrap() error { return g.error }

// projectVolume reads volume id as the service user and checks that it is
// project's. A 404 is a goneError; another project's volume ErrNotFound.
func (s *Service) projectVolume(ctx context.Context, region, project, id string) (*volumes.Volume, error) {
	ref, err := pathID("volume", id)
	if err != nil {
		return nil, err
	}
	var v *volumes.Volume
	err = s.asService(ctx, region, func(ctx context.Context, sc *gophercloud.ServiceClient) error {
		v, err = volumes.Get(ctx, sc, ref).Extract()
		return err
	})
	switch {
	case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
		return nil, goneError{fmt.Errorf("%w: volume %s could not be found in region %s", ErrNotFound, id, region)}
	case err != nil:
		return nil, fmt.Errorf("cinder in %s: volume %s: %w", region, id, err)
	case v.ID != id:
		return nil, fmt.Errorf("cinder in %s: asked for volume %s, answered with %q", region, id, v.ID)
	case v.TenantID == "":
		return nil, fmt.Errorf("cinder in %s does not show the project of volume %s to Ferry's service user (is it admin in its project?)", region, id)
	case v.TenantID != project:
		return nil, fmt.Errorf("%w: volume %s could not be found in project %s in region %s", ErrNotFound, id, project, region)
	}
	return v, nil
}

// busyStatuses are the statuses of a volume being attached or detached.
var busyStatuses = []string{"in-use", "reserved", "attaching", "detaching"}

func stateOf(v *volumes.Volume, project string) *VolumeState {
	ro, _ := parseBool(v.Metadata["readonly"])
	return &VolumeState{
		Spec: specOf(v, project), Status: v.Status, ReadOnly: ro,
		Attached: len(v.Attachments) > 0 || slices.Contains(busyStatuses, v.Status),
	}
}

// changeable tells why Cinder would refuse to `what` the volume: it acts on
// an available volume only.
func (st *VolumeState) changeable(what string) error {
	switch {
	case st.Attached:
		return fmt.Errorf("%w: volume %s is %s (attached): Cinder cannot %s an attached volume", ErrInUse, st.Spec.ID, st.Status, what)
	case st.Status != "available":
		return fmt.Errorf("%w: volume %s is %s: Cinder cannot %s it now", ErrInvalid, st.Spec.ID, st.Status, what)
	}
	return nil
}

// parseBool reads a flag as oslo's strutils.bool_from_string writes and
// reads it ("True", "False", ...).
func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "1", "yes", "y", "on", "t":
		return true, nil
	case "false", "0", "no", "n", "off", "f", "":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean", s)
}

// updateReadOnlyFlag is Cinder's os-update_readonly_flag volume action,
// which gophercloud lacks (written as its volumes actions are).
func updateReadOnlyFlag(ctx context.Context, client *gophercloud.ServiceClient, id string, readOnly bool) (r gophercloud.ErrResult) {
	body := map[string]any{"os-update_readonly_flag": map[string]any{"readonly": readOnly}}
	resp, err := client.Post(ctx, client.ServiceURL("volumes", id, "action"), body, nil, &gophercloud.RequestOpts{
		OkCodes: []int{202},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}
