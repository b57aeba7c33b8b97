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

	ferry "github.com/ferry-project/ferry/services/client"
	"github.com/ferry-project/ferry/services/client/replicationgroups"
)

func TestCreate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    replicationgroups.CreateOpts
		request string
	}{
		{"volumes", replicationgroups.CreateOpts{
			Name:            "db",
			Description:     "data and WAL",
			Source:          replicationgroups.SourceOpts{Region: "RegionOne", VolumeIDs: []string{volumeA, volumeB}},
			Destination:     replicationgroups.DestinationOpts{Region: "RegionTwo", Pool: "volumes"},
			IntervalSeconds: 60,
			RPOSeconds:      300,
			Retention:       &replicationgroups.RetentionOpts{KeepLast: ptr(3), KeepHourly: ptr(0)},
			BandwidthLimit:  50 << 20,
		}, `{"replication_group": {
			"name": "db", "description": "data and WAL",
			"source": {"region": "RegionOne", "volume_ids": ["` + volumeA + `", "` + volumeB + `"]},
			"destination": {"region": "RegionTwo", "pool": "volumes"},
			"interval_seconds": 60, "rpo_seconds": 300,
			"retention": {"keep_last": 3, "keep_hourly": 0},
			"bandwidth_limit": 52428800}}`},
		// A Cinder group; what is not set is left to the server.
		{"cinder group", replicationgroups.CreateOpts{
			Source:          replicationgroups.SourceOpts{Region: "RegionOne", CinderGroupID: cinderGrp},
			Destination:     replicationgroups.DestinationOpts{Region: "RegionTwo"},
			IntervalSeconds: 60,
			RPOSeconds:      300,
		}, `{"replication_group": {
			"source": {"region": "RegionOne", "cinder_group_id": "` + cinderGrp + `"},
			"destination": {"region": "RegionTwo"},
			"interval_seconds": 60, "rpo_seconds": 300}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleCreate(t, fakeServer, tc.request)
			actual, err := replicationgroups.Create(context.TODO(), fake.ServiceClient(fakeServer), tc.opts).Extract()
			th.AssertNoErr(t, err)
			th.CheckDeepEquals(t, &firstGroup, actual)
			lag, ok := actual.Lag()
			th.CheckEquals(t, true, ok)
			th.CheckEquals(t, 3*time.Second, lag)
			th.CheckEquals(t, false, actual.FailoverRunning())
		})
	}
}

func TestCreateValidation(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	fakeServer.Mux.HandleFunc("/replication-groups", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a request was sent: %s %s", r.Method, r.URL)
	})
	sc := fake.ServiceClient(fakeServer)
	dst := replicationgroups.DestinationOpts{Region: "RegionTwo"}
	for _, tc := range []struct {
		name string
		src  replicationgroups.SourceOpts
		want string
	}{
		{"none", replicationgroups.SourceOpts{Region: "RegionOne"}, "none given"},
		{"empty list", replicationgroups.SourceOpts{Region: "RegionOne", VolumeIDs: []string{}}, "none given"},
		{"both", replicationgroups.SourceOpts{Region: "RegionOne", VolumeIDs: []string{volumeA}, CinderGroupID: cinderGrp}, "both given"},
		{"empty id", replicationgroups.SourceOpts{Region: "RegionOne", VolumeIDs: []string{volumeA, ""}}, "an empty volume id"},
	} {
		_, err := replicationgroups.Create(context.TODO(), sc, replicationgroups.CreateOpts{Source: tc.src, Destination: dst, IntervalSeconds: 60, RPOSeconds: 120}).Extract()
		if !errors.Is(err, replicationgroups.ErrInvalidSource) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want ErrInvalidSource: %s", tc.name, err, tc.want)
		}
	}
	// Required regions, interval and RPO.
	src := replicationgroups.SourceOpts{Region: "RegionOne", VolumeIDs: []string{volumeA}}
	for _, opts := range []replicationgroups.CreateOpts{
		{Source: replicationgroups.SourceOpts{VolumeIDs: []string{volumeA}}, Destination: dst, IntervalSeconds: 60, RPOSeconds: 120},
		{Source: src, IntervalSeconds: 60, RPOSeconds: 120},
		{Source: src, Destination: dst, RPOSeconds: 120},
		{Source: src, Destination: dst, IntervalSeconds: 60, RPOSeconds: -1},
	} {
		_, err := replicationgroups.Create(context.TODO(), sc, opts).Extract()
		var missing gophercloud.ErrMissingInput
		if !errors.As(err, &missing) {
			t.Errorf("%+v: error %v, want ErrMissingInput", opts, err)
		}
	}
}

func TestCreateRefused(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleFault(t, fakeServer, "/replication-groups", http.StatusConflict, "conflictingRequest",
		"Volume "+volumeA+" is attached to a running instance.")
	_, err := replicationgroups.Create(context.TODO(), fake.ServiceClient(fakeServer), replicationgroups.CreateOpts{
		Source:      replicationgroups.SourceOpts{Region: "RegionOne", VolumeIDs: []string{volumeA}},
		Destination: replicationgroups.DestinationOpts{Region: "RegionTwo"}, IntervalSeconds: 60, RPOSeconds: 120,
	}).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusConflict) || !strings.Contains(err.Error(), "attached to a running instance") {
		t.Errorf("error %v, want the server's 409", err)
	}
}

func TestGet(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleGet(t, fakeServer, secondID, secondJSON)

	actual, err := replicationgroups.Get(context.TODO(), fake.ServiceClient(fakeServer), secondID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, &secondGroup, actual)
	if _, ok := actual.Lag(); ok {
		t.Error("a group without a point has a lag")
	}
	th.CheckEquals(t, true, actual.FailoverRunning())
}

func TestGetNotFound(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	const missing = "00000000-0000-0000-0000-000000000000"
	HandleFault(t, fakeServer, "/replication-groups/"+missing, http.StatusNotFound, "itemNotFound", "Replication group "+missing+" could not be found.")

	_, err := replicationgroups.Get(context.TODO(), fake.ServiceClient(fakeServer), missing).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		t.Fatalf("error %v, want a 404", err)
	}
	var ue gophercloud.ErrUnexpectedResponseCode
	if !errors.As(err, &ue) || !strings.Contains(string(ue.Body), `"itemNotFound"`) || ue.ResponseHeader.Get("X-Openstack-Request-Id") != "req-fault" {
		t.Errorf("error %#v does not carry the fault body and request id", err)
	}
}

func TestListTwoPages(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleListTwoPages(t, fakeServer)

	opts := replicationgroups.ListOpts{Limit: 1, AllProjects: true}
	var pages [][]replicationgroups.ReplicationGroup
	err := replicationgroups.List(fake.ServiceClient(fakeServer), opts).EachPage(context.TODO(), func(_ context.Context, page pagination.Page) (bool, error) {
		actual, err := replicationgroups.ExtractReplicationGroups(page)
		if err != nil {
			return false, err
		}
		pages = append(pages, actual)
		return true, nil
	})
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, [][]replicationgroups.ReplicationGroup{{firstGroup}, {secondGroup}}, pages)

	all, err := replicationgroups.List(fake.ServiceClient(fakeServer), opts).AllPages(context.TODO())
	th.AssertNoErr(t, err)
	actual, err := replicationgroups.ExtractReplicationGroups(all)
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, []replicationgroups.ReplicationGroup{firstGroup, secondGroup}, actual)
}

func TestListQuery(t *testing.T) {
	for _, tc := range []struct {
		opts replicationgroups.ListOpts
		want string
	}{
		{replicationgroups.ListOpts{}, ""},
		{replicationgroups.ListOpts{Limit: 2}, "?limit=2"},
		{replicationgroups.ListOpts{Limit: 5, Marker: "m", AllProjects: true}, "?all_projects=true&limit=5&marker=m"},
	} {
		q, err := tc.opts.ToReplicationGroupListQuery()
		th.AssertNoErr(t, err)
		th.CheckEquals(t, tc.want, q)
	}
}

func TestListEmpty(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	fakeServer.Mux.HandleFunc("/replication-groups", func(w http.ResponseWriter, r *http.Request) {
		checkRequest(t, r, "GET")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"replication_groups": []}`))
	})
	pages := 0
	err := replicationgroups.List(fake.ServiceClient(fakeServer), nil).EachPage(context.TODO(), func(context.Context, pagination.Page) (bool, error) {
		pages++
		return true, nil
	})
	th.AssertNoErr(t, err)
	th.CheckEquals(t, 0, pages)
}

