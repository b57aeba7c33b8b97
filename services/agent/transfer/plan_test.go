package transfer

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"

	"github.com/ferry-project/ferry/services/agent/rbd"
)

func TestPlanPrepare(t *testing.T) {
	const size = 8 << 20
	req := func(mut ...func(*PrepareRequest)) *PrepareRequest {
		r := &PrepareRequest{TransferID: "t2", Epoch: 3, Mode: ModeAuto, Snapshot: "ferry-t2", SourceSnapID: 20, Size: size,
			Bases: []SnapRef{{Name: "ferry-t1", ID: 10}, {Name: "ferry-t0", ID: 5}}}
		for _, m := range mut {
			m(r)
		}
		return r
	}
	// A destination holding t1 (source snapshot 10) as its snapshot id 7.
	holding := func(mut ...func(*destView)) *destView {
		v := &destView{Size: size, Snaps: []rbd.Snapshot{{ID: 7, Name: "ferry-t1", Size: size}},
			Records: map[string]snapRecord{"ferry-t1": {Snapshot: "ferry-t1", SnapID: 7, TransferID: "t1", SourceSnapID: 10, Digest: "d1"}}}
		for _, m := range mut {
			m(v)
		}
		return v
	}
	run := func(w writingState) func(*destView) { return func(v *destView) { v.Writing = &w } }
	t2 := writingState{TransferID: "t2", Epoch: 3, Base: "ferry-t1", BaseID: 7, Snapshot: "ferry-t2", SourceSnapID: 20, Size: size}
	withT2Snap := func(v *destView) { v.Snaps = append(v.Snaps, rbd.Snapshot{ID: 9, Name: "ferry-t2", Size: size}) }
	t2Recorded := func(src uint64) func(*destView) {
		return func(v *destView) {
			withT2Snap(v)
			v.Records["ferry-t2"] = snapRecord{Snapshot: "ferry-t2", SnapID: 9, TransferID: "t2", SourceSnapID: src, Digest: "d2"}
		}
	}

	for _, tc := range []struct {
		name string
		req  *PrepareRequest
		view *destView
		want destPlan
		err  error
	}{
		{"new image: full copy, nothing to clean", req(), &destView{Created: true, Size: size, Records: map[string]snapRecord{}},
			destPlan{Kind: planCopy}, nil},
		{"incremental from the recorded base, head checked", req(), holding(),
			destPlan{Kind: planCopy, Base: "ferry-t1", BaseID: 7, EnsureBase: true}, nil},
		{"a base of the same name from another source snapshot is no base", req(func(r *PrepareRequest) { r.Bases[0].ID = 11 }), holding(),
			destPlan{Kind: planCopy, ZeroHead: true}, nil},
		{"mode incremental without a base is refused", req(func(r *PrepareRequest) { r.Mode = ModeIncremental; r.Bases = nil }), holding(),
			destPlan{}, ErrNoBase},
		{"mode full zeroes the existing head", req(func(r *PrepareRequest) { r.Mode = ModeFull }), holding(),
			destPlan{Kind: planCopy, ZeroHead: true}, nil},
		{"a new size resizes", req(func(r *PrepareRequest) { r.Size = 2 * size }), holding(),
			destPlan{Kind: planCopy, Base: "ferry-t1", BaseID: 7, EnsureBase: true, Resize: true}, nil},
		{"already complete: same snapshot of the same source snapshot", req(), holding(t2Recorded(20)),
			destPlan{Kind: planDone, Digest: "d2"}, nil},
		{"already complete needs no epoch check", req(func(r *PrepareRequest) { r.Epoch = 1 }), holding(t2Recorded(20)),
			destPlan{Kind: planDone, Digest: "d2"}, nil},
		{"the snapshot name holds another source snapshot", req(), holding(t2Recorded(19)),
			destPlan{}, ErrConflict},
		{"a snapshot of that name that Ferry did not record", req(), holding(withT2Snap),
			destPlan{}, ErrConflict},
		{"resume of the same run", req(func(r *PrepareRequest) { r.Epoch = 4 }), holding(run(t2)),
			destPlan{Kind: planResume, Base: "ferry-t1", BaseID: 7}, nil},
		{"a stale epoch is refused", req(func(r *PrepareRequest) { r.Epoch = 2 }), holding(run(t2)),
			destPlan{}, ErrStaleEpoch},
		{"a forged checkpoint restarts the run from its base", req(), holding(run(t2), func(v *destView) { v.Checkpoint = checkpointInvalid }),
			destPlan{Kind: planCopy, Base: "ferry-t1", BaseID: 7, EnsureBase: true}, nil},
		{"a recreated source snapshot is another run", req(func(r *PrepareRequest) { r.SourceSnapID = 21 }), holding(run(t2)),
			destPlan{Kind: planCopy, Base: "ferry-t1", BaseID: 7, EnsureBase: true}, nil},
		{"a base recreated under its name is no base", req(), holding(run(t2), func(v *destView) {
			v.Snaps[0].ID = 8
			delete(v.Records, "ferry-t1")
		}), destPlan{Kind: planCopy, ZeroHead: true}, nil},
		{"another transfer's unfinished run: back to the base", req(), holding(run(writingState{TransferID: "tx", Base: "ferry-t1", BaseID: 7, Snapshot: "ferry-tx", SourceSnapID: 30, Size: size})),
			destPlan{Kind: planCopy, Base: "ferry-t1", BaseID: 7, EnsureBase: true}, nil},
		{"verified, snapshot not taken: seal", req(), holding(run(func() writingState { w := t2; w.Verified = "d2"; return w }())),
			destPlan{Kind: planSeal, Digest: "d2"}, nil},
		{"verified, snapshot taken, record missing: seal", req(), holding(withT2Snap, run(func() writingState { w := t2; w.Verified = "d2"; return w }())),
			destPlan{Kind: planSeal, Digest: "d2"}, nil},
		{"ephemeral: completed record answers", req(func(r *PrepareRequest) { r.Ephemeral = true; r.Mode = ModeFull }), holding(func(v *destView) {
			v.Completed = &completedRecord{TransferID: "t2", SourceSnapID: 20, Digest: "d2"}
		}), destPlan{Kind: planDone, Digest: "d2", Mode: ModeFull}, nil},
		{"an image handed over by another transfer is not written", req(), holding(func(v *destView) {
			v.Completed = &completedRecord{TransferID: "t0", SourceSnapID: 5, Digest: "d0"}
		}), destPlan{}, ErrConflict},
		{"a grant older than another transfer's copy held is a replay", req(func(r *PrepareRequest) { r.Grant = grantAt(5) }),
			holding(func(v *destView) { v.Granted, v.GrantedBy = time.Unix(9, 0), "t1" }), destPlan{}, ErrStaleEpoch},
		{"a grant newer than the copy held goes on", req(func(r *PrepareRequest) { r.Grant = grantAt(10) }),
			holding(func(v *destView) { v.Granted, v.GrantedBy = time.Unix(9, 0), "t1" }),
			destPlan{Kind: planCopy, Base: "ferry-t1", BaseID: 7, EnsureBase: true}, nil},
		{"an older grant of the very transfer whose copy is held is answered", req(func(r *PrepareRequest) { r.Grant = grantAt(5) }),
			holding(t2Recorded(20), func(v *destView) { v.Granted, v.GrantedBy = time.Unix(9, 0), "t2" }),
			destPlan{Kind: planDone, Digest: "d2"}, nil},
		{"ephemeral never takes a base", req(func(r *PrepareRequest) { r.Ephemeral = true }), holding(),
			destPlan{Kind: planCopy, ZeroHead: true}, nil},
		{"already complete: what its finish removed, from the record", req(), holding(t2Recorded(20), func(v *destView) {
			r := v.Records["ferry-t2"]
			r.Removed = []string{"ferry-t0"}
			v.Records["ferry-t2"] = r
		}), destPlan{Kind: planDone, Digest: "d2", Removed: []string{"ferry-t0"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := planPrepare(tc.req, tc.view)
			if !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			got.Why = ""
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("plan = %+v\nwant   %+v", got, tc.want)
			}
		})
	}
}

