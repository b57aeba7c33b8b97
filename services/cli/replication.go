package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/services/client/replications"
)

// replicationFields is a replication's fields in the API's order.
var replicationFields = []string{
	"id", "name", "description", "project_id", "user_id", "status", "source", "destination",
	"interval_seconds", "rpo_seconds", "retention", "bandwidth_limit", "last_sync_at", "lag_seconds",
	"rpo_breached", "last_transfer_id", "last_error", "points_count", "bytes_last_cycle", "next_run_at",
	"cycles", "created_at", "updated_at",
}

var (
	replicationListColumns     = []string{"id", "name", "status", "source", "destination", "lag_seconds", "points_count", "last_sync_at"}
	replicationListLongColumns = []string{"id", "name", "status", "source", "destination", "interval_seconds", "rpo_seconds",
		"lag_seconds", "rpo_breached", "points_count", "last_sync_at", "bytes_last_cycle", "next_run_at", "project_id", "created_at"}
	pointFields            = []string{"name", "created_at", "digest", "bytes", "size", "transfer_id"}
	drillFields            = []string{"id", "replication_id", "name", "point", "status", "volume_id", "requested_at", "available_at", "rto_seconds", "error"}
	drillListColumns       = []string{"id", "name", "point", "status", "volume_id", "requested_at", "rto_seconds"}
	replicationEventFields = []string{"created_at", "kind", "message", "transfer_id", "request_id"}
)

func (a *app) replicationCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "replication", Short: "Continuous replication of volumes to another region, with an RPO, points in time, DR drills, failover and failback", Args: cobra.NoArgs}
	cmd.AddCommand(a.replicationCreate(), a.replicationList(), a.replicationShow(), a.replicationSet(),
		a.replicationAction("pause", "Pause replications: no new cycle starts (a running one ends normally)",
			func(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
				return replications.Pause(ctx, sc, id).ExtractErr()
			}),
		a.replicationAction("resume", "Resume paused replications",
			func(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
				return replications.Resume(ctx, sc, id).ExtractErr()
			}),
		a.replicationAction("sync", "Start a cycle of replications now",
			func(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
				return replications.Sync(ctx, sc, id).ExtractErr()
			}),
		a.replicationDelete(), a.replicationPoints(), a.replicationDrill(), a.replicationDrills(), a.replicationEvents(),
		a.replicationFailover(), a.replicationFailback(), a.replicationFailovers(), a.replicationFailoverShow())
	return cmd
}

// retentionFlags are --keep-last/--keep-hourly/--keep-daily.
type retentionFlags struct{ last, hourly, daily int }

func (r *retentionFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&r.last, "keep-last", 0, "retention: keep the newest N points (at least 1; server default 3)")
	f.IntVar(&r.hourly, "keep-hourly", 0, "retention: also keep the newest point of each of the last N hours")
	f.IntVar(&r.daily, "keep-daily", 0, "retention: also keep the newest point of each of the last N days")
}

func (r *retentionFlags) changed(cmd *cobra.Command) bool {
	f := cmd.Flags()
	return f.Changed("keep-last") || f.Changed("keep-hourly") || f.Changed("keep-daily")
}

// opts is the retention options given; the others are not sent (the
// server's default on a create, unchanged on a set).
func (r *retentionFlags) opts(cmd *cobra.Command) (*replications.RetentionOpts, error) {
	f := cmd.Flags()
	var o replications.RetentionOpts
	if f.Changed("keep-last") {
		if r.last < 1 {
			return nil, errors.New("--keep-last must be at least 1")
		}
		o.KeepLast = &r.last
	}
	if f.Changed("keep-hourly") {
		if r.hourly < 0 {
			return nil, errors.New("--keep-hourly cannot be negative")
		}
		o.KeepHourly = &r.hourly
	}
	if f.Changed("keep-daily") {
		if r.daily < 0 {
			return nil, errors.New("--keep-daily cannot be negative")
		}
		o.KeepDaily = &r.daily
	}
	return &o, nil
}

// scheduleFlags are the schedule options of a create (of a replication or
// a replication group): --interval and --rpo (required), the retention
// and --bandwidth-limit.
type scheduleFlags struct {
	interval, rpo, bandwidth string
	keep                     retentionFlags
}

