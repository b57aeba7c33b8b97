package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/internal/config"
)

// The test caller comes from headers; the policy is the default one in
// miniature (the real engine is services/api/auth's).
func fakeHooks(kicks *atomic.Int32) Hooks {
	return Hooks{
		Authenticate: func(c *gin.Context) {
			if c.GetHeader("X-Test-User") == "" {
				writeError(c, http.StatusUnauthorized, "no token")
				return
			}
			c.Set("test-caller", &Caller{UserID: c.GetHeader("X-Test-User"), ProjectID: c.GetHeader("X-Test-Project"),
				Roles: strings.Split(c.GetHeader("X-Test-Roles"), ","), Regions: []string{"RegionOne", "RegionTwo"}})
		},
		CallerOf: func(c *gin.Context) *Caller {
			v, _ := c.Get("test-caller")
			caller, _ := v.(*Caller)
			return caller
		},
		Allowed: func(rule string, c *Caller, target map[string]string) bool {
			admin := slices.Contains(c.Roles, "admin")
			member := slices.Contains(c.Roles, "member") || admin
			own := target["project_id"] == c.ProjectID
			switch rule {
			case "transfer:create:image_source", "transfer:get_all_projects", "service:get_all",
				"replication:create:image_source", "replication:get_all_projects":
				return admin
			case "transfer:get", "transfer:get_all", "transfer:events", "replication:get", "replication:get_all":
				return admin || own
			case "transfer:create", "replication:create": // the default policy: a member of the token's project
				return member
			default:
				return admin || member && own
			}
		},
		StartMessage: func(ctx context.Context, t *db.Transfer) (*db.OutboxMessage, error) {
			// The request id rides in Exchange (informational) for the test.
			return &db.OutboxMessage{Exchange: rpc.RequestIDFrom(ctx), RoutingKey: "agent." + t.SourceRegion,
				Payload: fmt.Sprintf(`{"transfer_id":%q,"epoch":%d}`, t.ID, t.Epoch)}, nil
		},
		CancelMessage: func(_ context.Context, t *db.Transfer) (*db.OutboxMessage, error) {
			return &db.OutboxMessage{Exchange: "ferry", RoutingKey: "agent." + t.SourceRegion + ".host", Payload: "{}"}, nil
		},
		Kick: func() { kicks.Add(1) },
	}
}

type apiTest struct {
	t     *testing.T
	url   string
	db    *db.DB
	kicks atomic.Int32
	// version is the microversion do asks for ("": none, so 1.0).
	version string
}

