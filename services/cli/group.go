package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/services/client/replicationgroups"
)

// groupFields is a replication group's fields in the API's order.
var groupFields = []string{
	"id", "name", "description", "project_id", "user_id", "status", "source", "destination",
	"interval_seconds", "rpo_seconds", "retention", "bandwidth_limit", "members", "last_sync_at", "lag_seconds",
	"rpo_breached", "last_cycle_id", "last_error", "points_count", "next_run_at", "cycles", "created_at", "updated_at",
}

var (
	groupListColumns     = []string{"id", "name", "status", "members", "source", "destination", "lag_seconds", "points_count", "last_sync_at"}
	groupListLongColumns = []string{"id", "name", "status", "members", "source", "destination", "interval_seconds", "rpo_seconds",
		"lag_seconds", "rpo_breached", "points_count", "last_sync_at", "next_run_at", "project_id", "created_at"}
	groupPointFields      = []string{"name", "created_at", "members"}
	groupDrillListColumns = []string{"id", "replication_id", "name", "point", "status", "volume_id", "requested_at", "rto_seconds"}
)

func (a *app) groupCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replication-group",
		Short: "Replication groups: volumes of a project replicated together, crash-consistent, with an RPO, points, DR drills, failover and failback",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(a.groupCreate(), a.groupList(), a.groupShow(), a.groupSet(), a.groupDelete(),
		a.groupAction("pause", "Pause replication groups: no new group cycle starts (a running one ends normally)",
			func(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
				return replicationgroups.Pause(ctx, sc, id).ExtractErr()
			}),
		a.groupAction("resume", "Resume paused replication groups",
			func(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
				return replicationgroups.Resume(ctx, sc, id).ExtractErr()
			}),
		a.groupAction("sync", "Start a group cycle of replication groups now",
			func(ctx context.Context, sc *gophercloud.ServiceClient, id string) error {
				return replicationgroups.Sync(ctx, sc, id).ExtractErr()
			}),
		a.groupPoints(), a.groupDrill(), a.groupDrills(), a.groupFailover(), a.groupFailback())
	return cmd
}

