package dashboard

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db/state"
	"github.com/ferry-project/ferry/services/client/replications"
)

// Two replications of project demo: db-disk within its RPO with two
// points, and golden breached, in error, without a point.
const (
	replOK       = "7c0e1d2a-3b4c-4d5e-8f60-718293a4b5c1"
	replBreached = "2f3e4d5c-6b7a-4890-a1b2-c3d4e5f60712"
)

var replOKJSON = `{"id": "` + replOK + `", "name": "db-disk", "description": "the database", "project_id": "p-demo", "user_id": "u-demo",
	"status": "active", "source": {"region": "RegionOne", "volume_id": "vol-1", "pool": "volumes", "image": "volume-vol-1"},
	"destination": {"region": "RegionTwo", "pool": "volumes", "image": "ferry-replica-` + replOK + `"},
	"interval_seconds": 300, "rpo_seconds": 900, "retention": {"keep_last": 6, "keep_hourly": 24, "keep_daily": 7},
	"bandwidth_limit": 104857600, "last_sync_at": "2026-12-03T10:00:00.000000Z", "lag_seconds": 42.4, "rpo_breached": false,
	"last_transfer_id": "0b7d2a3e-4c1f-4f43-9a55-0d5c1f7e9a01", "last_error": null, "points_count": 2, "bytes_last_cycle": 4194304,
	"next_run_at": "2026-12-03T10:05:00.000000Z", "cycles": {"completed": 12, "failed": 1, "skipped": 2},
	"created_at": "2026-12-02T09:00:00.000000Z", "updated_at": "2026-12-03T10:00:03.000000Z"}`

var replBreachedJSON = `{"id": "` + replBreached + `", "name": "golden", "description": "", "project_id": "p-demo", "user_id": "u-demo",
	"status": "error", "source": {"region": "RegionTwo", "volume_id": null, "pool": "images", "image": "golden"},
	"destination": {"region": "RegionOne", "pool": "images", "image": "ferry-replica-` + replBreached + `"},
	"interval_seconds": 60, "rpo_seconds": 120, "retention": {"keep_last": 1, "keep_hourly": 0, "keep_daily": 0},
	"bandwidth_limit": 0, "last_sync_at": null, "lag_seconds": null, "rpo_breached": true,
	"last_transfer_id": null, "last_error": "source volume golden was deleted in Cinder; the replica is kept", "points_count": 0, "bytes_last_cycle": 0,
	"next_run_at": "2026-12-01T08:01:00.000000Z", "cycles": {"completed": 0, "failed": 3, "skipped": 0},
	"created_at": "2026-12-01T08:00:00.000000Z", "updated_at": "2026-12-01T08:04:00.000000Z"}`

// db-disk's failovers, newest first: a failback that failed, and an
// unplanned failover done in 42.25s that preserved the old primary's
// later writes.
var (
	failoverDoneJSON = `{"id": "fo-1", "replication_id": "` + replOK + `", "kind": "failover", "planned": false, "force": true, "point": "ferry-p1",
	"status": "done", "step": "done", "from": {"region": "RegionOne", "pool": "volumes", "image": "volume-vol-1", "volume_id": "vol-1"},
	"to": {"region": "RegionTwo", "pool": "volumes", "image": "ferry-replica-` + replOK + `", "volume_id": "vol-new-primary"},
	"final_transfer_id": null, "preserved_image": "ferry-preserved-fo-1", "preserved_bytes": 8388608,
	"requested_at": "2026-12-02T10:00:00.000000Z", "available_at": "2026-12-02T10:00:42.250000Z", "finished_at": "2026-12-02T10:01:00.000000Z",
	"rto_seconds": 42.25, "error": null, "user_id": "u-demo"}`
	failbackErrorJSON = `{"id": "fo-2", "replication_id": "` + replOK + `", "kind": "failback", "planned": true, "force": false, "point": null,
	"status": "error", "step": "quiesce", "from": {"region": "RegionTwo", "pool": "volumes", "image": "ferry-replica-` + replOK + `", "volume_id": "vol-new-primary"},
	"to": {"region": "RegionOne", "pool": "volumes", "image": "volume-vol-1", "volume_id": "vol-1"},
	"final_transfer_id": null, "preserved_image": null, "preserved_bytes": 0,
	"requested_at": "2026-12-02T12:00:00.000000Z", "available_at": null, "finished_at": "2026-12-02T12:00:03.000000Z",
	"rto_seconds": null, "error": "Volume vol-new-primary in RegionTwo is attached", "user_id": "u-demo"}`
)

