//go:build functional

package rbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cephrbd "github.com/ceph/go-ceph/rbd"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// Three images (exclusive-lock on, as Cinder's; the third in the backups
// pool when there is one), a writer going round them with its own
// connection writing the same increasing counter into each in turn.
// Every consistent snapshot holds a cut of the writer's sequence (a
// prefix: c0 >= c1 >= c2 >= c0-1, what a crash at one instant leaves; all
// equal only when it falls between rounds); per-image snapshots taken one
// after the other do not. Repeats, another's snapshot of the name, a
// failure during the hold and an image without exclusive-lock are checked
// too.
func TestSnapshotConsistent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := connectRegion(t, ctx, "REGIONONE")
	pool := testenv.Get(t, "CEPH_POOL")
	other := "backups"
	if err := c.CheckPool(ctx, other); err != nil {
		t.Logf("pool %s: %v; all images in %s", other, err, pool)
		other = pool
	}
	base := fmt.Sprintf("functional-consistent-%d", time.Now().UnixNano())
	refs := []ImageRef{{pool, base + "-0"}, {pool, base + "-1"}, {other, base + "-2"}}
	plain := ImageRef{pool, base + "-plain"}
	const features = cephrbd.FeatureLayering | cephrbd.FeatureExclusiveLock | cephrbd.FeatureObjectMap | cephrbd.FeatureFastDiff
	for _, r := range refs {
		retryStuck(t, func() error {
			return c.CreateImage(ctx, r.Pool, r.Name, ImageSpec{Size: 4 << 20, Order: 22, Features: features})
		})
	}
	retryStuck(t, func() error {
		return c.CreateImage(ctx, plain.Pool, plain.Name, ImageSpec{Size: 4 << 20, Order: 22, Features: cephrbd.FeatureLayering})
	})
	t.Cleanup(func() {
		for _, r := range append(refs, plain) {
			removeAll(t, c, r)
		}
	})

	// The writer: its own connection, one read-write handle per image.
	wc := connectRegion(t, ctx, "REGIONONE")
	var wimgs []*Image
	for _, r := range refs {
		img, err := wc.OpenImage(ctx, r.Pool, r.Name, "", false)
		if err != nil {
			t.Fatal(err)
		}
		wimgs = append(wimgs, img)
	}
	var (
		stop     atomic.Bool
		rounds   atomic.Uint64
		failed   atomic.Uint64 // writes that failed (EROFS while locks are held), retried
		maxWrite atomic.Int64  // the longest write, retries included
		wg       sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for n := uint64(1); !stop.Load(); n++ {
			binary.BigEndian.PutUint64(buf, n)
			for _, img := range wimgs {
				start := time.Now()
				for {
					_, err := img.WriteAt(buf, 0)
					if err == nil {
						break
					}
					failed.Add(1)
					if stop.Load() {
						return
					}
					time.Sleep(time.Millisecond)
				}
				if d := int64(time.Since(start)); d > maxWrite.Load() {
					maxWrite.Store(d)
				}
			}
			rounds.Store(n)
		}
	}()
	stopWriter := sync.OnceFunc(func() {
		stop.Store(true)
		wg.Wait()
		for _, img := range wimgs {
			img.Close()
		}
	})
	t.Cleanup(stopWriter)
	for rounds.Load() < 50 {
		time.Sleep(10 * time.Millisecond)
	}

	// Consistent snapshots while it runs.
	const nConsistent = 12
	var holds []time.Duration
	consistentHeld = func(d time.Duration) { holds = append(holds, d) }
	defer func() { consistentHeld = func(time.Duration) {} }()
	var consistent []string
	var held, maxHeld time.Duration
	for i := range nConsistent {
		snap := fmt.Sprintf("ferry-consistent-%d", i)
		f0 := failed.Load()
		start := time.Now()
		var snaps []Snapshot
		retryStuck(t, func() (err error) {
			snaps, err = c.SnapshotConsistent(ctx, refs, snap)
			return err
		})
		d := time.Since(start)
		held += d
		maxHeld = max(maxHeld, d)
		if len(snaps) != len(refs) || snaps[0].Name != snap {
			t.Fatalf("%s: answer %+v", snap, snaps)
		}
		consistent = append(consistent, snap)
		t.Logf("%s: call %v, locks held %v, writer writes refused meanwhile %d", snap, d, holds[len(holds)-1], failed.Load()-f0)
		time.Sleep(30 * time.Millisecond)
	}

	// Per-image snapshots one after the other, in the writer's order.
	const nPlain = 30
	var perImage []string
	for i := range nPlain {
		snap := fmt.Sprintf("ferry-plain-%d", i)
		for _, r := range refs {
			retryStuck(t, func() error {
				img, err := c.OpenImage(ctx, r.Pool, r.Name, "", false)
				if err != nil {
					return err
				}
				defer img.Close()
				return img.CreateSnapshot(snap)
			})
		}
		perImage = append(perImage, snap)
	}
	f := failed.Load()
	stopWriter()
	t.Logf("writer: %d rounds, %d writes refused (and retried), longest write %v; consistent snapshot calls: mean %v, longest %v",
		rounds.Load(), f, time.Duration(maxWrite.Load()), held/nConsistent, maxHeld)

	counters := func(snap string) [3]uint64 {
		var out [3]uint64
		for i, r := range refs {
			img, err := c.OpenImage(ctx, r.Pool, r.Name, snap, true)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 8)
			if _, err := img.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			img.Close()
			out[i] = binary.BigEndian.Uint64(b)
		}
		return out
	}
	cut := func(v [3]uint64) bool { return v[0] >= v[1] && v[1] >= v[2] && v[2]+1 >= v[0] }
	equal := 0
	for _, snap := range consistent {
		v := counters(snap)
		if !cut(v) {
			t.Errorf("%s: counters %v are not one point of the writer", snap, v)
		}
		if v[0] == v[1] && v[1] == v[2] {
			equal++
		}
		t.Logf("%s: %v", snap, v)
	}
	t.Logf("consistent: %d snapshots checked, %d between rounds (all equal), the rest mid-round", len(consistent), equal)
	mismatch := 0
	for _, snap := range perImage {
		if v := counters(snap); !cut(v) {
			mismatch++
			if mismatch <= 3 {
				t.Logf("%s (per image): counters %v", snap, v)
			}
		}
	}
	t.Logf("per image without the quiesce: %d of %d sets are no point of the writer", mismatch, len(perImage))
	if mismatch == 0 {
		t.Error("per-image snapshots never caught the writer between images: the check shows nothing")
	}

	// A repeat answers the same snapshots.
	last := consistent[len(consistent)-1]
	first, err := c.SnapshotConsistent(ctx, refs, last)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.SnapshotConsistent(ctx, []ImageRef{refs[2], refs[0], refs[1]}, last)
	if err != nil || again[1] != first[0] || again[2] != first[1] || again[0] != first[2] {
		t.Errorf("repeat in another order: %+v, %v; want %+v", again, err, first)
	}

	// Another's snapshot of the name: refused, nothing made.
	img1, err := c.OpenImage(ctx, refs[1].Pool, refs[1].Name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := img1.CreateSnapshot("theirs"); err != nil {
		t.Fatal(err)
	}
	img1.Close()
	if _, err := c.SnapshotConsistent(ctx, refs, "theirs"); !errors.Is(err, ErrExists) {
		t.Errorf("over another's snapshot: %v, want ErrExists", err)
	}
	assertSnaps(t, c, refs[0], "theirs", false)
	img1, err = c.OpenImage(ctx, refs[1].Pool, refs[1].Name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if snaps, _ := img1.Snapshots(); len(snaps) == 0 || snaps[len(snaps)-1].Name != "theirs" {
		t.Errorf("another's snapshot: %+v", snaps)
	}
	img1.Close()

	// A failure during the hold removes what the call made.
	beforeConsistentSnapshot = func(r ImageRef) error {
		if r == refs[2] {
			return errors.New("injected")
		}
		return nil
	}
	_, err = c.SnapshotConsistent(ctx, refs, "ferry-failed")
	beforeConsistentSnapshot = func(ImageRef) error { return nil }
	if err == nil {
		t.Fatal("the injected failure did not fail the call")
	}
	for _, r := range refs {
		assertSnaps(t, c, r, "ferry-failed", false)
	}

	// A partial set of this group's (a call that died) is retaken.
	if err := c.RemoveConsistent(ctx, refs[2:], last); err != nil {
		t.Fatal(err)
	}
	retaken, err := c.SnapshotConsistent(ctx, refs, last)
	if err != nil || retaken[0].ID == first[0].ID {
		t.Errorf("retake of a partial set: %+v, %v (before %+v)", retaken, err, first)
	}

	// An image without exclusive-lock is refused before anything is made.
	if _, err := c.SnapshotConsistent(ctx, []ImageRef{refs[0], plain}, "ferry-plain-group"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("without exclusive-lock: %v, want ErrUnsupported", err)
	}
	assertSnaps(t, c, refs[0], "ferry-plain-group", false)

	if err := c.RemoveConsistent(ctx, refs, last); err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		assertSnaps(t, c, r, last, false)
	}
}

