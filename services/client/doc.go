/*
Package client is the Go client library of Ferry's REST API (the
volume-ferry service), in the conventions of gophercloud v2: a
*gophercloud.ServiceClient built here is passed to the functions of the
resource packages transfers, replications, replicationgroups and services.

The library depends only on the standard library and gophercloud; it never
imports Ferry's server packages.

Example: a client from the catalog of an authenticated provider

	provider, err := openstack.AuthenticatedClient(ctx, authOpts)
	if err != nil {
		panic(err)
	}
	sc, err := client.NewFerryV1(provider, gophercloud.EndpointOpts{Region: "RegionOne"})
	if err != nil {
		panic(err)
	}
	sc.Microversion = "1.1" // sends OpenStack-API-Version: volume-ferry 1.1

	t, err := transfers.Create(ctx, sc, transfers.CreateOpts{
		Source:      transfers.SourceOpts{Region: "RegionOne", Pool: "volumes", Image: "volume-1"},
		Destination: transfers.DestinationOpts{Region: "RegionTwo"},
	}).Extract()

Microversions: an empty sc.Microversion sends no header, which the server
serves at 1.0. Version 1.1 adds replications and a transfer's
ReplicationID (and the ListOpts.ReplicationID filter): the replications
package's functions, and transfers.List with a ReplicationID, ask for
"1.1" themselves when sc.Microversion is empty or older (WithMicroversion),
without changing sc; set sc.Microversion = "1.1" to see ReplicationID in
every transfer. Version 1.2 adds replication groups: the
replicationgroups package's functions ask for "1.2" the same way.

Example: a client for a known URL (no catalog)

	sc := client.NewFerryV1WithEndpoint(&gophercloud.ProviderClient{TokenID: token}, "http://127.0.0.1:9790")
*/
package client
