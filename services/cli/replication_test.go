package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v2"
)

// fakeReplications is the replications part of fakeCloud's API, kept
// under fakeCloud.mu.
type fakeReplications struct {
	items   map[string]map[string]any
	order   []string
	points  map[string][]any
	creates []map[string]any
	updates []map[string]any
	actions []string // "<id> <body>"
	deletes []string // "<id>?<query>"
	// failovers of each replication, newest first (failover_test.go).
	failovers map[string][]map[string]any
}

func replID(n int) string { return fmt.Sprintf("10000000-0000-0000-0000-%012d", n) }

// addReplication stores a replication as ferry-api renders it, with fields
// overriding the defaults.
func (fc *fakeCloud) addReplication(fields map[string]any) map[string]any {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.repl.add(fields)
}

func (fr *fakeReplications) add(fields map[string]any) map[string]any {
	if fr.items == nil {
		fr.items, fr.points = map[string]map[string]any{}, map[string][]any{}
	}
	id := replID(len(fr.order) + 1)
	r := map[string]any{
		"id": id, "name": "", "description": "", "project_id": "p1", "user_id": "u1", "status": "active",
		"source":           map[string]any{"region": "RegionOne", "volume_id": "vol-1", "pool": "volumes", "image": "volume-vol-1"},
		"destination":      map[string]any{"region": "RegionTwo", "pool": "volumes", "image": "ferry-replica-" + id},
		"interval_seconds": 300, "rpo_seconds": 900,
		"retention":       map[string]any{"keep_last": 6, "keep_hourly": 0, "keep_daily": 7},
		"bandwidth_limit": 0, "last_sync_at": nil, "lag_seconds": nil, "rpo_breached": false,
		"last_transfer_id": nil, "last_error": nil, "points_count": 0, "bytes_last_cycle": 0,
		"next_run_at": "2026-12-03T10:05:00.000000Z", "cycles": map[string]any{"completed": 0, "failed": 0, "skipped": 0},
		"created_at": "2026-12-03T10:00:00.000000Z", "updated_at": "2026-12-03T10:00:00.000000Z",
	}
	for k, v := range fields {
		r[k] = v
	}
	// Through JSON, as the client will see it (numbers are float64).
	b, _ := json.Marshal(r)
	r = map[string]any{}
	_ = json.Unmarshal(b, &r)
	fr.items[id] = r
	fr.order = append(fr.order, id)
	return r
}

