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

// fakeGroups is the replication groups part of fakeCloud's API, kept
// under fakeCloud.mu.
type fakeGroups struct {
	items   map[string]map[string]any
	order   []string
	points  map[string][]any
	drills  map[string][]map[string]any
	polls   map[string]int // GETs of a group while it fails over or back
	creates []map[string]any
	updates []map[string]any
	actions []string // "<id> <body>"
	deletes []string // "<id>?<query>"
}

func groupID(n int) string { return fmt.Sprintf("20000000-0000-0000-0000-%012d", n) }

func memberID(g, n int) string { return fmt.Sprintf("3%07d-0000-0000-0000-%012d", g, n) }

func (fg *fakeGroups) init() {
	if fg.items == nil {
		fg.items, fg.points, fg.drills, fg.polls = map[string]map[string]any{}, map[string][]any{}, map[string][]map[string]any{}, map[string]int{}
	}
}

// addGroup stores a group as ferry-api renders it, with members for the
// volumes (vol-a and vol-b without), fields overriding the defaults.
func (fc *fakeCloud) addGroup(fields map[string]any, volumes ...string) map[string]any {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.groups.add(fields, volumes)
}

func (fg *fakeGroups) add(fields map[string]any, volumes []string) map[string]any {
	fg.init()
	n := len(fg.order) + 1
	id := groupID(n)
	if len(volumes) == 0 {
		volumes = []string{"vol-a", "vol-b"}
	}
	members := []any{}
	for i, v := range volumes {
		rid := memberID(n, i+1)
		members = append(members, map[string]any{"replication_id": rid, "volume_id": v, "status": "active",
			"source":      map[string]any{"pool": "volumes", "image": "volume-" + v},
			"destination": map[string]any{"pool": "volumes", "image": "ferry-replica-" + rid}})
	}
	g := map[string]any{
		"id": id, "name": "", "description": "", "project_id": "p1", "user_id": "u1", "status": "active",
		"source": map[string]any{"region": "RegionOne"}, "destination": map[string]any{"region": "RegionTwo", "pool": "volumes"},
		"interval_seconds": 60, "rpo_seconds": 300,
		"retention":       map[string]any{"keep_last": 3, "keep_hourly": 0, "keep_daily": 0},
		"bandwidth_limit": 0, "members": members, "last_sync_at": nil, "lag_seconds": nil, "rpo_breached": false,
		"last_cycle_id": nil, "last_error": nil, "points_count": 0, "next_run_at": "2026-12-03T18:01:00Z",
		"cycles":     map[string]any{"completed": 0, "failed": 0, "skipped": 0},
		"created_at": "2026-12-03T17:00:00Z", "updated_at": "2026-12-03T17:00:00Z",
	}
	for k, v := range fields {
		g[k] = v
	}
	// Through JSON, as the client will see it (numbers are float64).
	b, _ := json.Marshal(g)
	g = map[string]any{}
	_ = json.Unmarshal(b, &g)
	fg.items[id] = g
	fg.order = append(fg.order, id)
	return g
}

// setStatus sets a group's status and its members'.
func setStatus(g map[string]any, status string) {
	g["status"] = status
	for _, m := range g["members"].([]any) {
		m.(map[string]any)["status"] = status
	}
}