// testDB is a migrated SQLite database of the test's own.
func testDB(t *testing.T) *db.DB {
	t.Helper()
	ctx := context.Background()
	d, err := db.Open(ctx, "sqlite:///"+filepath.Join(t.TempDir(), "ferry.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

func newAPITest(t *testing.T) *apiTest {
	t.Helper()
	d := testDB(t)
	at := &apiTest{t: t, db: d}
	s := &Server{cfg: config.Defaults(), log: slog.New(slog.DiscardHandler), db: d, hooks: fakeHooks(&at.kicks)}
	ts := httptest.NewServer(s.Router())
	t.Cleanup(ts.Close)
	s.cfg.API.PublicEndpoint = ts.URL
	at.url = ts.URL
	return at
}

var (
	admin  = [3]string{"admin-user", "admin-project", "admin,member,reader"}
	demo   = [3]string{"demo-user", "demo-project", "member,reader"}
	alt    = [3]string{"alt-user", "alt-project", "member,reader"}
	reader = [3]string{"reader-user", "demo-project", "reader"}
)

func (a *apiTest) do(who [3]string, method, path, body string) (int, map[string]any) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.url+path, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	if who[0] != "" {
		req.Header.Set("X-Test-User", who[0])
		req.Header.Set("X-Test-Project", who[1])
		req.Header.Set("X-Test-Roles", who[2])
	}
	if a.version != "" {
		req.Header.Set("OpenStack-API-Version", "volume-ferry "+a.version)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("X-Openstack-Request-Id") == "" {
		a.t.Errorf("%s %s: no request id", method, path)
	}
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			a.t.Fatalf("%s %s: body %q is not JSON", method, path, b)
		}
	}
	return resp.StatusCode, m
}

const imageBody = `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "vol-1"}, "destination": {"region": "RegionTwo"}, "name": "first"}}`

func (a *apiTest) create(who [3]string) string {
	a.t.Helper()
	code, m := a.do(who, "POST", "/v1/transfers", imageBody)
	if code != http.StatusAccepted {
		a.t.Fatalf("create: %d %v", code, m)
	}
	return m["transfer"].(map[string]any)["id"].(string)
}

func TestCreateShowListDelete(t *testing.T) {
	a := newAPITest(t)
	id := a.create(admin)
	if a.kicks.Load() != 1 {
		t.Errorf("publisher kicked %d times", a.kicks.Load())
	}
	code, m := a.do(admin, "GET", "/v1/transfers/"+id, "")
	tr := m["transfer"].(map[string]any)
	dst := tr["destination"].(map[string]any)
	if code != 200 || tr["status"] != "queued" || tr["mode"] != "auto" || dst["pool"] != "volumes" || dst["image"] != "vol-1" || tr["project_id"] != "admin-project" {
		t.Errorf("show: %d %v", code, m)
	}
	// The outbox row was written with the transfer.
	msgs, err := a.db.ClaimOutbox(context.Background(), "test", 60e9, 10)
	if err != nil || len(msgs) != 1 || msgs[0].RoutingKey != "agent.RegionOne" || !strings.Contains(msgs[0].Payload, id) || !strings.HasPrefix(msgs[0].Exchange, "req-") {
		t.Errorf("outbox %+v %v", msgs, err)
	}
	code, m = a.do(admin, "GET", "/v1/transfers/"+id+"/events", "")
	if ev := m["events"].([]any); code != 200 || len(ev) != 1 || ev[0].(map[string]any)["to_status"] != "queued" {
		t.Errorf("events: %d %v", code, m)
	}
	// Not terminal: delete is a conflict; cancel of a queued transfer is
	// immediate; then delete works.
	if code, m := a.do(admin, "DELETE", "/v1/transfers/"+id, ""); code != 409 || m["conflictingRequest"] == nil {
		t.Errorf("delete queued: %d %v", code, m)
	}
	if code, _ := a.do(admin, "POST", "/v1/transfers/"+id+"/action", `{"cancel": null}`); code != 202 {
		t.Errorf("cancel: %d", code)
	}
	if _, m := a.do(admin, "GET", "/v1/transfers/"+id, ""); m["transfer"].(map[string]any)["status"] != "cancelled" {
		t.Errorf("after cancel: %v", m)
	}
	if code, _ := a.do(admin, "DELETE", "/v1/transfers/"+id, ""); code != 204 {
		t.Errorf("delete: %d", code)
	}
	if code, m := a.do(admin, "GET", "/v1/transfers/"+id, ""); code != 404 || m["itemNotFound"] == nil {
		t.Errorf("after delete: %d %v", code, m)
	}
}

func TestPagination(t *testing.T) {
	a := newAPITest(t)
	var ids []string
	for range 5 {
		ids = append(ids, a.create(admin))
	}
	seen := map[string]bool{}
	path := "/v1/transfers?limit=2&sort_key=created_at&sort_dir=asc"
	for pages := 0; path != ""; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		code, m := a.do(admin, "GET", path, "")
		if code != 200 {
			t.Fatalf("list: %d %v", code, m)
		}
		for _, tr := range m["transfers"].([]any) {
			seen[tr.(map[string]any)["id"].(string)] = true
		}
		path = ""
		if links, ok := m["transfers_links"].([]any); ok {
			href := links[0].(map[string]any)["href"].(string)
			path = strings.TrimPrefix(href, a.url)
		}
	}
	for _, id := range ids {
		if !seen[id] {
			t.Errorf("transfer %s on no page (%d seen)", id, len(seen))
		}
	}
	// Region filters (the fixture's transfers go from RegionOne to RegionTwo).
	for q, want := range map[string]int{"source_region=RegionOne": 5, "source_region=RegionTwo": 0,
		"destination_region=RegionTwo": 5, "source_region=RegionOne&destination_region=RegionOne": 0} {
		code, m := a.do(admin, "GET", "/v1/transfers?"+q, "")
		if n := len(m["transfers"].([]any)); code != 200 || n != want {
			t.Errorf("?%s: %d, %d transfers, want %d", q, code, n, want)
		}
	}
	if code, _ := a.do(admin, "GET", "/v1/transfers?source_region="+strings.Repeat("r", 300), ""); code != 400 {
		t.Errorf("a too long region: %d", code)
	}
}

