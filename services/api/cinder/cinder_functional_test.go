//go:build functional

package cinder

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/keystone"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// VolumeExists (the replication scheduler's check of a source volume) asks
// the real Cinder as Ferry's service user about a volume of another
// project (demo's): there while it exists, gone once deleted.
func TestVolumeExistsOnTheStack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cfg := config.Defaults()
	k := cfg.KeystoneAuthtoken
	k.AuthURL, k.Username, k.Password, k.ProjectName = testenv.Get(t, "OS_AUTH_URL"), testenv.Get(t, "FERRY_SERVICE_USER"),
		testenv.Get(t, "FERRY_SERVICE_PASSWORD"), testenv.Get(t, "FERRY_SERVICE_PROJECT")
	s, err := New(k, cfg.Cinder, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	const region = "RegionOne"
	if ok, err := s.VolumeExists(ctx, region, uuid.NewString()); ok || err != nil {
		t.Fatalf("a volume that never existed: %v %v", ok, err)
	}
	if _, err := s.VolumeExists(ctx, region, "not-a-uuid"); err == nil {
		t.Error("a malformed id was sent to Cinder")
	}

	rc := testenv.Openrc(t, "demo")
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
	demo, err := openstack.NewBlockStorageV3(p, eo)
	if err != nil {
		t.Fatal(err)
	}
	v, err := volumes.Create(ctx, demo, volumes.CreateOpts{Size: 1, Name: fmt.Sprintf("functional-exists-%d", time.Now().UnixNano())}, nil).Extract()
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_ = volumes.Delete(context.Background(), demo, v.ID, volumes.DeleteOpts{}).ExtractErr()
		}
	})
	if ok, err := s.VolumeExists(ctx, region, v.ID); !ok || err != nil {
		t.Fatalf("demo's new volume %s: %v %v", v.ID, ok, err)
	}
	// Deletable once it is available (or in error).
	for {
		got, err := volumes.Get(ctx, demo, v.ID).Extract()
		if err != nil {
			t.Fatal(err)
		}
		if got.Status == "available" || got.Status == "error" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("volume %s still %s", v.ID, got.Status)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if err := volumes.Delete(ctx, demo, v.ID, volumes.DeleteOpts{}).ExtractErr(); err != nil {
		t.Fatal(err)
	}
	deleted = true
	for {
		ok, err := s.VolumeExists(ctx, region, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("volume %s still exists after its deletion", v.ID)
		}
		time.Sleep(300 * time.Millisecond)
	}
	_, err = volumes.Get(ctx, demo, v.ID).Extract()
	if !gophercloud.ResponseCodeIs(err, 404) {
		t.Errorf("demo still sees the deleted volume: %v", err)
	}
}