func (s *scheduleFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.interval, "interval", "", "time between cycles, e.g. 300 or 5m (required)")
	f.StringVar(&s.rpo, "rpo", "", "recovery point objective: the lag beyond which it is breached, e.g. 15m (required)")
	s.keep.add(cmd)
	f.StringVar(&s.bandwidth, "bandwidth-limit", "", "bytes/s for the cycles, e.g. 50M (default: the agents')")
}

// schedule is what scheduleFlags give: a zero BandwidthLimit and a nil
// Retention are not given (the server's defaults).
type schedule struct {
	IntervalSeconds, RPOSeconds int
	BandwidthLimit              int64
	Retention                   *replications.RetentionOpts
}

func (s *scheduleFlags) parse(cmd *cobra.Command) (schedule, error) {
	var (
		out schedule
		err error
	)
	if out.IntervalSeconds, err = parseSeconds("--interval", s.interval); err != nil {
		return out, err
	}
	if out.RPOSeconds, err = parseSeconds("--rpo", s.rpo); err != nil {
		return out, err
	}
	if s.bandwidth != "" {
		if out.BandwidthLimit, err = parseBytes("--bandwidth-limit", s.bandwidth); err != nil {
			return out, err
		}
	}
	if s.keep.changed(cmd) {
		if out.Retention, err = s.keep.opts(cmd); err != nil {
			return out, err
		}
	}
	return out, nil
}

// setFlags are the options of a set (of a replication or a replication
// group): only those given are sent and change.
type setFlags struct {
	name, description        string
	interval, rpo, bandwidth string
	keep                     retentionFlags
}

func (s *setFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.interval, "interval", "", "time between cycles, e.g. 300 or 5m")
	f.StringVar(&s.rpo, "rpo", "", "recovery point objective, e.g. 15m")
	s.keep.add(cmd)
	f.StringVar(&s.bandwidth, "bandwidth-limit", "", "bytes/s for the cycles, e.g. 50M; 0 is the agents' default")
	f.StringVar(&s.name, "name", "", "new name")
	f.StringVar(&s.description, "description", "", "new description")
}

// opts is the update of the options given; none is an error.
func (s *setFlags) opts(cmd *cobra.Command) (replications.UpdateOpts, error) {
	f := cmd.Flags()
	var opts replications.UpdateOpts
	if f.Changed("name") {
		opts.Name = &s.name
	}
	if f.Changed("description") {
		opts.Description = &s.description
	}
	if f.Changed("interval") {
		n, err := parseSeconds("--interval", s.interval)
		if err != nil {
			return opts, err
		}
		opts.IntervalSeconds = &n
	}
	if f.Changed("rpo") {
		n, err := parseSeconds("--rpo", s.rpo)
		if err != nil {
			return opts, err
		}
		opts.RPOSeconds = &n
	}
	if f.Changed("bandwidth-limit") {
		n, err := parseBytes("--bandwidth-limit", s.bandwidth)
		if err != nil {
			return opts, err
		}
		opts.BandwidthLimit = &n
	}
	if s.keep.changed(cmd) {
		var err error
		if opts.Retention, err = s.keep.opts(cmd); err != nil {
			return opts, err
		}
	}
	if opts == (replications.UpdateOpts{}) {
		return opts, errors.New("nothing to change: give at least one option (see --help)")
	}
	return opts, nil
}