func (fc *fakeCloud) serveGroups(w http.ResponseWriter, r *http.Request, parts []string, reply func(int, any)) {
	fg := &fc.groups
	fg.init()
	if len(parts) == 1 {
		switch r.Method {
		case http.MethodPost:
			var req struct {
				Group map[string]any `json:"replication_group"`
			}
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Group == nil {
				fault(w, 400, "badRequest", "bad body")
				return
			}
			fg.creates = append(fg.creates, req.Group)
			fields := map[string]any{}
			for _, k := range []string{"name", "interval_seconds", "rpo_seconds", "bandwidth_limit", "retention"} {
				if v, ok := req.Group[k]; ok {
					fields[k] = v
				}
			}
			var volumes []string
			src, _ := req.Group["source"].(map[string]any)
			ids, _ := src["volume_ids"].([]any)
			for _, v := range ids {
				volumes = append(volumes, v.(string))
			}
			reply(202, map[string]any{"replication_group": fg.add(fields, volumes)})
		case http.MethodGet:
			limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
			if limit == 0 {
				limit = 2
			}
			start := 0
			if m := r.URL.Query().Get("marker"); m != "" {
				start = slices.Index(fg.order, m) + 1
			}
			end := min(start+limit, len(fg.order))
			items := []any{}
			for _, id := range fg.order[start:end] {
				items = append(items, fg.items[id])
			}
			body := map[string]any{"replication_groups": items}
			if end < len(fg.order) {
				body["replication_groups_links"] = []any{map[string]any{"rel": "next",
					"href": fc.api.URL + "/v1/replication-groups?limit=" + strconv.Itoa(limit) + "&marker=" + fg.order[end-1]}}
			}
			reply(200, body)
		default:
			fault(w, 405, "badMethod", "no")
		}
		return
	}
	id := parts[1]
	g, ok := fg.items[id]
	if !ok {
		fault(w, 404, "itemNotFound", "Replication group "+id+" could not be found.")
		return
	}
	switch {
	case len(parts) == 2 && r.Method == http.MethodGet:
		fg.advance(g)
		reply(200, map[string]any{"replication_group": g})
	case len(parts) == 2 && r.Method == http.MethodPut:
		var req struct {
			Group map[string]any `json:"replication_group"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		fg.updates = append(fg.updates, req.Group)
		for k, v := range req.Group {
			g[k] = v
		}
		reply(200, map[string]any{"replication_group": g})
	case len(parts) == 2 && r.Method == http.MethodDelete:
		fg.deletes = append(fg.deletes, id+"?"+r.URL.RawQuery)
		setStatus(g, "deleting")
		w.WriteHeader(202)
	case len(parts) == 3 && parts[2] == "action" && r.Method == http.MethodPost:
		b, _ := io.ReadAll(r.Body)
		fg.actions = append(fg.actions, id+" "+strings.TrimSpace(string(b)))
		var req map[string]json.RawMessage
		_ = json.Unmarshal(b, &req)
		fg.action(w, g, req, reply)
	case len(parts) == 3 && parts[2] == "points" && r.Method == http.MethodGet:
		pts := fg.points[id]
		if pts == nil {
			pts = []any{}
		}
		reply(200, map[string]any{"points": pts})
	case len(parts) == 3 && parts[2] == "drills" && r.Method == http.MethodGet:
		// Each listing moves the creating drills on: available, or
		// error for the second member of a group named "doomed".
		for _, d := range fg.drills[id] {
			if d["status"] == "creating" {
				if g["name"] == "doomed" && d["replication_id"] == memberID(idNumber(id), 2) {
					d["status"], d["error"] = "error", "clone failed: no space"
				} else {
					d["status"], d["volume_id"], d["rto_seconds"], d["available_at"] = "available", "vol-drill-"+d["id"].(string), 21.5, "2026-12-03T18:10:21.5Z"
				}
			}
		}
		ds := fg.drills[id]
		if ds == nil {
			ds = []map[string]any{}
		}
		reply(200, map[string]any{"drills": ds})
	default:
		fault(w, 405, "badMethod", "no")
	}
}

func idNumber(id string) int {
	n, _ := strconv.Atoi(strings.TrimLeft(id[len(id)-12:], "0"))
	return n
}

// action is the fake API's group actions, with the checks of a status
// the action needs.
func (fg *fakeGroups) action(w http.ResponseWriter, g map[string]any, req map[string]json.RawMessage, reply func(int, any)) {
	id, status := g["id"].(string), g["status"].(string)
	conflict := func(need string) {
		fault(w, 409, "conflictingRequest", "Replication group "+id+" is "+status+": it needs to be "+need+".")
	}
	switch {
	case req["sync"] != nil && status != "active":
		conflict("active")
	case req["pause"] != nil:
		setStatus(g, "paused")
		reply(202, map[string]any{"replication_group": g})
	case req["resume"] != nil:
		setStatus(g, "active")
		reply(202, map[string]any{"replication_group": g})
	case req["drill"] != nil:
		var d struct{ Point, Name string }
		_ = json.Unmarshal(req["drill"], &d)
		pts := fg.points[id]
		var point map[string]any
		for _, p := range pts {
			if pm := p.(map[string]any); pm["name"] == d.Point || (d.Point == "latest" && point == nil) {
				point = pm
			}
		}
		if point == nil {
			fault(w, 404, "itemNotFound", "Point "+d.Point+" of replication group "+id+" could not be found.")
			return
		}
		var out []map[string]any
		for i, m := range point["members"].([]any) {
			pm := m.(map[string]any)
			out = append(out, map[string]any{"id": fmt.Sprintf("drill-%d-%d", len(fg.drills[id])/2+1, i+1), "replication_id": pm["replication_id"],
				"name": d.Name, "point": pm["point"], "status": "creating", "volume_id": nil, "requested_at": "2026-12-03T18:10:00Z",
				"available_at": nil, "rto_seconds": nil, "error": nil})
		}
		fg.drills[id] = append(fg.drills[id], out...)
		reply(202, map[string]any{"drills": out})
	case req["failover"] != nil || req["failback"] != nil:
		kind, from, to := "failover", []string{"active", "paused"}, "failing_over"
		if req["failback"] != nil {
			kind, from, to = "failback", []string{"failed_over"}, "failing_back"
		}
		var arg struct {
			Point string `json:"point"`
			Force bool   `json:"force"`
		}
		_ = json.Unmarshal(req[kind], &arg)
		switch {
		case arg.Point != "" && !arg.Force:
			fault(w, 400, "badRequest", `An unplanned failover needs "force": true.`)
			return
		case !slices.Contains(from, status):
			conflict(strings.Join(from, " or "))
			return
		}
		setStatus(g, to)
		fg.polls[id] = 0
		reply(202, map[string]any{"replication_group": g})
	default:
		reply(202, map[string]any{"replication_group": g})
	}
}

// advance moves a failing-over or failing-back group on at each GET: its
// first member, then the rest; a group named "doomed" is undone (back to
// where it was, with an error).
func (fg *fakeGroups) advance(g map[string]any) {
	st := g["status"].(string)
	if st != "failing_over" && st != "failing_back" {
		return
	}
	id := g["id"].(string)
	fg.polls[id]++
	done := map[string]string{"failing_over": "failed_over", "failing_back": "active"}[st]
	members := g["members"].([]any)
	switch {
	case g["name"] == "doomed" && fg.polls[id] >= 2:
		setStatus(g, map[string]string{"failing_over": "active", "failing_back": "failed_over"}[st])
		g["last_error"] = "failover undone: final cycle of member " + memberID(idNumber(id), 1) + " failed"
	case fg.polls[id] == 2:
		members[0].(map[string]any)["status"] = done
	case fg.polls[id] >= 3:
		setStatus(g, done)
	}
}

func TestGroupCreateSendsTheAPIBody(t *testing.T) {
	fc := newFakeCloud(t)
	code, out, errOut := run(t, fc.env(), "replication-group", "create", "--volume", "vol-1", "--volume", "vol-2", "--volume", "vol-3",
		"--destination-region", "RegionTwo", "--destination-pool", "replicas", "--interval", "5m", "--rpo", "900",
		"--keep-last", "3", "--keep-daily", "7", "--bandwidth-limit", "100M", "--name", "db", "--description", "the db", "-f", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := map[string]any{"name": "db", "description": "the db",
		"source":           map[string]any{"region": "RegionOne", "volume_ids": []string{"vol-1", "vol-2", "vol-3"}},
		"destination":      map[string]any{"region": "RegionTwo", "pool": "replicas"},
		"interval_seconds": 300, "rpo_seconds": 900, "retention": map[string]any{"keep_last": 3, "keep_daily": 7},
		"bandwidth_limit": 100 << 20}
	if got := mustJSON(t, fc.groups.creates[0]); got != mustJSON(t, want) {
		t.Errorf("request body = %s, want %s", got, mustJSON(t, want))
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(out), &obj); err != nil {
		t.Fatalf("-f json is not JSON: %v\n%s", err, out)
	}
	// JSON keeps the API's object: the members' list, lag_seconds null.
	if ms, _ := obj["members"].([]any); obj["id"] != groupID(1) || len(ms) != 3 || obj["lag_seconds"] != nil {
		t.Errorf("object = %v", obj)
	}
	if !strings.HasPrefix(out, "{\n  \"id\":") || strings.Index(out, `"bandwidth_limit"`) > strings.Index(out, `"members"`) {
		t.Errorf("keys out of order:\n%s", out)
	}
	// A Cinder group from another region, nothing else: left to the server.
	if code, _, e := run(t, fc.env(), "replication-group", "create", "--cinder-group", "cg-1", "--source-region", "RegionTwo",
		"--destination-region", "RegionOne", "--interval", "60", "--rpo", "1h30m"); code != 0 {
		t.Fatal(e)
	}
	want = map[string]any{"source": map[string]any{"region": "RegionTwo", "cinder_group_id": "cg-1"},
		"destination": map[string]any{"region": "RegionOne"}, "interval_seconds": 60, "rpo_seconds": 5400}
	if got := mustJSON(t, fc.groups.creates[1]); got != mustJSON(t, want) {
		t.Errorf("request body = %s, want %s", got, mustJSON(t, want))
	}
}

func TestGroupCreateChecksFlags(t *testing.T) {
	fc := newFakeCloud(t)
	ok := []string{"--volume", "v1", "--volume", "v2", "--destination-region", "R2", "--interval", "60", "--rpo", "120"}
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
		{fc.env(), with("--volume", ""), "--volume needs a volume id"},
		{fc.env(), with("--rpo", "soon"), "give seconds or a duration"},
		{fc.env(), with("--bandwidth-limit", "fast"), "--bandwidth-limit \"fast\""},
		{fc.env(), with("--keep-last", "0"), "--keep-last must be at least 1"},
		{fc.env(), with("--cinder-group", "cg"), "none of the others can be"},
		{fc.env(), []string{"--destination-region", "R2", "--interval", "60", "--rpo", "120"}, "at least one of the flags"},
		{fc.env(), with("--keep-hourly", "24"), ""}, // valid
	} {
		code, _, errOut := run(t, tc.env, append([]string{"replication-group", "create"}, tc.args...)...)
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
	if len(fc.groups.creates) != 1 {
		t.Errorf("%d creates reached the API, want only the valid one", len(fc.groups.creates))
	}
}

// show reads the members one per line and the lag against the RPO in a
// table; -f json keeps the API's object.
func TestGroupShowRendersMembersAndLag(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addGroup(map[string]any{"name": "ok", "lag_seconds": 42.4, "rpo_seconds": 900, "last_sync_at": "2026-12-03T18:00:00Z", "points_count": 2}, "vol-1", "vol-2")
	fc.addGroup(map[string]any{"name": "late", "lag_seconds": 1000, "rpo_seconds": 900, "rpo_breached": true})
	fc.addGroup(map[string]any{"name": "new", "rpo_seconds": 120, "rpo_breached": true})
	for name, want := range map[string]string{
		"ok": "42s (RPO 15m0s)", "late": "16m40s (RPO 15m0s, breached)", "new": "no point yet (RPO 2m0s, breached)",
	} {
		code, out, errOut := run(t, fc.env(), "replication-group", "show", name)
		if got := tableValue(out, "lag_seconds"); code != 0 || got != want {
			t.Errorf("show %s: exit %d %q, lag_seconds %q, want %q:\n%s", name, code, errOut, got, want, out)
		}
	}
	_, out, _ := run(t, fc.env(), "replication-group", "show", "ok")
	m1, m2 := memberID(1, 1), memberID(1, 2)
	for _, want := range []string{
		"| members          | volume vol-1: active, volumes/volume-vol-1 -> volumes/ferry-replica-" + m1 + " (replication " + m1 + ") |",
		"|                  | volume vol-2: active, volumes/volume-vol-2 -> volumes/ferry-replica-" + m2 + " (replication " + m2 + ") |",
		"| source           | region='RegionOne'",
		"| destination      | region='RegionTwo', pool='volumes'",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	_, out, _ = run(t, fc.env(), "replication-group", "show", groupID(1), "-f", "json", "-c", "lag_seconds", "-c", "members")
	var obj struct {
		Lag     float64          `json:"lag_seconds"`
		Members []map[string]any `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &obj); err != nil || obj.Lag != 42.4 || len(obj.Members) != 2 || obj.Members[1]["volume_id"] != "vol-2" {
		t.Errorf("json: %v %q", err, out)
	}
	_, out, _ = run(t, fc.env(), "replication-group", "show", "late", "-f", "value", "-c", "lag_seconds", "-c", "members")
	if !strings.HasPrefix(out, "16m40s (RPO 15m0s, breached)\nvolume vol-a: active, ") || strings.Count(out, "\n") != 2 ||
		!strings.Contains(out, "), volume vol-b: active") {
		t.Errorf("value: %q", out)
	}
	code, _, errOut := run(t, fc.env(), "replication-group", "show", "ghost")
	if code == 0 || errOut != "ferry: Replication group ghost could not be found (HTTP 404) (Request-ID: req-test)\n" {
		t.Errorf("unknown: %d %q", code, errOut)
	}
	fc.addGroup(map[string]any{"name": "ok"})
	code, _, errOut = run(t, fc.env(), "replication-group", "show", "ok")
	if code == 0 || errOut != "ferry: more than one replication group is named 'ok': use its ID\n" {
		t.Errorf("two named ok: %d %q", code, errOut)
	}
}

func TestGroupListPagesAndOptions(t *testing.T) {
	fc := newFakeCloud(t)
	for i := range 5 {
		vols := make([]string, i+1)
		for j := range vols {
			vols[j] = fmt.Sprint("v", i, j)
		}
		fc.addGroup(map[string]any{"name": fmt.Sprint("g", i), "lag_seconds": 10 * (i + 1), "rpo_seconds": 30, "rpo_breached": 10*(i+1) > 30}, vols...)
	}
	code, out, errOut := run(t, fc.env(), "replication-group", "list", "-f", "value", "-c", "name", "-c", "members", "-c", "lag_seconds")
	if code != 0 {
		t.Fatal(errOut)
	}
	want := "g0 1 10s (RPO 30s)\ng1 2 20s (RPO 30s)\ng2 3 30s (RPO 30s)\ng3 4 40s (RPO 30s, breached)\ng4 5 50s (RPO 30s, breached)\n"
	if out != want {
		t.Errorf("value output %q, want %q", out, want)
	}
	n := len(fc.queries)
	_, out, _ = run(t, fc.env(), "replication-group", "list", "--limit", "3", "--all-projects", "--marker", groupID(1), "-f", "yaml", "-c", "name", "-c", "members")
	var rows []struct {
		Name    string
		Members []map[string]any
	}
	if err := yaml.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 3 || rows[0].Name != "g1" || rows[2].Name != "g3" || len(rows[2].Members) != 4 {
		t.Errorf("yaml with --limit 3 --marker: %v %q", err, out)
	}
	if !slices.Contains(fc.queries[n:], "all_projects=true&limit=3&marker="+groupID(1)) {
		t.Errorf("queries %q", fc.queries[n:])
	}
	_, out, _ = run(t, fc.env(), "replication-group", "list")
	for _, h := range []string{"| id ", "| name ", "| status ", "| members ", "| source ", "| destination ", "| lag_seconds ", "| points_count ", "| last_sync_at "} {
		if !strings.Contains(out, h) {
			t.Errorf("table lacks column %q:\n%s", h, out)
		}
	}
	_, out, _ = run(t, fc.env(), "replication-group", "list", "--long")
	for _, h := range []string{"| interval_seconds ", "| rpo_breached ", "| next_run_at ", "| project_id "} {
		if !strings.Contains(out, h) {
			t.Errorf("long table lacks column %q:\n%s", h, out)
		}
	}
	if code, _, e := run(t, fc.env(), "replication-group", "list", "-c", "nope"); code == 0 || !strings.Contains(e, `no column "nope"`) {
		t.Errorf("unknown column: %d %q", code, e)
	}
}

func TestGroupSetSendsOnlyWhatChanged(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addGroup(map[string]any{"name": "db"})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--name", "db2"}, `{"name":"db2"}`},
		{[]string{"--keep-hourly", "24"}, `{"retention":{"keep_hourly":24}}`},
		{[]string{"--interval", "2m", "--rpo", "10m", "--bandwidth-limit", "0", "--description", ""}, `{"bandwidth_limit":0,"description":"","interval_seconds":120,"rpo_seconds":600}`},
	} {
		n := len(fc.groups.updates)
		code, _, errOut := run(t, fc.env(), append([]string{"replication-group", "set", groupID(1)}, tc.args...)...)
		if code != 0 || len(fc.groups.updates) != n+1 {
			t.Fatalf("%v: exit %d %q", tc.args, code, errOut)
		}
		if got := mustJSON(t, fc.groups.updates[n]); got != tc.want {
			t.Errorf("%v: sent %s, want %s", tc.args, got, tc.want)
		}
	}
	if code, out, e := run(t, fc.env(), "replication-group", "set", "db2", "--rpo", "15m", "-f", "value", "-c", "rpo_seconds"); code != 0 || out != "900\n" {
		t.Errorf("set by name: %d %q %q", code, out, e)
	}
	n := len(fc.requests)
	for _, args := range [][]string{{}, {"--keep-last", "0"}, {"--interval", "x"}} {
		if code, _, _ := run(t, fc.env(), append([]string{"replication-group", "set", groupID(1)}, args...)...); code == 0 {
			t.Errorf("set %v succeeded", args)
		}
	}
	for _, r := range fc.requests[n:] {
		if strings.HasPrefix(r, "PUT") {
			t.Errorf("an invalid set reached the API: %s", r)
		}
	}
}

