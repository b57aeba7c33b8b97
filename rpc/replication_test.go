package rpc

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The replication commands are agent commands: signed by the caster, and
// a drill's body, altered, no longer verifies.
func TestReplicationCommandsAreSigned(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer := NewSigner(priv, time.Hour)
	v := NewVerifier(pub)
	rc := &recordingCaster{}
	c := SigningCaster{Caster: rc, Signer: signer}
	drill := DrillRequest{DrillID: "d", ReplicationID: "r", Pool: "volumes", Image: "ferry-replica-r", Snapshot: "ferry-t",
		ClonePool: "volumes", CloneName: "ferry-drill-d", Flatten: true}
	clean := ReplicationCleanup{ReplicationID: "r", Side: CleanupSideSource, Pool: "volumes", Image: "volume-1", Snapshots: []string{"ferry-t"}}
	for _, m := range []struct {
		method string
		body   any
	}{{MethodReplicationDrill, drill}, {MethodReplicationCleanup, clean}} {
		if !IsAgentCommand(m.method) {
			t.Errorf("%s is not an agent command", m.method)
		}
		if err := c.Cast(context.Background(), AgentTarget("R2"), m.method, m.body); err != nil {
			t.Fatal(err)
		}
	}
	for i, env := range rc.envs {
		if err := v.VerifyEnvelope(env); err != nil {
			t.Errorf("%d: %s does not verify: %v", i, env.Method, err)
		}
	}
	var back DrillRequest
	if err := rc.envs[0].DecodeBody(&back); err != nil || back != drill {
		t.Errorf("drill body %+v, %v", back, err)
	}
	forged := rc.envs[0]
	forged.Body = []byte(`{"drill_id":"d","replication_id":"other","pool":"volumes","image":"x","snapshot":"ferry-t","clone_pool":"volumes","clone_name":"c"}`)
	if err := v.VerifyEnvelope(forged); !errors.Is(err, ErrForbidden) {
		t.Errorf("an altered drill verified: %v", err)
	}
}

func TestReplicationBodiesValidate(t *testing.T) {
	ok := DrillRequest{DrillID: "d", ReplicationID: "r", Pool: "p", Image: "i", Snapshot: "s", ClonePool: "p", CloneName: "c"}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid drill: %v", err)
	}
	bad := ok
	bad.Snapshot = ""
	if err := bad.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("drill without snapshot: %v", err)
	}
	for _, c := range []struct {
		req  ReplicationCleanup
		want bool
	}{
		{ReplicationCleanup{ReplicationID: "r", Side: CleanupSideSource, Pool: "p", Image: "i"}, true},
		{ReplicationCleanup{ReplicationID: "r", Side: CleanupSideDestination, Pool: "p", Image: "i", RemoveImage: true}, true},
		{ReplicationCleanup{ReplicationID: "r", Side: "both", Pool: "p", Image: "i"}, false},
		{ReplicationCleanup{Side: CleanupSideSource, Pool: "p", Image: "i"}, false},
		{ReplicationCleanup{ReplicationID: "r", Side: CleanupSideSource, Pool: "p"}, false},
	} {
		if err := c.req.Validate(); (err == nil) != c.want {
			t.Errorf("%+v: %v", c.req, err)
		} else if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v is not ErrInvalid", c.req, err)
		}
	}
}