func (a *app) replicationCreate() *cobra.Command {
	var (
		out   outputOpts
		opts  replications.CreateOpts
		sched scheduleFlags
		cmd   *cobra.Command
	)
	cmd = &cobra.Command{
		Use:   "create --destination-region REGION (--volume ID | --pool POOL --image IMAGE) --interval DURATION --rpo DURATION [flags]",
		Short: "Create a replication",
		Long: "Protect a Cinder volume (or, admins by default, an RBD pool and image) in another region: every\n" +
			"interval Ferry copies what changed since the last cycle into a Ferry-owned replica and keeps points in\n" +
			"time by the retention. The source region defaults to the cloud's region (OS_REGION_NAME). Durations are\n" +
			"seconds or Go durations (300, 5m, 1h30m); the bandwidth limit is bytes/s with an optional K, M or G\n" +
			"(binary multiples).",
		Args: cobra.NoArgs,
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, eo gophercloud.EndpointOpts, _ []string) error {
			if opts.Source.Region == "" {
				opts.Source.Region = eo.Region
			}
			if opts.Source.Region == "" {
				return errors.New("no source region: give --source-region, or set OS_REGION_NAME / --os-region-name")
			}
			if opts.Destination.Region == "" {
				return errors.New("--destination-region is required")
			}
			sch, err := sched.parse(cmd)
			if err != nil {
				return err
			}
			opts.IntervalSeconds, opts.RPOSeconds, opts.BandwidthLimit, opts.Retention = sch.IntervalSeconds, sch.RPOSeconds, sch.BandwidthLimit, sch.Retention
			r := replications.Create(ctx, sc, opts)
			if r.Err != nil {
				return apiError(r.Err)
			}
			_, raw, err := extractReplication(r.Result)
			if err != nil {
				return err
			}
			return printOne(a.stdout, out, replicationObject(raw, out), replicationFields)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&opts.Source.Region, "source-region", "", "region of the source (default: the cloud's region)")
	f.StringVar(&opts.Source.VolumeID, "volume", "", "source Cinder volume id")
	f.StringVar(&opts.Source.Pool, "pool", "", "source RBD pool (with --image; admins)")
	f.StringVar(&opts.Source.Image, "image", "", "source RBD image (with --pool; admins)")
	f.StringVar(&opts.Destination.Region, "destination-region", "", "region of the replica (required)")
	f.StringVar(&opts.Destination.Pool, "destination-pool", "", "RBD pool of the replica (default: the destination's Cinder volume pool)")
	sched.add(cmd)
	f.StringVar(&opts.Name, "name", "", "name of the replication")
	f.StringVar(&opts.Description, "description", "", "description of the replication")
	cmd.MarkFlagsMutuallyExclusive("volume", "pool")
	cmd.MarkFlagsMutuallyExclusive("volume", "image")
	cmd.MarkFlagsRequiredTogether("pool", "image")
	cmd.MarkFlagsOneRequired("volume", "pool")
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) replicationList() *cobra.Command {
	var (
		out         outputOpts
		opts        replications.ListOpts
		long        bool
		limit       int
		allProjects bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List replications, their lag against their RPO",
		Args:  cobra.NoArgs,
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, _ []string) error {
			if limit < 0 {
				return errors.New("--limit must be positive")
			}
			opts.Limit, opts.AllProjects = limit, allProjects
			var objs []object
			err := replications.List(sc, opts).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
				items, err := rawList(page.GetBody(), "replications")
				if err != nil {
					return false, err
				}
				for _, it := range items {
					objs = append(objs, replicationObject(it, out))
				}
				return limit == 0 || len(objs) < limit, nil
			})
			if err != nil {
				return apiError(err)
			}
			if limit > 0 && len(objs) > limit {
				objs = objs[:limit]
			}
			cols := replicationListColumns
			if long {
				cols = replicationListLongColumns
			}
			return printList(a.stdout, out, objs, cols, replicationFields)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&opts.Marker, "marker", "", "list after this replication id")
	f.IntVar(&limit, "limit", 0, "at most this many replications (default: all, page by page)")
	f.BoolVar(&allProjects, "all-projects", false, "replications of every project (admins)")
	f.BoolVar(&long, "long", false, "more columns")
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) replicationShow() *cobra.Command {
	var out outputOpts
	cmd := &cobra.Command{
		Use:   "show REPLICATION",
		Short: "Show a replication (by id or name), its lag against its RPO",
		Args:  cobra.ExactArgs(1),
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			_, raw, err := findReplication(ctx, sc, args[0])
			if err != nil {
				return err
			}
			return printOne(a.stdout, out, replicationObject(raw, out), replicationFields)
		}),
	}
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) replicationSet() *cobra.Command {
	var (
		out outputOpts
		set setFlags
		cmd *cobra.Command
	)
	cmd = &cobra.Command{
		Use:   "set REPLICATION [--interval DURATION] [--rpo DURATION] [--keep-last N] [--keep-hourly N] [--keep-daily N] [--bandwidth-limit RATE] [--name NAME] [--description TEXT]",
		Short: "Change a replication's schedule, RPO, retention, bandwidth limit, name or description",
		Long: "Change a replication. Only the options given are sent and change; a retention option leaves the\n" +
			"other two as they are. --bandwidth-limit 0 returns to the agents' default.",
		Args: cobra.ExactArgs(1),
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			opts, err := set.opts(cmd)
			if err != nil {
				return err
			}
			r, _, err := findReplication(ctx, sc, args[0])
			if err != nil {
				return err
			}
			res := replications.Update(ctx, sc, r.ID, opts)
			if res.Err != nil {
				return apiError(res.Err)
			}
			_, raw, err := extractReplication(res.Result)
			if err != nil {
				return err
			}
			return printOne(a.stdout, out, replicationObject(raw, out), replicationFields)
		}),
	}
	set.add(cmd)
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) replicationDelete() *cobra.Command {
	var keepReplica bool
	cmd := &cobra.Command{
		Use:   "delete REPLICATION [REPLICATION ...]",
		Short: "Delete replications: Ferry's snapshots go on both sides, and the replica unless --keep-replica",
		Args:  cobra.MinimumNArgs(1),
		RunE: a.withClient(nil, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			return a.eachOf("replication", args, "delete", func(ref string) error {
				r, _, err := findReplication(ctx, sc, ref)
				if err != nil {
					return err
				}
				return apiError(replications.Delete(ctx, sc, r.ID, replications.DeleteOpts{KeepReplica: keepReplica}).ExtractErr())
			})
		}),
	}
	cmd.Flags().BoolVar(&keepReplica, "keep-replica", false, "keep the replica image at the destination (its content is the newest point)")
	return cmd
}

