//go:build functional

package agent_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/agent/agenttest"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/transfer"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// Promote and demote between two agent processes over the bus: unsigned
// ones are refused (forbidden) and change nothing; signed ones promote the
// replica at its point and demote the source to it, and a repeat of each
// answers the same.
func TestPromoteDemoteOverTheBus(t *testing.T) {
	h := agenttest.New(t)
	h.StartDest("dst-a")
	h.Start("src", h.SrcRegion, "REGIONONE")
	src := h.Config("src", h.SrcRegion, "REGIONONE")
	name := fmt.Sprintf("failbus-%d", time.Now().UnixNano())
	h.Image(name, 8<<20, true)
	rid := fmt.Sprintf("fb%d", time.Now().UnixNano())
	replica := "ferry-replica-" + rid
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dst := connect(t, ctx, "REGIONTWO")
	srcc := connect(t, ctx, "REGIONONE")
	t.Cleanup(func() {
		if img, err := dst.OpenImage(context.Background(), h.Pool, replica, "", false); err == nil {
			snaps, _ := img.Snapshots()
			for _, s := range snaps {
				img.RemoveSnapshot(s.Name)
			}
			img.Close()
			dst.RemoveImage(context.Background(), h.Pool, replica)
		}
	})
	c1 := "c1-" + rid
	if _, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", c1, "--dest-image", replica,
		"--replication-id", rid); err != nil {
		t.Fatal(err)
	}
	point := "ferry-" + c1

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
	preq := rpc.PromoteRequest{ReplicationID: rid, Pool: h.Pool, Image: replica, Point: point}
	if err := bus.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationPromote, preq, nil); !errors.Is(err, rpc.ErrForbidden) {
		t.Errorf("unsigned promote: %v, want forbidden", err)
	}
	if md := metadata(t, ctx, dst, h.Pool, replica); md[transfer.MetaPrimary] != "" {
		t.Fatal("the unsigned promote marked the replica")
	}
	var prom rpc.PromoteReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationPromote, preq, &prom); err != nil {
		t.Fatal(err)
	}
	if prom.SnapID == 0 || prom.Name != h.Pool+"/"+replica || prom.FSID != dst.FSID() || prom.Size != 8<<20 {
		t.Errorf("promote reply %+v", prom)
	}
	var again rpc.PromoteReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationPromote, preq, &again); err != nil || again != prom {
		t.Errorf("repeated promote %+v, %v; want %+v", again, err, prom)
	}

	dreq := rpc.DemoteRequest{ReplicationID: rid, Pool: h.Pool, Image: name, Point: point,
		Peer: rpc.PeerImage{FSID: prom.FSID, ImageID: prom.ImageID, Name: prom.Name, SnapID: prom.SnapID, Digest: prom.Digest}}
	if err := bus.Call(ctx, rpc.AgentTarget(h.SrcRegion), rpc.MethodReplicationDemote, dreq, nil); !errors.Is(err, rpc.ErrForbidden) {
		t.Errorf("unsigned demote: %v, want forbidden", err)
	}
	if md := metadata(t, ctx, srcc, h.Pool, name); md[transfer.MetaOwner] != "" {
		t.Fatal("the unsigned demote adopted the source")
	}
	var dem rpc.DemoteReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.SrcRegion), rpc.MethodReplicationDemote, dreq, &dem); err != nil {
		t.Fatal(err)
	}
	if dem.SnapID == 0 || dem.RolledBack || dem.Preserved != "" {
		t.Errorf("demote reply %+v", dem)
	}
	md := metadata(t, ctx, srcc, h.Pool, name)
	if md[transfer.MetaOwner] != transfer.OwnerValue || md[transfer.MetaSourceImageID] != prom.ImageID || md[transfer.MetaReplication] != rid {
		t.Errorf("the source is not adopted as the replica's destination: %v", md)
	}
	var dagain rpc.DemoteReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.SrcRegion), rpc.MethodReplicationDemote, dreq, &dagain); err != nil || dagain != dem {
		t.Errorf("repeated demote %+v, %v; want %+v", dagain, err, dem)
	}
	bad := dreq
	bad.Point = "ferry-nope"
	bad.Peer.SnapID = 1
	if err := caller.Call(ctx, rpc.AgentTarget(h.SrcRegion), rpc.MethodReplicationDemote, bad, nil); !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("demote to a missing snapshot: %v, want not found", err)
	}
}

