package dashboard

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
)

// fakeKeystone answers POST /v3/auth/tokens for three users of project
// demo (admin, demo the member, reader) with a catalog of two regions.
type fakeKeystone struct {
	mu      sync.Mutex
	tokens  map[string]string // token → user
	revoked []string
	ttl     time.Duration
}

var fakeRoles = map[string]string{"admin": "admin", "demo": "member", "reader": "reader"}

func (k *fakeKeystone) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v3/auth/tokens" {
		http.NotFound(w, r)
		return
	}
	if r.Method == http.MethodDelete {
		k.mu.Lock()
		k.revoked = append(k.revoked, r.Header.Get("X-Subject-Token"))
		k.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	var req struct {
		Auth struct {
			Identity struct {
				Password struct {
					User struct {
						Name, Password string
						Domain         struct{ Name string }
					}
				}
			}
			Scope struct {
				Project struct {
					Name   string
					Domain struct{ Name string }
				}
			}
		}
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	u := req.Auth.Identity.Password.User
	role, ok := fakeRoles[u.Name]
	if !ok || u.Password != "secret" || u.Domain.Name != "Default" || req.Auth.Scope.Project.Name != "demo" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}`)
		return
	}
	tok := "tok-" + u.Name + "-" + randomToken()[:8]
	k.mu.Lock()
	k.tokens[tok] = u.Name
	k.mu.Unlock()
	ep := func(region string) map[string]any {
		return map[string]any{"id": region, "interface": "public", "region": region, "region_id": region, "url": "http://127.0.0.1:9790"}
	}
	body := map[string]any{"token": map[string]any{
		"expires_at": time.Now().Add(k.ttl).UTC().Format(time.RFC3339),
		"user":       map[string]any{"id": "u-" + u.Name, "name": u.Name, "domain": map[string]any{"id": "default", "name": "Default"}},
		"project":    map[string]any{"id": "p-demo", "name": "demo", "domain": map[string]any{"id": "default", "name": "Default"}},
		"roles":      []map[string]any{{"id": "r-" + role, "name": role}},
		"catalog": []map[string]any{
			{"type": "identity", "name": "keystone", "endpoints": []map[string]any{ep("RegionOne")}},
			{"type": "volume-ferry", "name": "ferry", "endpoints": []map[string]any{ep("RegionTwo"), ep("RegionOne")}},
		},
	}}
	w.Header().Set("X-Subject-Token", tok)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(body)
}

func (k *fakeKeystone) userOf(tok string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.tokens[tok]
}

// fakeAPI is ferry-api as far as the dashboard sees it: the tokens of
// fakeKeystone, a reader that cannot write, one transfer.
type fakeAPI struct {
	ks      *fakeKeystone
	mu      sync.Mutex
	actions []string
	created []map[string]any
	// replActions are the replication actions received, "<id> <body>"
	// (replications_test.go).
	replActions []string
	// groupActions are the replication group actions received, "<id>
	// <body>" (groups_test.go).
	groupActions []string
	// versions are the calls' OpenStack-API-Version headers, "<path> <header>".
	versions []string
}

// served11 tells whether a call is served at microversion 1.1 (the
// dashboard's): what the API shows only from 1.1 on needs it.
func served11(r *http.Request) bool {
	return r.Header.Get("OpenStack-API-Version") == "volume-ferry 1.1"
}

const transferID = "0b8c5a84-2e6f-4c1e-9d2a-5b8e0c1f7a11"

var transferJSON = `{"id": "` + transferID + `", "name": "vol-copy", "description": "", "project_id": "p-demo", "user_id": "u-demo",
	"status": "transferring", "mode": "full", "source": {"region": "RegionOne", "pool": "volumes", "image": "disk1", "snapshot": null, "volume_id": null, "backup_id": null},
	"destination": {"region": "RegionTwo", "pool": "volumes", "image": "disk1", "snapshot": null, "volume_id": null, "backup_id": null},
	"bytes_total": 1073741824, "bytes_transferred": 536870912, "progress": 50, "rate_bytes_per_second": 104857600, "eta_seconds": 5,
	"digest": null, "error": null, "created_at": "2026-11-25T10:00:00.000000Z", "updated_at": "2026-11-25T10:00:05.000000Z",
	"started_at": "2026-11-25T10:00:01.000000Z", "finished_at": null}`

func fault(w http.ResponseWriter, code int, name, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	fmt.Fprintf(w, `{%q: {"code": %d, "message": %q}}`, name, code, msg)
}

func (a *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user := a.ks.userOf(r.Header.Get("X-Auth-Token"))
	if user == "" {
		fault(w, http.StatusUnauthorized, "unauthorized", "Authentication required.")
		return
	}
	a.mu.Lock()
	a.versions = append(a.versions, r.URL.Path+" "+r.Header.Get("OpenStack-API-Version"))
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/v1/replication-groups"):
		a.serveGroups(w, r, user)
	case strings.HasPrefix(p, "/v1/replications") && !served11(r):
		fault(w, http.StatusNotFound, "itemNotFound", "The resource could not be found.") // since 1.1
	case r.Method == http.MethodGet && p == "/v1/transfers":
		// The API filters on the source region (the fixture's is RegionOne).
		if sr := r.URL.Query().Get("source_region"); sr != "" && sr != "RegionOne" {
			io.WriteString(w, `{"transfers": []}`)
			return
		}
		io.WriteString(w, `{"transfers": [`+transferJSON+`]}`)
	case r.Method == http.MethodGet && p == "/v1/transfers/"+transferID:
		io.WriteString(w, `{"transfer": `+transferJSON+`}`)
	case r.Method == http.MethodGet && p == "/v1/transfers/"+transferID+"/events":
		io.WriteString(w, `{"events": [{"created_at": "2026-11-25T10:00:00.000000Z", "kind": "status", "from_status": null, "to_status": "queued", "message": "created", "request_id": "req-1"}]}`)
	case r.Method == http.MethodPost && p == "/v1/transfers":
		if user == "reader" {
			fault(w, http.StatusForbidden, "forbidden", "Policy doesn't allow transfer:create to be performed.")
			return
		}
		var body map[string]map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		if src, _ := body["transfer"]["source"].(map[string]any); src["image"] == "bad" {
			fault(w, http.StatusBadRequest, "badRequest", "transfer.source.image is wrong somehow")
			return
		}
		a.mu.Lock()
		a.created = append(a.created, body["transfer"])
		a.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `{"transfer": `+transferJSON+`}`)
	case r.Method == http.MethodPost && p == "/v1/transfers/"+transferID+"/action":
		if user == "reader" {
			fault(w, http.StatusForbidden, "forbidden", "Policy doesn't allow transfer:cancel to be performed.")
			return
		}
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.actions = append(a.actions, strings.TrimSpace(string(b)))
		a.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	case strings.HasPrefix(p, "/v1/replications"):
		a.serveReplications(w, r, user)
	case r.Method == http.MethodGet && p == "/v1/services":
		if user != "admin" {
			fault(w, http.StatusForbidden, "forbidden", "Policy doesn't allow service:get_all to be performed.")
			return
		}
		io.WriteString(w, `{"services": [{"binary": "ferry-agent", "host": "agent-RegionOne", "region": "RegionOne", "state": "up", "status": "enabled", "version": "0.1", "updated_at": "2026-11-25T10:00:00.000000Z",
			"running_transfers": 1, "max_transfers": 2,
			"ceph_health": {"status": "HEALTH_WARN", "checks": [{"code": "OSD_NEARFULL", "severity": "HEALTH_WARN", "message": "1 nearfull osd(s)"}], "others": 2, "error": null, "checked_at": "2026-11-25T09:59:30.000000Z"}},
			{"binary": "ferry-agent", "host": "agent-RegionTwo", "region": "RegionTwo", "state": "up", "status": "enabled", "version": "0.1", "updated_at": "2026-11-25T10:00:00.000000Z",
			"running_transfers": 0, "max_transfers": 2,
			"ceph_health": {"status": null, "checks": [], "others": 0, "error": "the cluster did not answer ceph health within 20s", "checked_at": "2026-11-25T09:59:40.000000Z"}},
			{"binary": "ferry-agent", "host": "agent-old", "region": "RegionOne", "state": "down", "status": "enabled", "version": "0.0", "updated_at": "2026-11-25T09:00:00.000000Z", "ceph_health": null}]}`)
	default:
		fault(w, http.StatusNotFound, "itemNotFound", "The resource could not be found.")
	}
}

type rig struct {
	t     *testing.T
	ks    *fakeKeystone
	api   *fakeAPI
	h     *Handler
	srv   *httptest.Server
	clock *fakeClock
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newRig(t *testing.T, tokenTTL time.Duration) *rig {
	t.Helper()
	ks := &fakeKeystone{tokens: map[string]string{}, ttl: tokenTTL}
	kts := httptest.NewServer(ks)
	t.Cleanup(kts.Close)
	api := &fakeAPI{ks: ks}
	clock := &fakeClock{t: time.Now()}
	h, err := New(Options{AuthURL: kts.URL + "/v3", API: api, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &rig{t: t, ks: ks, api: api, h: h, srv: srv, clock: clock}
}

// browser is a cookie-keeping client that does not follow redirects.
type browser struct {
	t   *testing.T
	c   *http.Client
	url string
}

func (r *rig) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: r.t, url: r.srv.URL, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (b *browser) do(method, path string, form url.Values, hdr ...string) (*http.Response, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.url+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp, string(out)
}

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf_token in the page:\n%s", page)
	}
	return m[1]
}

func (b *browser) login(user, password string) (*http.Response, string) {
	b.t.Helper()
	_, page := b.do("GET", "/dashboard/auth/login", nil)
	return b.do("POST", "/dashboard/auth/login", url.Values{
		"csrf_token": {csrfOf(b.t, page)}, "username": {user}, "password": {password}, "project": {"demo"}, "domain": {"Default"},
	})
}

func (b *browser) mustLogin(user string) string {
	b.t.Helper()
	resp, body := b.login(user, "secret")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/dashboard/project/transfers" {
		b.t.Fatalf("login %s: %d %s %s", user, resp.StatusCode, resp.Header.Get("Location"), body)
	}
	resp, page := b.do("GET", "/dashboard/project/transfers", nil)
	if resp.StatusCode != http.StatusOK {
		b.t.Fatalf("transfers page: %d %s", resp.StatusCode, page)
	}
	return page
}

func TestLoginAndCookieFlags(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	resp, _ := b.do("GET", "/dashboard/project/transfers", nil)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/dashboard/auth/login?next=") {
		t.Fatalf("anonymous: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, _ = b.login("demo", "secret")
	var sc *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			sc = c
		}
	}
	if sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.Path != "/dashboard" || sc.Secure || len(sc.Value) != 43 {
		t.Fatalf("session cookie %+v", sc)
	}
	if strings.Contains(sc.Value, "tok-") {
		t.Fatal("the cookie carries the token")
	}
	_, page := b.do("GET", "/dashboard/project/transfers", nil)
	for _, want := range []string{"vol-copy", `id="create-transfer"`, "/cancel", "demo</span>", "RegionOne", "RegionTwo", "50%", "100.0 MiB/s"} {
		if !strings.Contains(page, want) {
			t.Errorf("transfers page lacks %q", want)
		}
	}
	if strings.Contains(page, "nav-services") {
		t.Error("a member sees the admin services link")
	}
	// The live data goes through the API with the session's token.
	resp, data := b.do("GET", "/dashboard/project/transfers/data", nil)
	var d struct{ Transfers []rowData }
	if resp.StatusCode != 200 || json.Unmarshal([]byte(data), &d) != nil || len(d.Transfers) != 1 || d.Transfers[0].Progress != 50 || !d.Transfers[0].CanCancel {
		t.Errorf("data: %d %s", resp.StatusCode, data)
	}
	// Logout ends the session and revokes the token.
	resp, _ = b.do("POST", "/dashboard/auth/logout", url.Values{"csrf_token": {csrfOf(t, page)}})
	if resp.StatusCode != http.StatusSeeOther || len(r.ks.revoked) != 1 {
		t.Errorf("logout: %d, revoked %v", resp.StatusCode, r.ks.revoked)
	}
	if resp, _ := b.do("GET", "/dashboard/project/transfers", nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("after logout: %d", resp.StatusCode)
	}
}

func TestSecureCookieOverTLS(t *testing.T) {
	r := newRig(t, time.Hour)
	req := httptest.NewRequest("GET", "https://ferry.example/dashboard/auth/login", nil)
	w := httptest.NewRecorder()
	r.h.ServeHTTP(w, req)
	cs := w.Result().Cookies()
	if len(cs) != 1 || cs[0].Name != loginCSRF || !cs[0].Secure || !cs[0].HttpOnly || cs[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("cookies over TLS: %+v", cs)
	}
}

func TestBadLogin(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	resp, page := b.login("demo", "wrong")
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(page, "Invalid credentials.") || !strings.Contains(page, `value="demo"`) {
		t.Fatalf("bad password: %d %s", resp.StatusCode, page)
	}
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			t.Fatal("a session cookie after a failed login")
		}
	}
	if r.h.sessions.len() != 0 {
		t.Fatal("a session after a failed login")
	}
	// Keystone unreachable: a message, not a 500.
	h, _ := New(Options{AuthURL: "http://127.0.0.1:1/v3", API: r.api})
	srv := httptest.NewServer(h)
	defer srv.Close()
	b.url = srv.URL
	resp, page = b.login("demo", "secret")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(page, "Unable to reach the identity service") {
		t.Fatalf("keystone down: %d %s", resp.StatusCode, page)
	}
}

func TestCSRF(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	// Login without the pre-session cookie's value.
	if resp, _ := b.do("POST", "/dashboard/auth/login", url.Values{"username": {"demo"}, "password": {"secret"}, "project": {"demo"}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("login without CSRF token: %d", resp.StatusCode)
	}
	page := b.mustLogin("demo")
	tok := csrfOf(t, page)
	cancel := "/dashboard/project/transfers/" + transferID + "/cancel"
	for name, tc := range map[string]struct {
		form url.Values
		hdr  []string
	}{
		"no token":       {url.Values{}, nil},
		"wrong token":    {url.Values{"csrf_token": {randomToken()}}, nil},
		"cross origin":   {url.Values{"csrf_token": {tok}}, []string{"Origin", "https://evil.example"}},
		"cross referer":  {url.Values{"csrf_token": {tok}}, []string{"Referer", "https://evil.example/x"}},
		"null origin":    {url.Values{"csrf_token": {tok}}, []string{"Origin", "null"}},
		"wrong header":   {url.Values{}, []string{csrfHeader, "nope"}},
		"empty token":    {url.Values{"csrf_token": {""}}, nil},
		"token of login": {url.Values{"csrf_token": {"x"}}, nil},
	} {
		if resp, _ := b.do("POST", cancel, tc.form, tc.hdr...); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, resp.StatusCode)
		}
	}
	if len(r.api.actions) != 0 {
		t.Fatalf("actions reached the API: %v", r.api.actions)
	}
	resp, _ := b.do("POST", cancel, url.Values{"csrf_token": {tok}, "name": {"vol-copy"}, "next": {"/dashboard/project/transfers"}}, "Origin", r.srv.URL)
	if resp.StatusCode != http.StatusSeeOther || len(r.api.actions) != 1 || r.api.actions[0] != `{"cancel":null}` {
		t.Fatalf("cancel with the token: %d %v", resp.StatusCode, r.api.actions)
	}
	_, page = b.do("GET", "/dashboard/project/transfers", nil)
	if !strings.Contains(page, "alert-success") || !strings.Contains(page, "Cancel requested for transfer: vol-copy") {
		t.Errorf("no success message:\n%s", page)
	}
	// The header works for scripts.
	if resp, _ := b.do("POST", "/dashboard/project/transfers/"+transferID+"/retry", url.Values{}, csrfHeader, tok); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("retry with the header: %d", resp.StatusCode)
	}
}

func TestSessionExpiry(t *testing.T) {
	for name, tc := range map[string]struct {
		ttl, wait time.Duration
	}{
		"idle":          {3 * time.Hour, 61 * time.Minute},
		"token expired": {10 * time.Minute, 11 * time.Minute},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, tc.ttl)
			b := r.browser()
			b.mustLogin("demo")
			r.clock.add(tc.wait - 2*time.Minute)
			if resp, _ := b.do("GET", "/dashboard/project/transfers", nil); resp.StatusCode != 200 {
				t.Fatalf("before expiry: %d", resp.StatusCode)
			}
			if name == "idle" {
				r.clock.add(tc.wait)
			} else {
				r.clock.add(2 * time.Minute)
			}
			resp, _ := b.do("GET", "/dashboard/project/transfers", nil)
			if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || !strings.Contains(loc, "msg=expired") {
				t.Fatalf("after expiry: %d %s", resp.StatusCode, loc)
			}
			if r.h.sessions.len() != 0 {
				t.Fatal("expired session kept")
			}
		})
	}
}

func TestSessionStoreBounded(t *testing.T) {
	now := time.Now()
	st := newSessionStore(3, time.Hour, func() time.Time { return now })
	var ss []*session
	for range 5 {
		s := &session{expiresAt: now.Add(time.Hour)}
		st.add(s)
		ss = append(ss, s)
	}
	if st.len() != 3 || st.get(ss[0].id) != nil || st.get(ss[1].id) != nil || st.get(ss[4].id) == nil {
		t.Fatalf("store holds %d", st.len())
	}
	if len(ss[0].id) != 43 || ss[0].id == ss[1].id || ss[0].csrf == ss[0].id {
		t.Fatalf("ids %q %q", ss[0].id, ss[1].id)
	}
	// Expired sessions go at the next sweep, unvisited.
	now = now.Add(2 * time.Hour)
	st.sweepEvery(time.Minute)
	if st.len() != 0 {
		t.Fatalf("%d expired sessions kept by the sweep", st.len())
	}
}

func TestReaderSeesNoWriteActions(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	page := b.mustLogin("reader")
	if strings.Contains(page, "create-transfer") || strings.Contains(page, "/cancel") || strings.Contains(page, "/retry") {
		t.Errorf("reader sees write actions:\n%s", page)
	}
	if !strings.Contains(page, "vol-copy") {
		t.Error("reader does not see the transfer")
	}
	_, page = b.do("GET", "/dashboard/project/transfers/"+transferID, nil)
	if strings.Contains(page, "/cancel") || !strings.Contains(page, "req-1") {
		t.Errorf("reader's detail page:\n%s", page)
	}
	// The API refuses anyway; the message says so.
	resp, _ := b.do("POST", "/dashboard/project/transfers/"+transferID+"/cancel", url.Values{"csrf_token": {csrfOf(t, page)}})
	_, page = b.do("GET", resp.Header.Get("Location"), nil)
	if !strings.Contains(page, "Policy doesn&#39;t allow transfer:cancel") {
		t.Errorf("no error message:\n%s", page)
	}
	if resp, _ := b.do("GET", "/dashboard/admin/services", nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("reader's services page: %d", resp.StatusCode)
	}
}

func TestAdminSeesServices(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	page := b.mustLogin("admin")
	if !strings.Contains(page, `id="nav-services"`) {
		t.Error("no services link for an admin")
	}
	resp, page := b.do("GET", "/dashboard/admin/services", nil)
	if resp.StatusCode != 200 || !strings.Contains(page, "agent-RegionOne") || !strings.Contains(page, "badge-ok") {
		t.Errorf("services page: %d\n%s", resp.StatusCode, page)
	}
	// Each agent's cluster health: status badge, the checks that matter,
	// when it was probed; and its load.
	for _, want := range []string{
		`<th>Ceph Health</th><th>Transfers</th>`,
		`<span class="badge badge-busy">HEALTH_WARN</span> <span class="region" title="HEALTH_WARN: 1 nearfull osd(s)">OSD_NEARFULL</span> <span class="small">+2 more</span>`,
		`probed 2026-11-25 09:59:30`, `<td>1/2</td>`,
		`<span class="badge badge-err">unknown</span> <span class="small">the cluster did not answer ceph health within 20s</span>`,
		`<span class="badge badge-muted">not reported</span></td>`, `<td>-</td>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("services page lacks %s\n%s", want, page)
		}
	}
}

