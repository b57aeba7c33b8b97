//go:build functional

package rbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// Each region's cluster, as client.ferry: create, write, read back,
// snapshot, metadata and delete an image.
func TestClusterImageLifecycle(t *testing.T) {
	for _, region := range []string{"REGIONONE", "REGIONTWO"} {
		t.Run(region, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := Connect(ctx, Options{
				ConfFile: testenv.Get(t, "CEPH_"+region+"_CONF"),
				User:     testenv.Get(t, "CEPH_USER"),
				Keyring:  testenv.Get(t, "CEPH_"+region+"_KEYRING"),
				Timeout:  15 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			if want := testenv.Get(t, "CEPH_"+region+"_FSID"); c.FSID() != want {
				t.Errorf("fsid %s, want %s", c.FSID(), want)
			}
			pool := testenv.Get(t, "CEPH_POOL")
			name := fmt.Sprintf("functional-%d", time.Now().UnixNano())
			const size = 8 << 20
			if err := c.CreateImage(ctx, pool, name, ImageSpec{Size: size, Order: 22}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := c.RemoveImage(context.Background(), pool, name); err != nil && !errors.Is(err, ErrNotFound) {
					t.Errorf("cleanup: %v", err)
				}
			})
			if err := c.CreateImage(ctx, pool, name, ImageSpec{Size: size}); !errors.Is(err, ErrExists) {
				t.Errorf("second create: %v, want ErrExists", err)
			}
			if _, err := c.OpenImage(ctx, pool, name+"-missing", "", false); !errors.Is(err, ErrNotFound) {
				t.Errorf("open missing: %v, want ErrNotFound", err)
			}

			img, err := c.OpenImage(ctx, pool, name, "", false)
			if err != nil {
				t.Fatal(err)
			}
			first := make([]byte, 1<<20)
			rand.Read(first)
			if _, err := img.WriteAt(first, 3<<20); err != nil {
				t.Fatal(err)
			}
			if err := img.Flush(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(first))
			if _, err := img.ReadAt(got, 3<<20); err != nil || !bytes.Equal(got, first) {
				t.Fatalf("read back differs (err %v)", err)
			}
			if err := img.CreateSnapshot("snap1"); err != nil {
				t.Fatal(err)
			}
			second := bytes.Repeat([]byte{0xab}, len(first))
			if _, err := img.WriteAt(second, 3<<20); err != nil {
				t.Fatal(err)
			}
			if err := img.SetMetadata("ferry.test", "yes"); err != nil {
				t.Fatal(err)
			}
			if m, err := img.Metadata(); err != nil || m["ferry.test"] != "yes" {
				t.Errorf("metadata %v, %v", m, err)
			}
			snaps, err := img.Snapshots()
			if err != nil || len(snaps) != 1 || snaps[0].Name != "snap1" || snaps[0].Size != size {
				t.Errorf("snapshots %+v, %v", snaps, err)
			}

			// The snapshot still holds the first data.
			at, err := c.OpenImage(ctx, pool, name, "snap1", true)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := at.ReadAt(got, 3<<20); err != nil || !bytes.Equal(got, first) {
				t.Errorf("snapshot data differs (err %v)", err)
			}
			if _, err := at.WriteAt(got, 0); err == nil {
				t.Error("write to a snapshot succeeded")
			}
			if err := at.Close(); err != nil {
				t.Error(err)
			}
			if _, err := img.ReadAt(got, 3<<20); err != nil || !bytes.Equal(got, second) {
				t.Errorf("head data differs (err %v)", err)
			}

			if err := img.RemoveSnapshot("snap1"); err != nil {
				t.Fatal(err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			if err := c.RemoveImage(ctx, pool, name); err != nil {
				t.Fatal(err)
			}
			if _, err := c.OpenImage(ctx, pool, name, "", true); !errors.Is(err, ErrNotFound) {
				t.Errorf("open after remove: %v, want ErrNotFound", err)
			}
		})
	}
}

// A pool the client has no access to, or that does not exist, is a clear
// error rather than a hang.
func TestMissingPool(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, Options{
		ConfFile: testenv.Get(t, "CEPH_REGIONONE_CONF"),
		User:     testenv.Get(t, "CEPH_USER"),
		Keyring:  testenv.Get(t, "CEPH_REGIONONE_KEYRING"),
		Timeout:  15 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.OpenImage(ctx, "no-such-pool", "x", "", true); !errors.Is(err, ErrNotFound) {
		t.Errorf("open in missing pool: %v, want ErrNotFound", err)
	}
}

// A wrong key is refused with a permission error.
func TestWrongKeyring(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// RegionTwo's key is not valid in RegionOne.
	_, err := Connect(ctx, Options{
		ConfFile: testenv.Get(t, "CEPH_REGIONONE_CONF"),
		User:     testenv.Get(t, "CEPH_USER"),
		Keyring:  testenv.Get(t, "CEPH_REGIONTWO_KEYRING"),
		Timeout:  5 * time.Second,
	})
	if err == nil {
		t.Fatal("connected with another cluster's key")
	}
	if !errors.Is(err, ErrPermission) {
		t.Errorf("wrong key: %v, want ErrPermission", err)
	}
}