func (a *app) groupCreate() *cobra.Command {
	var (
		out   outputOpts
		opts  replicationgroups.CreateOpts
		sched scheduleFlags
		cmd   *cobra.Command
	)
	cmd = &cobra.Command{
		Use:   "create --destination-region REGION (--volume ID [--volume ID ...] | --cinder-group ID) --interval DURATION --rpo DURATION [flags]",
		Short: "Create a replication group",
		Long: "Protect several Cinder volumes of the project together in another region: every interval one\n" +
			"crash-consistent snapshot of all of them is taken at one instant and each volume's changes are copied\n" +
			"into its replica; a group point exists only when every volume's copy completed. Give the volumes with\n" +
			"--volume (repeated, up to 16) or a Cinder group with --cinder-group. The source region defaults to the\n" +
			"cloud's region (OS_REGION_NAME). Durations are seconds or Go durations (300, 5m, 1h30m); the bandwidth\n" +
			"limit is bytes/s with an optional K, M or G (binary multiples).",
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
			for _, v := range opts.Source.VolumeIDs {
				if v == "" {
					return errors.New("--volume needs a volume id")
				}
			}
			sch, err := sched.parse(cmd)
			if err != nil {
				return err
			}
			opts.IntervalSeconds, opts.RPOSeconds, opts.BandwidthLimit, opts.Retention = sch.IntervalSeconds, sch.RPOSeconds, sch.BandwidthLimit, sch.Retention
			r := replicationgroups.Create(ctx, sc, opts)
			if r.Err != nil {
				return apiError(r.Err)
			}
			_, raw, err := extractGroup(r.Result)
			if err != nil {
				return err
			}
			return printOne(a.stdout, out, groupObject(raw, out, false), groupFields)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&opts.Source.Region, "source-region", "", "region of the volumes (default: the cloud's region)")
	f.StringArrayVar(&opts.Source.VolumeIDs, "volume", nil, "Cinder volume id (repeat for each volume of the group)")
	f.StringVar(&opts.Source.CinderGroupID, "cinder-group", "", "Cinder group id: its volumes")
	f.StringVar(&opts.Destination.Region, "destination-region", "", "region of the replicas (required)")
	f.StringVar(&opts.Destination.Pool, "destination-pool", "", "RBD pool of the replicas (default: the destination's Cinder volume pool)")
	sched.add(cmd)
	f.StringVar(&opts.Name, "name", "", "name of the group")
	f.StringVar(&opts.Description, "description", "", "description of the group")
	cmd.MarkFlagsMutuallyExclusive("volume", "cinder-group")
	cmd.MarkFlagsOneRequired("volume", "cinder-group")
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) groupList() *cobra.Command {
	var (
		out         outputOpts
		opts        replicationgroups.ListOpts
		long        bool
		limit       int
		allProjects bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List replication groups, their members and lag against their RPO",
		Args:  cobra.NoArgs,
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, _ []string) error {
			if limit < 0 {
				return errors.New("--limit must be positive")
			}
			opts.Limit, opts.AllProjects = limit, allProjects
			var objs []object
			err := replicationgroups.List(sc, opts).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
				items, err := rawList(page.GetBody(), "replication_groups")
				if err != nil {
					return false, err
				}
				for _, it := range items {
					objs = append(objs, groupObject(it, out, true))
				}
				return limit == 0 || len(objs) < limit, nil
			})
			if err != nil {
				return apiError(err)
			}
			if limit > 0 && len(objs) > limit {
				objs = objs[:limit]
			}
			cols := groupListColumns
			if long {
				cols = groupListLongColumns
			}
			return printList(a.stdout, out, objs, cols, groupFields)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&opts.Marker, "marker", "", "list after this group id")
	f.IntVar(&limit, "limit", 0, "at most this many groups (default: all, page by page)")
	f.BoolVar(&allProjects, "all-projects", false, "groups of every project (admins)")
	f.BoolVar(&long, "long", false, "more columns")
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) groupShow() *cobra.Command {
	var out outputOpts
	cmd := &cobra.Command{
		Use:   "show GROUP",
		Short: "Show a replication group (by id or name): its members, its lag against its RPO",
		Args:  cobra.ExactArgs(1),
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			_, raw, err := findGroup(ctx, sc, args[0])
			if err != nil {
				return err
			}
			return printOne(a.stdout, out, groupObject(raw, out, false), groupFields)
		}),
	}
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) groupSet() *cobra.Command {
	var (
		out outputOpts
		set setFlags
		cmd *cobra.Command
	)
	cmd = &cobra.Command{
		Use:   "set GROUP [--interval DURATION] [--rpo DURATION] [--keep-last N] [--keep-hourly N] [--keep-daily N] [--bandwidth-limit RATE] [--name NAME] [--description TEXT]",
		Short: "Change a replication group's schedule, RPO, retention, bandwidth limit, name or description",
		Long: "Change a replication group. Only the options given are sent and change; a retention option leaves the\n" +
			"other two as they are. --bandwidth-limit 0 returns to the agents' default.",
		Args: cobra.ExactArgs(1),
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			opts, err := set.opts(cmd)
			if err != nil {
				return err
			}
			g, _, err := findGroup(ctx, sc, args[0])
			if err != nil {
				return err
			}
			res := replicationgroups.Update(ctx, sc, g.ID, replicationgroups.UpdateOpts(opts))
			if res.Err != nil {
				return apiError(res.Err)
			}
			_, raw, err := extractGroup(res.Result)
			if err != nil {
				return err
			}
			return printOne(a.stdout, out, groupObject(raw, out, false), groupFields)
		}),
	}
	set.add(cmd)
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) groupDelete() *cobra.Command {
	var keepReplica bool
	cmd := &cobra.Command{
		Use:   "delete GROUP [GROUP ...]",
		Short: "Delete replication groups and their members: Ferry's snapshots go on both sides, and the replicas unless --keep-replica",
		Args:  cobra.MinimumNArgs(1),
		RunE: a.withClient(nil, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			return a.eachOf("replication group", args, "delete", func(ref string) error {
				g, _, err := findGroup(ctx, sc, ref)
				if err != nil {
					return err
				}
				return apiError(replicationgroups.Delete(ctx, sc, g.ID, replicationgroups.DeleteOpts{KeepReplica: keepReplica}).ExtractErr())
			})
		}),
	}
	cmd.Flags().BoolVar(&keepReplica, "keep-replica", false, "keep the members' replica images at the destination")
	return cmd
}

