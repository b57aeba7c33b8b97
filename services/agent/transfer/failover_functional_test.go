//go:build functional

package transfer

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/stream"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// reverse is the harness the other way round: a destination in RegionOne
// (RegionOne's state key, a data port with agent-one's certificate) and a
// source in RegionTwo (RegionTwo's state key): the cycles after a
// failover.
type reverse struct {
	dest   *Dest
	source *Source
}

func (h *harness) reverse() *reverse {
	t := h.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ca := filepath.Join(h.dir, "ca.crt")
	serverTLS, err := stream.ServerTLSConfig(ca, filepath.Join(h.dir, "agent-one.crt"), filepath.Join(h.dir, "agent-one.key"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	server, err := stream.NewServer(stream.ServerConfig{TLSConfig: serverTLS, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go server.Serve(ctx, ln)
	t.Cleanup(func() { server.Close(context.Background()) })
	r := &reverse{dest: NewDest(DestConfig{Connect: Fixed(h.src), Server: server, Pools: []string{h.pool},
		Endpoint: ln.Addr().String(), ServerName: "agent-one", Sealer: h.srcSealer, Log: log})}
	t.Cleanup(r.dest.Close)
	r.source = NewSource(Fixed(h.dst), []string{h.pool}, Options{Streams: 4, ChunkSize: 1 << 20, Sealer: h.dstSealer,
		ClientTLS: func(name string) (*tls.Config, error) {
			return stream.ClientTLSConfig(ca, filepath.Join(h.dir, "agent-two.crt"), filepath.Join(h.dir, "agent-two.key"), name)
		}}, log)
	return r
}

// write writes length random bytes at off into pool/name of c.
func write(t *testing.T, c *rbd.Cluster, pool, name string, off, length int64) {
	t.Helper()
	img, err := c.OpenImage(context.Background(), pool, name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	writeRandom(t, img, off, length)
}

func peerOf(p rpc.PromoteReply) rpc.PeerImage {
	return rpc.PeerImage{FSID: p.FSID, ImageID: p.ImageID, Name: p.Name, SnapID: p.SnapID, Digest: p.Digest}
}

// Failover then failback with the agent primitives: A→B cycles, B
// promoted at the newest point and A demoted to it; a cycle B→A is
// incremental from that point and moves what was written on B since; then
// A promoted at that cycle's point and B demoted, and a cycle A→B is
// incremental again. Each side equals the other at the end.
func TestFailoverAndFailback(t *testing.T) {
	h := newHarness(t, Options{})
	rev := h.reverse()
	ctx := ctxT(t)
	r := newReplication(h, 16<<20)
	writeRandom(t, r.img, 0, 2<<20)
	c1 := r.cycle(ctx)
	writeRandom(t, r.img, 5<<20, 1<<20)
	c2 := r.cycle(ctx, c1.Snapshot)
	r.closeImg() // the test no longer writes A behind the agents
	p := c2.Snapshot

	var q string
	t.Run("failover", func(t *testing.T) {
		prom, err := h.dest.Promote(ctx, rpc.PromoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.replica, Point: p})
		if err != nil {
			t.Fatal(err)
		}
		if prom.RolledBack || prom.Name != h.pool+"/"+r.replica || prom.FSID != h.dst.FSID() || prom.Digest != c2.Digest || prom.Size != 16<<20 {
			t.Errorf("promote: %+v (cycle 2 digest %s)", prom, c2.Digest)
		}
		dem, err := rev.dest.Demote(ctx, rpc.DemoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.name, Point: p, Peer: peerOf(prom)})
		if err != nil {
			t.Fatal(err)
		}
		if dem.RolledBack || dem.Preserved != "" || dem.SnapID == 0 {
			t.Errorf("demote: %+v", dem)
		}
		// Written on B, the primary now, then a cycle B→A. (RBD's diff
		// reports an object created since the base from its start: 1 MiB
		// written at 9 MiB is listed as 8..10 MiB, hence up to 2 MiB.)
		write(t, h.dst, h.pool, r.replica, 9<<20, 1<<20)
		res, err := rev.source.Run(ctx, Job{TransferID: uniq("c"), Epoch: 1, Pool: h.pool, Image: r.replica, DestImage: r.name,
			ReplicationID: r.id}, rev.dest)
		if err != nil {
			t.Fatal(err)
		}
		if res.Mode != ModeIncremental || res.Base != p || res.BytesDone < 1<<20 || res.BytesDone > 2<<20 {
			t.Errorf("cycle B→A: mode %s base %s bytes %d, want incremental from %s, about 1 MiB", res.Mode, res.Base, res.BytesDone, p)
		}
		a := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name)
		if b := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica); a != b {
			t.Errorf("A's head sha256 %s, B's %s", a, b)
		}
		if b := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica+"@"+res.Snapshot); a != b {
			t.Errorf("A's head sha256 %s, B's point %s", a, b)
		}
		t.Logf("failover: cycle B→A moved %d bytes for 1 MiB written", res.BytesDone)
		q = res.Snapshot
	})
	if q == "" {
		t.FailNow()
	}
	t.Run("failback", func(t *testing.T) {
		prom, err := rev.dest.Promote(ctx, rpc.PromoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.name, Point: q})
		if err != nil {
			t.Fatal(err)
		}
		if prom.RolledBack || prom.FSID != h.src.FSID() || prom.Name != h.pool+"/"+r.name {
			t.Errorf("promote A: %+v", prom)
		}
		dem, err := h.dest.Demote(ctx, rpc.DemoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.replica, Point: q, Peer: peerOf(prom)})
		if err != nil {
			t.Fatal(err)
		}
		if dem.RolledBack || dem.Preserved != "" {
			t.Errorf("demote B: %+v", dem)
		}
		if _, ok := metadataOf(t, h.dst, h.pool, r.replica)[MetaPrimary]; ok {
			t.Error("B keeps its primary marker")
		}
		write(t, h.src, h.pool, r.name, 12<<20, 512<<10)
		res, err := h.source.Run(ctx, Job{TransferID: uniq("c"), Epoch: 1, Pool: h.pool, Image: r.name, DestImage: r.replica,
			ReplicationID: r.id}, h.dest)
		if err != nil {
			t.Fatal(err)
		}
		if res.Mode != ModeIncremental || res.Base != q || res.BytesDone < 512<<10 || res.BytesDone > 1<<20 {
			t.Errorf("cycle A→B: mode %s base %s bytes %d, want incremental from %s, about 512 KiB", res.Mode, res.Base, res.BytesDone, q)
		}
		a := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name+"@"+res.Snapshot)
		if b := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica); a != b {
			t.Errorf("A's point sha256 %s, B's head %s", a, b)
		}
		t.Logf("failback: cycle A→B moved %d bytes for 512 KiB written", res.BytesDone)
	})
}