func TestGroupActionsAndDelete(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addGroup(map[string]any{"name": "a"})
	fc.addGroup(map[string]any{"name": "b"})
	for _, args := range [][]string{{"pause", "a", "b"}, {"resume", "b"}, {"sync", groupID(2)}} {
		if code, out, e := run(t, fc.env(), append([]string{"replication-group"}, args...)...); code != 0 || out != "" {
			t.Fatalf("%v: %q %q", args, out, e)
		}
	}
	want := []string{groupID(1) + ` {"pause":null}`, groupID(2) + ` {"pause":null}`, groupID(2) + ` {"resume":null}`, groupID(2) + ` {"sync":null}`}
	if !slices.Equal(fc.groups.actions, want) {
		t.Errorf("actions %q, want %q", fc.groups.actions, want)
	}
	// a is paused: sync is refused; ghost does not exist; both reported.
	code, _, errOut := run(t, fc.env(), "replication-group", "sync", "a", "ghost")
	wantErr := "Failed to sync replication group with name or ID 'a': Replication group " + groupID(1) + " is paused: it needs to be active (HTTP 409) (Request-ID: req-test)\n" +
		"Failed to sync replication group with name or ID 'ghost': Replication group ghost could not be found (HTTP 404) (Request-ID: req-test)\n" +
		"ferry: 2 of 2 replication groups failed to sync\n"
	if code == 0 || errOut != wantErr {
		t.Errorf("sync errors: %d\n%s\nwant\n%s", code, errOut, wantErr)
	}
	if code, _, e := run(t, fc.env(), "replication-group", "delete", "a"); code != 0 {
		t.Fatal(e)
	}
	if code, _, e := run(t, fc.env(), "replication-group", "delete", "--keep-replica", "b"); code != 0 {
		t.Fatal(e)
	}
	if want := []string{groupID(1) + "?", groupID(2) + "?keep_replica=true"}; !slices.Equal(fc.groups.deletes, want) {
		t.Errorf("deletes %q, want %q", fc.groups.deletes, want)
	}
}

