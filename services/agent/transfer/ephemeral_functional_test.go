//go:build functional

package transfer

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// checkEphemeralEnd: no snapshot on the destination, the source keeps
// exactly srcSnaps, the destination head equals the copied source data,
// and the destination keeps Ferry's ownership but no base or progress.
func (h *harness) checkEphemeralEnd(name, dest, srcSpec string, srcSnaps []string) {
	t := h.t
	t.Helper()
	if s := testenv.Snapshots(t, h.srcConf, h.pool+"/"+name); !slices.Equal(s, srcSnaps) {
		t.Errorf("source snapshots %v, want %v", s, srcSnaps)
	}
	if s := testenv.Snapshots(t, h.dstConf, h.pool+"/"+dest); len(s) != 0 {
		t.Errorf("destination snapshots %v, want none", s)
	}
	a := testenv.ExportSHA(t, h.srcConf, srcSpec)
	b := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+dest)
	if a != b {
		t.Errorf("%s: source sha256 %s, destination head %s", srcSpec, a, b)
	}
	md := metadataOf(t, h.dst, h.pool, dest)
	if md[MetaOwner] != OwnerValue || md[MetaSourceFSID] != h.src.FSID() {
		t.Errorf("ownership metadata lost: %v", md)
	}
	for _, k := range []string{MetaBase, MetaWriting, MetaCheckpoint} {
		if v, ok := md[k]; ok {
			t.Errorf("destination keeps %s=%q", k, v)
		}
	}
}

// An ephemeral transfer (a Cinder volume's copy) leaves no snapshot on
// either side and a byte-identical destination; a snapshot the user named
// stays; incremental is refused; a normal transfer still ends with its
// snapshot on both sides.
func TestEphemeralTransfer(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	name := uniq("xfer-eph")
	const size = 20<<20 + 4096
	img := h.newImage(name, size)
	writeRandom(t, img, 0, 3<<20)
	writeRandom(t, img, 11<<20+512, 1<<20)
	writeRandom(t, img, size-4096, 4096)

	_, err := h.source.Run(ctx, Job{TransferID: "ei-" + name, Pool: h.pool, Image: name, Mode: ModeIncremental, Ephemeral: true}, h.dest)
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("ephemeral incremental: %v, want ErrBadRequest", err)
	}
	if s := testenv.Snapshots(t, h.srcConf, h.pool+"/"+name); len(s) != 0 {
		t.Fatalf("a refused ephemeral incremental left snapshots %v", s)
	}

	id := "e1-" + name
	r, err := h.source.Run(ctx, Job{TransferID: id, Pool: h.pool, Image: name, Ephemeral: true}, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode != ModeFull || r.Snapshot != "" || r.SourceSnapshot != SnapshotPrefix+id || !r.Ephemeral ||
		!slices.Equal(r.Removed, []string{SnapshotPrefix + id}) || r.BytesTotal != size {
		t.Errorf("ephemeral result %+v", r)
	}
	h.checkEphemeralEnd(name, name, h.pool+"/"+name, nil)

	// The copy is handed over: no other transfer writes it again, and
	// the refusal changes nothing.
	handed := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name)
	if _, err := h.source.Run(ctx, Job{TransferID: "n0-" + name, Pool: h.pool, Image: name}, h.dest); !errors.Is(err, ErrConflict) {
		t.Fatalf("a transfer into a handed-over image: %v, want ErrConflict", err)
	}
	if testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name) != handed {
		t.Fatal("the refused transfer changed the handed-over image")
	}
	// Its source snapshot is kept for a retry until the garbage collector
	// discards it, as here.
	if snap, err := h.source.Discard(ctx, Job{TransferID: "n0-" + name, Pool: h.pool, Image: name}); err != nil || snap == "" {
		t.Fatalf("discard: %q %v", snap, err)
	}
	for _, suffix := range []string{"-u", "-n"} {
		t.Cleanup(func() {
			exec.Command("rbd", "-c", h.dstConf, "snap", "purge", h.pool+"/"+name+suffix).Run()
			exec.Command("rbd", "-c", h.dstConf, "rm", h.pool+"/"+name+suffix).Run()
		})
	}

	// A snapshot the user named is copied and stays, at the source only.
	writeRandom(t, img, 5<<20, 64<<10)
	if err := img.CreateSnapshot("user-snap"); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, img, 6<<20, 64<<10) // after the snapshot: not copied
	r, err = h.source.Run(ctx, Job{TransferID: "e2-" + name, Pool: h.pool, Image: name, DestImage: name + "-u", Snapshot: "user-snap", Ephemeral: true}, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode != ModeFull || r.Snapshot != "" || r.SourceSnapshot != "user-snap" || len(r.Removed) != 0 {
		t.Errorf("ephemeral result with a user snapshot %+v", r)
	}
	h.checkEphemeralEnd(name, name+"-u", h.pool+"/"+name+"@user-snap", []string{"user-snap"})

	// Not ephemeral: the snapshot stays on both sides, the destination
	// records its base, as always.
	r, err = h.source.Run(ctx, Job{TransferID: "n1-" + name, Pool: h.pool, Image: name, DestImage: name + "-n"}, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	want := SnapshotPrefix + "n1-" + name
	if r.Snapshot != want || r.Ephemeral || len(r.Removed) != 0 {
		t.Errorf("normal result %+v", r)
	}
	if a, b := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+name+"@"+want), testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name+"-n@"+want); a != b {
		t.Errorf("normal copy: source %s, destination %s", a, b)
	}
	if s := testenv.Snapshots(t, h.srcConf, h.pool+"/"+name); !slices.Equal(s, []string{"user-snap", want}) {
		t.Errorf("source snapshots after a normal transfer %v", s)
	}
	if s := testenv.Snapshots(t, h.dstConf, h.pool+"/"+name+"-n"); !slices.Equal(s, []string{want}) {
		t.Errorf("destination snapshots after a normal transfer %v", s)
	}
	if md := metadataOf(t, h.dst, h.pool, name+"-n"); md[MetaBase] != want {
		t.Errorf("destination base %q, want %s", md[MetaBase], want)
	}

	// Ephemeral into that image again (auto: a full copy although a base
	// exists): the destination's old Ferry snapshot and base go too.
	writeRandom(t, img, 2<<20, 64<<10)
	id = "e3-" + name
	r, err = h.source.Run(ctx, Job{TransferID: id, Pool: h.pool, Image: name, DestImage: name + "-n", Mode: ModeAuto, Ephemeral: true}, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode != ModeFull || r.Base != "" || r.Snapshot != "" || !slices.Equal(r.DestRemoved, []string{want}) ||
		!slices.Equal(r.Removed, []string{SnapshotPrefix + id}) {
		t.Errorf("ephemeral over a base %+v", r)
	}
	// The source's snapshot of the earlier, normal transfer is not this
	// transfer's: it stays (it may be another destination's base).
	h.checkEphemeralEnd(name, name+"-n", h.pool+"/"+name, []string{"user-snap", want})
}