// Tenancy: another project's transfer is invisible (404), a reader cannot
// act, a member cannot name a raw image, all_projects is for admins.
func TestTenancyAndPolicy(t *testing.T) {
	a := newAPITest(t)
	id := a.create(admin)
	if code, _ := a.do(alt, "GET", "/v1/transfers/"+id, ""); code != 404 {
		t.Errorf("alt sees admin's transfer: %d", code)
	}
	if code, _ := a.do(alt, "POST", "/v1/transfers/"+id+"/action", `{"cancel": null}`); code != 404 {
		t.Errorf("alt cancels admin's transfer: %d", code)
	}
	if code, m := a.do(demo, "POST", "/v1/transfers", imageBody); code != 403 || m["forbidden"] == nil {
		t.Errorf("member with an image source: %d %v", code, m)
	}
	if code, _ := a.do(reader, "POST", "/v1/transfers", imageBody); code != 403 {
		t.Errorf("reader creates: %d", code)
	}
	if code, _ := a.do(demo, "GET", "/v1/transfers?all_projects=true", ""); code != 403 {
		t.Errorf("member all_projects: %d", code)
	}
	if code, m := a.do(admin, "GET", "/v1/transfers?all_projects=1", ""); code != 200 || len(m["transfers"].([]any)) != 1 {
		t.Errorf("admin all_projects: %d %v", code, m)
	}
	if code, m := a.do(demo, "GET", "/v1/transfers", ""); code != 200 || len(m["transfers"].([]any)) != 0 {
		t.Errorf("demo's own list: %d %v", code, m)
	}
	if code, _ := a.do(demo, "GET", "/v1/services", ""); code != 403 {
		t.Errorf("member lists services: %d", code)
	}
	if code, m := a.do(admin, "GET", "/v1/services", ""); code != 200 || m["services"] == nil {
		t.Errorf("admin lists services: %d %v", code, m)
	}
	if code, m := a.do([3]string{}, "GET", "/v1/transfers", ""); code != 401 || m["unauthorized"] == nil {
		t.Errorf("no token: %d %v", code, m)
	}
}

