package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/db/state"
	"github.com/ferry-project/ferry/services/client/transfers"
)

// transferFields is a transfer's fields in the order of ARCHITECTURE §3.
var transferFields = []string{
	"id", "name", "description", "project_id", "user_id", "status", "mode", "source", "destination",
	"bytes_total", "bytes_transferred", "progress", "rate_bytes_per_second", "eta_seconds", "digest",
	"error", "created_at", "updated_at", "started_at", "finished_at", "replication_id",
}

var (
	transferListColumns     = []string{"id", "name", "status", "source", "destination", "progress"}
	transferListLongColumns = []string{"id", "name", "status", "mode", "source", "destination", "progress",
		"bytes_total", "bytes_transferred", "rate_bytes_per_second", "eta_seconds", "project_id", "created_at"}
	eventFields = []string{"created_at", "kind", "from_status", "to_status", "message", "request_id"}
)

func (a *app) transferCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "transfer", Short: "Cross-region transfers of RBD images, Cinder volumes and backups", Args: cobra.NoArgs}
	cmd.AddCommand(a.transferCreate(), a.transferList(), a.transferShow(), a.transferEvents(),
		a.transferAction("cancel", "Cancel transfers (the destination keeps nothing half-written)",
			func(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
				return transfers.Cancel(ctx, sc, id).ExtractErr()
			}),
		a.transferAction("retry", "Retry transfers in error; they resume from their checkpoint",
			func(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
				return transfers.Retry(ctx, sc, id).ExtractErr()
			}),
		a.transferAction("delete", "Delete ended transfers (completed, error or cancelled); the copied data stays",
			func(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
				return transfers.Delete(ctx, sc, id).ExtractErr()
			}))
	return cmd
}

func (a *app) transferCreate() *cobra.Command {
	var (
		out     outputOpts
		src     transfers.SourceOpts
		dst     transfers.DestinationOpts
		opts    transfers.CreateOpts
		wait    bool
		pollInt time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create --destination-region REGION (--volume ID | --backup ID | --pool POOL --image IMAGE) [flags]",
		Short: "Create a transfer",
		Long: "Create a transfer of a Cinder volume, a Cinder backup or an RBD image (pool and image, admins by\n" +
			"default) to another region. The source region defaults to the cloud's region (OS_REGION_NAME).",
		Args: cobra.NoArgs,
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, eo gophercloud.EndpointOpts, _ []string) error {
			if src.Region == "" {
				src.Region = eo.Region
			}
			if src.Region == "" {
				return errors.New("no source region: give --source-region, or set OS_REGION_NAME / --os-region-name")
			}
			if dst.Region == "" {
				return errors.New("--destination-region is required")
			}
			opts.Source, opts.Destination = src, dst
			r := transfers.Create(ctx, sc, opts)
			if r.Err != nil {
				return apiError(r.Err)
			}
			t, raw, err := extractTransfer(r.Result)
			if err != nil {
				return err
			}
			if wait {
				return a.wait(ctx, sc, t.ID, out, pollInt)
			}
			return printOne(a.stdout, out, newObject(raw, transferFields), transferFields)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&src.Region, "source-region", "", "region of the source (default: the cloud's region)")
	f.StringVar(&src.VolumeID, "volume", "", "source Cinder volume id")
	f.StringVar(&src.BackupID, "backup", "", "source Cinder backup id")
	f.StringVar(&src.Pool, "pool", "", "source RBD pool (with --image)")
	f.StringVar(&src.Image, "image", "", "source RBD image (with --pool)")
	f.StringVar(&src.Snapshot, "snapshot", "", "existing source snapshot to copy (default: Ferry takes ferry-<transfer id>)")
	f.StringVar(&dst.Region, "destination-region", "", "region to copy to (required)")
	f.StringVar(&dst.Pool, "destination-pool", "", "destination RBD pool (default: the source pool)")
	f.StringVar(&dst.Image, "destination-image", "", "destination RBD image (default: the source image name)")
	f.StringVar(&opts.Mode, "mode", "", "auto (default), full or incremental")
	f.StringVar(&opts.Name, "name", "", "name of the transfer")
	f.StringVar(&opts.Description, "description", "", "description of the transfer")
	f.BoolVar(&wait, "wait", false, "wait until the transfer ends, showing its progress; exit non-zero unless it completed")
	f.DurationVar(&pollInt, "poll-interval", time.Second, "how often --wait asks for the transfer's progress")
	cmd.MarkFlagsMutuallyExclusive("volume", "backup", "pool")
	cmd.MarkFlagsMutuallyExclusive("volume", "backup", "image")
	cmd.MarkFlagsRequiredTogether("pool", "image")
	addOutputFlags(cmd, &out)
	return cmd
}

