//go:build functional

package transfer

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// replication is one replication's source image and replica in the
// harness, with the source's sha256 recorded at each point.
type replication struct {
	h       *harness
	id      string
	name    string // source image
	replica string
	img     *rbd.Image
	// closeImg closes img (once).
	closeImg func()
	sha      map[string]string // point -> the source's sha256 when it was taken
	n        int
}

func newReplication(h *harness, size uint64) *replication {
	h.t.Helper()
	id := uniq("r")
	r := &replication{h: h, id: id, name: "repl-src-" + id, replica: "ferry-replica-" + id, sha: map[string]string{}}
	h.t.Cleanup(func() {
		h.dest.Close() // no session holds the replica
		removeWithClones(h.t, h.dst, h.pool, r.replica)
	})
	ctx := context.Background()
	if err := h.src.CreateImage(ctx, h.pool, r.name, rbd.ImageSpec{Size: size, Order: 22}); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() {
		exec.Command("rbd", "-c", h.srcConf, "snap", "purge", h.pool+"/"+r.name).Run()
		exec.Command("rbd", "-c", h.srcConf, "rm", h.pool+"/"+r.name).Run()
	})
	img, err := h.src.OpenImage(ctx, h.pool, r.name, "", false)
	if err != nil {
		h.t.Fatal(err)
	}
	r.img, r.closeImg = img, sync.OnceFunc(func() { img.Close() })
	h.t.Cleanup(r.closeImg)
	return r
}

// removeWithClones removes pool/name in c with its snapshots and their
// clones (test clean-up: nothing the test made stays).
func removeWithClones(t *testing.T, c *rbd.Cluster, pool, name string) {
	ctx := context.Background()
	img, err := c.OpenImage(ctx, pool, name, "", false)
	if err != nil {
		return
	}
	snaps, _ := img.Snapshots()
	for _, s := range snaps {
		kids, _ := img.SnapshotChildren(s.Name)
		for _, k := range kids {
			if err := c.RemoveImage(ctx, k.Pool, k.Image); err != nil {
				t.Logf("clean-up: clone %s/%s: %v", k.Pool, k.Image, err)
			}
		}
		if p, _ := img.SnapshotProtected(s.Name); p {
			img.UnprotectSnapshot(s.Name)
		}
		img.RemoveSnapshot(s.Name)
	}
	img.Close()
	if err := c.RemoveImage(ctx, pool, name); err != nil {
		t.Logf("clean-up: %s/%s: %v", pool, name, err)
	}
}

// job is the next cycle's transfer.
func (r *replication) job(retain ...string) Job {
	r.n++
	return Job{TransferID: uniq("c"), Epoch: 1, Pool: r.h.pool, Image: r.name, DestImage: r.replica,
		ReplicationID: r.id, Retain: retain}
}

// cycle runs a cycle keeping retain and records the source at its point.
func (r *replication) cycle(ctx context.Context, retain ...string) Result {
	r.h.t.Helper()
	return r.run(ctx, r.job(retain...))
}

func (r *replication) run(ctx context.Context, job Job) Result {
	r.h.t.Helper()
	res, err := r.h.source.Run(ctx, job, r.h.dest)
	if err != nil {
		r.h.t.Fatalf("cycle %d: %v", r.n, err)
	}
	r.sha[res.Snapshot] = testenv.ExportSHA(r.h.t, r.h.srcConf, r.h.pool+"/"+r.name+"@"+res.Snapshot)
	return res
}

// points are the replica's snapshots.
func (r *replication) points() []string {
	return snapshotsOf(r.h.t, r.h.dst, r.h.pool, r.replica)
}

