package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/services/client/replications"
)

// failoverFields is a failover's fields in the API's order.
var (
	failoverFields = []string{"id", "replication_id", "kind", "planned", "force", "point", "status", "step", "from", "to",
		"final_transfer_id", "preserved_image", "preserved_bytes", "requested_at", "available_at", "finished_at",
		"rto_seconds", "error", "user_id"}
	failoverListColumns = []string{"id", "kind", "planned", "point", "status", "step", "requested_at", "rto_seconds"}
)

// failoverWait are the --wait and --poll-interval flags of failover and
// failback.
type failoverWait struct {
	wait  bool
	every time.Duration
}

func (w *failoverWait) add(cmd *cobra.Command, what string) {
	f := cmd.Flags()
	f.BoolVar(&w.wait, "wait", false, "wait until the "+what+" is done, showing its steps, and print its RTO; exit non-zero if it fails")
	f.DurationVar(&w.every, "poll-interval", 2*time.Second, "how often --wait asks for the "+what)
}

func (a *app) replicationFailover() *cobra.Command {
	var (
		opts replications.FailoverOpts
		wait failoverWait
	)
	cmd := a.replicationView("failover REPLICATION [--point NAME|latest --force] [--force] [--wait]",
		"Fail a replication over: its replica becomes the primary volume in the destination region", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			return a.startFailover(ctx, sc, out, wait, replications.Failover(ctx, sc, id, opts))
		})
	cmd.Long = "Fail a replication over. Planned (no --point): the source volume is made read-only, a final cycle copies\n" +
		"its last writes, and the replica is registered as a Cinder volume in the destination region with the\n" +
		"source's name, metadata and type; nothing is lost. The source volume must be detached unless --force.\n" +
		"Unplanned (--point NAME or latest, with --force): when the source region is down, the point (from\n" +
		"`ferry replication points`) becomes the new primary without contacting the source; writes after it\n" +
		"are preserved once the source answers. The replication then replicates the other way (failed_over)\n" +
		"until `ferry replication failback`. `ferry replication failovers` lists them with their RTO."
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if opts.Point != "" && !opts.Force {
			return errors.New("--point makes an unplanned failover, which does not contact the source region: it needs --force")
		}
		return nil
	}
	f := cmd.Flags()
	f.StringVar(&opts.Point, "point", "", "unplanned failover to this point (a name, or latest); needs --force")
	f.BoolVar(&opts.Force, "force", false, "fail over an attached source volume (its later writes are preserved, not replicated); needed with --point")
	wait.add(cmd, "failover")
	return cmd
}

func (a *app) replicationFailback() *cobra.Command {
	var (
		opts replications.FailbackOpts
		wait failoverWait
	)
	cmd := a.replicationView("failback REPLICATION [--force] [--wait]", "Fail a failed-over replication back to its original volume", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			return a.startFailover(ctx, sc, out, wait, replications.Failback(ctx, sc, id, opts))
		})
	cmd.Long = "Fail back a failed-over replication: the failed-over volume is made read-only, a final cycle copies its\n" +
		"last writes to the original volume, which becomes the primary again (read-write), and the failed-over\n" +
		"volume is unmanaged from Cinder. The failed-over volume must be detached unless --force."
	cmd.Flags().BoolVar(&opts.Force, "force", false, "fail back while the failed-over volume is attached (its later writes are preserved, not replicated)")
	wait.add(cmd, "failback")
	return cmd
}

// startFailover prints the failover or failback res just started, or
// with --wait follows it to its end.
func (a *app) startFailover(ctx context.Context, sc *gophercloud.ServiceClient, out outputOpts, w failoverWait, res replications.FailoverResult) error {
	f, raw, err := extractFailover(res)
	if err != nil {
		return err
	}
	if w.wait {
		return a.waitFailover(ctx, sc, f, out, w.every)
	}
	return printOne(a.stdout, out, newObject(raw, failoverFields), failoverFields)
}

// waitFailover polls a failover until it ends, telling each step on
// stderr, then prints it and its RTO. A failover that ends in error is an
// error.
func (a *app) waitFailover(ctx context.Context, sc *gophercloud.ServiceClient, f *replications.FailoverInfo, out outputOpts, every time.Duration) error {
	rid, id := f.ReplicationID, f.ID
	last := ""
	err := poll(ctx, every, func() (bool, error) {
		cur, raw, err := extractFailover(replications.GetFailover(ctx, sc, rid, id))
		if err != nil {
			return false, err
		}
		if line := cur.Status + " " + cur.Step; line != last {
			last = line
			fmt.Fprintf(a.stderr, "%s %s %s: %s\n", time.Now().UTC().Format("15:04:05"), cur.Kind, cur.ID, failoverProgress(cur))
		}
		if !cur.Ended() {
			return false, nil
		}
		if err := printOne(a.stdout, out, newObject(raw, failoverFields), failoverFields); err != nil {
			return false, err
		}
		f = cur
		return true, nil
	})
	switch {
	case errors.Is(err, errStopped):
		return fmt.Errorf("stopped waiting; the %s goes on (ferry replication failover-show %s %s)", f.Kind, rid, id)
	case err != nil:
		return err
	case f.Status != "done":
		return fmt.Errorf("%s %s ended in %s at step %s: %s", f.Kind, id, f.Status, f.Step, f.Error)
	}
	if rto, ok := f.RTO(); ok {
		fmt.Fprintf(a.stderr, "%s %s done: RTO %s (volume %s in %s)\n", f.Kind, id, rto.Round(time.Millisecond), f.To.VolumeID, f.To.Region)
	}
	return nil
}

// failoverProgress is one line of a failover being waited for: "running
// (step final_cycle)", "done (RTO 42s)", "error (step quiesce): ...".
func failoverProgress(f *replications.FailoverInfo) string {
	s := f.Status
	switch rto, ok := f.RTO(); {
	case f.Status == "done" && ok:
		s += " (RTO " + rto.Round(time.Millisecond).String() + ")"
	case f.Step != "":
		s += " (step " + f.Step + ")"
	}
	if f.Error != "" {
		s += ": " + f.Error
	}
	return s
}

func (a *app) replicationFailovers() *cobra.Command {
	return a.replicationView("failovers REPLICATION", "List a replication's failovers and failbacks, newest first, with their RTO", 1,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, _ []string) error {
			return a.printSub(out, replications.ListFailovers(ctx, sc, id).Result, "failovers", failoverListColumns, failoverFields)
		})
}

func (a *app) replicationFailoverShow() *cobra.Command {
	return a.replicationView("failover-show REPLICATION FAILOVER", "Show a failover or failback of a replication: its step, sides, preserved image and RTO", 2,
		func(ctx context.Context, sc *gophercloud.ServiceClient, id string, out outputOpts, args []string) error {
			_, raw, err := extractFailover(replications.GetFailover(ctx, sc, id, args[1]))
			if err != nil {
				return err
			}
			return printOne(a.stdout, out, newObject(raw, failoverFields), failoverFields)
		})
}

// extractFailover returns a result's failover both typed and as the API's
// raw object.
func extractFailover(r replications.FailoverResult) (*replications.FailoverInfo, map[string]any, error) {
	if r.Err != nil {
		return nil, nil, apiError(r.Err)
	}
	return extractResource[replications.FailoverInfo](r.Result, "failover")
}
