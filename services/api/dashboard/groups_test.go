package dashboard

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/client/replicationgroups"
)

// Two replication groups of project demo: db of two volumes within its
// RPO with two points, and logs breached, paused, without a point.
const (
	groupOK       = "6a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
	groupBreached = "3d4e5f60-7182-4394-a5b6-c7d8e9f00112"
	memberA       = "a0000000-0000-4000-8000-00000000000a"
	memberB       = "b0000000-0000-4000-8000-00000000000b"
)

var groupOKJSON = `{"id": "` + groupOK + `", "name": "db", "description": "data and WAL", "project_id": "p-demo", "user_id": "u-demo",
	"status": "active", "source": {"region": "RegionOne"}, "destination": {"region": "RegionTwo", "pool": "volumes"},
	"interval_seconds": 60, "rpo_seconds": 300, "retention": {"keep_last": 3, "keep_hourly": 24, "keep_daily": 0}, "bandwidth_limit": 0,
	"members": [
		{"replication_id": "` + memberA + `", "volume_id": "vol-data", "status": "active",
		 "source": {"pool": "volumes", "image": "volume-vol-data"}, "destination": {"pool": "volumes", "image": "ferry-replica-` + memberA + `"}},
		{"replication_id": "` + memberB + `", "volume_id": "vol-wal", "status": "active",
		 "source": {"pool": "volumes", "image": "volume-vol-wal"}, "destination": {"pool": "volumes", "image": "ferry-replica-` + memberB + `"}}],
	"last_sync_at": "2026-12-03T18:00:00Z", "lag_seconds": 3, "rpo_breached": false, "last_cycle_id": "cycle-2", "last_error": null,
	"points_count": 2, "next_run_at": "2026-12-03T18:01:00Z", "cycles": {"completed": 10, "failed": 0, "skipped": 1},
	"created_at": "2026-12-03T17:00:00Z", "updated_at": "2026-12-03T18:00:02Z"}`

var groupBreachedJSON = `{"id": "` + groupBreached + `", "name": "logs", "description": "", "project_id": "p-demo", "user_id": "u-demo",
	"status": "paused", "source": {"region": "RegionOne"}, "destination": {"region": "RegionTwo", "pool": "volumes"},
	"interval_seconds": 120, "rpo_seconds": 600, "retention": {"keep_last": 3, "keep_hourly": 0, "keep_daily": 0}, "bandwidth_limit": 52428800,
	"members": [{"replication_id": "c0000000-0000-4000-8000-00000000000c", "volume_id": "vol-logs", "status": "paused",
		"source": {"pool": "volumes", "image": "volume-vol-logs"}, "destination": {"pool": "volumes", "image": "ferry-replica-c"}}],
	"last_sync_at": null, "lag_seconds": null, "rpo_breached": true, "last_cycle_id": null,
	"last_error": "group cycle failed: member vol-logs: source unreachable", "points_count": 0, "next_run_at": null,
	"cycles": {"completed": 0, "failed": 2, "skipped": 0}, "created_at": "2026-12-01T08:00:00Z", "updated_at": "2026-12-01T08:04:00Z"}`

