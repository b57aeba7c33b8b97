//go:build functional

package transfer

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/stream"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// The sequence that once zeroed a replica: a transfer, the same transfer
// again (a redelivered transfer.start), then a new incremental. The repeat
// is answered from the destination's record and changes nothing; the
// incremental starts from a head equal to its base; every image and
// snapshot equals its source.
func TestRepeatedTransferThenIncremental(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	name := uniq("xfer-repeat")
	img := h.newImage(name, 24<<20)
	writeRandom(t, img, 0, 6<<20)
	writeRandom(t, img, 17<<20, 1<<20)
	job := Job{TransferID: "t1-" + name, Epoch: 1, Pool: h.pool, Image: name}

	r1, err := h.source.Run(ctx, job, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	h.sameImage(name, r1.Snapshot)
	head := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name)
	if src := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+name+"@"+r1.Snapshot); head != src {
		t.Fatalf("run 1: destination head %s, source snapshot %s", head, src)
	}

	// Run 2: the same transfer again, as a redelivered start would run it
	// (another epoch too).
	job.Epoch = 2
	r2, err := h.source.Run(ctx, job, h.dest)
	if err != nil {
		t.Fatalf("run 2 (repeat): %v", err)
	}
	if r2.Digest != r1.Digest || r2.Stream.BytesSent != 0 {
		t.Errorf("run 2: digest %s (run 1 %s), sent %d bytes; want the recorded digest and nothing sent", r2.Digest, r1.Digest, r2.Stream.BytesSent)
	}
	if after := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name); after != head {
		t.Fatalf("run 2 changed the destination head: %s, was %s", after, head)
	}
	h.sameImage(name, r1.Snapshot)

	// What ferry-api learns when it asks (a lost report).
	q, err := h.dest.Query(ctx, job.TransferID, h.pool, name)
	if err != nil || !q.Complete || q.Digest != r1.Digest || q.Snapshot != r1.Snapshot || q.Mode != ModeFull || q.BytesDone != r1.BytesDone {
		t.Errorf("query: %+v %v (run 1 %+v)", q, err, r1)
	}
	if q, err := h.dest.Query(ctx, "another", h.pool, name); err != nil || !q.Exists || q.Complete {
		t.Errorf("query of another transfer: %+v %v", q, err)
	}
	if q, err := h.dest.Query(ctx, job.TransferID, h.pool, name+"-none"); err != nil || q.Exists {
		t.Errorf("query of a missing image: %+v %v", q, err)
	}

	// Run 3: a new incremental.
	writeRandom(t, img, 3<<20, 256<<10)
	writeRandom(t, img, 20<<20, 64<<10)
	r3, err := h.source.Run(ctx, Job{TransferID: "t3-" + name, Epoch: 1, Pool: h.pool, Image: name, Mode: ModeIncremental}, h.dest)
	if err != nil {
		t.Fatalf("run 3: %v", err)
	}
	if r3.Base != r1.Snapshot {
		t.Errorf("run 3 base %q, want %s", r3.Base, r1.Snapshot)
	}
	h.sameImage(name, r3.Snapshot)
	if a, b := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name), testenv.ExportSHA(t, h.srcConf, h.pool+"/"+name+"@"+r3.Snapshot); a != b {
		t.Fatalf("run 3: destination head %s, source snapshot %s", a, b)
	}
}

// A head changed behind Ferry's back since the base (or by an unfinished
// transfer) is rolled back before an incremental is applied: never a diff
// onto an unknown head.
func TestIncrementalOntoAChangedHead(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	name := uniq("xfer-dirty")
	img := h.newImage(name, 16<<20)
	writeRandom(t, img, 0, 4<<20)
	r1, err := h.source.Run(ctx, Job{TransferID: "d1-" + name, Pool: h.pool, Image: name}, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	// Someone writes the destination head.
	dimg, err := h.dst.OpenImage(ctx, h.pool, name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	writeRandom(t, dimg, 8<<20, 1<<20)
	dimg.Close()

	writeRandom(t, img, 12<<20, 4096)
	r2, err := h.source.Run(ctx, Job{TransferID: "d2-" + name, Pool: h.pool, Image: name, Mode: ModeIncremental}, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Base != r1.Snapshot {
		t.Errorf("base %q, want %s", r2.Base, r1.Snapshot)
	}
	h.sameImage(name, r2.Snapshot)
}

// A source snapshot deleted and taken again under the same name (other
// data) is refused by a destination that holds the first one: nothing is
// changed there.
func TestRecreatedSnapshotRefused(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	name := uniq("xfer-recreate")
	img := h.newImage(name, 8<<20)
	writeRandom(t, img, 0, 1<<20)
	if err := img.CreateSnapshot("nightly"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.source.Run(ctx, Job{TransferID: "n1-" + name, Pool: h.pool, Image: name, Snapshot: "nightly"}, h.dest); err != nil {
		t.Fatal(err)
	}
	before := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name+"@nightly")
	headBefore := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name)
	if err := img.RemoveSnapshot("nightly"); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, img, 0, 1<<20)
	if err := img.CreateSnapshot("nightly"); err != nil {
		t.Fatal(err)
	}
	_, err := h.source.Run(ctx, Job{TransferID: "n2-" + name, Pool: h.pool, Image: name, Snapshot: "nightly"}, h.dest)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("recreated snapshot: %v, want ErrConflict", err)
	}
	if a, b := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name+"@nightly"), testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name); a != before || b != headBefore {
		t.Error("the refused transfer changed the destination")
	}
	// The user's snapshot is not Ferry's: never removed at the source.
	if !slices.Contains(snapshotsOf(t, h.src, h.pool, name), "nightly") {
		t.Error("the user's snapshot was removed")
	}
}