// addPoints gives group n (of two members) two points, newest first.
func (fc *fakeCloud) addPoints(n int) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	m1, m2 := memberID(n, 1), memberID(n, 2)
	fc.groups.points[groupID(n)] = []any{
		map[string]any{"name": "cycle-2", "created_at": "2026-12-03T18:05:00Z", "members": []any{
			map[string]any{"replication_id": m1, "volume_id": "vol-a", "point": "ferry-a2"},
			map[string]any{"replication_id": m2, "volume_id": "vol-b", "point": "ferry-b2"}}},
		map[string]any{"name": "cycle-1", "created_at": "2026-12-03T18:00:00Z", "members": []any{
			map[string]any{"replication_id": m1, "volume_id": "vol-a", "point": "ferry-a1"},
			map[string]any{"replication_id": m2, "volume_id": "vol-b", "point": "ferry-b1"}}},
	}
}

func TestGroupPointsAndDrills(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addGroup(map[string]any{"name": "db"})
	fc.addPoints(1)
	code, out, errOut := run(t, fc.env(), "replication-group", "points", "db")
	if code != 0 {
		t.Fatal(errOut)
	}
	for _, want := range []string{"| name    | created_at           | members                |", "| cycle-2 | 2026-12-03T18:05:00Z | volume vol-a: ferry-a2 |",
		"|         |                      | volume vol-b: ferry-b2 |", "| cycle-1 |"} {
		if !strings.Contains(out, want) {
			t.Errorf("points table lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "cycle-2") > strings.Index(out, "cycle-1") {
		t.Errorf("points out of order:\n%s", out)
	}
	_, out, _ = run(t, fc.env(), "replication-group", "points", "db", "-f", "value")
	if out != "cycle-2 2026-12-03T18:05:00Z volume vol-a: ferry-a2, volume vol-b: ferry-b2\ncycle-1 2026-12-03T18:00:00Z volume vol-a: ferry-a1, volume vol-b: ferry-b1\n" {
		t.Errorf("points value: %q", out)
	}
	_, out, _ = run(t, fc.env(), "replication-group", "points", "db", "-f", "json")
	var pts []map[string]any
	if err := json.Unmarshal([]byte(out), &pts); err != nil || len(pts) != 2 || len(pts[0]["members"].([]any)) != 2 {
		t.Errorf("points json: %v %q", err, out)
	}
	// A drill of a named point prints the member drills.
	code, out, errOut = run(t, fc.env(), "replication-group", "drill", "db", "cycle-1", "--name", "dr1", "-f", "json")
	var ds []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &ds) != nil || len(ds) != 2 || ds[0]["point"] != "ferry-a1" || ds[1]["point"] != "ferry-b1" ||
		ds[0]["name"] != "dr1" || ds[0]["status"] != "creating" || ds[1]["replication_id"] != memberID(1, 2) {
		t.Errorf("drill: %d %q %q", code, out, errOut)
	}
	// latest is the server's to resolve.
	if code, _, e := run(t, fc.env(), "replication-group", "drill", "db", "latest"); code != 0 {
		t.Errorf("drill latest: %q", e)
	}
	if last := fc.groups.actions[len(fc.groups.actions)-1]; last != groupID(1)+` {"drill":{"point":"latest"}}` {
		t.Errorf("drill latest sent %q", last)
	}
	code, _, errOut = run(t, fc.env(), "replication-group", "drill", "db", "gone")
	if code == 0 || !strings.Contains(errOut, "Point gone of replication group "+groupID(1)+" could not be found (HTTP 404)") {
		t.Errorf("unknown point: %d %q", code, errOut)
	}
	_, out, _ = run(t, fc.env(), "replication-group", "drills", "db")
	for _, want := range []string{"| id ", "| replication_id ", "| rto_seconds ", "vol-drill-drill-1-1", "21.5", memberID(1, 2)} {
		if !strings.Contains(out, want) {
			t.Errorf("drills table lacks %q:\n%s", want, out)
		}
	}
}

// drill --wait follows the member drills it started until each is
// available or in error.
func TestGroupDrillWait(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addGroup(map[string]any{"name": "db"})
	fc.addPoints(1)
	code, out, errOut := run(t, fc.env(), "replication-group", "drill", "db", "cycle-2", "--wait", "--poll-interval", "10ms",
		"-f", "value", "-c", "id", "-c", "status", "-c", "volume_id")
	if code != 0 || out != "drill-1-1 available vol-drill-drill-1-1\ndrill-1-2 available vol-drill-drill-1-2\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, want := range []string{"drill drill-1-1 of replication " + memberID(1, 1) + ": available (volume vol-drill-drill-1-1, RTO 21.5s)\n",
		"drill drill-1-2 of replication " + memberID(1, 2) + ": available (volume vol-drill-drill-1-2, RTO 21.5s)\n"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	// A second drill: only its own drills are waited for and printed.
	code, out, errOut = run(t, fc.env(), "replication-group", "drill", "db", "latest", "--wait", "--poll-interval", "10ms", "-f", "value", "-c", "id")
	if code != 0 || out != "drill-2-1\ndrill-2-2\n" {
		t.Errorf("second drill: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	fc.addGroup(map[string]any{"name": "doomed"})
	fc.addPoints(2)
	code, out, errOut = run(t, fc.env(), "replication-group", "drill", "doomed", "latest", "--wait", "--poll-interval", "10ms", "-f", "value", "-c", "status")
	if code == 0 || out != "available\nerror\n" ||
		!strings.Contains(errOut, ": error: clone failed: no space\n") ||
		!strings.HasSuffix(errOut, "ferry: 1 of 2 member drills ended in error: drill drill-1-2 of replication "+memberID(2, 2)+": clone failed: no space\n") {
		t.Errorf("a drill in error: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestGroupFailoverAndFailbackSendTheAPIBody(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addGroup(map[string]any{"name": "db"})
	fc.addGroup(map[string]any{"name": "dr"})
	code, out, errOut := run(t, fc.env(), "replication-group", "failover", "db", "-f", "json", "-c", "status", "-c", "members")
	var g struct {
		Status  string
		Members []map[string]any
	}
	if code != 0 || json.Unmarshal([]byte(out), &g) != nil || g.Status != "failing_over" || len(g.Members) != 2 {
		t.Fatalf("failover: exit %d %q %q", code, out, errOut)
	}
	// db is failing over: a second failover is refused by the API.
	code, _, errOut = run(t, fc.env(), "replication-group", "failover", "db")
	if code == 0 || !strings.Contains(errOut, "Replication group "+groupID(1)+" is failing_over: it needs to be active or paused (HTTP 409)") {
		t.Errorf("second failover: %d %q", code, errOut)
	}
	// An unplanned failover needs --force; refused before the API.
	n := len(fc.groups.actions)
	code, _, errOut = run(t, fc.env(), "replication-group", "failover", "dr", "--point", "latest")
	if code == 0 || !strings.Contains(errOut, "--point makes an unplanned failover") || len(fc.groups.actions) != n {
		t.Errorf("--point without --force: %d %q", code, errOut)
	}
	if code, _, e := run(t, fc.env(), "replication-group", "failover", "dr", "--point", "cycle-1", "--force"); code != 0 {
		t.Fatal(e)
	}
	code, _, errOut = run(t, fc.env(), "replication-group", "failback", "db")
	if code == 0 || !strings.Contains(errOut, "it needs to be failed_over (HTTP 409)") {
		t.Errorf("failback of a failing-over group: %d %q", code, errOut)
	}
	fc.addGroup(map[string]any{"name": "back", "status": "failed_over"})
	if code, _, e := run(t, fc.env(), "replication-group", "failback", "back", "--force"); code != 0 {
		t.Fatal(e)
	}
	want := []string{
		groupID(1) + ` {"failover":{}}`,
		groupID(1) + ` {"failover":{}}`,
		groupID(2) + ` {"failover":{"force":true,"point":"cycle-1"}}`,
		groupID(1) + ` {"failback":null}`,
		groupID(3) + ` {"failback":{"force":true}}`,
	}
	if !slices.Equal(fc.groups.actions, want) {
		t.Errorf("actions\n%q\nwant\n%q", fc.groups.actions, want)
	}
}

// --wait follows the group until it leaves failing_over (failing_back),
// telling its and its members' status, and prints it; a group that did
// not end where the action goes is a failure.
func TestGroupFailoverWait(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addGroup(map[string]any{"name": "db"})
	code, out, errOut := run(t, fc.env(), "replication-group", "failover", "db", "--wait", "--poll-interval", "10ms", "-f", "value", "-c", "status")
	if code != 0 || out != "failed_over\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	id := groupID(1)
	for _, want := range []string{"replication group " + id + ": failing_over (members: 2 failing_over)\n",
		"replication group " + id + ": failing_over (members: 1 failed_over, 1 failing_over)\n",
		"replication group " + id + ": failed_over (members: 2 failed_over)\n",
		"failover of replication group " + id + " done: failed_over\n"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if n := strings.Count(errOut, "(members: 2 failing_over)"); n != 1 {
		t.Errorf("a status told %d times:\n%s", n, errOut)
	}
	code, out, errOut = run(t, fc.env(), "replication-group", "failback", "db", "--wait", "--poll-interval", "10ms", "-f", "json", "-c", "status")
	if code != 0 || strings.TrimSpace(out) != "{\n  \"status\": \"active\"\n}" || !strings.Contains(errOut, "failback of replication group "+id+" done: active\n") {
		t.Errorf("failback --wait: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	fc.addGroup(map[string]any{"name": "doomed"})
	code, out, errOut = run(t, fc.env(), "replication-group", "failover", "doomed", "--wait", "--poll-interval", "10ms", "-f", "value", "-c", "status")
	if code == 0 || out != "active\n" || !strings.HasSuffix(errOut, "ferry: the failover of replication group "+groupID(2)+
		" ended with the group active: failover undone: final cycle of member "+memberID(2, 1)+" failed\n") {
		t.Errorf("an undone failover: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// The group commands ask for 1.2 (the fake API's group paths are 404
// below it), the others keep the CLI's 1.1.
func TestGroupRequestsSendTheirMicroversion(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addGroup(map[string]any{"name": "db"})
	for _, args := range [][]string{{"replication-group", "list"}, {"replication-group", "show", "db"}, {"replication-group", "points", "db"},
		{"replication", "list"}} {
		if code, _, errOut := run(t, fc.env(), args...); code != 0 {
			t.Fatalf("%v: %d %s", args, code, errOut)
		}
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for i, r := range fc.requests {
		want := "volume-ferry 1.1"
		if strings.HasPrefix(r, "GET /v1/replication-groups") {
			want = "volume-ferry 1.2"
		}
		if fc.versions[i] != want {
			t.Errorf("%s: OpenStack-API-Version %q, want %q", r, fc.versions[i], want)
		}
	}
}
