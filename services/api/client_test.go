package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/api/auth"
	"github.com/ferry-project/ferry/services/client"
	ferryservices "github.com/ferry-project/ferry/services/client/services"
	"github.com/ferry-project/ferry/services/client/transfers"
	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/keystone"
)

// clientTestValidator is Keystone for the client test: fixed tokens, whose
// catalog has the test server as volume-ferry in RegionOne and RegionTwo.
type clientTestValidator struct {
	catalog *tokens.ServiceCatalog
	tokens  map[string]keystone.TokenInfo
}

func (v *clientTestValidator) Validate(_ context.Context, token string) (*keystone.TokenInfo, error) {
	info, ok := v.tokens[token]
	if !ok {
		return nil, fmt.Errorf("token refused: %w", keystone.ErrInvalidToken)
	}
	info.Catalog = v.catalog
	info.ExpiresAt = time.Now().Add(time.Hour)
	return &info, nil
}

// The client library against the real router: the real authentication
// middleware (fake Keystone), the default policy, the real handlers and a
// SQLite database; only the bus is a fake (fakeHooks' outbox messages).
func TestClientLibraryAgainstRouter(t *testing.T) {
	ctx := context.Background()
	store, err := db.Open(ctx, "sqlite:///"+filepath.Join(t.TempDir(), "ferry.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if err := store.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	v := &clientTestValidator{tokens: map[string]keystone.TokenInfo{
		"admin-token": {UserID: "admin-user", ProjectID: "admin-project", Roles: []string{"admin"}},
		"demo-token":  {UserID: "demo-user", ProjectID: "demo-project", Roles: []string{"member", "reader"}},
	}}
	var kicks atomic.Int32
	hooks := fakeHooks(&kicks)
	hooks.Authenticate = auth.Middleware(v, auth.Options{Logger: slog.New(slog.DiscardHandler), Fault: writeError})
	hooks.CallerOf = callerOf
	policy := auth.DefaultPolicy()
	hooks.Allowed = func(rule string, c *Caller, target map[string]string) bool {
		ac, _ := c.creds.(*auth.Context)
		return ac != nil && policy.Enforce(rule, ac, target)
	}
	s := &Server{cfg: config.Defaults(), log: slog.New(slog.DiscardHandler), db: store, hooks: hooks}
	ts := httptest.NewServer(s.Router())
	t.Cleanup(ts.Close)
	s.cfg.API.PublicEndpoint = ts.URL
	v.catalog = &tokens.ServiceCatalog{Entries: []tokens.CatalogEntry{{Type: ServiceType, Name: "ferry", Endpoints: []tokens.Endpoint{
		{Region: "RegionOne", RegionID: "RegionOne", Interface: "public", URL: ts.URL},
		{Region: "RegionTwo", RegionID: "RegionTwo", Interface: "public", URL: ts.URL},
	}}}}

	// The admin's client comes from the catalog, as a CLI's would.
	pc := &gophercloud.ProviderClient{TokenID: "admin-token"}
	pc.EndpointLocator = func(eo gophercloud.EndpointOpts) (string, error) {
		return openstack.V3Endpoint(ctx, pc, v.catalog, eo)
	}
	sc, err := client.NewFerryV1(pc, gophercloud.EndpointOpts{Region: "RegionOne"})
	if err != nil {
		t.Fatal(err)
	}
	sc.Microversion = "1.0"
	demo := client.NewFerryV1WithEndpoint(&gophercloud.ProviderClient{TokenID: "demo-token"}, ts.URL)

	// Create: 202 and the queued transfer.
	before := time.Now().Add(-time.Second)
	opts := transfers.CreateOpts{
		Source:      transfers.SourceOpts{Region: "RegionOne", Pool: "volumes", Image: "vol-1"},
		Destination: transfers.DestinationOpts{Region: "RegionTwo", Image: "vol-1-copy"},
		Name:        "first", Description: "from the client library",
	}
	cr := transfers.Create(ctx, sc, opts)
	first, err := cr.Extract()
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := cr.Header.Get("OpenStack-API-Version"); got != "volume-ferry 1.0" {
		t.Errorf("served microversion %q", got)
	}
	if !strings.HasPrefix(cr.Header.Get(HeaderRequestID), "req-") {
		t.Errorf("request id %q", cr.Header.Get(HeaderRequestID))
	}
	want := transfers.Transfer{
		ID: first.ID, Name: "first", Description: "from the client library", ProjectID: "admin-project", UserID: "admin-user",
		Status: "queued", Mode: "auto",
		Source:      transfers.Location{Region: "RegionOne", Pool: "volumes", Image: "vol-1"},
		Destination: transfers.Location{Region: "RegionTwo", Pool: "volumes", Image: "vol-1-copy"},
		CreatedAt:   first.CreatedAt, UpdatedAt: first.UpdatedAt,
	}
	if first.ID == "" || !equalTransfers(*first, want) {
		t.Errorf("created %+v\nwant     %+v", *first, want)
	}
	if first.CreatedAt.Before(before) || first.CreatedAt.After(time.Now().Add(time.Second)) || first.CreatedAt.Location() != time.UTC {
		t.Errorf("created_at %v", first.CreatedAt)
	}
	var ids = []string{first.ID}
	for i := range 2 {
		o := opts
		o.Name = fmt.Sprintf("more-%d", i)
		tr, err := transfers.Create(ctx, sc, o).Extract()
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		ids = append(ids, tr.ID)
		time.Sleep(2 * time.Millisecond) // distinct created_at for the sort
	}

	// Get: the same transfer.
	got, err := transfers.Get(ctx, sc, first.ID).Extract()
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if !equalTransfers(*got, *first) || !got.CreatedAt.Equal(first.CreatedAt) {
		t.Errorf("get %+v\nwant %+v", *got, *first)
	}

	// List one per page: the pager follows transfers_links across pages.
	var pages [][]string
	err = transfers.List(sc, transfers.ListOpts{Limit: 1, SortKey: "created_at", SortDir: "asc"}).EachPage(ctx,
		func(_ context.Context, p pagination.Page) (bool, error) {
			trs, err := transfers.ExtractTransfers(p)
			var page []string
			for _, tr := range trs {
				page = append(page, tr.ID)
			}
			pages = append(pages, page)
			return true, err
		})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if wantPages := [][]string{{ids[0]}, {ids[1]}, {ids[2]}}; !slices.EqualFunc(pages, wantPages, slices.Equal) {
		t.Errorf("pages %v, want %v", pages, wantPages)
	}
	all, err := transfers.List(sc, transfers.ListOpts{Limit: 2, Status: "queued", AllProjects: true}).AllPages(ctx)
	if err != nil {
		t.Fatalf("list all: %v", err)
	}
	if trs, err := transfers.ExtractTransfers(all); err != nil || len(trs) != 3 {
		t.Errorf("all pages: %d transfers, %v", len(trs), err)
	}

	// Cancel a queued transfer: cancelled at once; retry is only from error.
	if err := transfers.Cancel(ctx, sc, first.ID).ExtractErr(); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if got, err := transfers.Get(ctx, sc, first.ID).Extract(); err != nil || got.Status != "cancelled" {
		t.Errorf("after cancel: %+v %v", got, err)
	}
	if err := transfers.Retry(ctx, sc, first.ID).ExtractErr(); !gophercloud.ResponseCodeIs(err, http.StatusConflict) {
		t.Errorf("retry of a cancelled transfer: %v, want 409", err)
	}
	// Retry from error: queued again, the error cleared.
	if _, err := store.TransitionTransfer(ctx, ids[1], db.StatusError, db.TransitionOpts{Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	if got, err := transfers.Get(ctx, sc, ids[1]).Extract(); err != nil || got.Status != "error" || got.Error != "boom" {
		t.Errorf("failed transfer: %+v %v", got, err)
	}
	if err := transfers.Retry(ctx, sc, ids[1]).ExtractErr(); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got, err := transfers.Get(ctx, sc, ids[1]).Extract(); err != nil || got.Status != "queued" || got.Error != "" {
		t.Errorf("after retry: %+v %v", got, err)
	}

	// Events: creation and cancel, with the requests' ids.
	events, err := transfers.ListEvents(ctx, sc, first.ID).Extract()
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	if len(events) != 2 || events[0].FromStatus != "" || events[0].ToStatus != "queued" || events[0].Kind != "status" ||
		events[1].FromStatus != "queued" || events[1].ToStatus != "cancelled" || !strings.HasPrefix(events[1].RequestID, "req-") ||
		!strings.Contains(events[1].Message, "admin-user") || events[0].CreatedAt.IsZero() {
		t.Errorf("events %+v", events)
	}

	// Delete: only a terminal transfer; then it is gone (404).
	if err := transfers.Delete(ctx, sc, ids[2]).ExtractErr(); !gophercloud.ResponseCodeIs(err, http.StatusConflict) {
		t.Errorf("delete of a queued transfer: %v, want 409", err)
	}
	if err := transfers.Delete(ctx, sc, first.ID).ExtractErr(); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := transfers.Get(ctx, sc, first.ID).Extract(); !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		t.Errorf("get after delete: %v, want 404", err)
	}
	if err := transfers.Cancel(ctx, sc, first.ID).ExtractErr(); !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		t.Errorf("cancel after delete: %v, want 404", err)
	}

	// 403s: a member names a raw image, asks for all projects, lists
	// services; another project's transfer is a 404.
	if _, err := transfers.Create(ctx, demo, opts).Extract(); !gophercloud.ResponseCodeIs(err, http.StatusForbidden) {
		t.Errorf("member creates from an image: %v, want 403", err)
	}
	// A member may create from a volume (the default policy's
	// transfer:create): past the policy, this server has no Cinder (501).
	volOpts := transfers.CreateOpts{Source: transfers.SourceOpts{Region: "RegionOne", VolumeID: "8c3c5e1e-6f0e-4f57-9a43-0c1f3e7e9d10"}, Destination: transfers.DestinationOpts{Region: "RegionTwo"}}
	if _, err := transfers.Create(ctx, demo, volOpts).Extract(); !gophercloud.ResponseCodeIs(err, http.StatusNotImplemented) {
		t.Errorf("member creates from a volume without Cinder: %v, want 501", err)
	}
	if _, err := transfers.List(demo, transfers.ListOpts{AllProjects: true}).AllPages(ctx); !gophercloud.ResponseCodeIs(err, http.StatusForbidden) {
		t.Errorf("member lists all projects: %v, want 403", err)
	}
	if _, err := ferryservices.List(demo).AllPages(ctx); !gophercloud.ResponseCodeIs(err, http.StatusForbidden) {
		t.Errorf("member lists services: %v, want 403", err)
	}
	if _, err := transfers.Get(ctx, demo, ids[1]).Extract(); !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		t.Errorf("member shows another project's transfer: %v, want 404", err)
	}
	if p, err := transfers.List(demo, nil).AllPages(ctx); err != nil {
		t.Errorf("member's own list: %v", err)
	} else if trs, _ := transfers.ExtractTransfers(p); len(trs) != 0 {
		t.Errorf("member sees %d transfers", len(trs))
	}

	// 400s: a region without an endpoint, the same region twice, a bad
	// status filter; the message comes through.
	bad := opts
	bad.Destination.Region = "RegionThree"
	_, err = transfers.Create(ctx, sc, bad).Extract()
	if !gophercloud.ResponseCodeIs(err, http.StatusBadRequest) || !strings.Contains(err.Error(), "RegionThree") {
		t.Errorf("unknown region: %v, want a 400 naming it", err)
	}
	bad.Destination.Region = "RegionOne"
	if _, err := transfers.Create(ctx, sc, bad).Extract(); !gophercloud.ResponseCodeIs(err, http.StatusBadRequest) {
		t.Errorf("same region: %v, want 400", err)
	}
	if _, err := transfers.List(sc, transfers.ListOpts{Status: "running"}).AllPages(ctx); !gophercloud.ResponseCodeIs(err, http.StatusBadRequest) {
		t.Errorf("bad status filter: %v, want 400", err)
	}
	// A source the client refuses never reaches the server.
	n, _, _ := store.ListTransfers(ctx, db.ListOpts{Scope: db.AllProjectsScope(), Limit: 100})
	bad = opts
	bad.Source.VolumeID = "v"
	if _, err := transfers.Create(ctx, sc, bad).Extract(); !errors.Is(err, transfers.ErrInvalidSource) {
		t.Errorf("volume and image: %v, want ErrInvalidSource", err)
	}
	if m, _, _ := store.ListTransfers(ctx, db.ListOpts{Scope: db.AllProjectsScope(), Limit: 100}); len(m) != len(n) {
		t.Errorf("a refused create reached the server: %d transfers, then %d", len(n), len(m))
	}

	// 401 and 406.
	bogus := client.NewFerryV1WithEndpoint(&gophercloud.ProviderClient{TokenID: "bogus"}, ts.URL)
	if _, err := transfers.Get(ctx, bogus, ids[1]).Extract(); !gophercloud.ResponseCodeIs(err, http.StatusUnauthorized) {
		t.Errorf("bad token: %v, want 401", err)
	}
	future := client.NewFerryV1WithEndpoint(&gophercloud.ProviderClient{TokenID: "admin-token"}, ts.URL+"/v1/")
	future.Microversion = "1.99"
	if _, err := transfers.Get(ctx, future, ids[1]).Extract(); !gophercloud.ResponseCodeIs(err, http.StatusNotAcceptable) {
		t.Errorf("microversion 1.99: %v, want 406", err)
	}

	// Services: an agent's heartbeat.
	if _, err := store.UpsertServiceHeartbeat(ctx, "ferry-agent", "node-1", "RegionTwo", "1.2.3"); err != nil {
		t.Fatal(err)
	}
	sp, err := ferryservices.List(sc).AllPages(ctx)
	if err != nil {
		t.Fatalf("services: %v", err)
	}
	svcs, err := ferryservices.ExtractServices(sp)
	if err != nil || len(svcs) != 1 {
		t.Fatalf("services %+v %v", svcs, err)
	}
	if sv := svcs[0]; sv.Binary != "ferry-agent" || sv.Host != "node-1" || sv.Region != "RegionTwo" || sv.State != "up" ||
		sv.Status != "enabled" || sv.Version != "1.2.3" || time.Since(sv.UpdatedAt) > time.Minute {
		t.Errorf("service %+v", sv)
	}
}

// equalTransfers compares transfers, times by instant.
func equalTransfers(a, b transfers.Transfer) bool {
	eqTime := func(x, y *time.Time) bool { return x == nil && y == nil || x != nil && y != nil && x.Equal(*y) }
	eqInt := func(x, y *int64) bool { return x == nil && y == nil || x != nil && y != nil && *x == *y }
	if !a.CreatedAt.Equal(b.CreatedAt) || !a.UpdatedAt.Equal(b.UpdatedAt) || !eqTime(a.StartedAt, b.StartedAt) ||
		!eqTime(a.FinishedAt, b.FinishedAt) || !eqInt(a.ETASeconds, b.ETASeconds) {
		return false
	}
	a.CreatedAt, a.UpdatedAt, a.StartedAt, a.FinishedAt, a.ETASeconds = b.CreatedAt, b.UpdatedAt, b.StartedAt, b.FinishedAt, b.ETASeconds
	return a == b
}