// wait polls a transfer until it ends, drawing its progress on stderr, then
// prints it. A transfer that did not complete is an error.
func (a *app) wait(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, every time.Duration) error {
	p := newProgressWriter(a.stderr)
	defer p.done()
	var t *transfers.Transfer
	err := poll(ctx, every, func() (bool, error) {
		r := transfers.Get(ctx, sc, id)
		if r.Err != nil {
			return false, apiError(r.Err)
		}
		cur, raw, err := extractTransfer(r.Result)
		if err != nil {
			return false, err
		}
		t = cur
		p.update(progressState{ID: t.ID, Status: t.Status, BytesTotal: t.BytesTotal, BytesTransferred: t.BytesTransferred,
			Progress: t.Progress, Rate: t.RateBytesPerSecond, ETASeconds: t.ETASeconds})
		if !state.IsTerminal(state.Status(t.Status)) {
			return false, nil
		}
		p.done()
		return true, printOne(a.stdout, out, newObject(raw, transferFields), transferFields)
	})
	switch {
	case errors.Is(err, errStopped):
		return fmt.Errorf("stopped waiting; transfer %s goes on (ferry transfer show %s)", id, id)
	case err != nil:
		return err
	}
	switch state.Status(t.Status) {
	case state.Error:
		return fmt.Errorf("transfer %s ended in error: %s", t.ID, t.Error)
	case state.Cancelled:
		return fmt.Errorf("transfer %s was cancelled", t.ID)
	}
	return nil
}

// errStopped is poll's error when its context ends first.
var errStopped = errors.New("stopped waiting")

// poll calls check at once, then every interval (at least 100ms), until
// it reports done or fails. When ctx ends first, or check fails because
// it did, the error is errStopped.
func poll(ctx context.Context, every time.Duration, check func() (bool, error)) error {
	tick := time.NewTicker(max(every, 100*time.Millisecond))
	defer tick.Stop()
	for {
		done, err := check()
		switch {
		case err != nil && ctx.Err() != nil:
			return errStopped
		case err != nil || done:
			return err
		}
		select {
		case <-ctx.Done():
			return errStopped
		case <-tick.C:
		}
	}
}

func (a *app) transferList() *cobra.Command {
	var (
		out         outputOpts
		opts        transfers.ListOpts
		long        bool
		limit       int
		sort        string
		allProjects bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List transfers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			if sort != "" {
				k, d, _ := strings.Cut(sort, ":")
				opts.SortKey, opts.SortDir = k, d
			}
			opts.AllProjects = allProjects
			if limit < 0 {
				return errors.New("--limit must be positive")
			}
			opts.Limit = limit
			ctx := cmd.Context()
			sc, _, err := a.connect(ctx)
			if err != nil {
				return err
			}
			var objs []object
			err = transfers.List(sc, opts).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
				items, err := rawList(page.GetBody(), "transfers")
				if err != nil {
					return false, err
				}
				for _, it := range items {
					objs = append(objs, newObject(it, transferFields))
				}
				return limit == 0 || len(objs) < limit, nil
			})
			if err != nil {
				return apiError(err)
			}
			if limit > 0 && len(objs) > limit {
				objs = objs[:limit]
			}
			cols := transferListColumns
			if long {
				cols = transferListLongColumns
			}
			return printList(a.stdout, out, objs, cols, transferFields)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Status, "status", "", "only transfers in this status")
	f.StringVar(&opts.SourceRegion, "source-region", "", "only transfers from this region")
	f.StringVar(&opts.DestinationRegion, "destination-region", "", "only transfers to this region")
	f.StringVar(&opts.ReplicationID, "replication", "", "only the cycles of this replication (id)")
	f.StringVar(&opts.Marker, "marker", "", "list after this transfer id")
	f.IntVar(&limit, "limit", 0, "at most this many transfers (default: all, page by page)")
	f.StringVar(&sort, "sort", "", "sort key and direction, e.g. created_at:desc")
	f.BoolVar(&allProjects, "all-projects", false, "transfers of every project (admins)")
	f.BoolVar(&long, "long", false, "more columns")
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) transferShow() *cobra.Command {
	var out outputOpts
	cmd := &cobra.Command{
		Use:   "show TRANSFER",
		Short: "Show a transfer (by id or name)",
		Args:  cobra.ExactArgs(1),
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			_, raw, err := findTransfer(ctx, sc, args[0])
			if err != nil {
				return err
			}
			return printOne(a.stdout, out, newObject(raw, transferFields), transferFields)
		}),
	}
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) transferEvents() *cobra.Command {
	var out outputOpts
	cmd := &cobra.Command{
		Use:   "events TRANSFER",
		Short: "Show a transfer's history: state changes, errors, retries",
		Args:  cobra.ExactArgs(1),
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			t, _, err := findTransfer(ctx, sc, args[0])
			if err != nil {
				return err
			}
			r := transfers.ListEvents(ctx, sc, t.ID)
			if r.Err != nil {
				return apiError(r.Err)
			}
			items, err := rawList(r.Body, "events")
			if err != nil {
				return err
			}
			objs := make([]object, len(items))
			for i := range items {
				objs[i] = newObject(items[i], eventFields)
			}
			return printList(a.stdout, out, objs, eventFields[:5], eventFields)
		}),
	}
	addOutputFlags(cmd, &out)
	return cmd
}

