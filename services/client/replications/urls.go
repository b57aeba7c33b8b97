package replications

import "github.com/gophercloud/gophercloud/v2"

const resourcePath = "replications"

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

func eventsURL(c *gophercloud.ServiceClient, id string) string {
	return c.ServiceURL(resourcePath, id, "events")
}

func drillsURL(c *gophercloud.ServiceClient, id string) string {
	return c.ServiceURL(resourcePath, id, "drills")
}

func failoversURL(c *gophercloud.ServiceClient, id string) string {
	return c.ServiceURL(resourcePath, id, "failovers")
}

func failoverURL(c *gophercloud.ServiceClient, id, failoverID string) string {
	return c.ServiceURL(resourcePath, id, "failovers", failoverID)
}