// A demote onto a head written behind Ferry's back refuses without a
// preserve name, changing nothing; with one, the head is copied aside
// (equal to the head before), the image rolled back to the point, and a
// repeat answers the same.
func TestDemotePreservesDivergentHead(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	r := newReplication(h, 16<<20)
	writeRandom(t, r.img, 0, 3<<20)
	c1 := r.cycle(ctx)
	p := c1.Snapshot
	prom, err := h.dest.Promote(ctx, rpc.PromoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.replica, Point: p})
	if err != nil {
		t.Fatal(err)
	}
	// Written on A while it was "down".
	writeRandom(t, r.img, 1<<20, 2<<20)
	writeRandom(t, r.img, 14<<20, 1<<20)
	r.closeImg()
	head := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name)
	mdBefore := metadataOf(t, h.src, h.pool, r.name)
	rev := h.reverse()
	req := rpc.DemoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.name, Point: p, Peer: peerOf(prom)}

	if _, err := rev.dest.Demote(ctx, req); !errors.Is(err, rpc.ErrConflict) {
		t.Fatalf("demote of a divergent head without preserve_as: %v", err)
	}
	if sha := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name); sha != head {
		t.Fatal("the refused demote changed the head")
	}
	if md := metadataOf(t, h.src, h.pool, r.name); !mapsEqual(md, mdBefore) {
		t.Errorf("the refused demote changed the metadata: %v, was %v", md, mdBefore)
	}

	// preserve_as naming an image that is not Ferry's copy: refused.
	foreign := "ferry-foreign-" + r.id
	if err := h.src.CreateImage(ctx, h.pool, foreign, rbd.ImageSpec{Size: 1 << 20, Order: 22}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeWithClones(t, h.src, h.pool, foreign) })
	req.PreserveAs = foreign
	if _, err := rev.dest.Demote(ctx, req); !errors.Is(err, rpc.ErrConflict) {
		t.Fatalf("demote preserving into another image: %v", err)
	}
	if sha := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name); sha != head {
		t.Fatal("the refused demote changed the head")
	}

	req.PreserveAs = "ferry-preserved-" + r.id
	t.Cleanup(func() { removeWithClones(t, h.src, h.pool, req.PreserveAs) })
	dem, err := rev.dest.Demote(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if dem.Preserved != req.PreserveAs || !dem.RolledBack || dem.PreservedBytes < 3<<20 || dem.PreservedBytes > 16<<20 {
		t.Errorf("demote: %+v", dem)
	}
	if sha := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+req.PreserveAs); sha != head {
		t.Errorf("preserved copy sha256 %s, the head was %s", sha, head)
	}
	if sha := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name); sha != r.sha[p] {
		t.Errorf("A's head sha256 %s, the point %s", sha, r.sha[p])
	}
	if snaps := snapshotsOf(t, h.src, h.pool, r.name); !slices.Equal(snaps, []string{p}) {
		t.Errorf("A's snapshots %v, want [%s] (no temporary snapshot left)", snaps, p)
	}
	if md := metadataOf(t, h.src, h.pool, req.PreserveAs); md[MetaOwner] != OwnerValue || md[MetaPreservedFrom] != h.pool+"/"+r.name {
		t.Errorf("preserved copy metadata %v", md)
	}
	if out, err := exec.Command("rbd", "-c", h.srcConf, "info", h.pool+"/"+req.PreserveAs).CombinedOutput(); err != nil || strings.Contains(string(out), "parent:") {
		t.Errorf("rbd info of the copy: %s %v", out, err)
	}
	md := metadataOf(t, h.src, h.pool, r.name)
	if md[MetaSourceImageID] != prom.ImageID || md[MetaReplication] != r.id || md[MetaBase] != p {
		t.Errorf("A is not adopted as B's destination: %v", md)
	}
	again, err := rev.dest.Demote(ctx, req)
	if err != nil || again != dem {
		t.Errorf("repeated demote: %+v, %v; want %+v", again, err, dem)
	}
	if sha := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+req.PreserveAs); sha != head {
		t.Errorf("the repeat changed the preserved copy")
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// A promoted image refuses a prepare and the destination clean-ups;
// promote and demote are idempotent (a repeat rolls nothing back, even
// after writes on the primary); a wrong replication, a missing snapshot
// and a snapshot that is not a point are refused.
func TestPromoteDemoteSafety(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	r := newReplication(h, 8<<20)
	writeRandom(t, r.img, 0, 1<<20)
	c1 := r.cycle(ctx)
	writeRandom(t, r.img, 2<<20, 1<<20)
	c2 := r.cycle(ctx, c1.Snapshot)
	p := c2.Snapshot
	preq := rpc.PromoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.replica, Point: p}

	// Refusals first: nothing changes.
	for _, c := range []struct {
		name string
		mod  func(*rpc.PromoteRequest)
		want error
	}{
		{"wrong replication", func(q *rpc.PromoteRequest) { q.ReplicationID = "other" }, rpc.ErrConflict},
		{"missing snapshot", func(q *rpc.PromoteRequest) { q.Point = "ferry-nope" }, rpc.ErrNotFound},
		{"missing image", func(q *rpc.PromoteRequest) { q.Image = "ferry-replica-nope" }, rpc.ErrNotFound},
	} {
		q := preq
		c.mod(&q)
		if _, err := h.dest.Promote(ctx, q); !errors.Is(err, c.want) {
			t.Errorf("promote, %s: %v, want %v", c.name, err, c.want)
		}
	}
	// A snapshot that is not a point.
	img, err := h.dst.OpenImage(ctx, h.pool, r.replica, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.CreateSnapshot("ferry-manual"); err != nil {
		t.Fatal(err)
	}
	img.Close()
	q := preq
	q.Point = "ferry-manual"
	if _, err := h.dest.Promote(ctx, q); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("promote of a snapshot that is not a point: %v", err)
	}
	if _, ok := metadataOf(t, h.dst, h.pool, r.replica)[MetaPrimary]; ok {
		t.Fatal("a refused promote left a marker")
	}

	prom, err := h.dest.Promote(ctx, preq)
	if err != nil {
		t.Fatal(err)
	}
	// Written on the primary: a repeat does not roll it back.
	write(t, h.dst, h.pool, r.replica, 4<<20, 1<<20)
	head := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica)
	if again, err := h.dest.Promote(ctx, preq); err != nil || again != prom {
		t.Errorf("repeated promote: %+v, %v; want %+v", again, err, prom)
	}
	if sha := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica); sha != head {
		t.Error("the repeated promote rolled the primary back")
	}
	q = preq
	q.Point = c1.Snapshot
	if _, err := h.dest.Promote(ctx, q); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("promote at another point without force: %v", err)
	}

	// A cycle into the primary is refused at the prepare; so are the
	// destination clean-ups.
	if _, err := h.source.Run(ctx, r.job(c2.Snapshot), h.dest); !errors.Is(err, ErrConflict) {
		t.Errorf("a cycle into the primary: %v", err)
	}
	for _, remove := range []bool{true, false} {
		if _, err := h.dest.CleanupReplica(ctx, rpc.ReplicationCleanup{ReplicationID: r.id, Side: rpc.CleanupSideDestination,
			Pool: h.pool, Image: r.replica, RemoveImage: remove}); !errors.Is(err, ErrConflict) {
			t.Errorf("destination clean-up (remove %v) of the primary: %v", remove, err)
		}
	}
	if _, err := h.dest.Cleanup(ctx, "c-any", h.pool, r.replica); !errors.Is(err, ErrConflict) {
		t.Errorf("transfer clean-up of the primary: %v", err)
	}
	if sha := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica); sha != head {
		t.Error("the primary changed")
	}
	// The refused cycle's source snapshot goes (as the garbage collector would).
	srcSnaps := snapshotsOf(t, h.src, h.pool, r.name)
	for _, s := range srcSnaps {
		if s != p {
			if _, err := h.source.Discard(ctx, Job{TransferID: s[len(SnapshotPrefix):], Pool: h.pool, Image: r.name}); err != nil {
				t.Error(err)
			}
		}
	}

	// Demote: refusals, then a repeat answers the same.
	r.closeImg()
	rev := h.reverse()
	dreq := rpc.DemoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.name, Point: p, Peer: peerOf(prom)}
	bad := dreq
	bad.Point = "ferry-nope"
	if _, err := rev.dest.Demote(ctx, bad); !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("demote to a missing snapshot: %v", err)
	}
	img, err = h.src.OpenImage(ctx, h.pool, r.name, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.CreateSnapshot("manual"); err != nil {
		t.Fatal(err)
	}
	img.Close()
	bad.Point = "manual"
	if _, err := rev.dest.Demote(ctx, bad); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("demote to a snapshot Ferry did not take: %v", err)
	}
	dem, err := rev.dest.Demote(ctx, dreq)
	if err != nil {
		t.Fatal(err)
	}
	md := metadataOf(t, h.src, h.pool, r.name)
	again, err := rev.dest.Demote(ctx, dreq)
	if err != nil || again != dem || !mapsEqual(metadataOf(t, h.src, h.pool, r.name), md) {
		t.Errorf("repeated demote: %+v, %v; want %+v, metadata unchanged", again, err, dem)
	}
	bad = dreq
	bad.ReplicationID = "other"
	if _, err := rev.dest.Demote(ctx, bad); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("demote for another replication: %v", err)
	}

	// Forced to an older point: the primary is rolled back to it (the
	// newer point stays as a snapshot) and marked there.
	q = preq
	q.Point, q.Force = c1.Snapshot, true
	forced, err := h.dest.Promote(ctx, q)
	if err != nil || !forced.RolledBack || forced.Digest != c1.Digest {
		t.Fatalf("forced promote to %s: %+v, %v", c1.Snapshot, forced, err)
	}
	if sha := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica); sha != r.sha[c1.Snapshot] {
		t.Errorf("the forced promote left the head at sha256 %s, the point is %s", sha, r.sha[c1.Snapshot])
	}
	if snaps := snapshotsOf(t, h.dst, h.pool, r.replica); !slices.Contains(snaps, p) {
		t.Errorf("the newer point %s is gone: %v", p, snaps)
	}
	q.Force = false
	if again, err := h.dest.Promote(ctx, q); err != nil || again != forced {
		t.Errorf("repeat of the forced promote: %+v, %v; want %+v", again, err, forced)
	}
}

