package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/ferry-project/ferry/db"
)

func TestAtLeast(t *testing.T) {
	cases := []struct {
		served, v string
		want      bool
	}{
		{"", "1.0", true}, // not negotiated: the minimum
		{"", "1.1", false},
		{"1.0", "1.1", false},
		{"1.1", "1.1", true},
		{"1.1", "1.0", true},
		{"1.10", "1.9", true},
		{"1.9", "1.10", false},
		{"2.0", "1.5", true},
	}
	for _, tc := range cases {
		c, _ := gin.CreateTestContext(httptest.NewRecorder())
		if tc.served != "" {
			c.Set(servedKey, tc.served)
		}
		if got := atLeast(c, tc.v); got != tc.want {
			t.Errorf("served %q, atLeast %q: %v, want %v", tc.served, tc.v, got, tc.want)
		}
	}
}

// notFound reports whether m is the 404 of a path that does not exist.
func notFound(m map[string]any) bool {
	f, ok := m["itemNotFound"].(map[string]any)
	return ok && len(m) == 1 && f["code"] == float64(404) && f["message"] == notFoundMessage
}

// /v1/replications is since 1.1: below, every path and method of it is the
// router's 404, authenticated or not, and does nothing.
func TestReplicationsSince11(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	id := a.createReplication(demo, "v1")["id"].(string)
	calls := []struct{ method, path, body string }{
		{"GET", "/v1/replications", ""},
		{"POST", "/v1/replications", replicationBody("v2", "")},
		{"GET", "/v1/replications/" + id, ""},
		{"PUT", "/v1/replications/" + id, `{"replication": {"rpo_seconds": 60}}`},
		{"GET", "/v1/replications/" + id + "/points", ""},
		{"GET", "/v1/replications/" + id + "/events", ""},
		{"GET", "/v1/replications/" + id + "/drills", ""},
		{"POST", "/v1/replications/" + id + "/action", `{"pause": null}`},
		{"DELETE", "/v1/replications/" + id, ""},
	}
	for _, v := range []string{"", "1.0"} {
		a.version = v
		for _, who := range [][3]string{demo, {}} {
			for _, c := range calls {
				if code, m := a.do(who, c.method, c.path, c.body); code != 404 || !notFound(m) {
					t.Errorf("at %q (%s): %s %s: %d %v, want 404 itemNotFound", v, who[0], c.method, c.path, code, m)
				}
			}
		}
	}
	for _, v := range []string{"1.1", "latest"} {
		a.version = v
		code, m := a.do(demo, "GET", "/v1/replications/"+id, "")
		if r, _ := m["replication"].(map[string]any); code != 200 || r["rpo_seconds"] != float64(900) || r["status"] == "paused" {
			t.Errorf("at %s: show %d %v (the 1.0 calls must have changed nothing)", v, code, m)
		}
		if code, m := a.do(demo, "GET", "/v1/replications", ""); code != 200 || len(m["replications"].([]any)) != 1 {
			t.Errorf("at %s: list %d %v", v, code, m)
		}
		if code, m := a.do([3]string{}, "GET", "/v1/replications", ""); code != 401 {
			t.Errorf("at %s: unauthenticated list %d %v, want 401", v, code, m)
		}
	}
}

// A method /v1/replications does not have is a 405 with Allow from 1.1,
// the 404 of an unknown path below (no Allow telling the path exists).
func TestReplicationsWrongMethodSince11(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	for _, tc := range []struct {
		version string
		code    int
		allow   string
	}{{"", 404, ""}, {"volume-ferry 1.0", 404, ""}, {"volume-ferry 1.1", 405, "GET, POST"}, {"volume-ferry latest", 405, "GET, POST"},
		{"volume-ferry 9.9", 405, "GET, POST"}} { // an unacceptable version changes nothing of the router's answer
		hdr := append([]string{}, who...)
		if tc.version != "" {
			hdr = append(hdr, "OpenStack-API-Version", tc.version)
		}
		for _, path := range []string{"/v1/replications", "/v1/replications/" + uid("r") + "/action"} {
			allow := tc.allow
			if allow != "" && path != "/v1/replications" {
				allow = "POST"
			}
			resp, b := raw(t, "PATCH", a.url+path, "{}", hdr...)
			if resp.StatusCode != tc.code || !isFault(b, tc.code) || resp.Header.Get("Allow") != allow {
				t.Errorf("%q PATCH %s: %d Allow %q %s, want %d Allow %q", tc.version, path, resp.StatusCode, resp.Header.Get("Allow"), b, tc.code, allow)
			}
		}
	}
}

