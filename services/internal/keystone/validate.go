package keystone

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"

	"github.com/ferry-project/ferry/services/internal/config"
)

// ErrInvalidToken means Keystone does not know the token, or it expired or
// was revoked.
var ErrInvalidToken = errors.New("invalid or expired token")

// TokenInfo is what Ferry keeps of a validated token. It never keeps the
// token itself.
type TokenInfo struct {
	UserID, UserName       string
	UserDomainID           string
	ProjectID, ProjectName string
	ProjectDomainID        string
	Roles                  []string
	ExpiresAt              time.Time
	Catalog                *tokens.ServiceCatalog
}

// HasRole reports whether the token carries role name.
func (t *TokenInfo) HasRole(name string) bool {
	for _, r := range t.Roles {
		if r == name {
			return true
		}
	}
	return false
}

// Validator validates callers' tokens as the service user, with GET
// /v3/auth/tokens (Keystone's default policy refuses HEAD to the service
// role).
type Validator struct {
	identity *gophercloud.ServiceClient
	timeout  time.Duration
}

// NewValidator authenticates the service user of [keystone_authtoken].
// Every request to Keystone, the service user's own authentication
// included, is bounded by http_request_timeout.
func NewValidator(ctx context.Context, k config.KeystoneAuthtoken) (*Validator, error) {
	timeout := time.Duration(k.HTTPRequestTimeout) * time.Second
	creds := Credentials{
		AuthURL: k.AuthURL, Username: k.Username, Password: k.Password,
		ProjectName: k.ProjectName, UserDomainName: k.UserDomainName,
		ProjectDomainName: k.ProjectDomainName, RegionName: k.RegionName,
		Timeout: timeout,
	}
	actx, cancel := contextWithTimeout(ctx, timeout)
	defer cancel()
	p, eo, err := creds.Authenticate(actx)
	if err != nil {
		return nil, fmt.Errorf("service user %q: %w", k.Username, err)
	}
	id, err := openstack.NewIdentityV3(p, eo)
	if err != nil {
		return nil, fmt.Errorf("identity endpoint in region %q: %w", eo.Region, err)
	}
	return &Validator{identity: id, timeout: timeout}, nil
}

// contextWithTimeout is ctx bounded by d; a zero d leaves it unbounded.
func contextWithTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// Validate asks Keystone about a caller's token.
func (v *Validator) Validate(ctx context.Context, subject string) (*TokenInfo, error) {
	if subject == "" {
		return nil, ErrInvalidToken
	}
	// The bound covers a re-authentication of the service user too.
	ctx, cancel := contextWithTimeout(ctx, 2*v.timeout)
	defer cancel()
	r := tokens.Get(ctx, v.identity, subject)
	if r.Err != nil {
		// 404 is Keystone's answer for an unknown, expired or revoked
		// token, 400 for a subject token it cannot even parse. A 401
		// would be about the service user's own token, which gophercloud
		// renews once by itself: an error, not the caller's.
		if gophercloud.ResponseCodeIs(r.Err, http.StatusNotFound) || gophercloud.ResponseCodeIs(r.Err, http.StatusBadRequest) {
			return nil, fmt.Errorf("%w (%w)", ErrInvalidToken, r.Err)
		}
		return nil, fmt.Errorf("validating token: %w", r.Err)
	}
	tok, err := r.ExtractToken()
	if err != nil {
		return nil, fmt.Errorf("validating token: %w", err)
	}
	info := &TokenInfo{ExpiresAt: tok.ExpiresAt}
	if u, err := r.ExtractUser(); err == nil {
		info.UserID, info.UserName, info.UserDomainID = u.ID, u.Name, u.Domain.ID
	}
	if p, err := r.ExtractProject(); err == nil && p != nil {
		info.ProjectID, info.ProjectName, info.ProjectDomainID = p.ID, p.Name, p.Domain.ID
	}
	if roles, err := r.ExtractRoles(); err == nil {
		for _, role := range roles {
			info.Roles = append(info.Roles, role.Name)
		}
	}
	if cat, err := r.ExtractServiceCatalog(); err == nil {
		info.Catalog = cat
	}
	if !info.ExpiresAt.IsZero() && time.Now().After(info.ExpiresAt) {
		return nil, ErrInvalidToken
	}
	return info, nil
}
