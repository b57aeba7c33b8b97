// Package api is ferry-api: the REST service in front of Ferry's database and
// message bus.
package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
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
	MaxMicroversion = "1.2"
)

// Server holds ferry-api's dependencies.
type Server struct {
	cfg     *config.Config
	log     *slog.Logger
	db      *db.DB
	hooks   Hooks
	metrics *metrics
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
	// The HTTP server and the background loops: the first to fail stops
	// the others, and ferry-api exits with its error.
	return runLoops(ctx, append(s.wire(wiring), loop{"API server", s.serve}))
}

// serve runs the API's listener (HTTPS with [api] cert_file and key_file)
// and, with [api] metrics_listen, the metrics listener, until ctx ends.
func (s *Server) serve(ctx context.Context) error {
	a := s.cfg.API
	addr := net.JoinHostPort(a.BindHost, strconv.Itoa(a.BindPort))
	srv := s.httpServer(s.Router())
	servers := []*http.Server{srv}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("[api] bind: %w", err)
	}
	if a.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("[api] cert_file, key_file: %w", err)
		}
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	s.log.Info("listening", "address", ln.Addr().String(), "tls", a.CertFile != "")
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if a.MetricsListen != "" {
		mln, err := net.Listen("tcp", a.MetricsListen)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("[api] metrics_listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", s.metrics.httpHandler())
		msrv := s.httpServer(mux)
		servers = append(servers, msrv)
		s.log.Info("serving metrics", "address", mln.Addr().String())
		go func() { errc <- msrv.Serve(mln) }()
	}
	select {
	case err := <-errc:
		for _, sv := range servers {
			_ = sv.Close()
		}
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, sv := range servers {
		if err := sv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	return nil
}

// httpServer is an http.Server with [api]'s timeouts: no client holds a
// connection or a goroutine for longer than they allow.
func (s *Server) httpServer(h http.Handler) *http.Server {
	a := s.cfg.API
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(10*time.Second, secondsDur(a.ReadTimeout)),
		ReadTimeout:       secondsDur(a.ReadTimeout),
		WriteTimeout:      secondsDur(a.WriteTimeout),
		IdleTimeout:       secondsDur(a.IdleTimeout),
		MaxHeaderBytes:    256 << 10, // a 64 KiB token still reaches the middleware (401)
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// Router builds the HTTP handler: the request id and the trusted proxies
// around gin, which answers 404 and 405 (with Allow) in OpenStack's form.
func (s *Server) Router() http.Handler {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	// The client's address is RemoteAddr, which trustedProxies rewrote;
	// gin believes no forwarding header itself.
	_ = r.SetTrustedProxies(nil)
	r.ForwardedByClientIP = false
	if s.metrics == nil {
		s.metrics = newMetrics()
	}
	r.Use(requestID(), s.metrics.middleware(), recovery(s.log))
	r.GET("/", s.versions)
	r.GET("/healthcheck", s.healthcheck)
	s.routes(r)
	r.NoRoute(func(c *gin.Context) {
		writeError(c, http.StatusNotFound, notFoundMessage)
	})
	r.NoMethod(func(c *gin.Context) {
		if hiddenPath(c) {
			c.Writer.Header().Del("Allow")
			writeError(c, http.StatusNotFound, notFoundMessage)
			return
		}
		writeError(c, http.StatusMethodNotAllowed, fmt.Sprintf("The method %s is not allowed for this resource (allowed: %s).",
			c.Request.Method, c.Writer.Header().Get("Allow")))
	})
	proxies, err := newTrustedProxies(s.cfg.API.TrustedProxies)
	if err != nil { // config.validate checked them
		s.log.Error("[api] trusted_proxies ignored", "error", err)
	}
	h := withRequestID(proxies.handler(r))
	s.mountDashboard(r, h)
	return h
}

// mountDashboard serves the web dashboard under /dashboard unless [api]
// dashboard is false (then /dashboard is a 404 like any unknown path). The
// dashboard calls this router in-process, with its users' tokens.
func (s *Server) mountDashboard(r *gin.Engine, api http.Handler) {
	k, a := s.cfg.KeystoneAuthtoken, s.cfg.API
	if err := dashboard.Register(r, a.Dashboard, dashboard.Options{
		AuthURL: firstNonEmpty(k.WWWAuthenticateURI, k.AuthURL), API: api, Logger: s.log,
		KeystoneTimeout: secondsDur(k.HTTPRequestTimeout),
		LoginAttempts:   a.LoginAttempts, LoginWindow: secondsDur(a.LoginWindow),
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
		"updated":     "2026-12-03T00:00:00Z",
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
		writeError(c, http.StatusServiceUnavailable, "The database is unreachable.")
		return
	}
	c.String(http.StatusOK, "OK")
}

// baseURL is the root of the links the API writes: [api] public_endpoint;
// else what a trusted proxy says (X-Forwarded-Proto, X-Forwarded-Host:
// trustedProxies removed them from anyone else's requests); else this
// server's own address. Never the client's Host header.
func (s *Server) baseURL(c *gin.Context) string {
	a := s.cfg.API
	if a.PublicEndpoint != "" {
		return strings.TrimSuffix(a.PublicEndpoint, "/")
	}
	scheme := "http"
	if c.Request.TLS != nil || a.CertFile != "" {
		scheme = "https"
	}
	if p := forwardedProto(c.Request); p != "" {
		scheme = p
	}
	if h := forwardedHost(c.Request); h != "" {
		return scheme + "://" + h
	}
	host := a.BindHost
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() || host == "" {
		host = s.cfg.Hostname()
	}
	return scheme + "://" + net.JoinHostPort(host, strconv.Itoa(a.BindPort))
}

// Main is ferry-api's main: flags, configuration, logging, signals.
func Main(args []string, stderr io.Writer) int {
	return daemon.Main("ferry-api", "Ferry's REST API: authenticates callers with Keystone, keeps transfers in the database and dispatches them to the region agents.",
		args, stderr, (*config.Config).ForAPI, Run)
}
