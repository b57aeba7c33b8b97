package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
)

func groupBody(source, extra string) string {
	return `{"replication_group": {"name": "app", "source": {"region": "RegionOne", ` + source + `}, ` +
		`"destination": {"region": "RegionTwo"}, "interval_seconds": 300, "rpo_seconds": 900` + extra + `}}`
}

func volumeIDs(names ...string) string {
	var ids []string
	for _, n := range names {
		ids = append(ids, `"`+uid(n)+`"`)
	}
	return `"volume_ids": [` + strings.Join(ids, ", ") + `]`
}

// commitGroupPoint runs one group cycle of g to a group point in the
// store, as the group runner and the agents would; it returns the point.
func commitGroupPoint(t *testing.T, d *db.DB, id string) string {
	t.Helper()
	ctx := context.Background()
	g, err := d.GetGroup(ctx, id, db.AllProjectsScope())
	if err != nil {
		t.Fatal(err)
	}
	members, _ := d.GroupMembers(ctx, id)
	var ms []db.GroupCycleMember
	for _, m := range members {
		ms = append(ms, db.GroupCycleMember{ReplicationID: m.ID, TransferID: uuid.NewString()})
	}
	now := d.Now()
	c, _, err := d.StartGroupCycle(ctx, id, g.NextRunAt, g.NextRunAt.Add(time.Minute), &db.GroupCycle{}, ms)
	if err != nil || c == nil {
		t.Fatalf("StartGroupCycle: %+v %v", c, err)
	}
	var ts []*db.Transfer
	for i, m := range ms {
		r := members[i]
		ts = append(ts, &db.Transfer{ID: m.TransferID, ReplicationID: r.ID, ProjectID: r.ProjectID, Name: "cycle",
			SourceRegion: r.SourceRegion, SourcePool: r.SourcePool, SourceImage: r.SourceImage,
			DestRegion: r.DestRegion, DestPool: r.DestPool, DestImage: r.DestImage})
	}
	if err := d.GroupCycleSnapshotted(ctx, c.ID, now, ts, nil); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		for _, to := range []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying} {
			if _, err := d.TransitionTransfer(ctx, m.TransferID, to, db.TransitionOpts{}); err != nil {
				t.Fatal(err)
			}
		}
		snap := m.Point()
		if _, err := d.TransitionTransfer(ctx, m.TransferID, db.StatusCompleted, db.TransitionOpts{
			Fields: db.TransferFields{DestSnapshot: &snap}, Cycle: &db.CycleOutcome{SnapshotAt: now}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.FinishGroupCycle(ctx, c.ID, db.GroupCycleCompleted, ""); err != nil {
		t.Fatal(err)
	}
	return c.ID
}

func TestGroupCreateShowAndActions(t *testing.T) {
	a, _ := newReplicationAPITest(t)
	a.version = "1.1"
	if code, m := a.do(demo, "POST", "/v1/replication-groups", groupBody(volumeIDs("v1", "v2"), "")); code != 404 {
		t.Errorf("groups at 1.1: %d %v", code, m)
	}
	a.version = "1.2"
	for _, bad := range []struct{ body, want string }{
		{`{"replication_group": {}}`, "source"},
		{groupBody(`"volume_ids": []`, ""), "volume_ids"},
		{groupBody(volumeIDs("v1", "v1"), ""), "twice"},
		{groupBody(volumeIDs("v1")+`, "cinder_group_id": "`+uid("grp")+`"`, ""), "not both"},
		{groupBody(`"volume_ids": ["not-a-uuid"]`, ""), "UUID"},
		{groupBody(volumeIDs("v1"), `, "retention": {"keep_last": 0}`), "keep_last"},
		{groupBody(volumeIDs("v1"), `, "bogus": 1`), "bogus"},
		{groupBody(volumeIDs("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17"), ""), "at most 16"},
	} {
		if code, m := a.do(demo, "POST", "/v1/replication-groups", bad.body); code != 400 || !strings.Contains(message(m), bad.want) {
			t.Errorf("%s: %d %v", bad.body, code, m)
		}
	}
	if code, m := a.do(reader, "POST", "/v1/replication-groups", groupBody(volumeIDs("v1", "v2"), "")); code != 403 {
		t.Errorf("a reader creates: %d %v", code, m)
	}
	if code, m := a.do(demo, "POST", "/v1/replication-groups", groupBody(volumeIDs("v1", "alt"), "")); code != 404 {
		t.Errorf("another project's volume: %d %v", code, m)
	}
	code, m := a.do(demo, "POST", "/v1/replication-groups", groupBody(`"cinder_group_id": "`+uid("grp")+`"`, ""))
	if code != 202 {
		t.Fatalf("create from a Cinder group: %d %v", code, m)
	}
	g := m["replication_group"].(map[string]any)
	id := g["id"].(string)
	members := g["members"].([]any)
	if g["status"] != "active" || len(members) != 2 || g["project_id"] != "demo-project" || g["points_count"].(float64) != 0 ||
		g["destination"].(map[string]any)["pool"] != "volumes" || g["next_run_at"] == nil || g["last_sync_at"] != nil {
		t.Errorf("created %v", g)
	}
	// Its volumes are protected: not again, alone or in a group.
	if code, m := a.do(demo, "POST", "/v1/replications", replicationBody("v1", "")); code != 409 {
		t.Errorf("a replication of a member's volume: %d %v", code, m)
	}
	if code, m := a.do(demo, "POST", "/v1/replication-groups", groupBody(volumeIDs("v2"), "")); code != 409 {
		t.Errorf("a second group of a member's volume: %d %v", code, m)
	}
	if code, m := a.do(demo, "POST", "/v1/replication-groups", groupBody(`"cinder_group_id": "`+uid("nogroup")+`"`, "")); code != 404 {
		t.Errorf("an unknown Cinder group: %d %v", code, m)
	}
	// Members answer to their group only.
	mid := members[0].(map[string]any)["replication_id"].(string)
	code, m = a.do(demo, "GET", "/v1/replications/"+mid, "")
	if code != 200 || m["replication"].(map[string]any)["group_id"] != id || m["replication"].(map[string]any)["next_run_at"] != nil {
		t.Errorf("a member's view: %d %v", code, m)
	}
	for _, req := range []struct{ method, path, body string }{
		{"POST", "/v1/replications/" + mid + "/action", `{"sync": null}`},
		{"POST", "/v1/replications/" + mid + "/action", `{"pause": null}`},
		{"POST", "/v1/replications/" + mid + "/action", `{"failover": {}}`},
		{"PUT", "/v1/replications/" + mid, `{"replication": {"rpo_seconds": 600}}`},
		{"DELETE", "/v1/replications/" + mid, ""},
	} {
		if code, m := a.do(demo, req.method, req.path, req.body); code != 409 || !strings.Contains(message(m), id) {
			t.Errorf("%s %s of a member: %d %v", req.method, req.path, code, m)
		}
	}
	// Tenancy.
	for _, req := range []struct{ method, path, body string }{
		{"GET", "/v1/replication-groups/" + id, ""},
		{"GET", "/v1/replication-groups/" + id + "/points", ""},
		{"GET", "/v1/replication-groups/" + id + "/drills", ""},
		{"PUT", "/v1/replication-groups/" + id, `{"replication_group": {"rpo_seconds": 600}}`},
		{"POST", "/v1/replication-groups/" + id + "/action", `{"pause": null}`},
		{"DELETE", "/v1/replication-groups/" + id, ""},
	} {
		if code, m := a.do(alt, req.method, req.path, req.body); code != 404 || m["itemNotFound"] == nil {
			t.Errorf("alt %s %s: %d %v", req.method, req.path, code, m)
		}
	}
	if code, _ := a.do(reader, "GET", "/v1/replication-groups/"+id, ""); code != 200 {
		t.Errorf("a reader's show: %d", code)
	}
	if code, _ := a.do(reader, "POST", "/v1/replication-groups/"+id+"/action", `{"pause": null}`); code != 403 {
		t.Errorf("a reader's pause: %d", code)
	}
	code, m = a.do(demo, "GET", "/v1/replication-groups", "")
	if code != 200 || len(m["replication_groups"].([]any)) != 1 {
		t.Errorf("list: %d %v", code, m)
	}
	if code, m := a.do(alt, "GET", "/v1/replication-groups", ""); code != 200 || len(m["replication_groups"].([]any)) != 0 {
		t.Errorf("alt's list: %d %v", code, m)
	}
	// Update: the members follow.
	code, m = a.do(demo, "PUT", "/v1/replication-groups/"+id, `{"replication_group": {"rpo_seconds": 600, "retention": {"keep_last": 4}}}`)
	if code != 200 || m["replication_group"].(map[string]any)["rpo_seconds"].(float64) != 600 {
		t.Errorf("update: %d %v", code, m)
	}
	if code, m := a.do(demo, "PUT", "/v1/replication-groups/"+id, `{"replication_group": {"interval_seconds": 0}}`); code != 400 {
		t.Errorf("a bad update: %d %v", code, m)
	}
	code, m = a.do(demo, "GET", "/v1/replications/"+mid, "")
	if r := m["replication"].(map[string]any); code != 200 || r["rpo_seconds"].(float64) != 600 || r["retention"].(map[string]any)["keep_last"].(float64) != 4 {
		t.Errorf("a member after the update: %v", r)
	}
	// Pause, resume, sync.
	for _, step := range []struct {
		action, want string
		code         int
	}{{"pause", "paused", 202}, {"pause", "", 409}, {"sync", "", 409}, {"resume", "active", 202}, {"sync", "active", 202}} {
		code, m := a.do(demo, "POST", "/v1/replication-groups/"+id+"/action", `{"`+step.action+`": null}`)
		if code != step.code || step.want != "" && m["replication_group"].(map[string]any)["status"] != step.want {
			t.Errorf("%s: %d %v", step.action, code, m)
		}
	}
	if code, m := a.do(demo, "POST", "/v1/replication-groups/"+id+"/action", `{"explode": null}`); code != 400 {
		t.Errorf("an unknown action: %d %v", code, m)
	}
	// Drill: no point yet, then one drill per member of the point.
	if code, m := a.do(demo, "POST", "/v1/replication-groups/"+id+"/action", `{"drill": {"point": "latest"}}`); code != 404 || !strings.Contains(message(m), "no point") {
		t.Errorf("a drill before any point: %d %v", code, m)
	}
	point := commitGroupPoint(t, a.db, id)
	code, m = a.do(demo, "GET", "/v1/replication-groups/"+id+"/points", "")
	pts := m["points"].([]any)
	if code != 200 || len(pts) != 1 || pts[0].(map[string]any)["name"] != point || len(pts[0].(map[string]any)["members"].([]any)) != 2 {
		t.Fatalf("points: %d %v", code, m)
	}
	if code, m := a.do(demo, "POST", "/v1/replication-groups/"+id+"/action", `{"drill": {"point": "nope"}}`); code != 404 {
		t.Errorf("a drill of an unknown point: %d %v", code, m)
	}
	code, m = a.do(demo, "POST", "/v1/replication-groups/"+id+"/action", `{"drill": {"point": "latest"}}`)
	if code != 202 || len(m["drills"].([]any)) != 2 {
		t.Fatalf("group drill: %d %v", code, m)
	}
	for _, d := range m["drills"].([]any) {
		dv := d.(map[string]any)
		if dv["status"] != "creating" || !strings.HasPrefix(dv["point"].(string), "ferry-") {
			t.Errorf("a member's drill %v", dv)
		}
	}
	code, m = a.do(demo, "GET", "/v1/replication-groups/"+id+"/drills", "")
	if code != 200 || len(m["drills"].([]any)) != 2 {
		t.Errorf("group drills: %d %v", code, m)
	}
	code, m = a.do(demo, "GET", "/v1/replication-groups/"+id, "")
	if g := m["replication_group"].(map[string]any); code != 200 || g["points_count"].(float64) != 1 || g["lag_seconds"] == nil {
		t.Errorf("the group with a point: %v", g)
	}
	// Failover and failback: the checks, then the group failing over; a
	// second one is a conflict; a reader may not.
	for _, bad := range []struct {
		body string
		code int
	}{
		{`{"failover": {"point": "latest"}}`, 400},
		{`{"failback": {"point": "latest"}}`, 400},
		{`{"failback": null}`, 409},
		{`{"failover": {"point": "nope", "force": true}}`, 404},
		{`{"failover": {"bogus": 1}}`, 400},
	} {
		if code, m := a.do(demo, "POST", "/v1/replication-groups/"+id+"/action", bad.body); code != bad.code {
			t.Errorf("%s: %d %v, want %d", bad.body, code, m, bad.code)
		}
	}
	if code, _ := a.do(reader, "POST", "/v1/replication-groups/"+id+"/action", `{"failover": null}`); code != 403 {
		t.Errorf("a reader's failover: %d", code)
	}
	code, m = a.do(demo, "POST", "/v1/replication-groups/"+id+"/action", `{"failover": null}`)
	if code != 202 {
		t.Fatalf("planned group failover: %d %v", code, m)
	}
	g = m["replication_group"].(map[string]any)
	fo, _ := g["failover"].(map[string]any)
	if g["status"] != "failing_over" || fo == nil || fo["step"] != "quiesce" || fo["planned"] != true || fo["status"] != "running" {
		t.Errorf("after the failover request: %v", g)
	}
	for _, body := range []string{`{"failover": null}`, `{"failover": {"point": "latest", "force": true}}`, `{"pause": null}`} {
		if code, m := a.do(demo, "POST", "/v1/replication-groups/"+id+"/action", body); code != 409 {
			t.Errorf("%s while failing over: %d %v", body, code, m)
		}
	}
	if code, m := a.do(demo, "DELETE", "/v1/replication-groups/"+id, ""); code != 409 {
		t.Errorf("delete while failing over: %d %v", code, m)
	}
	// (The runner ends it; here the store does, as if undone.)
	gr, _ := a.db.GetGroup(context.Background(), id, db.AllProjectsScope())
	gf := gr.Failover()
	gf.Status = db.FailoverError
	if _, err := a.db.FinishGroupFailover(context.Background(), id, gf, db.ReplicationActive, false); err != nil {
		t.Fatal(err)
	}

	// Delete: deleting, its members too; a second delete is a conflict.
	if code, m := a.do(demo, "DELETE", "/v1/replication-groups/"+id+"?keep_replica=maybe", ""); code != 400 {
		t.Errorf("a bad keep_replica: %d %v", code, m)
	}
	if code, m := a.do(demo, "DELETE", "/v1/replication-groups/"+id, ""); code != 202 {
		t.Fatalf("delete: %d %v", code, m)
	}
	code, m = a.do(demo, "GET", "/v1/replication-groups/"+id, "")
	g = m["replication_group"].(map[string]any)
	if code != 200 || g["status"] != "deleting" {
		t.Errorf("after the delete: %d %v", code, m)
	}
	for _, mv := range g["members"].([]any) {
		if mv.(map[string]any)["status"] != "deleting" {
			t.Errorf("a member after the delete: %v", mv)
		}
	}
	if code, m := a.do(demo, "DELETE", "/v1/replication-groups/"+id, ""); code != 409 {
		t.Errorf("a second delete: %d %v", code, m)
	}
	if code, m := a.do(demo, "GET", "/v1/replication-groups/"+uuid.NewString(), ""); code != 404 {
		t.Errorf("an unknown group: %d %v", code, m)
	}
}