// A demote interrupted after the clone of the head (not yet flattened,
// the image not rolled back) resumes: the copy is flattened, verified
// and kept, the temporary snapshot goes, then the rollback.
func TestDemoteResumesAnInterruptedPreserve(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	r := newReplication(h, 8<<20)
	writeRandom(t, r.img, 0, 2<<20)
	p := r.cycle(ctx).Snapshot
	prom, err := h.dest.Promote(ctx, rpc.PromoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.replica, Point: p})
	if err != nil {
		t.Fatal(err)
	}
	writeRandom(t, r.img, 4<<20, 1<<20)
	req := rpc.DemoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.name, Point: p, Peer: peerOf(prom), PreserveAs: "ferry-preserved-" + r.id}
	t.Cleanup(func() { removeWithClones(t, h.src, h.pool, req.PreserveAs) })
	// What the interrupted run left: the temporary snapshot, protected,
	// and its clone marked as Ferry's copy.
	tmp := preserveSnapshot(req.PreserveAs)
	if err := r.img.CreateSnapshot(tmp); err != nil {
		t.Fatal(err)
	}
	if err := r.img.ProtectSnapshot(tmp); err != nil {
		t.Fatal(err)
	}
	info, err := r.img.Info()
	if err != nil {
		t.Fatal(err)
	}
	r.closeImg()
	head := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name)
	if err := h.src.Clone(ctx, h.pool, r.name, tmp, h.pool, req.PreserveAs); err != nil {
		t.Fatal(err)
	}
	c, err := h.src.OpenImage(ctx, h.pool, req.PreserveAs, "", false)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{MetaOwner: OwnerValue, MetaPreservedFrom: h.pool + "/" + r.name, MetaPreservedFromID: info.ID, MetaReplication: r.id} {
		if err := c.SetMetadata(k, v); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()

	dem, err := h.reverse().dest.Demote(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if dem.Preserved != req.PreserveAs || !dem.RolledBack {
		t.Errorf("demote: %+v", dem)
	}
	if sha := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+req.PreserveAs); sha != head {
		t.Errorf("preserved copy sha256 %s, the head was %s", sha, head)
	}
	if out, err := exec.Command("rbd", "-c", h.srcConf, "info", h.pool+"/"+req.PreserveAs).CombinedOutput(); err != nil || strings.Contains(string(out), "parent:") {
		t.Errorf("the copy is not flattened: %s %v", out, err)
	}
	if snaps := snapshotsOf(t, h.src, h.pool, r.name); !slices.Equal(snaps, []string{p}) {
		t.Errorf("A's snapshots %v, want [%s]", snaps, p)
	}
	if sha := testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name); sha != r.sha[p] {
		t.Errorf("A's head sha256 %s, the point %s", sha, r.sha[p])
	}
}

