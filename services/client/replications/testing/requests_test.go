package testing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
	th "github.com/gophercloud/gophercloud/v2/testhelper"
	fake "github.com/gophercloud/gophercloud/v2/testhelper/client"

	"github.com/ferry-project/ferry/services/client/replications"
)

func TestCreate(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleCreateSuccessfully(t, fakeServer)

	actual, err := replications.Create(context.TODO(), fake.ServiceClient(fakeServer), replications.CreateOpts{
		Name:            "db-disk",
		Description:     "the database",
		Source:          replications.SourceOpts{Region: "RegionOne", VolumeID: volumeID},
		Destination:     replications.DestinationOpts{Region: "RegionTwo"},
		IntervalSeconds: 300,
		RPOSeconds:      900,
		Retention:       &replications.RetentionOpts{KeepLast: ptr(6), KeepHourly: ptr(24), KeepDaily: ptr(7)},
		BandwidthLimit:  100 << 20,
	}).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, &firstReplication, actual)
	lag, ok := actual.Lag()
	th.CheckEquals(t, true, ok)
	th.CheckEquals(t, 42500*time.Millisecond, lag)
}

func TestCreateValidation(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	fakeServer.Mux.HandleFunc("/replications", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a request was sent: %s %s", r.Method, r.URL)
	})
	sc := fake.ServiceClient(fakeServer)
	dst := replications.DestinationOpts{Region: "RegionTwo"}
	for _, tc := range []struct {
		name string
		src  replications.SourceOpts
	}{
		{"none", replications.SourceOpts{Region: "RegionOne"}},
		{"volume and image", replications.SourceOpts{Region: "RegionOne", VolumeID: "v", Pool: "p", Image: "i"}},
		{"volume and pool", replications.SourceOpts{Region: "RegionOne", VolumeID: "v", Pool: "p"}},
		{"pool without image", replications.SourceOpts{Region: "RegionOne", Pool: "p"}},
		{"image without pool", replications.SourceOpts{Region: "RegionOne", Image: "i"}},
	} {
		_, err := replications.Create(context.TODO(), sc, replications.CreateOpts{Source: tc.src, Destination: dst, IntervalSeconds: 60, RPOSeconds: 120}).Extract()
		if !errors.Is(err, replications.ErrInvalidSource) || !strings.Contains(err.Error(), "exactly one of volume_id, or pool and image") {
			t.Errorf("%s: error %v, want ErrInvalidSource", tc.name, err)
		}
	}
	// Required regions, interval and RPO, checked by gophercloud.BuildRequestBody.
	src := replications.SourceOpts{Region: "RegionOne", VolumeID: "v"}
	for _, opts := range []replications.CreateOpts{
		{Source: replications.SourceOpts{VolumeID: "v"}, Destination: dst, IntervalSeconds: 60, RPOSeconds: 120},
		{Source: src, IntervalSeconds: 60, RPOSeconds: 120},
		{Source: src, Destination: dst, RPOSeconds: 120},
		{Source: src, Destination: dst, IntervalSeconds: 60},
	} {
		_, err := replications.Create(context.TODO(), sc, opts).Extract()
		var missing gophercloud.ErrMissingInput
		if !errors.As(err, &missing) {
			t.Errorf("%+v: error %v, want ErrMissingInput", opts, err)
		}
	}
	// The valid kinds of source pass; no retention and no limit are
	// left to the server.
	for _, s := range []replications.SourceOpts{src, {Region: "RegionOne", Pool: "p", Image: "i"}} {
		b, err := replications.CreateOpts{Source: s, Destination: dst, IntervalSeconds: 60, RPOSeconds: 120}.ToReplicationCreateMap()
		th.AssertNoErr(t, err)
		body := b["replication"].(map[string]any)
		for _, k := range []string{"retention", "bandwidth_limit", "name", "description"} {
			if _, ok := body[k]; ok {
				t.Errorf("%+v: body sends %s: %v", s, k, body)
			}
		}
		if body["interval_seconds"] != float64(60) || body["rpo_seconds"] != float64(120) {
			t.Errorf("body %v", body)
		}
	}
}

func TestGet(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleGetSuccessfully(t, fakeServer, secondID, secondJSON)

	actual, err := replications.Get(context.TODO(), fake.ServiceClient(fakeServer), secondID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, &secondReplication, actual)
	if _, ok := actual.Lag(); ok {
		t.Error("a replication without a point has a lag")
	}
}

