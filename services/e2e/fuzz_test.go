//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// fuzzIDs are path and body ids an attacker tries: paths and queries of
// other Cinder resources, traversal, control characters, bad escapes,
// unicode, huge and empty values, and the UUID spellings that are not
// canonical.
var fuzzIDs = []string{
	"../../v3/volumes/detail", "detail?all_tenants=1", "detail", "..", ".", "a\nb", "a\r\nX-Injected: 1", "%zz", "%00", "%2e%2e",
	"", " ", "null", "0", "-1", "ü", "💥", "\u202e", strings.Repeat("a", 300), strings.Repeat("9", 5000),
	"{8c3c5e1e-6f0e-4f57-9a43-0c1f3e7e9d10}", "urn:uuid:8c3c5e1e-6f0e-4f57-9a43-0c1f3e7e9d10", "8c3c5e1e6f0e4f579a430c1f3e7e9d10",
	"8C3C5E1E-6F0E-4F57-9A43-0C1F3E7E9D10", "00000000-0000-0000-0000-000000000000", "8c3c5e1e-6f0e-4f57-9a43-0c1f3e7e9d1g",
	"'; DROP TABLE transfers; --", "<script>alert(1)</script>", "${jndi:ldap://x}", "%s%n%x",
}

// fuzzer sends random and adversarial requests to every route of the real
// API with real Keystone tokens.
type fuzzer struct {
	t        *testing.T
	rnd      *rand.Rand
	url      string
	tokens   []string
	realID   string
	hc       *http.Client
	created  []string // ids of transfers a request happened to create
	stats    map[int]int
	skipped  int
	failures int // findings so far
}

func (f *fuzzer) pick(xs []string) string { return xs[f.rnd.IntN(len(xs))] }

// id is a path id: a real transfer's, a random UUID, or an attack.
func (f *fuzzer) id() string {
	switch n := f.rnd.IntN(10); {
	case n < 2:
		return f.realID
	case n < 4:
		return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", f.rnd.Uint32(), f.rnd.IntN(1<<16), f.rnd.IntN(1<<12), f.rnd.IntN(1<<12), f.rnd.Uint64()&(1<<48-1))
	default:
		return f.pick(fuzzIDs)
	}
}

// route is a method and a path: most of the time one the API serves (so
// that requests get past the router to the handlers), else anything.
func (f *fuzzer) route() (method, path, id string) {
	id = f.id()
	seg := id
	// Raw only when it stays a valid request-target: a space, a control
	// or non-ASCII byte or a bad %-escape there is refused by Go's HTTP
	// server itself (400, plain text) before any handler runs.
	if f.rnd.IntN(3) > 0 || !rawPathOK(id) {
		seg = url.PathEscape(id)
	}
	served := [][2]string{{"GET", "/"}, {"GET", "/healthcheck"}, {"GET", "/metrics"}, {"GET", "/v1/services"},
		{"POST", "/v1/transfers"}, {"POST", "/v1/transfers"}, {"POST", "/v1/transfers"}, {"GET", "/v1/transfers"}, {"GET", "/v1/transfers"},
		{"GET", "/v1/transfers/" + seg}, {"GET", "/v1/transfers/" + seg + "/events"}, {"POST", "/v1/transfers/" + seg + "/action"},
		{"POST", "/v1/transfers/" + seg + "/action"}, {"DELETE", "/v1/transfers/" + seg}}
	if f.rnd.IntN(10) < 7 {
		r := served[f.rnd.IntN(len(served))]
		return r[0], r[1], id
	}
	routes := []string{"/", "/healthcheck", "/metrics", "/v1", "/v1/", "/v1/transfers", "/v1/transfers/", "/v1/services", "/v1/services/",
		"/v1/transfers/" + seg, "/v1/transfers/" + seg + "/", "/v1/transfers/" + seg + "/events", "/v1/transfers/" + seg + "/action",
		"/v1/transfers/" + seg + "/events/" + seg, "/v1/" + seg, "/v2/transfers", "/V1/TRANSFERS", "//v1//transfers"}
	return f.pick([]string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}), f.pick(routes), id
}

func rawPathOK(s string) bool {
	if _, err := url.PathUnescape(s); err != nil {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f || s[i] == '#' {
			return false
		}
	}
	return true
}

