// Package cinder is ferry-api's side of Cinder: it resolves a caller's
// volume or backup to the RBD image behind it (with the caller's token, so
// Cinder's own policy decides what the caller may see), and registers a
// copied image at the destination as a Cinder volume (manage-existing) or
// backup (import-record) of the owner's project.
//
// Credential model. Manage-existing and import-record are admin-only in
// Cinder's default policy and create the resource in the project of the
// token that calls them. Ferry's service user (role admin in the service
// project, as Cinder's own service user) therefore takes [cinder]
// owner_role on the owner's project for the time of one registration,
// authenticates scoped to that project, registers, and removes the grant
// (unless it was there before). The caller's token is used only during the
// create request and never stored, so a transfer that outlives it still
// finishes. A trust (the alternative) can delegate only roles the caller
// holds: it cannot make a member's project receive an imported backup, nor
// let an admin register into a project the admin is not in.
package cinder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/manageablevolumes"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/roles"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
	"golang.org/x/sync/singleflight"

	"github.com/ferry-project/ferry/services/internal/config"
)

// Errors the API maps to HTTP statuses.
var (
	// ErrNotFound: Cinder does not show the resource to the caller (404).
	ErrNotFound = errors.New("not found")
	// ErrInvalid: the resource cannot be moved as it is (400).
	ErrInvalid = errors.New("invalid")
	// ErrNotConfigured: Ferry has no Cinder mapping for the region (400).
	ErrNotConfigured = errors.New("not configured")
)