// Only what is set is sent.
func TestUpdate(t *testing.T) {
	for _, tc := range []struct {
		opts    replicationgroups.UpdateOpts
		request string
	}{
		{replicationgroups.UpdateOpts{Name: ptr("renamed")}, `{"replication_group": {"name": "renamed"}}`},
		{replicationgroups.UpdateOpts{Description: ptr("")}, `{"replication_group": {"description": ""}}`},
		{replicationgroups.UpdateOpts{IntervalSeconds: ptr(120), RPOSeconds: ptr(600), BandwidthLimit: ptr[int64](0),
			Retention: &replicationgroups.RetentionOpts{KeepDaily: ptr(7)}},
			`{"replication_group": {"interval_seconds": 120, "rpo_seconds": 600, "bandwidth_limit": 0, "retention": {"keep_daily": 7}}}`},
	} {
		t.Run(tc.request, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleUpdate(t, fakeServer, tc.request)
			actual, err := replicationgroups.Update(context.TODO(), fake.ServiceClient(fakeServer), firstID, tc.opts).Extract()
			th.AssertNoErr(t, err)
			th.CheckDeepEquals(t, &firstGroup, actual)
		})
	}
}

func TestUpdateInvalid(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleFault(t, fakeServer, "/replication-groups/"+firstID, http.StatusBadRequest, "badRequest", "interval_seconds must be at least 60")
	_, err := replicationgroups.Update(context.TODO(), fake.ServiceClient(fakeServer), firstID, replicationgroups.UpdateOpts{IntervalSeconds: ptr(1)}).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusBadRequest) || !strings.Contains(err.Error(), "at least 60") {
		t.Errorf("error %v, want the server's 400", err)
	}
}

