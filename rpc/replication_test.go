package rpc

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
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

// The settle of a missed completion and a group's consistent snapshot are
// signed agent commands: an agent refuses them unsigned (the fault suite
// found settles dead-lettered when they were not signed).
func TestSettleAndGroupSnapshotAreSigned(t *testing.T) {
	for _, m := range []string{MethodTransferSettle, MethodReplicationGroupSnapshot} {
		if !IsAgentCommand(m) {
			t.Errorf("%s is not an agent command", m)
		}
	}
}