func (a *fakeAPI) serveReplications(w http.ResponseWriter, r *http.Request, user string) {
	p := strings.TrimPrefix(r.URL.Path, "/v1/replications")
	byID := map[string]string{replOK: replOKJSON, replBreached: replBreachedJSON}
	switch {
	case r.Method == http.MethodGet && p == "":
		io.WriteString(w, `{"replications": [`+replOKJSON+`, `+replBreachedJSON+`]}`)
	case r.Method == http.MethodGet && byID[strings.TrimPrefix(p, "/")] != "":
		io.WriteString(w, `{"replication": `+byID[strings.TrimPrefix(p, "/")]+`}`)
	case r.Method == http.MethodGet && p == "/"+replOK+"/points":
		io.WriteString(w, `{"points": [
			{"name": "ferry-p2", "created_at": "2026-12-03T10:00:00.000000Z", "digest": "sha256:0202", "bytes": 4194304, "size": 10737418240, "transfer_id": "0b7d2a3e-4c1f-4f43-9a55-0d5c1f7e9a01"},
			{"name": "ferry-p1", "created_at": "2026-12-03T09:55:00.000000Z", "digest": "sha256:0101", "bytes": 10737418240, "size": 10737418240, "transfer_id": "11111111-4c1f-4f43-9a55-0d5c1f7e9a01"}]}`)
	case r.Method == http.MethodGet && p == "/"+replBreached+"/points":
		io.WriteString(w, `{"points": []}`)
	case r.Method == http.MethodGet && strings.HasSuffix(p, "/drills"):
		io.WriteString(w, `{"drills": [{"id": "d-1", "replication_id": "`+replOK+`", "name": "dr-june", "point": "ferry-p1", "status": "available",
			"volume_id": "vol-drill-1", "requested_at": "2026-12-03T09:58:00.000000Z", "available_at": "2026-12-03T09:58:21.500000Z", "rto_seconds": 21.5, "error": null}]}`)
	case r.Method == http.MethodGet && p == "/"+replOK+"/failovers":
		io.WriteString(w, `{"failovers": [`+failbackErrorJSON+`, `+failoverDoneJSON+`]}`)
	case r.Method == http.MethodGet && strings.HasSuffix(p, "/failovers"):
		io.WriteString(w, `{"failovers": []}`)
	case r.Method == http.MethodGet && strings.HasSuffix(p, "/events"):
		io.WriteString(w, `{"events": [{"created_at": "2026-12-03T10:00:03.000000Z", "kind": "cycle_completed", "message": "4.0 MiB in 1.2s", "transfer_id": "0b7d2a3e-4c1f-4f43-9a55-0d5c1f7e9a01", "request_id": null},
			{"created_at": "2026-12-02T09:00:00.000000Z", "kind": "created", "message": "replication created", "transfer_id": null, "request_id": "req-9"}]}`)
	case r.Method == http.MethodPost && strings.HasSuffix(p, "/action"):
		if user == "reader" {
			fault(w, http.StatusForbidden, "forbidden", "Policy doesn't allow replication:action to be performed.")
			return
		}
		id := strings.TrimSuffix(strings.TrimPrefix(p, "/"), "/action")
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.replActions = append(a.replActions, id+" "+strings.TrimSpace(string(b)))
		a.mu.Unlock()
		var req map[string]json.RawMessage
		json.Unmarshal(b, &req)
		switch {
		case req["sync"] != nil && id == replBreached:
			fault(w, http.StatusConflict, "conflictingRequest", "Replication "+id+" is error; only an active replication syncs.")
		case req["drill"] != nil:
			var d struct{ Point, Name string }
			json.Unmarshal(req["drill"], &d)
			if d.Point != "ferry-p1" && d.Point != "ferry-p2" {
				fault(w, http.StatusNotFound, "itemNotFound", "Point "+d.Point+" could not be found.")
				return
			}
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"drill": {"id": "d-2", "replication_id": "`+id+`", "name": "`+d.Name+`", "point": "`+d.Point+`", "status": "creating",
				"volume_id": null, "requested_at": "2026-12-03T10:10:00.000000Z", "available_at": null, "rto_seconds": null, "error": null}}`)
		case req["failback"] != nil && id == replOK:
			fault(w, http.StatusConflict, "conflictingRequest", "Replication "+id+" is active: a failback needs it failed_over.")
		case req["failover"] != nil || req["failback"] != nil:
			kind := "failover"
			if req["failback"] != nil {
				kind = "failback"
			}
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"failover": {"id": "fo-new", "replication_id": "`+id+`", "kind": "`+kind+`", "planned": true, "force": false, "point": null,
				"status": "running", "step": "", "from": {"region": "RegionOne", "pool": "volumes", "image": "volume-vol-1", "volume_id": "vol-1"},
				"to": {"region": "RegionTwo", "pool": "volumes", "image": "ferry-replica-`+id+`", "volume_id": null}, "final_transfer_id": null,
				"preserved_image": null, "preserved_bytes": 0, "requested_at": "2026-12-03T11:00:00.000000Z", "available_at": null, "finished_at": null,
				"rto_seconds": null, "error": null, "user_id": "u-demo"}}`)
		default:
			w.WriteHeader(http.StatusAccepted)
		}
	default:
		fault(w, http.StatusNotFound, "itemNotFound", "Replication could not be found.")
	}
}

