package testing

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	th "github.com/gophercloud/gophercloud/v2/testhelper"
	fake "github.com/gophercloud/gophercloud/v2/testhelper/client"

	"github.com/ferry-project/ferry/services/client/replications"
)

const (
	firstID  = "7c0e1d2a-3b4c-4d5e-8f60-718293a4b5c1"
	secondID = "2f3e4d5c-6b7a-4890-a1b2-c3d4e5f60712"
	cycleID  = "0b7d2a3e-4c1f-4f43-9a55-0d5c1f7e9a01"
	drillID  = "d1d2d3d4-e5e6-4f70-8182-939495969798"
	volumeID = "5b6c7d8e-9f00-4a1b-8c2d-3e4f5a6b7c8d"
)

// A replication as ferry-api renders it: protecting a Cinder volume,
// with one point, lag within the RPO.
var firstJSON = fmt.Sprintf(`{
	"id": %q,
	"name": "db-disk",
	"description": "the database",
	"project_id": "demo-project",
	"user_id": "demo-user",
	"status": "active",
	"source": {"region": "RegionOne", "volume_id": %q, "pool": "volumes", "image": "volume-%s"},
	"destination": {"region": "RegionTwo", "pool": "volumes", "image": "ferry-replica-%s"},
	"interval_seconds": 300,
	"rpo_seconds": 900,
	"retention": {"keep_last": 6, "keep_hourly": 24, "keep_daily": 7},
	"bandwidth_limit": 104857600,
	"last_sync_at": "2026-12-03T10:00:00.250000Z",
	"lag_seconds": 42.5,
	"rpo_breached": false,
	"last_transfer_id": %q,
	"last_error": null,
	"points_count": 1,
	"bytes_last_cycle": 4194304,
	"next_run_at": "2026-12-03T10:05:00.000000Z",
	"cycles": {"completed": 12, "failed": 1, "skipped": 2},
	"created_at": "2026-12-02T09:00:00.000000Z",
	"updated_at": "2026-12-03T10:00:03.000000Z"
}`, firstID, volumeID, volumeID, firstID, cycleID)

// An admin's pool+image replication, paused before its first point:
// nulls where nothing is known yet, breached.
var secondJSON = fmt.Sprintf(`{
	"id": %q,
	"name": "",
	"description": "",
	"project_id": "admin-project",
	"user_id": "admin-user",
	"status": "paused",
	"source": {"region": "RegionTwo", "volume_id": null, "pool": "images", "image": "golden"},
	"destination": {"region": "RegionOne", "pool": "images", "image": "ferry-replica-%s"},
	"interval_seconds": 60,
	"rpo_seconds": 120,
	"retention": {"keep_last": 1, "keep_hourly": 0, "keep_daily": 0},
	"bandwidth_limit": 0,
	"last_sync_at": null,
	"lag_seconds": null,
	"rpo_breached": true,
	"last_transfer_id": null,
	"last_error": "source pool images: permission denied",
	"points_count": 0,
	"bytes_last_cycle": 0,
	"next_run_at": "2026-12-01T08:01:00.000000Z",
	"cycles": {"completed": 0, "failed": 3, "skipped": 0},
	"created_at": "2026-12-01T08:00:00.000000Z",
	"updated_at": "2026-12-01T08:04:00.000000Z"
}`, secondID, secondID)

func ptr[T any](v T) *T { return &v }

var firstReplication = replications.Replication{
	ID: firstID, Name: "db-disk", Description: "the database", ProjectID: "demo-project", UserID: "demo-user",
	Status:          "active",
	Source:          replications.Source{Region: "RegionOne", VolumeID: volumeID, Pool: "volumes", Image: "volume-" + volumeID},
	Destination:     replications.Destination{Region: "RegionTwo", Pool: "volumes", Image: "ferry-replica-" + firstID},
	IntervalSeconds: 300, RPOSeconds: 900,
	Retention:      replications.Retention{KeepLast: 6, KeepHourly: 24, KeepDaily: 7},
	BandwidthLimit: 100 << 20,
	LastSyncAt:     ptr(time.Date(2026, 12, 3, 10, 0, 0, 250000000, time.UTC)),
	LagSeconds:     ptr(42.5),
	LastTransferID: cycleID,
	PointsCount:    1, BytesLastCycle: 4 << 20,
	NextRunAt: ptr(time.Date(2026, 12, 3, 10, 5, 0, 0, time.UTC)),
	Cycles:    replications.Cycles{Completed: 12, Failed: 1, Skipped: 2},
	CreatedAt: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC),
	UpdatedAt: time.Date(2026, 12, 3, 10, 0, 3, 0, time.UTC),
}