// replicationAction runs an action on each replication named.
func (a *app) replicationAction(name, short string, do func(context.Context, *gophercloud.ServiceClient, string) error) *cobra.Command {
	return &cobra.Command{
		Use:   name + " REPLICATION [REPLICATION ...]",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: a.withClient(nil, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			return a.eachOf("replication", args, name, func(ref string) error {
				r, _, err := findReplication(ctx, sc, ref)
				if err != nil {
					return err
				}
				return apiError(do(ctx, sc, r.ID))
			})
		}),
	}
}

func (a *app) replicationPoints() *cobra.Command {
	return a.replicationView("points REPLICATION", "List a replication's retained points in time, newest first", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			return a.printSub(out, replications.ListPoints(ctx, sc, id).Result, "points", pointFields, pointFields)
		})
}

func (a *app) replicationDrills() *cobra.Command {
	return a.replicationView("drills REPLICATION", "List a replication's DR drills: their volume and time to available (RTO)", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			return a.printSub(out, replications.ListDrills(ctx, sc, id).Result, "drills", drillListColumns, drillFields)
		})
}

func (a *app) replicationEvents() *cobra.Command {
	return a.replicationView("events REPLICATION", "Show a replication's history: cycles, skips, errors, RPO breaches, drills, failovers", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			return a.printSub(out, replications.ListEvents(ctx, sc, id).Result, "events", replicationEventFields[:4], replicationEventFields)
		})
}

// replicationView is a command that shows something of one replication
// (its first argument, by id or name; nargs arguments in all) with the
// output options: show gets the replication's id and the arguments.
func (a *app) replicationView(use, short string, nargs int,
	show func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, args []string) error) *cobra.Command {
	var out outputOpts
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(nargs),
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			r, _, err := findReplication(ctx, sc, args[0])
			if err != nil {
				return err
			}
			return show(ctx, sc, r.ID, out, args)
		}),
	}
	addOutputFlags(cmd, &out)
	return cmd
}

// printSub prints the list under key of a sub-resource's answer.
func (a *app) printSub(out outputOpts, r gophercloud.Result, key string, defaults, order []string) error {
	if r.Err != nil {
		return apiError(r.Err)
	}
	items, err := rawList(r.Body, key)
	if err != nil {
		return err
	}
	objs := make([]object, len(items))
	for i := range items {
		objs[i] = newObject(items[i], order)
	}
	return printList(a.stdout, out, objs, defaults, order)
}

