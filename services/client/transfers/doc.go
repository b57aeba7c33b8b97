/*
Package transfers manages Ferry transfers: copies of Ceph RBD images from
one region to another (POST/GET/DELETE /v1/transfers, their actions and
their events).

Example: create a transfer

	t, err := transfers.Create(ctx, sc, transfers.CreateOpts{
		Source:      transfers.SourceOpts{Region: "RegionOne", Pool: "volumes", Image: "volume-1"},
		Destination: transfers.DestinationOpts{Region: "RegionTwo"},
		Name:        "nightly",
	}).Extract()

Example: list every page of the project's failed transfers

	pages, err := transfers.List(sc, transfers.ListOpts{Status: "error"}).AllPages(ctx)
	if err != nil {
		panic(err)
	}
	all, err := transfers.ExtractTransfers(pages)

Example: the cycles of a replication (each cycle is a transfer)

	pages, err := transfers.List(sc, transfers.ListOpts{ReplicationID: replicationID}).AllPages(ctx)

Example: cancel, retry, delete, history

	err = transfers.Cancel(ctx, sc, id).ExtractErr()
	err = transfers.Retry(ctx, sc, id).ExtractErr()
	err = transfers.Delete(ctx, sc, id).ExtractErr()
	events, err := transfers.ListEvents(ctx, sc, id).Extract()

Errors are gophercloud's: gophercloud.ResponseCodeIs(err, http.StatusNotFound)
tells a missing transfer.
*/
package transfers
