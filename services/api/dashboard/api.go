package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/ferry-project/ferry/services/client"
	"github.com/ferry-project/ferry/services/client/replicationgroups"
	"github.com/ferry-project/ferry/services/client/replications"
	"github.com/ferry-project/ferry/services/client/services"
	"github.com/ferry-project/ferry/services/client/transfers"
)

// The API as the dashboard sees it: the client library's types and calls,
// as Horizon uses the python clients.
type (
	Transfer   = transfers.Transfer
	Location   = transfers.Location
	Event      = transfers.Event
	Service    = services.Service
	CreateOpts = transfers.CreateOpts

	Replication = replications.Replication
	Point       = replications.Point
	Drill       = replications.DrillInfo
	ReplEvent   = replications.Event
	Failover    = replications.FailoverInfo

	Group      = replicationgroups.ReplicationGroup
	GroupPoint = replicationgroups.Point
)

const serviceType = client.ServiceType

// maxListPages bounds the pages of 1000 transfers one table loads.
const maxListPages = 5

// listTransfers returns the project's transfers from sourceRegion (any
// when empty), newest first.
func listTransfers(ctx context.Context, sc *gophercloud.ServiceClient, sourceRegion string) ([]Transfer, error) {
	var out []Transfer
	pages := 0
	err := transfers.List(sc, transfers.ListOpts{Limit: 1000, SortKey: "created_at", SortDir: "desc", SourceRegion: sourceRegion}).EachPage(ctx,
		func(_ context.Context, p pagination.Page) (bool, error) {
			ts, err := transfers.ExtractTransfers(p)
			if err != nil {
				return false, err
			}
			out = append(out, ts...)
			pages++
			return pages < maxListPages, nil
		})
	return out, err
}

func getTransfer(ctx context.Context, sc *gophercloud.ServiceClient, id string) (*Transfer, error) {
	return transfers.Get(ctx, sc, id).Extract()
}

func listEvents(ctx context.Context, sc *gophercloud.ServiceClient, id string) ([]Event, error) {
	return transfers.ListEvents(ctx, sc, id).Extract()
}

func createTransfer(ctx context.Context, sc *gophercloud.ServiceClient, o CreateOpts) (*Transfer, error) {
	return transfers.Create(ctx, sc, o).Extract()
}

func transferAction(ctx context.Context, sc *gophercloud.ServiceClient, id, action string) error {
	if action == "retry" {
		return transfers.Retry(ctx, sc, id).ExtractErr()
	}
	return transfers.Cancel(ctx, sc, id).ExtractErr()
}

func deleteTransfer(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
	return transfers.Delete(ctx, sc, id).ExtractErr()
}

func listServices(ctx context.Context, sc *gophercloud.ServiceClient) ([]Service, error) {
	p, err := services.List(sc).AllPages(ctx)
	if err != nil {
		return nil, err
	}
	return services.ExtractServices(p)
}

// listReplications returns the project's replications, newest first.
func listReplications(ctx context.Context, sc *gophercloud.ServiceClient) ([]Replication, error) {
	var out []Replication
	pages := 0
	err := replications.List(sc, replications.ListOpts{Limit: 1000}).EachPage(ctx,
		func(_ context.Context, p pagination.Page) (bool, error) {
			rs, err := replications.ExtractReplications(p)
			if err != nil {
				return false, err
			}
			out = append(out, rs...)
			pages++
			return pages < maxListPages, nil
		})
	return out, err
}

func getReplication(ctx context.Context, sc *gophercloud.ServiceClient, id string) (*Replication, error) {
	return replications.Get(ctx, sc, id).Extract()
}

func listPoints(ctx context.Context, sc *gophercloud.ServiceClient, id string) ([]Point, error) {
	return replications.ListPoints(ctx, sc, id).Extract()
}

func listDrills(ctx context.Context, sc *gophercloud.ServiceClient, id string) ([]Drill, error) {
	return replications.ListDrills(ctx, sc, id).Extract()
}

func listReplEvents(ctx context.Context, sc *gophercloud.ServiceClient, id string) ([]ReplEvent, error) {
	return replications.ListEvents(ctx, sc, id).Extract()
}

// replicationAction is sync, pause or resume.
func replicationAction(ctx context.Context, sc *gophercloud.ServiceClient, id, action string) error {
	switch action {
	case "sync":
		return replications.Sync(ctx, sc, id).ExtractErr()
	case "pause":
		return replications.Pause(ctx, sc, id).ExtractErr()
	}
	return replications.Resume(ctx, sc, id).ExtractErr()
}

