//go:build functional

package cinder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumetypes"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"

	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/keystone"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// stackClient is a Cinder v3 client of region for the stack's user.
func stackClient(ctx context.Context, t *testing.T, user, region string) *gophercloud.ServiceClient {
	t.Helper()
	rc := testenv.Openrc(t, user)
	p, eo, err := keystone.CredentialsFromEnv(func(key string) string {
		if key == "OS_REGION_NAME" {
			return region
		}
		return rc(key)
	}).Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eo.Region = region
	c, err := openstack.NewBlockStorageV3(p, eo)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rbdImageExists asks Ceph (admin credentials of the stack's ceph.conf),
// not Cinder, whether pool/image is there.
func rbdImageExists(t *testing.T, conf, spec string) bool {
	t.Helper()
	out, err := exec.Command("rbd", "-c", conf, "info", spec).CombinedOutput()
	if err == nil {
		return true
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 { // ENOENT
		return false
	}
	t.Fatalf("rbd info %s: %v: %s", spec, err, out)
	return false
}

// What a failover asks of the real Cinder, as Ferry's service user (admin
// in its own project, no grant on the owner's): inspect demo's volume, set
// and clear its read-only flag, unmanage it (the image stays in Ceph),
// manage the image back with a volume type (KeepImage), and unmanage that.
// Everything the test makes is deleted at the end.
func TestFailoverOperationsOnTheStack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	const region = "RegionOne"
	cfg := config.Defaults()
	k := cfg.KeystoneAuthtoken
	k.AuthURL, k.Username, k.Password, k.ProjectName = testenv.Get(t, "OS_AUTH_URL"), testenv.Get(t, "FERRY_SERVICE_USER"),
		testenv.Get(t, "FERRY_SERVICE_PASSWORD"), testenv.Get(t, "FERRY_SERVICE_PROJECT")
	pool := testenv.Get(t, "CINDER_REGIONONE_VOLUME_POOL")
	cephConf := testenv.Get(t, "CEPH_REGIONONE_CONF")
	c := cfg.Cinder
	c.VolumePools = map[string]string{region: pool}
	c.BackendHosts = map[string]string{region: testenv.Get(t, "CINDER_REGIONONE_BACKEND_HOST")}
	c.FinalizeTimeout = 120
	s, err := New(k, c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	demo := stackClient(ctx, t, "demo", region)
	admin := stackClient(ctx, t, "admin", region)
	demoProject := demoProjectID(t, demo)

	// Leftovers, whatever happens: Cinder's volumes (deleted as demo),
	// then images Cinder no longer knows, then the volume type.
	var volumeIDs, images []string
	var typeID string
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, id := range volumeIDs {
			if err := volumes.Delete(cctx, demo, id, volumes.DeleteOpts{}).ExtractErr(); err != nil && !gophercloud.ResponseCodeIs(err, 404) {
				t.Logf("cleanup: volume %s: %v", id, err)
			}
			waitGone(cctx, t, demo, id)
		}
		for _, img := range images {
			if rbdImageExists(t, cephConf, pool+"/"+img) {
				if out, err := exec.Command("rbd", "-c", cephConf, "--no-progress", "rm", pool+"/"+img).CombinedOutput(); err != nil {
					t.Logf("cleanup: rbd rm %s: %v: %s", img, err, out)
				}
			}
		}
		if typeID != "" {
			if err := volumetypes.Delete(cctx, admin, typeID).ExtractErr(); err != nil {
				t.Logf("cleanup: volume type %s: %v", typeID, err)
			}
		}
	})

	v, err := volumes.Create(ctx, demo, volumes.CreateOpts{Size: 1, Name: fmt.Sprintf("functional-failover-%d", time.Now().UnixNano()),
		Metadata: map[string]string{"purpose": "failover test"}}, nil).Extract()
	if err != nil {
		t.Fatal(err)
	}
	volumeIDs = append(volumeIDs, v.ID)
	images = append(images, "volume-"+v.ID)
	waitStatus(ctx, t, demo, v.ID, "available")

	st, err := s.InspectVolume(ctx, region, demoProject, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "available" || st.Attached || st.ReadOnly || st.Spec.ID != v.ID || st.Spec.ProjectID != demoProject ||
		st.Spec.Metadata["purpose"] != "failover test" || st.Spec.VolumeType == "" || st.Spec.SizeGiB != 1 {
		t.Errorf("InspectVolume: %+v", st)
	}
	t.Logf("demo's volume %s has type %q", v.ID, st.Spec.VolumeType)
	if _, err := s.InspectVolume(ctx, region, "not-"+demoProject, v.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("inspected as another project's: %v", err)
	}

	// The read-only flag: set, set again, seen by the owner, cleared.
	for _, ro := range []bool{true, true, false} {
		if err := s.SetReadOnly(ctx, region, demoProject, v.ID, ro); err != nil {
			t.Fatalf("SetReadOnly(%v): %v", ro, err)
		}
		st, err := s.InspectVolume(ctx, region, demoProject, v.ID)
		if err != nil || st.ReadOnly != ro || st.Spec.Metadata["readonly"] != "" {
			t.Fatalf("after SetReadOnly(%v): %+v %v", ro, st, err)
		}
		got, err := volumes.Get(ctx, demo, v.ID).Extract()
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]string{true: "True", false: "False"}[ro]; got.Metadata["readonly"] != want {
			t.Errorf("demo sees readonly %q, want %q", got.Metadata["readonly"], want)
		}
	}

	// A volume being attached (reserved by its owner, as Nova does first):
	// neither the flag nor the unmanage is asked of Cinder.
	if err := volumes.Reserve(ctx, demo, v.ID).ExtractErr(); err != nil {
		t.Fatal(err)
	}
	if err := s.SetReadOnly(ctx, region, demoProject, v.ID, true); !errors.Is(err, ErrInUse) {
		t.Errorf("SetReadOnly of a reserved volume: %v", err)
	}
	if err := s.UnmanageVolume(ctx, region, demoProject, v.ID); !errors.Is(err, ErrInUse) {
		t.Errorf("UnmanageVolume of a reserved volume: %v", err)
	}
	if err := volumes.Unreserve(ctx, demo, v.ID).ExtractErr(); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, demo, v.ID, "available")

	// Unmanage: Cinder forgets the volume, Ceph keeps its image.
	if err := s.UnmanageVolume(ctx, region, demoProject, v.ID); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.VolumeExists(ctx, region, v.ID); ok || err != nil {
		t.Fatalf("volume %s after its unmanage: exists %v, %v", v.ID, ok, err)
	}
	if !rbdImageExists(t, cephConf, pool+"/volume-"+v.ID) {
		t.Fatalf("the image of the unmanaged volume %s is gone", v.ID)
	}
	if err := s.UnmanageVolume(ctx, region, demoProject, v.ID); err != nil {
		t.Errorf("unmanage of a volume already gone: %v", err)
	}

	// The image managed back, with a volume type (the service user acts in
	// demo's project for this, as for any registration).
	vt, err := volumetypes.Create(ctx, admin, volumetypes.CreateOpts{Name: fmt.Sprintf("ferry-functional-%d", time.Now().UnixNano()),
		ExtraSpecs: map[string]string{"volume_backend_name": "ceph"}}).Extract()
	if err != nil {
		t.Fatal(err)
	}
	typeID = vt.ID
	spec := st.Spec
	spec.Name = "functional-failover-managed"
	var created string
	id, err := s.RegisterVolume(ctx, Registration{TransferID: "functional-failover", Region: region, Image: "volume-" + v.ID,
		Spec: spec, VolumeType: vt.Name, KeepImage: true, Created: func(_ context.Context, id string) error { created = id; return nil }})
	if created != "" {
		volumeIDs = append(volumeIDs, created)
		images = append(images, "volume-"+created)
	}
	if err != nil {
		t.Fatal(err)
	}
	st, err = s.InspectVolume(ctx, region, demoProject, id)
	if err != nil || st.Spec.VolumeType != vt.Name || st.Status != "available" || st.Spec.Metadata["ferry_transfer_id"] != "functional-failover" {
		t.Fatalf("the managed volume %s: %+v %v", id, st, err)
	}
	if !rbdImageExists(t, cephConf, pool+"/volume-"+id) || rbdImageExists(t, cephConf, pool+"/volume-"+v.ID) {
		t.Errorf("Cinder did not rename volume-%s to volume-%s", v.ID, id)
	}
	if err := s.UnmanageVolume(ctx, region, demoProject, id); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.VolumeExists(ctx, region, id); ok || err != nil {
		t.Fatalf("volume %s after its unmanage: exists %v, %v", id, ok, err)
	}
	if !rbdImageExists(t, cephConf, pool+"/volume-"+id) {
		t.Fatalf("the image of the unmanaged volume %s is gone", id)
	}
}

