// Package replicate is ferry-api's side of continuous replication: the
// schedule (when a replication's next cycle runs), the retention of its
// points, the scheduler that starts the cycles (each an ordinary transfer
// with replication_id set), the drill runner, the failover runner, the
// metrics collector and the notifications.
//
// # Schedule
//
// A replication runs a cycle every interval. Its next_run_at advances on the
// grid due, due+interval, …; when the scheduler finds it more than one
// interval late (ferry-api was down, or the replication was paused), it runs
// one cycle now and the next one interval later: missed cycles are never
// made up in a burst. A per-replication jitter (up to 10 % of the interval,
// the same for a replication every time) spreads replications that would
// otherwise start together (created in bulk, or catching up together).
//
// # Retention
//
// Retain chooses the points the destination keeps: keep_last newest ones,
// the newest point of each of the keep_hourly most recent hours that have
// one, likewise keep_daily days (UTC), always the newest point, and the
// pinned ones (a drill's clone still depends on them). The agent removes
// the others, and never one that has clone children.
//
// # Loops
//
// Scheduler, DrillRunner, FailoverRunner and GroupRunner are Run(ctx)
// error loops under database leases, so that of several ferry-api
// processes exactly one schedules, one runs drills, one runs failovers and
// one runs consistency groups. They share the loop
// (a pass at every interval or Kick) and the one-goroutine-per-item
// workers of loop.go.
//
// # Failover
//
// FailoverRunner carries a failover or failback (db.Failover) through its
// steps (Steps), recording each when done: a killed ferry-api resumes at
// the next step. Before the promote a failure undoes it; after it, a step
// is retried with backoff until it succeeds.
//
// # Groups
//
// GroupRunner schedules consistency groups (db.ReplicationGroup): each
// group cycle (db.GroupCycle) chooses its members' transfer ids, has the
// source region's agents snapshot every member at one instant
// (replication.group_snapshot), then starts the members' ordinary cycle
// transfers; the cycle is a group point once all completed. A group
// failover or failback (db.GroupFailover) quiesces every member, runs one
// final group cycle, then starts one failover of each member at its part
// of that point (whose steps skip their own quiesce and final cycle:
// stepsOf) and flips the group once every member has.
package replicate