// Rename between processes over the bus: an unsigned one is refused
// (forbidden) and changes nothing; signed, the replica goes to another
// name and back (failback's direction), keeping its RBD id, and a repeat
// answers the same; onto another image it is refused.
func TestRenameOverTheBus(t *testing.T) {
	h := agenttest.New(t)
	h.StartDest("dst-a")
	h.Start("src", h.SrcRegion, "REGIONONE")
	src := h.Config("src", h.SrcRegion, "REGIONONE")
	name := fmt.Sprintf("renbus-%d", time.Now().UnixNano())
	h.Image(name, 4<<20, true)
	rid := fmt.Sprintf("rb%d", time.Now().UnixNano())
	replica, volX, foreign := "ferry-replica-"+rid, "volume-"+rid, "foreign-"+rid
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dst := connect(t, ctx, "REGIONTWO")
	t.Cleanup(func() {
		for _, n := range []string{replica, volX, foreign} {
			if img, err := dst.OpenImage(context.Background(), h.Pool, n, "", false); err == nil {
				snaps, _ := img.Snapshots()
				for _, s := range snaps {
					img.RemoveSnapshot(s.Name)
				}
				img.Close()
				dst.RemoveImage(context.Background(), h.Pool, n)
			}
		}
	})
	if _, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", "c1-"+rid, "--dest-image", replica,
		"--replication-id", rid); err != nil {
		t.Fatal(err)
	}
	if err := dst.CreateImage(ctx, h.Pool, foreign, rbd.ImageSpec{Size: 1 << 20, Order: 22}); err != nil {
		t.Fatal(err)
	}
	id := imageID(t, ctx, dst, h.Pool, replica)

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
	away := rpc.RenameRequest{ReplicationID: rid, Pool: h.Pool, Image: replica, To: volX}
	if err := bus.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationRename, away, nil); !errors.Is(err, rpc.ErrForbidden) {
		t.Errorf("unsigned rename: %v, want forbidden", err)
	}
	if got := imageID(t, ctx, dst, h.Pool, replica); got != id {
		t.Fatalf("after the unsigned rename %s has id %q, want %q", replica, got, id)
	}
	var rep rpc.RenameReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationRename, away, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Name != h.Pool+"/"+volX || imageID(t, ctx, dst, h.Pool, volX) != id {
		t.Errorf("rename reply %+v; %s is not the replica", rep, volX)
	}
	onto := rpc.RenameRequest{ReplicationID: rid, Pool: h.Pool, Image: volX, To: foreign}
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationRename, onto, nil); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("rename onto another image: %v, want conflict", err)
	}
	back := rpc.RenameRequest{ReplicationID: rid, Pool: h.Pool, Image: volX, To: replica}
	var brep rpc.RenameReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationRename, back, &brep); err != nil {
		t.Fatal(err)
	}
	var again rpc.RenameReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationRename, back, &again); err != nil || again != brep {
		t.Errorf("repeated rename %+v, %v; want %+v", again, err, brep)
	}
	if brep.Name != h.Pool+"/"+replica || imageID(t, ctx, dst, h.Pool, replica) != id {
		t.Errorf("rename back %+v; %s is not the replica", brep, replica)
	}
	md := metadata(t, ctx, dst, h.Pool, replica)
	if md[transfer.MetaOwner] != transfer.OwnerValue || md[transfer.MetaReplication] != rid {
		t.Errorf("the renamed replica's metadata %v", md)
	}
}

func imageID(t *testing.T, ctx context.Context, c *rbd.Cluster, pool, name string) string {
	t.Helper()
	img, err := c.OpenImage(ctx, pool, name, "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	info, err := img.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

func metadata(t *testing.T, ctx context.Context, c *rbd.Cluster, pool, name string) map[string]string {
	t.Helper()
	img, err := c.OpenImage(ctx, pool, name, "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	md, err := img.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	return md
}