// Bad requests beyond the body: each a 4xx with an OpenStack error body.
func TestBadRequests(t *testing.T) {
	a := newAPITest(t)
	id := a.create(admin)
	cases := []struct {
		method, path, body string
		code               int
		key                string
	}{
		{"GET", "/v1/transfers?limit=0", "", 400, "badRequest"},
		{"GET", "/v1/transfers?limit=x", "", 400, "badRequest"},
		{"GET", "/v1/transfers?marker=nope", "", 400, "badRequest"},
		{"GET", "/v1/transfers?marker=00000000-0000-0000-0000-000000000000", "", 400, "badRequest"},
		{"GET", "/v1/transfers?sort_key=size", "", 400, "badRequest"},
		{"GET", "/v1/transfers?sort_dir=up", "", 400, "badRequest"},
		{"GET", "/v1/transfers?status=running", "", 400, "badRequest"},
		{"GET", "/v1/transfers?all_projects=maybe", "", 400, "badRequest"},
		{"GET", "/v1/transfers/not-a-uuid", "", 404, "itemNotFound"},
		{"GET", "/v1/transfers/00000000-0000-0000-0000-000000000000", "", 404, "itemNotFound"},
		{"POST", "/v1/transfers/" + id + "/action", `{"pause": null}`, 400, "badRequest"},
		{"POST", "/v1/transfers/" + id + "/action", `{"cancel": null, "retry": null}`, 400, "badRequest"},
		{"POST", "/v1/transfers/" + id + "/action", `nonsense`, 400, "badRequest"},
		{"POST", "/v1/transfers/" + id + "/action", `{"retry": null}`, 409, "conflictingRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionThree", "pool": "p", "image": "i"}, "destination": {"region": "RegionTwo"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionOne", "volume_id": "8c3c5e1e-6f0e-4f57-9a43-0c1f3e7e9d10"}, "destination": {"region": "RegionTwo"}}}`, 501, "notImplemented"},
		{"POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionOne", "pool": "p", "image": "i"}, "destination": {"region": "RegionOne"}}}`, 400, "badRequest"},
		{"PUT", "/v1/transfers/" + id, `{}`, 405, "badMethod"},
	}
	for _, tc := range cases {
		code, m := a.do(admin, tc.method, tc.path, tc.body)
		if code != tc.code || m[tc.key] == nil {
			t.Errorf("%s %s %s: %d %v, want %d %s", tc.method, tc.path, tc.body, code, m, tc.code, tc.key)
		}
	}
}

func TestMicroversion(t *testing.T) {
	a := newAPITest(t)
	cases := []struct {
		header string
		code   int
		served string
	}{
		{"", 200, "volume-ferry 1.0"},
		{"volume-ferry 1.0", 200, "volume-ferry 1.0"},
		{"volume-ferry latest", 200, "volume-ferry " + MaxMicroversion},
		{"compute 2.90, volume-ferry 1.0", 200, "volume-ferry 1.0"},
		{"volume-ferry 1.99", 406, ""},
		{"volume-ferry 2.0", 406, ""},
		{"volume-ferry one", 400, ""},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest("GET", a.url+"/v1/transfers", nil)
		req.Header.Set("X-Test-User", "u")
		req.Header.Set("X-Test-Project", "p")
		req.Header.Set("X-Test-Roles", "reader")
		if tc.header != "" {
			req.Header.Set("OpenStack-API-Version", tc.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%q: %d, want %d", tc.header, resp.StatusCode, tc.code)
		}
		if tc.served != "" && resp.Header.Get("OpenStack-API-Version") != tc.served {
			t.Errorf("%q: served %q", tc.header, resp.Header.Get("OpenStack-API-Version"))
		}
	}
}

// Retry moves a failed transfer back to queued and writes its new start
// (new epoch) in the same transaction.
func TestRetryWritesStart(t *testing.T) {
	a := newAPITest(t)
	id := a.create(admin)
	ctx := context.Background()
	if _, err := a.db.TransitionTransfer(ctx, id, db.StatusError, db.TransitionOpts{Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	if code, m := a.do(admin, "POST", "/v1/transfers/"+id+"/action", `{"retry": null}`); code != 202 {
		t.Fatalf("retry: %d %v", code, m)
	}
	_, m := a.do(admin, "GET", "/v1/transfers/"+id, "")
	if tr := m["transfer"].(map[string]any); tr["status"] != "queued" || tr["error"] != nil {
		t.Errorf("after retry: %v", tr)
	}
	msgs, err := a.db.ClaimOutbox(ctx, "test", 60e9, 10)
	if err != nil {
		t.Fatal(err)
	}
	var payloads []string
	for _, m := range msgs {
		payloads = append(payloads, m.Payload)
	}
	want := fmt.Sprintf(`{"transfer_id":%q,"epoch":2}`, id)
	if len(msgs) != 2 || !slices.Contains(payloads, want) {
		t.Errorf("outbox %q, want the creation's start and %s", payloads, want)
	}
	if a.kicks.Load() != 2 {
		t.Errorf("publisher kicked %d times", a.kicks.Load())
	}
}

// [api] quota_transfers: a project at its quota gets 413 with an
// OpenStack overLimit body; another project is not affected; a finished
// transfer frees its slot.
func TestCreateQuota(t *testing.T) {
	d := testDB(t)
	at := &apiTest{t: t, db: d}
	cfg := config.Defaults()
	cfg.API.QuotaTransfers = 2
	s := &Server{cfg: cfg, log: slog.New(slog.DiscardHandler), db: d, hooks: fakeHooks(&at.kicks)}
	ts := httptest.NewServer(s.Router())
	t.Cleanup(ts.Close)
	at.url = ts.URL
	first := at.create(admin)
	at.create(admin)
	code, m := at.do(admin, "POST", "/v1/transfers", imageBody)
	if code != http.StatusRequestEntityTooLarge {
		t.Fatalf("third transfer: %d %v, want 413", code, m)
	}
	ol, _ := m["overLimit"].(map[string]any)
	if ol == nil || ol["code"] != float64(413) || !strings.Contains(ol["message"].(string), "quota is 2") {
		t.Errorf("body %v, want an overLimit fault naming the quota", m)
	}
	if n, _, err := d.ListTransfers(context.Background(), db.ListOpts{Scope: db.ProjectScope(admin[1]), Limit: 10}); err != nil || len(n) != 2 {
		t.Errorf("%d transfers after the refusal, %v", len(n), err)
	}
	if code, _ := at.do(admin, "POST", "/v1/transfers/"+first+"/action", `{"cancel": null}`); code != http.StatusAccepted {
		t.Fatalf("cancel: %d", code)
	}
	at.create(admin) // the cancelled one's slot
}
