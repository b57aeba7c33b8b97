package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v2"
)

// fakeCloud is a Keystone that issues tokens with a catalog naming the fake
// Ferry API in RegionOne only, and a Ferry API keeping transfers in memory.
type fakeCloud struct {
	keystone, api *httptest.Server

	mu        sync.Mutex
	transfers map[string]map[string]any
	order     []string
	// polls counts GETs per transfer; a transfer completes (or fails, when
	// its name is "doomed") on its third poll.
	polls    map[string]int
	creates  []map[string]any
	requests []string
	queries  []string
	// versions are the requests' OpenStack-API-Version headers.
	versions []string
	// services is GET /v1/services' answer; nil: 403.
	services []map[string]any
	// repl is the fake replications API (replication_test.go).
	repl fakeReplications
	// groups is the fake replication groups API (group_test.go).
	groups fakeGroups
}

func newFakeCloud(t *testing.T) *fakeCloud {
	t.Helper()
	fc := &fakeCloud{transfers: map[string]map[string]any{}, polls: map[string]int{}}
	fc.api = httptest.NewServer(http.HandlerFunc(fc.serveAPI))
	fc.keystone = httptest.NewServer(http.HandlerFunc(fc.serveKeystone))
	t.Cleanup(func() { fc.api.Close(); fc.keystone.Close() })
	return fc
}

func (fc *fakeCloud) env(overrides ...string) func(string) string {
	m := map[string]string{
		"OS_AUTH_URL": fc.keystone.URL + "/v3", "OS_USERNAME": "demo", "OS_PASSWORD": "secret",
		"OS_PROJECT_NAME": "demo", "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
		"OS_REGION_NAME": "RegionOne",
	}
	for i := 0; i+1 < len(overrides); i += 2 {
		m[overrides[i]] = overrides[i+1]
	}
	return func(k string) string { return m[k] }
}

