package dispatch

import (
	"context"
	"errors"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
)

// DestinationProber asks a transfer's destination region about its copy:
// the way to recover a terminal report that was lost (the source agent
// died, or the broker dropped the report, after the destination verified
// the copy).
type DestinationProber interface {
	Probe(ctx context.Context, t *db.Transfer) (DestinationState, error)
}

// DestinationState is what the destination holds of a transfer's copy.
type DestinationState struct {
	// Complete: the destination image holds the transfer's final snapshot
	// (for an ephemeral copy: its completion marker), verified with
	// Digest. The other fields are those of the agent's completed report.
	Complete  bool
	Snapshot  string
	Digest    string
	Mode      string
	BytesDone uint64
	// Removed and SnapshotTime: what a replication cycle's finish removed
	// and when its source snapshot was taken (agents since 1.3).
	Removed      []string
	SnapshotTime *time.Time
}

// RPCProber asks the destination region's agents with transfer.query (a
// call to agent.<destination region>; see rpc.TransferQuery for the
// contract). Agents before 1.2 do not know the method: the error says so
// and the caller re-dispatches as before.
type RPCProber struct {
	Caller rpc.Caller
}

// Probe implements DestinationProber.
func (p RPCProber) Probe(ctx context.Context, t *db.Transfer) (DestinationState, error) {
	// The destination's pool and image default to the source's, as the
	// agents resolve them.
	pool, image := t.DestPool, t.DestImage
	if pool == "" {
		pool = t.SourcePool
	}
	if image == "" {
		image = t.SourceImage
	}
	if t.DestRegion == "" || pool == "" || image == "" {
		return DestinationState{}, errors.New("dispatch: transfer has no destination image yet")
	}
	var rep rpc.TransferQueryReply
	err := p.Caller.Call(ctx, rpc.AgentTarget(t.DestRegion), rpc.MethodTransferQuery, rpc.TransferQuery{
		TransferID: t.ID, Epoch: t.Epoch, Pool: pool, Image: image, Snapshot: t.DestSnapshot,
	}, &rep)
	if err != nil {
		return DestinationState{}, err
	}
	return DestinationState{Complete: rep.Complete, Snapshot: rep.Snapshot, Digest: rep.Digest, Mode: rep.Mode, BytesDone: rep.BytesDone,
		Removed: rep.Removed, SnapshotTime: rep.SnapshotTime}, nil
}
