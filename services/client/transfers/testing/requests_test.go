package testing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
	th "github.com/gophercloud/gophercloud/v2/testhelper"
	fake "github.com/gophercloud/gophercloud/v2/testhelper/client"

	"github.com/ferry-project/ferry/services/client/transfers"
)

func TestCreate(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleCreateSuccessfully(t, fakeServer)

	r := transfers.Create(context.TODO(), fake.ServiceClient(fakeServer), transfers.CreateOpts{
		Source:      transfers.SourceOpts{Region: "RegionOne", Pool: "volumes", Image: "vol-1"},
		Destination: transfers.DestinationOpts{Region: "RegionTwo", Image: "vol-1-copy"},
		Mode:        "full",
		Name:        "first",
	})
	actual, err := r.Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, &firstTransfer, actual)
}

func TestCreateValidation(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	fakeServer.Mux.HandleFunc("/transfers", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a request was sent: %s %s", r.Method, r.URL)
	})
	sc := fake.ServiceClient(fakeServer)
	dst := transfers.DestinationOpts{Region: "RegionTwo"}
	for _, tc := range []struct {
		name string
		src  transfers.SourceOpts
	}{
		{"none", transfers.SourceOpts{Region: "RegionOne"}},
		{"volume and backup", transfers.SourceOpts{Region: "RegionOne", VolumeID: "v", BackupID: "b"}},
		{"volume and image", transfers.SourceOpts{Region: "RegionOne", VolumeID: "v", Pool: "p", Image: "i"}},
		{"pool without image", transfers.SourceOpts{Region: "RegionOne", Pool: "p"}},
		{"image without pool", transfers.SourceOpts{Region: "RegionOne", Image: "i"}},
		{"snapshot only", transfers.SourceOpts{Region: "RegionOne", Snapshot: "s"}},
	} {
		_, err := transfers.Create(context.TODO(), sc, transfers.CreateOpts{Source: tc.src, Destination: dst}).Extract()
		if !errors.Is(err, transfers.ErrInvalidSource) || !strings.Contains(err.Error(), "exactly one of volume_id, backup_id, or pool and image") {
			t.Errorf("%s: error %v, want ErrInvalidSource", tc.name, err)
		}
	}
	// Required regions, checked by gophercloud.BuildRequestBody.
	for _, opts := range []transfers.CreateOpts{
		{Source: transfers.SourceOpts{VolumeID: "v"}, Destination: dst},
		{Source: transfers.SourceOpts{Region: "RegionOne", VolumeID: "v"}},
	} {
		_, err := transfers.Create(context.TODO(), sc, opts).Extract()
		var missing gophercloud.ErrMissingInput
		if !errors.As(err, &missing) {
			t.Errorf("%+v: error %v, want ErrMissingInput", opts, err)
		}
	}
	// The valid kinds of source pass.
	for _, src := range []transfers.SourceOpts{
		{Region: "RegionOne", VolumeID: "v"},
		{Region: "RegionOne", BackupID: "b", Snapshot: "s"},
		{Region: "RegionOne", Pool: "p", Image: "i"},
	} {
		b, err := transfers.CreateOpts{Source: src, Destination: dst}.ToTransferCreateMap()
		th.AssertNoErr(t, err)
		if _, ok := b["transfer"].(map[string]any)["source"]; !ok {
			t.Errorf("%+v: body %v", src, b)
		}
	}
}

func TestGet(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleGetSuccessfully(t, fakeServer)

	actual, err := transfers.Get(context.TODO(), fake.ServiceClient(fakeServer), firstID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, &firstTransfer, actual)
}

func TestGetNotFound(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	const missing = "00000000-0000-0000-0000-000000000000"
	HandleNotFound(t, fakeServer, missing)

	_, err := transfers.Get(context.TODO(), fake.ServiceClient(fakeServer), missing).Extract()
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

	opts := transfers.ListOpts{Limit: 1, Status: "error", SortKey: "created_at", SortDir: "asc", AllProjects: true}
	var pages [][]transfers.Transfer
	err := transfers.List(fake.ServiceClient(fakeServer), opts).EachPage(context.TODO(), func(_ context.Context, page pagination.Page) (bool, error) {
		actual, err := transfers.ExtractTransfers(page)
		if err != nil {
			return false, err
		}
		pages = append(pages, actual)
		return true, nil
	})
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, [][]transfers.Transfer{{firstTransfer}, {secondTransfer}}, pages)

	all, err := transfers.List(fake.ServiceClient(fakeServer), opts).AllPages(context.TODO())
	th.AssertNoErr(t, err)
	actual, err := transfers.ExtractTransfers(all)
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, []transfers.Transfer{firstTransfer, secondTransfer}, actual)
}

