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

// tokenExpiry reads a validated token's expires_at. Keystone writes it
// with a zone ("…Z") for an ordinary token, but without one when it caps
// the token at an application credential's expiry ("2026-12-03T12:19:31.969846",
// UTC): gophercloud's RFC 3339 parsing refuses the latter, so the time is
// read here.
func tokenExpiry(r tokens.GetResult) (time.Time, error) {
	var tok struct {
		ExpiresAt string `json:"expires_at"`
	}
	if err := r.ExtractIntoStructPtr(&tok, "token"); err != nil {
		return time.Time{}, err
	}
	return parseKeystoneTime(tok.ExpiresAt)
}

// parseKeystoneTime parses a Keystone time, with or without a zone (UTC
// then); an empty one is the zero time.
func parseKeystoneTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	t, err := time.ParseInLocation("2006-01-02T15:04:05.999999999", s, time.UTC)
	if err != nil {
		return time.Time{}, fmt.Errorf("token expires_at %q: %w", s, err)
	}
	return t, nil
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
	expires, err := tokenExpiry(r)
	if err != nil {
		return nil, fmt.Errorf("validating token: %w", err)
	}
	info := &TokenInfo{ExpiresAt: expires}
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