func startDrill(ctx context.Context, sc *gophercloud.ServiceClient, id, point, name string) (*Drill, error) {
	return replications.Drill(ctx, sc, id, replications.DrillOpts{Point: point, Name: name}).Extract()
}

func listFailovers(ctx context.Context, sc *gophercloud.ServiceClient, id string) ([]Failover, error) {
	return replications.ListFailovers(ctx, sc, id).Extract()
}

// startFailover starts a planned failover, or the failback (the
// dashboard does not force either: the API's 409 for an attached volume
// is shown).
func startFailover(ctx context.Context, sc *gophercloud.ServiceClient, id, kind string) (*Failover, error) {
	if kind == "failback" {
		return replications.Failback(ctx, sc, id, replications.FailbackOpts{}).Extract()
	}
	return replications.Failover(ctx, sc, id, replications.FailoverOpts{}).Extract()
}

// listGroups returns the project's replication groups.
func listGroups(ctx context.Context, sc *gophercloud.ServiceClient) ([]Group, error) {
	var out []Group
	pages := 0
	err := replicationgroups.List(sc, replicationgroups.ListOpts{Limit: 1000}).EachPage(ctx,
		func(_ context.Context, p pagination.Page) (bool, error) {
			gs, err := replicationgroups.ExtractReplicationGroups(p)
			if err != nil {
				return false, err
			}
			out = append(out, gs...)
			pages++
			return pages < maxListPages, nil
		})
	return out, err
}

func getGroup(ctx context.Context, sc *gophercloud.ServiceClient, id string) (*Group, error) {
	return replicationgroups.Get(ctx, sc, id).Extract()
}

func listGroupPoints(ctx context.Context, sc *gophercloud.ServiceClient, id string) ([]GroupPoint, error) {
	return replicationgroups.ListPoints(ctx, sc, id).Extract()
}

func listGroupDrills(ctx context.Context, sc *gophercloud.ServiceClient, id string) ([]Drill, error) {
	return replicationgroups.ListDrills(ctx, sc, id).Extract()
}

// groupAction is sync, pause or resume of a group.
func groupAction(ctx context.Context, sc *gophercloud.ServiceClient, id, action string) error {
	switch action {
	case "sync":
		return replicationgroups.Sync(ctx, sc, id).ExtractErr()
	case "pause":
		return replicationgroups.Pause(ctx, sc, id).ExtractErr()
	}
	return replicationgroups.Resume(ctx, sc, id).ExtractErr()
}

// startGroupDrill drills a group point: one drill per member.
func startGroupDrill(ctx context.Context, sc *gophercloud.ServiceClient, id, point, name string) ([]Drill, error) {
	return replicationgroups.Drill(ctx, sc, id, replicationgroups.DrillOpts{Point: point, Name: name}).Extract()
}

// startGroupFailover starts a planned failover of a group, or its
// failback (not forced, as for a replication); the result is the group.
func startGroupFailover(ctx context.Context, sc *gophercloud.ServiceClient, id, kind string) (*Group, error) {
	if kind == "failback" {
		return replicationgroups.Failback(ctx, sc, id, replicationgroups.FailbackOpts{}).Extract()
	}
	return replicationgroups.Failover(ctx, sc, id, replicationgroups.FailoverOpts{}).Extract()
}

func newFerryClient(pc *gophercloud.ProviderClient, endpoint string) *gophercloud.ServiceClient {
	sc := client.NewFerryV1WithEndpoint(pc, endpoint)
	sc.Microversion = apiVersion
	return sc
}

// apiVersion is the microversion the dashboard asks for on every call:
// the one it was written for (1.1: replications, a transfer's
// replication_id). The replication groups' calls ask for 1.2 (the
// replicationgroups package's).
const apiVersion = "1.1"

// apiError is what the user is told about a failed API call: the API's
// own message (its OpenStack error body) and the status code. The API is
// called in-process, so an error without a status is the client
// library's check of the request: a 400.
func apiError(err error) (int, string) {
	var ue gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &ue) {
		var body map[string]struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(ue.Body, &body) == nil {
			for _, f := range body {
				if f.Message != "" {
					return ue.Actual, f.Message
				}
			}
		}
		return ue.Actual, http.StatusText(ue.Actual)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return http.StatusServiceUnavailable, "The request timed out."
	}
	return http.StatusBadRequest, err.Error()
}