func TestCreate(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	b.mustLogin("demo")
	_, page := b.do("GET", "/dashboard/project/transfers/create", nil)
	// The selected region (first, sorted) is the default source.
	if !strings.Contains(page, `<option value="RegionOne" selected>`) || !strings.Contains(page, `<option value="RegionTwo" selected>`) {
		t.Errorf("create form defaults:\n%s", page)
	}
	tok := csrfOf(t, page)
	form := url.Values{"csrf_token": {tok}, "name": {"n1"}, "source_region": {"RegionOne"}, "pool": {"volumes"}, "image": {"bad"},
		"destination_region": {"RegionTwo"}, "mode": {"full"}}
	resp, page := b.do("POST", "/dashboard/project/transfers/create", form)
	if resp.StatusCode != 200 || !strings.Contains(page, "transfer.source.image is wrong somehow") || !strings.Contains(page, `value="n1"`) {
		t.Fatalf("API error: %d\n%s", resp.StatusCode, page)
	}
	form.Set("image", "disk1")
	resp, _ = b.do("POST", "/dashboard/project/transfers/create", form)
	if resp.StatusCode != http.StatusSeeOther || len(r.api.created) != 1 {
		t.Fatalf("create: %d %v", resp.StatusCode, r.api.created)
	}
	if c := r.api.created[0]; c["name"] != "n1" || c["mode"] != "full" || c["destination"].(map[string]any)["region"] != "RegionTwo" {
		t.Errorf("created %v", c)
	}
	_, page = b.do("GET", "/dashboard/project/transfers", nil)
	if !strings.Contains(page, "Transfer created: vol-copy") {
		t.Error("no success message")
	}
	// Region switch: the table filters on the source region.
	resp, _ = b.do("POST", "/dashboard/region", url.Values{"csrf_token": {tok}, "region": {"RegionTwo"}, "next": {"/dashboard/project/transfers"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("region: %d", resp.StatusCode)
	}
	if _, page = b.do("GET", "/dashboard/project/transfers", nil); strings.Contains(page, "vol-copy") || !strings.Contains(page, "No items to display.") {
		t.Errorf("RegionTwo's table shows RegionOne's transfer")
	}
	// A Cinder backup as the source.
	bform := url.Values{"csrf_token": {tok}, "source_region": {"RegionOne"}, "backup_id": {"b-1"}, "destination_region": {"RegionTwo"}, "mode": {"auto"}}
	if resp, _ := b.do("POST", "/dashboard/project/transfers/create", bform); resp.StatusCode != http.StatusSeeOther || len(r.api.created) != 2 {
		t.Fatalf("create from a backup: %d %v", resp.StatusCode, r.api.created)
	}
	if src := r.api.created[1]["source"].(map[string]any); src["backup_id"] != "b-1" || src["pool"] != nil {
		t.Errorf("backup source sent as %v", src)
	}
}

func TestRegisterDisabled(t *testing.T) {
	gin.SetMode(gin.ReleaseMode)
	for _, enabled := range []bool{false, true} {
		r := gin.New()
		if err := Register(r, enabled, Options{AuthURL: "http://127.0.0.1:5000/v3", API: http.NotFoundHandler()}); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"/dashboard", "/dashboard/", "/dashboard/auth/login", "/dashboard/static/dashboard.css"} {
			w := httptest.NewRecorder()
			r.ServeHTTP(w, httptest.NewRequest("GET", p, nil))
			if enabled && (w.Code == http.StatusNotFound || w.Code >= 500) {
				t.Errorf("enabled: %s %d", p, w.Code)
			}
			if !enabled && w.Code != http.StatusNotFound {
				t.Errorf("disabled: %s %d, want 404", p, w.Code)
			}
		}
	}
}

func TestNoExternalURLs(t *testing.T) {
	n := 0
	for _, fsys := range []fs.FS{templateFS, staticFS} {
		fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, _ := fs.ReadFile(fsys, p)
			n++
			if regexp.MustCompile(`(?i)https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import`).Match(b) {
				t.Errorf("%s names an external URL", p)
			}
			return nil
		})
	}
	if n < 6 {
		t.Fatalf("only %d embedded files", n)
	}
}

