package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
)

// errBadCredentials is Keystone's 401: the login page says "Invalid
// credentials." and nothing more (as Horizon).
var errBadCredentials = errors.New("invalid credentials")

// credentials are what the login form asks for.
type credentials struct {
	username, password, project, domain string
}

// identity is a Keystone v3 client without a token of its own.
func (h *Handler) identity(token string) (*gophercloud.ServiceClient, error) {
	pc, err := openstack.NewClient(h.opts.AuthURL)
	if err != nil {
		return nil, fmt.Errorf("keystone auth URL %q: %w", h.opts.AuthURL, err)
	}
	if h.opts.KeystoneTransport != nil {
		pc.HTTPClient = http.Client{Transport: h.opts.KeystoneTransport}
	}
	pc.HTTPClient.Timeout = h.opts.KeystoneTimeout
	if token != "" {
		pc.SetToken(token)
	}
	return openstack.NewIdentityV3(pc, gophercloud.EndpointOpts{})
}

// authenticate gets a project-scoped token for the form's credentials
// (POST /v3/auth/tokens) and builds the session from it.
func (h *Handler) authenticate(ctx context.Context, c credentials) (*session, error) {
	id, err := h.identity("")
	if err != nil {
		return nil, err
	}
	r := tokens.Create(ctx, id, &tokens.AuthOptions{
		Username: c.username, Password: c.password, DomainName: c.domain,
		Scope: tokens.Scope{ProjectName: c.project, DomainName: c.domain},
	})
	if r.Err != nil {
		if gophercloud.ResponseCodeIs(r.Err, http.StatusUnauthorized) || gophercloud.ResponseCodeIs(r.Err, http.StatusNotFound) ||
			gophercloud.ResponseCodeIs(r.Err, http.StatusBadRequest) {
			return nil, errBadCredentials
		}
		return nil, fmt.Errorf("keystone: %w", r.Err)
	}
	tok, err := r.ExtractToken()
	if err != nil {
		return nil, fmt.Errorf("keystone token: %w", err)
	}
	s := &session{token: tok.ID, expiresAt: tok.ExpiresAt, domain: c.domain}
	if s.expiresAt.IsZero() {
		s.expiresAt = h.now().Add(time.Hour)
	}
	if u, err := r.ExtractUser(); err == nil && u != nil {
		s.userID, s.userName = u.ID, u.Name
	}
	if p, err := r.ExtractProject(); err == nil && p != nil {
		s.projectID, s.projectName = p.ID, p.Name
	}
	if roles, err := r.ExtractRoles(); err == nil {
		for _, role := range roles {
			s.roles = append(s.roles, role.Name)
		}
	}
	if cat, err := r.ExtractServiceCatalog(); err == nil && cat != nil {
		s.regions = ferryRegions(cat)
	}
	if len(s.regions) > 0 {
		s.region = s.regions[0]
	}
	return s, nil
}

// revoke ends a token at logout (best effort, as Horizon does).
func (h *Handler) revoke(ctx context.Context, token string) {
	id, err := h.identity(token)
	if err != nil {
		return
	}
	if err := tokens.Revoke(ctx, id, token).Err; err != nil {
		h.opts.Logger.Debug("dashboard: token revocation at logout failed", "error", err)
	}
}

// ferryRegions are the regions of the catalog's volume-ferry endpoints,
// sorted.
func ferryRegions(cat *tokens.ServiceCatalog) []string {
	var out []string
	for _, e := range cat.Entries {
		if e.Type != serviceType {
			continue
		}
		for _, ep := range e.Endpoints {
			r := ep.Region
			if r == "" {
				r = ep.RegionID
			}
			if r != "" && !slices.Contains(out, r) {
				out = append(out, r)
			}
		}
	}
	slices.Sort(out)
	return out
}
