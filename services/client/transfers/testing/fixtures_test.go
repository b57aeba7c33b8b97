package testing

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	th "github.com/gophercloud/gophercloud/v2/testhelper"
	fake "github.com/gophercloud/gophercloud/v2/testhelper/client"

	"github.com/ferry-project/ferry/services/client/transfers"
)

const (
	firstID  = "0b7d2a3e-4c1f-4f43-9a55-0d5c1f7e9a01"
	secondID = "5f2c9d7e-8a4b-4c3d-b1e2-7f6a5d4c3b02"
	// replicationID: the first transfer is a cycle of it.
	replicationID = "9a1e7c3d-2b4f-4e6a-8c0d-1f2e3d4c5b06"
)

// A transfer as ferry-api renders it: nulls where nothing applies.
var firstJSON = fmt.Sprintf(`{
	"id": %q,
	"name": "first",
	"description": "",
	"project_id": "admin-project",
	"user_id": "admin-user",
	"status": "transferring",
	"mode": "full",
	"source": {"region": "RegionOne", "pool": "volumes", "image": "vol-1", "snapshot": "ferry-%s", "volume_id": null, "backup_id": null},
	"destination": {"region": "RegionTwo", "pool": "volumes", "image": "vol-1", "snapshot": null, "volume_id": null, "backup_id": null},
	"bytes_total": 10737418240,
	"bytes_transferred": 2684354560,
	"progress": 25,
	"rate_bytes_per_second": 104857600,
	"eta_seconds": 77,
	"digest": null,
	"error": null,
	"created_at": "2026-11-25T10:00:00.123456Z",
	"updated_at": "2026-11-25T10:01:00.000000Z",
	"started_at": "2026-11-25T10:00:05.500000Z",
	"finished_at": null,
	"replication_id": %q
}`, firstID, firstID, replicationID)

var secondJSON = fmt.Sprintf(`{
	"id": %q,
	"name": "",
	"description": "again",
	"project_id": "admin-project",
	"user_id": "admin-user",
	"status": "error",
	"mode": "incremental",
	"source": {"region": "RegionTwo", "pool": "backups", "image": "img", "snapshot": null, "volume_id": null, "backup_id": null},
	"destination": {"region": "RegionOne", "pool": "backups", "image": "img", "snapshot": null, "volume_id": null, "backup_id": null},
	"bytes_total": 1024,
	"bytes_transferred": 1024,
	"progress": 100,
	"rate_bytes_per_second": 0,
	"eta_seconds": null,
	"digest": "sha256:abcd",
	"error": "destination pool full",
	"created_at": "2026-11-24T09:00:00.000000Z",
	"updated_at": "2026-11-24T09:30:00.000000Z",
	"started_at": "2026-11-24T09:00:01.000000Z",
	"finished_at": "2026-11-24T09:30:00.000001Z",
	"replication_id": null
}`, secondID)

func ptr[T any](v T) *T { return &v }

var firstTransfer = transfers.Transfer{
	ID: firstID, Name: "first", ProjectID: "admin-project", UserID: "admin-user",
	Status: "transferring", Mode: "full",
	Source:      transfers.Location{Region: "RegionOne", Pool: "volumes", Image: "vol-1", Snapshot: "ferry-" + firstID},
	Destination: transfers.Location{Region: "RegionTwo", Pool: "volumes", Image: "vol-1"},
	BytesTotal:  10737418240, BytesTransferred: 2684354560, Progress: 25, RateBytesPerSecond: 104857600,
	ETASeconds:    ptr[int64](77),
	CreatedAt:     time.Date(2026, 11, 25, 10, 0, 0, 123456000, time.UTC),
	UpdatedAt:     time.Date(2026, 11, 25, 10, 1, 0, 0, time.UTC),
	StartedAt:     ptr(time.Date(2026, 11, 25, 10, 0, 5, 500000000, time.UTC)),
	ReplicationID: replicationID,
}

var secondTransfer = transfers.Transfer{
	ID: secondID, Description: "again", ProjectID: "admin-project", UserID: "admin-user",
	Status: "error", Mode: "incremental",
	Source:      transfers.Location{Region: "RegionTwo", Pool: "backups", Image: "img"},
	Destination: transfers.Location{Region: "RegionOne", Pool: "backups", Image: "img"},
	BytesTotal:  1024, BytesTransferred: 1024, Progress: 100,
	Digest: "sha256:abcd", Error: "destination pool full",
	CreatedAt:  time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC),
	UpdatedAt:  time.Date(2026, 11, 24, 9, 30, 0, 0, time.UTC),
	StartedAt:  ptr(time.Date(2026, 11, 24, 9, 0, 1, 0, time.UTC)),
	FinishedAt: ptr(time.Date(2026, 11, 24, 9, 30, 0, 1000, time.UTC)),
}