// Failback's rename: the replica, named volume-<X> while Cinder managed
// it (here renamed as manage-existing does), promoted, is refused while
// primary; once demoted to A it gets its replica name back: RBD id,
// snapshots and sealed records kept (the next cycle A→B is incremental
// from the common point). Renaming onto another image, for another
// replication, or from nothing is refused and changes nothing; a repeat
// answers the same.
func TestRenameDemotedReplica(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	r := newReplication(h, 8<<20)
	writeRandom(t, r.img, 0, 2<<20)
	c1 := r.cycle(ctx)
	p := c1.Snapshot
	info, err := r.img.Info()
	if err != nil {
		t.Fatal(err)
	}
	aPoint := snapRef(t, r.img, p)
	volX := "volume-" + r.id
	t.Cleanup(func() { removeWithClones(t, h.dst, h.pool, volX) })
	if err := h.dst.RenameImage(ctx, h.pool, r.replica, volX); err != nil {
		t.Fatal(err)
	}
	prom, err := h.dest.Promote(ctx, rpc.PromoteRequest{ReplicationID: r.id, Pool: h.pool, Image: volX, Point: p})
	if err != nil {
		t.Fatal(err)
	}
	req := rpc.RenameRequest{ReplicationID: r.id, Pool: h.pool, Image: volX, To: r.replica}
	if _, err := h.dest.Rename(ctx, req); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("rename of the primary: %v, want conflict", err)
	}
	if _, err := h.dest.Demote(ctx, rpc.DemoteRequest{ReplicationID: r.id, Pool: h.pool, Image: volX, Point: p,
		Peer: rpc.PeerImage{FSID: h.src.FSID(), ImageID: info.ID, Name: h.pool + "/" + r.name, SnapID: aPoint.ID, Digest: c1.Digest}}); err != nil {
		t.Fatal(err)
	}
	md := metadataOf(t, h.dst, h.pool, volX)

	// Refusals: nothing changes.
	foreign := "ferry-foreign-" + r.id
	if err := h.dst.CreateImage(ctx, h.pool, foreign, rbd.ImageSpec{Size: 1 << 20, Order: 22}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeWithClones(t, h.dst, h.pool, foreign) })
	for _, c := range []struct {
		name string
		mod  func(*rpc.RenameRequest)
		want error
	}{
		{"onto another image", func(q *rpc.RenameRequest) { q.To = foreign }, rpc.ErrConflict},
		{"for another replication", func(q *rpc.RenameRequest) { q.ReplicationID = "other" }, rpc.ErrConflict},
		{"neither image", func(q *rpc.RenameRequest) { q.Image = "volume-nope-" + r.id }, rpc.ErrNotFound},
		{"a foreign image", func(q *rpc.RenameRequest) { q.Image, q.To = foreign, "ferry-replica-nope-"+r.id }, rpc.ErrConflict},
		{"a pool not allowed", func(q *rpc.RenameRequest) { q.Pool = "other-pool" }, ErrPoolNotAllowed},
	} {
		q := req
		c.mod(&q)
		if _, err := h.dest.Rename(ctx, q); !errors.Is(err, c.want) {
			t.Errorf("rename %s: %v, want %v", c.name, err, c.want)
		}
	}
	if got := metadataOf(t, h.dst, h.pool, volX); !mapsEqual(got, md) {
		t.Errorf("a refused rename changed the metadata: %v, was %v", got, md)
	}
	for _, name := range []string{r.replica, "ferry-replica-nope-" + r.id} {
		if _, err := h.dst.OpenImage(ctx, h.pool, name, "", true); !errors.Is(err, rbd.ErrNotFound) {
			t.Errorf("a refused rename made %s: %v", name, err)
		}
	}

	rep, err := h.dest.Rename(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Name != h.pool+"/"+r.replica {
		t.Errorf("rename reply %+v", rep)
	}
	if _, err := h.dst.OpenImage(ctx, h.pool, volX, "", true); !errors.Is(err, rbd.ErrNotFound) {
		t.Errorf("%s after the rename: %v", volX, err)
	}
	img, err := h.dst.OpenImage(ctx, h.pool, r.replica, "", true)
	if err != nil {
		t.Fatal(err)
	}
	ri, err := img.Info()
	img.Close()
	if err != nil || ri.ID != prom.ImageID {
		t.Errorf("renamed image id %q (%v), the promoted one was %q", ri.ID, err, prom.ImageID)
	}
	if got := metadataOf(t, h.dst, h.pool, r.replica); !mapsEqual(got, md) {
		t.Errorf("the rename changed the metadata: %v, was %v", got, md)
	}
	if again, err := h.dest.Rename(ctx, req); err != nil || again != rep {
		t.Errorf("repeated rename: %+v, %v; want %+v", again, err, rep)
	}
	bad := req
	bad.ReplicationID = "other"
	if _, err := h.dest.Rename(ctx, bad); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("repeat for another replication: %v, want conflict", err)
	}

	// The replica is the destination again under its name: the next
	// cycle is incremental from the common point.
	writeRandom(t, r.img, 4<<20, 1<<20)
	res := r.cycle(ctx)
	if res.Mode != ModeIncremental || res.Base != p {
		t.Errorf("cycle after the rename: mode %s base %s, want incremental from %s", res.Mode, res.Base, p)
	}
	r.matches(res.Snapshot)
}

