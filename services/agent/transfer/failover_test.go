package transfer

import (
	"errors"
	"testing"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
)

func TestPlanPromote(t *testing.T) {
	req := rpc.PromoteRequest{ReplicationID: "r", Pool: "p", Image: "ferry-replica-r", Point: "ferry-b"}
	snap := &rbd.Snapshot{ID: 9, Name: "ferry-b", Size: 1 << 20}
	rec := &snapRecord{Snapshot: "ferry-b", SnapID: 9, ReplicationID: "r"}
	ok := promoteView{Owned: true, Replication: "r", Snap: snap, Record: rec}
	mod := func(f func(*promoteView)) promoteView { v := ok; f(&v); return v }
	force := req
	force.Force = true
	for _, c := range []struct {
		name   string
		req    rpc.PromoteRequest
		v      promoteView
		repeat bool
		err    error
	}{
		{"first", req, ok, false, nil},
		{"repeat", req, mod(func(v *promoteView) { v.Marker = &primaryMarker{ReplicationID: "r", Point: "ferry-b", SnapID: 9} }), true, nil},
		{"primary at another point", req, mod(func(v *promoteView) { v.Marker = &primaryMarker{ReplicationID: "r", Point: "ferry-a", SnapID: 4} }), false, rpc.ErrConflict},
		{"forced to another point", force, mod(func(v *promoteView) { v.Marker = &primaryMarker{ReplicationID: "r", Point: "ferry-a", SnapID: 4} }), false, nil},
		{"marker of a recreated snapshot", req, mod(func(v *promoteView) { v.Marker = &primaryMarker{ReplicationID: "r", Point: "ferry-b", SnapID: 3} }), false, rpc.ErrConflict},
		{"another replication", req, mod(func(v *promoteView) { v.Replication = "other" }), false, rpc.ErrConflict},
		{"not Ferry's", req, mod(func(v *promoteView) { v.Owned = false }), false, rpc.ErrConflict},
		{"no such snapshot", req, mod(func(v *promoteView) { v.Snap, v.Record = nil, nil }), false, rpc.ErrNotFound},
		{"not a point", req, mod(func(v *promoteView) { v.Record = nil }), false, rpc.ErrConflict},
		{"a point of another replication", req, mod(func(v *promoteView) { v.Record = &snapRecord{SnapID: 9, ReplicationID: "x"} }), false, rpc.ErrConflict},
	} {
		repeat, err := planPromote(c.req, c.v)
		if repeat != c.repeat || (c.err == nil) != (err == nil) || c.err != nil && !errors.Is(err, c.err) {
			t.Errorf("%s: repeat %v, %v; want %v, %v", c.name, repeat, err, c.repeat, c.err)
		}
	}
}