// Promote and demote are signed agent commands, and their bodies refuse
// what an agent could not act on.
func TestFailoverCommands(t *testing.T) {
	for _, m := range []string{MethodReplicationPromote, MethodReplicationDemote} {
		if !IsAgentCommand(m) {
			t.Errorf("%s is not an agent command", m)
		}
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	rc := &recordingCaster{}
	c := SigningCaster{Caster: rc, Signer: NewSigner(priv, time.Hour)}
	dem := DemoteRequest{ReplicationID: "r", Pool: "volumes", Image: "volume-1", Point: "ferry-t",
		Peer: PeerImage{FSID: "f", ImageID: "i", Name: "volumes/ferry-replica-r", SnapID: 7, Digest: "d"}}
	if err := c.Cast(context.Background(), AgentTarget("R1"), MethodReplicationDemote, dem); err != nil {
		t.Fatal(err)
	}
	if err := NewVerifier(pub).VerifyEnvelope(rc.envs[0]); err != nil {
		t.Errorf("demote does not verify: %v", err)
	}
	var back DemoteRequest
	if err := rc.envs[0].DecodeBody(&back); err != nil || back != dem {
		t.Errorf("demote body %+v, %v", back, err)
	}

	okP := PromoteRequest{ReplicationID: "r", Pool: "p", Image: "i", Point: "ferry-t"}
	for _, c := range []struct {
		req  PromoteRequest
		want bool
	}{
		{okP, true},
		{PromoteRequest{ReplicationID: "r", Pool: "p", Image: "i", Point: "ferry-t", Force: true}, true},
		{PromoteRequest{Pool: "p", Image: "i", Point: "ferry-t"}, false},
		{PromoteRequest{ReplicationID: "r", Pool: "p", Image: "i"}, false},
		{PromoteRequest{ReplicationID: "r", Pool: "p", Image: "i@x", Point: "ferry-t"}, false},
		{PromoteRequest{ReplicationID: "r", Pool: "a/b", Image: "i", Point: "ferry-t"}, false},
	} {
		if err := c.req.Validate(); (err == nil) != c.want || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("promote %+v: %v", c.req, err)
		}
	}
	mod := func(f func(*DemoteRequest)) DemoteRequest { d := dem; f(&d); return d }
	for _, c := range []struct {
		req  DemoteRequest
		want bool
	}{
		{dem, true},
		{mod(func(d *DemoteRequest) { d.PreserveAs = "ferry-preserved-1" }), true},
		{mod(func(d *DemoteRequest) { d.PreserveAs = d.Image }), false},
		{mod(func(d *DemoteRequest) { d.PreserveAs = "p/x" }), false},
		{mod(func(d *DemoteRequest) { d.Peer.SnapID = 0 }), false},
		{mod(func(d *DemoteRequest) { d.Peer.ImageID = "" }), false},
		{mod(func(d *DemoteRequest) { d.Peer.FSID = "" }), false},
		{mod(func(d *DemoteRequest) { d.Point = "" }), false},
		{mod(func(d *DemoteRequest) { d.Point = "a@b" }), false},
	} {
		if err := c.req.Validate(); (err == nil) != c.want || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("demote %+v: %v", c.req, err)
		}
	}
}

// Rename is a signed agent command; its body names two images of one pool.
func TestRenameCommand(t *testing.T) {
	if !IsAgentCommand(MethodReplicationRename) {
		t.Errorf("%s is not an agent command", MethodReplicationRename)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	rc := &recordingCaster{}
	c := SigningCaster{Caster: rc, Signer: NewSigner(priv, time.Hour)}
	req := RenameRequest{ReplicationID: "r", Pool: "volumes", Image: "volume-x", To: "ferry-replica-r"}
	if err := c.Cast(context.Background(), AgentTarget("R2"), MethodReplicationRename, req); err != nil {
		t.Fatal(err)
	}
	if err := NewVerifier(pub).VerifyEnvelope(rc.envs[0]); err != nil {
		t.Errorf("rename does not verify: %v", err)
	}
	var back RenameRequest
	if err := rc.envs[0].DecodeBody(&back); err != nil || back != req {
		t.Errorf("rename body %+v, %v", back, err)
	}
	mod := func(f func(*RenameRequest)) RenameRequest { r := req; f(&r); return r }
	for _, c := range []struct {
		req  RenameRequest
		want bool
	}{
		{req, true},
		{mod(func(r *RenameRequest) { r.ReplicationID = "" }), false},
		{mod(func(r *RenameRequest) { r.Pool = "" }), false},
		{mod(func(r *RenameRequest) { r.Image = "" }), false},
		{mod(func(r *RenameRequest) { r.To = "" }), false},
		{mod(func(r *RenameRequest) { r.To = r.Image }), false},
		{mod(func(r *RenameRequest) { r.To = "other/ferry-replica-r" }), false},
		{mod(func(r *RenameRequest) { r.To = "ferry-replica-r@s" }), false},
		{mod(func(r *RenameRequest) { r.Image = "volume-x@s" }), false},
	} {
		if err := c.req.Validate(); (err == nil) != c.want || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("rename %+v: %v", c.req, err)
		}
	}
}

