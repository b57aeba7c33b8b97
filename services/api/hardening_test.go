package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/api/auth"
	"github.com/ferry-project/ferry/services/internal/config"
)

// policyHooks are fakeHooks with the real policy engine and overrides:
// the caller (from the test headers) carries an auth.Context.
func policyHooks(t *testing.T, kicks *atomic.Int32, overrides map[string]string) Hooks {
	t.Helper()
	pol, err := auth.NewPolicy(overrides)
	if err != nil {
		t.Fatal(err)
	}
	h := fakeHooks(kicks)
	h.Authenticate = func(c *gin.Context) {
		if c.GetHeader("X-Test-User") == "" {
			writeError(c, http.StatusUnauthorized, "no token")
			return
		}
		ac := &auth.Context{UserID: c.GetHeader("X-Test-User"), ProjectID: c.GetHeader("X-Test-Project"),
			Roles: strings.Split(c.GetHeader("X-Test-Roles"), ",")}
		c.Set("test-caller", &Caller{UserID: ac.UserID, ProjectID: ac.ProjectID, Roles: ac.Roles,
			Regions: []string{"RegionOne", "RegionTwo"}, creds: ac})
	}
	h.Allowed = func(rule string, c *Caller, target map[string]string) bool {
		ac, _ := c.creds.(*auth.Context)
		return ac != nil && pol.Enforce(rule, ac, target)
	}
	return h
}

func newHardeningTest(t *testing.T, hooks func(*atomic.Int32) Hooks, cfg func(*config.Config)) (*apiTest, *Server) {
	t.Helper()
	d := testDB(t)
	at := &apiTest{t: t, db: d}
	c := config.Defaults()
	if cfg != nil {
		cfg(c)
	}
	s := &Server{cfg: c, log: slog.New(slog.DiscardHandler), db: d, hooks: hooks(&at.kicks)}
	ts := httptest.NewServer(s.Router())
	t.Cleanup(ts.Close)
	at.url = ts.URL
	return at, s
}