func (f *fuzzer) query() string {
	if f.rnd.IntN(2) == 0 {
		return ""
	}
	junk := []string{"", "0", "-1", "1", "2", "1000000000000000000000", "x", "%zz", "true", "false", "maybe", "created_at", "size", "asc", "desc", "up",
		"queued", "completed", "flying", url.QueryEscape(f.pick(fuzzIDs)), f.realID, strings.Repeat("z", 400), "%zz", "a%00b"}
	keys := []string{"limit", "marker", "sort_key", "sort_dir", "status", "all_projects", "source_region", "destination_region", "sort", "page", "x"}
	var parts []string
	for range 1 + f.rnd.IntN(4) {
		parts = append(parts, f.pick(keys)+"="+f.pick(junk))
	}
	return "?" + strings.Join(parts, "&")
}

// body is a mutation of a valid body, or random bytes, or nothing. A
// valid create never names a source that exists (no copy is made).
func (f *fuzzer) body(id string) string {
	src := map[string]any{"region": f.pick([]string{"RegionOne", "RegionTwo", "Atlantis", "", "ü"})}
	switch f.rnd.IntN(4) {
	case 0:
		src["volume_id"] = id
	case 1:
		src["backup_id"] = id
	case 2:
		src["pool"], src["image"] = f.pick([]string{"volumes", "backups", "nope", "../x", "a/b", "a@b"}), "ferry-fuzz-absent-"+strconv.Itoa(f.rnd.IntN(1e6))
	default:
		src["volume_id"], src["pool"] = id, "volumes"
	}
	dst := map[string]any{"region": f.pick([]string{"RegionOne", "RegionTwo", "", "Atlantis"})}
	if f.rnd.IntN(3) == 0 {
		dst["image"] = f.pick(fuzzIDs)
	}
	tr := map[string]any{"source": src, "destination": dst}
	for _, k := range []string{"name", "description", "mode", "colour"} {
		if f.rnd.IntN(4) == 0 {
			tr[k] = f.pick([]string{"auto", "full", "incremental", "turbo", strings.Repeat("n", 300)})
		}
	}
	valid, _ := json.Marshal(map[string]any{"transfer": tr})
	switch f.rnd.IntN(14) {
	case 0:
		return ""
	case 1:
		return "{"
	case 2:
		return `{"cancel": null}`
	case 3:
		return `{"cancel": null, "retry": null}`
	case 4:
		return `{"pause": 1}`
	case 5:
		return "[" + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + "]"
	case 6:
		return `{"transfer": {"description": "` + strings.Repeat("d", 200000) + `"}}`
	case 7:
		b := make([]byte, f.rnd.IntN(512))
		for i := range b {
			b[i] = byte(f.rnd.IntN(256))
		}
		return string(b)
	case 8:
		return `{"transfer": null}` + "\x00"
	case 9:
		return strings.Replace(string(valid), `"region"`, `"region": 7, "x"`, 1)
	}
	return string(valid)
}

func (f *fuzzer) headers(req *http.Request) {
	switch n := f.rnd.IntN(12); {
	case n < 7:
		req.Header.Set("X-Auth-Token", f.pick(f.tokens))
	case n == 7:
		req.Header.Set("X-Auth-Token", strings.Repeat("A", 64<<10))
	case n == 8:
		req.Header.Set("X-Auth-Token", "gAAAAA"+strconv.Itoa(f.rnd.IntN(1e9)))
	case n == 9:
		req.Header.Set("X-Auth-Token", "tok\x7fen")
	case n == 10:
		// no token
	default:
		req.Header.Set("X-Auth-Token", f.pick(f.tokens)+" ")
	}
	cts := []string{"application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
		"multipart/form-data; boundary=x", ";;", "application/vnd.openstack.volume-ferry+json", "", "application/xml"}
	if ct := f.pick(cts); ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if f.rnd.IntN(3) == 0 {
		req.Header.Set("OpenStack-API-Version", f.pick([]string{"volume-ferry 1.0", "volume-ferry latest", "volume-ferry 99.0",
			"volume-ferry 0.9", "volume-ferry x", "volume-ferry", "compute 2.1", "volume-ferry 1.0, volume-ferry 2.0", strings.Repeat("v", 3000)}))
	}
	if f.rnd.IntN(4) == 0 {
		req.Header.Set("X-Forwarded-Host", "evil.example")
		req.Header.Set("X-Forwarded-Proto", "https")
		req.Header.Set("X-Forwarded-Prefix", "/evil")
	}
	if f.rnd.IntN(5) == 0 {
		req.Host = f.pick([]string{"evil.example", "evil.example:1", "a@b", "[::1]:9790"})
	}
}

// fail reports a finding.
func (f *fuzzer) fail(format string, args ...any) {
	f.t.Helper()
	f.t.Errorf(format, args...)
	f.failures++
}