// groupAction runs an action on each replication group named.
func (a *app) groupAction(name, short string, do func(context.Context, *gophercloud.ServiceClient, string) error) *cobra.Command {
	return &cobra.Command{
		Use:   name + " GROUP [GROUP ...]",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: a.withClient(nil, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			return a.eachOf("replication group", args, name, func(ref string) error {
				g, _, err := findGroup(ctx, sc, ref)
				if err != nil {
					return err
				}
				return apiError(do(ctx, sc, g.ID))
			})
		}),
	}
}

// groupView is a command that shows something of one replication group
// (its first argument, by id or name; nargs arguments in all) with the
// output options: show gets the group's id and the arguments.
func (a *app) groupView(use, short string, nargs int,
	show func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, args []string) error) *cobra.Command {
	var out outputOpts
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(nargs),
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, args []string) error {
			g, _, err := findGroup(ctx, sc, args[0])
			if err != nil {
				return err
			}
			return show(ctx, sc, g.ID, out, args)
		}),
	}
	addOutputFlags(cmd, &out)
	return cmd
}

func (a *app) groupPoints() *cobra.Command {
	return a.groupView("points GROUP", "List a replication group's points in time, newest first, with each member's snapshot", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			r := replicationgroups.ListPoints(ctx, sc, id)
			if r.Err != nil {
				return apiError(r.Err)
			}
			items, err := rawList(r.Body, "points")
			if err != nil {
				return err
			}
			objs := make([]object, len(items))
			for i, it := range items {
				if out.format == formatTable || out.format == formatValue {
					it = withCell(it, "members", joinCells(out, pointMemberLines(it["members"])))
				}
				objs[i] = newObject(it, groupPointFields)
			}
			return printList(a.stdout, out, objs, groupPointFields, groupPointFields)
		})
}

func (a *app) groupDrills() *cobra.Command {
	return a.groupView("drills GROUP", "List the member drills of a replication group's DR drills: their volume and time to available (RTO)", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			return a.printSub(out, replicationgroups.ListDrills(ctx, sc, id).Result, "drills", groupDrillListColumns, drillFields)
		})
}

func (a *app) groupDrill() *cobra.Command {
	var (
		name string
		wait failoverWait
	)
	cmd := a.groupView("drill GROUP POINT [--name NAME] [--wait]", "Start a DR drill of a group: clone a group point of every member into new volumes in the destination region", 2,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, args []string) error {
			res := replicationgroups.Drill(ctx, sc, id, replicationgroups.DrillOpts{Point: args[1], Name: name})
			if res.Err != nil {
				return apiError(res.Err)
			}
			items, err := rawList(res.Body, "drills")
			if err != nil {
				return err
			}
			if wait.wait {
				ids := make([]string, 0, len(items))
				for _, it := range items {
					s, _ := it["id"].(string)
					ids = append(ids, s)
				}
				return a.waitGroupDrills(ctx, sc, id, ids, out, wait.every)
			}
			return a.printDrills(out, items)
		})
	cmd.Long = "Start a DR drill (a test failover) of a replication group without pausing it: the group point (a name from\n" +
		"`ferry replication-group points`, or latest) of every member is cloned into a new Cinder volume of the group's\n" +
		"project in the destination region; the volumes hold the members at one instant. It prints the member drills;\n" +
		"`ferry replication-group drills` shows their volumes and time to available."
	cmd.Flags().StringVar(&name, "name", "", "name of the drills (and of their volumes)")
	cmd.Flags().BoolVar(&wait.wait, "wait", false, "wait until every member drill is available or in error, showing their status; exit non-zero if one fails")
	cmd.Flags().DurationVar(&wait.every, "poll-interval", 2*time.Second, "how often --wait asks for the drills")
	return cmd
}

