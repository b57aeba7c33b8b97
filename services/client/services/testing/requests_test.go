package testing

import (
	"context"
	"net/http"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
	th "github.com/gophercloud/gophercloud/v2/testhelper"
	fake "github.com/gophercloud/gophercloud/v2/testhelper/client"

	"github.com/ferry-project/ferry/services/client/services"
)

func TestList(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	HandleListSuccessfully(t, fakeServer)

	pages := 0
	err := services.List(fake.ServiceClient(fakeServer)).EachPage(context.TODO(), func(_ context.Context, page pagination.Page) (bool, error) {
		pages++
		actual, err := services.ExtractServices(page)
		if err != nil {
			return false, err
		}
		th.CheckDeepEquals(t, expectedServices, actual)
		return true, nil
	})
	th.AssertNoErr(t, err)
	th.CheckEquals(t, 1, pages)

	all, err := services.List(fake.ServiceClient(fakeServer)).AllPages(context.TODO())
	th.AssertNoErr(t, err)
	actual, err := services.ExtractServices(all)
	th.AssertNoErr(t, err)
	th.CheckDeepEquals(t, expectedServices, actual)
}

func TestListForbidden(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	fakeServer.Mux.HandleFunc("/services", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`{"forbidden": {"code": 403, "message": "Policy doesn't allow service:get_all to be performed."}}`))
	})
	_, err := services.List(fake.ServiceClient(fakeServer)).AllPages(context.TODO())
	if !gophercloud.ResponseCodeIs(err, http.StatusForbidden) {
		t.Errorf("error %v, want a 403", err)
	}
}

func TestCephHealthSummary(t *testing.T) {
	for _, tc := range []struct {
		h    *services.CephHealth
		want string
	}{
		{nil, ""},
		{&services.CephHealth{Status: ptr("HEALTH_OK")}, "HEALTH_OK"},
		{expectedServices[0].CephHealth, "HEALTH_WARN: OSD_NEARFULL (+1 more)"},
		{&services.CephHealth{Error: ptr("timed out")}, "unknown: timed out"},
		{&services.CephHealth{}, "unknown: no answer"},
	} {
		if got := tc.h.Summary(); got != tc.want {
			t.Errorf("Summary() = %q, want %q", got, tc.want)
		}
	}
}
