//go:build e2e

// Package e2e drives the local stack's ferry-api over REST with real
// Keystone tokens: the agents, RabbitMQ and both Ceph clusters are the
// stack's own (devstack/stack.sh up). Run by ./tox-like-ci -e e2e.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/keystone"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

func token(t *testing.T, user string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, _, err := keystone.CredentialsFromEnv(testenv.Openrc(t, user)).Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return p.Token()
}

type client struct {
	t     *testing.T
	url   string
	token string
}

// apiVersion is the microversion the tests speak (1.1: replications, a
// transfer's replication_id), sent on every request.
const apiVersion = "volume-ferry 1.2"

func (c *client) do(method, path, body string) (int, map[string]any) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.url+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", c.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("OpenStack-API-Version", apiVersion)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(b) > 0 && json.Unmarshal(b, &m) != nil {
		c.t.Fatalf("%s %s: not JSON: %q", method, path, b)
	}
	return resp.StatusCode, m
}

// wait polls a transfer until it is terminal.
func (c *client) wait(id string) map[string]any {
	c.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		code, m := c.do("GET", "/v1/transfers/"+id, "")
		if code != 200 {
			c.t.Fatalf("show %s: %d %v", id, code, m)
		}
		tr := m["transfer"].(map[string]any)
		switch tr["status"] {
		case "completed", "error", "cancelled":
			return tr
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("transfer %s did not end in 3 minutes", id)
	return nil
}

func rbd(t *testing.T, conf string, args ...string) {
	t.Helper()
	if out, err := exec.Command("rbd", append([]string{"-c", conf}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("rbd %v: %v %s", args, err, out)
	}
}

// A full then an incremental transfer through REST, identical checksums;
// the second moves only the changes.
func TestFullThenIncremental(t *testing.T) {
	one, two := testenv.Get(t, "CEPH_REGIONONE_CONF"), testenv.Get(t, "CEPH_REGIONTWO_CONF")
	admin := &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "admin")}
	image := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	rbd(t, one, "create", "volumes/"+image, "--size", "64M")
	t.Cleanup(func() {
		for _, c := range []string{one, two} {
			exec.Command("rbd", "-c", c, "snap", "purge", "volumes/"+image).Run()
			exec.Command("rbd", "-c", c, "rm", "volumes/"+image).Run()
		}
	})
	rbd(t, one, "bench", "--io-type", "write", "--io-size", "1M", "--io-total", "32M", "--io-pattern", "rand", "volumes/"+image)
	body := `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "` + image + `"}, "destination": {"region": "RegionTwo"}}}`

	var sent []float64
	for i, mode := range []string{"full", "incremental"} {
		if i == 1 {
			rbd(t, one, "bench", "--io-type", "write", "--io-size", "64K", "--io-total", "1M", "--io-pattern", "rand", "volumes/"+image)
		}
		code, m := admin.do("POST", "/v1/transfers", body)
		if code != 202 {
			t.Fatalf("create: %d %v", code, m)
		}
		id := m["transfer"].(map[string]any)["id"].(string)
		tr := admin.wait(id)
		if tr["status"] != "completed" || tr["mode"] != mode || !strings.HasPrefix(fmt.Sprint(tr["digest"]), "blake3-sha256:") {
			t.Fatalf("transfer %d: %v", i, tr)
		}
		snap := "volumes/" + image + "@ferry-" + id
		if a, b := testenv.ExportSHA(t, one, snap), testenv.ExportSHA(t, two, snap); a != b {
			t.Fatalf("%s differs: %s %s", snap, a, b)
		}
		sent = append(sent, tr["bytes_transferred"].(float64))
		_, ev := admin.do("GET", "/v1/transfers/"+id+"/events", "")
		if n := len(ev["events"].([]any)); n < 3 {
			t.Errorf("transfer %s has %d events", id, n)
		}
	}
	t.Logf("bytes transferred: full %.0f, incremental %.0f", sent[0], sent[1])
}

// Tenancy and policy with real tokens, under the default policy.
func TestTenancy(t *testing.T) {
	url := testenv.Get(t, "FERRY_API_URL")
	admin := &client{t: t, url: url, token: token(t, "admin")}
	demo := &client{t: t, url: url, token: token(t, "demo")}
	alt := &client{t: t, url: url, token: token(t, "alt")}
	reader := &client{t: t, url: url, token: token(t, "reader")}
	body := `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "no-such-image-e2e"}, "destination": {"region": "RegionTwo"}}}`
	if code, m := demo.do("POST", "/v1/transfers", body); code != 403 || m["forbidden"] == nil {
		t.Errorf("member with an image source: %d %v", code, m)
	}
	if code, _ := reader.do("POST", "/v1/transfers", body); code != 403 {
		t.Errorf("reader creates: %d", code)
	}
	code, m := admin.do("POST", "/v1/transfers", body)
	if code != 202 {
		t.Fatalf("admin creates: %d %v", code, m)
	}
	id := m["transfer"].(map[string]any)["id"].(string)
	// The source image does not exist: the agent reports the error.
	tr := admin.wait(id)
	if tr["status"] != "error" || !strings.Contains(fmt.Sprint(tr["error"]), "not found") {
		t.Errorf("missing source image: %v", tr)
	}
	for _, c := range []*client{demo, alt, reader} {
		if code, _ := c.do("GET", "/v1/transfers/"+id, ""); code != 404 {
			t.Errorf("another project sees admin's transfer: %d", code)
		}
		if code, m := c.do("GET", "/v1/transfers", ""); code != 200 || strings.Contains(fmt.Sprint(m), id) {
			t.Errorf("another project lists admin's transfer: %d", code)
		}
	}
	if code, _ := alt.do("POST", "/v1/transfers/"+id+"/action", `{"retry": null}`); code != 404 {
		t.Errorf("alt retries admin's transfer: %d", code)
	}
	if code, _ := demo.do("GET", "/v1/services", ""); code != 403 {
		t.Errorf("member lists services: %d", code)
	}
	code, m = admin.do("GET", "/v1/services", "")
	if code != 200 || !strings.Contains(fmt.Sprint(m), "agent-RegionOne") {
		t.Errorf("services: %d %v", code, m)
	}
	if code, _ := admin.do("DELETE", "/v1/transfers/"+id, ""); code != 204 {
		t.Errorf("delete of a failed transfer: %d", code)
	}
}

