package testing

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	th "github.com/gophercloud/gophercloud/v2/testhelper"
	fake "github.com/gophercloud/gophercloud/v2/testhelper/client"

	"github.com/ferry-project/ferry/services/client/replicationgroups"
)

const (
	firstID   = "6a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
	secondID  = "3d4e5f60-7182-4394-a5b6-c7d8e9f00112"
	cycleID   = "c1c2c3c4-d5d6-4e7f-8091-a2a3a4a5a6a7"
	memberA   = "a0000000-0000-4000-8000-00000000000a"
	memberB   = "b0000000-0000-4000-8000-00000000000b"
	volumeA   = "5b6c7d8e-9f00-4a1b-8c2d-3e4f5a6b7c8d"
	volumeB   = "6c7d8e9f-0011-4b2c-9d3e-4f5a6b7c8d9e"
	cinderGrp = "9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a"
	drillA    = "da000000-0000-4000-8000-0000000000da"
	drillB    = "db000000-0000-4000-8000-0000000000db"
	// version is the header every request of the package carries.
	version = "volume-ferry 1.2"
)

// A group of two volumes as ferry-api renders it: active, one point,
// lag within the RPO.
var firstJSON = fmt.Sprintf(`{
	"id": %q,
	"name": "db",
	"description": "data and WAL",
	"project_id": "demo-project",
	"user_id": "demo-user",
	"status": "active",
	"source": {"region": "RegionOne"},
	"destination": {"region": "RegionTwo", "pool": "volumes"},
	"interval_seconds": 60,
	"rpo_seconds": 300,
	"retention": {"keep_last": 3, "keep_hourly": 0, "keep_daily": 0},
	"bandwidth_limit": 0,
	"members": [
		{"replication_id": %q, "volume_id": %q, "status": "active",
		 "source": {"pool": "volumes", "image": "volume-%s"},
		 "destination": {"pool": "volumes", "image": "ferry-replica-%s"}},
		{"replication_id": %q, "volume_id": %q, "status": "active",
		 "source": {"pool": "volumes", "image": "volume-%s"},
		 "destination": {"pool": "volumes", "image": "ferry-replica-%s"}}
	],
	"last_sync_at": "2026-12-03T18:00:00Z",
	"lag_seconds": 3,
	"rpo_breached": false,
	"last_cycle_id": %q,
	"last_error": null,
	"points_count": 3,
	"next_run_at": "2026-12-03T18:01:00Z",
	"cycles": {"completed": 10, "failed": 0, "skipped": 1},
	"created_at": "2026-12-03T17:00:00Z",
	"updated_at": "2026-12-03T18:00:02Z"
}`, firstID, memberA, volumeA, volumeA, memberA, memberB, volumeB, volumeB, memberB, cycleID)

// A group failing over before its first point: nulls where nothing is
// known yet, breached, with an error.
var secondJSON = fmt.Sprintf(`{
	"id": %q,
	"name": "",
	"description": "",
	"project_id": "demo-project",
	"user_id": "demo-user",
	"status": "failing_over",
	"source": {"region": "RegionOne"},
	"destination": {"region": "RegionTwo", "pool": "replicas"},
	"interval_seconds": 120,
	"rpo_seconds": 600,
	"retention": {"keep_last": 6, "keep_hourly": 24, "keep_daily": 7},
	"bandwidth_limit": 52428800,
	"members": [],
	"last_sync_at": null,
	"lag_seconds": null,
	"rpo_breached": true,
	"last_cycle_id": null,
	"last_error": "group cycle failed: member %s: source unreachable",
	"points_count": 0,
	"next_run_at": null,
	"cycles": {"completed": 0, "failed": 2, "skipped": 0},
	"created_at": "2026-12-01T08:00:00Z",
	"updated_at": "2026-12-01T08:04:00Z"
}`, secondID, memberA)

func ptr[T any](v T) *T { return &v }