// one sends a request and checks the answer.
func (f *fuzzer) one(i int) {
	method, path, id := f.route()
	body := ""
	if method != "GET" && method != "HEAD" || f.rnd.IntN(8) == 0 {
		body = f.body(id)
	}
	// A retry of the real (failed) transfer would dispatch it again.
	if id == f.realID && strings.Contains(body, "retry") {
		body = `{"cancel": null}`
	}
	q := f.query()
	req, err := http.NewRequest(method, f.url, bytes.NewReader([]byte(body)))
	if err != nil {
		f.t.Fatal(err)
	}
	// The path and query go out as they are (no client-side cleaning or
	// re-escaping): %zz, .. and the rest reach the server.
	req.URL.Opaque = "//" + req.URL.Host + path
	req.URL.RawQuery = strings.TrimPrefix(q, "?")
	f.headers(req)
	resp, err := f.hc.Do(req)
	if err != nil {
		// The client itself refuses some (a newline in the path or a
		// header): nothing reached the server.
		f.skipped++
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	f.stats[resp.StatusCode]++
	what := fmt.Sprintf("#%d %s %.120q%.80q (body %.80q)", i, method, path, q, body)
	if resp.StatusCode >= 500 {
		f.fail("%s: %d %.300s", what, resp.StatusCode, b)
	}
	if !strings.HasPrefix(resp.Header.Get("X-Openstack-Request-Id"), "req-") {
		f.fail("%s: %d without x-openstack-request-id", what, resp.StatusCode)
	}
	if resp.StatusCode >= 400 && method != "HEAD" && !openStackFault(b, resp.StatusCode) {
		f.fail("%s: %d body is not an OpenStack error: %.300q", what, resp.StatusCode, b)
	}
	if resp.StatusCode == http.StatusAccepted && method == "POST" && strings.HasSuffix(path, "/v1/transfers") {
		var m struct{ Transfer struct{ ID string } }
		if json.Unmarshal(b, &m) == nil && m.Transfer.ID != "" {
			f.created = append(f.created, m.Transfer.ID)
		}
	}
	if loc := resp.Header.Get("Location"); loc != "" && (strings.Contains(loc, "evil") || strings.HasPrefix(loc, "//")) {
		f.fail("%s: redirect to %q", what, loc)
	}
	if strings.Contains(string(b), "evil.example") {
		f.fail("%s: the answer reflects a client's Host or forwarding header: %.300s", what, b)
	}
}

// openStackFault: {"<name>": {"code": <status>, "message": "<non-empty>"}}.
func openStackFault(b []byte, code int) bool {
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

// A bounded fuzz of the REST API with real tokens (admin, member, another
// project's member, reader, and bad ones): random and adversarial methods,
// paths, ids, queries, headers and bodies on every route. Any 5xx, any
// answer without a request id, any error without an OpenStack body fails.
// FERRY_FUZZ_SEED replays a run; FERRY_FUZZ_REQUESTS sets the count.
func TestAPIFuzz(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("FERRY_FUZZ_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_FUZZ_SEED=%q: %v", v, err)
		}
		seed = s
	}
	n := 1500
	if v := os.Getenv("FERRY_FUZZ_REQUESTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("FERRY_FUZZ_REQUESTS=%q", v)
		}
	}
	t.Logf("seed %d (FERRY_FUZZ_SEED=%d replays this run), %d requests", seed, seed, n)
	base := testenv.Get(t, "FERRY_API_URL")
	admin := &client{t: t, url: base, token: token(t, "admin")}
	f := &fuzzer{t: t, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), url: base, stats: map[int]int{},
		hc: &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	for _, u := range []string{"admin", "demo", "alt", "reader"} {
		f.tokens = append(f.tokens, token(t, u))
	}
	// One real transfer to aim at: its source image does not exist, so it
	// fails at once and copies nothing.
	code, m := admin.do("POST", "/v1/transfers", `{"transfer": {"name": "fuzz-target", "source": {"region": "RegionOne", "pool": "volumes", "image": "ferry-fuzz-absent"}, "destination": {"region": "RegionTwo"}}}`)
	if code != 202 {
		t.Fatalf("creating the target: %d %v", code, m)
	}
	f.realID = m["transfer"].(map[string]any)["id"].(string)
	t.Cleanup(func() {
		for _, id := range append([]string{f.realID}, f.created...) {
			admin.do("POST", "/v1/transfers/"+id+"/action", `{"cancel": null}`)
			deadline := time.Now().Add(time.Minute)
			for time.Now().Before(deadline) {
				if code, _ := admin.do("DELETE", "/v1/transfers/"+id, ""); code == 204 || code == 404 {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	})
	// Let it fail (a terminal transfer can be deleted too); the fuzz does
	// not depend on it.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if _, m := admin.do("GET", "/v1/transfers/"+f.realID, ""); m["transfer"] != nil {
			if st := m["transfer"].(map[string]any)["status"]; st == "error" || st == "completed" || st == "cancelled" {
				break
			}
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	sent := 0
	var failing []int
	for ; sent < n && time.Now().Before(deadline) && len(failing) < 10; sent++ {
		errs := f.failures
		f.one(sent)
		if f.failures > errs {
			failing = append(failing, sent)
		}
	}
	if len(failing) >= 10 {
		t.Fatalf("stopped after 10 failing requests %v (the seed replays them)", failing)
	}
	t.Logf("%d requests (%d refused by the client itself), status counts %v, %d transfers created by chance", sent, f.skipped, f.stats, len(f.created))
	if sent < n/2 {
		t.Errorf("only %d of %d requests in the time bound", sent, n)
	}
}

// The review's probes, one by one, against the running API: each answer
// is the right 4xx with an OpenStack body and a request id.
func TestAPIHardening(t *testing.T) {
	base := testenv.Get(t, "FERRY_API_URL")
	demo, admin := token(t, "demo"), token(t, "admin")
	hc := &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	send := func(method, path, body string, hdr ...string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			if hdr[i] == "Host" {
				req.Host = hdr[i+1]
			} else {
				req.Header.Set(hdr[i], hdr[i+1])
			}
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.HasPrefix(resp.Header.Get("X-Openstack-Request-Id"), "req-") {
			t.Errorf("%s %s: %d without a request id", method, path, resp.StatusCode)
		}
		return resp, b
	}
	check := func(what string, resp *http.Response, b []byte, code int) {
		t.Helper()
		if resp.StatusCode != code || code >= 400 && !openStackFault(b, code) {
			t.Errorf("%s: %d %.300s, want %d with an OpenStack body", what, resp.StatusCode, b, code)
		}
	}
	auth := []string{"X-Auth-Token", demo, "Content-Type", "application/json"}
	for _, field := range []string{"volume_id", "backup_id"} {
		for _, id := range []string{"../../v3/volumes/detail", "detail?all_tenants=1", "..", "a\nb", "%zz"} {
			body, _ := json.Marshal(map[string]any{"transfer": map[string]any{
				"source": map[string]any{"region": "RegionOne", field: id}, "destination": map[string]any{"region": "RegionTwo"}}})
			resp, b := send("POST", "/v1/transfers", string(body), auth...)
			check(fmt.Sprintf("%s %q", field, id), resp, b, http.StatusBadRequest)
		}
	}
	resp, b := send("GET", "/v1/transfers", "", "X-Auth-Token", strings.Repeat("A", 64<<10))
	check("64 KiB token", resp, b, http.StatusUnauthorized)
	resp, _ = send("GET", "/v1/transfers/", "", auth...)
	if resp.StatusCode != http.StatusMovedPermanently {
		t.Errorf("trailing slash: %d", resp.StatusCode)
	}
	resp, b = send("PUT", "/v1/transfers", "{}", auth...)
	check("PUT /v1/transfers", resp, b, http.StatusMethodNotAllowed)
	if resp.Header.Get("Allow") == "" {
		t.Error("405 without Allow")
	}
	resp, b = send("POST", "/v1/transfers", `{"transfer": {}}`, "X-Auth-Token", demo, "Content-Type", "text/plain")
	check("text/plain body", resp, b, http.StatusUnsupportedMediaType)
	resp, b = send("GET", "/metrics", "")
	check("anonymous /metrics", resp, b, http.StatusUnauthorized)
	resp, b = send("GET", "/metrics", "", auth...)
	check("member /metrics", resp, b, http.StatusForbidden)
	if resp, b := send("GET", "/metrics", "", "X-Auth-Token", admin); resp.StatusCode != 200 || !strings.Contains(string(b), "ferry_api_requests_total") {
		t.Errorf("admin /metrics: %d", resp.StatusCode)
	}
	resp, b = send("GET", "/", "", "Host", "evil.example", "X-Forwarded-Host", "evil.example", "X-Forwarded-Proto", "https")
	if resp.StatusCode != http.StatusMultipleChoices || strings.Contains(string(b), "evil") {
		t.Errorf("versions with a spoofed Host: %d %s", resp.StatusCode, b)
	}
}
