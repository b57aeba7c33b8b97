/*
Package replicationgroups manages Ferry replication groups (consistency
groups): a set of Cinder volumes of one project replicated from one region
to another as a unit, every group cycle taking one crash-consistent
snapshot of all members at one instant; a group point exists only when
every member's cycle of that group cycle completed
(POST/GET/PUT/DELETE /v1/replication-groups, their actions, points and
drills). Each member is an ordinary replication (the replications
package shows it) that the group schedules.

Replication groups are since microversion 1.2 (Microversion): the
functions need sc.Microversion >= "1.2" and, when it is empty or older,
ask for 1.2 on their own requests without changing sc.

Example: protect three volumes together every 5 minutes with a 15-minute
RPO

	g, err := replicationgroups.Create(ctx, sc, replicationgroups.CreateOpts{
		Name:            "db",
		Source:          replicationgroups.SourceOpts{Region: "RegionOne", VolumeIDs: []string{dataID, walID, configID}},
		Destination:     replicationgroups.DestinationOpts{Region: "RegionTwo"},
		IntervalSeconds: 300,
		RPOSeconds:      900,
		Retention:       &replicationgroups.RetentionOpts{KeepLast: gophercloud.IntToPointer(6)},
	}).Extract()
	for _, m := range g.Members {
		fmt.Println(m.VolumeID, m.ReplicationID, m.Status)
	}

or the volumes of a Cinder group:

	Source: replicationgroups.SourceOpts{Region: "RegionOne", CinderGroupID: cinderGroupID},

Example: list every page of the project's groups, and tell the breached
ones

	pages, err := replicationgroups.List(sc, replicationgroups.ListOpts{Limit: 100}).AllPages(ctx)
	if err != nil {
		panic(err)
	}
	all, err := replicationgroups.ExtractReplicationGroups(pages)
	for _, g := range all {
		if lag, ok := g.Lag(); g.RPOBreached {
			fmt.Printf("%s: lag %s (known %v) > RPO %ds\n", g.Name, lag, ok, g.RPOSeconds)
		}
	}

Example: change the schedule; only what is set is sent

	g, err = replicationgroups.Update(ctx, sc, id, replicationgroups.UpdateOpts{
		IntervalSeconds: gophercloud.IntToPointer(60),
	}).Extract()

Example: a group cycle now, pause, resume (each answers the group)

	g, err = replicationgroups.Sync(ctx, sc, id).Extract()
	err = replicationgroups.Pause(ctx, sc, id).ExtractErr()
	err = replicationgroups.Resume(ctx, sc, id).ExtractErr()

Example: a DR drill of the newest group point (a volume per member),
then follow the drills

	drills, err := replicationgroups.Drill(ctx, sc, id, replicationgroups.DrillOpts{Point: "latest", Name: "drill-1"}).Extract()
	all, err := replicationgroups.ListDrills(ctx, sc, id).Extract() // each available: VolumeID, RTOSeconds

Example: a planned failover of the group, followed until done, then the
failback

	g, err := replicationgroups.Failover(ctx, sc, id, replicationgroups.FailoverOpts{}).Extract()
	for g.FailoverRunning() {
		time.Sleep(5 * time.Second)
		g, err = replicationgroups.Get(ctx, sc, id).Extract()
	}
	// g.Status is failed_over when it succeeded
	g, err = replicationgroups.Failback(ctx, sc, id, replicationgroups.FailbackOpts{}).Extract()

An unplanned failover (the source region down) names a group point, or
"latest", and needs Force:

	g, err = replicationgroups.Failover(ctx, sc, id, replicationgroups.FailoverOpts{Point: "latest", Force: true}).Extract()

Example: delete the group and its members, keeping the replica images

	err = replicationgroups.Delete(ctx, sc, id, replicationgroups.DeleteOpts{KeepReplica: true}).ExtractErr()

Errors are gophercloud's: gophercloud.ResponseCodeIs(err, http.StatusNotFound)
tells a missing group (or an unknown point),
http.StatusConflict an action the group's status does not allow, or a
volume attached to a running instance (refused: the snapshot's fence
would fail its writes for a moment).
*/
package replicationgroups