func (a *app) replicationDrill() *cobra.Command {
	var (
		out  outputOpts
		name string
	)
	cmd := &cobra.Command{
		Use:   "drill REPLICATION POINT [--name NAME]",
		Short: "Start a DR drill: clone a point into a new volume in the destination region",
		Long: "Start a DR drill (a test failover) without pausing the replication: the point (a name from\n" +
			"`ferry replication points`, or latest) is cloned into a new Cinder volume of the replication's project in\n" +
			"the destination region. `ferry replication drills` shows its volume and time to available.",
		Args: cobra.ExactArgs(2),
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			r, _, err := findReplication(ctx, sc, args[0])
			if err != nil {
				return err
			}
			point := args[1]
			if point == "latest" {
				points, err := replications.ListPoints(ctx, sc, r.ID).Extract()
				if err != nil {
					return apiError(err)
				}
				if len(points) == 0 {
					return fmt.Errorf("replication %s has no point yet", r.ID)
				}
				point = points[0].Name
			}
			res := replications.Drill(ctx, sc, r.ID, replications.DrillOpts{Point: point, Name: name})
			if res.Err != nil {
				return apiError(res.Err)
			}
			body, _ := res.Body.(map[string]any)
			raw, ok := body["drill"].(map[string]any)
			if !ok {
				return errors.New("unexpected answer from the API: no drill object")
			}
			return printOne(a.stdout, out, newObject(raw, drillFields), drillFields)
		}),
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the drill (and of its volume)")
	addOutputFlags(cmd, &out)
	return cmd
}

// findReplication gets a replication by id, or else by name when exactly
// one replication has that name (the openstack CLI's find_resource).
func findReplication(ctx context.Context, sc *gophercloud.ServiceClient, ref string) (*replications.Replication, map[string]any, error) {
	return findResource[replications.Replication](ctx, ref, "replication",
		func(ctx context.Context, id string) gophercloud.Result { return replications.Get(ctx, sc, id).Result },
		replications.List(sc, replications.ListOpts{}))
}

// extractReplication returns a result's replication both typed and as the
// API's raw object.
func extractReplication(r gophercloud.Result) (*replications.Replication, map[string]any, error) {
	return extractResource[replications.Replication](r, "replication")
}

// replicationObject orders a replication's fields; in a table or as
// values its lag_seconds reads against its RPO ("42s (RPO 15m0s)",
// "20m0s (RPO 15m0s, breached)"). JSON and YAML keep the API's object.
func replicationObject(raw map[string]any, out outputOpts) object {
	if out.format == formatTable || out.format == formatValue {
		if _, ok := raw["lag_seconds"]; ok {
			c := make(map[string]any, len(raw))
			for k, v := range raw {
				c[k] = v
			}
			c["lag_seconds"] = lagCell(raw["lag_seconds"], raw["rpo_seconds"], raw["rpo_breached"])
			raw = c
		}
	}
	return newObject(raw, replicationFields)
}

// lagCell is a lag against the RPO: "42s (RPO 15m0s)", "20m0s (RPO 15m0s,
// breached)", "no point yet (RPO 2m0s, breached)".
func lagCell(lag, rpo, breached any) string {
	s := "no point yet"
	if l, ok := number(lag); ok {
		s = seconds(l)
	}
	var notes []string
	if r, ok := number(rpo); ok {
		notes = append(notes, "RPO "+seconds(r))
	}
	if b, _ := breached.(bool); b {
		notes = append(notes, "breached")
	}
	if len(notes) > 0 {
		s += " (" + strings.Join(notes, ", ") + ")"
	}
	return s
}

// number reads a number of a decoded API body (float64, or json.Number
// when the decoder kept them exact).
func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

// parseSeconds reads a duration flag: whole seconds ("300") or a Go
// duration of whole seconds ("5m", "1h30m"), more than zero.
func parseSeconds(flag, v string) (int, error) {
	if v == "" {
		return 0, fmt.Errorf("%s is required", flag)
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return 0, fmt.Errorf("%s must be more than zero", flag)
		}
		return n, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s %q: give seconds or a duration such as 5m or 1h30m", flag, v)
	}
	if d <= 0 || d%time.Second != 0 {
		return 0, fmt.Errorf("%s %q: must be a positive whole number of seconds", flag, v)
	}
	return int(d / time.Second), nil
}

// parseBytes reads a rate in bytes/s: a whole number with an optional K,
// M or G (binary multiples; "50M", "1.5G" is not whole: "1536M").
func parseBytes(flag, v string) (int64, error) {
	s := strings.ToUpper(strings.TrimSpace(v))
	s = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(s, "/S"), "B"), "I")
	mult := int64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			s = s[:len(s)-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s %q: give bytes/s as a whole number with an optional K, M or G (e.g. 50M)", flag, v)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("%s %q is too large", flag, v)
	}
	return n * mult, nil
}
