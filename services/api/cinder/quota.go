package cinder

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/quotasets"
)

// ErrQuota: the owner project's Cinder quota in the destination region has
// no room for the volume a transfer would register there.
var ErrQuota = errors.New("the Cinder quota is exceeded")

// quotaTimeout bounds the quota read.
const quotaTimeout = 30 * time.Second

// CheckVolumeQuota checks, with the caller's token, that project has room
// in region's Cinder for one more volume of sizeGiB (its volumes and
// gigabytes quotas, counting what is in use and reserved): the copy becomes
// a volume of that project there, and a copy that Cinder would then refuse
// only fills the pool. A quota that cannot be read (policy, an old Cinder)
// is not a refusal: Cinder still enforces it at registration.
func (s *Service) CheckVolumeQuota(ctx context.Context, token, region, project string, sizeGiB int) error {
	sc, err := s.client(ctx, region, token)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, quotaTimeout)
	defer cancel()
	q, err := quotasets.GetUsage(ctx, sc, project).Extract()
	if err != nil {
		s.log.Warn("Cinder quota not checked", "region", region, "project_id", project, "error", err)
		return nil
	}
	for _, c := range []struct {
		what  string
		u     quotasets.QuotaUsage
		needs int
	}{{"volumes", q.Volumes, 1}, {"gigabytes", q.Gigabytes, sizeGiB}} {
		if c.u.Limit >= 0 && c.u.InUse+c.u.Reserved+c.needs > c.u.Limit {
			return fmt.Errorf("%w: project %s in %s uses %d of its %d %s (%d reserved); this volume needs %d more",
				ErrQuota, project, region, c.u.InUse, c.u.Limit, c.what, c.u.Reserved, c.needs)
		}
	}
	return nil
}