var firstGroup = replicationgroups.ReplicationGroup{
	ID: firstID, Name: "db", Description: "data and WAL", ProjectID: "demo-project", UserID: "demo-user",
	Status:          "active",
	Source:          replicationgroups.Source{Region: "RegionOne"},
	Destination:     replicationgroups.Destination{Region: "RegionTwo", Pool: "volumes"},
	IntervalSeconds: 60, RPOSeconds: 300,
	Retention: replicationgroups.Retention{KeepLast: 3},
	Members: []replicationgroups.Member{
		{ReplicationID: memberA, VolumeID: volumeA, Status: "active",
			Source:      replicationgroups.Image{Pool: "volumes", Image: "volume-" + volumeA},
			Destination: replicationgroups.Image{Pool: "volumes", Image: "ferry-replica-" + memberA}},
		{ReplicationID: memberB, VolumeID: volumeB, Status: "active",
			Source:      replicationgroups.Image{Pool: "volumes", Image: "volume-" + volumeB},
			Destination: replicationgroups.Image{Pool: "volumes", Image: "ferry-replica-" + memberB}},
	},
	LastSyncAt:  ptr(time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)),
	LagSeconds:  ptr(3.0),
	LastCycleID: cycleID,
	PointsCount: 3,
	NextRunAt:   ptr(time.Date(2026, 12, 3, 18, 1, 0, 0, time.UTC)),
	Cycles:      replicationgroups.Cycles{Completed: 10, Skipped: 1},
	CreatedAt:   time.Date(2026, 12, 3, 17, 0, 0, 0, time.UTC),
	UpdatedAt:   time.Date(2026, 12, 3, 18, 0, 2, 0, time.UTC),
}

var secondGroup = replicationgroups.ReplicationGroup{
	ID: secondID, ProjectID: "demo-project", UserID: "demo-user", Status: "failing_over",
	Source:          replicationgroups.Source{Region: "RegionOne"},
	Destination:     replicationgroups.Destination{Region: "RegionTwo", Pool: "replicas"},
	IntervalSeconds: 120, RPOSeconds: 600,
	Retention:      replicationgroups.Retention{KeepLast: 6, KeepHourly: 24, KeepDaily: 7},
	BandwidthLimit: 50 << 20,
	Members:        []replicationgroups.Member{},
	RPOBreached:    true,
	LastError:      "group cycle failed: member " + memberA + ": source unreachable",
	Cycles:         replicationgroups.Cycles{Failed: 2},
	CreatedAt:      time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC),
	UpdatedAt:      time.Date(2026, 12, 1, 8, 4, 0, 0, time.UTC),
}

// checkRequest checks what every request of the package carries.
func checkRequest(t *testing.T, r *http.Request, method string) {
	t.Helper()
	th.TestMethod(t, r, method)
	th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
	th.TestHeader(t, r, "OpenStack-API-Version", version)
	th.TestHeader(t, r, "Accept", "application/json")
}

// HandleCreate checks the create's body and answers 202 with the first
// group.
func HandleCreate(t *testing.T, fakeServer th.FakeServer, request string) {
	fakeServer.Mux.HandleFunc("/replication-groups", func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, "POST")
		th.TestHeader(t, r, "Content-Type", "application/json")
		th.TestJSONRequest(t, r, request)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"replication_group": %s}`, firstJSON)
	})
}

func HandleGet(t *testing.T, fakeServer th.FakeServer, id, body string) {
	fakeServer.Mux.HandleFunc("/replication-groups/"+id, func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, "GET")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"replication_group": %s}`, body)
	})
}

// HandleListTwoPages serves page one (limit=1) with a next link carrying
// the marker, then page two without a link.
func HandleListTwoPages(t *testing.T, fakeServer th.FakeServer) {
	fakeServer.Mux.HandleFunc("/replication-groups", func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, "GET")
		w.Header().Set("Content-Type", "application/json")
		switch marker := r.URL.Query().Get("marker"); marker {
		case "":
			th.TestFormValues(t, r, map[string]string{"limit": "1", "all_projects": "true"})
			fmt.Fprintf(w, `{"replication_groups": [%s], "replication_groups_links": [{"rel": "next", "href": "%s/replication-groups?all_projects=true&limit=1&marker=%s"}]}`,
				firstJSON, fakeServer.Server.URL, firstID)
		case firstID:
			th.TestFormValues(t, r, map[string]string{"limit": "1", "all_projects": "true", "marker": firstID})
			fmt.Fprintf(w, `{"replication_groups": [%s]}`, secondJSON)
		default:
			t.Errorf("unexpected marker %q", marker)
			fmt.Fprint(w, `{"replication_groups": []}`)
		}
	})
}