func (a *app) printDrills(out outputOpts, items []map[string]any) error {
	objs := make([]object, len(items))
	for i := range items {
		objs[i] = newObject(items[i], drillFields)
	}
	return printList(a.stdout, out, objs, groupDrillListColumns, drillFields)
}

// waitGroupDrills polls a group's drills until those of ids are all
// available or in error, telling each change on stderr, then prints
// them. A drill in error is an error.
func (a *app) waitGroupDrills(ctx context.Context, sc *gophercloud.ServiceClient, gid string, ids []string, out outputOpts, every time.Duration) error {
	last := map[string]string{}
	var final []map[string]any
	err := poll(ctx, every, func() (bool, error) {
		r := replicationgroups.ListDrills(ctx, sc, gid)
		if r.Err != nil {
			return false, apiError(r.Err)
		}
		items, err := rawList(r.Body, "drills")
		if err != nil {
			return false, err
		}
		var mine []map[string]any
		ended := 0
		for _, it := range items {
			id, _ := it["id"].(string)
			if !slices.Contains(ids, id) {
				continue
			}
			mine = append(mine, it)
			st, _ := it["status"].(string)
			if line := drillProgress(it); line != last[id] {
				last[id] = line
				fmt.Fprintf(a.stderr, "%s drill %s of replication %s: %s\n", time.Now().UTC().Format("15:04:05"), id, it["replication_id"], line)
			}
			if st == "available" || st == "error" {
				ended++
			}
		}
		if ended < len(ids) {
			return false, nil
		}
		final = mine
		return true, a.printDrills(out, mine)
	})
	switch {
	case errors.Is(err, errStopped):
		return fmt.Errorf("stopped waiting; the drills go on (ferry replication-group drills %s)", gid)
	case err != nil:
		return err
	}
	var failed []string
	for _, d := range final {
		if d["status"] == "error" {
			failed = append(failed, fmt.Sprintf("drill %s of replication %s: %s", d["id"], d["replication_id"], cell(d["error"])))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d member drills ended in error: %s", len(failed), len(final), strings.Join(failed, "; "))
	}
	return nil
}

// drillProgress is one line of a drill being waited for: "creating",
// "available (volume V, RTO 21.5s)", "error: ...".
func drillProgress(d map[string]any) string {
	s, _ := d["status"].(string)
	switch {
	case s == "available":
		s += " (volume " + cell(d["volume_id"])
		if rto, ok := number(d["rto_seconds"]); ok {
			s += ", RTO " + time.Duration(rto*float64(time.Second)).Round(time.Millisecond).String()
		}
		s += ")"
	case d["error"] != nil && d["error"] != "":
		s += ": " + cell(d["error"])
	}
	return s
}

func (a *app) groupFailover() *cobra.Command {
	var (
		opts replicationgroups.FailoverOpts
		wait failoverWait
	)
	cmd := a.groupView("failover GROUP [--point NAME|latest --force] [--force] [--wait]",
		"Fail a replication group over: its members' replicas become the primary volumes in the destination region", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			return a.startGroupFailover(ctx, sc, out, wait, "failover", replicationgroups.Failover(ctx, sc, id, opts))
		})
	cmd.Long = "Fail a replication group over, all its members together. Planned (no --point): the source volumes are\n" +
		"quiesced and a final group cycle copies their last writes; the volumes must be detached unless --force.\n" +
		"Unplanned (--point NAME or latest, with --force): when the source region is down, the group point (from\n" +
		"`ferry replication-group points`) becomes the new primary without contacting the source. The group is\n" +
		"failing_over, then failed_over until `ferry replication-group failback`; --wait follows it until then."
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if opts.Point != "" && !opts.Force {
			return errors.New("--point makes an unplanned failover, which does not contact the source region: it needs --force")
		}
		return nil
	}
	f := cmd.Flags()
	f.StringVar(&opts.Point, "point", "", "unplanned failover to this group point (a name, or latest); needs --force")
	f.BoolVar(&opts.Force, "force", false, "fail over attached source volumes; needed with --point")
	wait.addGroup(cmd, "failing_over", "failed_over")
	return cmd
}

