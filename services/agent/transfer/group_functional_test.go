//go:build functional

package transfer

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// A consistency group of three members: a group snapshot takes each
// member's ferry-<its transfer id> at one instant, tagged as that
// transfer's; each member's transfer (an ordinary cycle) then copies
// exactly that snapshot, written after it or not. A repeat answers the
// same snapshots (a tag a run re-sealed since is kept); the next group
// cycle is incremental from the first for every member and removes the
// first's source snapshots with their tags and markers; a replay of the
// first group snapshot then is refused and leaves nothing. A group
// snapshot that lost a member's snapshot is not retaken.
func TestGroupSnapshotThenCycles(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	members := []*replication{newReplication(h, 16<<20), newReplication(h, 8<<20), newReplication(h, 12<<20)}
	for i, r := range members {
		writeRandom(t, r.img, int64(i)<<20, 2<<20)
	}
	group := uniq("g")
	request := func() rpc.GroupSnapshotRequest {
		req := rpc.GroupSnapshotRequest{GroupID: group, CycleID: uniq("gc")}
		for _, r := range members {
			req.Members = append(req.Members, rpc.GroupSnapshotMember{ReplicationID: r.id, TransferID: uniq("c"), Pool: h.pool, Image: r.name})
		}
		return req
	}
	// snapshot takes req's group snapshot and checks the answer and the
	// tags.
	snapshot := func(req rpc.GroupSnapshotRequest) rpc.GroupSnapshotReply {
		t.Helper()
		rep, err := h.source.GroupSnapshot(ctx, req)
		if err != nil {
			t.Fatalf("group snapshot of cycle %s: %v", req.CycleID, err)
		}
		if len(rep.Members) != len(req.Members) {
			t.Fatalf("group snapshot: %d members answered, want %d", len(rep.Members), len(req.Members))
		}
		for i, m := range req.Members {
			got := rep.Members[i]
			if got.TransferID != m.TransferID || got.Snapshot != SnapshotPrefix+m.TransferID || got.SnapID == 0 || got.SnapshotTime == nil {
				t.Errorf("member %d: %+v", i, got)
			}
			img, err := h.src.OpenImage(ctx, h.pool, m.Image, "", true)
			if err != nil {
				t.Fatal(err)
			}
			tag, ok, err := h.source.tagOf(img, got.Snapshot)
			img.Close()
			if err != nil || !ok || tag.TransferID != m.TransferID || tag.SnapID != got.SnapID {
				t.Errorf("member %d: tag %+v %v %v, want Ferry's of transfer %s", i, tag, ok, err, m.TransferID)
			}
		}
		return rep
	}
	// run runs each member's transfer of req; writes land on the sources
	// first, after the group snapshot.
	run := func(req rpc.GroupSnapshotRequest, rep rpc.GroupSnapshotReply, retain func(i int) []string) []Result {
		t.Helper()
		for i, r := range members {
			writeRandom(t, r.img, int64(8+i)<<19, 256<<10)
			r.sha[rep.Members[i].Snapshot] = testenv.ExportSHA(t, h.srcConf, h.pool+"/"+r.name+"@"+rep.Members[i].Snapshot)
		}
		var out []Result
		for i, r := range members {
			m := req.Members[i]
			res, err := h.source.Run(ctx, Job{TransferID: m.TransferID, Epoch: 1, Pool: h.pool, Image: r.name, DestImage: r.replica,
				ReplicationID: r.id, Retain: retain(i)}, h.dest)
			if err != nil {
				t.Fatalf("member %d's transfer %s: %v", i, m.TransferID, err)
			}
			if res.Snapshot != rep.Members[i].Snapshot || res.SourceSnapshot != res.Snapshot || !res.SnapshotTime.Equal(*rep.Members[i].SnapshotTime) {
				t.Errorf("member %d's transfer: %+v, want snapshot %s taken at %v", i, res, rep.Members[i].Snapshot, rep.Members[i].SnapshotTime)
			}
			img, err := h.src.OpenImage(ctx, h.pool, r.name, "", true)
			if err != nil {
				t.Fatal(err)
			}
			if ref := snapRef(t, img, res.Snapshot); ref.ID != rep.Members[i].SnapID {
				t.Errorf("member %d: %s has id %d, the group snapshot answered %d", i, res.Snapshot, ref.ID, rep.Members[i].SnapID)
			}
			img.Close()
			out = append(out, res)
		}
		return out
	}
	none := func(int) []string { return nil }

	req1 := request()
	rep1 := snapshot(req1)
	if again := snapshot(req1); !equalTaken(again, rep1) {
		t.Errorf("repeated group snapshot %+v, want %+v", again, rep1)
	}
	res1 := run(req1, rep1, none)
	for i, r := range members {
		if res1[i].Mode != ModeFull {
			t.Errorf("member %d, cycle 1: mode %s", i, res1[i].Mode)
		}
		r.matches(rep1.Members[i].Snapshot)
	}
	// Repeated once the transfers ran: the same snapshots.
	if again := snapshot(req1); !equalTaken(again, rep1) {
		t.Errorf("group snapshot repeated after its cycle %+v, want %+v", again, rep1)
	}

	req2 := request()
	rep2 := snapshot(req2)
	res2 := run(req2, rep2, func(i int) []string { return []string{rep1.Members[i].Snapshot} })
	for i, r := range members {
		s1, s2 := rep1.Members[i].Snapshot, rep2.Members[i].Snapshot
		if res2[i].Mode != ModeIncremental || res2[i].Base != s1 || !slices.Equal(res2[i].Removed, []string{s1}) {
			t.Errorf("member %d, cycle 2: mode %s base %s removed %v; want incremental from %s, which goes", i, res2[i].Mode, res2[i].Base, res2[i].Removed, s1)
		}
		r.matches(s1, s2)
		if snaps := snapshotsOf(t, h.src, h.pool, r.name); !slices.Equal(snaps, []string{s2}) {
			t.Errorf("member %d: source snapshots %v, want [%s]", i, snaps, s2)
		}
		md := metadataOf(t, h.src, h.pool, r.name)
		for _, k := range []string{MetaSourceSnapPrefix + s1, rbd.ConsistentKey(s1)} {
			if _, ok := md[k]; ok {
				t.Errorf("member %d: %s stays with its snapshot gone", i, k)
			}
		}
		if _, ok := md[rbd.ConsistentKey(s2)]; !ok {
			t.Errorf("member %d: the group snapshot's marker %s is missing", i, rbd.ConsistentKey(s2))
		}
	}
	// Repeated after its runs re-sealed the tags with their bases: the
	// same snapshots, the bases kept.
	if again := snapshot(req2); !equalTaken(again, rep2) {
		t.Errorf("group snapshot 2 repeated %+v, want %+v", again, rep2)
	}
	for i, r := range members {
		img, err := h.src.OpenImage(ctx, h.pool, r.name, "", true)
		if err != nil {
			t.Fatal(err)
		}
		tag, ok, err := h.source.tagOf(img, rep2.Members[i].Snapshot)
		img.Close()
		if err != nil || !ok || tag.Base != rep1.Members[i].Snapshot {
			t.Errorf("member %d: tag %+v %v %v after the repeat, want base %s", i, tag, ok, err, rep1.Members[i].Snapshot)
		}
	}

	// The first group snapshot replayed now that its cycle completed:
	// refused, nothing taken.
	if _, err := h.source.GroupSnapshot(ctx, req1); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("replayed group snapshot after completion: %v, want a conflict", err)
	}
	for i, r := range members {
		if snaps := snapshotsOf(t, h.src, h.pool, r.name); !slices.Equal(snaps, []string{rep2.Members[i].Snapshot}) {
			t.Errorf("member %d after the replay: source snapshots %v", i, snaps)
		}
		md := metadataOf(t, h.src, h.pool, r.name)
		for _, k := range []string{MetaSourceSnapPrefix + rep1.Members[i].Snapshot, rbd.ConsistentKey(rep1.Members[i].Snapshot)} {
			if _, ok := md[k]; ok {
				t.Errorf("member %d: the replay left %s", i, k)
			}
		}
	}

	// A third group snapshot loses a member's snapshot (its transfer
	// failed and was discarded): a repeat does not retake the set, the
	// others' snapshots stay as they were.
	req3 := request()
	rep3 := snapshot(req3)
	m := req3.Members[1]
	if gone, err := h.source.Discard(ctx, Job{TransferID: m.TransferID, Pool: m.Pool, Image: m.Image}); err != nil || gone != rep3.Members[1].Snapshot {
		t.Fatalf("discard of member 1: %q, %v", gone, err)
	}
	if _, err := h.source.GroupSnapshot(ctx, req3); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("repeat of a group snapshot that lost a member's: %v, want a conflict", err)
	}
	for i, r := range members {
		want := []string{rep2.Members[i].Snapshot, rep3.Members[i].Snapshot}
		if i == 1 {
			want = want[:1]
		}
		if snaps := snapshotsOf(t, h.src, h.pool, r.name); !slices.Equal(snaps, want) {
			t.Errorf("member %d: source snapshots %v, want %v", i, snaps, want)
		}
		if i != 1 {
			img, err := h.src.OpenImage(ctx, h.pool, r.name, "", true)
			if err != nil {
				t.Fatal(err)
			}
			if ref := snapRef(t, img, rep3.Members[i].Snapshot); ref.ID != rep3.Members[i].SnapID {
				t.Errorf("member %d: %s retaken (id %d, was %d)", i, ref.Name, ref.ID, rep3.Members[i].SnapID)
			}
			img.Close()
		}
	}
	if _, ok := metadataOf(t, h.src, h.pool, members[1].name)[rbd.ConsistentKey(rep3.Members[1].Snapshot)]; ok {
		t.Error("the discarded snapshot's marker stays")
	}
	for _, m := range req3.Members {
		if _, err := h.source.Discard(context.Background(), Job{TransferID: m.TransferID, Pool: m.Pool, Image: m.Image}); err != nil {
			t.Errorf("discard of %s: %v", m.TransferID, err)
		}
	}
}

// equalTaken reports whether a and b answer the same snapshots, taken at
// the same time.
func equalTaken(a, b rpc.GroupSnapshotReply) bool {
	return slices.EqualFunc(a.Members, b.Members, func(x, y rpc.GroupSnapshotTaken) bool {
		return x.TransferID == y.TransferID && x.Snapshot == y.Snapshot && x.SnapID == y.SnapID &&
			x.SnapshotTime != nil && y.SnapshotTime != nil && x.SnapshotTime.Equal(*y.SnapshotTime)
	})
}