// matches fails unless the replica holds exactly want, each equal to the
// source at that point.
func (r *replication) matches(want ...string) {
	r.h.t.Helper()
	got := r.points()
	if !slices.Equal(got, want) {
		r.h.t.Fatalf("replica points %v, want %v", got, want)
	}
	for _, p := range want {
		if sha := testenv.ExportSHA(r.h.t, r.h.dstConf, r.h.pool+"/"+r.replica+"@"+p); sha != r.sha[p] {
			r.h.t.Errorf("point %s: replica sha256 %s, source had %s", p, sha, r.sha[p])
		}
	}
}

func (r *replication) drill(point, clone string) rpc.DrillRequest {
	return rpc.DrillRequest{DrillID: "d-" + clone, ReplicationID: r.id, Pool: r.h.pool, Image: r.replica, Snapshot: point,
		ClonePool: r.h.pool, CloneName: clone}
}

// Three cycles with retain lists, the source grown before the third: the
// destination holds exactly the retained points plus the new one, each
// equal to the source at that point; the pruned point is reported; the
// source keeps only the newest snapshot; every completed cycle knows when
// its source snapshot was taken; the replica is marked as the
// replication's and its records name it.
func TestReplicationCyclesRetain(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	r := newReplication(h, 16<<20)

	writeRandom(t, r.img, 0, 2<<20)
	before := time.Now().Add(-2 * time.Second)
	c1 := r.cycle(ctx)
	if c1.Mode != ModeFull || len(c1.DestRemoved) != 0 {
		t.Errorf("cycle 1: %+v", c1)
	}
	if c1.SnapshotTime.Before(before) || c1.SnapshotTime.After(time.Now().Add(2*time.Second)) {
		t.Errorf("cycle 1 snapshot time %v, taken after %v", c1.SnapshotTime, before)
	}
	r.matches(c1.Snapshot)
	if md := metadataOf(t, h.dst, h.pool, r.replica); md[MetaReplication] != r.id {
		t.Errorf("replica metadata %v, want %s=%s", md, MetaReplication, r.id)
	}

	writeRandom(t, r.img, 5<<20, 1<<20)
	c2 := r.cycle(ctx, c1.Snapshot)
	if c2.Mode != ModeIncremental || c2.Base != c1.Snapshot || len(c2.DestRemoved) != 0 {
		t.Errorf("cycle 2: mode %s base %s removed %v", c2.Mode, c2.Base, c2.DestRemoved)
	}
	if !c2.SnapshotTime.After(c1.SnapshotTime) && !c2.SnapshotTime.Equal(c1.SnapshotTime) {
		t.Errorf("cycle 2 snapshot time %v before cycle 1's %v", c2.SnapshotTime, c1.SnapshotTime)
	}
	r.matches(c1.Snapshot, c2.Snapshot)

	// The source grows: the next cycle grows the replica (its older
	// points keep their size).
	if err := r.img.Resize(24 << 20); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, r.img, 22<<20, 1<<20)
	j3 := r.job(c2.Snapshot)
	c3 := r.run(ctx, j3)
	if c3.Mode != ModeIncremental || c3.BytesTotal != 24<<20 || !slices.Equal(c3.DestRemoved, []string{c1.Snapshot}) {
		t.Errorf("cycle 3: mode %s size %d removed %v, want incremental, 24 MiB, [%s]", c3.Mode, c3.BytesTotal, c3.DestRemoved, c1.Snapshot)
	}
	r.matches(c2.Snapshot, c3.Snapshot)
	// Its report lost: the same cycle again (a redelivered start), and
	// ferry-api's query, answer with what its finish removed and when its
	// source snapshot was taken.
	j3.Epoch = 2
	again, err := h.source.Run(ctx, j3, h.dest)
	if err != nil || again.Digest != c3.Digest || !slices.Equal(again.DestRemoved, []string{c1.Snapshot}) || !again.SnapshotTime.Equal(c3.SnapshotTime) {
		t.Errorf("cycle 3 again: %+v, %v; want removed [%s] and time %v", again, err, c1.Snapshot, c3.SnapshotTime)
	}
	if q, err := h.dest.Query(ctx, j3.TransferID, h.pool, r.replica); err != nil || !q.Complete ||
		!slices.Equal(q.Removed, []string{c1.Snapshot}) || !q.SnapshotTime.Equal(c3.SnapshotTime) {
		t.Errorf("query of cycle 3: %+v, %v", q, err)
	}
	r.matches(c2.Snapshot, c3.Snapshot)
	img, err := h.dst.OpenImage(ctx, h.pool, r.replica, "", true)
	if err != nil {
		t.Fatal(err)
	}
	size, _ := img.Size()
	snaps, _ := img.Snapshots()
	md, _ := img.Metadata()
	info, _ := img.Info()
	img.Close()
	if size != 24<<20 || snaps[0].Size != 16<<20 {
		t.Errorf("replica size %d (point %s: %d), want 24 MiB (16 MiB)", size, snaps[0].Name, snaps[0].Size)
	}
	for name, rec := range h.dest.records(info.ID, md, snaps) {
		if rec.ReplicationID != r.id {
			t.Errorf("record of %s names replication %q", name, rec.ReplicationID)
		}
	}
	if _, ok := md[MetaSnapRecordPrefix+c1.Snapshot]; ok {
		t.Error("the pruned point's record stays")
	}
	if src := snapshotsOf(t, h.src, h.pool, r.name); !slices.Equal(src, []string{c3.Snapshot}) {
		t.Errorf("source snapshots %v, want only %s", src, c3.Snapshot)
	}

	// A fourth cycle retaining nothing: only the new point stays.
	writeRandom(t, r.img, 0, 4096)
	c4 := r.cycle(ctx)
	if !slices.Equal(c4.DestRemoved, []string{c2.Snapshot, c3.Snapshot}) {
		t.Errorf("cycle 4 removed %v", c4.DestRemoved)
	}
	r.matches(c4.Snapshot)
}

