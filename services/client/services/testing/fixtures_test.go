package testing

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	th "github.com/gophercloud/gophercloud/v2/testhelper"
	fake "github.com/gophercloud/gophercloud/v2/testhelper/client"

	"github.com/ferry-project/ferry/services/client/services"
)

const listResponse = `{"services": [
	{"binary": "ferry-agent", "host": "node-1", "region": "RegionOne", "state": "up", "status": "enabled", "version": "1.0.0", "updated_at": "2026-11-25T10:00:00.250000Z",
	 "running_transfers": 1, "max_transfers": 2,
	 "ceph_health": {"status": "HEALTH_WARN", "checks": [{"code": "OSD_NEARFULL", "severity": "HEALTH_WARN", "message": "1 nearfull osd(s)"}], "others": 1, "error": null, "checked_at": "2026-11-25T09:59:50.000000Z"}},
	{"binary": "ferry-agent", "host": "node-2", "region": "RegionTwo", "state": "down", "status": "disabled", "version": "0.9.0", "updated_at": "2026-11-24T08:00:00.000000Z", "ceph_health": null}
]}`

var expectedServices = []services.Service{
	{Binary: "ferry-agent", Host: "node-1", Region: "RegionOne", State: "up", Status: "enabled", Version: "1.0.0",
		UpdatedAt: time.Date(2026, 11, 25, 10, 0, 0, 250000000, time.UTC), RunningTransfers: ptr(1), MaxTransfers: ptr(2),
		CephHealth: &services.CephHealth{Status: ptr("HEALTH_WARN"), Others: 1, CheckedAt: time.Date(2026, 11, 25, 9, 59, 50, 0, time.UTC),
			Checks: []services.HealthCheck{{Code: "OSD_NEARFULL", Severity: "HEALTH_WARN", Message: "1 nearfull osd(s)"}}}},
	{Binary: "ferry-agent", Host: "node-2", Region: "RegionTwo", State: "down", Status: "disabled", Version: "0.9.0",
		UpdatedAt: time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)},
}

func HandleListSuccessfully(t *testing.T, fakeServer th.FakeServer) {
	fakeServer.Mux.HandleFunc("/services", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "GET")
		th.TestHeader(t, r, "X-Auth-Token", fake.TokenID)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, listResponse)
	})
}

func ptr[T any](v T) *T { return &v }