func (a *app) groupFailback() *cobra.Command {
	var (
		opts replicationgroups.FailbackOpts
		wait failoverWait
	)
	cmd := a.groupView("failback GROUP [--force] [--wait]", "Fail a failed-over replication group back to its original volumes", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			return a.startGroupFailover(ctx, sc, out, wait, "failback", replicationgroups.Failback(ctx, sc, id, opts))
		})
	cmd.Long = "Fail back a failed-over replication group, all its members together: the original volumes become the\n" +
		"primaries again. The failed-over volumes must be detached unless --force. The group is failing_back, then\n" +
		"active; --wait follows it until then."
	cmd.Flags().BoolVar(&opts.Force, "force", false, "fail back while the failed-over volumes are attached")
	wait.addGroup(cmd, "failing_back", "active")
	return cmd
}

// addGroup adds --wait and --poll-interval to a group's failover (from
// its running status to its done one) or failback.
func (w *failoverWait) addGroup(cmd *cobra.Command, running, done string) {
	f := cmd.Flags()
	f.BoolVar(&w.wait, "wait", false, "wait until the group leaves "+running+", showing its and its members' status, and print it; exit non-zero unless it is "+done)
	f.DurationVar(&w.every, "poll-interval", 2*time.Second, "how often --wait asks for the group")
}

// startGroupFailover prints the group a failover or failback (kind) just
// left, or with --wait follows it until it ends.
func (a *app) startGroupFailover(ctx context.Context, sc *gophercloud.ServiceClient, out outputOpts, w failoverWait, kind string, res replicationgroups.ActionResult) error {
	if res.Err != nil {
		return apiError(res.Err)
	}
	g, raw, err := extractGroup(res.Result)
	if err != nil {
		return err
	}
	if w.wait {
		return a.waitGroupFailover(ctx, sc, g.ID, kind, out, w.every)
	}
	return printOne(a.stdout, out, groupObject(raw, out, false), groupFields)
}

// waitGroupFailover polls a group until its failover or failback (kind)
// ends (the group leaves failing_over or failing_back), telling each
// change of its and its members' status on stderr, then prints it. A
// group that did not end failed_over (a failover) or active (a failback)
// is an error.
func (a *app) waitGroupFailover(ctx context.Context, sc *gophercloud.ServiceClient, id, kind string, out outputOpts, every time.Duration) error {
	want := map[string]string{"failover": "failed_over", "failback": "active"}[kind]
	var (
		g    *replicationgroups.ReplicationGroup
		last string
	)
	err := poll(ctx, every, func() (bool, error) {
		cur, raw, err := extractGroup(replicationgroups.Get(ctx, sc, id).Result)
		if err != nil {
			return false, err
		}
		if line := groupProgress(cur); line != last {
			last = line
			fmt.Fprintf(a.stderr, "%s replication group %s: %s\n", time.Now().UTC().Format("15:04:05"), cur.ID, line)
		}
		if cur.FailoverRunning() {
			return false, nil
		}
		g = cur
		return true, printOne(a.stdout, out, groupObject(raw, out, false), groupFields)
	})
	switch {
	case errors.Is(err, errStopped):
		return fmt.Errorf("stopped waiting; the %s goes on (ferry replication-group show %s)", kind, id)
	case err != nil:
		return err
	case g.Status != want:
		msg := fmt.Sprintf("the %s of replication group %s ended with the group %s", kind, id, g.Status)
		if g.LastError != "" {
			msg += ": " + g.LastError
		}
		return errors.New(msg)
	}
	fmt.Fprintf(a.stderr, "%s of replication group %s done: %s\n", kind, id, g.Status)
	return nil
}

