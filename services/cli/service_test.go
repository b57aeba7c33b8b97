package cli

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// service list shows each agent's cluster health in one cell (summary and
// age) in a table, and the API's object with -f json.
func TestServiceListShowsHealth(t *testing.T) {
	fc := newFakeCloud(t)
	checked := time.Now().Add(-42 * time.Second).UTC().Format("2006-01-02T15:04:05.000000Z")
	fc.services = []map[string]any{
		{"binary": "ferry-agent", "host": "node-1", "region": "RegionOne", "state": "up", "status": "enabled", "version": "1.2",
			"updated_at": "2026-12-03T10:00:00.000000Z", "running_transfers": 1, "max_transfers": 2,
			"ceph_health": map[string]any{"status": "HEALTH_WARN", "others": 0, "error": nil, "checked_at": checked,
				"checks": []any{map[string]any{"code": "OSD_NEARFULL", "severity": "HEALTH_WARN", "message": "1 nearfull osd(s)"},
					map[string]any{"code": "SLOW_OPS", "severity": "HEALTH_WARN", "message": "3 slow ops"}}}},
		{"binary": "ferry-agent", "host": "node-2", "region": "RegionTwo", "state": "up", "status": "enabled", "version": "1.2",
			"updated_at": "2026-12-03T10:00:00.000000Z", "running_transfers": 0, "max_transfers": 2,
			"ceph_health": map[string]any{"status": nil, "others": 0, "error": "the cluster did not answer ceph health within 20s", "checked_at": checked, "checks": []any{}}},
		{"binary": "ferry-agent", "host": "old", "region": "RegionOne", "state": "down", "status": "enabled", "version": "1.1",
			"updated_at": "2026-12-03T09:00:00.000000Z", "ceph_health": nil},
	}
	code, out, errOut := run(t, fc.env(), "service", "list")
	if code != 0 {
		t.Fatal(errOut)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`\| ceph_health +\| running_transfers \|`),
		regexp.MustCompile(`\| node-1 .*\| HEALTH_WARN: OSD_NEARFULL, SLOW_OPS \(4[2-9]s ago\) +\| 1 +\|`),
		regexp.MustCompile(`\| node-2 .*\| unknown: the cluster did not answer ceph health within 20s \(4[2-9]s ago\) +\| 0 +\|`),
		regexp.MustCompile(`\| old .*\| None +\| None +\|`),
	} {
		if !want.MatchString(out) {
			t.Errorf("table lacks %s:\n%s", want, out)
		}
	}
	code, out, errOut = run(t, fc.env(), "service", "list", "-f", "json", "-c", "host", "-c", "ceph_health")
	if code != 0 {
		t.Fatal(errOut)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 3 {
		t.Fatalf("json: %v %q", err, out)
	}
	h, _ := rows[0]["ceph_health"].(map[string]any)
	if h == nil || h["status"] != "HEALTH_WARN" || len(h["checks"].([]any)) != 2 || strings.Contains(out, "ago") {
		t.Errorf("json keeps the API's object: %v", rows[0])
	}
}