func TestListQuery(t *testing.T) {
	for _, tc := range []struct {
		opts transfers.ListOpts
		want string
	}{
		{transfers.ListOpts{}, ""},
		{transfers.ListOpts{AllProjects: false, Status: "queued"}, "?status=queued"},
		{transfers.ListOpts{Limit: 5, Marker: "m", AllProjects: true}, "?all_projects=true&limit=5&marker=m"},
		{transfers.ListOpts{SourceRegion: "RegionOne", DestinationRegion: "RegionTwo"}, "?destination_region=RegionTwo&source_region=RegionOne"},
		{transfers.ListOpts{ReplicationID: "r-1", Limit: 2}, "?limit=2&replication_id=r-1"},
	} {
		q, err := tc.opts.ToTransferListQuery()
		th.AssertNoErr(t, err)
		th.CheckEquals(t, tc.want, q)
	}
}

func TestListEmpty(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	fakeServer.Mux.HandleFunc("/transfers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"transfers": []}`))
	})
	pages := 0
	err := transfers.List(fake.ServiceClient(fakeServer), nil).EachPage(context.TODO(), func(context.Context, pagination.Page) (bool, error) {
		pages++
		return true, nil
	})
	th.AssertNoErr(t, err)
	th.CheckEquals(t, 0, pages)
}

func TestCancel(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleAction(t, fakeServer, firstID, `{"cancel": null}`)

	err := transfers.Cancel(context.TODO(), fake.ServiceClient(fakeServer), firstID).ExtractErr()
	th.AssertNoErr(t, err)
}

func TestRetry(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleAction(t, fakeServer, secondID, `{"retry": null}`)

	err := transfers.Retry(context.TODO(), fake.ServiceClient(fakeServer), secondID).ExtractErr()
	th.AssertNoErr(t, err)
}

func TestActionConflict(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	fakeServer.Mux.HandleFunc("/transfers/"+firstID+"/action", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		w.Write([]byte(`{"conflictingRequest": {"code": 409, "message": "transfer is transferring, not error"}}`))
	})
	err := transfers.Retry(context.TODO(), fake.ServiceClient(fakeServer), firstID).ExtractErr()
	if !gophercloud.ResponseCodeIs(err, http.StatusConflict) {
		t.Errorf("error %v, want a 409", err)
	}
}

func TestDelete(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleDeleteSuccessfully(t, fakeServer)

	err := transfers.Delete(context.TODO(), fake.ServiceClient(fakeServer), secondID).ExtractErr()
	th.AssertNoErr(t, err)
}

func TestEvents(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleEventsSuccessfully(t, fakeServer)

	actual, err := transfers.ListEvents(context.TODO(), fake.ServiceClient(fakeServer), secondID).Extract()
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, expectedEvents, actual)
}

// The cycles of a replication: ?replication_id= reaches the server and
// every transfer listed carries it.
func TestListByReplication(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	fakeServer.Mux.HandleFunc("/transfers", func(w http.ResponseWriter, r *http.Request) {
		th.TestMethod(t, r, "GET")
		th.TestFormValues(t, r, map[string]string{"replication_id": replicationID})
		th.TestHeader(t, r, "OpenStack-API-Version", "volume-ferry 1.1") // the filter is since 1.1
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"transfers": [%s]}`, firstJSON)
	})
	all, err := transfers.List(fake.ServiceClient(fakeServer), transfers.ListOpts{ReplicationID: replicationID}).AllPages(context.TODO())
	th.AssertNoErr(t, err)
	actual, err := transfers.ExtractTransfers(all)
	th.AssertNoErr(t, err)
	th.CheckEquals(t, 1, len(actual))
	th.CheckEquals(t, replicationID, actual[0].ReplicationID)
}
