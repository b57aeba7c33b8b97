/*
Package client is the Go client library of Ferry's REST API (the
volume-ferry service), in the conventions of gophercloud v2: a
*gophercloud.ServiceClient built here is passed to the functions of the
resource packages transfers, replications and services.

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
	sc.Microversion = "1.0" // sends OpenStack-API-Version: volume-ferry 1.0

	t, err := transfers.Create(ctx, sc, transfers.CreateOpts{
		Source:      transfers.SourceOpts{Region: "RegionOne", Pool: "volumes", Image: "volume-1"},
		Destination: transfers.DestinationOpts{Region: "RegionTwo"},
	}).Extract()

Example: a client for a known URL (no catalog)

	sc := client.NewFerryV1WithEndpoint(&gophercloud.ProviderClient{TokenID: token}, "http://127.0.0.1:9790")
*/
package client