func TestSafeNext(t *testing.T) {
	for next, ok := range map[string]bool{
		"/dashboard/project/transfers": true, "//evil.example/": false, "https://evil.example/": false,
		"/dashboard/auth/logout": false, "/v1/transfers": false, "/dashboard/\\evil": false,
	} {
		if safeNext(next) != ok {
			t.Errorf("safeNext(%q) = %v", next, !ok)
		}
	}
}

func TestFormatting(t *testing.T) {
	eta := int64(3725)
	for _, tc := range []struct {
		tr                   Transfer
		progress, rate, etaS string
	}{
		{Transfer{Status: "transferring", BytesTransferred: 32 << 20, RateBytesPerSecond: 16 << 20}, "32.0 MiB", "16.0 MiB/s", "-"},
		{Transfer{Status: "transferring", BytesTransferred: 1 << 30, BytesTotal: 4 << 30, Progress: 25, ETASeconds: &eta, RateBytesPerSecond: 1}, "25%", "1 B/s", "1h 02m"},
		{Transfer{Status: "completed", BytesTransferred: 5, BytesTotal: 5, Progress: 100, ETASeconds: &eta, RateBytesPerSecond: 9}, "100%", "-", "-"},
		{Transfer{Status: "queued"}, "0%", "-", "-"},
	} {
		if p, r, e := progressText(&tc.tr), humanRate(&tc.tr), humanETA(&tc.tr); p != tc.progress || r != tc.rate || e != tc.etaS {
			t.Errorf("%s: %q %q %q, want %q %q %q", tc.tr.Status, p, r, e, tc.progress, tc.rate, tc.etaS)
		}
	}
}