// A point a drill cloned survives the prune that would remove it, and goes
// on the next cycle once the clone was flattened; the drill is idempotent
// (before and after the flatten) and refuses what is not a verified point
// of that replication.
func TestReplicationDrillAndPrune(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	r := newReplication(h, 8<<20)
	writeRandom(t, r.img, 0, 3<<20)
	c1 := r.cycle(ctx)
	clone := "ferry-drill-" + r.id
	t.Cleanup(func() { h.dst.RemoveImage(context.Background(), h.pool, clone) })

	d1, err := h.dest.Drill(ctx, r.drill(c1.Snapshot, clone))
	if err != nil {
		t.Fatal(err)
	}
	if !d1.Created || d1.Size != 8<<20 || d1.ImageID == "" || d1.Flattened {
		t.Errorf("drill %+v", d1)
	}
	d2, err := h.dest.Drill(ctx, r.drill(c1.Snapshot, clone))
	if err != nil || d2.Created || d2.ImageID != d1.ImageID {
		t.Errorf("repeated drill %+v, %v; want the same clone", d2, err)
	}
	if sha := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+clone); sha != r.sha[c1.Snapshot] {
		t.Errorf("drill clone sha256 %s, point %s", sha, r.sha[c1.Snapshot])
	}

	// Refusals, with nothing created.
	other := r.drill(c1.Snapshot, clone+"-x")
	other.ReplicationID = "another"
	if _, err := h.dest.Drill(ctx, other); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("drill of another replication's point: %v, want conflict", err)
	}
	if _, err := h.dest.Drill(ctx, r.drill("ferry-missing", clone+"-x")); !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("drill of a missing point: %v, want not found", err)
	}
	dimg, err := h.dst.OpenImage(ctx, h.pool, r.replica, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := dimg.CreateSnapshot("ferry-forged"); err != nil {
		t.Fatal(err)
	}
	dimg.Close()
	if _, err := h.dest.Drill(ctx, r.drill("ferry-forged", clone+"-x")); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("drill of a snapshot Ferry did not record: %v, want conflict", err)
	}
	if err := h.dst.CreateImage(ctx, h.pool, clone+"-y", rbd.ImageSpec{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.dst.RemoveImage(context.Background(), h.pool, clone+"-y") })
	if _, err := h.dest.Drill(ctx, r.drill(c1.Snapshot, clone+"-y")); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("drill onto an unrelated image: %v, want conflict", err)
	}
	if _, err := h.dst.OpenImage(ctx, h.pool, clone+"-x", "", true); !errors.Is(err, rbd.ErrNotFound) {
		t.Errorf("a refused drill created its clone: %v", err)
	}
	dimg, _ = h.dst.OpenImage(ctx, h.pool, r.replica, "", false)
	dimg.RemoveSnapshot("ferry-forged")
	dimg.Close()

	// Cycle 2 retains nothing, but the cloned point stays.
	writeRandom(t, r.img, 4<<20, 1<<20)
	c2 := r.cycle(ctx)
	if len(c2.DestRemoved) != 0 {
		t.Errorf("cycle 2 removed %v; the cloned point must stay", c2.DestRemoved)
	}
	r.matches(c1.Snapshot, c2.Snapshot)

	// Flattened (as the drill's background flatten does), the clone no
	// longer holds the point: a repeated drill still answers with it, and
	// cycle 3 prunes the point (protected: unprotected first).
	if err := h.dest.FlattenDrill(ctx, h.pool, d1.ImageID); err != nil {
		t.Fatal(err)
	}
	d3, err := h.dest.Drill(ctx, r.drill(c1.Snapshot, clone))
	if err != nil || d3.Created || !d3.Flattened || d3.ImageID != d1.ImageID {
		t.Errorf("drill after the flatten %+v, %v", d3, err)
	}
	writeRandom(t, r.img, 6<<20, 4096)
	c3 := r.cycle(ctx, c2.Snapshot)
	if !slices.Equal(c3.DestRemoved, []string{c1.Snapshot}) {
		t.Errorf("cycle 3 removed %v, want [%s]", c3.DestRemoved, c1.Snapshot)
	}
	r.matches(c2.Snapshot, c3.Snapshot)
	if sha := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+clone); sha != r.sha[c1.Snapshot] {
		t.Errorf("flattened drill clone sha256 %s, point %s", sha, r.sha[c1.Snapshot])
	}
}