// lostAbort is a destination whose aborts never arrive (the source's
// region went down mid-cycle).
type lostAbort struct{ Preparer }

func (lostAbort) Abort(context.Context, AbortRequest) error { return nil }

// A source gone mid-cycle leaves its session open on the replica: a
// planned promote waits for it (temporary conflict), a forced one (an
// unplanned failover) ends it, rolls the cycle's partial writes back and
// promotes the point.
func TestForcedPromoteEndsAnOrphanSession(t *testing.T) {
	h, c := newCutHarness(t, 8<<20)
	ctx := ctxT(t)
	r := newReplication(h, 32<<20)
	writeRandom(t, r.img, 0, 1<<20)
	c1 := r.cycle(ctx)
	writeRandom(t, r.img, 0, 16<<20)
	cctx, cancel := context.WithCancel(ctx)
	c.at.Store(4 << 20)
	c.cancel.Store(&cancel)
	_, err := h.source.Run(cctx, r.job(c1.Snapshot), lostAbort{h.dest})
	c.cancel.Store(nil)
	cancel()
	if err == nil {
		t.Fatal("the interrupted cycle succeeded")
	}
	if h.dest.Sessions() != 1 {
		t.Fatalf("the cut cycle left %d sessions open, want 1", h.dest.Sessions())
	}
	preq := rpc.PromoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.replica, Point: c1.Snapshot}
	if _, err := h.dest.Promote(ctx, preq); !errors.Is(err, rpc.ErrConflict) || !rpc.IsTemporary(err) {
		t.Fatalf("a planned promote while the session is open: %v, want a temporary conflict", err)
	}
	preq.Force = true
	rep, err := h.dest.Promote(ctx, preq)
	if err != nil {
		t.Fatalf("forced promote: %v", err)
	}
	if h.dest.Sessions() != 0 {
		t.Errorf("the orphan session is still open after the forced promote")
	}
	if !rep.RolledBack {
		t.Errorf("the cut cycle's partial writes were not rolled back: %+v", rep)
	}
	if got := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+r.replica); got != r.sha[c1.Snapshot] {
		t.Errorf("the promoted replica (sha256 %s) is not the point's data (%s)", got, r.sha[c1.Snapshot])
	}
}