// The policy target of show, events, cancel, retry and delete is the
// transfer's own project, not the caller's: with rules that allow admins
// only in their own project, an admin (who sees every project's transfers)
// may not act on another project's transfer. Before the fix the rules were
// checked against the admin's own project and all of this was allowed.
func TestPolicyTargetIsTheTransfersProject(t *testing.T) {
	own := "role:admin and project_id:%(project_id)s or role:member and project_id:%(project_id)s"
	a, _ := newHardeningTest(t, func(k *atomic.Int32) Hooks {
		return policyHooks(t, k, map[string]string{
			"transfer:get": own, "transfer:events": own, "transfer:delete": own, "transfer:cancel": own, "transfer:retry": own,
			"transfer:create:image_source": "@",
		})
	}, nil)
	id := a.create(demo)
	ctx := context.Background()
	if _, err := a.db.TransitionTransfer(ctx, id, db.StatusError, db.TransitionOpts{Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ method, path, body string }{
		{"GET", "/v1/transfers/" + id, ""},
		{"GET", "/v1/transfers/" + id + "/events", ""},
		{"POST", "/v1/transfers/" + id + "/action", `{"retry": null}`},
		{"POST", "/v1/transfers/" + id + "/action", `{"cancel": null}`},
		{"DELETE", "/v1/transfers/" + id, ""},
	} {
		if code, m := a.do(admin, r.method, r.path, r.body); code != http.StatusForbidden || m["forbidden"] == nil {
			t.Errorf("admin of another project: %s %s: %d %v, want 403", r.method, r.path, code, m)
		}
		// Another project's member does not even see it.
		if code, _ := a.do(alt, r.method, r.path, r.body); code != http.StatusNotFound {
			t.Errorf("alt: %s %s: %d, want 404", r.method, r.path, code)
		}
	}
	if _, err := a.db.GetTransfer(ctx, id, db.AllProjectsScope()); err != nil {
		t.Fatalf("the transfer is gone: %v", err)
	}
	// Its own project's member may.
	if code, _ := a.do(demo, "GET", "/v1/transfers/"+id+"/events", ""); code != 200 {
		t.Errorf("demo's events: %d", code)
	}
	if code, m := a.do(demo, "DELETE", "/v1/transfers/"+id, ""); code != http.StatusNoContent {
		t.Errorf("demo's delete: %d %v", code, m)
	}

	// The default policy: an admin acts on any project's transfer, a
	// reader of the owning project reads but may not delete.
	d, _ := newHardeningTest(t, func(k *atomic.Int32) Hooks {
		return policyHooks(t, k, map[string]string{"transfer:create:image_source": "@"})
	}, nil)
	id = d.create(demo)
	if _, err := d.db.TransitionTransfer(ctx, id, db.StatusError, db.TransitionOpts{Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	if code, _ := d.do(reader, "GET", "/v1/transfers/"+id, ""); code != 200 {
		t.Errorf("reader shows: %d", code)
	}
	if code, _ := d.do(reader, "DELETE", "/v1/transfers/"+id, ""); code != http.StatusForbidden {
		t.Errorf("reader deletes: %d", code)
	}
	if code, _ := d.do(admin, "DELETE", "/v1/transfers/"+id, ""); code != http.StatusNoContent {
		t.Errorf("admin deletes demo's transfer: %d", code)
	}
}

// raw sends a request and returns the response with its body read.
func raw(t *testing.T, method, url, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// isFault reports whether b is an OpenStack error body for code.
func isFault(b []byte, code int) bool {
	var m map[string]struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &m) != nil || len(m) != 1 {
		return false
	}
	for _, f := range m {
		return f.Code == code && f.Message != ""
	}
	return false
}

var who = []string{"X-Test-User", "admin-user", "X-Test-Project", "admin-project", "X-Test-Roles", "admin"}

// Every answer has a request id (the router's redirects too); 404 and 405
// have OpenStack bodies, 405 an Allow header; a non-JSON body is a 415.
func TestRouterAnswers(t *testing.T) {
	a, _ := newHardeningTest(t, fakeHooks, nil)
	id := a.create(admin)
	for _, tc := range []struct {
		method, path, body, ctype string
		code                      int
		allow                     string
	}{
		{"GET", "/v1/transfers/", "", "", http.StatusMovedPermanently, ""},
		{"POST", "/v1/transfers/", "{}", "application/json", http.StatusTemporaryRedirect, ""},
		{"GET", "/v1/nothing", "", "", http.StatusNotFound, ""},
		{"PUT", "/v1/transfers/" + id, "{}", "application/json", http.StatusMethodNotAllowed, "GET, DELETE"},
		{"PATCH", "/v1/transfers", "{}", "application/json", http.StatusMethodNotAllowed, "GET, POST"},
		{"DELETE", "/v1/transfers/" + id + "/events", "", "", http.StatusMethodNotAllowed, "GET"},
		{"GET", "/v1/transfers/" + id + "/action", "", "", http.StatusMethodNotAllowed, "POST"},
		{"POST", "/", "", "", http.StatusMethodNotAllowed, "GET"},
		{"POST", "/v1/transfers", imageBody, "text/plain", http.StatusUnsupportedMediaType, ""},
		{"POST", "/v1/transfers", imageBody, "application/x-www-form-urlencoded", http.StatusUnsupportedMediaType, ""},
		{"POST", "/v1/transfers/" + id + "/action", `{"cancel": null}`, "multipart/form-data; boundary=x", http.StatusUnsupportedMediaType, ""},
		{"POST", "/v1/transfers", imageBody, "application/json; charset=utf-8", http.StatusAccepted, ""},
		{"POST", "/v1/transfers", imageBody, "", http.StatusAccepted, ""},
		{"POST", "/v1/transfers", imageBody, ";;;", http.StatusUnsupportedMediaType, ""},
	} {
		hdr := append([]string{}, who...)
		if tc.ctype != "" {
			hdr = append(hdr, "Content-Type", tc.ctype)
		}
		resp, b := raw(t, tc.method, a.url+tc.path, tc.body, hdr...)
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s (%s): %d, want %d: %s", tc.method, tc.path, tc.ctype, resp.StatusCode, tc.code, b)
			continue
		}
		if !strings.HasPrefix(resp.Header.Get(HeaderRequestID), "req-") {
			t.Errorf("%s %s: %d without a request id", tc.method, tc.path, resp.StatusCode)
		}
		if tc.code >= 400 && !isFault(b, tc.code) {
			t.Errorf("%s %s: %d body %q is not an OpenStack error", tc.method, tc.path, tc.code, b)
		}
		if tc.allow != "" && resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, resp.Header.Get("Allow"), tc.allow)
		}
	}
}

// A panic in a handler is a logged 500 with an OpenStack body.
func TestRecoveryIsOpenStack500(t *testing.T) {
	gin.SetMode(gin.TestMode)
	r := gin.New()
	r.Use(requestID(), recovery(slog.New(slog.DiscardHandler)))
	r.GET("/boom", func(*gin.Context) { panic("boom") })
	w := httptest.NewRecorder()
	r.ServeHTTP(w, httptest.NewRequest("GET", "/boom", nil))
	if w.Code != 500 || !isFault(w.Body.Bytes(), 500) || w.Header().Get(HeaderRequestID) == "" {
		t.Errorf("panic: %d %s", w.Code, w.Body)
	}
}