func TestGetNotFound(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	const missing = "00000000-0000-0000-0000-000000000000"
	HandleFault(t, fakeServer, "/replications/"+missing, http.StatusNotFound, "itemNotFound", "Replication "+missing+" could not be found.")

	_, err := replications.Get(context.TODO(), fake.ServiceClient(fakeServer), missing).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		t.Fatalf("error %v, want a 404", err)
	}
	if !strings.Contains(err.Error(), "could not be found") {
		t.Errorf("error %q does not carry the server's message", err)
	}
}

func TestListTwoPages(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleListTwoPages(t, fakeServer)

	opts := replications.ListOpts{Limit: 1, AllProjects: true}
	var pages [][]replications.Replication
	err := replications.List(fake.ServiceClient(fakeServer), opts).EachPage(context.TODO(), func(_ context.Context, page pagination.Page) (bool, error) {
		actual, err := replications.ExtractReplications(page)
		if err != nil {
			return false, err
		}
		pages = append(pages, actual)
		return true, nil
	})
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, [][]replications.Replication{{firstReplication}, {secondReplication}}, pages)

	all, err := replications.List(fake.ServiceClient(fakeServer), opts).AllPages(context.TODO())
	th.AssertNoErr(t, err)
	actual, err := replications.ExtractReplications(all)
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, []replications.Replication{firstReplication, secondReplication}, actual)
}

func TestListQuery(t *testing.T) {
	for _, tc := range []struct {
		opts replications.ListOpts
		want string
	}{
		{replications.ListOpts{}, ""},
		{replications.ListOpts{AllProjects: false, Limit: 2}, "?limit=2"},
		{replications.ListOpts{Limit: 5, Marker: "m", AllProjects: true}, "?all_projects=true&limit=5&marker=m"},
	} {
		q, err := tc.opts.ToReplicationListQuery()
		th.AssertNoErr(t, err)
		th.CheckEquals(t, tc.want, q)
	}
}

