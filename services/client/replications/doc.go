/*
Package replications manages Ferry replications: the continuous
protection of a Cinder volume (or an admin's RBD pool and image) in
another region, as a Ferry-owned replica with retained points in time
(POST/GET/PUT/DELETE /v1/replications, their actions, points, events and
drills). Each cycle is an ordinary transfer, listed by the transfers
package with ListOpts.ReplicationID.

Replications are since microversion 1.1 (Microversion): the functions
need sc.Microversion >= "1.1" and, when it is empty or older, ask for 1.1
on their own requests without changing sc.

Example: protect a volume every 5 minutes with a 15-minute RPO

	r, err := replications.Create(ctx, sc, replications.CreateOpts{
		Name:            "db-disk",
		Source:          replications.SourceOpts{Region: "RegionOne", VolumeID: volumeID},
		Destination:     replications.DestinationOpts{Region: "RegionTwo"},
		IntervalSeconds: 300,
		RPOSeconds:      900,
		Retention: &replications.RetentionOpts{
			KeepLast:   gophercloud.IntToPointer(6),
			KeepHourly: gophercloud.IntToPointer(24),
			KeepDaily:  gophercloud.IntToPointer(7),
		},
		BandwidthLimit:  100 << 20, // bytes/s
	}).Extract()

Example: list every page of the project's replications, and tell the
breached ones

	pages, err := replications.List(sc, replications.ListOpts{Limit: 100}).AllPages(ctx)
	if err != nil {
		panic(err)
	}
	all, err := replications.ExtractReplications(pages)
	for _, r := range all {
		if lag, ok := r.Lag(); r.RPOBreached {
			fmt.Printf("%s: lag %s (known %v) > RPO %ds\n", r.Name, lag, ok, r.RPOSeconds)
		}
	}

Example: change the schedule and the retention; only what is set is sent
(here keep_hourly and keep_daily stay as they are)

	r, err = replications.Update(ctx, sc, id, replications.UpdateOpts{
		IntervalSeconds: gophercloud.IntToPointer(60),
		Retention:       &replications.RetentionOpts{KeepLast: gophercloud.IntToPointer(10)},
	}).Extract()

Example: a cycle now, pause, resume

	err = replications.Sync(ctx, sc, id).ExtractErr()
	err = replications.Pause(ctx, sc, id).ExtractErr()
	err = replications.Resume(ctx, sc, id).ExtractErr()

Example: a DR drill of the newest point, then follow it

	points, err := replications.ListPoints(ctx, sc, id).Extract()
	d, err := replications.Drill(ctx, sc, id, replications.DrillOpts{Point: points[0].Name, Name: "drill-1"}).Extract()
	drills, err := replications.ListDrills(ctx, sc, id).Extract() // d.ID available: VolumeID, RTOSeconds

Example: a planned failover (the source volume quiesced, a final cycle,
the replica registered as a Cinder volume in the destination region),
followed until done, then the failback

	f, err := replications.Failover(ctx, sc, id, replications.FailoverOpts{}).Extract()
	for !f.Ended() {
		time.Sleep(5 * time.Second)
		f, err = replications.GetFailover(ctx, sc, id, f.ID).Extract()
	}
	rto, _ := f.RTO() // f.To.VolumeID is the new primary volume
	f, err = replications.Failback(ctx, sc, id, replications.FailbackOpts{}).Extract()

An unplanned failover (the source region down) names a point, or
"latest", and needs Force:

	f, err = replications.Failover(ctx, sc, id, replications.FailoverOpts{Point: "latest", Force: true}).Extract()
	all, err := replications.ListFailovers(ctx, sc, id).Extract()

Example: history, and delete keeping the replica image

	events, err := replications.ListEvents(ctx, sc, id).Extract()
	err = replications.Delete(ctx, sc, id, replications.DeleteOpts{KeepReplica: true}).ExtractErr()

Errors are gophercloud's: gophercloud.ResponseCodeIs(err, http.StatusNotFound)
tells a missing replication (or an unknown point of a drill),
http.StatusConflict an action the replication's status does not allow.
*/
package replications
