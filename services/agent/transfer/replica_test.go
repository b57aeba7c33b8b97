package transfer

import (
	"errors"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/services/agent/rbd"
)

func TestEffectiveLimit(t *testing.T) {
	for _, c := range []struct{ agent, transfer, want int64 }{
		{0, 0, 0},
		{0, 5, 5},
		{7, 0, 7},
		{7, 5, 5},
		{5, 7, 5},
		{-1, 3, 3},
		{3, -1, 3},
		{0, -1, 0},
	} {
		if got := EffectiveLimit(c.agent, c.transfer); got != c.want {
			t.Errorf("EffectiveLimit(%d, %d) = %d, want %d", c.agent, c.transfer, got, c.want)
		}
	}
}

func TestPrepareRequestReplicationFields(t *testing.T) {
	base := PrepareRequest{TransferID: "t", Mode: ModeAuto, Pool: "p", Image: "i", Snapshot: "ferry-t", SourceFSID: "f",
		SourceImageID: "id", SourceSnapID: 3, Order: 22}
	for _, c := range []struct {
		name string
		mut  func(*PrepareRequest)
		ok   bool
	}{
		{"plain", func(*PrepareRequest) {}, true},
		{"cycle", func(r *PrepareRequest) { r.ReplicationID, r.Retain = "r", []string{"ferry-a", "ferry-b"} }, true},
		{"retain without replication", func(r *PrepareRequest) { r.Retain = []string{"ferry-a"} }, false},
		{"ephemeral cycle", func(r *PrepareRequest) { r.ReplicationID, r.Ephemeral, r.Mode = "r", true, ModeFull }, false},
		{"retain of a foreign snapshot", func(r *PrepareRequest) { r.ReplicationID, r.Retain = "r", []string{"daily"} }, false},
		{"retain of a bad name", func(r *PrepareRequest) { r.ReplicationID, r.Retain = "r", []string{"ferry-a@b"} }, false},
	} {
		r := base
		c.mut(&r)
		err := r.Validate()
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrBadRequest)) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	a, b := base, base
	a.ReplicationID, b.ReplicationID = "r", "r"
	a.Retain, b.Retain = []string{"ferry-a"}, []string{"ferry-b"}
	if a.sameAs(&b) {
		t.Error("prepares with different retain lists are the same")
	}
	b.Retain = []string{"ferry-a"}
	if !a.sameAs(&b) {
		t.Error("the same prepare is not the same")
	}
}

func TestFerrySnapshotsAndNewestPoint(t *testing.T) {
	snaps := []rbd.Snapshot{{ID: 4, Name: "ferry-a"}, {ID: 9, Name: "user"}, {ID: 7, Name: "ferry-b"}, {ID: 12, Name: "ferry-c"}}
	recs := map[string]snapRecord{"ferry-a": {}, "ferry-b": {}}
	ours, foreign := ferrySnapshots(snaps, recs, "")
	if strings.Join(ours, ",") != "ferry-a,ferry-b" || strings.Join(foreign, ",") != "user,ferry-c" {
		t.Errorf("ours %v, foreign %v", ours, foreign)
	}
	// The snapshot of a verified, interrupted finish is Ferry's.
	ours, foreign = ferrySnapshots(snaps, recs, "ferry-c")
	if strings.Join(ours, ",") != "ferry-a,ferry-b,ferry-c" || strings.Join(foreign, ",") != "user" {
		t.Errorf("with the sealing snapshot: ours %v, foreign %v", ours, foreign)
	}
	if p, ok := newestPoint(snaps, recs); !ok || p.Name != "ferry-b" {
		t.Errorf("newest point %+v %v", p, ok)
	}
	if _, ok := newestPoint(snaps, nil); ok {
		t.Error("a newest point without records")
	}
	if got := drillParent("volumes", "ferry-replica-r", "ferry-t", 12); got != "volumes/ferry-replica-r@ferry-t#12" {
		t.Errorf("drill parent %q", got)
	}
}
