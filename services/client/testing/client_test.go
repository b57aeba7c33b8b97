package testing

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
	th "github.com/gophercloud/gophercloud/v2/testhelper"

	"github.com/ferry-project/ferry/services/client"
	"github.com/ferry-project/ferry/services/client/replications"
	"github.com/ferry-project/ferry/services/client/transfers"
)

// catalog is a token's catalog: Ferry's unversioned root in two regions
// (public), an internal endpoint in RegionOne, and another service.
var catalog = &tokens.ServiceCatalog{Entries: []tokens.CatalogEntry{
	{Type: "volumev3", Name: "cinderv3", Endpoints: []tokens.Endpoint{
		{Region: "RegionOne", RegionID: "RegionOne", Interface: "public", URL: "http://127.0.0.1:8776/v3/p"},
	}},
	{Type: "volume-ferry", Name: "ferry", Endpoints: []tokens.Endpoint{
		{Region: "RegionOne", RegionID: "RegionOne", Interface: "internal", URL: "http://10.0.0.1:9790"},
		{Region: "RegionOne", RegionID: "RegionOne", Interface: "public", URL: "http://127.0.0.1:9790"},
		{Region: "RegionTwo", RegionID: "RegionTwo", Interface: "public", URL: "http://127.0.0.2:9790/"},
	}},
}}

func provider() *gophercloud.ProviderClient {
	pc := &gophercloud.ProviderClient{TokenID: "token"}
	pc.EndpointLocator = func(eo gophercloud.EndpointOpts) (string, error) {
		return openstack.V3Endpoint(context.TODO(), pc, catalog, eo)
	}
	return pc
}

func TestNewFerryV1Found(t *testing.T) {
	for _, tc := range []struct {
		eo                 gophercloud.EndpointOpts
		endpoint, resource string
	}{
		{gophercloud.EndpointOpts{Region: "RegionOne"}, "http://127.0.0.1:9790/", "http://127.0.0.1:9790/v1/"},
		{gophercloud.EndpointOpts{Region: "RegionTwo"}, "http://127.0.0.2:9790/", "http://127.0.0.2:9790/v1/"},
		{gophercloud.EndpointOpts{Region: "RegionOne", Availability: gophercloud.AvailabilityInternal}, "http://10.0.0.1:9790/", "http://10.0.0.1:9790/v1/"},
	} {
		sc, err := client.NewFerryV1(provider(), tc.eo)
		th.AssertNoErr(t, err)
		th.CheckEquals(t, tc.endpoint, sc.Endpoint)
		th.CheckEquals(t, tc.resource, sc.ResourceBaseURL())
		th.CheckEquals(t, client.ServiceType, sc.Type)
		th.CheckEquals(t, tc.resource+"transfers", sc.ServiceURL("transfers"))
	}
}

func TestNewFerryV1NotFound(t *testing.T) {
	_, err := client.NewFerryV1(provider(), gophercloud.EndpointOpts{Region: "RegionThree"})
	if err == nil {
		t.Fatal("no error for a region without an endpoint")
	}
	if !strings.Contains(err.Error(), `no volume-ferry endpoint in the catalog for region "RegionThree"`) {
		t.Errorf("error %q does not name the region", err)
	}
	var nf *gophercloud.ErrEndpointNotFound
	if !errors.As(err, &nf) {
		t.Errorf("error %v does not wrap *gophercloud.ErrEndpointNotFound", err)
	}
	// RegionTwo has no internal endpoint.
	_, err = client.NewFerryV1(provider(), gophercloud.EndpointOpts{Region: "RegionTwo", Availability: gophercloud.AvailabilityInternal})
	if !errors.As(err, &nf) {
		t.Errorf("internal RegionTwo: error %v", err)
	}
	// No catalog at all.
	if _, err := client.NewFerryV1(&gophercloud.ProviderClient{}, gophercloud.EndpointOpts{Region: "RegionOne"}); err == nil {
		t.Error("no error without a catalog")
	}
}

