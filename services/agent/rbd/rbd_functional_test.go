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
			c := connectRegion(t, ctx, region)
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

// An image renamed while open and exclusively locked (as a fenced
// destination holds it) keeps its id, snapshots and metadata, and the
// open handle keeps writing; renaming onto an existing image or from a
// missing one is refused.
func TestRenameImage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := connectRegion(t, ctx, "REGIONTWO")
	pool := testenv.Get(t, "CEPH_POOL")
	base := fmt.Sprintf("functional-rename-%d", time.Now().UnixNano())
	a, b, to := base+"-a", base+"-b", base+"-to"
	for _, n := range []string{a, b} {
		if err := c.CreateImage(ctx, pool, n, ImageSpec{Size: 4 << 20, Order: 22}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, n := range []string{a, b, to} {
			if img, err := c.OpenImage(context.Background(), pool, n, "", false); err == nil {
				img.RemoveSnapshot("s1")
				img.Close()
			}
			if err := c.RemoveImage(context.Background(), pool, n); err != nil && !errors.Is(err, ErrNotFound) {
				t.Errorf("cleanup %s: %v", n, err)
			}
		}
	})
	if err := c.RenameImage(ctx, pool, a, b); !errors.Is(err, ErrExists) {
		t.Errorf("rename onto an existing image: %v, want ErrExists", err)
	}
	if err := c.RenameImage(ctx, pool, base+"-missing", to); !errors.Is(err, ErrNotFound) {
		t.Errorf("rename of a missing image: %v, want ErrNotFound", err)
	}

	img, err := c.OpenImage(ctx, pool, a, "", false)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	info, err := img.Info()
	if err != nil {
		t.Fatal(err)
	}
	if err := img.CreateSnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	if err := img.SetMetadata("ferry.test", "kept"); err != nil {
		t.Fatal(err)
	}
	if err := img.LockExclusive(); err != nil {
		t.Fatal(err)
	}
	if err := c.RenameImage(ctx, pool, a, to); err != nil {
		t.Fatalf("rename of a locked open image: %v", err)
	}
	data := bytes.Repeat([]byte{0x5a}, 4096)
	if _, err := img.WriteAt(data, 0); err != nil {
		t.Errorf("the open handle after the rename: %v", err)
	}
	if err := img.ReleaseLock(); err != nil {
		t.Error(err)
	}
	if _, err := c.OpenImage(ctx, pool, a, "", true); !errors.Is(err, ErrNotFound) {
		t.Errorf("open of the old name: %v, want ErrNotFound", err)
	}
	got, err := c.OpenImage(ctx, pool, to, "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	gi, err := got.Info()
	if err != nil || gi.ID != info.ID {
		t.Errorf("renamed image id %q (%v), was %q", gi.ID, err, info.ID)
	}
	md, err := got.Metadata()
	if err != nil || md["ferry.test"] != "kept" {
		t.Errorf("renamed image metadata %v, %v", md, err)
	}
	if snaps, err := got.Snapshots(); err != nil || len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Errorf("renamed image snapshots %+v, %v", snaps, err)
	}
	buf := make([]byte, len(data))
	if _, err := got.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data) {
		t.Errorf("the write through the old handle is not in the renamed image (%v)", err)
	}
}