// An interrupted ephemeral transfer resumes from the destination's
// checkpoint and still ends without snapshots.
func TestEphemeralResume(t *testing.T) {
	const size = 64 << 20
	h, c := newCutHarness(t, 24<<20)
	name := uniq("xfer-eph-resume")
	img := h.newImage(name, size)
	writeRandom(t, img, 0, size)
	job := Job{TransferID: "er-" + name, Pool: h.pool, Image: name, Ephemeral: true}
	first := h.cut(c, job, size/2)
	// Until it completes, the copy keeps its source snapshot (the retry
	// copies the same data).
	if s := testenv.Snapshots(t, h.srcConf, h.pool+"/"+name); !slices.Equal(s, []string{SnapshotPrefix + job.TransferID}) {
		t.Fatalf("source snapshots of the interrupted transfer %v", s)
	}
	time.Sleep(1500 * time.Millisecond) // let the destination notice and save

	r, err := h.source.Run(ctxT(t), job, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Resumed || r.Stream.SkippedChunks == 0 || r.Snapshot != "" {
		t.Errorf("second run did not resume: %+v", r)
	}
	t.Logf("interrupted at %d MiB; second run sent %d MiB", first>>20, r.Stream.BytesSent>>20)
	h.checkEphemeralEnd(name, name, h.pool+"/"+name, nil)
}

// oldDest is a destination agent that predates ephemeral transfers: it
// ignores the field and does not echo it.
type oldDest struct{ *Dest }

func (o oldDest) Prepare(ctx context.Context, req PrepareRequest) (PrepareResponse, error) {
	req.Ephemeral = false
	resp, err := o.Dest.Prepare(ctx, req)
	resp.Ephemeral = false
	return resp, err
}

// An ephemeral transfer is not sent to a destination that would keep its
// snapshot; the same transfer then runs once the destination is upgraded.
func TestEphemeralRefusesOldDestination(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	name := uniq("xfer-eph-old")
	img := h.newImage(name, 8<<20)
	writeRandom(t, img, 0, 8<<20)
	job := Job{TransferID: "eo-" + name, Pool: h.pool, Image: name, Ephemeral: true}
	_, err := h.source.Run(ctx, job, oldDest{h.dest})
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "does not support ephemeral") {
		t.Fatalf("err = %v", err)
	}
	r, err := h.source.Run(ctx, job, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	if r.Snapshot != "" || r.Mode != ModeFull {
		t.Errorf("result %+v", r)
	}
	h.checkEphemeralEnd(name, name, h.pool+"/"+name, nil)
}