// A cycle cut mid-copy (its own bandwidth limit keeps it running long
// enough), then a new cycle: it goes incremental from the last verified
// point and the replica holds exactly the retained points.
func TestReplicationFailedCycleThenNext(t *testing.T) {
	h, cut := newCutHarness(t, 0)
	ctx := ctxT(t)
	r := newReplication(h, 16<<20)
	writeRandom(t, r.img, 0, 1<<20)
	c1 := r.cycle(ctx)

	writeRandom(t, r.img, 2<<20, 12<<20)
	failed := r.job(c1.Snapshot)
	failed.BandwidthLimit = 1 << 20
	start := time.Now()
	done := h.cut(cut, failed, 1<<20)
	if done >= 12<<20 {
		t.Fatalf("the limited cycle copied %d bytes before the cut", done)
	}
	if el := time.Since(start); el < time.Second {
		t.Errorf("a cycle limited to 1 MiB/s copied %d bytes in %v", done, el)
	}
	if removed, err := h.source.Discard(ctx, failed); err != nil || removed == "" {
		t.Errorf("discarding the failed cycle's snapshot: %q, %v", removed, err)
	}

	writeRandom(t, r.img, 12<<20, 1<<20)
	c3 := r.cycle(ctx, c1.Snapshot)
	if c3.Mode != ModeIncremental || c3.Base != c1.Snapshot {
		t.Errorf("the cycle after the failure: mode %s base %q, want incremental from %s", c3.Mode, c3.Base, c1.Snapshot)
	}
	r.matches(c1.Snapshot, c3.Snapshot)
	if md := metadataOf(t, h.dst, h.pool, r.replica); md[MetaWriting] != "" || md[MetaCheckpoint] != "" {
		t.Errorf("writing state left after the next cycle: %v", md)
	}
}