// replRowHTML is the table row of id.
func replRowHTML(t *testing.T, page, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<tr data-id="` + id + `">.*?</tr>`).FindString(page)
	if m == "" {
		t.Fatalf("no row for %s in\n%s", id, page)
	}
	return m
}

func TestReplicationsList(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	page := b.mustLogin("demo")
	if !strings.Contains(page, `href="/dashboard/project/replications" id="nav-replications"`) {
		t.Error("no Replications entry in the nav")
	}
	resp, page := b.do("GET", "/dashboard/project/replications", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("replications page: %d\n%s", resp.StatusCode, page)
	}
	ok, breached := replRowHTML(t, page, replOK), replRowHTML(t, page, replBreached)
	// Lag against the RPO, red only when breached.
	for _, want := range []string{">db-disk</a>", `badge badge-ok" data-f="status">active<`, "volume vol-1", "RegionTwo</span> volumes/ferry-replica-" + replOK,
		`<td class="nowrap lag" data-f="lag" data-breached>42s / RPO 15m 00s</td>`, `<td data-f="points_count">2</td>`, "2026-12-03 10:00:00",
		"/" + replOK + "/sync", "/" + replOK + "/pause"} {
		if !strings.Contains(ok, want) {
			t.Errorf("db-disk's row lacks %s:\n%s", want, ok)
		}
	}
	for _, want := range []string{`badge badge-err" data-f="status">error<`, "images/golden",
		`<td class="nowrap lag lag-breached" data-f="lag" data-breached>no point yet / RPO 2m 00s</td>`, `<td data-f="points_count">0</td>`} {
		if !strings.Contains(breached, want) {
			t.Errorf("golden's row lacks %s:\n%s", want, breached)
		}
	}
	// Buttons by status: an active one can sync and pause, one in error resume.
	if regexp.MustCompile(`/resume" data-show="can_resume">`).MatchString(ok) || !strings.Contains(ok, `/resume" data-show="can_resume" hidden>`) {
		t.Errorf("an active replication offers resume:\n%s", ok)
	}
	if !strings.Contains(breached, `/resume" data-show="can_resume">`) || !strings.Contains(breached, `/sync" data-show="can_sync" hidden>`) {
		t.Errorf("a replication in error:\n%s", breached)
	}
	// The live data.
	resp, data := b.do("GET", "/dashboard/project/replications/data", nil)
	var d struct{ Replications []replRow }
	if resp.StatusCode != 200 || json.Unmarshal([]byte(data), &d) != nil || len(d.Replications) != 2 {
		t.Fatalf("data: %d %s", resp.StatusCode, data)
	}
	if g := d.Replications[1]; !g.RPOBreached || g.Lag != "no point yet / RPO 2m 00s" || !g.CanResume || g.CanSync || g.Badge != "err" {
		t.Errorf("golden's data: %+v", g)
	}
	if g := d.Replications[0]; g.RPOBreached || g.Lag != "42s / RPO 15m 00s" || g.PointsCount != 2 || !g.CanPause {
		t.Errorf("db-disk's data: %+v", g)
	}
	resp, data = b.do("GET", "/dashboard/project/replications/data?id=nope", nil)
	if resp.StatusCode != 404 || !strings.Contains(data, "could not be found") {
		t.Errorf("data of a missing one: %d %s", resp.StatusCode, data)
	}
}