func (fc *fakeCloud) serveKeystone(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Auth struct {
			Identity struct {
				Password struct {
					User struct {
						Password string `json:"password"`
					} `json:"user"`
				} `json:"password"`
			} `json:"identity"`
		} `json:"auth"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	w.Header().Set("Content-Type", "application/json")
	if r.Method != http.MethodPost || body.Auth.Identity.Password.User.Password != "secret" {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}`)
		return
	}
	w.Header().Set("X-Subject-Token", "tok-demo")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"token": {"expires_at": %q, "methods": ["password"],
		"user": {"id": "u1", "name": "demo", "domain": {"id": "default", "name": "Default"}},
		"project": {"id": "p1", "name": "demo", "domain": {"id": "default", "name": "Default"}},
		"roles": [{"id": "r1", "name": "member"}],
		"catalog": [{"type": "volume-ferry", "name": "ferry", "id": "s1", "endpoints": [
			{"id": "e1", "interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": %q}]}]}}`,
		time.Now().Add(time.Hour).UTC().Format(time.RFC3339), fc.api.URL)
}

func fault(w http.ResponseWriter, code int, name, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Openstack-Request-Id", "req-test")
	w.WriteHeader(code)
	fmt.Fprintf(w, `{%q: {"code": %d, "message": %q}}`, name, code, msg)
}

func (fc *fakeCloud) serveAPI(w http.ResponseWriter, r *http.Request) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.requests = append(fc.requests, r.Method+" "+r.URL.Path)
	fc.queries = append(fc.queries, r.URL.RawQuery)
	fc.versions = append(fc.versions, r.Header.Get("OpenStack-API-Version"))
	if r.Header.Get("X-Auth-Token") != "tok-demo" {
		fault(w, 401, "unauthorized", "The request you have made requires authentication.")
		return
	}
	reply := func(code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	parts := strings.Split(path, "/")
	switch {
	case parts[0] == "replications" && r.Header.Get("OpenStack-API-Version") != "volume-ferry 1.1":
		fault(w, 404, "itemNotFound", "The resource could not be found.") // since 1.1
	case parts[0] == "replications":
		fc.serveReplications(w, r, parts, reply)
	case parts[0] == "replication-groups" && r.Header.Get("OpenStack-API-Version") != "volume-ferry 1.2":
		fault(w, 404, "itemNotFound", "The resource could not be found.") // since 1.2
	case parts[0] == "replication-groups":
		fc.serveGroups(w, r, parts, reply)
	case path == "services" && r.Method == http.MethodGet && fc.services != nil:
		reply(200, map[string]any{"services": fc.services})
	case path == "services" && r.Method == http.MethodGet:
		fault(w, 403, "forbidden", `Policy doesn't allow service:get_all to be performed.`)
	case path == "transfers" && r.Method == http.MethodPost:
		var req struct {
			Transfer map[string]any `json:"transfer"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Transfer == nil {
			fault(w, 400, "badRequest", "bad body")
			return
		}
		fc.creates = append(fc.creates, req.Transfer)
		id := fmt.Sprintf("00000000-0000-0000-0000-%012d", len(fc.order)+1)
		src, _ := req.Transfer["source"].(map[string]any)
		dst, _ := req.Transfer["destination"].(map[string]any)
		tr := map[string]any{
			"id": id, "name": req.Transfer["name"], "description": "", "project_id": "p1", "user_id": "u1",
			"status": "queued", "mode": "full", "source": src, "destination": dst,
			"bytes_total": 1 << 30, "bytes_transferred": 0, "progress": 0, "rate_bytes_per_second": 0,
			"eta_seconds": nil, "digest": nil, "error": nil, "created_at": "2026-11-25T10:00:00.000000Z",
			"updated_at": "2026-11-25T10:00:00.000000Z", "started_at": nil, "finished_at": nil,
		}
		if tr["name"] == nil {
			tr["name"] = ""
		}
		fc.transfers[id] = tr
		fc.order = append(fc.order, id)
		reply(202, map[string]any{"transfer": tr})
	case path == "transfers" && r.Method == http.MethodGet:
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		if limit == 0 {
			limit = 2 // small pages, so the CLI must follow the next links
		}
		start := 0
		if m := r.URL.Query().Get("marker"); m != "" {
			for i, id := range fc.order {
				if id == m {
					start = i + 1
				}
			}
		}
		end := min(start+limit, len(fc.order))
		items := []any{}
		for _, id := range fc.order[start:end] {
			items = append(items, fc.transfers[id])
		}
		body := map[string]any{"transfers": items}
		if end < len(fc.order) {
			body["transfers_links"] = []any{map[string]any{"rel": "next",
				"href": fc.api.URL + "/v1/transfers?limit=" + strconv.Itoa(limit) + "&marker=" + fc.order[end-1]}}
		}
		reply(200, body)
	case len(parts) >= 2 && parts[0] == "transfers":
		tr, ok := fc.transfers[parts[1]]
		if !ok {
			fault(w, 404, "itemNotFound", "Transfer "+parts[1]+" could not be found.")
			return
		}
		switch {
		case len(parts) == 2 && r.Method == http.MethodGet:
			fc.polls[parts[1]]++
			switch n := fc.polls[parts[1]]; {
			case n == 2:
				tr["status"], tr["progress"], tr["bytes_transferred"], tr["rate_bytes_per_second"], tr["eta_seconds"] = "transferring", 50.0, 1<<29, 100<<20, 5
			case n >= 3 && tr["name"] == "doomed":
				tr["status"], tr["error"] = "error", "destination image exists"
			case n >= 3 && tr["status"] == "transferring":
				tr["status"], tr["progress"], tr["bytes_transferred"], tr["eta_seconds"] = "completed", 100.0, 1<<30, nil
			}
			reply(200, map[string]any{"transfer": tr})
		case len(parts) == 2 && r.Method == http.MethodDelete:
			if tr["status"] != "completed" && tr["status"] != "error" && tr["status"] != "cancelled" {
				fault(w, 409, "conflictingRequest", "Transfer "+parts[1]+" is "+tr["status"].(string)+"; only ended transfers can be deleted.")
				return
			}
			delete(fc.transfers, parts[1])
			w.WriteHeader(204)
		case len(parts) == 3 && parts[2] == "action" && r.Method == http.MethodPost:
			tr["status"] = "cancelling"
			w.WriteHeader(202)
		case len(parts) == 3 && parts[2] == "events":
			reply(200, map[string]any{"events": []any{map[string]any{"created_at": "2026-11-25T10:00:00.000000Z",
				"kind": "status", "from_status": nil, "to_status": "queued", "message": "transfer created", "request_id": "req-1"}}})
		default:
			fault(w, 405, "badMethod", "no")
		}
	default:
		fault(w, 404, "itemNotFound", "The resource could not be found.")
	}
}

// run runs the CLI as main does and returns its exit code and output.
func run(t *testing.T, getenv func(string) string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := NewCommand(getenv, &stdout, &stderr)
	root.SetArgs(args)
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	code := 0
	if err := root.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintf(&stderr, "ferry: %v\n", apiError(err))
		code = 1
	}
	return code, stdout.String(), stderr.String()
}

// Every request says the version the CLI was written for, like the
// openstack CLI.
func TestEveryRequestSendsTheMicroversion(t *testing.T) {
	fc := newFakeCloud(t)
	fc.services = []map[string]any{}
	for _, args := range [][]string{
		{"transfer", "create", "--pool", "volumes", "--image", "img1", "--destination-region", "RegionTwo", "--name", "t1"},
		{"transfer", "list"}, {"transfer", "show", "t1"}, {"replication", "list"}, {"service", "list"},
	} {
		if code, _, errOut := run(t, fc.env(), args...); code != 0 {
			t.Fatalf("%v: %d %s", args, code, errOut)
		}
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(fc.versions) < 5 {
		t.Fatalf("%d requests", len(fc.versions))
	}
	for i, v := range fc.versions {
		if v != "volume-ferry "+APIVersion {
			t.Errorf("%s: OpenStack-API-Version %q, want volume-ferry %s", fc.requests[i], v, APIVersion)
		}
	}
}

func TestCreateSendsTheAPIBodyAndPrintsTheObject(t *testing.T) {
	fc := newFakeCloud(t)
	code, out, errOut := run(t, fc.env(), "transfer", "create", "--pool", "volumes", "--image", "img1",
		"--destination-region", "RegionTwo", "--name", "t1", "--mode", "full", "-f", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := map[string]any{"source": map[string]any{"region": "RegionOne", "pool": "volumes", "image": "img1"},
		"destination": map[string]any{"region": "RegionTwo"}, "name": "t1", "mode": "full"}
	if got, _ := json.Marshal(fc.creates[0]); string(got) != mustJSON(t, want) {
		t.Errorf("request body = %s, want %s", got, mustJSON(t, want))
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(out), &obj); err != nil {
		t.Fatalf("-f json is not JSON: %v\n%s", err, out)
	}
	if obj["id"] != "00000000-0000-0000-0000-000000000001" || obj["status"] != "queued" || obj["eta_seconds"] != nil {
		t.Errorf("object = %v", obj)
	}
	// The keys come in the API's order.
	if !strings.HasPrefix(out, "{\n  \"id\":") || strings.Index(out, `"source"`) > strings.Index(out, `"bytes_total"`) {
		t.Errorf("keys out of order:\n%s", out)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCreateNeedsASourceRegionAndDestination(t *testing.T) {
	fc := newFakeCloud(t)
	for _, tc := range []struct {
		env  func(string) string
		args []string
		want string
	}{
		{fc.env("OS_REGION_NAME", ""), []string{"--pool", "p", "--image", "i", "--destination-region", "R2"}, "no source region"},
		{fc.env(), []string{"--pool", "p", "--image", "i"}, "--destination-region is required"},
		{fc.env(), []string{"--volume", "v", "--pool", "p", "--image", "i", "--destination-region", "R2"}, "none of the others can be"},
		{fc.env(), []string{"--pool", "p", "--destination-region", "R2"}, "must all be set"},
		{fc.env(), []string{"--destination-region", "R2"}, "volume"},
	} {
		code, _, errOut := run(t, tc.env, append([]string{"transfer", "create"}, tc.args...)...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want it to say %q", tc.args, code, errOut, tc.want)
		}
	}
	if len(fc.creates) != 0 {
		t.Errorf("%d creates reached the API", len(fc.creates))
	}
}

func TestWaitDrawsProgressAndExitCodes(t *testing.T) {
	fc := newFakeCloud(t)
	code, out, errOut := run(t, fc.env(), "transfer", "create", "--pool", "volumes", "--image", "img1",
		"--destination-region", "RegionTwo", "--wait", "--poll-interval", "10ms", "-f", "value", "-c", "status")
	if code != 0 || strings.TrimSpace(out) != "completed" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// Not a terminal: plain lines, one per status.
	for _, want := range []string{": queued ", ": transferring  50.0%  512.0 MiB/1.0 GiB  100.0 MiB/s  ETA 5s", ": completed    100.0%  1.0 GiB/1.0 GiB"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("progress lacks %q:\n%s", want, errOut)
		}
	}
	code, out, errOut = run(t, fc.env(), "transfer", "create", "--pool", "volumes", "--image", "img2", "--name", "doomed",
		"--destination-region", "RegionTwo", "--wait", "--poll-interval", "10ms", "-f", "value", "-c", "status")
	if code == 0 || strings.TrimSpace(out) != "error" || !strings.Contains(errOut, "ended in error: destination image exists") {
		t.Errorf("a transfer ending in error: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestProgressBarOnATerminal(t *testing.T) {
	var b bytes.Buffer
	p := &progressWriter{w: &b, tty: true, width: 80, now: time.Now}
	eta := int64(65)
	p.update(progressState{Status: "transferring", Progress: 50, BytesTotal: 2 << 30, BytesTransferred: 1 << 30, Rate: 3 << 20, ETASeconds: &eta})
	p.done()
	got := b.String()
	want := "\rtransferring [############............]  50.0%  1.0 GiB/2.0 GiB  3.0 MiB/s  ETA 1m5s"
	if !strings.HasPrefix(got, want) || !strings.HasSuffix(got, "\n") {
		t.Errorf("got %q, want prefix %q", got, want)
	}
}

func TestListFollowsPagesAndFormats(t *testing.T) {
	fc := newFakeCloud(t)
	for i := 0; i < 5; i++ {
		if code, _, e := run(t, fc.env(), "transfer", "create", "--pool", "p", "--image", fmt.Sprint("i", i), "--name",
			fmt.Sprint("n", i), "--destination-region", "R2"); code != 0 {
			t.Fatal(e)
		}
	}
	code, out, errOut := run(t, fc.env(), "transfer", "list", "-f", "value", "-c", "name", "-c", "status")
	if code != 0 {
		t.Fatal(errOut)
	}
	if want := "n0 queued\nn1 queued\nn2 queued\nn3 queued\nn4 queued\n"; out != want {
		t.Errorf("value output %q, want %q", out, want)
	}
	_, out, _ = run(t, fc.env(), "transfer", "list", "--limit", "3", "-f", "yaml", "-c", "name")
	var rows []map[string]string
	if err := yaml.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 3 || rows[2]["name"] != "n2" {
		t.Errorf("yaml with --limit 3: %v %q", err, out)
	}
	_, out, _ = run(t, fc.env(), "transfer", "list", "-c", "name", "-c", "source")
	want := "+------+-----------------------------+\n" +
		"| name | source                      |\n" +
		"+------+-----------------------------+\n" +
		"| n0   | region='RegionOne', pool='p', image='i0' |\n"
	if !strings.HasPrefix(out, want[:37]) || !strings.Contains(out, "| n0   | region='RegionOne', pool='p', image='i0' |") {
		t.Errorf("table:\n%s", out)
	}
	n := len(fc.queries)
	if code, _, e := run(t, fc.env(), "transfer", "list", "--source-region", "RegionOne", "--destination-region", "R2", "--status", "queued"); code != 0 ||
		!slices.Contains(fc.queries[n:], "destination_region=R2&source_region=RegionOne&status=queued") {
		t.Errorf("list filters: exit %d %q, queries %q", code, e, fc.queries[n:])
	}
	code, _, errOut = run(t, fc.env(), "transfer", "list", "-c", "nope")
	if code == 0 || !strings.Contains(errOut, `no column "nope"`) {
		t.Errorf("unknown column: exit %d %q", code, errOut)
	}
	code, _, errOut = run(t, fc.env(), "transfer", "list", "-f", "xml")
	if code == 0 || !strings.Contains(errOut, `invalid output format "xml"`) {
		t.Errorf("unknown format: exit %d %q", code, errOut)
	}
}

func TestTableAlignsColumns(t *testing.T) {
	var b bytes.Buffer
	writeTable(&b, []string{"Field", "Value"}, [][]string{{"id", "x"}, {"name", "long name"}})
	want := "+-------+-----------+\n| Field | Value     |\n+-------+-----------+\n| id    | x         |\n| name  | long name |\n+-------+-----------+\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestShowByNameAndErrors(t *testing.T) {
	fc := newFakeCloud(t)
	run(t, fc.env(), "transfer", "create", "--pool", "p", "--image", "i", "--name", "twin", "--destination-region", "R2")
	run(t, fc.env(), "transfer", "create", "--pool", "p", "--image", "i", "--name", "twin", "--destination-region", "R2")
	run(t, fc.env(), "transfer", "create", "--pool", "p", "--image", "i", "--name", "solo", "--destination-region", "R2")
	code, out, _ := run(t, fc.env(), "transfer", "show", "solo", "-f", "value", "-c", "id")
	if code != 0 || strings.TrimSpace(out) != "00000000-0000-0000-0000-000000000003" {
		t.Errorf("show by name: %d %q", code, out)
	}
	for _, tc := range []struct {
		env  func(string) string
		args []string
		want string
	}{
		{fc.env(), []string{"transfer", "show", "twin"}, "ferry: more than one transfer is named 'twin': use its ID\n"},
		{fc.env(), []string{"transfer", "show", "ghost"}, "ferry: Transfer ghost could not be found (HTTP 404) (Request-ID: req-test)\n"},
		{fc.env(), []string{"service", "list"}, "ferry: Policy doesn't allow service:get_all to be performed (HTTP 403) (Request-ID: req-test)\n"},
		{fc.env("OS_PASSWORD", "wrong"), []string{"transfer", "list"}, "ferry: authentication failed: The request you have made requires authentication (HTTP 401)\n"},
		{fc.env("OS_REGION_NAME", "RegionNine"), []string{"transfer", "list"}, `ferry: no volume-ferry endpoint in the catalog for region "RegionNine"`},
		{func(string) string { return "" }, []string{"transfer", "list"}, "ferry: no credentials"},
		{fc.env(), []string{"transfer", "delete", "00000000-0000-0000-0000-000000000001", "ghost"},
			"Failed to delete transfer with name or ID '00000000-0000-0000-0000-000000000001': Transfer 00000000-0000-0000-0000-000000000001 is queued; only ended transfers can be deleted (HTTP 409) (Request-ID: req-test)\n" +
				"Failed to delete transfer with name or ID 'ghost': Transfer ghost could not be found (HTTP 404) (Request-ID: req-test)\n" +
				"ferry: 2 of 2 transfers failed to delete\n"},
	} {
		code, _, errOut := run(t, tc.env, tc.args...)
		if code == 0 || !strings.HasPrefix(errOut, tc.want) || strings.Count(errOut, "\n") != strings.Count(tc.want, "\n")+boolInt(!strings.HasSuffix(tc.want, "\n")) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, code, errOut, tc.want)
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestCancelAndEvents(t *testing.T) {
	fc := newFakeCloud(t)
	run(t, fc.env(), "transfer", "create", "--pool", "p", "--image", "i", "--name", "c1", "--destination-region", "R2")
	if code, _, e := run(t, fc.env(), "transfer", "cancel", "c1"); code != 0 {
		t.Fatal(e)
	}
	if fc.transfers["00000000-0000-0000-0000-000000000001"]["status"] != "cancelling" {
		t.Error("cancel did not reach the API")
	}
	code, out, _ := run(t, fc.env(), "transfer", "events", "c1", "-f", "json")
	var evs []map[string]any
	if err := json.Unmarshal([]byte(out), &evs); code != 0 || err != nil || len(evs) != 1 || evs[0]["to_status"] != "queued" {
		t.Errorf("events: %d %v %q", code, err, out)
	}
	if _, ok := evs[0]["request_id"]; ok {
		t.Error("request_id is not a default column")
	}
	var posts []string
	for _, r := range fc.requests {
		if strings.HasSuffix(r, "/action") {
			posts = append(posts, r)
		}
	}
	sort.Strings(posts)
	if len(posts) != 1 {
		t.Errorf("actions sent: %v", posts)
	}
}
