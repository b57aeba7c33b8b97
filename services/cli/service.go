package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/services/client/services"
)

var serviceFields = []string{"binary", "host", "region", "status", "state", "updated_at", "version", "ceph_health", "running_transfers", "max_transfers"}

// serviceDefaults are the columns shown without -c.
var serviceDefaults = []string{"binary", "host", "region", "status", "state", "updated_at", "version", "ceph_health", "running_transfers"}

func (a *app) serviceCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Ferry's agents and their state (admins)", Args: cobra.NoArgs}
	var out outputOpts
	list := &cobra.Command{
		Use:   "list",
		Short: "List Ferry's agents, their region and whether they are up",
		Args:  cobra.NoArgs,
		RunE: a.withClient(&out, func(ctx context.Context, sc *gophercloud.ServiceClient, _ gophercloud.EndpointOpts, _ []string) error {
			var objs []object
			err := services.List(sc).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
				items, err := rawList(page.GetBody(), "services")
				if err != nil {
					return false, err
				}
				for _, it := range items {
					if out.format == formatTable || out.format == formatValue {
						it["ceph_health"] = healthCell(it["ceph_health"], time.Now())
					}
					objs = append(objs, newObject(it, serviceFields))
				}
				return true, nil
			})
			if err != nil {
				return apiError(err)
			}
			return printList(a.stdout, out, objs, serviceDefaults, serviceFields)
		}),
	}
	addOutputFlags(list, &out)
	cmd.AddCommand(list)
	return cmd
}

// healthCell is an agent's ceph_health in a table: its summary and the
// probe's age ("HEALTH_WARN: OSD_NEARFULL, SLOW_OPS (12s ago)"); the
// JSON and YAML formats keep the API's object.
func healthCell(v any, now time.Time) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return v
	}
	var h services.CephHealth
	if json.Unmarshal(raw, &h) != nil {
		return v
	}
	s := h.Summary()
	if !h.CheckedAt.IsZero() {
		s += fmt.Sprintf(" (%s ago)", now.Sub(h.CheckedAt).Round(time.Second))
	}
	return s
}