// A group snapshot is a signed agent command; its body and reply survive
// the wire, and its body refuses what an agent could not act on.
func TestGroupSnapshotCommand(t *testing.T) {
	if !IsAgentCommand(MethodReplicationGroupSnapshot) {
		t.Errorf("%s is not an agent command", MethodReplicationGroupSnapshot)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	rc := &recordingCaster{}
	c := SigningCaster{Caster: rc, Signer: NewSigner(priv, time.Hour)}
	req := GroupSnapshotRequest{GroupID: "g", CycleID: "c", Members: []GroupSnapshotMember{
		{ReplicationID: "r1", TransferID: "t1", Pool: "volumes", Image: "volume-1"},
		{ReplicationID: "r2", TransferID: "t2", Pool: "backups", Image: "volume-2"},
	}}
	if err := req.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := c.Cast(context.Background(), AgentTarget("R1"), MethodReplicationGroupSnapshot, req); err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(pub)
	if err := v.VerifyEnvelope(rc.envs[0]); err != nil {
		t.Errorf("group snapshot does not verify: %v", err)
	}
	var back GroupSnapshotRequest
	if err := rc.envs[0].DecodeBody(&back); err != nil || !reflect.DeepEqual(back, req) {
		t.Errorf("group snapshot body %+v, %v", back, err)
	}
	forged := rc.envs[0]
	forged.Body = []byte(`{"group_id":"g","cycle_id":"c","members":[{"replication_id":"r1","transfer_id":"t9","pool":"volumes","image":"volume-1"}]}`)
	if err := v.VerifyEnvelope(forged); !errors.Is(err, ErrForbidden) {
		t.Errorf("an altered group snapshot verified: %v", err)
	}

	at := time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)
	reply := GroupSnapshotReply{Members: []GroupSnapshotTaken{
		{TransferID: "t1", Snapshot: "ferry-t1", SnapID: 7, SnapshotTime: &at},
		{TransferID: "t2", Snapshot: "ferry-t2", SnapID: 9},
	}}
	env, err := NewEnvelope(context.Background(), MethodReplicationGroupSnapshot, reply)
	if err != nil {
		t.Fatal(err)
	}
	data, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `{"transfer_id":"t2","snapshot":"ferry-t2","snap_id":9}`) {
		t.Errorf("reply on the wire: %s", data)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	var rback GroupSnapshotReply
	if err := got.DecodeBody(&rback); err != nil || !reflect.DeepEqual(rback, reply) {
		t.Errorf("group snapshot reply %+v, %v", rback, err)
	}

	mod := func(f func(*GroupSnapshotRequest)) GroupSnapshotRequest {
		r := req
		r.Members = slices.Clone(req.Members)
		f(&r)
		return r
	}
	many := make([]GroupSnapshotMember, MaxGroupMembers+1)
	for i := range many {
		many[i] = GroupSnapshotMember{ReplicationID: fmt.Sprint("r", i), TransferID: fmt.Sprint("t", i), Pool: "p", Image: fmt.Sprint("i", i)}
	}
	for _, c := range []struct {
		req  GroupSnapshotRequest
		want bool
	}{
		{req, true},
		{mod(func(r *GroupSnapshotRequest) { r.Members = many[:MaxGroupMembers] }), true},
		{mod(func(r *GroupSnapshotRequest) { r.Members = many }), false},
		{mod(func(r *GroupSnapshotRequest) { r.Members = nil }), false},
		{mod(func(r *GroupSnapshotRequest) { r.GroupID = "" }), false},
		{mod(func(r *GroupSnapshotRequest) { r.CycleID = "" }), false},
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].ReplicationID = "" }), false},
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].TransferID = "" }), false},
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].Pool = "" }), false},
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].Image = "" }), false},
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].Image = "volume-2@s" }), false},
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].TransferID = "t/2" }), false},
		// The same image twice (another replication, another transfer).
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].Pool, r.Members[1].Image = "volumes", "volume-1" }), false},
		// The same name in another pool is another image.
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].Image = "volume-1" }), true},
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].TransferID = "t1" }), false},
		{mod(func(r *GroupSnapshotRequest) { r.Members[1].ReplicationID = "r1" }), false},
	} {
		if err := c.req.Validate(); (err == nil) != c.want || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("group snapshot %+v: %v", c.req, err)
		}
	}
}

// The settle of a missed completion is a signed agent command: an agent
// refuses it unsigned (the fault suite found settles dead-lettered when
// they were not signed).
func TestSettleIsSigned(t *testing.T) {
	if !IsAgentCommand(MethodTransferSettle) {
		t.Errorf("%s is not an agent command", MethodTransferSettle)
	}
}