func HandleUpdate(t *testing.T, fakeServer th.FakeServer, request string) {
	fakeServer.Mux.HandleFunc("/replication-groups/"+firstID, func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, "PUT")
		th.TestJSONRequest(t, r, request)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"replication_group": %s}`, firstJSON)
	})
}

// HandleDelete checks the keep_replica query: want is its value, "" for
// none. It answers 202 without a body.
func HandleDelete(t *testing.T, fakeServer th.FakeServer, want string) {
	fakeServer.Mux.HandleFunc("/replication-groups/"+secondID, func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, "DELETE")
		if want == "" {
			th.CheckEquals(t, "", r.URL.RawQuery)
		} else {
			th.TestFormValues(t, r, map[string]string{"keep_replica": want})
		}
		w.WriteHeader(http.StatusAccepted)
	})
}

// HandleAction checks an action's body and answers 202 with {key:
// object}.
func HandleAction(t *testing.T, fakeServer th.FakeServer, request, key, object string) {
	fakeServer.Mux.HandleFunc("/replication-groups/"+firstID+"/action", func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, "POST")
		th.TestHeader(t, r, "Content-Type", "application/json")
		th.TestJSONRequest(t, r, request)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{%q: %s}`, key, object)
	})
}

func HandleSubresource(t *testing.T, fakeServer th.FakeServer, sub, body string) {
	fakeServer.Mux.HandleFunc("/replication-groups/"+firstID+"/"+sub, func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, "GET")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	})
}

func HandleFault(t *testing.T, fakeServer th.FakeServer, path string, code int, name, msg string) {
	fakeServer.Mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Openstack-Request-Id", "req-fault")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{%q: {"code": %d, "message": %q}}`, name, code, msg)
	})
}

// The drills of a group drill of the newest point: one per member.
var drillsJSON = fmt.Sprintf(`{"drills": [
	{"id": %q, "replication_id": %q, "name": "drill-1", "point": "ferry-ta", "status": "creating",
	 "volume_id": null, "requested_at": "2026-12-03T18:10:00Z", "available_at": null, "rto_seconds": null, "error": null},
	{"id": %q, "replication_id": %q, "name": "drill-1", "point": "ferry-tb", "status": "available",
	 "volume_id": "vol-drill-b", "requested_at": "2026-12-03T18:10:00Z", "available_at": "2026-12-03T18:10:21.5Z", "rto_seconds": 21.5, "error": null}
]}`, drillA, memberA, drillB, memberB)

var expectedDrills = []replicationgroups.DrillInfo{
	{ID: drillA, ReplicationID: memberA, Name: "drill-1", Point: "ferry-ta", Status: "creating",
		RequestedAt: time.Date(2026, 12, 3, 18, 10, 0, 0, time.UTC)},
	{ID: drillB, ReplicationID: memberB, Name: "drill-1", Point: "ferry-tb", Status: "available", VolumeID: "vol-drill-b",
		RequestedAt: time.Date(2026, 12, 3, 18, 10, 0, 0, time.UTC),
		AvailableAt: ptr(time.Date(2026, 12, 3, 18, 10, 21, 500000000, time.UTC)),
		RTOSeconds:  ptr(21.5)},
}

var pointsJSON = fmt.Sprintf(`{"points": [
	{"name": %q, "created_at": "2026-12-03T18:00:00Z", "members": [
		{"replication_id": %q, "volume_id": %q, "point": "ferry-ta"},
		{"replication_id": %q, "volume_id": %q, "point": "ferry-tb"}]},
	{"name": "older-cycle", "created_at": "2026-12-03T17:59:00Z", "members": []}
]}`, cycleID, memberA, volumeA, memberB, volumeB)

var expectedPoints = []replicationgroups.Point{
	{Name: cycleID, CreatedAt: time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC), Members: []replicationgroups.PointMember{
		{ReplicationID: memberA, VolumeID: volumeA, Point: "ferry-ta"},
		{ReplicationID: memberB, VolumeID: volumeB, Point: "ferry-tb"},
	}},
	{Name: "older-cycle", CreatedAt: time.Date(2026, 12, 3, 17, 59, 0, 0, time.UTC), Members: []replicationgroups.PointMember{}},
}
