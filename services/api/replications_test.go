package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/api/cinder"
)

func newReplicationAPITest(t *testing.T) (*apiTest, *fakeCinder) {
	t.Helper()
	fc := &fakeCinder{volumes: map[string]*cinder.SourceVolume{
		"v1":  {Spec: cinder.VolumeSpec{Kind: "volume", ID: uid("v1"), Name: "data", SizeGiB: 1, ProjectID: "demo-project"}, Pool: "volumes", Image: "volume-" + uid("v1")},
		"v2":  {Spec: cinder.VolumeSpec{Kind: "volume", ID: uid("v2"), Name: "more", SizeGiB: 1, ProjectID: "demo-project"}, Pool: "volumes", Image: "volume-" + uid("v2")},
		"alt": {Spec: cinder.VolumeSpec{Kind: "volume", ID: uid("alt"), Name: "alt's", SizeGiB: 1, ProjectID: "alt-project"}, Pool: "volumes", Image: "volume-" + uid("alt")},
	}}
	a := newCinderAPITest(t, fc)
	a.version = "1.1" // replications are since 1.1
	return a, fc
}

func replicationBody(volume, extra string) string {
	return `{"replication": {"name": "protect", "source": {"region": "RegionOne", "volume_id": "` + uid(volume) + `"}, ` +
		`"destination": {"region": "RegionTwo"}, "interval_seconds": 300, "rpo_seconds": 900` + extra + `}}`
}

func (a *apiTest) createReplication(who [3]string, volume string) map[string]any {
	a.t.Helper()
	code, m := a.do(who, "POST", "/v1/replications", replicationBody(volume, ""))
	if code != 202 {
		a.t.Fatalf("create replication: %d %v", code, m)
	}
	return m["replication"].(map[string]any)
}

func message(m map[string]any) string {
	for _, v := range m {
		if f, ok := v.(map[string]any); ok {
			s, _ := f["message"].(string)
			return s
		}
	}
	return ""
}

func TestReplicationCreateShow(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	r := a.createReplication(demo, "v1")
	id := r["id"].(string)
	src, dst := r["source"].(map[string]any), r["destination"].(map[string]any)
	ret := r["retention"].(map[string]any)
	if r["status"] != "active" || r["project_id"] != "demo-project" || src["volume_id"] != uid("v1") || src["pool"] != "volumes" ||
		src["image"] != "volume-"+uid("v1") || dst["region"] != "RegionTwo" || dst["pool"] != "volumes" || dst["image"] != "ferry-replica-"+id ||
		r["interval_seconds"].(float64) != 300 || r["rpo_seconds"].(float64) != 900 || ret["keep_last"].(float64) != DefaultKeepLast ||
		ret["keep_hourly"].(float64) != 0 || r["lag_seconds"] != nil || r["last_sync_at"] != nil || r["rpo_breached"] != false ||
		r["next_run_at"] == nil || r["cycles"].(map[string]any)["skipped"].(float64) != 0 {
		t.Errorf("created %v", r)
	}
	for _, k := range []string{"name", "description", "user_id", "bandwidth_limit", "last_transfer_id", "last_error", "points_count",
		"bytes_last_cycle", "created_at", "updated_at"} {
		if _, ok := r[k]; !ok {
			t.Errorf("the view lacks %q", k)
		}
	}
	code, m := a.do(reader, "GET", "/v1/replications/"+id, "")
	if code != 200 || m["replication"].(map[string]any)["id"] != id {
		t.Errorf("show as a reader: %d %v", code, m)
	}
	// Another project's is not found, whatever the action.
	for _, req := range []struct{ method, path, body string }{
		{"GET", "/v1/replications/" + id, ""},
		{"GET", "/v1/replications/" + id + "/points", ""},
		{"GET", "/v1/replications/" + id + "/events", ""},
		{"GET", "/v1/replications/" + id + "/drills", ""},
		{"PUT", "/v1/replications/" + id, `{"replication": {"rpo_seconds": 60}}`},
		{"POST", "/v1/replications/" + id + "/action", `{"pause": null}`},
		{"DELETE", "/v1/replications/" + id, ""},
	} {
		if code, m := a.do(alt, req.method, req.path, req.body); code != 404 || m["itemNotFound"] == nil {
			t.Errorf("alt %s %s: %d %v", req.method, req.path, code, m)
		}
	}
	if code, _ := a.do(demo, "GET", "/v1/replications/not-a-uuid", ""); code != 404 {
		t.Errorf("a malformed id: %d", code)
	}
	// The admin sees it (and may list every project's).
	if code, _ := a.do(admin, "GET", "/v1/replications/"+id, ""); code != 200 {
		t.Errorf("admin show: %d", code)
	}
	code, m = a.do(admin, "GET", "/v1/replications?all_projects=true", "")
	if code != 200 || len(m["replications"].([]any)) != 1 {
		t.Errorf("admin list all: %d %v", code, m)
	}
	if code, _ := a.do(demo, "GET", "/v1/replications?all_projects=true", ""); code != 403 {
		t.Errorf("member list all: %d", code)
	}
	if code, m := a.do(alt, "GET", "/v1/replications", ""); code != 200 || len(m["replications"].([]any)) != 0 {
		t.Errorf("alt's list: %d %v", code, m)
	}
	// Events: created.
	code, m = a.do(demo, "GET", "/v1/replications/"+id+"/events", "")
	if ev := m["events"].([]any); code != 200 || len(ev) != 1 || ev[0].(map[string]any)["kind"] != "created" {
		t.Errorf("events: %d %v", code, m)
	}
	// The same source twice: 409.
	if code, m := a.do(demo, "POST", "/v1/replications", replicationBody("v1", "")); code != 409 {
		t.Errorf("a second replication of the same volume: %d %v", code, m)
	}
	// A volume the caller does not see: 404.
	if code, m := a.do(demo, "POST", "/v1/replications", replicationBody("alt", "")); code != 404 {
		t.Errorf("alt's volume as demo: %d %v", code, m)
	}
}