// The destination's clean-up of a deleted replication: refused for
// another replication's id (nothing changed); with remove_image the clone
// of a point (a drill volume) is flattened and stays valid, the snapshots
// and the replica go; a repeat is a no-op.
func TestReplicationCleanupDestinationRemove(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	r := newReplication(h, 8<<20)
	writeRandom(t, r.img, 0, 2<<20)
	c1 := r.cycle(ctx)
	writeRandom(t, r.img, 3<<20, 1<<20)
	c2 := r.cycle(ctx, c1.Snapshot)
	clone := "ferry-drill-" + r.id
	t.Cleanup(func() { h.dst.RemoveImage(context.Background(), h.pool, clone) })
	if _, err := h.dest.Drill(ctx, r.drill(c1.Snapshot, clone)); err != nil {
		t.Fatal(err)
	}

	req := rpc.ReplicationCleanup{ReplicationID: "another", Side: rpc.CleanupSideDestination, Pool: h.pool, Image: r.replica, RemoveImage: true}
	if _, err := h.dest.CleanupReplica(ctx, req); !errors.Is(err, ErrNotOwned) {
		t.Errorf("clean-up for another replication: %v, want not owned", err)
	}
	r.matches(c1.Snapshot, c2.Snapshot)

	req.ReplicationID = r.id
	res, err := h.dest.CleanupReplica(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !res.ImageRemoved || !slices.Equal(res.Removed, []string{c1.Snapshot, c2.Snapshot}) || !slices.Equal(res.Flattened, []string{h.pool + "/" + clone}) {
		t.Errorf("clean-up %+v", res)
	}
	if _, err := h.dst.OpenImage(ctx, h.pool, r.replica, "", true); !errors.Is(err, rbd.ErrNotFound) {
		t.Errorf("replica after the clean-up: %v", err)
	}
	if sha := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+clone); sha != r.sha[c1.Snapshot] {
		t.Errorf("the drill volume after the clean-up: sha256 %s, point %s", sha, r.sha[c1.Snapshot])
	}
	if res, err := h.dest.CleanupReplica(ctx, req); err != nil || res.ImageRemoved || len(res.Removed) != 0 {
		t.Errorf("repeated clean-up %+v, %v", res, err)
	}
}