// serveGroups is the fake API's /v1/replication-groups: since 1.2 (a 404
// below it, as the real API).
func (a *fakeAPI) serveGroups(w http.ResponseWriter, r *http.Request, user string) {
	if r.Header.Get("OpenStack-API-Version") != "volume-ferry 1.2" {
		fault(w, http.StatusNotFound, "itemNotFound", "The resource could not be found.")
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/v1/replication-groups")
	byID := map[string]string{groupOK: groupOKJSON, groupBreached: groupBreachedJSON}
	switch {
	case r.Method == http.MethodGet && p == "":
		io.WriteString(w, `{"replication_groups": [`+groupOKJSON+`, `+groupBreachedJSON+`]}`)
	case r.Method == http.MethodGet && byID[strings.TrimPrefix(p, "/")] != "":
		io.WriteString(w, `{"replication_group": `+byID[strings.TrimPrefix(p, "/")]+`}`)
	case r.Method == http.MethodGet && p == "/"+groupOK+"/points":
		io.WriteString(w, `{"points": [
			{"name": "cycle-2", "created_at": "2026-12-03T18:00:00Z", "members": [
				{"replication_id": "`+memberA+`", "volume_id": "vol-data", "point": "ferry-data-2"},
				{"replication_id": "`+memberB+`", "volume_id": "vol-wal", "point": "ferry-wal-2"}]},
			{"name": "cycle-1", "created_at": "2026-12-03T17:59:00Z", "members": [
				{"replication_id": "`+memberA+`", "volume_id": "vol-data", "point": "ferry-data-1"},
				{"replication_id": "`+memberB+`", "volume_id": "vol-wal", "point": "ferry-wal-1"}]}]}`)
	case r.Method == http.MethodGet && strings.HasSuffix(p, "/points"):
		io.WriteString(w, `{"points": []}`)
	case r.Method == http.MethodGet && p == "/"+groupOK+"/drills":
		io.WriteString(w, `{"drills": [
			{"id": "d-a", "replication_id": "`+memberA+`", "name": "dr-june", "point": "ferry-data-1", "status": "available",
			 "volume_id": "vol-drill-a", "requested_at": "2026-12-03T18:05:00Z", "available_at": "2026-12-03T18:05:21.5Z", "rto_seconds": 21.5, "error": null},
			{"id": "d-b", "replication_id": "`+memberB+`", "name": "dr-june", "point": "ferry-wal-1", "status": "error",
			 "volume_id": null, "requested_at": "2026-12-03T18:05:00Z", "available_at": null, "rto_seconds": null, "error": "clone failed: no space"}]}`)
	case r.Method == http.MethodGet && strings.HasSuffix(p, "/drills"):
		io.WriteString(w, `{"drills": []}`)
	case r.Method == http.MethodPost && strings.HasSuffix(p, "/action"):
		if user == "reader" {
			fault(w, http.StatusForbidden, "forbidden", "Policy doesn't allow replication:action to be performed.")
			return
		}
		id := strings.TrimSuffix(strings.TrimPrefix(p, "/"), "/action")
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.groupActions = append(a.groupActions, id+" "+strings.TrimSpace(string(b)))
		a.mu.Unlock()
		var req map[string]json.RawMessage
		json.Unmarshal(b, &req)
		switch {
		case req["sync"] != nil && id == groupBreached:
			fault(w, http.StatusConflict, "conflictingRequest", "Replication group "+id+" is paused: it needs to be active.")
		case req["drill"] != nil:
			var d struct{ Point, Name string }
			json.Unmarshal(req["drill"], &d)
			if d.Point != "cycle-1" && d.Point != "cycle-2" {
				fault(w, http.StatusNotFound, "itemNotFound", "Point "+d.Point+" of replication group "+id+" could not be found.")
				return
			}
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"drills": [
				{"id": "d-1", "replication_id": "`+memberA+`", "name": "`+d.Name+`", "point": "ferry-data", "status": "creating", "volume_id": null,
				 "requested_at": "2026-12-03T18:10:00Z", "available_at": null, "rto_seconds": null, "error": null},
				{"id": "d-2", "replication_id": "`+memberB+`", "name": "`+d.Name+`", "point": "ferry-wal", "status": "creating", "volume_id": null,
				 "requested_at": "2026-12-03T18:10:00Z", "available_at": null, "rto_seconds": null, "error": null}]}`)
		case req["failback"] != nil && id == groupOK:
			fault(w, http.StatusConflict, "conflictingRequest", "Replication group "+id+" is active: a failback needs it failed_over.")
		case req["failover"] != nil:
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"replication_group": `+strings.Replace(byID[id], `"status": "active"`, `"status": "failing_over"`, 1)+`}`)
		default:
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"replication_group": `+byID[id]+`}`)
		}
	default:
		fault(w, http.StatusNotFound, "itemNotFound", "Replication group could not be found.")
	}
}

func TestGroupsList(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	page := b.mustLogin("demo")
	if !strings.Contains(page, `href="/dashboard/project/replication-groups" id="nav-groups">Replication groups</a>`) {
		t.Error("no Replication groups entry in the nav")
	}
	resp, page := b.do("GET", "/dashboard/project/replication-groups", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("groups page: %d\n%s", resp.StatusCode, page)
	}
	if !strings.Contains(page, `class="nav-item active" href="/dashboard/project/replication-groups"`) {
		t.Error("the nav does not show the groups panel as active")
	}
	ok, breached := replRowHTML(t, page, groupOK), replRowHTML(t, page, groupBreached)
	// Members count, lag against the RPO, red only when breached.
	for _, want := range []string{`href="/dashboard/project/replication-groups/` + groupOK + `" class="tname">db</a>`, `badge badge-ok" data-f="status">active<`,
		`<td data-f="members_count">2</td>`, `<span class="region">RegionTwo</span> volumes`,
		`<td class="nowrap lag" data-f="lag" data-breached>3s / RPO 5m 00s</td>`, `<td data-f="points_count">2</td>`, "2026-12-03 18:00:00",
		`action="/dashboard/project/replication-groups/` + groupOK + `/sync" data-show="can_sync">`,
		`action="/dashboard/project/replication-groups/` + groupOK + `/pause" data-show="can_pause">`,
		`action="/dashboard/project/replication-groups/` + groupOK + `/failover" data-show="can_failover">`,
		`data-confirm="Fail replication group db over to RegionTwo? Its volumes in RegionOne (2) are quiesced`} {
		if !strings.Contains(ok, want) {
			t.Errorf("db's row lacks %s:\n%s", want, ok)
		}
	}
	for _, want := range []string{`badge badge-muted" data-f="status">paused<`, `<td data-f="members_count">1</td>`,
		`<td class="nowrap lag lag-breached" data-f="lag" data-breached>no point yet / RPO 10m 00s</td>`,
		`/resume" data-show="can_resume">`, `/sync" data-show="can_sync" hidden>`, `/failback" data-show="can_failback" hidden>`} {
		if !strings.Contains(breached, want) {
			t.Errorf("logs' row lacks %s:\n%s", want, breached)
		}
	}
	if strings.Contains(page, "/dashboard/project/replications/"+groupOK) {
		t.Error("a group's button posts to the replications panel")
	}
	// The live data.
	resp, data := b.do("GET", "/dashboard/project/replication-groups/data", nil)
	var d struct {
		Groups []groupRow `json:"replication_groups"`
	}
	if resp.StatusCode != 200 || json.Unmarshal([]byte(data), &d) != nil || len(d.Groups) != 2 {
		t.Fatalf("data: %d %s", resp.StatusCode, data)
	}
	if g := d.Groups[0]; g.RPOBreached || g.Lag != "3s / RPO 5m 00s" || g.MembersCount != 2 || g.PointsCount != 2 || !g.CanPause || !g.CanFailover || g.Badge != "ok" {
		t.Errorf("db's data: %+v", g)
	}
	if g := d.Groups[1]; !g.RPOBreached || g.Lag != "no point yet / RPO 10m 00s" || g.MembersCount != 1 || !g.CanResume || g.CanSync ||
		g.LastError != "group cycle failed: member vol-logs: source unreachable" {
		t.Errorf("logs' data: %+v", g)
	}
	if !strings.Contains(data, `"members_count":2`) || !strings.Contains(data, `"can_failback":false`) {
		t.Errorf("the script's keys: %s", data)
	}
	resp, data = b.do("GET", "/dashboard/project/replication-groups/data?id="+groupBreached, nil)
	if resp.StatusCode != 200 || !strings.Contains(data, `"id":"`+groupBreached+`"`) || strings.Contains(data, groupOK) {
		t.Errorf("data of one: %d %s", resp.StatusCode, data)
	}
	resp, data = b.do("GET", "/dashboard/project/replication-groups/data?id=nope", nil)
	if resp.StatusCode != 404 || !strings.Contains(data, "could not be found") {
		t.Errorf("data of a missing one: %d %s", resp.StatusCode, data)
	}
}