var secondReplication = replications.Replication{
	ID: secondID, ProjectID: "admin-project", UserID: "admin-user", Status: "paused",
	Source:          replications.Source{Region: "RegionTwo", Pool: "images", Image: "golden"},
	Destination:     replications.Destination{Region: "RegionOne", Pool: "images", Image: "ferry-replica-" + secondID},
	IntervalSeconds: 60, RPOSeconds: 120,
	Retention:   replications.Retention{KeepLast: 1},
	RPOBreached: true,
	LastError:   "source pool images: permission denied",
	NextRunAt:   ptr(time.Date(2026, 12, 1, 8, 1, 0, 0, time.UTC)),
	Cycles:      replications.Cycles{Failed: 3},
	CreatedAt:   time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC),
	UpdatedAt:   time.Date(2026, 12, 1, 8, 4, 0, 0, time.UTC),
}

const createRequest = `{
	"replication": {
		"name": "db-disk",
		"description": "the database",
		"source": {"region": "RegionOne", "volume_id": "` + volumeID + `"},
		"destination": {"region": "RegionTwo"},
		"interval_seconds": 300,
		"rpo_seconds": 900,
		"retention": {"keep_last": 6, "keep_hourly": 24, "keep_daily": 7},
		"bandwidth_limit": 104857600
	}
}`

func HandleCreateSuccessfully(t *testing.T, fakeServer th.FakeServer) {
	fakeServer.Mux.HandleFunc("/replications", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "POST")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.1")
		th.TestHeader(t, r, "Content-Type", "application/json")
		th.TestHeader(t, r, "Accept", "application/json")
		th.TestJSONRequest(t, r, createRequest)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"replication": %s}`, firstJSON)
	})
}

func HandleGetSuccessfully(t *testing.T, fakeServer th.FakeServer, id, body string) {
	fakeServer.Mux.HandleFunc("/replications/"+id, func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "GET")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.1")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"replication": %s}`, body)
	})
}

// HandleListTwoPages serves page one (limit=1) with a next link carrying
// the marker, then page two without a link.
func HandleListTwoPages(t *testing.T, fakeServer th.FakeServer) {
	fakeServer.Mux.HandleFunc("/replications", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "GET")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.1")
		w.Header().Set("Content-Type", "application/json")
		switch marker := r.URL.Query().Get("marker"); marker {
		case "":
			th.TestFormValues(t, r, map[string]string{"limit": "1", "all_projects": "true"})
			fmt.Fprintf(w, `{"replications": [%s], "replications_links": [{"rel": "next", "href": "%s/replications?all_projects=true&limit=1&marker=%s"}]}`,
				firstJSON, fakeServer.Server.URL, firstID)
		case firstID:
			th.TestFormValues(t, r, map[string]string{"limit": "1", "all_projects": "true", "marker": firstID})
			fmt.Fprintf(w, `{"replications": [%s]}`, secondJSON)
		default:
			t.Errorf("unexpected marker %q", marker)
			fmt.Fprint(w, `{"replications": []}`)
		}
	})
}