func TestPlanDemote(t *testing.T) {
	peer := rpc.PeerImage{FSID: "f2", ImageID: "id2", Name: "p/ferry-replica-r", SnapID: 9, Digest: "d"}
	req := rpc.DemoteRequest{ReplicationID: "r", Pool: "p", Image: "volume-1", Point: "ferry-b", Peer: peer}
	keep := req
	keep.PreserveAs = "ferry-preserved-1"
	snap := &rbd.Snapshot{ID: 5, Name: "ferry-b"}
	tagged := demoteView{Snap: snap, Tagged: true, HeadEqual: true}
	mod := func(f func(*demoteView)) demoteView { v := tagged; f(&v); return v }
	done := &demotedRecord{ReplicationID: "r", Point: "ferry-b", Peer: peer, Reply: rpc.DemoteReply{SnapID: 5, RolledBack: true}}
	for _, c := range []struct {
		name string
		req  rpc.DemoteRequest
		v    demoteView
		want demotePlan
		err  error
	}{
		{"planned, head at the point", req, tagged, demotePlan{}, nil},
		{"head written after the point", req, mod(func(v *demoteView) { v.HeadEqual = false }), demotePlan{}, rpc.ErrConflict},
		{"head written, preserved", keep, mod(func(v *demoteView) { v.HeadEqual = false }), demotePlan{Preserve: true, Rollback: true}, nil},
		{"copy made, not rolled back", keep, mod(func(v *demoteView) { v.HeadEqual = false; v.Copy = copyOurs }), demotePlan{Preserve: true, Reuse: true, Rollback: true}, nil},
		{"copy made and rolled back", keep, mod(func(v *demoteView) { v.Copy = copyOurs }), demotePlan{Reuse: true}, nil},
		{"preserve_as names another image", keep, mod(func(v *demoteView) { v.HeadEqual = false; v.Copy = copyForeign }), demotePlan{}, rpc.ErrConflict},
		{"repeat", req, mod(func(v *demoteView) { v.Demoted = done; v.Snap = nil }), demotePlan{Answer: &done.Reply}, nil},
		{"another peer", req, mod(func(v *demoteView) { v.Demoted = &demotedRecord{ReplicationID: "r", Point: "ferry-b"} }), demotePlan{}, nil},
		{"no such snapshot", req, mod(func(v *demoteView) { v.Snap = nil }), demotePlan{}, rpc.ErrNotFound},
		{"not Ferry's snapshot", req, mod(func(v *demoteView) { v.Tagged = false }), demotePlan{}, rpc.ErrConflict},
		{"failback: a point of the replica", req, mod(func(v *demoteView) {
			v.Tagged, v.Replication, v.Record = false, "r", &snapRecord{SnapID: 5, ReplicationID: "r"}
		}), demotePlan{}, nil},
		{"a point of another replication", req, mod(func(v *demoteView) {
			v.Tagged, v.Replication, v.Record = false, "x", &snapRecord{SnapID: 5, ReplicationID: "x"}
		}), demotePlan{}, rpc.ErrConflict},
		{"tagged, image of another replication", req, mod(func(v *demoteView) { v.Replication = "x" }), demotePlan{}, rpc.ErrConflict},
		{"primary at this point", req, mod(func(v *demoteView) { v.Marker = &primaryMarker{ReplicationID: "r", Point: "ferry-b", SnapID: 5} }), demotePlan{}, nil},
		{"primary at an older point, demoted to one it took since", req, mod(func(v *demoteView) {
			v.Marker = &primaryMarker{ReplicationID: "r", Point: "ferry-a", SnapID: 3}
		}), demotePlan{}, nil},
		{"primary at a newer point", req, mod(func(v *demoteView) { v.Marker = &primaryMarker{ReplicationID: "r", Point: "ferry-c", SnapID: 8} }), demotePlan{}, rpc.ErrConflict},
		{"primary of another replication", req, mod(func(v *demoteView) { v.Marker = &primaryMarker{ReplicationID: "x", Point: "ferry-b", SnapID: 5} }), demotePlan{}, rpc.ErrConflict},
	} {
		got, err := planDemote(c.req, c.v)
		if (c.err == nil) != (err == nil) || c.err != nil && !errors.Is(err, c.err) {
			t.Errorf("%s: %v, want %v", c.name, err, c.err)
			continue
		}
		if err == nil && (got.Preserve != c.want.Preserve || got.Reuse != c.want.Reuse || got.Rollback != c.want.Rollback ||
			(got.Answer == nil) != (c.want.Answer == nil) || got.Answer != nil && *got.Answer != *c.want.Answer) {
			t.Errorf("%s: plan %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestPlanRename(t *testing.T) {
	req := rpc.RenameRequest{ReplicationID: "r", Pool: "p", Image: "volume-x", To: "ferry-replica-r"}
	ours := func() *renameImage { return &renameImage{Owned: true, Replication: "r"} }
	mod := func(f func(*renameImage)) *renameImage { i := ours(); f(i); return i }
	for _, c := range []struct {
		name   string
		v      renameView
		repeat bool
		err    error
	}{
		{"demoted image, To free", renameView{From: ours()}, false, nil},
		{"repeat: renamed already", renameView{To: ours()}, true, nil},
		{"repeat of a rename since promoted", renameView{To: mod(func(i *renameImage) { i.Primary = true })}, true, nil},
		{"neither exists", renameView{}, false, rpc.ErrNotFound},
		{"To is another image", renameView{From: ours(), To: &renameImage{}}, false, rpc.ErrConflict},
		{"To is Ferry's image of another replication", renameView{From: ours(), To: mod(func(i *renameImage) { i.Replication = "x" })}, false, rpc.ErrConflict},
		{"Image gone, To another image", renameView{To: &renameImage{}}, false, rpc.ErrConflict},
		{"Image gone, To of another replication", renameView{To: mod(func(i *renameImage) { i.Replication = "x" })}, false, rpc.ErrConflict},
		{"both are the replication's", renameView{From: ours(), To: ours()}, false, rpc.ErrConflict},
		{"not Ferry's", renameView{From: &renameImage{Replication: "r"}}, false, rpc.ErrConflict},
		{"Ferry's, no replication", renameView{From: mod(func(i *renameImage) { i.Replication = "" })}, false, rpc.ErrConflict},
		{"Ferry's image of another replication", renameView{From: mod(func(i *renameImage) { i.Replication = "x" })}, false, rpc.ErrConflict},
		{"the primary", renameView{From: mod(func(i *renameImage) { i.Primary = true })}, false, rpc.ErrConflict},
	} {
		repeat, err := planRename(req, c.v)
		if repeat != c.repeat || (c.err == nil) != (err == nil) || c.err != nil && !errors.Is(err, c.err) {
			t.Errorf("%s: repeat %v, %v; want %v, %v", c.name, repeat, err, c.repeat, c.err)
		}
	}
}

func TestRenameImageOf(t *testing.T) {
	if i := renameImageOf(map[string]string{MetaOwner: OwnerValue, MetaReplication: "r", MetaPrimary: "garbage"}); *i != (renameImage{Owned: true, Replication: "r", Primary: true}) {
		t.Errorf("an unverifiable marker still counts: %+v", i)
	}
	if i := renameImageOf(map[string]string{MetaOwner: "someone", MetaReplication: "r"}); i.Owned || i.Primary {
		t.Errorf("foreign owner: %+v", i)
	}
}

// A primary refuses every prepare, even one the image holds already.
func TestPlanPrepareRefusesPrimary(t *testing.T) {
	req := &PrepareRequest{TransferID: "t", Mode: ModeAuto, Snapshot: "ferry-t", SourceSnapID: 3}
	v := &destView{Primary: true, PrimaryPoint: "ferry-b", Records: map[string]snapRecord{"ferry-t": {Snapshot: "ferry-t", SourceSnapID: 3}},
		Snaps: []rbd.Snapshot{{ID: 1, Name: "ferry-t"}}}
	if _, err := planPrepare(req, v); !errors.Is(err, ErrConflict) {
		t.Errorf("prepare into a primary: %v", err)
	}
	v.Primary = false
	if p, err := planPrepare(req, v); err != nil || p.Kind != planDone {
		t.Errorf("without the marker: %+v, %v", p, err)
	}
}

func TestPreserveSnapshotName(t *testing.T) {
	a, b := preserveSnapshot("x"), preserveSnapshot("y")
	if a == b || a != preserveSnapshot("x") || !validName(a) || len(a) != len(PreserveSnapshotPrefix)+12 {
		t.Errorf("preserve snapshots %q, %q", a, b)
	}
}