// transferAction runs an action (cancel, retry, delete) on each transfer
// named, as the openstack CLI does for several resources: each failure is
// reported and the command fails at the end.
func (a *app) transferAction(name, short string, do func(context.Context, *gophercloud.ServiceClient, string) error) *cobra.Command {
	return &cobra.Command{
		Use:   name + " TRANSFER [TRANSFER ...]",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: a.withClient(nil, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			return a.each(args, name, func(ref string) error {
				t, _, err := findTransfer(ctx, sc, ref)
				if err != nil {
					return err
				}
				return apiError(do(ctx, sc, t.ID))
			})
		}),
	}
}

func (a *app) each(refs []string, verb string, do func(string) error) error {
	return a.eachOf("transfer", refs, verb, do)
}

// eachOf runs do on each resource (a transfer, a replication) named; each
// failure is reported and the command fails at the end.
func (a *app) eachOf(noun string, refs []string, verb string, do func(string) error) error {
	failed := 0
	for _, ref := range refs {
		if err := do(ref); err != nil {
			failed++
			fmt.Fprintf(a.stderr, "Failed to %s %s with name or ID '%s': %v\n", verb, noun, ref, err)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d %ss failed to %s", failed, len(refs), noun, verb)
	}
	return nil
}

// findTransfer gets a transfer by id, or else by name when exactly one
// transfer has that name (the openstack CLI's find_resource).
func findTransfer(ctx context.Context, sc *gophercloud.ServiceClient, ref string) (*transfers.Transfer, map[string]any, error) {
	return findResource[transfers.Transfer](ctx, ref, "transfer",
		func(ctx context.Context, id string) gophercloud.Result { return transfers.Get(ctx, sc, id).Result },
		transfers.List(sc, transfers.ListOpts{}))
}

// extractTransfer returns a result's transfer both typed and as the API's
// raw object.
func extractTransfer(r gophercloud.Result) (*transfers.Transfer, map[string]any, error) {
	return extractResource[transfers.Transfer](r, "transfer")
}

// findResource gets a resource (noun: its JSON key, e.g. "transfer" or
// "replication_group") by id, or else by name when exactly one of pages
// has that name (the openstack CLI's find_resource); a name that is
// nobody's is the API's 404 for the id.
func findResource[T any](ctx context.Context, ref, noun string, get func(context.Context, string) gophercloud.Result, pages pagination.Pager) (*T, map[string]any, error) {
	r := get(ctx, ref)
	if r.Err == nil {
		return extractResource[T](r, noun)
	}
	if !gophercloud.ResponseCodeIs(r.Err, http.StatusNotFound) {
		return nil, nil, apiError(r.Err)
	}
	var found []map[string]any
	err := pages.EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		items, err := rawList(page.GetBody(), noun+"s")
		if err != nil {
			return false, err
		}
		for _, it := range items {
			if it["name"] == ref {
				found = append(found, it)
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, nil, apiError(err)
	}
	switch len(found) {
	case 0:
		return nil, nil, apiError(r.Err) // the API's 404
	case 1:
		id, _ := found[0]["id"].(string)
		r := get(ctx, id)
		if r.Err != nil {
			return nil, nil, apiError(r.Err)
		}
		return extractResource[T](r, noun)
	}
	return nil, nil, fmt.Errorf("more than one %s is named '%s': use its ID", strings.ReplaceAll(noun, "_", " "), ref)
}

// extractResource returns a result's object under key both typed and as
// the API's raw object.
func extractResource[T any](r gophercloud.Result, key string) (*T, map[string]any, error) {
	var typed T
	if err := r.ExtractIntoStructPtr(&typed, key); err != nil {
		return nil, nil, fmt.Errorf("unexpected answer from the API: %w", err)
	}
	body, _ := r.Body.(map[string]any)
	raw, ok := body[key].(map[string]any)
	if !ok {
		return nil, nil, fmt.Errorf("unexpected answer from the API: no %s object", key)
	}
	return &typed, raw, nil
}

func rawList(body any, key string) ([]map[string]any, error) {
	m, _ := body.(map[string]any)
	items, ok := m[key].([]any)
	if !ok {
		return nil, fmt.Errorf("unexpected answer from the API: no %q list", key)
	}
	out := make([]map[string]any, 0, len(items))
	for _, it := range items {
		o, ok := it.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("unexpected answer from the API: an item of %q is not an object", key)
		}
		out = append(out, o)
	}
	return out, nil
}

// withClient is a command's RunE: it checks the output options, when the
// command has some, authenticates, finds Ferry's endpoint and runs fn.
func (a *app) withClient(out *outputOpts, fn func(ctx context.Context, sc *gophercloud.ServiceClient, eo gophercloud.EndpointOpts, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if out != nil {
			if err := out.validate(); err != nil {
				return err
			}
		}
		ctx := cmd.Context()
		sc, eo, err := a.connect(ctx)
		if err != nil {
			return err
		}
		return fn(ctx, sc, eo, args)
	}
}