func TestListEmpty(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	fakeServer.Mux.HandleFunc("/replications", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"replications": []}`))
	})
	pages := 0
	err := replications.List(fake.ServiceClient(fakeServer), nil).EachPage(context.TODO(), func(context.Context, pagination.Page) (bool, error) {
		pages++
		return true, nil
	})
	th.AssertNoErr(t, err)
	th.CheckEquals(t, 0, pages)
}

// Only what is set is sent: a name alone, or the schedule, a whole
// retention and a limit back to the default (zero is sent).
func TestUpdate(t *testing.T) {
	for _, tc := range []struct {
		opts    replications.UpdateOpts
		request string
	}{
		{replications.UpdateOpts{Name: ptr("renamed")}, `{"replication": {"name": "renamed"}}`},
		{replications.UpdateOpts{Description: ptr("")}, `{"replication": {"description": ""}}`},
		{replications.UpdateOpts{IntervalSeconds: ptr(60), RPOSeconds: ptr(180), BandwidthLimit: ptr[int64](0),
			Retention: &replications.RetentionOpts{KeepHourly: ptr(0), KeepDaily: ptr(2)}},
			`{"replication": {"interval_seconds": 60, "rpo_seconds": 180, "bandwidth_limit": 0, "retention": {"keep_hourly": 0, "keep_daily": 2}}}`},
	} {
		t.Run(tc.request, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleUpdate(t, fakeServer, tc.request)
			actual, err := replications.Update(context.TODO(), fake.ServiceClient(fakeServer), firstID, tc.opts).Extract()
			th.AssertNoErr(t, err)
			th.CheckDeepEquals(t, &firstReplication, actual)
		})
	}
}

func TestUpdateInvalid(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleFault(t, fakeServer, "/replications/"+firstID, http.StatusBadRequest, "badRequest", "interval_seconds must be at least 60")
	_, err := replications.Update(context.TODO(), fake.ServiceClient(fakeServer), firstID, replications.UpdateOpts{IntervalSeconds: ptr(1)}).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusBadRequest) || !strings.Contains(err.Error(), "at least 60") {
		t.Errorf("error %v, want the server's 400", err)
	}
}

func TestDelete(t *testing.T) {
	for _, tc := range []struct {
		opts replications.DeleteOptsBuilder
		want string
	}{
		{nil, ""},
		{replications.DeleteOpts{}, ""},
		{replications.DeleteOpts{KeepReplica: true}, "true"},
	} {
		t.Run(fmt.Sprint(tc.opts), func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleDelete(t, fakeServer, tc.want)
			th.AssertNoErr(t, replications.Delete(context.TODO(), fake.ServiceClient(fakeServer), secondID, tc.opts).ExtractErr())
		})
	}
}

func TestActions(t *testing.T) {
	for name, do := range map[string]func(context.Context, *gophercloud.ServiceClient, string) replications.ActionResult{
		"sync": replications.Sync, "pause": replications.Pause, "resume": replications.Resume,
	} {
		t.Run(name, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleAction(t, fakeServer, firstID, `{"`+name+`": null}`)
			th.AssertNoErr(t, do(context.TODO(), fake.ServiceClient(fakeServer), firstID).ExtractErr())
		})
	}
}

func TestActionConflict(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleFault(t, fakeServer, "/replications/"+secondID+"/action", http.StatusConflict, "conflictingRequest", "replication is paused")
	err := replications.Sync(context.TODO(), fake.ServiceClient(fakeServer), secondID).ExtractErr()
	if !gophercloud.ResponseCodeIs(err, http.StatusConflict) {
		t.Errorf("error %v, want a 409", err)
	}
}

func TestDrill(t *testing.T) {
	for _, tc := range []struct {
		opts    replications.DrillOpts
		request string
	}{
		{replications.DrillOpts{Point: "ferry-" + cycleID, Name: "drill-1"}, `{"drill": {"point": "ferry-` + cycleID + `", "name": "drill-1"}}`},
		{replications.DrillOpts{Point: "ferry-" + cycleID}, `{"drill": {"point": "ferry-` + cycleID + `"}}`},
	} {
		t.Run(tc.request, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleDrill(t, fakeServer, tc.request)
			actual, err := replications.Drill(context.TODO(), fake.ServiceClient(fakeServer), firstID, tc.opts).Extract()
			th.AssertNoErr(t, err)
			th.CheckDeepEquals(t, &expectedDrill, actual)
		})
	}
}

func TestDrillErrors(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleFault(t, fakeServer, "/replications/"+firstID+"/action", http.StatusNotFound, "itemNotFound", "Point ferry-gone could not be found.")
	sc := fake.ServiceClient(fakeServer)
	if _, err := replications.Drill(context.TODO(), sc, firstID, replications.DrillOpts{Name: "x"}).Extract(); !errors.Is(err, replications.ErrNoPoint) {
		t.Errorf("no point: error %v", err)
	}
	_, err := replications.Drill(context.TODO(), sc, firstID, replications.DrillOpts{Point: "ferry-gone"}).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusNotFound) || !strings.Contains(err.Error(), "ferry-gone") {
		t.Errorf("unknown point: error %v, want the server's 404", err)
	}
}

func TestListPoints(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleSubresource(t, fakeServer, "points", pointsJSON)
	actual, err := replications.ListPoints(context.TODO(), fake.ServiceClient(fakeServer), firstID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, expectedPoints, actual)
}

func TestListEvents(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleSubresource(t, fakeServer, "events", eventsJSON)
	actual, err := replications.ListEvents(context.TODO(), fake.ServiceClient(fakeServer), firstID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, expectedEvents, actual)
}

func TestListDrills(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleSubresource(t, fakeServer, "drills", `{"drills": [`+drillJSON+`, `+availableDrillJSON+`]}`)
	actual, err := replications.ListDrills(context.TODO(), fake.ServiceClient(fakeServer), firstID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, []replications.DrillInfo{expectedDrill, expectedAvailableDrill}, actual)
}

func TestFailover(t *testing.T) {
	for _, tc := range []struct {
		opts    replications.FailoverOpts
		request string
	}{
		{replications.FailoverOpts{}, `{"failover": {}}`},
		{replications.FailoverOpts{Force: true}, `{"failover": {"force": true}}`},
		{replications.FailoverOpts{Point: "latest", Force: true}, `{"failover": {"point": "latest", "force": true}}`},
		{replications.FailoverOpts{Point: "ferry-" + cycleID, Force: true}, `{"failover": {"point": "ferry-` + cycleID + `", "force": true}}`},
	} {
		t.Run(tc.request, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleActionAnswer(t, fakeServer, tc.request, "failover", failoverJSON)
			actual, err := replications.Failover(context.TODO(), fake.ServiceClient(fakeServer), firstID, tc.opts).Extract()
			th.AssertNoErr(t, err)
			th.CheckDeepEquals(t, &expectedFailover, actual)
			if _, ok := actual.RTO(); ok || actual.Ended() {
				t.Errorf("a running failover has an RTO or ended: %+v", actual)
			}
		})
	}
}

func TestFailoverErrors(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleFault(t, fakeServer, "/replications/"+firstID+"/action", http.StatusConflict, "conflictingRequest",
		"Volume "+volumeID+" in RegionOne is attached: detach it first, or force the failover.")
	sc := fake.ServiceClient(fakeServer)
	// A point without force: refused before a request.
	if _, err := replications.Failover(context.TODO(), sc, firstID, replications.FailoverOpts{Point: "latest"}).Extract(); !errors.Is(err, replications.ErrUnplannedNeedsForce) {
		t.Errorf("point without force: error %v", err)
	}
	_, err := replications.Failover(context.TODO(), sc, firstID, replications.FailoverOpts{}).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusConflict) || !strings.Contains(err.Error(), "is attached") {
		t.Errorf("attached: error %v, want the server's 409", err)
	}
	_, err = replications.Failback(context.TODO(), sc, firstID, replications.FailbackOpts{}).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusConflict) {
		t.Errorf("failback: error %v, want the server's 409", err)
	}
}

func TestFailback(t *testing.T) {
	for _, tc := range []struct {
		opts    replications.FailbackOpts
		request string
	}{
		{replications.FailbackOpts{}, `{"failback": null}`},
		{replications.FailbackOpts{Force: true}, `{"failback": {"force": true}}`},
	} {
		t.Run(tc.request, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleActionAnswer(t, fakeServer, tc.request, "failover", failedFailbackJSON)
			actual, err := replications.Failback(context.TODO(), fake.ServiceClient(fakeServer), firstID, tc.opts).Extract()
			th.AssertNoErr(t, err)
			th.CheckDeepEquals(t, &expectedFailedFailback, actual)
		})
	}
}

func TestListFailovers(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleSubresource(t, fakeServer, "failovers", `{"failovers": [`+failedFailbackJSON+`, `+doneFailoverJSON+`]}`)
	actual, err := replications.ListFailovers(context.TODO(), fake.ServiceClient(fakeServer), firstID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, []replications.FailoverInfo{expectedFailedFailback, expectedDoneFailover}, actual)
	rto, ok := actual[1].RTO()
	th.CheckEquals(t, true, ok)
	th.CheckEquals(t, 42250*time.Millisecond, rto)
	th.CheckEquals(t, true, actual[0].Ended() && actual[1].Ended())
}

func TestGetFailover(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleSubresource(t, fakeServer, "failovers/"+failoverID, `{"failover": `+doneFailoverJSON+`}`)
	HandleFault(t, fakeServer, "/replications/"+firstID+"/failovers/nope", http.StatusNotFound, "itemNotFound",
		"Failover nope of replication "+firstID+" could not be found.")
	sc := fake.ServiceClient(fakeServer)
	actual, err := replications.GetFailover(context.TODO(), sc, firstID, failoverID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, &expectedDoneFailover, actual)
	_, err = replications.GetFailover(context.TODO(), sc, firstID, "nope").Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusNotFound) || !strings.Contains(err.Error(), "Failover nope") {
		t.Errorf("unknown failover: error %v, want the server's 404", err)
	}
}

// The actions ask for 1.1 even on a client set to an older microversion,
// and leave it as it was.
func TestFailoverAsksForItsMicroversion(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleSubresource(t, fakeServer, "failovers", `{"failovers": []}`)
	sc := fake.ServiceClient(fakeServer)
	sc.Microversion = "1.0"
	actual, err := replications.ListFailovers(context.TODO(), sc, firstID).Extract()
	th.AssertNoErr(t, err)
	th.CheckEquals(t, 0, len(actual))
	th.CheckEquals(t, "1.0", sc.Microversion)
}

// At 1.2 a replication names its group (group_id; null when none).
func TestGetGroupMember(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	const groupID = "6a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
	member := strings.Replace(firstJSON, `"cycles":`, `"group_id": "`+groupID+`", "cycles":`, 1)
	single := strings.Replace(secondJSON, `"cycles":`, `"group_id": null, "cycles":`, 1)
	for id, body := range map[string]string{firstID: member, secondID: single} {
		fakeServer.Mux.HandleFunc("/replications/"+id, func(w http.ResponseWriter, r *http.Request) {
			th.TestMethod(t, r, "GET")
			th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.2")
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"replication": %s}`, body)
		})
	}
	sc := fake.ServiceClient(fakeServer)
	sc.Type, sc.Microversion = "volume-ferry", "1.2"
	actual, err := replications.Get(context.TODO(), sc, firstID).Extract()
	th.AssertNoErr(t, err)
	want := firstReplication
	want.GroupID = groupID
	th.CheckDeepEquals(t, &want, actual)
	actual, err = replications.Get(context.TODO(), sc, secondID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, &secondReplication, actual)
}