// openGroup logs demo in and opens db's page.
func openGroup(t *testing.T) (r *rig, b *browser, detail, page string) {
	t.Helper()
	r = newRig(t, time.Hour)
	b = r.browser()
	b.mustLogin("demo")
	detail = "/dashboard/project/replication-groups/" + groupOK
	resp, page := b.do("GET", detail, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("detail: %d\n%s", resp.StatusCode, page)
	}
	return r, b, detail, page
}

func TestGroupDetail(t *testing.T) {
	_, b, _, page := openGroup(t)
	for _, want := range []string{"<h1>db</h1>", "data and WAL", `data-f="lag" data-breached id="lag">3s / RPO 5m 00s</dd>`,
		`<dd data-f="members_count">2</dd>`, "last 3, hourly 24, daily 0", "agents&#39; default", "10 completed, 0 failed, 1 skipped",
		`data-poll="/dashboard/project/replication-groups/data?id=` + groupOK + `"`,
		// the buttons of an active group
		`action="/dashboard/project/replication-groups/` + groupOK + `/sync" data-show="can_sync">`, ">Pause Group</button>",
		`action="/dashboard/project/replication-groups/` + groupOK + `/failback" data-show="can_failback" hidden>`} {
		if !strings.Contains(page, want) {
			t.Errorf("detail page lacks %s", want)
		}
	}
	members := regexp.MustCompile(`(?s)<table class="table" id="members">.*?</table>`).FindString(page)
	for _, want := range []string{`<tr data-member="` + memberA + `"><td class="mono">vol-data</td><td><span class="badge badge-ok">active</span></td>`,
		"volumes/volume-vol-wal", "volumes/ferry-replica-" + memberB, `href="/dashboard/project/replications/` + memberA + `">a0000000…</a>`} {
		if !strings.Contains(members, want) {
			t.Errorf("members table lacks %s:\n%s", want, members)
		}
	}
	points := regexp.MustCompile(`(?s)<table class="table" id="points">.*?</table>`).FindString(page)
	for _, want := range []string{`<td class="mono">cycle-2</td>`, `<td class="mono">cycle-1</td>`,
		`<span class="mono">vol-data</span>: <span class="mono">ferry-data-2</span><br><span class="mono">vol-wal</span>: <span class="mono">ferry-wal-2</span>`,
		`<input type="hidden" name="point" value="cycle-2">`, `<input type="hidden" name="point" value="cycle-1">`,
		`data-confirm="Clone point cycle-1 of every member into new volumes in RegionTwo?"`} {
		if !strings.Contains(points, want) {
			t.Errorf("points table lacks %s:\n%s", want, points)
		}
	}
	if strings.Index(points, "cycle-2") > strings.Index(points, "cycle-1") {
		t.Error("points out of order")
	}
	if n := strings.Count(points, `action="/dashboard/project/replication-groups/`+groupOK+`/drill"`); n != 2 {
		t.Errorf("%d drill forms, want one per point", n)
	}
	drills := regexp.MustCompile(`(?s)<table class="table" id="drills">.*?</table>`).FindString(page)
	for _, want := range []string{"dr-june", `<td class="mono">vol-data</td><td class="mono">ferry-data-1</td>`, "vol-drill-a", "<td>22s</td>",
		`<td class="mono">vol-wal</td><td class="mono">ferry-wal-1</td>`, `<span class="badge badge-err">error</span>`, "clone failed: no space"} {
		if !strings.Contains(drills, want) {
			t.Errorf("drills table lacks %s:\n%s", want, drills)
		}
	}
	_, logs := b.do("GET", "/dashboard/project/replication-groups/"+groupBreached, nil)
	for _, want := range []string{"No points yet", `lag lag-breached" data-f="lag"`, "source unreachable", "50.0 MiB/s",
		`<tr class="empty"><td colspan="9">No items to display.</td></tr>`, ">Resume Group</button>"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs' page lacks %s", want)
		}
	}
	if resp, _ := b.do("GET", "/dashboard/project/replication-groups/nope", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("missing group: %d", resp.StatusCode)
	}
}