func HandleUpdate(t *testing.T, fakeServer th.FakeServer, request string) {
	fakeServer.Mux.HandleFunc("/replications/"+firstID, func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "PUT")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.1")
		th.TestJSONRequest(t, r, request)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"replication": %s}`, firstJSON)
	})
}

// HandleDelete checks the keep_replica query: want is its value, "" for
// none.
func HandleDelete(t *testing.T, fakeServer th.FakeServer, want string) {
	fakeServer.Mux.HandleFunc("/replications/"+secondID, func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "DELETE")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.1")
		if want == "" {
			th.CheckEquals(t, "", r.URL.RawQuery)
		} else {
			th.TestFormValues(t, r, map[string]string{"keep_replica": want})
		}
		w.WriteHeader(http.StatusAccepted)
	})
}

func HandleAction(t *testing.T, fakeServer th.FakeServer, id, body string) {
	fakeServer.Mux.HandleFunc("/replications/"+id+"/action", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "POST")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.1")
		th.TestJSONRequest(t, r, body)
		w.WriteHeader(http.StatusAccepted)
	})
}

var drillJSON = fmt.Sprintf(`{"id": %q, "replication_id": %q, "name": "drill-1", "point": "ferry-%s", "status": "creating",
	"volume_id": null, "requested_at": "2026-12-03T10:10:00.000000Z", "available_at": null, "rto_seconds": null, "error": null}`,
	drillID, firstID, cycleID)

var availableDrillJSON = fmt.Sprintf(`{"id": "d-2", "replication_id": %q, "name": "", "point": "ferry-%s", "status": "available",
	"volume_id": "v-drill", "requested_at": "2026-12-03T09:00:00.000000Z", "available_at": "2026-12-03T09:00:21.500000Z", "rto_seconds": 21.5, "error": null}`,
	firstID, cycleID)

var expectedDrill = replications.DrillInfo{
	ID: drillID, ReplicationID: firstID, Name: "drill-1", Point: "ferry-" + cycleID, Status: "creating",
	RequestedAt: time.Date(2026, 12, 3, 10, 10, 0, 0, time.UTC),
}

var expectedAvailableDrill = replications.DrillInfo{
	ID: "d-2", ReplicationID: firstID, Point: "ferry-" + cycleID, Status: "available", VolumeID: "v-drill",
	RequestedAt: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC),
	AvailableAt: ptr(time.Date(2026, 12, 3, 9, 0, 21, 500000000, time.UTC)),
	RTOSeconds:  ptr(21.5),
}

func HandleDrill(t *testing.T, fakeServer th.FakeServer, request string) {
	HandleActionAnswer(t, fakeServer, request, "drill", drillJSON)
}

func HandleSubresource(t *testing.T, fakeServer th.FakeServer, sub, body string) {
	fakeServer.Mux.HandleFunc("/replications/"+firstID+"/"+sub, func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "GET")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.1")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	})
}

var pointsJSON = fmt.Sprintf(`{"points": [
	{"name": "ferry-%s", "created_at": "2026-12-03T10:00:00.250000Z", "digest": "sha256:00ff", "bytes": 4194304, "size": 10737418240, "transfer_id": %q},
	{"name": "ferry-older", "created_at": "2026-12-03T09:55:00.000000Z", "digest": null, "bytes": 0, "size": 10737418240, "transfer_id": "older"}
]}`, cycleID, cycleID)

var expectedPoints = []replications.Point{
	{Name: "ferry-" + cycleID, CreatedAt: time.Date(2026, 12, 3, 10, 0, 0, 250000000, time.UTC), Digest: "sha256:00ff", Bytes: 4 << 20, Size: 10 << 30, TransferID: cycleID},
	{Name: "ferry-older", CreatedAt: time.Date(2026, 12, 3, 9, 55, 0, 0, time.UTC), Size: 10 << 30, TransferID: "older"},
}

var eventsJSON = fmt.Sprintf(`{"events": [
	{"created_at": "2026-12-02T09:00:00.000000Z", "kind": "created", "message": "replication created", "transfer_id": null, "request_id": "req-1"},
	{"created_at": "2026-12-03T10:00:03.000000Z", "kind": "cycle_completed", "message": "4194304 bytes", "transfer_id": %q, "request_id": null}
]}`, cycleID)

var expectedEvents = []replications.Event{
	{CreatedAt: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC), Kind: "created", Message: "replication created", RequestID: "req-1"},
	{CreatedAt: time.Date(2026, 12, 3, 10, 0, 3, 0, time.UTC), Kind: "cycle_completed", Message: "4194304 bytes", TransferID: cycleID},
}

func HandleFault(t *testing.T, fakeServer th.FakeServer, path string, code int, name, msg string) {
	fakeServer.Mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{%q: {"code": %d, "message": %q}}`, name, code, msg)
	})
}

const (
	failoverID = "f0f1f2f3-a4a5-4b6c-9d7e-8f9000112233"
	failbackID = "fb000000-1111-4222-8333-444455556666"
	newVolume  = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
)

// A planned failover just accepted: running, nothing known yet.
var failoverJSON = fmt.Sprintf(`{"id": %q, "replication_id": %q, "kind": "failover", "planned": true, "force": false, "point": null,
	"status": "running", "step": "",
	"from": {"region": "RegionOne", "pool": "volumes", "image": "volume-%s", "volume_id": %q},
	"to": {"region": "RegionTwo", "pool": "volumes", "image": "ferry-replica-%s", "volume_id": null},
	"final_transfer_id": null, "preserved_image": null, "preserved_bytes": 0,
	"requested_at": "2026-12-03T11:00:00.000000Z", "available_at": null, "finished_at": null, "rto_seconds": null,
	"error": null, "user_id": "demo-user"}`, failoverID, firstID, volumeID, volumeID, firstID)

