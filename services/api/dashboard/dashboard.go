// Package dashboard is Ferry's web dashboard, a Horizon-like panel served
// by ferry-api under /dashboard. It logs users in with Keystone, keeps
// their tokens on the server (the browser holds only a session id) and
// calls the API in-process with the client library, through the same
// authentication and policy as any client. It never touches the database.
package dashboard

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// Prefix is where the dashboard is mounted.
const Prefix = "/dashboard"

const (
	sessionCookie = "ferry_session"
	loginCSRF     = "ferry_login_csrf"
	csrfField     = "csrf_token"
	csrfHeader    = "X-CSRF-Token"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Options configure the dashboard.
type Options struct {
	// AuthURL is Keystone's public Identity endpoint
	// ([keystone_authtoken] www_authenticate_uri, else auth_url).
	AuthURL string
	// API is ferry-api's own router: the dashboard's API calls are served
	// by it in-process, with the session's token.
	API http.Handler
	// Logger; nil discards.
	Logger *slog.Logger
	// KeystoneTransport carries the requests to Keystone; nil is
	// http.DefaultTransport.
	KeystoneTransport http.RoundTripper
	// MaxSessions bounds the session store (default 10000); beyond it the
	// least recently used session is dropped.
	MaxSessions int
	// IdleTimeout ends a session without requests (default 1 h); a
	// session also ends with its token.
	IdleTimeout time.Duration
	// KeystoneTimeout bounds one request to Keystone (default 10 s).
	KeystoneTimeout time.Duration
	// LoginAttempts failed logins per user name (four times as many per
	// client address) within LoginWindow are allowed; further logins are
	// refused with 429 until the window has passed. Defaults: 5, 5 min.
	LoginAttempts int
	LoginWindow   time.Duration
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// maxThrottleKeys bounds each login throttle's memory.
const maxThrottleKeys = 10000

// Handler serves /dashboard.
type Handler struct {
	opts         Options
	sessions     *sessionStore
	userThrottle *throttle
	addrThrottle *throttle
	pages        map[string]*template.Template
	mux          *http.ServeMux
	now          func() time.Time
}

// New builds the dashboard.
func New(opts Options) (*Handler, error) {
	if opts.API == nil {
		return nil, errors.New("dashboard: no API handler")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = 10000
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.KeystoneTimeout <= 0 {
		opts.KeystoneTimeout = 10 * time.Second
	}
	if opts.LoginAttempts <= 0 {
		opts.LoginAttempts = 5
	}
	if opts.LoginWindow <= 0 {
		opts.LoginWindow = 5 * time.Minute
	}
	h := &Handler{opts: opts, now: opts.Now, sessions: newSessionStore(opts.MaxSessions, opts.IdleTimeout, opts.Now),
		userThrottle: newThrottle(opts.LoginAttempts, opts.LoginWindow, maxThrottleKeys, opts.Now),
		addrThrottle: newThrottle(4*opts.LoginAttempts, opts.LoginWindow, maxThrottleKeys, opts.Now)}
	var err error
	if h.pages, err = parsePages(); err != nil {
		return nil, err
	}
	h.routes()
	return h, nil
}

func parsePages() (map[string]*template.Template, error) {
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("dashboard templates: %w", err)
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return nil, fmt.Errorf("dashboard template %s: %w", n, err)
		}
		pages[name] = t
	}
	return pages, nil
}

func (h *Handler) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	fileServer := http.StripPrefix(Prefix+"/static/", http.FileServerFS(static))
	m.HandleFunc("GET "+Prefix+"/static/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		fileServer.ServeHTTP(w, r)
	})
	m.HandleFunc("GET "+Prefix+"/{$}", h.home)
	m.HandleFunc("GET "+Prefix, h.home)
	m.HandleFunc("GET "+Prefix+"/auth/login", h.loginPage)
	m.HandleFunc("POST "+Prefix+"/auth/login", h.login)
	m.HandleFunc("POST "+Prefix+"/auth/logout", h.post(h.logout))
	m.HandleFunc("POST "+Prefix+"/region", h.post(h.selectRegion))
	m.HandleFunc("GET "+Prefix+"/project/transfers", h.get(h.transfersPage))
	m.HandleFunc("GET "+Prefix+"/project/transfers/data", h.data(h.transfersData))
	m.HandleFunc("GET "+Prefix+"/project/transfers/create", h.get(h.createPage))
	m.HandleFunc("POST "+Prefix+"/project/transfers/create", h.post(h.create))
	m.HandleFunc("GET "+Prefix+"/project/transfers/{id}", h.get(h.detailPage))
	m.HandleFunc("POST "+Prefix+"/project/transfers/{id}/{action}", h.post(h.action))
	m.HandleFunc("GET "+Prefix+"/project/replications", h.get(h.replicationsPage))
	m.HandleFunc("GET "+Prefix+"/project/replications/data", h.data(h.replicationsData))
	m.HandleFunc("GET "+Prefix+"/project/replications/{id}", h.get(h.replicationPage))
	m.HandleFunc("POST "+Prefix+"/project/replications/{id}/{action}", h.post(h.replicationAction))
	m.HandleFunc("GET "+Prefix+"/project/replication-groups", h.get(h.groupsPage))
	m.HandleFunc("GET "+Prefix+"/project/replication-groups/data", h.data(h.groupsData))
	m.HandleFunc("GET "+Prefix+"/project/replication-groups/{id}", h.get(h.groupPage))
	m.HandleFunc("POST "+Prefix+"/project/replication-groups/{id}/{action}", h.post(h.groupAction))
	m.HandleFunc("GET "+Prefix+"/admin/services", h.get(h.servicesPage))
	m.HandleFunc(Prefix+"/", func(w http.ResponseWriter, r *http.Request) {
		h.errorPage(w, r, h.currentSession(r), http.StatusNotFound, "Page not found", "The page you were looking for does not exist.")
	})
	h.mux = m
}