// groupProgress is one line of a group being waited for: its status and
// how many members are in each status ("failing_over (members: 1
// failed_over, 2 failing_over)").
func groupProgress(g *replicationgroups.ReplicationGroup) string {
	counts := map[string]int{}
	for _, m := range g.Members {
		counts[m.Status]++
	}
	statuses := make([]string, 0, len(counts))
	for st := range counts {
		statuses = append(statuses, st)
	}
	slices.Sort(statuses)
	parts := make([]string, len(statuses))
	for i, st := range statuses {
		parts[i] = fmt.Sprintf("%d %s", counts[st], st)
	}
	s := g.Status
	if len(parts) > 0 {
		s += " (members: " + strings.Join(parts, ", ") + ")"
	}
	if g.LastError != "" && !g.FailoverRunning() {
		s += ": " + g.LastError
	}
	return s
}

// findGroup gets a replication group by id, or else by name when exactly
// one group has that name (the openstack CLI's find_resource).
func findGroup(ctx context.Context, sc *gophercloud.ServiceClient, ref string) (*replicationgroups.ReplicationGroup, map[string]any, error) {
	return findResource[replicationgroups.ReplicationGroup](ctx, ref, "replication_group",
		func(ctx context.Context, id string) gophercloud.Result {
			return replicationgroups.Get(ctx, sc, id).Result
		},
		replicationgroups.List(sc, replicationgroups.ListOpts{}))
}

// extractGroup returns a result's replication group both typed and as
// the API's raw object.
func extractGroup(r gophercloud.Result) (*replicationgroups.ReplicationGroup, map[string]any, error) {
	if r.Err != nil {
		return nil, nil, apiError(r.Err)
	}
	return extractResource[replicationgroups.ReplicationGroup](r, "replication_group")
}

// groupObject orders a group's fields; in a table or as values its
// lag_seconds reads against its RPO (as a replication's), and its
// members are one line each (show) or their count (list). JSON and YAML
// keep the API's object.
func groupObject(raw map[string]any, out outputOpts, list bool) object {
	if out.format == formatTable || out.format == formatValue {
		if _, ok := raw["lag_seconds"]; ok {
			raw = withCell(raw, "lag_seconds", lagCell(raw["lag_seconds"], raw["rpo_seconds"], raw["rpo_breached"]))
		}
		if ms, ok := raw["members"].([]any); ok {
			if list {
				raw = withCell(raw, "members", float64(len(ms)))
			} else {
				raw = withCell(raw, "members", joinCells(out, memberLines(ms)))
			}
		}
	}
	return newObject(raw, groupFields)
}

// withCell is a copy of raw with key set to v (raw is the API's object,
// which -f json prints unchanged).
func withCell(raw map[string]any, key string, v any) map[string]any {
	c := make(map[string]any, len(raw))
	for k, x := range raw {
		c[k] = x
	}
	c[key] = v
	return c
}

// joinCells puts lines in one cell: one per line in a table, separated
// by ", " as a value (one line per object).
func joinCells(out outputOpts, lines []string) string {
	if out.format == formatValue {
		return strings.Join(lines, ", ")
	}
	return strings.Join(lines, "\n")
}

// memberLines are a group's members, one line each: "volume V: active,
// volumes/volume-V -> volumes/ferry-replica-R (replication R)".
func memberLines(members []any) []string {
	lines := make([]string, 0, len(members))
	for _, it := range members {
		m, _ := it.(map[string]any)
		src, _ := m["source"].(map[string]any)
		dst, _ := m["destination"].(map[string]any)
		lines = append(lines, fmt.Sprintf("volume %s: %s, %s -> %s (replication %s)",
			cell(m["volume_id"]), cell(m["status"]), imageCell(src), imageCell(dst), cell(m["replication_id"])))
	}
	return lines
}

// pointMemberLines are a group point's members, one line each: "volume
// V: ferry-T".
func pointMemberLines(v any) []string {
	members, _ := v.([]any)
	lines := make([]string, 0, len(members))
	for _, it := range members {
		m, _ := it.(map[string]any)
		lines = append(lines, fmt.Sprintf("volume %s: %s", cell(m["volume_id"]), cell(m["point"])))
	}
	return lines
}

// imageCell is pool/image, or "-" when the API sends none.
func imageCell(m map[string]any) string {
	pool, _ := m["pool"].(string)
	image, _ := m["image"].(string)
	if pool == "" && image == "" {
		return "-"
	}
	return pool + "/" + image
}
