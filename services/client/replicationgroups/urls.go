package replicationgroups

import "github.com/gophercloud/gophercloud/v2"

const resourcePath = "replication-groups"

func createURL(c *gophercloud.ServiceClient) string { return c.ServiceURL(resourcePath) }

func listURL(c *gophercloud.ServiceClient) string { return c.ServiceURL(resourcePath) }

func getURL(c *gophercloud.ServiceClient, id string) string { return c.ServiceURL(resourcePath, id) }

func updateURL(c *gophercloud.ServiceClient, id string) string { return getURL(c, id) }

func deleteURL(c *gophercloud.ServiceClient, id string) string { return getURL(c, id) }

func actionURL(c *gophercloud.ServiceClient, id string) string {
	return c.ServiceURL(resourcePath, id, "action")
}

func pointsURL(c *gophercloud.ServiceClient, id string) string {
	return c.ServiceURL(resourcePath, id, "points")
}

func drillsURL(c *gophercloud.ServiceClient, id string) string {
	return c.ServiceURL(resourcePath, id, "drills")
}