// A checkpoint edited in the image's metadata (a pool writer) does not
// verify: the run starts over from the beginning instead of resuming at
// the forged watermark, and the copy is still identical.
func TestForgedCheckpointRestarts(t *testing.T) {
	const size = 64 << 20
	h, c := newCutHarness(t, 32<<20)
	name := uniq("xfer-forge")
	img := h.newImage(name, size)
	writeRandom(t, img, 0, size)
	job := Job{TransferID: "f-" + name, Pool: h.pool, Image: name}
	h.cut(c, job, size/2)
	time.Sleep(1500 * time.Millisecond) // the destination saves its checkpoint
	dimg, err := h.dst.OpenImage(context.Background(), h.pool, name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	md, err := dimg.Metadata()
	if err != nil || md[MetaCheckpoint] == "" {
		t.Fatalf("no checkpoint after the interruption: %v", err)
	}
	// A forged checkpoint: everything written, as far as it claims.
	forged := stream.Checkpoint{TransferID: job.TransferID, ChunkSize: 1 << 20, Watermark: size >> 20, BytesDone: size}
	s, _ := forged.Encode()
	if err := dimg.SetMetadata(MetaCheckpoint, s); err != nil {
		t.Fatal(err)
	}
	dimg.Close()

	r, err := h.source.Run(ctxT(t), job, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	if r.Resumed || r.Stream.BytesSent < size {
		t.Errorf("a forged checkpoint was used: resumed %v, sent %d of %d", r.Resumed, r.Stream.BytesSent, size)
	}
	h.sameImage(name, r.Snapshot)
}

// Discard removes the snapshot Ferry took for a failed transfer (tagged),
// never one of the same name that Ferry did not take.
func TestDiscardOnlyFerrysSnapshot(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	name := uniq("xfer-discard")
	img := h.newImage(name, 4<<20)
	writeRandom(t, img, 0, 1<<20)
	job := Job{TransferID: "dx-" + name, Pool: h.pool, Image: name, Ephemeral: true}
	if _, err := h.source.ensureSnapshot(ctx, h.src, job); err != nil {
		t.Fatal(err)
	}
	if got, err := h.source.Discard(ctx, job); err != nil || got != "ferry-"+job.TransferID {
		t.Fatalf("discard: %q %v", got, err)
	}
	if snaps := snapshotsOf(t, h.src, h.pool, name); len(snaps) != 0 {
		t.Errorf("snapshots left: %v", snaps)
	}
	if md := metadataOf(t, h.src, h.pool, name); md[MetaSourceSnapPrefix+"ferry-"+job.TransferID] != "" {
		t.Error("the tag stayed")
	}
	// A snapshot of Ferry's name that Ferry did not take (no tag) stays.
	other := Job{TransferID: "dy-" + name, Pool: h.pool, Image: name}
	if err := img.CreateSnapshot("ferry-" + other.TransferID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.source.Discard(ctx, other); !errors.Is(err, ErrNotOwned) {
		t.Errorf("discard of an untagged snapshot: %v, want ErrNotOwned", err)
	}
	if snaps := snapshotsOf(t, h.src, h.pool, name); !slices.Equal(snaps, []string{"ferry-" + other.TransferID}) {
		t.Errorf("snapshots %v", snaps)
	}
}

// Cleanup of a transfer that never completed: its own image goes; in an
// image holding other transfers' copies only its state goes (and the next
// incremental is still exact); an image Ferry does not own is refused.
func TestCleanupOfUnfinishedTransfers(t *testing.T) {
	const size = 32 << 20
	h, c := newCutHarness(t, 16<<20)
	interrupted := func(job Job) {
		t.Helper()
		h.cut(c, job, 4<<20)
		// The destination's session ends with the source gone.
		h.dest.Abort(context.Background(), AbortRequest{TransferID: job.TransferID, Epoch: job.Epoch, Reason: "test"})
	}
	ctx := ctxT(t)

	name := uniq("xfer-clean-new")
	img := h.newImage(name, size)
	writeRandom(t, img, 0, size)
	interrupted(Job{TransferID: "c1-" + name, Pool: h.pool, Image: name})
	res, err := h.dest.Cleanup(ctx, "c1-"+name, h.pool, name)
	if err != nil || !res.ImageRemoved {
		t.Fatalf("cleanup of a new image: %+v %v", res, err)
	}
	if out, err := exec.Command("rbd", "-c", h.dstConf, "info", h.pool+"/"+name).CombinedOutput(); err == nil {
		t.Fatalf("the image is still there: %s", out)
	}

	name2 := uniq("xfer-clean-old")
	img2 := h.newImage(name2, size)
	writeRandom(t, img2, 0, 1<<20)
	r1, err := h.source.Run(ctx, Job{TransferID: "k1-" + name2, Pool: h.pool, Image: name2}, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	writeRandom(t, img2, 0, size)
	interrupted(Job{TransferID: "k2-" + name2, Pool: h.pool, Image: name2, Mode: ModeIncremental})
	if res, err := h.dest.Cleanup(ctx, "k1-"+name2, h.pool, name2); err != nil || res.ImageRemoved || res.StateRemoved {
		t.Errorf("cleanup of a completed transfer removed something: %+v %v", res, err)
	}
	res, err = h.dest.Cleanup(ctx, "k2-"+name2, h.pool, name2)
	if err != nil || !res.StateRemoved || res.ImageRemoved {
		t.Fatalf("cleanup of the interrupted incremental: %+v %v", res, err)
	}
	md := metadataOf(t, h.dst, h.pool, name2)
	if md[MetaWriting] != "" || md[MetaCheckpoint] != "" {
		t.Errorf("state left: %v", md)
	}
	h.sameImage(name2, r1.Snapshot)
	r3, err := h.source.Run(ctx, Job{TransferID: "k3-" + name2, Pool: h.pool, Image: name2, Mode: ModeIncremental}, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	h.sameImage(name2, r3.Snapshot)

	// Not Ferry's image.
	foreign := uniq("xfer-clean-foreign")
	if err := h.dst.CreateImage(ctx, h.pool, foreign, rbd.ImageSpec{Size: 1 << 20, Order: 22}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("rbd", "-c", h.dstConf, "rm", h.pool+"/"+foreign).Run() })
	if _, err := h.dest.Cleanup(ctx, "x", h.pool, foreign); !errors.Is(err, ErrNotOwned) {
		t.Errorf("cleanup of a foreign image: %v", err)
	}
}

// dupPreparer prepares twice, as a redelivered transfer.prepare would: the
// second time while the source streams into the first session.
type dupPreparer struct {
	*Dest
	t      *testing.T
	second chan PrepareResponse
}

func (p *dupPreparer) Prepare(ctx context.Context, req PrepareRequest) (PrepareResponse, error) {
	resp, err := p.Dest.Prepare(ctx, req)
	if err == nil {
		go func() {
			for i := 0; i < 200; i++ {
				if j := p.Dest.job(req.TransferID); j != nil && j.session.Streaming() {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			again, err := p.Dest.Prepare(context.Background(), req)
			if err != nil {
				p.t.Errorf("repeated prepare: %v", err)
			}
			p.second <- again
		}()
	}
	return resp, err
}

// A prepare repeated while its source streams answers with the open
// session (same ticket) and the transfer completes, byte-identical.
func TestRepeatedPrepareKeepsTheSession(t *testing.T) {
	h := newHarness(t, Options{BandwidthLimit: 16 << 20})
	name := uniq("xfer-dup-prepare")
	img := h.newImage(name, 24<<20)
	writeRandom(t, img, 0, 24<<20)
	dp := &dupPreparer{Dest: h.dest, t: t, second: make(chan PrepareResponse, 1)}
	var first PrepareResponse
	rec := recordingPreparer{Preparer: dp, first: &first}
	r, err := h.source.Run(ctxT(t), Job{TransferID: "dp-" + name, Pool: h.pool, Image: name}, rec)
	if err != nil {
		t.Fatalf("the transfer did not survive a repeated prepare: %v", err)
	}
	if again := <-dp.second; again.Ticket != first.Ticket {
		t.Errorf("the repeated prepare opened another session")
	}
	h.sameImage(name, r.Snapshot)
}

// recordingPreparer keeps the first prepare's answer.
type recordingPreparer struct {
	Preparer
	first *PrepareResponse
}

func (r recordingPreparer) Prepare(ctx context.Context, req PrepareRequest) (PrepareResponse, error) {
	resp, err := r.Preparer.Prepare(ctx, req)
	*r.first = resp
	return resp, err
}