// Password guessing: after LoginAttempts failures a user name is refused
// with 429 (Keystone is not asked, even with the right password) until
// the window has passed; a client address gets four times as many
// failures over any user names.
func TestLoginThrottle(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	issued := func() int { r.ks.mu.Lock(); defer r.ks.mu.Unlock(); return len(r.ks.tokens) }
	for i := range 5 {
		if resp, _ := b.login("demo", "wrong"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i+1, resp.StatusCode)
		}
	}
	resp, page := b.login("demo", "secret")
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(page, "Too many failed login attempts") ||
		resp.Header.Get("Retry-After") == "" || issued() != 0 {
		t.Fatalf("6th login: %d Retry-After %q, %d tokens issued\n%s", resp.StatusCode, resp.Header.Get("Retry-After"), issued(), page)
	}
	// Another user from the same address still may (20 per address).
	r.browser().mustLogin("admin")
	r.clock.add(5*time.Minute + time.Second)
	r.browser().mustLogin("demo")

	// One address guessing many user names.
	b2 := r.browser()
	for i := range 20 {
		if resp, _ := b2.login(fmt.Sprintf("nobody-%d", i), "wrong"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i+1, resp.StatusCode)
		}
	}
	if resp, _ := b2.login("reader", "secret"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("21st login from one address: %d", resp.StatusCode)
	}
}