func grantAt(sec int64) *rpc.Grant {
	return &rpc.Grant{Method: rpc.MethodTransferStart, Signature: &rpc.Signature{Expires: time.Unix(sec, 0)}}
}

func TestSealer(t *testing.T) {
	key := make([]byte, StateKeySize)
	s, _ := NewSealer(key)
	other, _ := NewSealer(append(make([]byte, StateKeySize-1), 1))
	text, err := s.Seal(kindSnapshot, "img1", snapRecord{Snapshot: "a", SnapID: 3, Digest: "d"})
	if err != nil {
		t.Fatal(err)
	}
	var r snapRecord
	if err := s.Open(kindSnapshot, "img1", text, &r); err != nil || r.SnapID != 3 {
		t.Fatalf("open: %+v %v", r, err)
	}
	for name, open := range map[string]func() error{
		"another image":  func() error { return s.Open(kindSnapshot, "img2", text, &r) },
		"another kind":   func() error { return s.Open(kindWriting, "img1", text, &r) },
		"another key":    func() error { return other.Open(kindSnapshot, "img1", text, &r) },
		"edited value":   func() error { return s.Open(kindSnapshot, "img1", replace(text, `"snap_id":3`, `"snap_id":4`), &r) },
		"not sealed":     func() error { return s.Open(kindSnapshot, "img1", `{"snapshot":"a","snap_id":3}`, &r) },
		"empty":          func() error { return s.Open(kindSnapshot, "img1", "", &r) },
		"mac of garbage": func() error { return s.Open(kindSnapshot, "img1", `{"v":{},"mac":"zz"}`, &r) },
	} {
		if err := open(); !errors.Is(err, errUnsealed) {
			t.Errorf("%s: %v, want errUnsealed", name, err)
		}
	}
	if _, err := NewSealer(key[:5]); !errors.Is(err, ErrStateKey) {
		t.Errorf("short key: %v", err)
	}
}

func replace(s, old, new string) string {
	for i := 0; i+len(old) <= len(s); i++ {
		if s[i:i+len(old)] == old {
			return s[:i] + new + s[i+len(old):]
		}
	}
	return s
}