var expectedFailover = replications.FailoverInfo{
	ID: failoverID, ReplicationID: firstID, Kind: "failover", Planned: true, Status: "running",
	From:        replications.FailoverSide{Region: "RegionOne", Pool: "volumes", Image: "volume-" + volumeID, VolumeID: volumeID},
	To:          replications.FailoverSide{Region: "RegionTwo", Pool: "volumes", Image: "ferry-replica-" + firstID},
	RequestedAt: time.Date(2026, 12, 3, 11, 0, 0, 0, time.UTC),
	UserID:      "demo-user",
}

// An unplanned, forced failover that ended: the new primary registered,
// the old one's later writes preserved, its RTO known.
var doneFailoverJSON = fmt.Sprintf(`{"id": %q, "replication_id": %q, "kind": "failover", "planned": false, "force": true, "point": "ferry-%s",
	"status": "done", "step": "done",
	"from": {"region": "RegionOne", "pool": "volumes", "image": "volume-%s", "volume_id": %q},
	"to": {"region": "RegionTwo", "pool": "volumes", "image": "ferry-replica-%s", "volume_id": %q},
	"final_transfer_id": %q, "preserved_image": "ferry-preserved-%s", "preserved_bytes": 8388608,
	"requested_at": "2026-12-03T11:00:00.000000Z", "available_at": "2026-12-03T11:00:42.250000Z", "finished_at": "2026-12-03T11:01:05.000000Z",
	"rto_seconds": 42.25, "error": null, "user_id": "demo-user"}`,
	failoverID, firstID, cycleID, volumeID, volumeID, firstID, newVolume, cycleID, failoverID)

var expectedDoneFailover = replications.FailoverInfo{
	ID: failoverID, ReplicationID: firstID, Kind: "failover", Force: true, Point: "ferry-" + cycleID, Status: "done", Step: "done",
	From:            replications.FailoverSide{Region: "RegionOne", Pool: "volumes", Image: "volume-" + volumeID, VolumeID: volumeID},
	To:              replications.FailoverSide{Region: "RegionTwo", Pool: "volumes", Image: "ferry-replica-" + firstID, VolumeID: newVolume},
	FinalTransferID: cycleID, PreservedImage: "ferry-preserved-" + failoverID, PreservedBytes: 8 << 20,
	RequestedAt: time.Date(2026, 12, 3, 11, 0, 0, 0, time.UTC),
	AvailableAt: ptr(time.Date(2026, 12, 3, 11, 0, 42, 250000000, time.UTC)),
	FinishedAt:  ptr(time.Date(2026, 12, 3, 11, 1, 5, 0, time.UTC)),
	RTOSeconds:  ptr(42.25),
	UserID:      "demo-user",
}

// A failback that failed.
var failedFailbackJSON = fmt.Sprintf(`{"id": %q, "replication_id": %q, "kind": "failback", "planned": true, "force": false, "point": null,
	"status": "error", "step": "quiesce",
	"from": {"region": "RegionTwo", "pool": "volumes", "image": "ferry-replica-%s", "volume_id": %q},
	"to": {"region": "RegionOne", "pool": "volumes", "image": "volume-%s", "volume_id": %q},
	"final_transfer_id": null, "preserved_image": null, "preserved_bytes": 0,
	"requested_at": "2026-12-03T12:00:00.000000Z", "available_at": null, "finished_at": "2026-12-03T12:00:03.000000Z", "rto_seconds": null,
	"error": "volume is attached", "user_id": "demo-user"}`, failbackID, firstID, firstID, newVolume, volumeID, volumeID)

var expectedFailedFailback = replications.FailoverInfo{
	ID: failbackID, ReplicationID: firstID, Kind: "failback", Planned: true, Status: "error", Step: "quiesce",
	From:        replications.FailoverSide{Region: "RegionTwo", Pool: "volumes", Image: "ferry-replica-" + firstID, VolumeID: newVolume},
	To:          replications.FailoverSide{Region: "RegionOne", Pool: "volumes", Image: "volume-" + volumeID, VolumeID: volumeID},
	RequestedAt: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC),
	FinishedAt:  ptr(time.Date(2026, 12, 3, 12, 0, 3, 0, time.UTC)),
	Error:       "volume is attached",
	UserID:      "demo-user",
}

// HandleActionAnswer checks an action's body and answers 202 with
// {key: object}.
func HandleActionAnswer(t *testing.T, fakeServer th.FakeServer, request, key, object string) {
	fakeServer.Mux.HandleFunc("/replications/"+firstID+"/action", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "POST")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.1")
		th.TestJSONRequest(t, r, request)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{%q: %s}`, key, object)
	})
}