// retryStuck runs fn; when Ceph looks stuck (ErrTimeout: someone may have
// stopped an OSD for a fault test) it waits and tries once more.
func retryStuck(t *testing.T, fn func() error) {
	t.Helper()
	err := fn()
	if errors.Is(err, ErrTimeout) {
		t.Logf("ceph looks stuck (%v); retrying in 20s", err)
		time.Sleep(20 * time.Second)
		err = fn()
	}
	if err != nil {
		t.Fatal(err)
	}
}

func assertSnaps(t *testing.T, c *Cluster, r ImageRef, snap string, want bool) {
	t.Helper()
	img, err := c.OpenImage(context.Background(), r.Pool, r.Name, "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	snaps, err := img.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	has := false
	for _, s := range snaps {
		has = has || s.Name == snap
	}
	meta, err := img.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if _, marked := meta[consistentKey(snap)]; has != want || marked != want {
		t.Errorf("%s: snapshot %s there %v, marker %v; want %v", r, snap, has, marked, want)
	}
}

// removeAll removes r with all its snapshots.
func removeAll(t *testing.T, c *Cluster, r ImageRef) {
	ctx := context.Background()
	if img, err := c.OpenImage(ctx, r.Pool, r.Name, "", false); err == nil {
		snaps, _ := img.Snapshots()
		for _, s := range snaps {
			if err := img.RemoveSnapshot(s.Name); err != nil {
				t.Errorf("cleanup %s@%s: %v", r, s.Name, err)
			}
		}
		img.Close()
	}
	if err := c.RemoveImage(ctx, r.Pool, r.Name); err != nil && !errors.Is(err, ErrNotFound) {
		t.Errorf("cleanup %s: %v", r, err)
	}
}