// A pool the client has no access to, or that does not exist, is a clear
// error rather than a hang.
func TestMissingPool(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := connectRegion(t, ctx, "REGIONONE")
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

func connectRegion(t *testing.T, ctx context.Context, region string) *Cluster {
	t.Helper()
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
	return c
}

type extent struct {
	off, length uint64
	exists      bool
}

// Diff reports exactly the written extents of a full image, and from a
// snapshot only what changed since, with discarded ranges as not existing;
// WriteZeroes of an unaligned range really reads back as zeros.
func TestDiffAndWriteZeroes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := connectRegion(t, ctx, "REGIONONE")
	pool := testenv.Get(t, "CEPH_POOL")
	name := fmt.Sprintf("functional-diff-%d", time.Now().UnixNano())
	const size = 64 << 20 // 16 objects of 4 MiB
	if err := c.CreateImage(ctx, pool, name, ImageSpec{Size: size, Order: 22}); err != nil {
		t.Fatal(err)
	}
	img, err := c.OpenImage(ctx, pool, name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range []string{"s1"} {
			img.RemoveSnapshot(s)
		}
		img.Close()
		if err := c.RemoveImage(context.Background(), pool, name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	info, err := img.Info()
	if err != nil || info.Size != size || info.ObjectSize() != 4<<20 || info.ID == "" || info.Parent != "" {
		t.Fatalf("info %+v, %v", info, err)
	}
	data := bytes.Repeat([]byte{0x5a}, 64<<10)
	for _, off := range []int64{0, 10 << 20, 40<<20 + 4096} {
		if _, err := img.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	collect := func(from string, whole bool) []extent {
		var got []extent
		if err := img.Diff(ctx, from, whole, func(off, length uint64, exists bool) error {
			got = append(got, extent{off, length, exists})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	full := collect("", false)
	covers := func(es []extent, off, length uint64) bool {
		for _, e := range es {
			if e.exists && e.off <= off && off+length <= e.off+e.length {
				return true
			}
		}
		return false
	}
	touches := func(es []extent, off, length uint64) bool {
		for _, e := range es {
			if e.off < off+length && off < e.off+e.length {
				return true
			}
		}
		return false
	}
	for _, off := range []uint64{0, 10 << 20, 40<<20 + 4096} {
		if !covers(full, off, uint64(len(data))) {
			t.Errorf("full diff misses the write at %d: %+v", off, full)
		}
	}
	// Objects never written are holes. (Memstore reports an object's
	// extent from its start, not exactly the bytes written: only the
	// object granularity is asserted.)
	for _, hole := range [][2]uint64{{4 << 20, 4 << 20}, {12 << 20, 28 << 20}, {44 << 20, 20 << 20}} {
		if touches(full, hole[0], hole[1]) {
			t.Errorf("full diff reports the hole at %d+%d: %+v", hole[0], hole[1], full)
		}
	}
	if whole := collect("", true); len(whole) == 0 || len(whole) > 3 {
		t.Errorf("whole-object diff %+v", whole)
	}

	if err := img.CreateSnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	// After s1: new data in object 5, and zeroes over part of the first
	// write (unaligned).
	if _, err := img.WriteAt(data, 20<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.WriteZeroes(10<<20+512, 8192+100); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8192+100)
	if _, err := img.ReadAt(got, 10<<20+512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Error("WriteZeroes range does not read as zeros")
	}
	edge := make([]byte, 512)
	if _, err := img.ReadAt(edge, 10<<20); err != nil || !bytes.Equal(edge, data[:512]) {
		t.Error("WriteZeroes touched bytes before its range")
	}
	inc := collect("s1", false)
	var changed []extent
	for _, e := range inc {
		if e.off < 40<<20 { // the extent at 40 MiB did not change
			changed = append(changed, e)
		} else {
			t.Errorf("unchanged extent reported: %+v", e)
		}
	}
	if len(changed) == 0 {
		t.Fatal("incremental diff is empty")
	}
	var sawNew bool
	for _, e := range changed {
		if e.off <= 20<<20 && e.off+e.length >= 20<<20+64<<10 && e.exists {
			sawNew = true
		}
	}
	if !sawNew {
		t.Errorf("incremental diff misses the new write: %+v", changed)
	}
	if !touches(changed, 10<<20+512, 8192+100) {
		t.Errorf("incremental diff misses the zeroed range: %+v", changed)
	}

	// A callback error stops the iteration and is returned.
	stop := fmt.Errorf("stop")
	if err := img.Diff(ctx, "", false, func(uint64, uint64, bool) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("callback error: %v", err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if err := img.Diff(cctx, "", false, func(uint64, uint64, bool) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled diff: %v", err)
	}
}
