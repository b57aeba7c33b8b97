package api

import (
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
)

// The service list shows each agent's last cluster health probe and how
// busy it is; an agent that reported neither shows null health.
func TestServiceListShowsHealth(t *testing.T) {
	a := newAPITest(t)
	ctx := t.Context()
	now := a.db.Now()
	_, _, err := a.db.RecordHeartbeat(ctx, db.Heartbeat{Binary: db.AgentBinary, Host: "agent-1", Region: "RegionOne", Version: "1.2",
		BootID: "b1", Seq: 1, Running: []string{"t1"}, Capacity: 2,
		Health: &db.ServiceHealth{Status: "HEALTH_WARN", Others: 1, CheckedAt: now.Add(-7 * time.Second),
			Checks: []db.HealthCheck{{Code: "OSD_NEARFULL", Severity: "HEALTH_WARN", Message: "1 nearfull osd(s)"}}}})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = a.db.RecordHeartbeat(ctx, db.Heartbeat{Binary: db.AgentBinary, Host: "agent-2", Region: "RegionTwo", Version: "1.2",
		BootID: "b2", Seq: 1, Health: &db.ServiceHealth{Error: "the cluster did not answer ceph health within 20s"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.db.UpsertServiceHeartbeat(ctx, db.AgentBinary, "agent-old", "RegionOne", "1.1"); err != nil {
		t.Fatal(err)
	}
	code, m := a.do(admin, "GET", "/v1/services", "")
	if code != 200 {
		t.Fatalf("GET /v1/services: %d %v", code, m)
	}
	byHost := map[string]map[string]any{}
	for _, it := range m["services"].([]any) {
		s := it.(map[string]any)
		byHost[s["host"].(string)] = s
	}
	h1, _ := byHost["agent-1"]["ceph_health"].(map[string]any)
	if h1 == nil || h1["status"] != "HEALTH_WARN" || h1["others"] != float64(1) || h1["error"] != nil ||
		h1["checked_at"] != isoTime(now.Add(-7*time.Second)) {
		t.Errorf("agent-1 health %v", h1)
	}
	if checks, _ := h1["checks"].([]any); len(checks) != 1 || checks[0].(map[string]any)["code"] != "OSD_NEARFULL" {
		t.Errorf("agent-1 checks %v", h1["checks"])
	}
	if byHost["agent-1"]["running_transfers"] != float64(1) || byHost["agent-1"]["max_transfers"] != float64(2) {
		t.Errorf("agent-1 load %v", byHost["agent-1"])
	}
	h2, _ := byHost["agent-2"]["ceph_health"].(map[string]any)
	if h2 == nil || h2["status"] != nil || h2["error"] != "the cluster did not answer ceph health within 20s" {
		t.Errorf("agent-2 health %v", h2)
	}
	old := byHost["agent-old"]
	if v, ok := old["ceph_health"]; !ok || v != nil {
		t.Errorf("agent-old health %v (present %t), want null", v, ok)
	}
	if _, ok := old["running_transfers"]; ok {
		t.Errorf("agent-old shows a running count: %v", old)
	}
}
