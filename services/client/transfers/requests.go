package transfers

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"

	ferry "github.com/ferry-project/ferry/services/client"
)

// ErrInvalidSource is wrapped by the error of a create whose source does
// not name exactly one of a volume, a backup, or a pool and an image. No
// request is sent.
var ErrInvalidSource = errors.New("transfer source must name exactly one of volume_id, backup_id, or pool and image")

// CreateOptsBuilder allows extensions to add parameters to Create.
type CreateOptsBuilder interface {
	ToTransferCreateMap() (map[string]any, error)
}

// SourceOpts names what to copy: a Cinder volume, a Cinder backup, or an
// RBD pool and image.
type SourceOpts struct {
	// Region is the source region (required).
	Region   string `json:"region" required:"true"`
	VolumeID string `json:"volume_id,omitempty"`
	BackupID string `json:"backup_id,omitempty"`
	Pool     string `json:"pool,omitempty"`
	Image    string `json:"image,omitempty"`
	// Snapshot names an existing snapshot to copy; empty means Ferry
	// takes ferry-<transfer id>.
	Snapshot string `json:"snapshot,omitempty"`
}

// DestinationOpts names where to copy to. Pool and Image default to the
// source's.
type DestinationOpts struct {
	// Region is the destination region (required).
	Region string `json:"region" required:"true"`
	Pool   string `json:"pool,omitempty"`
	Image  string `json:"image,omitempty"`
}

// CreateOpts is the body of POST /v1/transfers.
type CreateOpts struct {
	Source      SourceOpts      `json:"source" required:"true"`
	Destination DestinationOpts `json:"destination" required:"true"`
	// Mode is "auto" (the server's default), "full" or "incremental".
	Mode        string `json:"mode,omitempty"`
	Name        string `json:"name,omitempty"`
	Description string `json:"description,omitempty"`
}

// ToTransferCreateMap checks the options and builds the request body
// {"transfer": {...}}.
func (opts CreateOpts) ToTransferCreateMap() (map[string]any, error) {
	if err := opts.Source.validate(); err != nil {
		return nil, err
	}
	return gophercloud.BuildRequestBody(opts, "transfer")
}

func (s SourceOpts) validate() error {
	kinds := 0
	for _, set := range []bool{s.VolumeID != "", s.BackupID != "", s.Pool != "" || s.Image != ""} {
		if set {
			kinds++
		}
	}
	switch {
	case kinds == 0:
		return fmt.Errorf("%w: none given", ErrInvalidSource)
	case kinds > 1:
		return fmt.Errorf("%w: several given", ErrInvalidSource)
	case (s.Pool == "") != (s.Image == ""):
		return fmt.Errorf("%w: pool and image go together", ErrInvalidSource)
	}
	return nil
}

// Create asks for a transfer (POST /v1/transfers, 202 Accepted): the
// result is the queued transfer.
func Create(ctx context.Context, client *gophercloud.ServiceClient, opts CreateOptsBuilder) (r CreateResult) {
	b, err := opts.ToTransferCreateMap()
	if err != nil {
		r.Err = err
		return
	}
	resp, err := client.Post(ctx, createURL(client), b, &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusAccepted},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// Get shows a transfer (GET /v1/transfers/{id}).
func Get(ctx context.Context, client *gophercloud.ServiceClient, id string) (r GetResult) {
	resp, err := client.Get(ctx, getURL(client, id), &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusOK},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// ReplicationMicroversion is the API version that introduced a transfer's
// ReplicationID and the ListOpts.ReplicationID filter.
const ReplicationMicroversion = "1.1"

// ListOptsBuilder allows extensions to add parameters to List.
type ListOptsBuilder interface {
	ToTransferListQuery() (string, error)
}

// ListOpts filter and page GET /v1/transfers.
type ListOpts struct {
	// Limit is the page size (the server caps it); zero means the
	// server's default.
	Limit int `q:"limit"`
	// Marker is the id of the last transfer of the previous page.
	Marker string `q:"marker"`
	// SortKey and SortDir ("asc", "desc") order the list.
	SortKey string `q:"sort_key"`
	SortDir string `q:"sort_dir"`
	// Status lists only the transfers in that status.
	Status string `q:"status"`
	// SourceRegion and DestinationRegion list only the transfers from or
	// to that region.
	SourceRegion      string `q:"source_region"`
	DestinationRegion string `q:"destination_region"`
	// AllProjects lists every project's transfers (admins only).
	AllProjects bool `q:"all_projects"`
	// ReplicationID lists only the cycles of that replication (since
	// microversion 1.1, which List then asks for; an older server would
	// ignore the filter).
	ReplicationID string `q:"replication_id"`
}

// ToTransferListQuery formats the options into a query string.
func (opts ListOpts) ToTransferListQuery() (string, error) {
	q, err := gophercloud.BuildQueryString(opts)
	if err != nil {
		return "", err
	}
	return q.String(), nil
}

// List pages through the transfers (GET /v1/transfers), following the
// transfers_links "next" links.
func List(client *gophercloud.ServiceClient, opts ListOptsBuilder) pagination.Pager {
	if o, ok := opts.(ListOpts); ok && o.ReplicationID != "" {
		client = ferry.WithMicroversion(client, ReplicationMicroversion)
	}
	url := listURL(client)
	if opts != nil {
		query, err := opts.ToTransferListQuery()
		if err != nil {
			return pagination.Pager{Err: err}
		}
		url += query
	}
	return pagination.NewPager(client, url, func(r pagination.PageResult) pagination.Page {
		return TransferPage{pagination.LinkedPageBase{PageResult: r}}
	})
}

func action(ctx context.Context, client *gophercloud.ServiceClient, id, name string) (r ActionResult) {
	b := map[string]any{name: nil}
	resp, err := client.Post(ctx, actionURL(client, id), b, nil, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusAccepted},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// Cancel stops a transfer (POST /v1/transfers/{id}/action {"cancel": null},
// 202): a queued transfer is cancelled at once, a running one goes through
// cancelling.
func Cancel(ctx context.Context, client *gophercloud.ServiceClient, id string) (r ActionResult) {
	return action(ctx, client, id, "cancel")
}

// Retry queues a failed transfer again, same id, resuming from its
// checkpoint (POST /v1/transfers/{id}/action {"retry": null}, 202).
func Retry(ctx context.Context, client *gophercloud.ServiceClient, id string) (r ActionResult) {
	return action(ctx, client, id, "retry")
}

// Delete removes a transfer in a terminal state (DELETE
// /v1/transfers/{id}, 204); another state is a 409.
func Delete(ctx context.Context, client *gophercloud.ServiceClient, id string) (r DeleteResult) {
	resp, err := client.Delete(ctx, deleteURL(client, id), &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusNoContent},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}

// ListEvents returns a transfer's history (GET /v1/transfers/{id}/events):
// state changes, errors, retries, oldest first.
func ListEvents(ctx context.Context, client *gophercloud.ServiceClient, id string) (r EventsResult) {
	resp, err := client.Get(ctx, eventsURL(client, id), &r.Body, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusOK},
	})
	_, r.Header, r.Err = gophercloud.ParseResponse(resp, err)
	return
}
