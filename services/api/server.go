// Package api is ferry-api: the REST service in front of Ferry's database and
// message bus.
package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/api/cinder"
	"github.com/ferry-project/ferry/services/api/dashboard"
	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/daemon"
	"github.com/ferry-project/ferry/services/internal/keystone"
	"github.com/ferry-project/ferry/services/internal/pki"
)

// Microversions served by /v1 (OpenStack-API-Version: volume-ferry 1.x).
const (
	MinMicroversion = "1.0"
	MaxMicroversion = "1.0"
)

// Server holds ferry-api's dependencies.
type Server struct {
	cfg   *config.Config
	log   *slog.Logger
	db    *db.DB
	hooks Hooks
}

// Run starts ferry-api and serves until ctx is cancelled. The database schema
// must be current (ferry-manage db sync) before it starts.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	store, err := db.Open(ctx, cfg.Database.Connection, db.WithMaxOpenConns(cfg.Database.MaxPoolSize))
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer store.Close()
	if err := store.CheckCurrent(ctx); err != nil {
		return fmt.Errorf("database: %w (run ferry-manage db sync)", err)
	}
	s := &Server{cfg: cfg, log: log, db: store}
	signKey, err := pki.LoadSigningKey(cfg.API.CommandSigningKeyFile)
	if err != nil {
		return fmt.Errorf("[api] command_signing_key_file: %w (ferry-manage pki signing-key makes one)", err)
	}
	pol, err := policyFrom(cfg)
	if err != nil {
		return err
	}
	validator, err := keystone.NewValidator(ctx, cfg.KeystoneAuthtoken)
	if err != nil {
		return fmt.Errorf("[keystone_authtoken]: %w", err)
	}
	opts := amqp.DefaultOptions()
	opts.Name, opts.Logger = "ferry-api "+cfg.Hostname(), log
	bus, err := amqp.New(ctx, cfg.Default.TransportURL, opts)
	if err != nil {
		return fmt.Errorf("[DEFAULT] transport_url: %w", err)
	}
	defer bus.Close(context.WithoutCancel(ctx))
	wiring := Wiring{Validator: validator, Policy: pol, Bus: bus,
		Signer: rpc.NewSigner(signKey, time.Duration(cfg.API.CommandTTL)*time.Second)}
	if len(cfg.Cinder.VolumePools) > 0 {
		cs, err := cinder.New(cfg.KeystoneAuthtoken, cfg.Cinder, log)
		if err != nil {
			return err
		}
		cs.Ledger = grantLedger{db: store}
		wiring.Cinder = cs
	}
	s.Start(ctx, wiring)
	addr := net.JoinHostPort(cfg.API.BindHost, strconv.Itoa(cfg.API.BindPort))
	srv := &http.Server{Addr: addr, Handler: s.Router(), ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("[api] bind: %w", err)
	}
	log.Info("listening", "address", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// Router builds the HTTP handler.
func (s *Server) Router() http.Handler {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	m := newMetrics()
	r.Use(requestID(), m.middleware(), gin.Recovery())
	r.GET("/", s.versions)
	r.GET("/metrics", m.handler())
	r.GET("/healthcheck", s.healthcheck)
	s.routes(r)
	s.mountDashboard(r)
	r.NoRoute(func(c *gin.Context) {
		writeError(c, http.StatusNotFound, "The resource could not be found.")
	})
	return r
}

// mountDashboard serves the web dashboard under /dashboard unless [api]
// dashboard is false (then /dashboard is a 404 like any unknown path). The
// dashboard calls this router in-process, with its users' tokens.
func (s *Server) mountDashboard(r *gin.Engine) {
	k := s.cfg.KeystoneAuthtoken
	if err := dashboard.Register(r, s.cfg.API.Dashboard, dashboard.Options{
		AuthURL: firstNonEmpty(k.WWWAuthenticateURI, k.AuthURL), API: r, Logger: s.log,
	}); err != nil {
		s.log.Error("dashboard disabled", "error", err)
	}
}

// versions is the unversioned root: the versions document.
func (s *Server) versions(c *gin.Context) {
	base := s.baseURL(c)
	c.JSON(http.StatusMultipleChoices, gin.H{"versions": []gin.H{{
		"id":          "v1.0",
		"status":      "CURRENT",
		"version":     MaxMicroversion,
		"min_version": MinMicroversion,
		"updated":     "2026-11-25T00:00:00Z",
		"links":       []gin.H{{"rel": "self", "href": base + "/v1/"}},
		"media-types": []gin.H{{"base": "application/json", "type": "application/vnd.openstack.volume-ferry+json;version=1"}},
	}}})
}

// healthcheck answers 200 when the database answers, 503 otherwise, like
// oslo.middleware's healthcheck.
func (s *Server) healthcheck(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), 5*time.Second)
	defer cancel()
	if err := s.db.Ping(ctx); err != nil {
		s.log.Warn("healthcheck failed", "error", err)
		c.String(http.StatusServiceUnavailable, "database unreachable")
		return
	}
	c.String(http.StatusOK, "OK")
}

// baseURL is [api] public_endpoint or, when unset, the request's own root.
func (s *Server) baseURL(c *gin.Context) string {
	if p := s.cfg.API.PublicEndpoint; p != "" {
		return strings.TrimSuffix(p, "/")
	}
	scheme := "http"
	if c.Request.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + c.Request.Host
}

// Main is ferry-api's main: flags, configuration, logging, signals.
func Main(args []string, stderr io.Writer) int {
	return daemon.Main("ferry-api", "Ferry's REST API: authenticates callers with Keystone, keeps transfers in the database and dispatches them to the region agents.",
		args, stderr, (*config.Config).ForAPI, Run)
}
