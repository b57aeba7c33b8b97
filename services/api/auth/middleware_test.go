package auth

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/keystone"
)

const secretToken = "gAAAAAB-the-secret-token"

// testFault stands for ferry-api's error writer (services/api.writeError).
func testFault(c *gin.Context, code int, message string) {
	c.AbortWithStatusJSON(code, gin.H{map[int]string{401: "unauthorized", 403: "forbidden", 503: "serviceUnavailable"}[code]: gin.H{"code": code, "message": message}})
}

func testRouter(v TokenValidator, logs io.Writer) *gin.Engine {
	gin.SetMode(gin.TestMode)
	r := gin.New()
	opts := OptionsFrom(config.KeystoneAuthtoken{AuthURL: "http://127.0.0.1:5000/v3"}, "/", "/healthcheck")
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	opts.Fault = testFault
	r.Use(Middleware(v, opts))
	whoami := func(c *gin.Context) {
		ac := FromGin(c)
		if ac != FromContext(c.Request.Context()) {
			c.String(http.StatusInternalServerError, "gin and request contexts differ")
			return
		}
		c.JSON(http.StatusOK, ac)
	}
	r.GET("/", func(c *gin.Context) { c.String(http.StatusOK, "versions %v", FromGin(c) == nil) })
	r.GET("/healthcheck", func(c *gin.Context) { c.String(http.StatusOK, "ok") })
	r.GET("/v1/whoami", whoami)
	r.GET("/v1/transfers/:id", func(c *gin.Context) {
		if !DefaultPolicy().Enforce("transfer:get", FromGin(c), map[string]string{"project_id": "p-other"}) {
			testFault(c, http.StatusForbidden, "Policy doesn't allow transfer:get to be performed.")
			return
		}
		c.Status(http.StatusOK)
	})
	return r
}

// inAnHour expires the middleware tests' tokens: the middleware's cache
// runs on the real clock, so a fixed date would turn them into expired
// tokens once that date passed.
var inAnHour = time.Now().Add(time.Hour).UTC().Truncate(time.Second)

func TestMiddleware(t *testing.T) {
	f := &fakeValidator{tokens: map[string]*keystone.TokenInfo{secretToken: {
		UserID: "u1", UserName: "demo", ProjectID: "p1", ProjectName: "demo",
		Roles: []string{"member", "reader"}, ExpiresAt: inAnHour,
	}}}
	down := &fakeValidator{down: true}
	for _, tc := range []struct {
		name      string
		v         TokenValidator
		path      string
		token     string
		code      int
		fault     string // OpenStack error body key
		challenge bool
		body      string
	}{
		{"missing token", f, "/v1/whoami", "", 401, "unauthorized", true, ""},
		{"invalid token", f, "/v1/whoami", "garbage", 401, "unauthorized", true, ""},
		// Never sent to Keystone (down would answer 503): a token no
		// Keystone issues is a 401.
		{"oversized token", down, "/v1/whoami", strings.Repeat("a", 64<<10), 401, "unauthorized", true, ""},
		{"token one byte too long", down, "/v1/whoami", strings.Repeat("a", MaxTokenLength+1), 401, "unauthorized", true, ""},
		{"token with a control character", down, "/v1/whoami", "abc\x7fdef", 401, "unauthorized", true, ""},
		{"token with a non-ASCII character", down, "/v1/whoami", "abcé", 401, "unauthorized", true, ""},
		{"longest token reaches keystone", down, "/v1/whoami", strings.Repeat("a", MaxTokenLength), 503, "serviceUnavailable", false, ""},
		{"keystone unreachable", down, "/v1/whoami", secretToken, 503, "serviceUnavailable", false, ""},
		{"valid token", f, "/v1/whoami", secretToken, 200, "", false, `"ProjectName":"demo"`},
		{"policy denies", f, "/v1/transfers/x", secretToken, 403, "forbidden", false, ""},
		{"skip root", down, "/", "", 200, "", false, "versions true"},
		{"skip healthcheck", down, "/healthcheck", "garbage", 200, "", false, "ok"},
		{"skip is exact", f, "/healthcheck/x", "", 401, "unauthorized", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			req := httptest.NewRequest(http.MethodGet, tc.path, nil)
			if tc.token != "" {
				req.Header.Set(HeaderAuthToken, tc.token)
			}
			w := httptest.NewRecorder()
			testRouter(tc.v, &logs).ServeHTTP(w, req)
			if w.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.code, w.Body)
			}
			wa := w.Header().Get("WWW-Authenticate")
			if tc.challenge && wa != `Keystone uri="http://127.0.0.1:5000/v3"` {
				t.Errorf("WWW-Authenticate %q", wa)
			}
			if !tc.challenge && wa != "" {
				t.Errorf("unexpected WWW-Authenticate %q", wa)
			}
			if tc.fault != "" {
				var body map[string]struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				}
				if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
					t.Fatalf("body %q: %v", w.Body, err)
				}
				if f, ok := body[tc.fault]; !ok || f.Code != tc.code || f.Message == "" || len(body) != 1 {
					t.Errorf("body %s, want {%q: {code: %d, message}}", w.Body, tc.fault, tc.code)
				}
			}
			if tc.body != "" && !strings.Contains(w.Body.String(), tc.body) {
				t.Errorf("body %s, want %s", w.Body, tc.body)
			}
			for _, out := range []string{w.Body.String(), logs.String(), strings.Join(w.Header().Values("Set-Cookie"), "")} {
				if strings.Contains(out, secretToken) {
					t.Errorf("the token leaked: %s", out)
				}
			}
			if tc.code == 503 && !strings.Contains(logs.String(), "token validation failed") {
				t.Errorf("503 not logged: %q", logs.String())
			}
		})
	}
}

