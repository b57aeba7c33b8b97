//go:build functional

package agent_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/agent/agenttest"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// A replication between two agent processes over the bus: cycles carry
// their replication and retain list in ferry-api's grant; a signed
// replication.drill clones a point and flattens the clone in the
// background (an unsigned one is refused), after which the next cycle
// prunes the point; signed replication.cleanup casts remove the source's
// snapshot and the replica, and the drill volume stays.
func TestReplicationOverTheBus(t *testing.T) {
	h := agenttest.New(t)
	h.StartDest("dst-a")
	h.Start("src", h.SrcRegion, "REGIONONE")
	src := h.Config("src", h.SrcRegion, "REGIONONE")
	name := fmt.Sprintf("replbus-%d", time.Now().UnixNano())
	h.Image(name, 8<<20, true)
	rid := fmt.Sprintf("rb%d", time.Now().UnixNano())
	replica, clone := "ferry-replica-"+rid, "ferry-drill-"+rid
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dst := connect(t, ctx, "REGIONTWO")
	srcc := connect(t, ctx, "REGIONONE")
	t.Cleanup(func() {
		dst.RemoveImage(context.Background(), h.Pool, clone)
		if img, err := dst.OpenImage(context.Background(), h.Pool, replica, "", false); err == nil {
			snaps, _ := img.Snapshots()
			for _, s := range snaps {
				if p, _ := img.SnapshotProtected(s.Name); p {
					img.UnprotectSnapshot(s.Name)
				}
				img.RemoveSnapshot(s.Name)
			}
			img.Close()
			dst.RemoveImage(context.Background(), h.Pool, replica)
		}
	})
	cycle := func(id string, retain ...string) []string {
		t.Helper()
		res, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", id, "--dest-image", replica,
			"--replication-id", rid, "--retain", strings.Join(retain, ","), "--bandwidth-limit", "67108864")
		if err != nil {
			t.Fatalf("cycle %s: %v", id, err)
		}
		if res.SnapshotTime == nil || time.Since(*res.SnapshotTime) > time.Minute || res.Snapshot != "ferry-"+id {
			t.Errorf("cycle %s: %+v", id, res)
		}
		return res.DestRemoved
	}
	points := func() []string {
		img, err := dst.OpenImage(ctx, h.Pool, replica, "", true)
		if errors.Is(err, rbd.ErrNotFound) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		snaps, _ := img.Snapshots()
		var out []string
		for _, s := range snaps {
			out = append(out, s.Name)
		}
		return out
	}
	c1, c2, c3 := "c1-"+rid, "c2-"+rid, "c3-"+rid
	cycle(c1)
	if removed := cycle(c2, "ferry-"+c1); len(removed) != 0 {
		t.Errorf("cycle 2 removed %v", removed)
	}
	if got := points(); !slices.Equal(got, []string{"ferry-" + c1, "ferry-" + c2}) {
		t.Fatalf("points %v", got)
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
	signer := rpc.NewSigner(key, time.Minute)
	caller := rpc.SigningCaller{Caller: bus, Signer: signer}
	drill := rpc.DrillRequest{DrillID: "d-" + rid, ReplicationID: rid, Pool: h.Pool, Image: replica, Snapshot: "ferry-" + c1,
		ClonePool: h.Pool, CloneName: clone, Flatten: true}
	if err := bus.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationDrill, drill, nil); !errors.Is(err, rpc.ErrForbidden) {
		t.Errorf("unsigned drill: %v, want forbidden", err)
	}
	if _, err := dst.OpenImage(ctx, h.Pool, clone, "", true); !errors.Is(err, rbd.ErrNotFound) {
		t.Fatalf("the unsigned drill made its clone: %v", err)
	}
	var rep rpc.DrillReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationDrill, drill, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Size != 8<<20 || rep.ImageID == "" {
		t.Errorf("drill reply %+v", rep)
	}
	var again rpc.DrillReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationDrill, drill, &again); err != nil || again != rep {
		t.Errorf("repeated drill %+v, %v; want %+v", again, err, rep)
	}
	bad := drill
	bad.ReplicationID = "another"
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodReplicationDrill, bad, nil); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("drill of another replication's point: %v, want conflict", err)
	}
	// The background flatten.
	deadline := time.Now().Add(60 * time.Second)
	for {
		img, err := dst.OpenImage(ctx, h.Pool, clone, "", true)
		if err != nil {
			t.Fatal(err)
		}
		p, err := img.Parent()
		img.Close()
		if err == nil && p == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the drill clone was not flattened (parent %+v, %v)", p, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pointSHA := testenv.ExportSHA(t, h.DstConf, h.Pool+"/"+replica+"@ferry-"+c1)
	if removed := cycle(c3); !slices.Equal(removed, []string{"ferry-" + c1, "ferry-" + c2}) {
		t.Errorf("cycle 3 removed %v", removed)
	}

	// ferry-api's query (a lost report) answers as the completed event.
	var q rpc.TransferQueryReply
	if err := caller.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodTransferQuery,
		rpc.TransferQuery{TransferID: c3, Epoch: 1, Pool: h.Pool, Image: replica, Snapshot: "ferry-" + c3}, &q); err != nil ||
		!q.Complete || !slices.Equal(q.Removed, []string{"ferry-" + c1, "ferry-" + c2}) || q.SnapshotTime == nil {
		t.Errorf("query of cycle 3: %+v, %v", q, err)
	}

	caster := rpc.SigningCaster{Caster: bus, Signer: signer}
	for _, c := range []rpc.ReplicationCleanup{
		{ReplicationID: rid, Side: rpc.CleanupSideSource, Pool: h.Pool, Image: name, Snapshots: []string{"ferry-" + c3}},
		{ReplicationID: rid, Side: rpc.CleanupSideDestination, Pool: h.Pool, Image: replica, RemoveImage: true},
	} {
		region := h.SrcRegion
		if c.Side == rpc.CleanupSideDestination {
			region = h.DstRegion
		}
		if err := caster.Cast(ctx, rpc.AgentTarget(region), rpc.MethodReplicationCleanup, c); err != nil {
			t.Fatal(err)
		}
	}
	deadline = time.Now().Add(60 * time.Second)
	for {
		_, err := dst.OpenImage(ctx, h.Pool, replica, "", true)
		srcSnaps := snapshotNames(t, ctx, srcc, h.Pool, name)
		if errors.Is(err, rbd.ErrNotFound) && len(srcSnaps) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the clean-up: replica %v, source snapshots %v", err, srcSnaps)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if sha := testenv.ExportSHA(t, h.DstConf, h.Pool+"/"+clone); sha != pointSHA {
		t.Errorf("drill volume sha256 %s, its point's %s", sha, pointSHA)
	}
}

func connect(t *testing.T, ctx context.Context, region string) *rbd.Cluster {
	t.Helper()
	c, err := rbd.Connect(ctx, rbd.Options{ConfFile: testenv.Get(t, "CEPH_"+region+"_CONF"), User: testenv.Get(t, "CEPH_USER"),
		Keyring: testenv.Get(t, "CEPH_"+region+"_KEYRING"), Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func snapshotNames(t *testing.T, ctx context.Context, c *rbd.Cluster, pool, name string) []string {
	t.Helper()
	img, err := c.OpenImage(ctx, pool, name, "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	snaps, _ := img.Snapshots()
	var out []string
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	return out
}
