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
// Every consistent snapshot (each image's under its own name, as a group
// cycle names them) holds a cut of the writer's sequence (a prefix: c0 >=
// c1 >= c2 >= c0-1, what a crash at one instant leaves; all equal only
// when it falls between rounds); per-image snapshots taken one after the
// other do not. Repeats, another's snapshot of a name, another group's
// set, the caller's check, a failure during the hold and an image without
// exclusive-lock are checked too.
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

	// set names each image's snapshot prefix-<its index>.
	set := func(prefix string, refs ...ImageRef) []ImageSnap {
		out := make([]ImageSnap, len(refs))
		for i, r := range refs {
			out[i] = ImageSnap{Image: r, Snap: fmt.Sprintf("%s-%d", prefix, i)}
		}
		return out
	}

	// Consistent snapshots while it runs.
	const nConsistent = 12
	var holds []time.Duration
	consistentHeld = func(d time.Duration) { holds = append(holds, d) }
	defer func() { consistentHeld = func(time.Duration) {} }()
	var consistent [][]ImageSnap
	var held, maxHeld time.Duration
	for i := range nConsistent {
		want := set(fmt.Sprintf("ferry-consistent-%d", i), refs...)
		f0 := failed.Load()
		start := time.Now()
		var snaps []Snapshot
		retryStuck(t, func() (err error) {
			snaps, err = c.SnapshotConsistent(ctx, want, nil)
			return err
		})
		d := time.Since(start)
		held += d
		maxHeld = max(maxHeld, d)
		if len(snaps) != len(refs) || snaps[0].Name != want[0].Snap || snaps[2].Name != want[2].Snap {
			t.Fatalf("%v: answer %+v", want, snaps)
		}
		consistent = append(consistent, want)
		t.Logf("%v: call %v, locks held %v, writer writes refused meanwhile %d", want, d, holds[len(holds)-1], failed.Load()-f0)
		time.Sleep(30 * time.Millisecond)
	}

	// Per-image snapshots one after the other, in the writer's order.
	const nPlain = 30
	var perImage [][]ImageSnap
	for i := range nPlain {
		snaps := set(fmt.Sprintf("ferry-plain-%d", i), refs...)
		for _, s := range snaps {
			retryStuck(t, func() error {
				img, err := c.OpenImage(ctx, s.Image.Pool, s.Image.Name, "", false)
				if err != nil {
					return err
				}
				defer img.Close()
				return img.CreateSnapshot(s.Snap)
			})
		}
		perImage = append(perImage, snaps)
	}
	f := failed.Load()
	stopWriter()
	t.Logf("writer: %d rounds, %d writes refused (and retried), longest write %v; consistent snapshot calls: mean %v, longest %v",
		rounds.Load(), f, time.Duration(maxWrite.Load()), held/nConsistent, maxHeld)

	counters := func(snaps []ImageSnap) [3]uint64 {
		var out [3]uint64
		for i, s := range snaps {
			img, err := c.OpenImage(ctx, s.Image.Pool, s.Image.Name, s.Snap, true)
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
	for _, snaps := range consistent {
		v := counters(snaps)
		if !cut(v) {
			t.Errorf("%v: counters %v are not one point of the writer", snaps, v)
		}
		if v[0] == v[1] && v[1] == v[2] {
			equal++
		}
		t.Logf("%v: %v", snaps, v)
	}
	t.Logf("consistent: %d snapshots checked, %d between rounds (all equal), the rest mid-round", len(consistent), equal)
	mismatch := 0
	for _, snaps := range perImage {
		if v := counters(snaps); !cut(v) {
			mismatch++
			if mismatch <= 3 {
				t.Logf("%v (per image): counters %v", snaps, v)
			}
		}
	}
	t.Logf("per image without the quiesce: %d of %d sets are no point of the writer", mismatch, len(perImage))
	if mismatch == 0 {
		t.Error("per-image snapshots never caught the writer between images: the check shows nothing")
	}

	// A repeat answers the same snapshots, in the order asked.
	last := consistent[len(consistent)-1]
	first, err := c.SnapshotConsistent(ctx, last, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.SnapshotConsistent(ctx, []ImageSnap{last[2], last[0], last[1]}, nil)
	if err != nil || again[1] != first[0] || again[2] != first[1] || again[0] != first[2] {
		t.Errorf("repeat in another order: %+v, %v; want %+v", again, err, first)
	}

	// The same images under other names for some: another group, and
	// the names this group holds are not touched.
	another := []ImageSnap{last[0], last[1], {Image: refs[2], Snap: "ferry-another-2"}}
	if _, err := c.SnapshotConsistent(ctx, another, nil); !errors.Is(err, ErrExists) {
		t.Errorf("another group over this group's snapshots: %v, want ErrExists", err)
	}
	assertSnaps(t, c, another[2], false)
	for _, s := range last {
		assertSnaps(t, c, s, true)
	}

	// Another's snapshot of a name: refused, nothing made.
	img1, err := c.OpenImage(ctx, refs[1].Pool, refs[1].Name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := img1.CreateSnapshot("theirs-1"); err != nil {
		t.Fatal(err)
	}
	img1.Close()
	theirs := set("theirs", refs...)
	if _, err := c.SnapshotConsistent(ctx, theirs, nil); !errors.Is(err, ErrExists) {
		t.Errorf("over another's snapshot: %v, want ErrExists", err)
	}
	assertSnaps(t, c, theirs[0], false)
	assertSnaps(t, c, theirs[2], false)
	img1, err = c.OpenImage(ctx, refs[1].Pool, refs[1].Name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if snaps, _ := img1.Snapshots(); len(snaps) == 0 || snaps[len(snaps)-1].Name != "theirs-1" {
		t.Errorf("another's snapshot: %+v", snaps)
	}
	img1.Close()

	// The caller's check sees every image, in its order, before anything
	// is changed; its refusal ends the call.
	checked := set("ferry-checked", refs[2], refs[0])
	var seen []string
	refusal := errors.New("refused by the check")
	_, err = c.SnapshotConsistent(ctx, checked, func(imgs []*Image) error {
		for _, img := range imgs {
			seen = append(seen, img.String())
		}
		return refusal
	})
	if !errors.Is(err, refusal) || len(seen) != 2 || seen[0] != refs[2].String() || seen[1] != refs[0].String() {
		t.Errorf("a refusing check: %v, saw %v", err, seen)
	}
	for _, s := range checked {
		assertSnaps(t, c, s, false)
	}
	if _, err := c.SnapshotConsistent(ctx, last, func([]*Image) error { return refusal }); !errors.Is(err, refusal) {
		t.Errorf("a repeat with a refusing check: %v", err)
	}

	// A failure during the hold removes what the call made.
	beforeConsistentSnapshot = func(r ImageRef) error {
		if r == refs[2] {
			return errors.New("injected")
		}
		return nil
	}
	failedSet := set("ferry-failed", refs...)
	_, err = c.SnapshotConsistent(ctx, failedSet, nil)
	beforeConsistentSnapshot = func(ImageRef) error { return nil }
	if err == nil {
		t.Fatal("the injected failure did not fail the call")
	}
	for _, s := range failedSet {
		assertSnaps(t, c, s, false)
	}

	// A partial set of this group's (a call that died) is retaken.
	if err := c.RemoveConsistent(ctx, last[2:]); err != nil {
		t.Fatal(err)
	}
	retaken, err := c.SnapshotConsistent(ctx, last, nil)
	if err != nil || retaken[0].ID == first[0].ID || retaken[2].Name != last[2].Snap {
		t.Errorf("retake of a partial set: %+v, %v (before %+v)", retaken, err, first)
	}

	// An image twice, or without a name, is refused before anything.
	if _, err := c.SnapshotConsistent(ctx, []ImageSnap{{refs[0], "ferry-twice-a"}, {refs[0], "ferry-twice-b"}}, nil); err == nil {
		t.Error("an image listed twice was accepted")
	}
	if _, err := c.SnapshotConsistent(ctx, []ImageSnap{{refs[0], "ferry-named"}, {refs[1], ""}}, nil); err == nil {
		t.Error("an image without a snapshot name was accepted")
	}
	assertSnaps(t, c, ImageSnap{refs[0], "ferry-twice-a"}, false)
	assertSnaps(t, c, ImageSnap{refs[0], "ferry-named"}, false)

	// An image without exclusive-lock is refused before anything is made.
	plainSet := []ImageSnap{{refs[0], "ferry-plain-group-0"}, {plain, "ferry-plain-group-1"}}
	if _, err := c.SnapshotConsistent(ctx, plainSet, nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("without exclusive-lock: %v, want ErrUnsupported", err)
	}
	assertSnaps(t, c, plainSet[0], false)

	if err := c.RemoveConsistent(ctx, last); err != nil {
		t.Fatal(err)
	}
	for _, s := range last {
		assertSnaps(t, c, s, false)
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

func assertSnaps(t *testing.T, c *Cluster, s ImageSnap, want bool) {
	t.Helper()
	img, err := c.OpenImage(context.Background(), s.Image.Pool, s.Image.Name, "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	snaps, err := img.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	has := false
	for _, sn := range snaps {
		has = has || sn.Name == s.Snap
	}
	meta, err := img.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if _, marked := meta[ConsistentKey(s.Snap)]; has != want || marked != want {
		t.Errorf("%s: snapshot there %v, marker %v; want %v", s, has, marked, want)
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