// openReplication logs demo in and opens db-disk's page.
func openReplication(t *testing.T) (r *rig, b *browser, detail, page string) {
	t.Helper()
	r = newRig(t, time.Hour)
	b = r.browser()
	b.mustLogin("demo")
	detail = "/dashboard/project/replications/" + replOK
	resp, page := b.do("GET", detail, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("detail: %d\n%s", resp.StatusCode, page)
	}
	return r, b, detail, page
}

func TestReplicationDetailAndDrill(t *testing.T) {
	r, b, detail, page := openReplication(t)
	for _, want := range []string{"<h1>db-disk</h1>", "the database", `data-f="lag" data-breached id="lag">42s / RPO 15m 00s</dd>`,
		"last 6, hourly 24, daily 7", "100.0 MiB/s", "12 completed, 1 failed, 2 skipped", "vol-1",
		// the points, newest first, each with a drill form
		`<td class="mono">ferry-p2</td>`, `<td class="mono">ferry-p1</td>`, "sha256:0202",
		`<input type="hidden" name="point" value="ferry-p2">`, `<input type="hidden" name="point" value="ferry-p1">`,
		// drills with their time to available, events
		"dr-june", "vol-drill-1", "<td>22s</td>", "cycle_completed", "4.0 MiB in 1.2s", "req-9"} {
		if !strings.Contains(page, want) {
			t.Errorf("detail page lacks %s", want)
		}
	}
	if strings.Index(page, "ferry-p2") > strings.Index(page, "ferry-p1") {
		t.Error("points out of order")
	}
	if n := strings.Count(page, `/`+replOK+`/drill"`); n != 2 {
		t.Errorf("%d drill forms, want one per point", n)
	}
	tok := csrfOf(t, page)
	drill := detail + "/drill"
	// No CSRF token, or another origin: refused before the API.
	if resp, _ := b.do("POST", drill, url.Values{"point": {"ferry-p1"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("drill without a token: %d", resp.StatusCode)
	}
	if resp, _ := b.do("POST", drill, url.Values{"csrf_token": {tok}, "point": {"ferry-p1"}}, "Origin", "https://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site drill: %d", resp.StatusCode)
	}
	if len(r.api.replActions) != 0 {
		t.Fatalf("actions reached the API: %v", r.api.replActions)
	}
	resp, _ := b.do("POST", drill, url.Values{"csrf_token": {tok}, "point": {"ferry-p1"}, "drill_name": {" dr1 "}, "name": {"db-disk"}, "next": {detail}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != detail {
		t.Fatalf("drill: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if want := replOK + ` {"drill":{"name":"dr1","point":"ferry-p1"}}`; len(r.api.replActions) != 1 || r.api.replActions[0] != want {
		t.Fatalf("API got %q, want %q", r.api.replActions, want)
	}
	_, page = b.do("GET", detail, nil)
	if !strings.Contains(page, "Drill d-2 started from point ferry-p1 of replication db-disk") {
		t.Error("no success message after the drill")
	}
	// An unknown point: the API's message.
	b.do("POST", drill, url.Values{"csrf_token": {tok}, "point": {"ferry-gone"}, "name": {"db-disk"}, "next": {detail}})
	_, page = b.do("GET", detail, nil)
	if !strings.Contains(page, "Unable to drill replication db-disk: Point ferry-gone could not be found.") {
		t.Error("no error message for an unknown point")
	}
	// Pause, resume, sync; sync of the one in error is refused by the API.
	for _, a := range []string{"pause", "resume", "sync"} {
		if resp, _ := b.do("POST", detail+"/"+a, url.Values{"csrf_token": {tok}}); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("%s: %d", a, resp.StatusCode)
		}
	}
	b.do("POST", "/dashboard/project/replications/"+replBreached+"/sync", url.Values{"csrf_token": {tok}, "name": {"golden"}})
	want := []string{replOK + ` {"pause":null}`, replOK + ` {"resume":null}`, replOK + ` {"sync":null}`, replBreached + ` {"sync":null}`}
	if got := r.api.replActions[2:]; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("actions %q, want %q", got, want)
	}
	_, page = b.do("GET", "/dashboard/project/replications/"+replBreached, nil)
	for _, w := range []string{"Unable to sync replication golden: Replication " + replBreached + " is error", "No points yet",
		"source volume golden was deleted in Cinder", `lag lag-breached" data-f="lag"`} {
		if !strings.Contains(page, w) {
			t.Errorf("golden's page lacks %s", w)
		}
	}
	if resp, _ := b.do("POST", detail+"/explode", url.Values{"csrf_token": {tok}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown action: %d", resp.StatusCode)
	}
	if resp, _ := b.do("GET", "/dashboard/project/replications/nope", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("missing replication: %d", resp.StatusCode)
	}
}

func TestReaderSeesNoReplicationButtons(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	b.mustLogin("reader")
	_, page := b.do("GET", "/dashboard/project/replications", nil)
	if !strings.Contains(page, "db-disk") || strings.Contains(page, "/sync") || strings.Contains(page, "/pause") {
		t.Errorf("reader's list:\n%s", page)
	}
	_, page = b.do("GET", "/dashboard/project/replications/"+replOK, nil)
	if !strings.Contains(page, "ferry-p1") || strings.Contains(page, "/drill") || strings.Contains(page, "DR Drill") ||
		strings.Contains(page, "/failover\"") || strings.Contains(page, "/failback\"") {
		t.Errorf("reader's detail:\n%s", page)
	}
	// The API refuses anyway; the message says so.
	resp, _ := b.do("POST", "/dashboard/project/replications/"+replOK+"/drill", url.Values{"csrf_token": {csrfOf(t, page)}, "point": {"ferry-p1"}})
	_, page = b.do("GET", resp.Header.Get("Location"), nil)
	if !strings.Contains(page, "Policy doesn&#39;t allow replication:action") {
		t.Errorf("no error message:\n%s", page)
	}
}

func TestReplicationFormatting(t *testing.T) {
	lag := func(f float64) *float64 { return &f }
	for _, tc := range []struct {
		r    Replication
		want string
	}{
		{Replication{RPOSeconds: 60, LagSeconds: lag(4.6)}, "5s / RPO 1m 00s"},
		{Replication{RPOSeconds: 3600, LagSeconds: lag(3725)}, "1h 02m / RPO 1h 00m"},
		{Replication{RPOSeconds: 86400, LagSeconds: lag(3 * 86400)}, "3d 00h / RPO 24h 00m"},
		{Replication{RPOSeconds: 30}, "no point yet / RPO 30s"},
	} {
		if got := lagText(&tc.r); got != tc.want {
			t.Errorf("lagText = %q, want %q", got, tc.want)
		}
	}
	for st, want := range map[string][3]bool{"active": {true, false, true}, "paused": {false, true, false}, "error": {false, true, false}, "deleting": {}} {
		if got := [3]bool{canPause(st), canResume(st), canSync(st)}; got != want {
			t.Errorf("%s: pause/resume/sync %v, want %v", st, got, want)
		}
	}
}

// A transfer that is a replication's cycle links to its replication.
func TestTransferDetailLinksItsReplication(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	b.mustLogin("demo")
	_, page := b.do("GET", "/dashboard/project/transfers/"+transferID, nil)
	if strings.Contains(page, "replication-link") {
		t.Error("a transfer without a replication links to one")
	}
	cycleJSON := strings.Replace(transferJSON, `"finished_at": null}`, `"finished_at": null, "replication_id": "`+replOK+`"}`, 1)
	if cycleJSON == transferJSON {
		t.Fatal("fixture changed")
	}
	h, err := New(Options{AuthURL: r.h.opts.AuthURL, API: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v1/transfers/"+transferID && served11(req) { // replication_id is since 1.1
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"transfer": `+cycleJSON+`}`)
			return
		}
		r.api.ServeHTTP(w, req)
	})})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	b2 := r.browser()
	b2.url = srv.URL
	b2.mustLogin("demo")
	_, page = b2.do("GET", "/dashboard/project/transfers/"+transferID, nil)
	if !strings.Contains(page, `href="/dashboard/project/replications/`+replOK+`" id="replication-link"`) {
		t.Errorf("no link to the replication:\n%s", page)
	}
}

// Every call the dashboard makes to the API asks for the microversion it
// was written for.
func TestEveryAPICallSendsTheMicroversion(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	b.mustLogin("admin")
	for _, p := range []string{"/dashboard/project/transfers/data", "/dashboard/project/transfers/" + transferID,
		"/dashboard/project/replications/data", "/dashboard/project/replications/" + replOK, "/dashboard/admin/services"} {
		if resp, page := b.do("GET", p, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", p, resp.StatusCode, page)
		}
	}
	r.api.mu.Lock()
	defer r.api.mu.Unlock()
	if len(r.api.versions) < 5 {
		t.Fatalf("%d API calls: %v", len(r.api.versions), r.api.versions)
	}
	for _, v := range r.api.versions {
		if !strings.HasSuffix(v, " volume-ferry "+apiVersion) {
			t.Errorf("call %q, want OpenStack-API-Version: volume-ferry %s", v, apiVersion)
		}
	}
}

// TestReplicationStatusButtons: every replication status has a badge and
// the buttons the API accepts in it.
func TestReplicationStatusButtons(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range []struct {
		status                                  string
		badge                                   string
		pause, resume, sync, failover, failback bool
	}{
		{"active", "ok", true, false, true, true, false},
		{"paused", "muted", false, true, false, true, false},
		{"error", "err", false, true, false, false, false}, // an unplanned failover only: not the dashboard's
		{"deleting", "busy", false, false, false, false, false},
		{"failing_over", "busy", false, false, false, false, false},
		{"failed_over", "ok", false, false, true, false, true},
		{"failing_back", "busy", false, false, false, false, false},
	} {
		seen[tc.status] = true
		if b := replBadge(tc.status); b != tc.badge {
			t.Errorf("%s: badge %q, want %q", tc.status, b, tc.badge)
		}
		if canPause(tc.status) != tc.pause || canResume(tc.status) != tc.resume || canSync(tc.status) != tc.sync {
			t.Errorf("%s: pause %v resume %v sync %v", tc.status, canPause(tc.status), canResume(tc.status), canSync(tc.status))
		}
		if canFailover(tc.status) != tc.failover || canFailback(tc.status) != tc.failback {
			t.Errorf("%s: failover %v failback %v", tc.status, canFailover(tc.status), canFailback(tc.status))
		}
		st := state.ReplicationStatus(tc.status)
		if canPause(tc.status) != st.CanPause() || canResume(tc.status) != st.CanResume() || canSync(tc.status) != st.Schedules() ||
			(canFailover(tc.status) && !st.CanFailover()) || canFailback(tc.status) != st.CanFailback() {
			t.Errorf("%s: the buttons disagree with the state machine", tc.status)
		}
	}
	for _, s := range state.AllReplication() {
		if !seen[string(s)] {
			t.Errorf("status %s is not covered", s)
		}
	}
}

// The list offers a planned failover of an active (or paused) replication
// with a confirm, not of one in error; neither offers a failback.
func TestReplicationsListFailoverButtons(t *testing.T) {
	r := newRig(t, time.Hour)
	b := r.browser()
	b.mustLogin("demo")
	_, page := b.do("GET", "/dashboard/project/replications", nil)
	ok, breached := replRowHTML(t, page, replOK), replRowHTML(t, page, replBreached)
	for _, want := range []string{`action="/dashboard/project/replications/` + replOK + `/failover" data-show="can_failover">`,
		`class="btn btn-sm btn-danger" data-confirm="Fail replication db-disk over to RegionTwo? Its source volume in RegionOne is made read-only`,
		`/failback" data-show="can_failback" hidden>`} {
		if !strings.Contains(ok, want) {
			t.Errorf("db-disk's row lacks %s:\n%s", want, ok)
		}
	}
	for _, want := range []string{`/failover" data-show="can_failover" hidden>`, `/failback" data-show="can_failback" hidden>`} {
		if !strings.Contains(breached, want) {
			t.Errorf("golden's row lacks %s:\n%s", want, breached)
		}
	}
	_, data := b.do("GET", "/dashboard/project/replications/data", nil)
	var d struct{ Replications []replRow }
	if json.Unmarshal([]byte(data), &d) != nil || len(d.Replications) != 2 {
		t.Fatalf("data: %s", data)
	}
	if o, g := d.Replications[0], d.Replications[1]; !o.CanFailover || o.CanFailback || g.CanFailover || g.CanFailback {
		t.Errorf("can_failover/can_failback: db-disk %+v, golden %+v", o, g)
	}
	if !strings.Contains(data, `"can_failover":true`) || !strings.Contains(data, `"can_failback":false`) {
		t.Errorf("the script's keys: %s", data)
	}
}

// A failed-over replication offers the failback and sync, not the
// failover; the forms carry the CSRF token and the way back.
func TestReplicationFormsOfAFailedOverReplication(t *testing.T) {
	pages, err := parsePages()
	if err != nil {
		t.Fatal(err)
	}
	rp := Replication{ID: "r-1", Status: "failed_over", Source: replications.Source{Region: "RegionTwo"}, Destination: replications.Destination{Region: "RegionOne"}}
	for _, arg := range []any{rp, &rp} {
		forms, err := replFormsOf("tok", "/next", arg, false)
		if err != nil {
			t.Fatal(err)
		}
		var buf strings.Builder
		for _, f := range forms {
			if err := pages["replication"].ExecuteTemplate(&buf, "repl-form", f); err != nil {
				t.Fatal(err)
			}
		}
		out := buf.String()
		for _, want := range []string{`/r-1/failover" data-show="can_failover" hidden>`, `/r-1/failback" data-show="can_failback">`,
			`/r-1/sync" data-show="can_sync">`, `/r-1/pause" data-show="can_pause" hidden>`, `/r-1/resume" data-show="can_resume" hidden>`,
			`name="csrf_token" value="tok"`, `name="next" value="/next"`, `>Pause Replication</button>`,
			`<button type="submit" class="btn" data-confirm="Fail replication r-1 back to RegionOne? The failed-over volume in RegionTwo is made read-only`} {
			if !strings.Contains(out, want) {
				t.Errorf("forms lack %s:\n%s", want, out)
			}
		}
	}
	if _, err := replFormsOf("tok", "/next", "r-1", false); err == nil {
		t.Error("rforms of a string")
	}
}

func TestReplicationDetailFailovers(t *testing.T) {
	r, b, detail, page := openReplication(t)
	table := regexp.MustCompile(`(?s)<table class="table" id="failovers">.*?</table>`).FindString(page)
	for _, want := range []string{"<th>RTO</th>",
		// newest first: the failback in error, then the failover done in 42s
		`<tr data-failover="fo-2"><td>failback</td>`, `<span class="badge badge-err">error</span></td><td>quiesce</td>`,
		"Volume vol-new-primary in RegionTwo is attached",
		`<tr data-failover="fo-1"><td>failover (unplanned) (forced)</td><td class="mono">ferry-p1</td>`, `<span class="badge badge-ok">done</span>`,
		`<span class="region">RegionOne</span> volumes/volume-vol-1`, `<td class="mono">vol-new-primary</td>`, "2026-12-02 10:00:42",
		"<td>42s</td>", "ferry-preserved-fo-1 (8.0 MiB)"} {
		if !strings.Contains(table, want) {
			t.Errorf("failovers table lacks %s:\n%s", want, table)
		}
	}
	if strings.Index(table, "fo-2") > strings.Index(table, "fo-1") {
		t.Error("failovers out of order")
	}
	if !strings.Contains(page, `class="btn btn-danger" data-confirm="Fail replication db-disk over to RegionTwo?`) {
		t.Error("no Failover button on the detail page")
	}
	_, golden := b.do("GET", "/dashboard/project/replications/"+replBreached, nil)
	if !strings.Contains(golden, `<tr class="empty"><td colspan="12">No items to display.</td></tr>`) {
		t.Error("golden's empty failovers table")
	}
	// Failover: planned, the API's answer in the message; failback of an
	// active one: the API's 409.
	tok := csrfOf(t, page)
	for _, a := range []string{"failover", "failback"} {
		resp, _ := b.do("POST", detail+"/"+a, url.Values{"csrf_token": {tok}, "name": {"db-disk"}, "next": {detail}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != detail {
			t.Fatalf("%s: %d %s", a, resp.StatusCode, resp.Header.Get("Location"))
		}
		_, page = b.do("GET", detail, nil)
		want := map[string]string{"failover": "Failover fo-new started for replication db-disk",
			"failback": "Unable to fail back replication db-disk: Replication " + replOK + " is active: a failback needs it failed_over."}[a]
		if !strings.Contains(page, want) {
			t.Errorf("%s: no message %q", a, want)
		}
	}
	want := []string{replOK + ` {"failover":{}}`, replOK + ` {"failback":null}`}
	if strings.Join(r.api.replActions, "\n") != strings.Join(want, "\n") {
		t.Errorf("actions %q, want %q", r.api.replActions, want)
	}
	// Without the CSRF token: refused before the API.
	if resp, _ := b.do("POST", detail+"/failover", url.Values{"name": {"db-disk"}}); resp.StatusCode != http.StatusForbidden || len(r.api.replActions) != 2 {
		t.Errorf("failover without a token: %d, %d actions", resp.StatusCode, len(r.api.replActions))
	}
}

func TestRunBadgeAndRTO(t *testing.T) {
	for st, want := range map[string]string{"available": "ok", "done": "ok", "error": "err", "creating": "busy", "running": "busy"} {
		if got := runBadge(st); got != want {
			t.Errorf("runBadge(%s) = %s, want %s", st, got, want)
		}
	}
	rto := 3725.4
	if got := rtoText(&rto); got != "1h 02m" {
		t.Errorf("rtoText = %q", got)
	}
	if got := rtoText(nil); got != "-" {
		t.Errorf("rtoText(nil) = %q", got)
	}
}