func TestReplicationCreateRefusals(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	imageBody := `{"replication": {"source": {"region": "RegionOne", "pool": "volumes", "image": "img"}, "destination": {"region": "RegionTwo"}, "interval_seconds": 60, "rpo_seconds": 120}}`
	for _, tc := range []struct {
		name string
		who  [3]string
		body string
		code int
		msg  string
	}{
		{"a reader cannot create", reader, replicationBody("v1", ""), 403, "Policy doesn't allow replication:create"},
		{"a member cannot name an image", demo, imageBody, 403, "replication:create:image_source"},
		{"interval below the minimum", demo, strings.Replace(replicationBody("v1", ""), `"interval_seconds": 300`, `"interval_seconds": 5`, 1), 400, "replication.interval_seconds must be between 60"},
		{"interval missing", demo, strings.Replace(replicationBody("v1", ""), `"interval_seconds": 300,`, ``, 1), 400, "replication.interval_seconds is required"},
		{"interval not a number", demo, strings.Replace(replicationBody("v1", ""), `300`, `"5m"`, 1), 400, "malformed request body: field"},
		{"rpo zero", demo, strings.Replace(replicationBody("v1", ""), `"rpo_seconds": 900`, `"rpo_seconds": 0`, 1), 400, "replication.rpo_seconds must be between 1"},
		{"rpo missing", demo, strings.Replace(replicationBody("v1", ""), `, "rpo_seconds": 900`, ``, 1), 400, "replication.rpo_seconds is required"},
		{"keep_last zero", demo, replicationBody("v1", `, "retention": {"keep_last": 0}`), 400, "replication.retention.keep_last must be between 1"},
		{"keep_hourly negative", demo, replicationBody("v1", `, "retention": {"keep_last": 1, "keep_hourly": -1}`), 400, "replication.retention.keep_hourly"},
		{"unknown retention field", demo, replicationBody("v1", `, "retention": {"keep_weekly": 1}`), 400, `unknown field "keep_weekly"`},
		{"unknown field", demo, replicationBody("v1", `, "schedule": "*/5"`), 400, `unknown field "schedule"`},
		{"negative bandwidth", demo, replicationBody("v1", `, "bandwidth_limit": -1`), 400, "replication.bandwidth_limit"},
		{"same region", demo, strings.Replace(replicationBody("v1", ""), "RegionTwo", "RegionOne", 1), 400, "source and destination are both in region"},
		{"unknown region", demo, strings.Replace(replicationBody("v1", ""), "RegionTwo", "RegionNine", 1), 400, `replication.destination.region "RegionNine"`},
		{"not a UUID", demo, `{"replication": {"source": {"region": "RegionOne", "volume_id": "v1"}, "destination": {"region": "RegionTwo"}, "interval_seconds": 300, "rpo_seconds": 900}}`, 400, "is not a UUID"},
		{"a backup source", demo, `{"replication": {"source": {"region": "RegionOne", "backup_id": "` + uid("b1") + `"}, "destination": {"region": "RegionTwo"}, "interval_seconds": 300, "rpo_seconds": 900}}`, 400, "replication.source takes volume_id"},
		{"a destination image", demo, strings.Replace(replicationBody("v1", ""), `"region": "RegionTwo"`, `"region": "RegionTwo", "image": "mine"`, 1), 400, "replication.destination.image cannot be given"},
		{"no body", demo, ``, 400, "malformed request body: empty body"},
		{"trailing data", demo, replicationBody("v1", "") + `{}`, 400, "data after the JSON object"},
		{"not wrapped", demo, `{"name": "x"}`, 400, `unknown field "name"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, m := a.do(tc.who, "POST", "/v1/replications", tc.body)
			if code != tc.code || !strings.Contains(message(m), tc.msg) {
				t.Errorf("%d %q, want %d containing %q", code, message(m), tc.code, tc.msg)
			}
		})
	}
	// The admin may name an image; the replica goes to the source's pool.
	code, m := a.do(admin, "POST", "/v1/replications", imageBody)
	if code != 202 {
		t.Fatalf("admin image source: %d %v", code, m)
	}
	if r := m["replication"].(map[string]any); r["project_id"] != "admin-project" || r["source"].(map[string]any)["volume_id"] != nil ||
		r["destination"].(map[string]any)["pool"] != "volumes" {
		t.Errorf("image replication %v", r)
	}
}

func TestReplicationUpdate(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	id := a.createReplication(demo, "v1")["id"].(string)
	code, m := a.do(demo, "PUT", "/v1/replications/"+id, `{"replication": {"interval_seconds": 120, "rpo_seconds": 600, "retention": {"keep_last": 5, "keep_daily": 7}, "bandwidth_limit": 1048576, "name": "renamed"}}`)
	r, _ := m["replication"].(map[string]any)
	if code != 200 || r["interval_seconds"].(float64) != 120 || r["rpo_seconds"].(float64) != 600 || r["bandwidth_limit"].(float64) != 1048576 ||
		r["name"] != "renamed" || r["retention"].(map[string]any)["keep_last"].(float64) != 5 || r["retention"].(map[string]any)["keep_daily"].(float64) != 7 {
		t.Fatalf("update: %d %v", code, m)
	}
	_, m = a.do(demo, "GET", "/v1/replications/"+id+"/events", "")
	ev := m["events"].([]any)
	if last := ev[len(ev)-1].(map[string]any); last["kind"] != "updated" || !strings.Contains(last["message"].(string), "interval 300 s → 120 s") ||
		!strings.HasPrefix(last["request_id"].(string), "req-") {
		t.Errorf("update event %v", last)
	}
	for _, tc := range []struct {
		who  [3]string
		body string
		code int
		msg  string
	}{
		{reader, `{"replication": {"rpo_seconds": 60}}`, 403, "replication:update"},
		{demo, `{"replication": {}}`, 400, "names nothing to change"},
		{demo, `{"replication": {"interval_seconds": 1}}`, 400, "interval_seconds"},
		{demo, `{"replication": {"retention": {"keep_last": 0}}}`, 400, "keep_last"},
		{demo, `{"replication": {"source": {"region": "RegionTwo"}}}`, 400, `unknown field "source"`},
	} {
		if code, m := a.do(tc.who, "PUT", "/v1/replications/"+id, tc.body); code != tc.code || !strings.Contains(message(m), tc.msg) {
			t.Errorf("PUT %s as %s: %d %q, want %d %q", tc.body, tc.who[0], code, message(m), tc.code, tc.msg)
		}
	}
}

func TestReplicationActions(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	id := a.createReplication(demo, "v1")["id"].(string)
	action := func(who [3]string, body string) (int, map[string]any) {
		return a.do(who, "POST", "/v1/replications/"+id+"/action", body)
	}
	status := func() string {
		_, m := a.do(demo, "GET", "/v1/replications/"+id, "")
		return m["replication"].(map[string]any)["status"].(string)
	}
	if code, _ := action(reader, `{"pause": null}`); code != 403 {
		t.Errorf("a reader pauses: %d", code)
	}
	if code, m := action(demo, `{"pause": null}`); code != 202 || status() != "paused" {
		t.Fatalf("pause: %d %v", code, m)
	}
	for _, body := range []string{`{"pause": null}`, `{"sync": null}`} {
		if code, m := action(demo, body); code != 409 || m["conflictingRequest"] == nil {
			t.Errorf("%s while paused: %d %v", body, code, m)
		}
	}
	if code, _ := action(demo, `{"resume": null}`); code != 202 || status() != "active" {
		t.Errorf("resume: %d", code)
	}
	if code, m := action(demo, `{"resume": null}`); code != 409 {
		t.Errorf("resume while active: %d %v", code, m)
	}
	// Sync: due now.
	before := time.Now().Add(-time.Second)
	if code, m := action(demo, `{"sync": null}`); code != 202 {
		t.Fatalf("sync: %d %v", code, m)
	}
	r, err := a.db.GetReplication(context.Background(), id, db.AllProjectsScope())
	if err != nil || r.NextRunAt.Before(before) || r.NextRunAt.After(time.Now()) {
		t.Errorf("next run after a sync: %v %v", r.NextRunAt, err)
	}
	for _, tc := range []struct {
		body, msg string
	}{
		{`{}`, "exactly one action"},
		{`{"pause": null, "resume": null}`, "exactly one action"},
		{`{"promote": null}`, `Unknown action "promote"`},
		{`{"failover": {"point": "p"}}`, `needs "force": true`},
		{`{"failover": {"point": "p", "later": true}}`, `unknown field "later"`},
		{`{"failback": {"point": "p", "force": true}}`, "failback takes no point"},
		{`{"sync": {"now": true}}`, "takes no argument"},
		{`{"drill": {}}`, "drill.point is required"},
		{`{"drill": {"point": "p", "clone": true}}`, `unknown field "clone"`},
		{`[1]`, "Malformed request body"},
	} {
		if code, m := action(demo, tc.body); code != 400 || !strings.Contains(message(m), tc.msg) {
			t.Errorf("%s: %d %q, want 400 %q", tc.body, code, message(m), tc.msg)
		}
	}
	if code, m := action(demo, `{"drill": {"point": "ferry-nope"}}`); code != 404 || !strings.Contains(message(m), `Point "ferry-nope"`) {
		t.Errorf("drill of an unknown point: %d %v", code, m)
	}
}

func TestReplicationDrillAndPoints(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	id := a.createReplication(demo, "v1")["id"].(string)
	ctx := context.Background()
	d := a.db
	// A cycle completes (as the scheduler and the agents would): a point.
	r, err := d.GetReplication(ctx, id, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	now := d.Now()
	tr := &db.Transfer{ProjectID: r.ProjectID, Mode: db.ModeAuto, SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: r.SourceImage,
		DestRegion: "RegionTwo", DestPool: "volumes", DestImage: r.DestImage}
	st, _, err := d.StartCycle(ctx, id, now.Add(time.Hour), now.Add(2*time.Hour), tr, nil)
	if err != nil || st == nil {
		t.Fatalf("start cycle: %v %v", st, err)
	}
	for _, to := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying} {
		if _, err := d.TransitionTransfer(ctx, st.ID, to, db.TransitionOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	snap, n := "ferry-"+st.ID, int64(4096)
	if _, err := d.TransitionTransfer(ctx, st.ID, db.StatusCompleted, db.TransitionOpts{Fields: db.TransferFields{DestSnapshot: &snap, BytesTransferred: &n},
		Cycle: &db.CycleOutcome{SnapshotAt: now}}); err != nil {
		t.Fatal(err)
	}
	code, m := a.do(reader, "GET", "/v1/replications/"+id+"/points", "")
	ps := m["points"].([]any)
	if code != 200 || len(ps) != 1 || ps[0].(map[string]any)["name"] != snap || ps[0].(map[string]any)["transfer_id"] != st.ID {
		t.Fatalf("points: %d %v", code, m)
	}
	// The cycle is listed with its replication.
	code, m = a.do(demo, "GET", "/v1/transfers?replication_id="+id, "")
	if ts := m["transfers"].([]any); code != 200 || len(ts) != 1 || ts[0].(map[string]any)["replication_id"] != id {
		t.Errorf("transfers of the replication: %d %v", code, m)
	}
	if code, m := a.do(demo, "GET", "/v1/transfers?replication_id=x", ""); code != 400 {
		t.Errorf("a malformed replication_id filter: %d %v", code, m)
	}
	// A failed cycle is not retried by hand.
	if code, m := a.do(demo, "POST", "/v1/transfers/"+st.ID+"/action", `{"retry": null}`); code != 409 {
		t.Errorf("retry of a cycle: %d %v", code, m)
	}
	// The view: lag and no breach.
	_, m = a.do(demo, "GET", "/v1/replications/"+id, "")
	if v := m["replication"].(map[string]any); v["lag_seconds"] == nil || v["rpo_breached"] != false || v["points_count"].(float64) != 1 || v["last_transfer_id"] != st.ID {
		t.Errorf("after a cycle: %v", v)
	}
	// A drill of that point: 202 and the drill, listed.
	if code, _ := a.do(reader, "POST", "/v1/replications/"+id+"/action", `{"drill": {"point": "`+snap+`"}}`); code != 403 {
		t.Errorf("a reader's drill: %d", code)
	}
	code, m = a.do(demo, "POST", "/v1/replications/"+id+"/action", `{"drill": {"point": "`+snap+`", "name": "dr test"}}`)
	dr, _ := m["drill"].(map[string]any)
	if code != 202 || dr["status"] != "creating" || dr["point"] != snap || dr["name"] != "dr test" || dr["volume_id"] != nil || dr["rto_seconds"] != nil {
		t.Fatalf("drill: %d %v", code, m)
	}
	code, m = a.do(reader, "GET", "/v1/replications/"+id+"/drills", "")
	if ds := m["drills"].([]any); code != 200 || len(ds) != 1 || ds[0].(map[string]any)["id"] != dr["id"] {
		t.Errorf("drills: %d %v", code, m)
	}
}

func TestReplicationDelete(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	id := a.createReplication(demo, "v1")["id"].(string)
	if code, _ := a.do(reader, "DELETE", "/v1/replications/"+id, ""); code != 403 {
		t.Errorf("a reader deletes: %d", code)
	}
	if code, m := a.do(demo, "DELETE", "/v1/replications/"+id+"?keep_replica=maybe", ""); code != 400 {
		t.Errorf("keep_replica=maybe: %d %v", code, m)
	}
	if code, m := a.do(demo, "DELETE", "/v1/replications/"+id+"?keep_replica=true", ""); code != 202 {
		t.Fatalf("delete: %d %v", code, m)
	}
	_, m := a.do(demo, "GET", "/v1/replications/"+id, "")
	if v := m["replication"].(map[string]any); v["status"] != "deleting" {
		t.Errorf("after delete: %v", v)
	}
	if code, _ := a.do(demo, "DELETE", "/v1/replications/"+id, ""); code != 409 {
		t.Errorf("a second delete: %d", code)
	}
	if code, _ := a.do(demo, "POST", "/v1/replications/"+id+"/action", `{"sync": null}`); code != 409 {
		t.Errorf("sync of a deleting replication: %d", code)
	}
	// The clean-up went to both regions, the replica kept.
	msgs, err := a.db.ClaimOutbox(context.Background(), "test", time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, m := range msgs {
		if strings.Contains(m.Payload, `"replication.cleanup"`) {
			keys = append(keys, m.RoutingKey)
			if strings.Contains(m.Payload, `"side":"destination"`) && strings.Contains(m.Payload, `"remove_image":true`) {
				t.Errorf("the kept replica is removed: %s", m.Payload)
			}
		}
	}
	if strings.Join(keys, ",") != "agent.RegionOne,agent.RegionTwo" {
		t.Errorf("clean-up messages to %v", keys)
	}
	// The source may be protected anew at once.
	a.createReplication(demo, "v1")
}

func TestReplicationPagination(t *testing.T) {
	a, fc := newReplicationAPITest(t)
	var ids []string
	for i := range 5 {
		name := fmt.Sprintf("p%d", i)
		fc.volumes[name] = &cinder.SourceVolume{Spec: cinder.VolumeSpec{Kind: "volume", ID: uid(name), ProjectID: "demo-project"}, Pool: "volumes", Image: "volume-" + uid(name)}
		ids = append(ids, a.createReplication(demo, name)["id"].(string))
	}
	seen := map[string]bool{}
	path := "/v1/replications?limit=2&sort_key=created_at&sort_dir=asc"
	for pages := 0; path != ""; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		code, m := a.do(demo, "GET", path, "")
		if code != 200 {
			t.Fatalf("%s: %d %v", path, code, m)
		}
		for _, r := range m["replications"].([]any) {
			seen[r.(map[string]any)["id"].(string)] = true
		}
		path = ""
		if links, ok := m["replications_links"].([]any); ok {
			u, err := url.Parse(links[0].(map[string]any)["href"].(string))
			if err != nil {
				t.Fatal(err)
			}
			path = u.RequestURI()
		}
	}
	for _, id := range ids {
		if !seen[id] {
			t.Errorf("replication %s never listed", id)
		}
	}
	for _, q := range []string{"limit=0", "limit=x", "marker=nope", "marker=" + uid("nope"), "sort_key=bogus", "all_projects=maybe"} {
		if code, m := a.do(demo, "GET", "/v1/replications?"+q, ""); code != 400 {
			t.Errorf("?%s: %d %v", q, code, m)
		}
	}
}

// A replication cycle of a volume is never registered with Cinder: one
// that reached finalizing (it does not, from agents' reports) is completed
// with nothing to register, and its end is announced once.
func TestFinalizerSkipsCycles(t *testing.T) {
	ctx := context.Background()
	d := testDB(t)
	r := &db.Replication{ProjectID: "demo-project", SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: "volume-v1",
		SourceVolumeID: "v1", DestRegion: "RegionTwo", DestPool: "volumes", IntervalSeconds: 60, RPOSeconds: 60, KeepLast: 1}
	if err := d.CreateReplication(ctx, r); err != nil {
		t.Fatal(err)
	}
	now := d.Now()
	tr := &db.Transfer{ProjectID: r.ProjectID, Mode: db.ModeAuto, SourceRegion: "RegionOne", SourcePool: "volumes", SourceImage: "volume-v1",
		SourceVolumeID: "v1", DestRegion: "RegionTwo", DestPool: "volumes", DestImage: r.DestImage}
	st, _, err := d.StartCycle(ctx, r.ID, now.Add(time.Second), now.Add(time.Minute), tr, nil)
	if err != nil || st == nil {
		t.Fatalf("start cycle: %v %v", st, err)
	}
	for _, s := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying, db.StatusFinalizing} {
		if _, err := d.TransitionTransfer(ctx, st.ID, s, db.TransitionOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	fc := &fakeCinder{}
	var ended []string
	fin := &Finalizer{DB: d, Cinder: fc, Log: slog.New(slog.DiscardHandler), Interval: time.Hour,
		EndNotify: func(t *db.Transfer) (*db.OutboxMessage, error) {
			ended = append(ended, string(t.Status))
			return nil, nil
		}}
	fin.finalize(ctx, st)
	got, err := d.GetTransfer(ctx, st.ID, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	evs, _ := d.ListEvents(ctx, st.ID)
	if got.Status != db.StatusCompleted || len(fc.regs) != 0 || evs[len(evs)-1].Message != "nothing to register" {
		t.Errorf("cycle after finalizing: %s, %d registrations, last event %q", got.Status, len(fc.regs), evs[len(evs)-1].Message)
	}
	if len(ended) != 1 || ended[0] != "completed" {
		t.Errorf("transfer.end built for %v", ended)
	}
}

// TestReplicationDuringFailover: while a failover holds a replication, its
// deletion is refused before its cycle (the failover's final one) is
// cancelled, pause and sync are 409, and no next run is shown.
func TestReplicationDuringFailover(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	ctx := context.Background()
	id := a.createReplication(demo, "v1")["id"].(string)
	r, err := a.db.GetReplication(ctx, id, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	cycle := &db.Transfer{SourceRegion: r.SourceRegion, SourcePool: r.SourcePool, SourceImage: r.SourceImage,
		DestRegion: r.DestRegion, DestPool: r.DestPool, DestImage: r.DestImage}
	if st, _, err := a.db.StartCycle(ctx, id, r.NextRunAt, r.NextRunAt.Add(time.Minute), cycle, nil); err != nil || st == nil {
		t.Fatalf("StartCycle: %+v %v", st, err)
	}
	if _, err := a.db.StartFailover(ctx, &db.Failover{ReplicationID: id, Planned: true}, db.AllProjectsScope(),
		db.ReplicationFailingOver, nil, db.ReplicationEventInput{}); err != nil {
		t.Fatal(err)
	}
	if code, m := a.do(demo, "DELETE", "/v1/replications/"+id, ""); code != 409 || !strings.Contains(message(m), "failover") {
		t.Errorf("delete while failing over: %d %v", code, m)
	}
	if tr, err := a.db.GetTransfer(ctx, cycle.ID, db.AllProjectsScope()); err != nil || tr.Status != db.StatusQueued {
		t.Errorf("the running cycle after a refused delete: %+v %v", tr, err)
	}
	for _, body := range []string{`{"pause": null}`, `{"resume": null}`, `{"sync": null}`} {
		if code, m := a.do(demo, "POST", "/v1/replications/"+id+"/action", body); code != 409 {
			t.Errorf("%s while failing over: %d %v", body, code, m)
		}
	}
	_, m := a.do(demo, "GET", "/v1/replications/"+id, "")
	if v := m["replication"].(map[string]any); v["status"] != "failing_over" || v["next_run_at"] != nil {
		t.Errorf("a failing-over replication: %v", v)
	}
}

// completeCycle runs one cycle of replication id to completed (as the
// scheduler and the agents would) and returns its point's name.
func completeCycle(t *testing.T, d *db.DB, id string) string {
	t.Helper()
	ctx := context.Background()
	r, err := d.GetReplication(ctx, id, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	now := d.Now()
	tr := &db.Transfer{ProjectID: r.ProjectID, Mode: db.ModeAuto, SourceRegion: r.SourceRegion, SourcePool: r.SourcePool, SourceImage: r.SourceImage,
		DestRegion: r.DestRegion, DestPool: r.DestPool, DestImage: r.DestImage}
	at := r.NextRunAt
	if at.Before(now) {
		at = now
	}
	st, _, err := d.StartCycle(ctx, id, at, at.Add(time.Hour), tr, nil)
	if err != nil || st == nil {
		t.Fatalf("start cycle: %v %v", st, err)
	}
	for _, to := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying} {
		if _, err := d.TransitionTransfer(ctx, st.ID, to, db.TransitionOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	snap, n := "ferry-"+st.ID, int64(4096)
	if _, err := d.TransitionTransfer(ctx, st.ID, db.StatusCompleted, db.TransitionOpts{Fields: db.TransferFields{DestSnapshot: &snap, BytesTransferred: &n},
		Cycle: &db.CycleOutcome{SnapshotAt: d.Now()}}); err != nil {
		t.Fatal(err)
	}
	return snap
}

// The failover and failback actions' checks: policy and tenancy, the
// status and point they need, an attached volume refused unless forced,
// one failover at a time (409), the answer (202, the failover, listed).
func TestReplicationFailoverAction(t *testing.T) {
	a, fc := newReplicationAPITest(t)
	id := a.createReplication(demo, "v1")["id"].(string)
	action := func(who [3]string, body string) (int, map[string]any) {
		return a.do(who, "POST", "/v1/replications/"+id+"/action", body)
	}
	if code, m := action(demo, `{"failover": {}}`); code != 409 || !strings.Contains(message(m), "no point yet") {
		t.Errorf("failover before any point: %d %v", code, m)
	}
	if code, m := action(demo, `{"failback": null}`); code != 409 || !strings.Contains(message(m), "failed_over") {
		t.Errorf("failback of an active replication: %d %v", code, m)
	}
	point := completeCycle(t, a.db, id)
	if code, m := action(reader, `{"failover": {}}`); code != 403 {
		t.Errorf("reader fails over: %d %v", code, m)
	}
	if code, m := action(alt, `{"failover": {}}`); code != 404 {
		t.Errorf("alt fails over demo's replication: %d %v", code, m)
	}
	if code, m := action(demo, `{"failover": {"point": "ferry-nope", "force": true}}`); code != 404 {
		t.Errorf("failover to an unknown point: %d %v", code, m)
	}
	fc.mu.Lock()
	fc.attached, fc.readOnly = map[string]bool{"v1": true}, map[string]bool{"v1": true}
	fc.mu.Unlock()
	if code, m := action(demo, `{"failover": {}}`); code != 409 || !strings.Contains(message(m), "attached") {
		t.Errorf("failover of an attached volume: %d %v", code, m)
	}
	// Forced: accepted, with the volume's spec recorded; a second one
	// while it runs is 409, and so is any status change.
	code, m := action(demo, `{"failover": {"force": true}}`)
	if code != 202 {
		t.Fatalf("forced failover: %d %v", code, m)
	}
	f := m["failover"].(map[string]any)
	if f["kind"] != "failover" || f["planned"] != true || f["status"] != "running" || f["from"].(map[string]any)["region"] != "RegionOne" ||
		f["to"].(map[string]any)["region"] != "RegionTwo" || f["rto_seconds"] != nil {
		t.Errorf("the failover: %v", f)
	}
	stored, err := a.db.GetFailover(context.Background(), f["id"].(string), db.AllProjectsScope())
	if err != nil || !strings.Contains(stored.Spec, `"name":"data"`) || stored.UserID == "" || !stored.OriginalReadOnly {
		t.Errorf("stored failover: %+v %v", stored, err)
	}
	for _, body := range []string{`{"failover": {"force": true}}`, `{"failover": {"point": "latest", "force": true}}`, `{"pause": null}`} {
		if code, m := action(demo, body); code != 409 {
			t.Errorf("%s while a failover runs: %d %v", body, code, m)
		}
	}
	if code, m := a.do(demo, "DELETE", "/v1/replications/"+id, ""); code != 409 {
		t.Errorf("delete while a failover runs: %d %v", code, m)
	}
	_, m = a.do(reader, "GET", "/v1/replications/"+id, "")
	if v := m["replication"].(map[string]any); v["status"] != "failing_over" {
		t.Errorf("the replication while failing over: %v", v)
	}
	code, m = a.do(reader, "GET", "/v1/replications/"+id+"/failovers", "")
	if fs, _ := m["failovers"].([]any); code != 200 || len(fs) != 1 || fs[0].(map[string]any)["id"] != f["id"] {
		t.Errorf("failovers: %d %v", code, m)
	}
	if code, m := a.do(reader, "GET", "/v1/replications/"+id+"/failovers/"+f["id"].(string), ""); code != 200 || m["failover"].(map[string]any)["id"] != f["id"] {
		t.Errorf("show failover: %d %v", code, m)
	}
	if code, _ := a.do(alt, "GET", "/v1/replications/"+id+"/failovers", ""); code != 404 {
		t.Errorf("alt lists demo's failovers: %d", code)
	}
	if code, _ := a.do(demo, "GET", "/v1/replications/"+id+"/failovers/"+uuid.NewString(), ""); code != 404 {
		t.Errorf("an unknown failover: %d", code)
	}
	_ = point
}

// An unplanned failover names its point ("latest": the newest) and needs
// no Cinder answer from the source region.
func TestReplicationUnplannedFailoverAction(t *testing.T) {
	a, fc := newReplicationAPITest(t)
	id := a.createReplication(demo, "v1")["id"].(string)
	completeCycle(t, a.db, id)
	newest := completeCycle(t, a.db, id)
	fc.mu.Lock()
	delete(fc.volumes, "v1") // the source region's Cinder lost it
	fc.mu.Unlock()
	if code, m := a.do(demo, "POST", "/v1/replications/"+id+"/action", `{"failover": {}}`); code != 409 || !strings.Contains(message(m), "unplanned") {
		t.Errorf("a planned failover without the source volume: %d %v", code, m)
	}
	code, m := a.do(demo, "POST", "/v1/replications/"+id+"/action", `{"failover": {"point": "latest", "force": true}}`)
	if code != 202 {
		t.Fatalf("unplanned failover: %d %v", code, m)
	}
	if f := m["failover"].(map[string]any); f["planned"] != false || f["point"] != newest {
		t.Errorf("the unplanned failover: %v, want point %s", f, newest)
	}
}
