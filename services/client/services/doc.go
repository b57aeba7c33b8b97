/*
Package services lists Ferry's services (ferry-api and the region agents)
and whether they are up (GET /v1/services, admins only).

Example

	pages, err := services.List(sc).AllPages(ctx)
	if err != nil {
		panic(err)
	}
	all, err := services.ExtractServices(pages)
	for _, s := range all {
		fmt.Println(s.Binary, s.Host, s.Region, s.State, s.Status)
	}
*/
package services