func TestGroupActions(t *testing.T) {
	r, b, detail, page := openGroup(t)
	tok := csrfOf(t, page)
	drill := detail + "/drill"
	// No CSRF token, or another origin: refused before the API.
	if resp, _ := b.do("POST", drill, url.Values{"point": {"cycle-1"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("drill without a token: %d", resp.StatusCode)
	}
	if resp, _ := b.do("POST", drill, url.Values{"csrf_token": {tok}, "point": {"cycle-1"}}, "Origin", "https://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site drill: %d", resp.StatusCode)
	}
	if len(r.api.groupActions) != 0 {
		t.Fatalf("actions reached the API: %v", r.api.groupActions)
	}
	resp, _ := b.do("POST", drill, url.Values{"csrf_token": {tok}, "point": {"cycle-1"}, "drill_name": {" dr1 "}, "name": {"db"}, "next": {detail}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != detail {
		t.Fatalf("drill: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, page = b.do("GET", detail, nil)
	if !strings.Contains(page, "Drill started from point cycle-1 of replication group db: 2 member drills") {
		t.Error("no success message after the drill")
	}
	b.do("POST", drill, url.Values{"csrf_token": {tok}, "point": {"gone"}, "name": {"db"}, "next": {detail}})
	_, page = b.do("GET", detail, nil)
	if !strings.Contains(page, "Unable to drill replication group db: Point gone of replication group "+groupOK+" could not be found.") {
		t.Error("no error message for an unknown point")
	}
	for _, a := range []string{"pause", "resume", "sync", "failover", "failback"} {
		if resp, _ := b.do("POST", detail+"/"+a, url.Values{"csrf_token": {tok}, "name": {"db"}, "next": {detail}}); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("%s: %d", a, resp.StatusCode)
		}
		_, page = b.do("GET", detail, nil)
		want := map[string]string{"pause": "Paused replication group: db", "resume": "Resumed replication group: db",
			"sync": "Cycle requested for replication group: db", "failover": "Failover started for replication group db (failing_over)",
			"failback": "Unable to fail back replication group db: Replication group " + groupOK + " is active: a failback needs it failed_over."}[a]
		if !strings.Contains(page, want) {
			t.Errorf("%s: no message %q", a, want)
		}
	}
	b.do("POST", "/dashboard/project/replication-groups/"+groupBreached+"/sync", url.Values{"csrf_token": {tok}, "name": {"logs"}})
	_, page = b.do("GET", "/dashboard/project/replication-groups/"+groupBreached, nil)
	if !strings.Contains(page, "Unable to sync replication group logs: Replication group "+groupBreached+" is paused: it needs to be active.") {
		t.Error("no error message for a refused sync")
	}
	want := []string{groupOK + ` {"drill":{"name":"dr1","point":"cycle-1"}}`, groupOK + ` {"drill":{"point":"gone"}}`,
		groupOK + ` {"pause":null}`, groupOK + ` {"resume":null}`, groupOK + ` {"sync":null}`, groupOK + ` {"failover":{}}`, groupOK + ` {"failback":null}`,
		groupBreached + ` {"sync":null}`}
	if strings.Join(r.api.groupActions, "\n") != strings.Join(want, "\n") {
		t.Errorf("actions\n%s\nwant\n%s", strings.Join(r.api.groupActions, "\n"), strings.Join(want, "\n"))
	}
	if resp, _ := b.do("POST", detail+"/explode", url.Values{"csrf_token": {tok}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown action: %d", resp.StatusCode)
	}
}

func TestReaderSeesNoGroupButtons(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	b.mustLogin("reader")
	_, page := b.do("GET", "/dashboard/project/replication-groups", nil)
	if !strings.Contains(page, ">db</a>") || strings.Contains(page, "/sync") || strings.Contains(page, "/pause") || strings.Contains(page, "<th>Actions</th>") {
		t.Errorf("reader's list:\n%s", page)
	}
	_, page = b.do("GET", "/dashboard/project/replication-groups/"+groupOK, nil)
	if !strings.Contains(page, "cycle-1") || strings.Contains(page, "/drill") || strings.Contains(page, "DR Drill") ||
		strings.Contains(page, "/failover\"") || strings.Contains(page, "/failback\"") {
		t.Errorf("reader's detail:\n%s", page)
	}
	// The API refuses anyway; the message says so.
	resp, _ := b.do("POST", "/dashboard/project/replication-groups/"+groupOK+"/sync", url.Values{"csrf_token": {csrfOf(t, page)}, "name": {"db"}})
	_, page = b.do("GET", resp.Header.Get("Location"), nil)
	if !strings.Contains(page, "Unable to sync replication group db: Policy doesn&#39;t allow replication:action") {
		t.Errorf("no error message:\n%s", page)
	}
}

// The groups' calls ask for 1.2 (the fake API's groups are 404 below
// it); the other calls keep the dashboard's microversion.
func TestGroupCallsSendTheirMicroversion(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	b.mustLogin("demo")
	for _, p := range []string{"/dashboard/project/replication-groups", "/dashboard/project/replication-groups/data",
		"/dashboard/project/replication-groups/" + groupOK, "/dashboard/project/replications/data"} {
		if resp, page := b.do("GET", p, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", p, resp.StatusCode, page)
		}
	}
	r.api.mu.Lock()
	defer r.api.mu.Unlock()
	groups := 0
	for _, v := range r.api.versions {
		want := " volume-ferry " + apiVersion
		if strings.HasPrefix(v, "/v1/replication-groups") {
			want = " volume-ferry " + replicationgroups.Microversion
			groups++
		}
		if !strings.HasSuffix(v, want) {
			t.Errorf("call %q, want OpenStack-API-Version:%s", v, want)
		}
	}
	if groups < 5 {
		t.Errorf("%d group calls: %v", groups, r.api.versions)
	}
}

// The buttons of a failed-over group: failback and sync, not failover;
// the forms post to the groups panel with the CSRF token and the way
// back.
func TestGroupFormsOfAFailedOverGroup(t *testing.T) {
	pages, err := parsePages()
	if err != nil {
		t.Fatal(err)
	}
	g := Group{ID: "g-1", Status: "failed_over", Source: replicationgroups.Source{Region: "RegionTwo"},
		Destination: replicationgroups.Destination{Region: "RegionOne"}, Members: []replicationgroups.Member{{VolumeID: "v"}}}
	for _, arg := range []any{g, &g} {
		forms, err := groupFormsOf("tok", "/next", arg, false)
		if err != nil {
			t.Fatal(err)
		}
		var buf strings.Builder
		for _, f := range forms {
			if err := pages["group"].ExecuteTemplate(&buf, "repl-form", f); err != nil {
				t.Fatal(err)
			}
		}
		out := buf.String()
		for _, want := range []string{`action="/dashboard/project/replication-groups/g-1/failover" data-show="can_failover" hidden>`,
			`/g-1/failback" data-show="can_failback">`, `/g-1/sync" data-show="can_sync">`, `/g-1/pause" data-show="can_pause" hidden>`,
			`name="csrf_token" value="tok"`, `name="next" value="/next"`, `>Pause Group</button>`,
			`data-confirm="Fail replication group g-1 back to RegionOne? Its failed-over volumes in RegionTwo (1) are quiesced`} {
			if !strings.Contains(out, want) {
				t.Errorf("forms lack %s:\n%s", want, out)
			}
		}
	}
	if _, err := groupFormsOf("tok", "/next", "g-1", false); err == nil {
		t.Error("gforms of a string")
	}
}