// keep_replica: Ferry's snapshots and state go, the image stays with its
// head equal to the newest point, even after a cycle cut mid-copy had
// written it; Ferry no longer owns it. A snapshot Ferry did not take stays;
// with remove_image it would refuse the whole clean-up.
func TestReplicationCleanupDestinationKeep(t *testing.T) {
	h, cut := newCutHarness(t, 0)
	ctx := ctxT(t)
	r := newReplication(h, 16<<20)
	writeRandom(t, r.img, 0, 2<<20)
	c1 := r.cycle(ctx)
	writeRandom(t, r.img, 3<<20, 1<<20)
	c2 := r.cycle(ctx, c1.Snapshot)
	writeRandom(t, r.img, 0, 14<<20)
	failed := r.job(c1.Snapshot, c2.Snapshot)
	failed.BandwidthLimit = 1 << 20
	h.cut(cut, failed, 1<<20)
	// A cut that lands in the finish leaves the session for a retry:
	// the source's abort ends it.
	h.dest.Abort(ctx, AbortRequest{TransferID: failed.TransferID, Epoch: failed.Epoch, Reason: "test"})
	h.source.Discard(ctx, failed)
	if head := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica); head == r.sha[c2.Snapshot] {
		t.Fatal("the cut cycle did not write the replica's head")
	}
	dimg, err := h.dst.OpenImage(ctx, h.pool, r.replica, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := dimg.CreateSnapshot("users"); err != nil {
		t.Fatal(err)
	}
	dimg.Close()

	req := rpc.ReplicationCleanup{ReplicationID: r.id, Side: rpc.CleanupSideDestination, Pool: h.pool, Image: r.replica, RemoveImage: true}
	if _, err := h.dest.CleanupReplica(ctx, req); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "did not take") {
		t.Errorf("removing a replica with a foreign snapshot: %v, want conflict", err)
	}
	if got := r.points(); !slices.Equal(got, []string{c1.Snapshot, c2.Snapshot, "users"}) {
		t.Fatalf("a refused clean-up changed the snapshots: %v", got)
	}

	req.RemoveImage = false
	res, err := h.dest.CleanupReplica(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.ImageRemoved || !res.RolledBack || !slices.Equal(res.Removed, []string{c1.Snapshot, c2.Snapshot}) {
		t.Errorf("keep clean-up %+v", res)
	}
	if got := r.points(); !slices.Equal(got, []string{"users"}) {
		t.Errorf("snapshots kept %v, want only the user's", got)
	}
	if head := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica); head != r.sha[c2.Snapshot] {
		t.Errorf("kept replica's head %s, newest point %s", head, r.sha[c2.Snapshot])
	}
	for k := range metadataOf(t, h.dst, h.pool, r.replica) {
		if strings.HasPrefix(k, "ferry.") {
			t.Errorf("Ferry's metadata %s stays on the kept replica", k)
		}
	}
	// No longer Ferry's: a clean-up or a cycle refuses it.
	if _, err := h.dest.CleanupReplica(ctx, req); !errors.Is(err, ErrNotOwned) {
		t.Errorf("clean-up of the kept replica: %v, want not owned", err)
	}
	if _, err := h.source.Run(ctx, r.job(), h.dest); !errors.Is(err, ErrNotOwned) {
		t.Errorf("a cycle into the kept replica: %v, want not owned", err)
	}
}

// The source's clean-up: on the live image the named Ferry snapshots go
// and a snapshot named like Ferry's but not tagged stays; on an image
// Cinder moved to the RBD trash, the snapshots go and so does the trashed
// image, unless a snapshot that is not Ferry's is left on it.
func TestReplicationCleanupSource(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)

	t.Run("live", func(t *testing.T) {
		r := newReplication(h, 4<<20)
		writeRandom(t, r.img, 0, 1<<20)
		c1 := r.cycle(ctx)
		if err := r.img.CreateSnapshot("ferry-manual"); err != nil {
			t.Fatal(err)
		}
		res, err := h.source.CleanupReplication(ctx, r.id, h.pool, r.name, []string{c1.Snapshot, "ferry-manual", "ferry-gone"})
		if !errors.Is(err, ErrNotOwned) {
			t.Errorf("clean-up error %v, want the untagged snapshot reported", err)
		}
		if !slices.Equal(res.Removed, []string{c1.Snapshot}) || res.Trashed {
			t.Errorf("clean-up %+v", res)
		}
		if got := snapshotsOf(t, h.src, h.pool, r.name); !slices.Equal(got, []string{"ferry-manual"}) {
			t.Errorf("source snapshots %v", got)
		}
		if md := metadataOf(t, h.src, h.pool, r.name); md[MetaSourceSnapPrefix+c1.Snapshot] != "" {
			t.Error("the removed snapshot's tag stays")
		}
	})

	for _, tc := range []struct {
		name  string
		other bool // a snapshot that is not Ferry's stays on the trashed image
	}{{"trash", false}, {"trash with another snapshot", true}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReplication(h, 4<<20)
			t.Cleanup(func() { purgeTrash(t, h.src, h.pool, r.name) })
			writeRandom(t, r.img, 0, 1<<20)
			c1 := r.cycle(ctx)
			if tc.other {
				if err := r.img.CreateSnapshot("cinder-snap"); err != nil {
					t.Fatal(err)
				}
			}
			r.closeImg()
			if out, err := exec.Command("rbd", "-c", h.srcConf, "trash", "mv", h.pool+"/"+r.name).CombinedOutput(); err != nil {
				t.Fatalf("rbd trash mv: %v: %s", err, out)
			}
			res, err := h.source.CleanupReplication(ctx, r.id, h.pool, r.name, []string{c1.Snapshot})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Trashed || !slices.Equal(res.Removed, []string{c1.Snapshot}) || res.TrashRemoved == tc.other {
				t.Errorf("clean-up %+v", res)
			}
			trashed, err := h.src.TrashLookup(ctx, h.pool, r.name)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{false: 0, true: 1}[tc.other]; len(trashed) != want {
				t.Fatalf("trash holds %d images named %s, want %d", len(trashed), r.name, want)
			}
			if tc.other {
				ti, err := h.src.OpenImageByID(ctx, h.pool, trashed[0].ID, "", true)
				if err != nil {
					t.Fatal(err)
				}
				snaps, _ := ti.Snapshots()
				ti.Close()
				if len(snaps) != 1 || snaps[0].Name != "cinder-snap" {
					t.Errorf("trashed image snapshots %+v", snaps)
				}
			}
			again, err := h.source.CleanupReplication(ctx, r.id, h.pool, r.name, []string{c1.Snapshot})
			if err != nil || len(again.Removed) != 0 || again.TrashRemoved {
				t.Errorf("repeated clean-up %+v, %v", again, err)
			}
		})
	}
}