const createRequest = `{
	"transfer": {
		"source": {"region": "RegionOne", "pool": "volumes", "image": "vol-1"},
		"destination": {"region": "RegionTwo", "image": "vol-1-copy"},
		"mode": "full",
		"name": "first"
	}
}`

func HandleCreateSuccessfully(t *testing.T, fakeServer th.FakeServer) {
	fakeServer.Mux.HandleFunc("/transfers", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "POST")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestHeader(t, r, "Content-Type", "application/json")
		th.TestHeader(t, r, "Accept", "application/json")
		th.TestJSONRequest(t, r, createRequest)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"transfer": %s}`, firstJSON)
	})
}

func HandleGetSuccessfully(t *testing.T, fakeServer th.FakeServer) {
	fakeServer.Mux.HandleFunc("/transfers/"+firstID, func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "GET")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"transfer": %s}`, firstJSON)
	})
}

// HandleListTwoPages serves page one (limit=1) with a next link carrying
// the marker, then page two without a link.
func HandleListTwoPages(t *testing.T, fakeServer th.FakeServer) {
	fakeServer.Mux.HandleFunc("/transfers", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "GET")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		w.Header().Set("Content-Type", "application/json")
		switch marker := r.URL.Query().Get("marker"); marker {
		case "":
			th.TestFormValues(t, r, map[string]string{"limit": "1", "status": "error", "sort_key": "created_at", "sort_dir": "asc", "all_projects": "true"})
			fmt.Fprintf(w, `{"transfers": [%s], "transfers_links": [{"rel": "next", "href": "%s/transfers?all_projects=true&limit=1&marker=%s&sort_dir=asc&sort_key=created_at&status=error"}]}`,
				firstJSON, fakeServer.Server.URL, firstID)
		case firstID:
			th.TestFormValues(t, r, map[string]string{"limit": "1", "status": "error", "sort_key": "created_at", "sort_dir": "asc", "all_projects": "true", "marker": firstID})
			fmt.Fprintf(w, `{"transfers": [%s]}`, secondJSON)
		default:
			t.Errorf("unexpected marker %q", marker)
			fmt.Fprint(w, `{"transfers": []}`)
		}
	})
}

func HandleAction(t *testing.T, fakeServer th.FakeServer, id, body string) {
	fakeServer.Mux.HandleFunc("/transfers/"+id+"/action", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "POST")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		th.TestJSONRequest(t, r, body)
		w.WriteHeader(http.StatusAccepted)
	})
}

func HandleDeleteSuccessfully(t *testing.T, fakeServer th.FakeServer) {
	fakeServer.Mux.HandleFunc("/transfers/"+secondID, func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "DELETE")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		w.WriteHeader(http.StatusNoContent)
	})
}

func HandleEventsSuccessfully(t *testing.T, fakeServer th.FakeServer) {
	fakeServer.Mux.HandleFunc("/transfers/"+secondID+"/events", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "GET")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"events": [
			{"created_at": "2026-11-24T09:00:00.000000Z", "kind": "transition", "from_status": null, "to_status": "queued", "message": "created", "request_id": "req-1"},
			{"created_at": "2026-11-24T09:30:00.000000Z", "kind": "error", "from_status": "transferring", "to_status": "error", "message": "destination pool full", "request_id": null}
		]}`)
	})
}

var expectedEvents = []transfers.Event{
	{CreatedAt: time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC), Kind: "transition", ToStatus: "queued", Message: "created", RequestID: "req-1"},
	{CreatedAt: time.Date(2026, 11, 24, 9, 30, 0, 0, time.UTC), Kind: "error", FromStatus: "transferring", ToStatus: "error", Message: "destination pool full"},
}

func HandleNotFound(t *testing.T, fakeServer th.FakeServer, id string) {
	fakeServer.Mux.HandleFunc("/transfers/"+id, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"itemNotFound": {"code": 404, "message": "Transfer %s could not be found."}}`, id)
	})
}
