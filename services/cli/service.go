package cli

import (
	"context"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/services/client/services"
)

var serviceFields = []string{"binary", "host", "region", "status", "state", "updated_at", "version"}

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
					objs = append(objs, newObject(it, serviceFields))
				}
				return true, nil
			})
			if err != nil {
				return apiError(err)
			}
			return printList(a.stdout, out, objs, serviceFields, serviceFields)
		}),
	}
	addOutputFlags(list, &out)
	cmd.AddCommand(list)
	return cmd
}