func TestNewFerryV1WithEndpoint(t *testing.T) {
	for _, endpoint := range []string{"http://h:9790", "http://h:9790/", "http://h:9790/v1", "http://h:9790/v1/"} {
		sc := client.NewFerryV1WithEndpoint(&gophercloud.ProviderClient{}, endpoint)
		th.CheckEquals(t, "http://h:9790/", sc.Endpoint)
		th.CheckEquals(t, "http://h:9790/v1/transfers", sc.ServiceURL("transfers"))
		th.CheckEquals(t, client.ServiceType, sc.Type)
	}
}

// The microversion travels as OpenStack-API-Version: volume-ferry X.Y
// when set, and not at all otherwise.
func TestMicroversionHeader(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	var got []string
	fakeServer.Mux.HandleFunc("/v1/transfers/x/action", func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("OpenStack-API-Version"))
		th.TestHeader(t, r, "X-Auth-Token", "token")
		w.WriteHeader(http.StatusAccepted)
	})
	sc := client.NewFerryV1WithEndpoint(&gophercloud.ProviderClient{TokenID: "token"}, fakeServer.Server.URL)
	th.AssertNoErr(t, transfers.Cancel(context.TODO(), sc, "x").ExtractErr())
	sc.Microversion = "1.0"
	th.AssertNoErr(t, transfers.Cancel(context.TODO(), sc, "x").ExtractErr())
	th.CheckDeepEquals(t, []string{"", "volume-ferry 1.0"}, got)
}

// The replications package asks for 1.1 when sc asks for less (none, or
// 1.0) and keeps what sc asks for otherwise; sc itself is not changed.
// transfers.List asks for 1.1 only with a ReplicationID filter.
func TestReplicationsNeedMicroversion11(t *testing.T) {
	fakeServer := th.SetupHTTP()
	defer fakeServer.Teardown()
	var got []string
	fakeServer.Mux.HandleFunc("/v1/replications/x/action", func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("OpenStack-API-Version"))
		w.WriteHeader(http.StatusAccepted)
	})
	fakeServer.Mux.HandleFunc("/v1/transfers", func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("OpenStack-API-Version"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"transfers": []}`))
	})
	sc := client.NewFerryV1WithEndpoint(&gophercloud.ProviderClient{TokenID: "token"}, fakeServer.Server.URL)
	for _, v := range []string{"", "1.0", "1.1", "latest", "1.12"} {
		sc.Microversion = v
		th.AssertNoErr(t, replications.Pause(context.TODO(), sc, "x").ExtractErr())
		th.CheckEquals(t, v, sc.Microversion)
	}
	sc.Microversion = ""
	for _, o := range []transfers.ListOpts{{}, {ReplicationID: "r"}} {
		_, err := transfers.List(sc, o).AllPages(context.TODO())
		th.AssertNoErr(t, err)
	}
	th.CheckDeepEquals(t, []string{"volume-ferry 1.1", "volume-ferry 1.1", "volume-ferry 1.1", "volume-ferry latest", "volume-ferry 1.12",
		"", "volume-ferry 1.1"}, got)

	// A ServiceClient built by hand (no Type) still names the service.
	hand := &gophercloud.ServiceClient{ProviderClient: &gophercloud.ProviderClient{TokenID: "token"}, Endpoint: fakeServer.Server.URL + "/v1/"}
	got = nil
	th.AssertNoErr(t, replications.Sync(context.TODO(), hand, "x").ExtractErr())
	th.CheckDeepEquals(t, []string{"volume-ferry 1.1"}, got)
}

func TestMicroversionAtLeast(t *testing.T) {
	for _, tc := range []struct {
		have, v string
		want    bool
	}{
		{"", "1.1", false}, {"1.0", "1.1", false}, {"1.1", "1.1", true}, {"1.2", "1.1", true},
		{"1.10", "1.9", true}, {"1.9", "1.10", false}, {"2.0", "1.1", true}, {"latest", "1.1", true}, {"x", "1.1", false},
	} {
		th.CheckEquals(t, tc.want, client.MicroversionAtLeast(tc.have, tc.v))
	}
}