// Links never reflect a client's Host: they come from public_endpoint,
// else from a trusted proxy's X-Forwarded-Host/-Proto, else from the bind
// address.
func TestLinksIgnoreTheClientsHost(t *testing.T) {
	next := func(a *apiTest, hdr ...string) string {
		t.Helper()
		resp, b := raw(t, "GET", a.url+"/v1/transfers?limit=1", "", append(append([]string{}, who...), hdr...)...)
		var m struct {
			Links []struct{ Href string } `json:"transfers_links"`
		}
		if resp.StatusCode != 200 || json.Unmarshal(b, &m) != nil || len(m.Links) != 1 {
			t.Fatalf("list: %d %s", resp.StatusCode, b)
		}
		return m.Links[0].Href
	}
	untrusted, _ := newHardeningTest(t, fakeHooks, func(c *config.Config) {
		c.API.BindHost, c.API.BindPort = "192.0.2.10", 9790
		c.API.TrustedProxies = []string{"10.0.0.0/8"}
	})
	untrusted.create(admin)
	untrusted.create(admin)
	for _, hdr := range [][]string{
		nil,
		{"Host", "evil.example"},
		{"X-Forwarded-Host", "evil.example", "X-Forwarded-Proto", "https"},
	} {
		if h := next(untrusted, hdr...); !strings.HasPrefix(h, "http://192.0.2.10:9790/v1/transfers?") {
			t.Errorf("headers %q: link %s", hdr, h)
		}
	}
	trusted, _ := newHardeningTest(t, fakeHooks, func(c *config.Config) {
		c.API.BindHost = "192.0.2.10"
		c.API.TrustedProxies = []string{"127.0.0.1", "::1"}
	})
	trusted.create(admin)
	trusted.create(admin)
	if h := next(trusted, "X-Forwarded-Host", "ferry.example.org", "X-Forwarded-Proto", "https"); !strings.HasPrefix(h, "https://ferry.example.org/v1/transfers?") {
		t.Errorf("trusted proxy: link %s", h)
	}
	if h := next(trusted, "X-Forwarded-Host", "evil.example/path@x"); !strings.HasPrefix(h, "http://192.0.2.10:9790/") {
		t.Errorf("a malformed forwarded host: link %s", h)
	}
	pub, s := newHardeningTest(t, fakeHooks, nil)
	s.cfg.API.PublicEndpoint = "https://ferry.example.com:8443/"
	pub.create(admin)
	pub.create(admin)
	if h := next(pub, "Host", "evil.example"); !strings.HasPrefix(h, "https://ferry.example.com:8443/v1/transfers?") {
		t.Errorf("public_endpoint: link %s", h)
	}
}

// Forwarding headers of untrusted clients are dropped before any handler
// (the dashboard's Secure cookie, gin's redirect prefix); a trusted
// proxy's are kept and its X-Forwarded-For is the client's address.
func TestTrustedProxies(t *testing.T) {
	p, err := newTrustedProxies([]string{"10.0.0.0/8", "192.0.2.1"})
	if err != nil {
		t.Fatal(err)
	}
	var seen *http.Request
	h := p.handler(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { seen = r }))
	for _, tc := range []struct {
		remote, xff, proto, wantRemote, wantProto string
	}{
		{"203.0.113.5:4000", "198.51.100.1", "https", "203.0.113.5:4000", ""},
		{"10.1.2.3:4000", "198.51.100.1", "https", "198.51.100.1:0", "https"},
		{"192.0.2.1:4000", "198.51.100.1, 10.0.0.7", "https", "198.51.100.1:0", "https"},
		{"[::ffff:10.1.2.3]:4000", "spoofed, 198.51.100.9", "http", "198.51.100.9:0", "http"},
		{"192.0.2.2:4000", "198.51.100.1", "https", "192.0.2.2:4000", ""},
	} {
		req := httptest.NewRequest("GET", "/dashboard/auth/login", nil)
		req.RemoteAddr = tc.remote
		req.Header.Set("X-Forwarded-For", tc.xff)
		req.Header.Set("X-Forwarded-Proto", tc.proto)
		req.Header.Set("X-Forwarded-Prefix", "/evil")
		h.ServeHTTP(httptest.NewRecorder(), req)
		if seen.RemoteAddr != tc.wantRemote || seen.Header.Get("X-Forwarded-Proto") != tc.wantProto {
			t.Errorf("from %s: remote %s proto %q, want %s %q", tc.remote, seen.RemoteAddr, seen.Header.Get("X-Forwarded-Proto"), tc.wantRemote, tc.wantProto)
		}
		if tc.wantProto == "" && seen.Header.Get("X-Forwarded-Prefix") != "" {
			t.Errorf("from %s: X-Forwarded-Prefix kept", tc.remote)
		}
	}
	if _, err := newTrustedProxies([]string{"10.0.0.0/33"}); err == nil {
		t.Error("a bad CIDR accepted")
	}
}