// Bad requests through the real API with a real token: each a 4xx with
// an OpenStack error body naming the problem, never a 500.
func TestBadRequests(t *testing.T) {
	admin := &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "admin")}
	src := `"source": {"region": "RegionOne", "pool": "volumes", "image": "x"}`
	cases := []struct {
		method, path, body string
		code               int
		key                string
	}{
		{"POST", "/v1/transfers", ``, 400, "badRequest"},
		{"POST", "/v1/transfers", `{`, 400, "badRequest"},
		{"POST", "/v1/transfers", `[1]`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {` + src + `}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"destination": {"region": "RegionTwo"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {` + src + `, "destination": {"region": "RegionOne"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {` + src + `, "destination": {"region": "Atlantis"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"source": {"region": "Atlantis", "pool": "p", "image": "i"}, "destination": {"region": "RegionTwo"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {` + src + `, "destination": {"region": "RegionTwo"}, "mode": "turbo"}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {` + src + `, "destination": {"region": "RegionTwo"}, "speed": 1}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"source": {"region": 7}, "destination": {"region": "RegionTwo"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes"}, "destination": {"region": "RegionTwo"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "a/b"}, "destination": {"region": "RegionTwo"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionOne", "volume_id": "v", "image": "i", "pool": "p"}, "destination": {"region": "RegionTwo"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"name": "` + strings.Repeat("n", 300) + `", ` + src + `, "destination": {"region": "RegionTwo"}}}`, 400, "badRequest"},
		{"POST", "/v1/transfers", `{"transfer": {"description": "` + strings.Repeat("d", 200000) + `"}}`, 413, "overLimit"},
		{"GET", "/v1/transfers?limit=-1", "", 400, "badRequest"},
		{"GET", "/v1/transfers?limit=ten", "", 400, "badRequest"},
		{"GET", "/v1/transfers?marker=00000000-0000-0000-0000-000000000000", "", 400, "badRequest"},
		{"GET", "/v1/transfers?sort_key=colour", "", 400, "badRequest"},
		{"GET", "/v1/transfers?sort_dir=sideways", "", 400, "badRequest"},
		{"GET", "/v1/transfers?status=flying", "", 400, "badRequest"},
		{"GET", "/v1/transfers?all_projects=perhaps", "", 400, "badRequest"},
		{"GET", "/v1/transfers/00000000-0000-0000-0000-000000000000", "", 404, "itemNotFound"},
		{"GET", "/v1/transfers/../../etc/passwd", "", 404, "itemNotFound"},
		{"DELETE", "/v1/transfers/00000000-0000-0000-0000-000000000000", "", 404, "itemNotFound"},
		{"POST", "/v1/transfers/00000000-0000-0000-0000-000000000000/action", `{"cancel": null}`, 404, "itemNotFound"},
		{"GET", "/v1/nothing-here", "", 404, "itemNotFound"},
	}
	for _, tc := range cases {
		code, m := admin.do(tc.method, tc.path, tc.body)
		if code != tc.code || m[tc.key] == nil {
			t.Errorf("%s %s %.60s: %d %v, want %d %s", tc.method, tc.path, tc.body, code, m, tc.code, tc.key)
			continue
		}
		if msg, _ := m[tc.key].(map[string]any)["message"].(string); msg == "" {
			t.Errorf("%s %s: empty message", tc.method, tc.path)
		}
	}
	if len(cases) < 20 {
		t.Fatalf("only %d bad requests", len(cases))
	}
	// alt can neither see nor cancel nor delete admin's transfer.
	_, m := admin.do("POST", "/v1/transfers", `{"transfer": {`+src+`, "destination": {"region": "RegionTwo"}}}`)
	id := m["transfer"].(map[string]any)["id"].(string)
	alt := &client{t: t, url: admin.url, token: token(t, "alt")}
	for _, r := range []struct{ method, path, body string }{
		{"GET", "/v1/transfers/" + id, ""}, {"GET", "/v1/transfers/" + id + "/events", ""},
		{"POST", "/v1/transfers/" + id + "/action", `{"cancel": null}`}, {"DELETE", "/v1/transfers/" + id, ""},
	} {
		if code, _ := alt.do(r.method, r.path, r.body); code != 404 {
			t.Errorf("alt %s %s: %d, want 404", r.method, r.path, code)
		}
	}
	admin.wait(id)
}