func (fc *fakeCloud) serveReplications(w http.ResponseWriter, r *http.Request, parts []string, reply func(int, any)) {
	fr := &fc.repl
	if fr.items == nil {
		fr.items, fr.points = map[string]map[string]any{}, map[string][]any{}
	}
	if len(parts) == 1 {
		switch r.Method {
		case http.MethodPost:
			var req struct {
				Replication map[string]any `json:"replication"`
			}
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Replication == nil {
				fault(w, 400, "badRequest", "bad body")
				return
			}
			fr.creates = append(fr.creates, req.Replication)
			fields := map[string]any{}
			for _, k := range []string{"name", "interval_seconds", "rpo_seconds", "bandwidth_limit", "retention"} {
				if v, ok := req.Replication[k]; ok {
					fields[k] = v
				}
			}
			reply(202, map[string]any{"replication": fr.add(fields)})
		case http.MethodGet:
			limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
			if limit == 0 {
				limit = 2
			}
			start := 0
			if m := r.URL.Query().Get("marker"); m != "" {
				start = slices.Index(fr.order, m) + 1
			}
			end := min(start+limit, len(fr.order))
			items := []any{}
			for _, id := range fr.order[start:end] {
				items = append(items, fr.items[id])
			}
			body := map[string]any{"replications": items}
			if end < len(fr.order) {
				body["replications_links"] = []any{map[string]any{"rel": "next",
					"href": fc.api.URL + "/v1/replications?limit=" + strconv.Itoa(limit) + "&marker=" + fr.order[end-1]}}
			}
			reply(200, body)
		default:
			fault(w, 405, "badMethod", "no")
		}
		return
	}
	id := parts[1]
	rp, ok := fr.items[id]
	if !ok {
		fault(w, 404, "itemNotFound", "Replication "+id+" could not be found.")
		return
	}
	switch {
	case len(parts) == 2 && r.Method == http.MethodGet:
		reply(200, map[string]any{"replication": rp})
	case len(parts) == 2 && r.Method == http.MethodPut:
		var req struct {
			Replication map[string]any `json:"replication"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		fr.updates = append(fr.updates, req.Replication)
		for k, v := range req.Replication {
			rp[k] = v
		}
		reply(200, map[string]any{"replication": rp})
	case len(parts) == 2 && r.Method == http.MethodDelete:
		fr.deletes = append(fr.deletes, id+"?"+r.URL.RawQuery)
		rp["status"] = "deleting"
		w.WriteHeader(202)
	case len(parts) == 3 && parts[2] == "action" && r.Method == http.MethodPost:
		b, _ := io.ReadAll(r.Body)
		fr.actions = append(fr.actions, id+" "+strings.TrimSpace(string(b)))
		var req map[string]json.RawMessage
		_ = json.Unmarshal(b, &req)
		switch {
		case req["sync"] != nil && rp["status"] != "active":
			fault(w, 409, "conflictingRequest", "Replication "+id+" is "+rp["status"].(string)+"; only an active replication syncs.")
		case req["pause"] != nil:
			rp["status"] = "paused"
			w.WriteHeader(202)
		case req["resume"] != nil:
			rp["status"] = "active"
			w.WriteHeader(202)
		case req["drill"] != nil:
			var d struct{ Point, Name string }
			_ = json.Unmarshal(req["drill"], &d)
			known := false
			for _, p := range fr.points[id] {
				known = known || p.(map[string]any)["name"] == d.Point
			}
			if !known {
				fault(w, 404, "itemNotFound", "Point "+d.Point+" of replication "+id+" could not be found.")
				return
			}
			reply(202, map[string]any{"drill": map[string]any{"id": "drill-1", "replication_id": id, "name": d.Name, "point": d.Point,
				"status": "creating", "volume_id": nil, "requested_at": "2026-12-03T10:10:00.000000Z", "available_at": nil, "rto_seconds": nil, "error": nil}})
		case req["failover"] != nil || req["failback"] != nil:
			fr.startFailover(w, rp, req, reply)
		default:
			w.WriteHeader(202)
		}
	case len(parts) >= 3 && parts[2] == "failovers" && r.Method == http.MethodGet:
		fr.serveFailovers(w, id, parts[3:], reply)
	case len(parts) == 3 && parts[2] == "points":
		pts := fr.points[id]
		if pts == nil {
			pts = []any{}
		}
		reply(200, map[string]any{"points": pts})
	case len(parts) == 3 && parts[2] == "drills":
		reply(200, map[string]any{"drills": []any{map[string]any{"id": "drill-0", "replication_id": id, "name": "dr-test", "point": "ferry-p2",
			"status": "available", "volume_id": "vol-drill", "requested_at": "2026-12-03T09:00:00.000000Z",
			"available_at": "2026-12-03T09:00:21.000000Z", "rto_seconds": 21.5, "error": nil}}})
	case len(parts) == 3 && parts[2] == "events":
		reply(200, map[string]any{"events": []any{
			map[string]any{"created_at": "2026-12-03T10:00:00.000000Z", "kind": "created", "message": "replication created", "transfer_id": nil, "request_id": "req-1"},
			map[string]any{"created_at": "2026-12-03T10:00:09.000000Z", "kind": "cycle_completed", "message": "4.0 MiB", "transfer_id": "t-1", "request_id": nil}}})
	default:
		fault(w, 405, "badMethod", "no")
	}
}

func TestReplicationCreateSendsTheAPIBody(t *testing.T) {
	fc := newFakeCloud(t)
	code, out, errOut := run(t, fc.env(), "replication", "create", "--volume", "vol-9", "--destination-region", "RegionTwo",
		"--destination-pool", "replicas", "--interval", "5m", "--rpo", "900", "--keep-last", "3", "--keep-daily", "7",
		"--bandwidth-limit", "100M", "--name", "db", "--description", "the db", "-f", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := map[string]any{"name": "db", "description": "the db",
		"source": map[string]any{"region": "RegionOne", "volume_id": "vol-9"}, "destination": map[string]any{"region": "RegionTwo", "pool": "replicas"},
		"interval_seconds": 300, "rpo_seconds": 900, "retention": map[string]any{"keep_last": 3, "keep_daily": 7},
		"bandwidth_limit": 100 << 20}
	if got := mustJSON(t, fc.repl.creates[0]); got != mustJSON(t, want) {
		t.Errorf("request body = %s, want %s", got, mustJSON(t, want))
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(out), &obj); err != nil {
		t.Fatalf("-f json is not JSON: %v\n%s", err, out)
	}
	// JSON keeps the API's object: lag_seconds null, not a sentence.
	if obj["id"] != replID(1) || obj["lag_seconds"] != nil || obj["interval_seconds"] != float64(300) {
		t.Errorf("object = %v", obj)
	}
	if !strings.HasPrefix(out, "{\n  \"id\":") || strings.Index(out, `"rpo_seconds"`) > strings.Index(out, `"retention"`) {
		t.Errorf("keys out of order:\n%s", out)
	}
	// An image source, no retention and no limit: left to the server.
	if code, _, e := run(t, fc.env(), "replication", "create", "--pool", "images", "--image", "golden", "--source-region", "RegionTwo",
		"--destination-region", "RegionOne", "--interval", "60", "--rpo", "1h30m"); code != 0 {
		t.Fatal(e)
	}
	want = map[string]any{"source": map[string]any{"region": "RegionTwo", "pool": "images", "image": "golden"},
		"destination": map[string]any{"region": "RegionOne"}, "interval_seconds": 60, "rpo_seconds": 5400}
	if got := mustJSON(t, fc.repl.creates[1]); got != mustJSON(t, want) {
		t.Errorf("request body = %s, want %s", got, mustJSON(t, want))
	}
}

func TestReplicationCreateChecksFlags(t *testing.T) {
	fc := newFakeCloud(t)
	ok := []string{"--volume", "v", "--destination-region", "R2", "--interval", "60", "--rpo", "120"}
	with := func(extra ...string) []string { return append(slices.Clone(ok), extra...) }
	for _, tc := range []struct {
		env  func(string) string
		args []string
		want string
	}{
		{fc.env("OS_REGION_NAME", ""), ok, "no source region"},
		{fc.env(), []string{"--volume", "v", "--interval", "60", "--rpo", "120"}, "--destination-region is required"},
		{fc.env(), []string{"--volume", "v", "--destination-region", "R2", "--rpo", "120"}, "--interval is required"},
		{fc.env(), []string{"--volume", "v", "--destination-region", "R2", "--interval", "60"}, "--rpo is required"},
		{fc.env(), with("--interval", "0"), "--interval must be more than zero"},
		{fc.env(), with("--rpo", "1.5s"), "whole number of seconds"},
		{fc.env(), with("--rpo", "soon"), "give seconds or a duration"},
		{fc.env(), with("--bandwidth-limit", "fast"), "--bandwidth-limit \"fast\""},
		{fc.env(), with("--bandwidth-limit", "-1M"), "--bandwidth-limit"},
		{fc.env(), with("--keep-daily", "3", "--keep-hourly", "0"), ""}, // valid: keep_last is the server's default
		{fc.env(), with("--keep-last", "0"), "--keep-last must be at least 1"},
		{fc.env(), with("--keep-daily", "-1"), "--keep-daily cannot be negative"},
		{fc.env(), with("--pool", "p", "--image", "i"), "none of the others can be"},
		{fc.env(), []string{"--pool", "p", "--destination-region", "R2", "--interval", "60", "--rpo", "120"}, "must all be set"},
		{fc.env(), []string{"--destination-region", "R2", "--interval", "60", "--rpo", "120"}, "at least one of the flags"},
	} {
		code, _, errOut := run(t, tc.env, append([]string{"replication", "create"}, tc.args...)...)
		if tc.want == "" {
			if code != 0 {
				t.Errorf("%v: exit %d, stderr %q", tc.args, code, errOut)
			}
			continue
		}
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want it to say %q", tc.args, code, errOut, tc.want)
		}
	}
	if len(fc.repl.creates) != 1 {
		t.Errorf("%d creates reached the API, want only the valid one", len(fc.repl.creates))
	}
	if got := mustJSON(t, fc.repl.creates[0]["retention"]); got != `{"keep_daily":3,"keep_hourly":0}` {
		t.Errorf("retention sent: %v", fc.repl.creates[0])
	}
}

// show reads the lag against the RPO in a table; -f json keeps the
// number.
func TestReplicationShowRendersLagAgainstRPO(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addReplication(map[string]any{"name": "ok", "lag_seconds": 42.4, "rpo_seconds": 900, "last_sync_at": "2026-12-03T10:00:00.000000Z", "points_count": 2})
	fc.addReplication(map[string]any{"name": "late", "lag_seconds": 1000, "rpo_seconds": 900, "rpo_breached": true})
	fc.addReplication(map[string]any{"name": "new", "rpo_seconds": 120, "rpo_breached": true})
	for name, want := range map[string]string{
		"ok": "42s (RPO 15m0s)", "late": "16m40s (RPO 15m0s, breached)", "new": "no point yet (RPO 2m0s, breached)",
	} {
		code, out, errOut := run(t, fc.env(), "replication", "show", name)
		if got := tableValue(out, "lag_seconds"); code != 0 || got != want {
			t.Errorf("show %s: exit %d %q, lag_seconds %q, want %q:\n%s", name, code, errOut, got, want, out)
		}
		if got := tableValue(out, "retention"); got != "keep_last='6', keep_hourly='0', keep_daily='7'" {
			t.Errorf("retention row %q", got)
		}
	}
	_, out, _ := run(t, fc.env(), "replication", "show", replID(1), "-f", "json", "-c", "lag_seconds", "-c", "rpo_breached")
	if strings.TrimSpace(out) != "{\n  \"lag_seconds\": 42.4,\n  \"rpo_breached\": false\n}" {
		t.Errorf("json: %q", out)
	}
	_, out, _ = run(t, fc.env(), "replication", "show", "late", "-f", "value", "-c", "lag_seconds")
	if out != "16m40s (RPO 15m0s, breached)\n" {
		t.Errorf("value: %q", out)
	}
	code, _, errOut := run(t, fc.env(), "replication", "show", "ghost")
	if code == 0 || errOut != "ferry: Replication ghost could not be found (HTTP 404) (Request-ID: req-test)\n" {
		t.Errorf("unknown: %d %q", code, errOut)
	}
}

func TestReplicationListPagesAndOptions(t *testing.T) {
	fc := newFakeCloud(t)
	for i := range 5 {
		fc.addReplication(map[string]any{"name": fmt.Sprint("r", i), "lag_seconds": 10 * (i + 1), "rpo_seconds": 30, "rpo_breached": 10*(i+1) > 30})
	}
	code, out, errOut := run(t, fc.env(), "replication", "list", "-f", "value", "-c", "name", "-c", "lag_seconds")
	if code != 0 {
		t.Fatal(errOut)
	}
	want := "r0 10s (RPO 30s)\nr1 20s (RPO 30s)\nr2 30s (RPO 30s)\nr3 40s (RPO 30s, breached)\nr4 50s (RPO 30s, breached)\n"
	if out != want {
		t.Errorf("value output %q, want %q", out, want)
	}
	n := len(fc.queries)
	_, out, _ = run(t, fc.env(), "replication", "list", "--limit", "3", "--all-projects", "--marker", replID(1), "-f", "yaml", "-c", "name")
	var rows []map[string]string
	if err := yaml.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 3 || rows[0]["name"] != "r1" || rows[2]["name"] != "r3" {
		t.Errorf("yaml with --limit 3 --marker: %v %q", err, out)
	}
	if !slices.Contains(fc.queries[n:], "all_projects=true&limit=3&marker="+replID(1)) {
		t.Errorf("queries %q", fc.queries[n:])
	}
	_, out, _ = run(t, fc.env(), "replication", "list")
	for _, h := range []string{"| id ", "| name ", "| status ", "| source ", "| destination ", "| lag_seconds ", "| points_count ", "| last_sync_at "} {
		if !strings.Contains(out, h) {
			t.Errorf("table lacks column %q:\n%s", h, out)
		}
	}
	if !strings.Contains(out, "region='RegionOne', pool='volumes', image='volume-vol-1', volume_id='vol-1'") {
		t.Errorf("source cell:\n%s", out)
	}
	if code, _, e := run(t, fc.env(), "replication", "list", "--long", "-c", "nope"); code == 0 || !strings.Contains(e, `no column "nope"`) {
		t.Errorf("unknown column: %d %q", code, e)
	}
}

func TestReplicationSetSendsOnlyWhatChanged(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addReplication(map[string]any{"name": "db"})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--name", "db2"}, `{"name":"db2"}`},
		{[]string{"--keep-hourly", "24"}, `{"retention":{"keep_hourly":24}}`},
		{[]string{"--keep-last", "2", "--keep-daily", "0"}, `{"retention":{"keep_daily":0,"keep_last":2}}`},
		{[]string{"--interval", "1m", "--rpo", "3m", "--bandwidth-limit", "0", "--description", ""}, `{"bandwidth_limit":0,"description":"","interval_seconds":60,"rpo_seconds":180}`},
		{[]string{"--bandwidth-limit", "2G"}, `{"bandwidth_limit":2147483648}`},
	} {
		n := len(fc.repl.updates)
		code, _, errOut := run(t, fc.env(), append([]string{"replication", "set", replID(1)}, tc.args...)...)
		if code != 0 || len(fc.repl.updates) != n+1 {
			t.Fatalf("%v: exit %d %q", tc.args, code, errOut)
		}
		if got := mustJSON(t, fc.repl.updates[n]); got != tc.want {
			t.Errorf("%v: sent %s, want %s", tc.args, got, tc.want)
		}
	}
	// The name changed above: by the new name, and nothing to change.
	if code, out, e := run(t, fc.env(), "replication", "set", "db2", "--rpo", "10m", "-f", "value", "-c", "rpo_seconds"); code != 0 || out != "600\n" {
		t.Errorf("set by name: %d %q %q", code, out, e)
	}
	n := len(fc.requests)
	for _, args := range [][]string{{}, {"--keep-last", "0"}, {"--interval", "x"}} {
		if code, _, _ := run(t, fc.env(), append([]string{"replication", "set", replID(1)}, args...)...); code == 0 {
			t.Errorf("set %v succeeded", args)
		}
	}
	for _, r := range fc.requests[n:] {
		if strings.HasPrefix(r, "PUT") {
			t.Errorf("an invalid set reached the API: %s", r)
		}
	}
}

func TestReplicationActionsAndDelete(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addReplication(map[string]any{"name": "a"})
	fc.addReplication(map[string]any{"name": "b"})
	for _, args := range [][]string{{"pause", "a", "b"}, {"resume", "b"}, {"sync", replID(2)}} {
		if code, _, e := run(t, fc.env(), append([]string{"replication"}, args...)...); code != 0 {
			t.Fatalf("%v: %q", args, e)
		}
	}
	want := []string{replID(1) + ` {"pause":null}`, replID(2) + ` {"pause":null}`, replID(2) + ` {"resume":null}`, replID(2) + ` {"sync":null}`}
	if !slices.Equal(fc.repl.actions, want) {
		t.Errorf("actions %q, want %q", fc.repl.actions, want)
	}
	// a is paused: sync is refused; ghost does not exist; both reported.
	code, _, errOut := run(t, fc.env(), "replication", "sync", "a", "ghost")
	wantErr := "Failed to sync replication with name or ID 'a': Replication " + replID(1) + " is paused; only an active replication syncs (HTTP 409) (Request-ID: req-test)\n" +
		"Failed to sync replication with name or ID 'ghost': Replication ghost could not be found (HTTP 404) (Request-ID: req-test)\n" +
		"ferry: 2 of 2 replications failed to sync\n"
	if code == 0 || errOut != wantErr {
		t.Errorf("sync errors: %d\n%s\nwant\n%s", code, errOut, wantErr)
	}
	if code, _, e := run(t, fc.env(), "replication", "delete", "a"); code != 0 {
		t.Fatal(e)
	}
	if code, _, e := run(t, fc.env(), "replication", "delete", "--keep-replica", "b"); code != 0 {
		t.Fatal(e)
	}
	if want := []string{replID(1) + "?", replID(2) + "?keep_replica=true"}; !slices.Equal(fc.repl.deletes, want) {
		t.Errorf("deletes %q, want %q", fc.repl.deletes, want)
	}
}

func TestReplicationPointsDrillsEvents(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addReplication(map[string]any{"name": "db"})
	fc.repl.points[replID(1)] = []any{
		map[string]any{"name": "ferry-p2", "created_at": "2026-12-03T10:05:00.000000Z", "digest": "sha256:02", "bytes": 4194304, "size": 1073741824, "transfer_id": "p2"},
		map[string]any{"name": "ferry-p1", "created_at": "2026-12-03T10:00:00.000000Z", "digest": "sha256:01", "bytes": 1073741824, "size": 1073741824, "transfer_id": "p1"},
	}
	code, out, errOut := run(t, fc.env(), "replication", "points", "db", "-f", "value", "-c", "name", "-c", "bytes")
	if code != 0 || out != "ferry-p2 4194304\nferry-p1 1073741824\n" {
		t.Errorf("points: %d %q %q", code, out, errOut)
	}
	code, out, errOut = run(t, fc.env(), "replication", "drill", "db", "ferry-p1", "--name", "dr1", "-f", "json")
	var d map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d["point"] != "ferry-p1" || d["name"] != "dr1" || d["status"] != "creating" {
		t.Errorf("drill: %d %q %q", code, out, errOut)
	}
	if code, _, e := run(t, fc.env(), "replication", "drill", "db", "latest"); code != 0 {
		t.Errorf("drill latest: %q", e)
	}
	if last := fc.repl.actions[len(fc.repl.actions)-1]; last != replID(1)+` {"drill":{"point":"ferry-p2"}}` {
		t.Errorf("drill latest sent %q", last)
	}
	code, _, errOut = run(t, fc.env(), "replication", "drill", "db", "ferry-gone")
	if code == 0 || !strings.Contains(errOut, "Point ferry-gone of replication "+replID(1)+" could not be found (HTTP 404)") {
		t.Errorf("unknown point: %d %q", code, errOut)
	}
	fc.addReplication(map[string]any{"name": "empty"})
	if code, _, e := run(t, fc.env(), "replication", "drill", "empty", "latest"); code == 0 || !strings.Contains(e, "has no point yet") {
		t.Errorf("drill latest without points: %d %q", code, e)
	}
	_, out, _ = run(t, fc.env(), "replication", "drills", "db")
	for _, want := range []string{"| id ", "| rto_seconds ", "vol-drill", "21.5"} {
		if !strings.Contains(out, want) {
			t.Errorf("drills table lacks %q:\n%s", want, out)
		}
	}
	_, out, _ = run(t, fc.env(), "replication", "events", "db", "-f", "json")
	var evs []map[string]any
	if err := json.Unmarshal([]byte(out), &evs); err != nil || len(evs) != 2 || evs[1]["kind"] != "cycle_completed" || evs[1]["transfer_id"] != "t-1" {
		t.Errorf("events: %v %q", err, out)
	}
	if _, ok := evs[0]["request_id"]; ok {
		t.Error("request_id is not a default column")
	}
}

func TestParseSecondsAndBytes(t *testing.T) {
	for in, want := range map[string]int{"1": 1, "300": 300, "5m": 300, "1h30m": 5400, "90s": 90} {
		if got, err := parseSeconds("--x", in); err != nil || got != want {
			t.Errorf("parseSeconds(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-5", "0s", "1500ms", "x"} {
		if _, err := parseSeconds("--x", in); err == nil {
			t.Errorf("parseSeconds(%q) accepted", in)
		}
	}
	for in, want := range map[string]int64{"0": 0, "512": 512, "10K": 10 << 10, "50M": 50 << 20, "2G": 2 << 30, "1g": 1 << 30,
		"100MiB": 100 << 20, "100MB/s": 100 << 20, "64KB": 64 << 10} {
		if got, err := parseBytes("--x", in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "1.5G", "-1", "10T", "99999999999G"} {
		if _, err := parseBytes("--x", in); err == nil {
			t.Errorf("parseBytes(%q) accepted", in)
		}
	}
}

func TestTransferListByReplication(t *testing.T) {
	fc := newFakeCloud(t)
	n := len(fc.queries)
	if code, _, e := run(t, fc.env(), "transfer", "list", "--replication", replID(1)); code != 0 {
		t.Fatal(e)
	}
	if !slices.Contains(fc.queries[n:], "replication_id="+replID(1)) {
		t.Errorf("queries %q", fc.queries[n:])
	}
}

// tableValue is the Value cell of a Field/Value table's row.
func tableValue(table, field string) string {
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) == 4 && strings.TrimSpace(cells[1]) == field {
			return strings.TrimSpace(cells[2])
		}
	}
	return ""
}
