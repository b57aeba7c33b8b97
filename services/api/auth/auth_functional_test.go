//go:build functional

package auth

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/keystone"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// userToken authenticates with the OS_* variables of an openrc file of the
// stack (openrc.demo, openrc.reader).
func userToken(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	path := filepath.Join(testenv.Get(t, "FERRY_STACK_DIR"), name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "export"))
		k, v, ok := strings.Cut(line, "=")
		if ok && strings.HasPrefix(k, "OS_") {
			env[k] = strings.Trim(v, `'"`)
		}
	}
	if env["OS_AUTH_URL"] == "" {
		t.Fatalf("%s: no OS_AUTH_URL", path)
	}
	p, _, err := keystone.CredentialsFromEnv(func(k string) string { return env[k] }).Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.Token() == "" {
		t.Fatalf("%s: no token", name)
	}
	return p.Token()
}

func TestFunctionalMiddlewareAndPolicy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ks := config.KeystoneAuthtoken{
		AuthURL:           testenv.Get(t, "OS_AUTH_URL"),
		Username:          testenv.Get(t, "FERRY_SERVICE_USER"),
		Password:          testenv.Get(t, "FERRY_SERVICE_PASSWORD"),
		ProjectName:       testenv.Get(t, "FERRY_SERVICE_PROJECT"),
		UserDomainName:    "Default",
		ProjectDomainName: "Default",
		RegionName:        "RegionOne",
		TokenCacheTime:    300,
		TokenCacheSize:    100,
	}
	v, err := keystone.NewValidator(ctx, ks)
	if err != nil {
		t.Fatal(err)
	}
	policy := DefaultPolicy()

	gin.SetMode(gin.TestMode)
	r := gin.New()
	opts := OptionsFrom(ks, "/")
	opts.Fault = testFault
	r.Use(Middleware(NewCache(v, CacheOptionsFrom(ks)), opts))
	r.GET("/", func(c *gin.Context) { c.String(http.StatusOK, "versions") })
	r.GET("/whoami", func(c *gin.Context) {
		ac := FromGin(c)
		c.JSON(http.StatusOK, gin.H{
			"user_id": ac.UserID, "project_id": ac.ProjectID, "project_name": ac.ProjectName,
			"roles": ac.Roles, "member": ac.HasRole("member"), "admin": ac.IsAdmin(),
			"expires_at": ac.ExpiresAt, "catalog": ac.Catalog != nil,
			// Enforced on a transfer of the caller's own project.
			"transfer:get":    policy.Enforce("transfer:get", ac, map[string]string{"project_id": ac.ProjectID}),
			"transfer:create": policy.Enforce("transfer:create", ac, map[string]string{"project_id": ac.ProjectID}),
			"other:get":       policy.Enforce("transfer:get", ac, map[string]string{"project_id": "someone-else"}),
		})
	})
	srv := httptest.NewServer(r)
	defer srv.Close()

	type whoami struct {
		UserID      string    `json:"user_id"`
		ProjectID   string    `json:"project_id"`
		ProjectName string    `json:"project_name"`
		Roles       []string  `json:"roles"`
		Member      bool      `json:"member"`
		Admin       bool      `json:"admin"`
		ExpiresAt   time.Time `json:"expires_at"`
		Catalog     bool      `json:"catalog"`
		Get         bool      `json:"transfer:get"`
		Create      bool      `json:"transfer:create"`
		OtherGet    bool      `json:"other:get"`
	}
	get := func(token string) (int, http.Header, whoami, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/whoami", nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set(HeaderAuthToken, token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var raw json.RawMessage
		_ = json.NewDecoder(resp.Body).Decode(&raw)
		var w whoami
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(raw, &w); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode, resp.Header, w, string(raw)
	}

	demo := userToken(t, ctx, "openrc.demo")
	code, _, w, body := get(demo)
	if code != http.StatusOK {
		t.Fatalf("demo token: %d %s", code, body)
	}
	if w.ProjectName != "demo" || w.ProjectID == "" || w.UserID == "" || !w.Member || w.Admin || !w.Catalog ||
		time.Until(w.ExpiresAt) <= 0 {
		t.Errorf("demo context %+v", w)
	}
	if !w.Get || !w.Create || w.OtherGet {
		t.Errorf("demo policy: get %v create %v other project %v, want true true false", w.Get, w.Create, w.OtherGet)
	}
	if strings.Contains(body, demo) {
		t.Error("the token leaked into the context")
	}
	// A second request is answered from the cache.
	if code, _, _, _ := get(demo); code != http.StatusOK {
		t.Errorf("cached demo token: %d", code)
	}

	reader := userToken(t, ctx, "openrc.reader")
	code, _, w, body = get(reader)
	if code != http.StatusOK {
		t.Fatalf("reader token: %d %s", code, body)
	}
	if w.Member || w.ProjectName != "demo" {
		t.Errorf("reader context %+v", w)
	}
	if !w.Get || w.Create {
		t.Errorf("reader: transfer:get %v transfer:create %v, want true false", w.Get, w.Create)
	}

	for _, bad := range []string{"", "garbage", demo + "x"} {
		code, h, _, body := get(bad)
		if code != http.StatusUnauthorized || h.Get("WWW-Authenticate") != `Keystone uri="`+ks.AuthURL+`"` ||
			!strings.Contains(body, `"unauthorized"`) {
			t.Errorf("token %.10q: %d %q %s, want 401 with a Keystone challenge", bad, code, h.Get("WWW-Authenticate"), body)
		}
	}

	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET / without a token: %d", resp.StatusCode)
	}
}
