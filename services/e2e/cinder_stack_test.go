//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/backups"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/ferry-project/ferry/services/internal/keystone"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// The stack's Cinder (devstack/lib/cinder.sh), in each region, as the demo
// user: a 1 GiB volume lands as volume-<id> in the region's pool volumes, a
// backup lands in the pool backups, a restore makes a new volume; then
// everything is deleted, RBD images included. FERRY_STACK_CINDER=0 (a stack
// brought up without Cinder) is the only reason to skip.
func TestCinderStack(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	for _, region := range strings.Split(testenv.Get(t, "REGIONS"), ",") {
		t.Run(region, func(t *testing.T) {
			t.Parallel()
			cinderRoundTrip(t, region)
		})
	}
	// The openstack CLI with the stack's clouds.yaml reaches both regions.
	t.Run("openstack-cli", func(t *testing.T) {
		t.Parallel()
		for _, region := range strings.Split(testenv.Get(t, "REGIONS"), ",") {
			cmd := exec.Command("openstack", "--os-cloud", "demo", "--os-region-name", region, "volume", "list", "-f", "value")
			cmd.Env = append(cinderDebianEnv(), "OS_CLIENT_CONFIG_FILE="+testenv.Get(t, "OS_CLIENT_CONFIG_FILE"))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("openstack volume list in %s: %v: %s", region, err, out)
			}
		}
	})
}

// cinderDebianEnv is the environment without a pyenv python in the way:
// Debian's python runs Debian's openstack CLI.
func cinderDebianEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "PYTHONHOME", k == "PYTHONPATH", k == "VIRTUAL_ENV", k == "PATH", strings.HasPrefix(k, "OS_"):
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
}

// cinderClient is a block-storage v3 client of user in region.
func cinderClient(t *testing.T, ctx context.Context, user, region string) *gophercloud.ServiceClient {
	t.Helper()
	rc := testenv.Openrc(t, user)
	getenv := func(k string) string {
		if k == "OS_REGION_NAME" {
			return region
		}
		return rc(k)
	}
	p, eo, err := keystone.CredentialsFromEnv(getenv).Authenticate(ctx)
	if err != nil {
		t.Fatalf("%s login: %v", user, err)
	}
	eo.Region = region
	c, err := openstack.NewBlockStorageV3(p, eo)
	if err != nil {
		t.Fatalf("block-storage endpoint of %s: %v", region, err)
	}
	return c
}

// cinderRBD runs rbd in the region's cluster as client.cinder.
func cinderRBD(t *testing.T, R string, args ...string) (string, error) {
	t.Helper()
	base := []string{"-c", testenv.Get(t, "CINDER_"+R+"_CEPH_CONF"), "--id", testenv.Get(t, "CINDER_CEPH_USER"),
		"--keyring", testenv.Get(t, "CINDER_"+R+"_CEPH_KEYRING")}
	out, err := exec.Command("rbd", append(base, args...)...).CombinedOutput()
	return string(out), err
}