func TestDelete(t *testing.T) {
	for _, tc := range []struct {
		opts replicationgroups.DeleteOptsBuilder
		want string
	}{
		{nil, ""},
		{replicationgroups.DeleteOpts{}, ""},
		{replicationgroups.DeleteOpts{KeepReplica: true}, "true"},
	} {
		t.Run(fmt.Sprint(tc.opts), func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleDelete(t, fakeServer, tc.want)
			th.AssertNoErr(t, replicationgroups.Delete(context.TODO(), fake.ServiceClient(fakeServer), secondID, tc.opts).ExtractErr())
		})
	}
}

// Sync, pause and resume answer the group.
func TestActions(t *testing.T) {
	for name, do := range map[string]func(context.Context, *gophercloud.ServiceClient, string) replicationgroups.ActionResult{
		"sync": replicationgroups.Sync, "pause": replicationgroups.Pause, "resume": replicationgroups.Resume,
	} {
		t.Run(name, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleAction(t, fakeServer, `{"`+name+`": null}`, "replication_group", firstJSON)
			res := do(context.TODO(), fake.ServiceClient(fakeServer), firstID)
			th.AssertNoErr(t, res.ExtractErr())
			actual, err := res.Extract()
			th.AssertNoErr(t, err)
			th.CheckDeepEquals(t, &firstGroup, actual)
		})
	}
}

func TestActionConflict(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleFault(t, fakeServer, "/replication-groups/"+secondID+"/action", http.StatusConflict, "conflictingRequest",
		"Replication group "+secondID+" is failing_over.")
	err := replicationgroups.Sync(context.TODO(), fake.ServiceClient(fakeServer), secondID).ExtractErr()
	if !gophercloud.ResponseCodeIs(err, http.StatusConflict) || !strings.Contains(err.Error(), "is failing_over") {
		t.Errorf("error %v, want the server's 409", err)
	}
}