// purgeTrash removes the images named name from pool's trash, with their
// snapshots (test clean-up).
func purgeTrash(t *testing.T, c *rbd.Cluster, pool, name string) {
	ctx := context.Background()
	entries, _ := c.TrashLookup(ctx, pool, name)
	for _, e := range entries {
		if img, err := c.OpenImageByID(ctx, pool, e.ID, "", false); err == nil {
			snaps, _ := img.Snapshots()
			for _, s := range snaps {
				img.RemoveSnapshot(s.Name)
			}
			img.Close()
		}
		if err := c.TrashRemove(ctx, pool, e.ID); err != nil {
			t.Logf("clean-up: trash %s: %v", e.ID, err)
		}
	}
}

// A drill while a cycle copies into the replica (its session holds the
// replica's exclusive lock): the clone is made at once and the cycle
// completes; the replica then holds both points, the clone the older.
func TestReplicationDrillDuringCycle(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	r := newReplication(h, 16<<20)
	writeRandom(t, r.img, 0, 1<<20)
	c1 := r.cycle(ctx)
	writeRandom(t, r.img, 2<<20, 8<<20)
	job := r.job(c1.Snapshot)
	job.BandwidthLimit = 2 << 20
	type result struct {
		res Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := h.source.Run(ctx, job, h.dest)
		done <- result{res, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for h.dest.Sessions() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if h.dest.Sessions() == 0 {
		t.Fatal("the cycle opened no session")
	}
	clone := "ferry-drill-" + r.id
	t.Cleanup(func() { h.dst.RemoveImage(context.Background(), h.pool, clone) })
	d, err := h.dest.Drill(ctx, r.drill(c1.Snapshot, clone))
	if err != nil || !d.Created {
		t.Fatalf("drill during a cycle: %+v, %v", d, err)
	}
	if h.dest.Sessions() == 0 {
		t.Error("the cycle ended before the drill: nothing was tested")
	}
	c2 := <-done
	if c2.err != nil {
		t.Fatalf("the cycle during the drill: %v", c2.err)
	}
	r.sha[c2.res.Snapshot] = testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name+"@"+c2.res.Snapshot)
	r.matches(c1.Snapshot, c2.res.Snapshot)
	if sha := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+clone); sha != r.sha[c1.Snapshot] {
		t.Errorf("drill clone sha256 %s, point %s", sha, r.sha[c1.Snapshot])
	}
}