// demoProjectID is the project of demo's token.
func demoProjectID(t *testing.T, demo *gophercloud.ServiceClient) string {
	t.Helper()
	res, ok := demo.ProviderClient.GetAuthResult().(tokens.CreateResult)
	if !ok {
		t.Fatalf("demo's authentication result is a %T", demo.ProviderClient.GetAuthResult())
	}
	p, err := res.ExtractProject()
	if err != nil || p == nil || p.ID == "" {
		t.Fatalf("demo's project: %+v %v", p, err)
	}
	return p.ID
}

func waitStatus(ctx context.Context, t *testing.T, c *gophercloud.ServiceClient, id, want string) {
	t.Helper()
	for {
		v, err := volumes.Get(ctx, c, id).Extract()
		if err != nil {
			t.Fatal(err)
		}
		if v.Status == want {
			return
		}
		if v.Status == "error" || ctx.Err() != nil {
			t.Fatalf("volume %s is %s, want %s", id, v.Status, want)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func waitGone(ctx context.Context, t *testing.T, c *gophercloud.ServiceClient, id string) {
	for ctx.Err() == nil {
		if _, err := volumes.Get(ctx, c, id).Extract(); gophercloud.ResponseCodeIs(err, 404) {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Logf("cleanup: volume %s still there", id)
}