// cinderWait polls get until it returns want; an "error" status or the
// deadline fails the test.
func cinderWait(t *testing.T, what, want string, timeout time.Duration, get func() (string, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		status, err := get()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if status == want {
			return
		}
		if strings.HasPrefix(status, "error") {
			t.Fatalf("%s: status %s (see the Cinder logs in $FERRY_STACK_DIR/logs/cinder)", what, status)
		}
		last = status
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %q after %s, want %q", what, last, timeout, want)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func cinderVolumeStatus(ctx context.Context, c *gophercloud.ServiceClient, id string) func() (string, error) {
	return func() (string, error) {
		v, err := volumes.Get(ctx, c, id).Extract()
		if err != nil {
			return "", err
		}
		return v.Status, nil
	}
}

func cinderGone(err error) bool { return gophercloud.ResponseCodeIs(err, 404) }

func cinderRoundTrip(t *testing.T, region string) {
	R := strings.ToUpper(region)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	demo := cinderClient(t, ctx, "demo", region)
	if want := testenv.Get(t, "CINDER_"+R+"_URL"); !strings.HasPrefix(demo.Endpoint, want+"/") {
		t.Fatalf("catalog endpoint of %s is %s, want under %s", region, demo.Endpoint, want)
	}
	admin := cinderClient(t, ctx, "admin", region)
	name := fmt.Sprintf("e2e-cinder-%d", time.Now().UnixNano())
	t0 := time.Now()

	// Volume.
	v, err := volumes.Create(ctx, demo, volumes.CreateOpts{Size: 1, Name: name}, nil).Extract()
	if err != nil {
		t.Fatalf("create volume: %v", err)
	}
	vols := []string{v.ID}
	t.Cleanup(func() { cinderCleanup(t, demo, R, vols) })
	cinderWait(t, "volume "+v.ID, "available", 2*time.Minute, cinderVolumeStatus(ctx, demo, v.ID))
	t.Logf("%s: volume %s available after %s", region, v.ID, time.Since(t0).Round(time.Millisecond))
	av, err := volumes.Get(ctx, admin, v.ID).Extract()
	if err != nil {
		t.Fatal(err)
	}
	if want := testenv.Get(t, "CINDER_"+R+"_BACKEND_HOST"); av.Host != want {
		t.Errorf("volume host %q, want %q (CINDER_%s_BACKEND_HOST)", av.Host, want, R)
	}
	pool := testenv.Get(t, "CINDER_"+R+"_VOLUME_POOL")
	if out, err := cinderRBD(t, R, "info", pool+"/volume-"+v.ID); err != nil || !strings.Contains(out, "size 1 GiB") {
		t.Fatalf("rbd info %s/volume-%s: %v %s", pool, v.ID, err, out)
	}

	// Backup (Ceph driver, pool backups).
	t1 := time.Now()
	b, err := backups.Create(ctx, demo, backups.CreateOpts{VolumeID: v.ID, Name: name}).Extract()
	if err != nil {
		t.Fatalf("create backup: %v", err)
	}
	t.Cleanup(func() { cinderDeleteBackup(t, demo, R, b.ID) })
	cinderWait(t, "backup "+b.ID, "available", 3*time.Minute, func() (string, error) {
		b, err := backups.Get(ctx, demo, b.ID).Extract()
		if err != nil {
			return "", err
		}
		return b.Status, nil
	})
	t.Logf("%s: backup %s available after %s", region, b.ID, time.Since(t1).Round(time.Millisecond))
	bpool := testenv.Get(t, "CINDER_"+R+"_BACKUP_POOL")
	if out, err := cinderRBD(t, R, "ls", bpool); err != nil || !strings.Contains(out, "volume-"+v.ID+".backup.") {
		t.Fatalf("no image volume-%s.backup.* in pool %s: %v %s", v.ID, bpool, err, out)
	}

	// Restore into a new volume.
	t2 := time.Now()
	rs, err := backups.RestoreFromBackup(ctx, demo, b.ID, backups.RestoreOpts{Name: name + "-restored"}).Extract()
	if err != nil {
		t.Fatalf("restore backup: %v", err)
	}
	vols = append(vols, rs.VolumeID)
	cinderWait(t, "restored volume "+rs.VolumeID, "available", 3*time.Minute, cinderVolumeStatus(ctx, demo, rs.VolumeID))
	cinderWait(t, "backup "+b.ID+" after the restore", "available", time.Minute, func() (string, error) {
		b, err := backups.Get(ctx, demo, b.ID).Extract()
		if err != nil {
			return "", err
		}
		return b.Status, nil
	})
	t.Logf("%s: restored into %s after %s", region, rs.VolumeID, time.Since(t2).Round(time.Millisecond))
	if out, err := cinderRBD(t, R, "info", pool+"/volume-"+rs.VolumeID); err != nil {
		t.Fatalf("rbd info of the restored volume: %v %s", err, out)
	}
}

// cinderDeleteBackup deletes a backup, waits until it is gone and checks
// that its images left the backups pool.
func cinderDeleteBackup(t *testing.T, c *gophercloud.ServiceClient, R, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := backups.Delete(ctx, c, id).ExtractErr(); err != nil && !cinderGone(err) {
		t.Errorf("delete backup %s: %v", id, err)
		return
	}
	for {
		b, err := backups.Get(ctx, c, id).Extract()
		if cinderGone(err) {
			break
		}
		if err != nil || b.Status == "error_deleting" || ctx.Err() != nil {
			t.Errorf("backup %s not deleted: %v %+v", id, err, b)
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
	if out, _ := cinderRBD(t, R, "ls", testenv.Get(t, "CINDER_"+R+"_BACKUP_POOL")); strings.Contains(out, ".backup."+id) {
		t.Errorf("backup %s deleted but its image stays: %s", id, out)
	}
}

// cinderCleanup deletes the volumes (backups are deleted first: t.Cleanup
// runs in reverse order), waits until they are gone and checks their
// images left the pool.
func cinderCleanup(t *testing.T, c *gophercloud.ServiceClient, R string, ids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, id := range ids {
		if err := volumes.Delete(ctx, c, id, nil).ExtractErr(); err != nil && !cinderGone(err) {
			t.Errorf("delete volume %s: %v", id, err)
		}
	}
	for _, id := range ids {
		for {
			v, err := volumes.Get(ctx, c, id).Extract()
			if cinderGone(err) {
				break
			}
			if err != nil || v.Status == "error_deleting" || ctx.Err() != nil {
				t.Errorf("volume %s not deleted: %v %+v", id, err, v)
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
		if out, err := cinderRBD(t, R, "info", testenv.Get(t, "CINDER_"+R+"_VOLUME_POOL")+"/volume-"+id); err == nil {
			t.Errorf("volume %s deleted but its image stays: %s", id, out)
		}
	}
}