func TestDrill(t *testing.T) {
	for _, tc := range []struct {
		opts    replicationgroups.DrillOpts
		request string
	}{
		{replicationgroups.DrillOpts{Point: cycleID, Name: "drill-1"}, `{"drill": {"point": "` + cycleID + `", "name": "drill-1"}}`},
		{replicationgroups.DrillOpts{Point: "latest"}, `{"drill": {"point": "latest"}}`},
	} {
		t.Run(tc.request, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			fakeServer.Mux.HandleFunc("/replication-groups/"+firstID+"/action", func(w http.ResponseWriter, r *http.Request) {
				checkRequest(t, r, "POST")
				th.TestJSONRequest(t, r, tc.request)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusAccepted)
				fmt.Fprint(w, drillsJSON)
			})
			actual, err := replicationgroups.Drill(context.TODO(), fake.ServiceClient(fakeServer), firstID, tc.opts).Extract()
			th.AssertNoErr(t, err)
			th.CheckDeepEquals(t, expectedDrills, actual)
		})
	}
}

func TestDrillErrors(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleFault(t, fakeServer, "/replication-groups/"+firstID+"/action", http.StatusNotFound, "itemNotFound", "Point gone of replication group "+firstID+" could not be found.")
	sc := fake.ServiceClient(fakeServer)
	if _, err := replicationgroups.Drill(context.TODO(), sc, firstID, replicationgroups.DrillOpts{Name: "x"}).Extract(); !errors.Is(err, replicationgroups.ErrNoPoint) {
		t.Errorf("no point: error %v", err)
	}
	_, err := replicationgroups.Drill(context.TODO(), sc, firstID, replicationgroups.DrillOpts{Point: "gone"}).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusNotFound) || !strings.Contains(err.Error(), "Point gone") {
		t.Errorf("unknown point: error %v, want the server's 404", err)
	}
}

func TestListPoints(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleSubresource(t, fakeServer, "points", pointsJSON)
	actual, err := replicationgroups.ListPoints(context.TODO(), fake.ServiceClient(fakeServer), firstID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, expectedPoints, actual)
}

func TestListDrills(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleSubresource(t, fakeServer, "drills", drillsJSON)
	actual, err := replicationgroups.ListDrills(context.TODO(), fake.ServiceClient(fakeServer), firstID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, expectedDrills, actual)
}

func TestFailover(t *testing.T) {
	for _, tc := range []struct {
		opts    replicationgroups.FailoverOpts
		request string
	}{
		{replicationgroups.FailoverOpts{}, `{"failover": {}}`},
		{replicationgroups.FailoverOpts{Force: true}, `{"failover": {"force": true}}`},
		{replicationgroups.FailoverOpts{Point: "latest", Force: true}, `{"failover": {"point": "latest", "force": true}}`},
		{replicationgroups.FailoverOpts{Point: cycleID, Force: true}, `{"failover": {"point": "` + cycleID + `", "force": true}}`},
	} {
		t.Run(tc.request, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleAction(t, fakeServer, tc.request, "replication_group", secondJSON)
			actual, err := replicationgroups.Failover(context.TODO(), fake.ServiceClient(fakeServer), firstID, tc.opts).Extract()
			th.AssertNoErr(t, err)
			th.CheckDeepEquals(t, &secondGroup, actual)
			th.CheckEquals(t, true, actual.FailoverRunning())
		})
	}
}

func TestFailback(t *testing.T) {
	failingBack := strings.Replace(firstJSON, `"status": "active"`, `"status": "failing_back"`, 1)
	for _, tc := range []struct {
		opts    replicationgroups.FailbackOpts
		request string
	}{
		{replicationgroups.FailbackOpts{}, `{"failback": null}`},
		{replicationgroups.FailbackOpts{Force: true}, `{"failback": {"force": true}}`},
	} {
		t.Run(tc.request, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			HandleAction(t, fakeServer, tc.request, "replication_group", failingBack)
			actual, err := replicationgroups.Failback(context.TODO(), fake.ServiceClient(fakeServer), firstID, tc.opts).Extract()
			th.AssertNoErr(t, err)
			th.CheckEquals(t, "failing_back", actual.Status)
			th.CheckEquals(t, true, actual.FailoverRunning())
		})
	}
}

func TestFailoverErrors(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleFault(t, fakeServer, "/replication-groups/"+firstID+"/action", http.StatusConflict, "conflictingRequest",
		"Replication group "+firstID+" is active: a failback needs it failed_over.")
	sc := fake.ServiceClient(fakeServer)
	// A point without force: refused before a request.
	if _, err := replicationgroups.Failover(context.TODO(), sc, firstID, replicationgroups.FailoverOpts{Point: "latest"}).Extract(); !errors.Is(err, replicationgroups.ErrUnplannedNeedsForce) {
		t.Errorf("point without force: error %v", err)
	}
	_, err := replicationgroups.Failback(context.TODO(), sc, firstID, replicationgroups.FailbackOpts{}).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusConflict) || !strings.Contains(err.Error(), "needs it failed_over") {
		t.Errorf("failback: error %v, want the server's 409", err)
	}
}