// A transfer's replication_id, and the ?replication_id= filter, are since
// 1.1; at 1.0 the filter is an unknown parameter, ignored as any other.
func TestTransferReplicationIDSince11(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	rid := a.createReplication(demo, "v1")["id"].(string)
	ctx := context.Background()
	r, err := a.db.GetReplication(ctx, rid, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	now := a.db.Now()
	cycle, _, err := a.db.StartCycle(ctx, rid, now.Add(time.Hour), now.Add(2*time.Hour), &db.Transfer{ProjectID: r.ProjectID, Mode: db.ModeAuto,
		SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: r.SourceImage, DestRegion: "RegionTwo", DestPool: "volumes", DestImage: r.DestImage}, nil)
	if err != nil || cycle == nil {
		t.Fatalf("start cycle: %v %v", cycle, err)
	}

	ids := func(m map[string]any) map[string]map[string]any {
		out := map[string]map[string]any{}
		ts, _ := m["transfers"].([]any)
		for _, x := range ts {
			tr := x.(map[string]any)
			out[tr["id"].(string)] = tr
		}
		return out
	}

	for _, v := range []string{"", "1.0"} {
		a.version = v
		code, m := a.do(demo, "POST", "/v1/transfers", volumeBody("v2", ""))
		if code != 202 {
			t.Fatalf("at %q: create %d %v", v, code, m)
		}
		created := m["transfer"].(map[string]any)
		if _, ok := created["replication_id"]; ok {
			t.Errorf("at %q: create shows replication_id: %v", v, created)
		}
		code, m = a.do(demo, "GET", "/v1/transfers/"+cycle.ID, "")
		if tr, _ := m["transfer"].(map[string]any); code != 200 || tr["id"] != cycle.ID {
			t.Fatalf("at %q: show %d %v", v, code, m)
		} else if _, ok := tr["replication_id"]; ok {
			t.Errorf("at %q: show has replication_id: %v", v, tr)
		}
		code, m = a.do(demo, "GET", "/v1/transfers", "")
		all := ids(m)
		if code != 200 || all[cycle.ID] == nil || all[created["id"].(string)] == nil {
			t.Fatalf("at %q: list %d %v", v, code, m)
		}
		for id, tr := range all {
			if _, ok := tr["replication_id"]; ok {
				t.Errorf("at %q: listed %s has replication_id", v, id)
			}
		}
		// The filter is what any unknown parameter is at 1.0: ignored.
		_, unknown := a.do(demo, "GET", "/v1/transfers?no_such_filter="+rid, "")
		for _, q := range []string{"replication_id=" + rid, "replication_id=x"} {
			code, m := a.do(demo, "GET", "/v1/transfers?"+q, "")
			if got := ids(m); code != 200 || len(got) != len(all) || len(got) != len(ids(unknown)) {
				t.Errorf("at %q: ?%s: %d, %d transfers, want 200 and all %d", v, q, code, len(got), len(all))
			}
		}
	}
	for _, v := range []string{"1.1", "latest"} {
		a.version = v
		code, m := a.do(demo, "POST", "/v1/transfers", volumeBody("v2", ""))
		created, _ := m["transfer"].(map[string]any)
		if rv, ok := created["replication_id"]; code != 202 || !ok || rv != nil {
			t.Errorf("at %s: create %d %v, want replication_id null", v, code, m)
		}
		code, m = a.do(demo, "GET", "/v1/transfers/"+cycle.ID, "")
		if tr, _ := m["transfer"].(map[string]any); code != 200 || tr["replication_id"] != rid {
			t.Errorf("at %s: show %d %v, want replication_id %s", v, code, m, rid)
		}
		code, m = a.do(demo, "GET", "/v1/transfers?replication_id="+rid, "")
		if got := ids(m); code != 200 || len(got) != 1 || got[cycle.ID]["replication_id"] != rid {
			t.Errorf("at %s: filtered list %d %v", v, code, m)
		}
		code, m = a.do(demo, "GET", "/v1/transfers", "")
		if code != 200 || len(ids(m)) < 2 {
			t.Errorf("at %s: list %d %v", v, code, m)
		}
		for id, tr := range ids(m) {
			if rv, ok := tr["replication_id"]; !ok || (id != cycle.ID && rv != nil) {
				t.Errorf("at %s: listed %s: replication_id %v (present %v)", v, id, rv, ok)
			}
		}
		if code, m := a.do(demo, "GET", "/v1/transfers?replication_id=x", ""); code != 400 {
			t.Errorf("at %s: a malformed filter %d %v, want 400", v, code, m)
		}
	}
}

// The versions document is not negotiated: the same at every version.
func TestVersionsDocumentUnchanged(t *testing.T) {
	ts := newTestServer(t)
	var first []byte
	for i, v := range []string{"", "volume-ferry 1.0", "volume-ferry 1.1", "volume-ferry latest"} {
		var hdr []string
		if v != "" {
			hdr = []string{"OpenStack-API-Version", v}
		}
		resp, b := raw(t, "GET", ts.URL+"/", "", hdr...)
		if resp.StatusCode != http.StatusMultipleChoices || resp.Header.Get("OpenStack-API-Version") != "" {
			t.Errorf("%q: %d, served %q", v, resp.StatusCode, resp.Header.Get("OpenStack-API-Version"))
		}
		if i == 0 {
			if !strings.Contains(string(b), `"version":"`+MaxMicroversion+`"`) || !strings.Contains(string(b), `"min_version":"`+MinMicroversion+`"`) {
				t.Errorf("versions document %s: not %s to %s", b, MinMicroversion, MaxMicroversion)
			}
			first = b
		} else if string(b) != string(first) {
			t.Errorf("%q: versions document %s, want %s", v, b, first)
		}
	}
}