// The throttle's memory is bounded, whatever the number of names.
func TestThrottleBounded(t *testing.T) {
	clock := &fakeClock{t: time.Now()}
	th := newThrottle(2, time.Minute, 3, clock.now)
	for i := range 100 {
		th.fail(fmt.Sprint("user-", i))
		clock.add(time.Millisecond)
	}
	if th.len() > 3 {
		t.Fatalf("%d keys kept, bound 3", th.len())
	}
	th.fail("last")
	th.fail("last")
	if _, blocked := th.blocked("last"); !blocked {
		t.Error("the newest key was evicted")
	}
	if _, blocked := th.blocked("user-0"); blocked {
		t.Error("the oldest key is still there")
	}
}

// Behind a TLS-terminating proxy (it says X-Forwarded-Proto: https) the
// cookies are Secure; ferry-api removes that header from anyone but its
// trusted proxies (services/api tests that).
func TestSecureCookieBehindTLSProxy(t *testing.T) {
	r := newRig(t, time.Hour)
	for _, tc := range []struct {
		proto  string
		secure bool
	}{{"https", true}, {"", false}, {"http", false}} {
		req := httptest.NewRequest("GET", "http://ferry.internal/dashboard/auth/login", nil)
		if tc.proto != "" {
			req.Header.Set("X-Forwarded-Proto", tc.proto)
		}
		w := httptest.NewRecorder()
		r.h.ServeHTTP(w, req)
		cs := w.Result().Cookies()
		if len(cs) != 1 || cs[0].Secure != tc.secure {
			t.Errorf("X-Forwarded-Proto %q: cookies %+v, want Secure %v", tc.proto, cs, tc.secure)
		}
	}
}