// After a failover the promoted replica is the source, and it still holds
// the points it received as the destination. The source clean-up of the
// deleted replication, naming only the promoted point (what ferry-api
// knows of the reverse direction), removes those too, with their records;
// a snapshot the user took, another replication's point and a point
// recreated under its name (its record names the old id) stay, and so
// does a point a drill's clone holds, until the clone is gone. A repeat
// removes nothing more. On an image Cinder moved to the trash, the former
// points go as well, and the image from the trash.
func TestReplicationCleanupSourceAfterFailover(t *testing.T) {
	h := newHarness(t, Options{})
	rev := h.reverse()
	ctx := ctxT(t)
	// cycles runs n cycles of r, each retaining the points before it, and
	// promotes the replica at the newest.
	cycles := func(t *testing.T, r *replication, n int) []string {
		t.Helper()
		var points []string
		for i := range n {
			writeRandom(t, r.img, int64(i)<<20, 1<<20)
			points = append(points, r.cycle(ctx, points...).Snapshot)
		}
		r.matches(points...)
		return points
	}
	promote := func(t *testing.T, r *replication, point string) {
		t.Helper()
		if _, err := h.dest.Promote(ctx, rpc.PromoteRequest{ReplicationID: r.id, Pool: h.pool, Image: r.replica, Point: point}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("live", func(t *testing.T) {
		r := newReplication(h, 8<<20)
		points := cycles(t, r, 4)
		p := points[3]
		clone := "ferry-drill-" + r.id
		t.Cleanup(func() { h.dst.RemoveImage(context.Background(), h.pool, clone) })
		if _, err := h.dest.Drill(ctx, r.drill(points[1], clone)); err != nil {
			t.Fatal(err)
		}
		promote(t, r, p)

		// On B, the primary now: the user's snapshot, another
		// replication's point, and points[0] removed behind Ferry's back
		// and taken again under its name.
		img, err := h.dst.OpenImage(ctx, h.pool, r.replica, "", false)
		if err != nil {
			t.Fatal(err)
		}
		info, err := img.Info()
		if err != nil {
			t.Fatal(err)
		}
		other := SnapshotPrefix + uniq("c-other")
		for _, n := range []string{"user-snap", other} {
			if err := img.CreateSnapshot(n); err != nil {
				t.Fatal(err)
			}
		}
		rec, err := h.dstSealer.Seal(kindSnapshot, info.ID, snapRecord{Snapshot: other, SnapID: snapRef(t, img, other).ID,
			TransferID: "c-other", ReplicationID: "r-other"})
		if err != nil {
			t.Fatal(err)
		}
		if err := img.SetMetadata(MetaSnapRecordPrefix+other, rec); err != nil {
			t.Fatal(err)
		}
		if err := img.RemoveSnapshot(points[0]); err != nil {
			t.Fatal(err)
		}
		if err := img.CreateSnapshot(points[0]); err != nil {
			t.Fatal(err)
		}
		img.Close()

		res, err := rev.source.CleanupReplication(ctx, r.id, h.pool, r.replica, []string{p})
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{p, points[2]}; !slices.Equal(res.Removed, want) || res.Trashed {
			t.Errorf("clean-up %+v, want %v removed", res, want)
		}
		if got, want := snapshotsOf(t, h.dst, h.pool, r.replica), []string{points[1], "user-snap", other, points[0]}; !slices.Equal(got, want) {
			t.Errorf("B's snapshots %v, want %v", got, want)
		}
		md := metadataOf(t, h.dst, h.pool, r.replica)
		for _, n := range []string{p, points[2]} {
			if _, ok := md[MetaSnapRecordPrefix+n]; ok {
				t.Errorf("the record of the removed point %s stays", n)
			}
			if _, ok := md[MetaSourceSnapPrefix+n]; ok {
				t.Errorf("the source tag of the removed point %s stays", n)
			}
		}
		for _, n := range []string{points[1], other, points[0]} {
			if _, ok := md[MetaSnapRecordPrefix+n]; !ok {
				t.Errorf("the record of %s, which stays, is gone", n)
			}
		}

		// The drill's clone gone, its point goes; then nothing more.
		if err := h.dst.RemoveImage(ctx, h.pool, clone); err != nil {
			t.Fatal(err)
		}
		again, err := rev.source.CleanupReplication(ctx, r.id, h.pool, r.replica, []string{p})
		if err != nil || !slices.Equal(again.Removed, []string{points[1]}) {
			t.Errorf("clean-up once the clone is gone: %+v, %v; want [%s] removed", again, err, points[1])
		}
		if _, ok := metadataOf(t, h.dst, h.pool, r.replica)[MetaSnapRecordPrefix+points[1]]; ok {
			t.Errorf("the record of the removed point %s stays", points[1])
		}
		third, err := rev.source.CleanupReplication(ctx, r.id, h.pool, r.replica, []string{p})
		if err != nil || len(third.Removed) != 0 {
			t.Errorf("repeated clean-up: %+v, %v; want nothing removed", third, err)
		}
		if got, want := snapshotsOf(t, h.dst, h.pool, r.replica), []string{"user-snap", other, points[0]}; !slices.Equal(got, want) {
			t.Errorf("B's snapshots %v, want %v", got, want)
		}
	})

	t.Run("trash", func(t *testing.T) {
		r := newReplication(h, 8<<20)
		t.Cleanup(func() { purgeTrash(t, h.dst, h.pool, r.replica) })
		points := cycles(t, r, 3)
		p := points[2]
		promote(t, r, p)
		if out, err := exec.Command("rbd", "-c", h.dstConf, "trash", "mv", h.pool+"/"+r.replica).CombinedOutput(); err != nil {
			t.Fatalf("rbd trash mv: %v: %s", err, out)
		}
		res, err := rev.source.CleanupReplication(ctx, r.id, h.pool, r.replica, []string{p})
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{p, points[0], points[1]}; !res.Trashed || !res.TrashRemoved || !slices.Equal(res.Removed, want) {
			t.Errorf("clean-up %+v, want %v removed and the image out of the trash", res, want)
		}
		if trashed, err := h.dst.TrashLookup(ctx, h.pool, r.replica); err != nil || len(trashed) != 0 {
			t.Errorf("trash holds %v (%v), want nothing named %s", trashed, err, r.replica)
		}
		again, err := rev.source.CleanupReplication(ctx, r.id, h.pool, r.replica, []string{p})
		if err != nil || len(again.Removed) != 0 || again.TrashRemoved {
			t.Errorf("repeated clean-up %+v, %v", again, err)
		}
	})
}