// The dashboard's cookies are Secure behind a trusted TLS proxy and only
// then (through the whole router).
func TestDashboardSecureBehindTrustedProxy(t *testing.T) {
	for _, tc := range []struct {
		trusted []string
		secure  bool
	}{{[]string{"127.0.0.1", "::1"}, true}, {nil, false}} {
		a, _ := newHardeningTest(t, fakeHooks, func(c *config.Config) {
			c.API.TrustedProxies = tc.trusted
			c.KeystoneAuthtoken.AuthURL = "http://127.0.0.1:1/v3"
		})
		resp, _ := raw(t, "GET", a.url+"/dashboard/auth/login", "", "X-Forwarded-Proto", "https")
		cs := resp.Cookies()
		if resp.StatusCode != 200 || len(cs) != 1 || cs[0].Secure != tc.secure {
			t.Errorf("trusted %v: %d cookies %+v, want Secure %v", tc.trusted, resp.StatusCode, cs, tc.secure)
		}
	}
}

// /metrics on the API port is for admins (metrics:get); with
// metrics_listen it moves to its own listener and is gone from the API.
func TestMetricsNeedAdmin(t *testing.T) {
	a, _ := newHardeningTest(t, func(k *atomic.Int32) Hooks { return policyHooks(t, k, nil) }, nil)
	for _, p := range []string{"/", "/nope", "/healthcheck"} {
		raw(t, "GET", a.url+p, "")
	}
	if resp, b := raw(t, "GET", a.url+"/metrics", ""); resp.StatusCode != 401 || !isFault(b, 401) {
		t.Errorf("anonymous /metrics: %d %s", resp.StatusCode, b)
	}
	if resp, b := raw(t, "GET", a.url+"/metrics", "", "X-Test-User", "u", "X-Test-Project", "p", "X-Test-Roles", "member,reader"); resp.StatusCode != 403 || !isFault(b, 403) {
		t.Errorf("member /metrics: %d %s", resp.StatusCode, b)
	}
	resp, b := raw(t, "GET", a.url+"/metrics", "", who...)
	if resp.StatusCode != 200 {
		t.Fatalf("admin /metrics: %d %s", resp.StatusCode, b)
	}
	for _, want := range []string{
		`ferry_api_requests_total{code="300",method="GET",route="/"} 1`,
		`ferry_api_requests_total{code="404",method="GET",route="unmatched"} 1`,
		`ferry_api_request_duration_seconds_bucket{method="GET",route="/healthcheck",le="+Inf"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	sep, _ := newHardeningTest(t, fakeHooks, func(c *config.Config) { c.API.MetricsListen = "127.0.0.1:0" })
	if resp, _ := raw(t, "GET", sep.url+"/metrics", "", who...); resp.StatusCode != 404 {
		t.Errorf("/metrics on the API port with metrics_listen: %d", resp.StatusCode)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferry-api"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// serve: HTTPS with cert_file/key_file, the metrics listener, and a
// client that sends half a request is cut off after read_timeout.
func TestServeTLSTimeoutsAndMetricsListener(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	c := config.Defaults()
	c.API.BindHost, c.API.BindPort = "127.0.0.1", freePort(t)
	metricsPort := freePort(t)
	c.API.MetricsListen = "127.0.0.1:" + strconv.Itoa(metricsPort)
	c.API.CertFile, c.API.KeyFile = certFile, keyFile
	c.API.ReadTimeout = 1
	var kicks atomic.Int32
	s := &Server{cfg: c, log: slog.New(slog.DiscardHandler), db: testDB(t), hooks: fakeHooks(&kicks)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	api := "https://127.0.0.1:" + strconv.Itoa(c.API.BindPort)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var resp *http.Response
	var err error
	for range 50 {
		if resp, err = client.Get(api + "/"); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("HTTPS: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMultipleChoices || resp.TLS == nil {
		t.Errorf("HTTPS /: %d", resp.StatusCode)
	}
	resp, err = http.Get("http://127.0.0.1:" + strconv.Itoa(metricsPort) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `ferry_api_requests_total{code="300",method="GET",route="/"} 1`) {
		t.Errorf("metrics listener: %d %.200s", resp.StatusCode, b)
	}
	// Half a request: the server hangs up after read_timeout (1 s).
	conn, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(c.API.BindPort), &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.ReadAll(conn)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a half-sent request held the connection %v", d)
	}
	srv := s.httpServer(http.NotFoundHandler())
	if srv.ReadTimeout != time.Second || srv.WriteTimeout != 120*time.Second || srv.IdleTimeout != 120*time.Second || srv.ReadHeaderTimeout != time.Second {
		t.Errorf("timeouts %v %v %v %v", srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.ReadHeaderTimeout)
	}
}
