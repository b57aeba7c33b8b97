// Package auth is ferry-api's authentication and authorization: Keystone
// token validation with a cache (as keystonemiddleware's auth_token), a gin
// middleware that puts the caller's credentials into the request, and an
// oslo.policy-style rule engine.
package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"

	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/keystone"
)

// HeaderAuthToken carries the caller's Keystone token.
const HeaderAuthToken = "X-Auth-Token"

// TokenValidator validates a caller's token. keystone.Validator and Cache
// implement it. An unknown, expired or revoked token is an error wrapping
// keystone.ErrInvalidToken; any other error means Keystone could not answer.
type TokenValidator interface {
	Validate(ctx context.Context, token string) (*keystone.TokenInfo, error)
}

// Context is an authenticated caller. It never holds the token itself.
type Context struct {
	UserID, UserName       string
	UserDomainID           string
	ProjectID, ProjectName string
	ProjectDomainID        string
	Roles                  []string
	ExpiresAt              time.Time
	Catalog                *tokens.ServiceCatalog
}

// NewContext builds a caller's Context from a validated token.
func NewContext(info *keystone.TokenInfo) *Context {
	return &Context{
		UserID: info.UserID, UserName: info.UserName, UserDomainID: info.UserDomainID,
		ProjectID: info.ProjectID, ProjectName: info.ProjectName, ProjectDomainID: info.ProjectDomainID,
		Roles:     slices.Clone(info.Roles),
		ExpiresAt: info.ExpiresAt,
		Catalog:   info.Catalog,
	}
}

// HasRole reports whether the caller has role, directly or implied
// (admin implies member, member implies reader, as Keystone's defaults).
func (c *Context) HasRole(role string) bool {
	if c == nil {
		return false
	}
	if slices.Contains(c.Roles, role) {
		return true
	}
	switch role {
	case "member":
		return slices.Contains(c.Roles, "admin")
	case "reader":
		return slices.Contains(c.Roles, "admin") || slices.Contains(c.Roles, "member")
	}
	return false
}

// IsAdmin reports whether the caller has the admin role.
func (c *Context) IsAdmin() bool { return c.HasRole("admin") }

const ginKey = "ferry.auth.context"

type ctxKey struct{}

// FromGin returns the caller put there by Middleware, or nil.
func FromGin(c *gin.Context) *Context {
	v, ok := c.Get(ginKey)
	if !ok {
		return nil
	}
	ac, _ := v.(*Context)
	return ac
}

// WithContext returns ctx carrying the caller.
func WithContext(ctx context.Context, ac *Context) context.Context {
	return context.WithValue(ctx, ctxKey{}, ac)
}

// FromContext returns the caller carried by ctx (the request's context
// after Middleware), or nil.
func FromContext(ctx context.Context) *Context {
	ac, _ := ctx.Value(ctxKey{}).(*Context)
	return ac
}

// MaxTokenLength is the longest X-Auth-Token accepted. Keystone's Fernet
// and JWS tokens are a few hundred bytes (Keystone's own max_token_size
// is 255); anything much longer is refused with 401 without asking
// Keystone.
const MaxTokenLength = 8192

// Options configure Middleware.
type Options struct {
	// WWWAuthenticateURI is the Keystone URL sent to unauthenticated
	// callers in WWW-Authenticate.
	WWWAuthenticateURI string
	// SkipPaths are request paths served without a token (exact match),
	// for example "/" and "/healthcheck".
	SkipPaths []string
	// Logger records Keystone failures; nil means slog.Default().
	Logger *slog.Logger
	// Fault writes an error answer (ferry-api's one writer of OpenStack
	// error bodies); required.
	Fault func(c *gin.Context, code int, message string)
}

// OptionsFrom takes the WWW-Authenticate URI from [keystone_authtoken]
// (www_authenticate_uri, else auth_url).
func OptionsFrom(k config.KeystoneAuthtoken, skip ...string) Options {
	uri := k.WWWAuthenticateURI
	if uri == "" {
		uri = k.AuthURL
	}
	return Options{WWWAuthenticateURI: uri, SkipPaths: skip}
}

// Middleware authenticates every request (but the skipped paths) by its
// X-Auth-Token: 401 for a missing, malformed or invalid token, 503 when
// Keystone cannot answer. On success FromGin and FromContext return the
// caller.
func Middleware(v TokenValidator, o Options) gin.HandlerFunc {
	if o.Fault == nil {
		panic("auth.Middleware: Options.Fault is required")
	}
	fault := o.Fault
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	skip := map[string]bool{}
	for _, p := range o.SkipPaths {
		skip[p] = true
	}
	challenge := fmt.Sprintf("Keystone uri=%q", o.WWWAuthenticateURI)
	unauthorized := func(c *gin.Context, msg string) {
		c.Header("WWW-Authenticate", challenge)
		fault(c, http.StatusUnauthorized, msg)
	}
	return func(c *gin.Context) {
		if skip[c.Request.URL.Path] {
			c.Next()
			return
		}
		token := c.GetHeader(HeaderAuthToken)
		if token == "" || !wellFormed(token) {
			unauthorized(c, "The request you have made requires authentication.")
			return
		}
		info, err := v.Validate(c.Request.Context(), token)
		switch {
		case errors.Is(err, keystone.ErrInvalidToken):
			unauthorized(c, "The request you have made requires authentication.")
			return
		case err != nil:
			// Logged here, where it is handled. The error never contains
			// the token.
			log.Error("token validation failed", "error", err, "request_id", c.GetString("request_id"))
			c.Header("Retry-After", "5")
			fault(c, http.StatusServiceUnavailable, "The identity service is unavailable; try again later.")
			return
		}
		ac := NewContext(info)
		c.Set(ginKey, ac)
		c.Request = c.Request.WithContext(WithContext(c.Request.Context(), ac))
		c.Next()
	}
}

// wellFormed: at most MaxTokenLength printable ASCII characters, as
// every Keystone token is; anything else cannot be valid and is not sent
// to Keystone.
func wellFormed(token string) bool {
	if len(token) > MaxTokenLength {
		return false
	}
	for i := 0; i < len(token); i++ {
		if token[i] <= ' ' || token[i] > '~' {
			return false
		}
	}
	return true
}