// VolumeSpec is what the destination volume takes from the source
// volume. It is kept as JSON in the transfer (transfers.cinder_spec).
type VolumeSpec struct {
	Kind        string            `json:"kind"` // "volume"
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	SizeGiB     int               `json:"size_gib"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Bootable    bool              `json:"bootable"`
	// ImageMetadata is a volume made from a Glance image's
	// volume_image_metadata (what Nova boots it with).
	ImageMetadata map[string]string `json:"image_metadata,omitempty"`
	ProjectID     string            `json:"project_id"`
	// VolumeType is the source volume's type (its name) in the source
	// region; a registration takes its type from Registration.VolumeType.
	VolumeType string `json:"volume_type,omitempty"`
}

// VolumeImage is the RBD image of Cinder volume id in the RBD backend's
// pool (the driver's volume_name_template).
func VolumeImage(id string) string { return "volume-" + id }

// SourceVolume is a resolved volume source.
type SourceVolume struct {
	Spec  VolumeSpec
	Pool  string // RBD pool of the region's Cinder backend
	Image string // volume-<id>
}

// Service talks to Keystone and to Cinder in every region.
type Service struct {
	cfg  config.Cinder
	auth gophercloud.AuthOptions // the service user (project-scoped to the service project)
	eo   gophercloud.EndpointOpts
	log  *slog.Logger

	svcType, svcName string
	avail            gophercloud.Availability
	types            map[config.VolumeTypeRoute]string // [cinder] volume_type_map

	// mu guards the fields below; it is never held across a network call
	// (the service user's authentication is shared through auth).
	mu       sync.Mutex
	provider *gophercloud.ProviderClient // service user, service project
	userID   string
	roleID   string
	auth1    singleflight.Group
	locks    keyedLock // owner project → registration turn
	// Ledger, when set, remembers the grants this service takes until it
	// removes them, so that one left by a stopped process is known as
	// Ferry's (and removed) rather than taken for an operator's.
	Ledger GrantLedger
}

// GrantLedger records the temporary role grants on owners' projects.
type GrantLedger interface {
	Record(ctx context.Context, project string) error
	Recorded(ctx context.Context, project string) (bool, error)
	Clear(ctx context.Context, project string) error
}

// New builds the Service; it authenticates lazily.
func New(k config.KeystoneAuthtoken, c config.Cinder, log *slog.Logger) (*Service, error) {
	st, name, iface, err := parseCatalogInfo(c.CatalogInfo)
	if err != nil {
		return nil, err
	}
	types, err := c.VolumeTypes()
	if err != nil {
		return nil, fmt.Errorf("[cinder] volume_type_map: %w", err)
	}
	s := &Service{
		cfg: c, log: log, svcType: st, svcName: name, avail: iface, types: types,
		auth: gophercloud.AuthOptions{
			IdentityEndpoint: k.AuthURL, Username: k.Username, Password: k.Password,
			DomainName: k.UserDomainName, AllowReauth: true,
			Scope: &gophercloud.AuthScope{ProjectName: k.ProjectName, DomainName: k.ProjectDomainName},
		},
		eo: gophercloud.EndpointOpts{Region: k.RegionName, Availability: gophercloud.AvailabilityPublic},
	}
	return s, nil
}

// VolumePool is the RBD pool of region's Cinder volume backend; empty when
// Ferry has none for it.
func (s *Service) VolumePool(region string) string { return s.cfg.VolumePools[region] }

func parseCatalogInfo(v string) (string, string, gophercloud.Availability, error) {
	parts := strings.Split(v, ":")
	if len(parts) != 3 || parts[0] == "" {
		return "", "", "", fmt.Errorf("[cinder] catalog_info %q: want <service_type>:<service_name>:<interface>", v)
	}
	var a gophercloud.Availability
	switch strings.TrimSuffix(parts[2], "URL") {
	case "public", "":
		a = gophercloud.AvailabilityPublic
	case "internal":
		a = gophercloud.AvailabilityInternal
	case "admin":
		a = gophercloud.AvailabilityAdmin
	default:
		return "", "", "", fmt.Errorf("[cinder] catalog_info %q: unknown interface %q", v, parts[2])
	}
	return parts[0], parts[1], a, nil
}

// service returns the authenticated service user's provider. Concurrent
// first calls share one authentication; no lock is held while it runs.
func (s *Service) service(ctx context.Context) (*gophercloud.ProviderClient, error) {
	s.mu.Lock()
	p := s.provider
	s.mu.Unlock()
	if p != nil {
		return p, nil
	}
	ch := s.auth1.DoChan("service", func() (any, error) {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout())
		defer cancel()
		p, err := s.newProvider(actx, s.auth)
		if err != nil {
			return nil, fmt.Errorf("service user %q: %w", s.auth.Username, err)
		}
		res, ok := p.GetAuthResult().(tokens.CreateResult)
		if !ok {
			return nil, fmt.Errorf("service user %q: unexpected authentication result %T", s.auth.Username, p.GetAuthResult())
		}
		u, err := res.ExtractUser()
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.provider, s.userID = p, u.ID
		s.mu.Unlock()
		return p, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*gophercloud.ProviderClient), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Service) serviceUserID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.userID
}

// timeout bounds one HTTP request to Cinder or Keystone ([cinder] timeout).
func (s *Service) timeout() time.Duration {
	if s.cfg.Timeout <= 0 {
		return 60 * time.Second
	}
	return time.Duration(s.cfg.Timeout) * time.Second
}

// newProvider authenticates ao; each of the provider's requests is bounded
// by [cinder] timeout.
func (s *Service) newProvider(ctx context.Context, ao gophercloud.AuthOptions) (*gophercloud.ProviderClient, error) {
	p, err := openstack.NewClient(ao.IdentityEndpoint)
	if err != nil {
		return nil, err
	}
	p.HTTPClient.Timeout = s.timeout()
	if err := openstack.Authenticate(ctx, p, ao); err != nil {
		return nil, err
	}
	return p, nil
}

// endpoint is Cinder's v3 root for region without a project id: Cinder
// (3.67+, Zed has 3.70) serves every path without it, and the project
// then comes from the token, whoever's it is.
func (s *Service) endpoint(ctx context.Context, region string) (string, error) {
	p, err := s.service(ctx)
	if err != nil {
		return "", err
	}
	url, err := p.EndpointLocator(gophercloud.EndpointOpts{Type: s.svcType, Name: s.svcName, Region: region, Availability: s.avail})
	if err != nil {
		return "", fmt.Errorf("%w: no %s endpoint for region %q in the catalog (%w)", ErrNotConfigured, s.svcType, region, err)
	}
	i := strings.Index(url, "/v3")
	if i < 0 {
		return "", fmt.Errorf("%w: Cinder endpoint %q of region %q is not a v3 endpoint", ErrNotConfigured, url, region)
	}
	return url[:i+len("/v3")] + "/", nil
}

// volumeClient is a Cinder v3 client of p at url (a project-less root).
func volumeClient(p *gophercloud.ProviderClient, url string) *gophercloud.ServiceClient {
	return &gophercloud.ServiceClient{ProviderClient: p, Endpoint: url, ResourceBase: url, Type: "volume", Microversion: "3.67"}
}

// client is a Cinder client for region acting with token.
func (s *Service) client(ctx context.Context, region, token string) (*gophercloud.ServiceClient, error) {
	url, err := s.endpoint(ctx, region)
	if err != nil {
		return nil, err
	}
	p := &gophercloud.ProviderClient{HTTPClient: http.Client{Timeout: s.timeout()}}
	p.SetToken(token)
	return volumeClient(p, url), nil
}

// ResolveVolume finds the caller's volume in region, with the caller's
// token, and checks that Ferry can move it.
func (s *Service) ResolveVolume(ctx context.Context, token, callerProject, region, id string) (*SourceVolume, error) {
	pool := s.cfg.VolumePools[region]
	if pool == "" {
		return nil, fmt.Errorf("%w: region %q has no Cinder volume pool in Ferry's [cinder] volume_pools", ErrNotConfigured, region)
	}
	ref, err := pathID("volume", id)
	if err != nil {
		return nil, err
	}
	sc, err := s.client(ctx, region, token)
	if err != nil {
		return nil, err
	}
	v, err := volumes.Get(ctx, sc, ref).Extract()
	if err != nil {
		if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return nil, fmt.Errorf("%w: volume %s could not be found in region %s", ErrNotFound, id, region)
		}
		return nil, fmt.Errorf("cinder in %s: %w", region, err)
	}
	if v.ID != id {
		return nil, fmt.Errorf("cinder in %s: asked for volume %s, answered with %q", region, id, v.ID)
	}
	switch {
	case v.Status != "available" && v.Status != "in-use":
		return nil, fmt.Errorf("%w: volume %s is %s; only an available or in-use volume can be moved", ErrInvalid, id, v.Status)
	case v.Encrypted:
		return nil, fmt.Errorf("%w: volume %s is encrypted; Ferry cannot move its key yet", ErrInvalid, id)
	}
	owner := v.TenantID // shown to admins only
	if owner == "" {
		owner = callerProject
	}
	return &SourceVolume{Spec: specOf(v, owner), Pool: pool, Image: VolumeImage(v.ID)}, nil
}

// GroupVolumes lists the ids of the volumes of the caller's Cinder group
// id in region (GET /v3/{project}/groups/{id}?list_volume=True,
// microversion 3.25 and later), with the caller's token, sorted. A group
// the caller does not see is ErrNotFound; one without volumes ErrInvalid.
func (s *Service) GroupVolumes(ctx context.Context, token, region, id string) ([]string, error) {
	ref, err := pathID("group", id)
	if err != nil {
		return nil, err
	}
	sc, err := s.client(ctx, region, token)
	if err != nil {
		return nil, err
	}
	var body struct {
		Group struct {
			ID      string   `json:"id"`
			Volumes []string `json:"volumes"`
		} `json:"group"`
	}
	_, err = sc.Get(ctx, sc.ServiceURL("groups", ref)+"?list_volume=True", &body, &gophercloud.RequestOpts{OkCodes: []int{http.StatusOK}})
	if err != nil {
		if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return nil, fmt.Errorf("%w: group %s could not be found in region %s", ErrNotFound, id, region)
		}
		return nil, fmt.Errorf("cinder in %s: group %s: %w", region, id, err)
	}
	if body.Group.ID != id {
		return nil, fmt.Errorf("cinder in %s: asked for group %s, answered with %q", region, id, body.Group.ID)
	}
	if len(body.Group.Volumes) == 0 {
		return nil, fmt.Errorf("%w: Cinder group %s has no volumes", ErrInvalid, id)
	}
	out := slices.Clone(body.Group.Volumes)
	slices.Sort(out)
	return out, nil
}

// adminMetadataKeys are Cinder's admin metadata that its API shows among a
// volume's metadata (cinder.api.api_utils.add_visible_admin_metadata): the
// read-only flag and the mode of the attachment. They are Cinder's, not
// the owner's, and do not go with the volume.
var adminMetadataKeys = []string{"readonly", "attached_mode"}

// specOf is what a registration takes from volume v of project owner.
func specOf(v *volumes.Volume, owner string) VolumeSpec {
	var md map[string]string
	for k, val := range v.Metadata {
		if slices.Contains(adminMetadataKeys, k) {
			continue
		}
		if md == nil {
			md = map[string]string{}
		}
		md[k] = val
	}
	return VolumeSpec{Kind: "volume", ID: v.ID, Name: v.Name, Description: v.Description, SizeGiB: v.Size,
		Metadata: md, Bootable: v.Bootable == "true", ImageMetadata: v.VolumeImageMetadata, ProjectID: owner, VolumeType: v.VolumeType}
}

// Marshal returns spec as the JSON kept in the transfer.
func (v VolumeSpec) Marshal() string {
	b, _ := json.Marshal(v)
	return string(b)
}

// ParseVolumeSpec reads a transfer's cinder_spec.
func ParseVolumeSpec(s string) (VolumeSpec, error) {
	var v VolumeSpec
	if err := json.Unmarshal([]byte(s), &v); err != nil || v.Kind != "volume" {
		return v, fmt.Errorf("cinder_spec is not a volume spec: %q", s)
	}
	return v, nil
}

// Registration is a request to make a copied image a Cinder volume.
type Registration struct {
	TransferID string
	Region     string // destination region
	Image      string // the copy, in the region's volume pool
	Spec       VolumeSpec
	// VolumeType is the new volume's type in Region ("": Cinder's
	// default type there); Spec.VolumeType is the source region's.
	VolumeType string
	// KeepImage: the copy is the only one (a failover's replica). A
	// volume that fails to register is then unmanaged, never deleted:
	// once Cinder managed it, the image is the volume's (renamed
	// volume-<id>) and a delete would remove it.
	KeepImage bool
	// ExistingVolumeID is the volume an earlier, interrupted attempt
	// created (Ferry's ledger: the transfer's destination.volume_id): it
	// is waited for rather than managed again.
	ExistingVolumeID string
	// AttemptedAt is when an earlier attempt sent its manage-existing
	// request without recording the answer (Ferry's ledger); zero when
	// none did. The volume that request may have made is looked for by
	// what no user can set: created by the service user, in the owner's
	// project, within the request's time bounds.
	AttemptedAt time.Time
	// Attempting is called with the time just before the manage-existing
	// request, to record it in the ledger.
	Attempting func(ctx context.Context, at time.Time) error
	// Created is called with the new volume's id as soon as Cinder
	// returns it, before it is available, so that an interrupted
	// finalization can resume.
	Created func(ctx context.Context, volumeID string) error
}

// clockSkew is the allowance between ferry-api's clock and Cinder's
// created_at when a volume is matched to a manage-existing request.
const clockSkew = 5 * time.Second

// RegisterVolume manages the copied image as a volume of the spec's
// project and waits until it is available. On failure nothing stays in
// Cinder (a volume it made is deleted or, with KeepImage, unmanaged); the
// error says where the copied image is.
func (s *Service) RegisterVolume(ctx context.Context, r Registration) (string, error) {
	host := s.cfg.BackendHosts[r.Region]
	if host == "" {
		return "", fmt.Errorf("%w: region %q has no Cinder backend host in Ferry's [cinder] backend_hosts", ErrNotConfigured, r.Region)
	}
	var volumeID string
	err := s.asOwner(ctx, r.Region, r.Spec.ProjectID, func(ctx context.Context, sc *gophercloud.ServiceClient) error {
		volumeID = r.ExistingVolumeID
		if volumeID == "" && !r.AttemptedAt.IsZero() {
			// An attempt stopped between its request and the ledger's
			// record of the answer: the volume it made, if any.
			found, err := s.volumeOfAttempt(ctx, sc, r.AttemptedAt)
			if err != nil {
				return err
			}
			if found != "" {
				s.log.Info("resuming the registration of an interrupted attempt", "transfer_id", r.TransferID, "volume_id", found)
				volumeID = found
				if r.Created != nil {
					if err := r.Created(ctx, volumeID); err != nil {
						return err
					}
				}
			}
		}
		if volumeID == "" {
			md := map[string]string{}
			for k, v := range r.Spec.Metadata {
				md[k] = v
			}
			// For people: Ferry itself never reads these back (a
			// project member can set any metadata).
			md["ferry_transfer_id"] = r.TransferID
			md["ferry_source_volume_id"] = r.Spec.ID
			if r.Attempting != nil {
				if err := r.Attempting(ctx, time.Now()); err != nil {
					return err
				}
			}
			v, err := manageablevolumes.ManageExisting(ctx, sc, manageablevolumes.ManageExistingOpts{
				Host: host, Ref: map[string]string{"source-name": r.Image},
				Name: r.Spec.Name, Description: r.Spec.Description, Bootable: r.Spec.Bootable, Metadata: md,
				VolumeType: r.VolumeType,
			}).Extract()
			if err != nil {
				return fmt.Errorf("manage-existing of %s: %w", r.Image, err)
			}
			volumeID = v.ID
			if r.Created != nil {
				if err := r.Created(ctx, volumeID); err != nil {
					return err
				}
			}
		}
		if err := s.waitAvailable(ctx, sc, volumeID); err != nil {
			return err
		}
		if len(r.Spec.ImageMetadata) == 0 {
			return nil
		}
		// A volume made from an image carries the image's properties. The
		// volume is there and usable without them: a failure is logged,
		// not a reason to undo the registration.
		if err := volumes.SetImageMetadata(ctx, sc, url.PathEscape(volumeID), volumes.ImageMetadataOpts{Metadata: r.Spec.ImageMetadata}).ExtractErr(); err != nil {
			s.log.Warn("the moved volume lacks its image metadata", "volume_id", volumeID, "region", r.Region, "error", err)
		}
		return nil
	})
	if err != nil {
		if volumeID != "" {
			s.discard(ctx, r.Region, r.Spec.ProjectID, volumeID, r.KeepImage)
		}
		return "", fmt.Errorf("registering the copy as a Cinder volume in %s: %w; the copied image is left in region %s, pool %s, as %s (or volume-%s if Cinder renamed it)",
			r.Region, err, r.Region, s.cfg.VolumePools[r.Region], r.Image, volumeID)
	}
	return volumeID, nil
}

// createdSince lists volumes created at or after a time (Cinder 3.60+).
type createdSince time.Time

func (c createdSince) ToVolumeListQuery() (string, error) {
	q := url.Values{"created_at": {"gte:" + time.Time(c).UTC().Format("2006-01-02T15:04:05")}}
	return "?" + q.Encode(), nil
}

// volumeOfAttempt is the volume (in sc's project, the owner's) that a
// manage-existing request sent at `at` created: made by the service user
// while the request could run. Registrations into one project are
// serialised, so at most one can match; "" when none does, an error when
// several do (nothing is adopted then).
func (s *Service) volumeOfAttempt(ctx context.Context, sc *gophercloud.ServiceClient, at time.Time) (string, error) {
	from, to := at.Add(-clockSkew), at.Add(s.timeout()+clockSkew)
	pages, err := volumes.List(sc, createdSince(from)).AllPages(ctx)
	if err != nil {
		return "", fmt.Errorf("looking for the volume of an interrupted registration: %w", err)
	}
	vs, err := volumes.ExtractVolumes(pages)
	if err != nil {
		return "", err
	}
	user := s.serviceUserID()
	var found []string
	for _, v := range vs {
		if v.UserID == user && !v.CreatedAt.Before(from) && !v.CreatedAt.After(to) {
			found = append(found, v.ID)
		}
	}
	switch len(found) {
	case 0:
		return "", nil
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("the interrupted registration at %s: %d volumes of Ferry's service user were created in the project meanwhile (%s); none is taken",
		at.UTC().Format(time.RFC3339), len(found), strings.Join(found, ", "))
}

func (s *Service) waitAvailable(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
	ref, err := pathID("volume", id)
	if err != nil {
		return err
	}
	return s.waitFor(ctx, "volume "+id, func(ctx context.Context) (string, error) {
		v, err := volumes.Get(ctx, sc, ref).Extract()
		if err != nil {
			return "", err
		}
		switch v.Status {
		case "error", "error_managing", "error_managing_deleting":
			return "", failedState(fmt.Sprintf("volume %s went to %s (see cinder-volume's log)", id, v.Status))
		}
		return v.Status, nil
	})
}

// failedState is a status that ends a wait: status funcs return it as is.
type failedState string

func (f failedState) Error() string { return string(f) }

// waitFor polls status (backing off from 250 ms to 2 s) until it answers
// "available", fails, or [cinder] finalize_timeout passes.
func (s *Service) waitFor(ctx context.Context, what string, status func(context.Context) (string, error)) error {
	return s.waitForStatus(ctx, what, "available", status)
}

// waitForStatus is waitFor for the status want.
func (s *Service) waitForStatus(ctx context.Context, what, want string, status func(context.Context) (string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(s.cfg.FinalizeTimeout)*time.Second)
	defer cancel()
	delay := 250 * time.Millisecond
	for {
		st, err := status(ctx)
		var failed failedState
		switch {
		case errors.As(err, &failed):
			return err
		case err != nil && ctx.Err() == nil:
			return fmt.Errorf("%s: %w", what, err)
		case err == nil && st == want:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not %s after %d s: %w", what, want, s.cfg.FinalizeTimeout, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 2*time.Second)
	}
}

// discard deletes a volume record that failed to become available. The
// RBD driver renames the image only once manage succeeds, so deleting an
// error_managing volume leaves the copied image under its own name. With
// keepImage the volume is unmanaged instead: a manage that succeeded after
// all (a wait that timed out, a ledger that failed) made the image the
// volume's, and the delete of such a volume deletes the image.
func (s *Service) discard(ctx context.Context, region, project, id string, keepImage bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	ref, err := pathID("volume", id)
	if err != nil {
		return
	}
	what := "deleting"
	if keepImage {
		what = "unmanaging"
		err = s.asService(ctx, region, func(ctx context.Context, sc *gophercloud.ServiceClient) error {
			return volumes.Unmanage(ctx, sc, ref).ExtractErr()
		})
	} else {
		err = s.asOwner(ctx, region, project, func(ctx context.Context, sc *gophercloud.ServiceClient) error {
			return volumes.Delete(ctx, sc, ref, volumes.DeleteOpts{}).ExtractErr()
		})
	}
	if err != nil && !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		s.log.Warn(what+" a volume that failed to register", "volume_id", id, "region", region, "project_id", project, "error", err)
	}
}

// asOwner runs fn with a Cinder client of region acting as the service
// user scoped to project, holding owner_role there for fn's duration.
// Registrations into one project are serialised: removing the grant
// revokes the service user's tokens on that project.
func (s *Service) asOwner(ctx context.Context, region, project string, fn func(context.Context, *gophercloud.ServiceClient) error) error {
	p, err := s.service(ctx)
	if err != nil {
		return err
	}
	// Wait for this project's turn, or for ctx: no mutex is held across
	// the network calls of another registration.
	unlock, err := s.locks.lock(ctx, project)
	if err != nil {
		return fmt.Errorf("waiting for another registration into project %s: %w", project, err)
	}
	defer unlock()
	userID := s.serviceUserID()
	idc, err := openstack.NewIdentityV3(p, s.eo)
	if err != nil {
		return fmt.Errorf("identity endpoint: %w", err)
	}
	roleID, err := s.ownerRoleID(ctx, idc)
	if err != nil {
		return err
	}
	had := roles.Validate(ctx, idc, roleID, roles.ValidateOpts{UserID: userID, ProjectID: project}).Err == nil
	if had && s.Ledger != nil {
		// A grant Ferry took and a stopped process did not remove is
		// Ferry's to remove, not an operator's to keep.
		ours, err := s.Ledger.Recorded(ctx, project)
		if err != nil {
			return fmt.Errorf("grant ledger: %w", err)
		}
		if ours {
			s.log.Info("removing a temporary role grant a stopped registration left", "project_id", project)
			had = false
		}
	}
	if !had {
		if s.Ledger != nil {
			if err := s.Ledger.Record(ctx, project); err != nil {
				return fmt.Errorf("grant ledger: %w", err)
			}
		}
		if err := roles.Assign(ctx, idc, roleID, roles.AssignOpts{UserID: userID, ProjectID: project}).ExtractErr(); err != nil {
			return fmt.Errorf("granting role %s on project %s to the service user: %w", s.cfg.OwnerRole, project, err)
		}
		defer func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			err := roles.Unassign(uctx, idc, roleID, roles.UnassignOpts{UserID: userID, ProjectID: project}).ExtractErr()
			if err != nil && !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
				s.log.Error("removing the service user's temporary role grant failed: remove it by hand",
					"role", s.cfg.OwnerRole, "project_id", project, "error", err)
				return
			}
			if s.Ledger != nil {
				if err := s.Ledger.Clear(uctx, project); err != nil {
					s.log.Warn("grant ledger", "project_id", project, "error", err)
				}
			}
		}()
	}
	ao := s.auth
	ao.AllowReauth = false
	ao.Scope = &gophercloud.AuthScope{ProjectID: project}
	op, err := s.newProvider(ctx, ao)
	if err != nil {
		return fmt.Errorf("service user token for project %s: %w", project, err)
	}
	url, err := s.endpoint(ctx, region)
	if err != nil {
		return err
	}
	sc := volumeClient(op, url)
	return fn(ctx, sc)
}

// pathID checks that id, which goes into a Cinder URL, is a UUID, and
// returns it escaped as a path segment. Anything else (a path, a query, a
// newline, a bad escape) would address another Cinder resource with the
// token at hand.
func pathID(kind, id string) (string, error) {
	u, err := uuid.Parse(id)
	if err != nil || len(id) != 36 || u.String() != strings.ToLower(id) {
		return "", fmt.Errorf("%w: %s id %q is not a UUID", ErrInvalid, kind, id)
	}
	return url.PathEscape(id), nil
}

// keyedLock serialises work per key; waiting honours the context, and a
// key's entry goes when nobody holds or waits for it.
type keyedLock struct {
	mu   sync.Mutex
	keys map[string]*keyTurn
}

type keyTurn struct {
	ch   chan struct{} // a token: whoever took it holds the key
	refs int
}

func (k *keyedLock) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.keys == nil {
		k.keys = map[string]*keyTurn{}
	}
	t, ok := k.keys[key]
	if !ok {
		t = &keyTurn{ch: make(chan struct{}, 1)}
		k.keys[key] = t
	}
	t.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		if t.refs--; t.refs == 0 {
			delete(k.keys, key)
		}
	}
	select {
	case t.ch <- struct{}{}:
		return func() { <-t.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

func (k *keyedLock) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.keys)
}

func (s *Service) ownerRoleID(ctx context.Context, idc *gophercloud.ServiceClient) (string, error) {
	s.mu.Lock()
	id := s.roleID
	s.mu.Unlock()
	if id != "" {
		return id, nil
	}
	pages, err := roles.List(idc, roles.ListOpts{Name: s.cfg.OwnerRole}).AllPages(ctx)
	if err != nil {
		return "", fmt.Errorf("looking up role %q: %w", s.cfg.OwnerRole, err)
	}
	rs, err := roles.ExtractRoles(pages)
	if err != nil {
		return "", err
	}
	if len(rs) == 0 {
		return "", fmt.Errorf("%w: role %q ([cinder] owner_role) does not exist in Keystone", ErrNotConfigured, s.cfg.OwnerRole)
	}
	s.mu.Lock()
	s.roleID = rs[0].ID
	s.mu.Unlock()
	return rs[0].ID, nil
}

// asService runs fn with a Cinder client of region acting as the service
// user in its own project: Cinder's admin (role admin), who sees and may
// act on every project's volumes.
func (s *Service) asService(ctx context.Context, region string, fn func(context.Context, *gophercloud.ServiceClient) error) error {
	p, err := s.service(ctx)
	if err != nil {
		return err
	}
	url, err := s.endpoint(ctx, region)
	if err != nil {
		return err
	}
	return fn(ctx, volumeClient(p, url))
}

// VolumeExists tells whether volume id exists in region, asked as Ferry's
// service user (admin in the service project: Cinder shows it every
// project's volumes). A deleted volume is (false, nil); a volume being
// deleted, or whose deletion failed, still exists.
func (s *Service) VolumeExists(ctx context.Context, region, id string) (bool, error) {
	ref, err := pathID("volume", id)
	if err != nil {
		return false, err
	}
	err = s.asService(ctx, region, func(ctx context.Context, sc *gophercloud.ServiceClient) error {
		_, err := volumes.Get(ctx, sc, ref).Extract()
		return err
	})
	switch {
	case err == nil:
		return true, nil
	case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
		return false, nil
	}
	return false, fmt.Errorf("cinder in %s: volume %s: %w", region, id, err)
}
