//go:build functional

package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/agent/agenttest"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// A consistency group's snapshot over the bus: an unsigned (forged) one is
// refused (forbidden, logged) and takes nothing; one the agent could not act on is
// invalid; ferry-api's takes each member's ferry-<transfer id>, a repeat
// answers the same, and each member's transfer, run as its own process,
// copies that snapshot.
func TestGroupSnapshotOverTheBus(t *testing.T) {
	h := agenttest.New(t)
	h.StartDest("dst-a")
	h.Start("src", h.SrcRegion, "REGIONONE")
	src := h.Config("src", h.SrcRegion, "REGIONONE")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srcc := connect(t, ctx, "REGIONONE")
	stamp := time.Now().UnixNano()
	req := rpc.GroupSnapshotRequest{GroupID: fmt.Sprintf("g%d", stamp), CycleID: fmt.Sprintf("gc%d", stamp)}
	for i := range 2 {
		name := fmt.Sprintf("groupbus-%d-%d", stamp, i)
		h.Image(name, 4<<20, true)
		req.Members = append(req.Members, rpc.GroupSnapshotMember{ReplicationID: fmt.Sprintf("r%d-%d", stamp, i),
			TransferID: fmt.Sprintf("c%d-%d", stamp, i), Pool: h.Pool, Image: name})
	}

	bus, err := amqp.New(ctx, testenv.Get(t, "TRANSPORT_URL"), amqp.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close(context.Background())
	key, err := pki.LoadSigningKey(h.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	caller := rpc.SigningCaller{Caller: bus, Signer: rpc.NewSigner(key, time.Minute)}
	target := rpc.AgentTarget(h.SrcRegion)
	if err := bus.Call(ctx, target, rpc.MethodReplicationGroupSnapshot, req, nil); !errors.Is(err, rpc.ErrForbidden) {
		t.Errorf("unsigned group snapshot: %v, want forbidden", err)
	}
	for _, m := range req.Members {
		if snaps := snapshotNames(t, ctx, srcc, m.Pool, m.Image); len(snaps) != 0 {
			t.Fatalf("the unsigned group snapshot took %v on %s", snaps, m.Image)
		}
	}
	logs, _ := os.ReadFile(filepath.Join(h.Dir, "src.log"))
	if !strings.Contains(string(logs), "command refused") || !strings.Contains(string(logs), rpc.MethodReplicationGroupSnapshot) {
		t.Error("the unsigned group snapshot's refusal is not logged")
	}
	twice := req
	twice.Members = []rpc.GroupSnapshotMember{req.Members[0], req.Members[0]}
	if err := caller.Call(ctx, target, rpc.MethodReplicationGroupSnapshot, twice, nil); !errors.Is(err, rpc.ErrInvalid) {
		t.Errorf("a group snapshot listing an image twice: %v, want invalid", err)
	}

	var rep rpc.GroupSnapshotReply
	if err := caller.Call(ctx, target, rpc.MethodReplicationGroupSnapshot, req, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Members) != len(req.Members) {
		t.Fatalf("group snapshot reply %+v", rep)
	}
	for i, m := range req.Members {
		got := rep.Members[i]
		if got.TransferID != m.TransferID || got.Snapshot != "ferry-"+m.TransferID || got.SnapID == 0 ||
			got.SnapshotTime == nil || time.Since(*got.SnapshotTime) > time.Minute {
			t.Errorf("member %d: %+v", i, got)
		}
	}
	var again rpc.GroupSnapshotReply
	if err := caller.Call(ctx, target, rpc.MethodReplicationGroupSnapshot, req, &again); err != nil ||
		!slices.EqualFunc(again.Members, rep.Members, func(a, b rpc.GroupSnapshotTaken) bool {
			return a.Snapshot == b.Snapshot && a.SnapID == b.SnapID && a.SnapshotTime.Equal(*b.SnapshotTime)
		}) {
		t.Errorf("repeated group snapshot %+v, %v; want %+v", again, err, rep)
	}

	for i, m := range req.Members {
		res, err := h.Transfer(src, "--pool", m.Pool, "--image", m.Image, "--transfer-id", m.TransferID, "--replication-id", m.ReplicationID)
		if err != nil {
			t.Fatalf("member %d's transfer: %v", i, err)
		}
		if res.Snapshot != rep.Members[i].Snapshot || res.SnapshotTime == nil || !res.SnapshotTime.Equal(*rep.Members[i].SnapshotTime) {
			t.Errorf("member %d's transfer: %+v, want the group snapshot %+v", i, res, rep.Members[i])
		}
		h.Same(m.Image, res.Snapshot)
		if snaps := snapshotNames(t, ctx, srcc, m.Pool, m.Image); !slices.Equal(snaps, []string{rep.Members[i].Snapshot}) {
			t.Errorf("member %d: source snapshots %v", i, snaps)
		}
	}
}