// Every function asks for 1.2 on a client set to an older microversion
// (1.1, as the CLI's), and leaves it as it was; a newer one is kept.
func TestAsksForItsMicroversion(t *testing.T) {
	for _, tc := range []struct{ have, want string }{
		{"", version}, {"1.0", version}, {"1.1", version}, {"1.2", version}, {"latest", "volume-ferry latest"},
	} {
		t.Run(tc.have, func(t *testing.T) {
			fakeServer := th.SetupHTTP()
			defer fakeServer.Teardown()
			var got []string
			fakeServer.Mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				got = append(got, r.Method+" "+r.URL.Path+" "+r.Header.Get("OpenStack-API-Version"))
				w.Header().Set("Content-Type", "application/json")
				switch {
				case r.Method == http.MethodDelete:
					w.WriteHeader(http.StatusAccepted)
				case strings.HasSuffix(r.URL.Path, "/action"):
					w.WriteHeader(http.StatusAccepted)
					fmt.Fprintf(w, `{"replication_group": %s}`, firstJSON)
				case strings.HasSuffix(r.URL.Path, "/points"):
					fmt.Fprint(w, `{"points": []}`)
				case strings.HasSuffix(r.URL.Path, "/drills"):
					fmt.Fprint(w, `{"drills": []}`)
				case r.Method == http.MethodPost:
					w.WriteHeader(http.StatusAccepted)
					fmt.Fprintf(w, `{"replication_group": %s}`, firstJSON)
				case r.URL.Path == "/replication-groups":
					fmt.Fprint(w, `{"replication_groups": []}`)
				default:
					fmt.Fprintf(w, `{"replication_group": %s}`, firstJSON)
				}
			})
			sc := fake.ServiceClient(fakeServer)
			sc.Type = ferry.ServiceType // as client.NewFerryV1 makes it
			sc.Microversion = tc.have
			ctx := context.TODO()
			errs := []error{
				replicationgroups.Create(ctx, sc, replicationgroups.CreateOpts{Source: replicationgroups.SourceOpts{Region: "R1", VolumeIDs: []string{volumeA}},
					Destination: replicationgroups.DestinationOpts{Region: "R2"}, IntervalSeconds: 60, RPOSeconds: 60}).Err,
				replicationgroups.List(sc, nil).EachPage(ctx, func(context.Context, pagination.Page) (bool, error) { return true, nil }),
				replicationgroups.Get(ctx, sc, firstID).Err,
				replicationgroups.Update(ctx, sc, firstID, replicationgroups.UpdateOpts{Name: ptr("x")}).Err,
				replicationgroups.Delete(ctx, sc, firstID, nil).Err,
				replicationgroups.Sync(ctx, sc, firstID).Err,
				replicationgroups.Pause(ctx, sc, firstID).Err,
				replicationgroups.Resume(ctx, sc, firstID).Err,
				replicationgroups.Failover(ctx, sc, firstID, replicationgroups.FailoverOpts{}).Err,
				replicationgroups.Failback(ctx, sc, firstID, replicationgroups.FailbackOpts{}).Err,
				replicationgroups.Drill(ctx, sc, firstID, replicationgroups.DrillOpts{Point: "latest"}).Err,
				replicationgroups.ListPoints(ctx, sc, firstID).Err,
				replicationgroups.ListDrills(ctx, sc, firstID).Err,
			}
			for i, err := range errs {
				if err != nil {
					t.Errorf("call %d: %v", i, err)
				}
			}
			if len(got) != len(errs) {
				t.Fatalf("%d requests for %d calls: %q", len(got), len(errs), got)
			}
			for _, g := range got {
				if !strings.HasSuffix(g, " "+tc.want) {
					t.Errorf("%s, want %s", g, tc.want)
				}
			}
			th.CheckEquals(t, tc.have, sc.Microversion)
		})
	}
}