func TestMiddlewareContext(t *testing.T) {
	info := &keystone.TokenInfo{
		UserID: "u1", UserName: "demo", UserDomainID: "default", ProjectID: "p1", ProjectName: "demo",
		ProjectDomainID: "default", Roles: []string{"member"}, ExpiresAt: inAnHour,
	}
	f := &fakeValidator{tokens: map[string]*keystone.TokenInfo{secretToken: info}}
	gin.SetMode(gin.TestMode)
	r := gin.New()
	var got *Context
	r.Use(Middleware(NewCache(f, CacheOptions{TTL: time.Minute}), Options{WWWAuthenticateURI: "http://ks/v3", Fault: testFault}))
	r.GET("/x", func(c *gin.Context) { got = FromGin(c) })
	for range 2 {
		req := httptest.NewRequest(http.MethodGet, "/x", nil)
		req.Header.Set(HeaderAuthToken, secretToken)
		r.ServeHTTP(httptest.NewRecorder(), req)
	}
	if f.calls.Load() != 1 {
		t.Errorf("%d validator calls through the cache", f.calls.Load())
	}
	want := Context{UserID: "u1", UserName: "demo", UserDomainID: "default", ProjectID: "p1",
		ProjectName: "demo", ProjectDomainID: "default", ExpiresAt: inAnHour}
	if got == nil || got.UserID != want.UserID || got.ProjectID != want.ProjectID || got.ProjectName != want.ProjectName ||
		got.UserDomainID != want.UserDomainID || got.ProjectDomainID != want.ProjectDomainID || !got.ExpiresAt.Equal(want.ExpiresAt) {
		t.Fatalf("context %+v, want %+v", got, want)
	}
	if !got.HasRole("member") || !got.HasRole("reader") || got.HasRole("admin") || got.IsAdmin() {
		t.Errorf("roles %v", got.Roles)
	}
	// The Context is the caller's copy: changing it leaves the cache alone.
	got.Roles[0] = "admin"
	if info.Roles[0] != "member" {
		t.Error("Context shares its roles with the cached token")
	}
	b, _ := json.Marshal(got)
	if strings.Contains(string(b), secretToken) {
		t.Error("the Context holds the token")
	}
}