// ServeHTTP serves the requests under /dashboard.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "same-origin")
	if !strings.HasPrefix(r.URL.Path, Prefix+"/static/") {
		hd.Set("Cache-Control", "no-store")
	}
	if r.Method == http.MethodPost && !sameOrigin(r) {
		h.forbidden(w, r, "Cross-site request refused.")
		return
	}
	h.sessions.sweepEvery(time.Minute)
	h.mux.ServeHTTP(w, r)
}

// sameOrigin: an Origin (or, without one, a Referer) header that names
// another host is a cross-site request.
func sameOrigin(r *http.Request) bool {
	src := r.Header.Get("Origin")
	if src == "" || src == "null" {
		if src == "null" {
			return false
		}
		src = r.Header.Get("Referer")
	}
	if src == "" {
		return true
	}
	u, err := url.Parse(src)
	if err != nil || u.Host == "" {
		return false
	}
	host := r.Host
	if fh := r.Header.Get("X-Forwarded-Host"); fh != "" {
		host, _, _ = strings.Cut(fh, ",")
	}
	return strings.EqualFold(u.Host, strings.TrimSpace(host))
}

// secure: the browser reached the dashboard over TLS, directly or through
// a TLS-terminating proxy. ferry-api removes X-Forwarded-* from every
// request that does not come from one of its [api] trusted_proxies, so
// the header is a trusted proxy's word here.
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(strings.TrimSpace(r.Header.Get("X-Forwarded-Proto")), "https")
}

// clientAddr is the client's address (ferry-api made RemoteAddr the
// client's behind a trusted proxy).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (h *Handler) currentSession(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	return h.sessions.get(c.Value)
}

func (h *Handler) setCookie(w http.ResponseWriter, r *http.Request, name, value, path string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: path, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r),
	})
}

// get wraps a page that needs a session: without one, the login page.
func (h *Handler) get(fn func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := h.currentSession(r)
		if s == nil {
			h.toLogin(w, r, r.URL.RequestURI(), r.Header.Get("Cookie") != "" && hasCookie(r, sessionCookie))
			return
		}
		fn(w, r, s)
	}
}

// post wraps a form handler: it needs a session and its CSRF token (form
// field or header), else 403.
func (h *Handler) post(fn func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		s := h.currentSession(r)
		if s == nil {
			if r.Header.Get(csrfHeader) != "" {
				writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "Your session has expired."})
				return
			}
			h.toLogin(w, r, "", hasCookie(r, sessionCookie))
			return
		}
		tok := r.Header.Get(csrfHeader)
		if tok == "" {
			tok = r.PostFormValue(csrfField)
		}
		if !equalTokens(tok, s.csrf) {
			h.forbidden(w, r, "CSRF verification failed: reload the page and try again.")
			return
		}
		fn(w, r, s)
	}
}

// data wraps a JSON endpoint of the pages' scripts.
func (h *Handler) data(fn func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := h.currentSession(r)
		if s == nil {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "Your session has expired."})
			return
		}
		fn(w, r, s)
	}
}

func hasCookie(r *http.Request, name string) bool {
	_, err := r.Cookie(name)
	return err == nil
}

// toLogin redirects to the login page, back to next afterwards.
func (h *Handler) toLogin(w http.ResponseWriter, r *http.Request, next string, expired bool) {
	q := url.Values{}
	if next != "" && safeNext(next) {
		q.Set("next", next)
	}
	if expired {
		q.Set("msg", "expired")
		h.setCookie(w, r, sessionCookie, "", Prefix, -1)
	}
	target := Prefix + "/auth/login"
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
}

// safeNext accepts only a path of the dashboard (no open redirect).
func safeNext(next string) bool {
	return strings.HasPrefix(next, Prefix+"/") && !strings.HasPrefix(next, "//") && !strings.ContainsAny(next, "\\\r\n") &&
		!strings.HasPrefix(next, Prefix+"/auth/")
}

func (h *Handler) home(w http.ResponseWriter, r *http.Request) {
	if h.currentSession(r) == nil {
		h.toLogin(w, r, "", false)
		return
	}
	http.Redirect(w, r, Prefix+"/project/transfers", http.StatusSeeOther)
}

func (h *Handler) forbidden(w http.ResponseWriter, r *http.Request, msg string) {
	h.errorPage(w, r, h.currentSession(r), http.StatusForbidden, "Forbidden", msg)
}

// Register mounts the dashboard on r under /dashboard when enabled; when
// not, nothing is mounted and /dashboard is the router's 404.
func Register(r gin.IRoutes, enabled bool, opts Options) error {
	if !enabled {
		return nil
	}
	d, err := New(opts)
	if err != nil {
		return err
	}
	h := gin.WrapH(d)
	r.Any(Prefix, h)
	r.Any(Prefix+"/*path", h)
	return nil
}
