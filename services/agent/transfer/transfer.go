// Package transfer runs one RBD transfer on each side: the source snapshots
// the image, asks the destination to prepare, lists the extents to send
// (DiffIterate from the newest common base, or every allocated extent for a
// full copy) and streams them; the destination opens or creates the image,
// fences it, writes and verifies what arrives and ends with a snapshot of
// the same name as the source's, the base of the next incremental. An
// ephemeral transfer (a copy handed over to Cinder, never the base of
// another) is a full copy that leaves no Ferry snapshot on either side. A
// replication cycle (ReplicationID) keeps the retained points at the
// destination besides the new one; replica.go has what a replication needs
// besides its cycles: drills (clones of a point) and the clean-up of both
// sides; failover.go has failover's promote (the replica becomes the
// primary, refusing every prepare), demote (the old source becomes a
// destination of it, a divergent head copied aside first) and rename
// (failback: a demoted image gets its replica name back); group.go has a
// consistency group cycle's snapshot of all its members at one instant,
// which each member's transfer then copies.
//
// It joins services/agent/rbd (Ceph) and services/agent/stream (the wire);
// the Preparer interface is how the source reaches the destination: a
// *Dest directly in-process, an RPC client across processes.
package transfer

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/stream"
)

// Image metadata that Ferry keeps on the images it creates (rbd image-meta).
const (
	MetaOwner         = "ferry.owner" // always OwnerValue
	MetaProject       = "ferry.project_id"
	MetaCreatedBy     = "ferry.created_by_transfer"
	MetaSourceFSID    = "ferry.source_fsid"
	MetaSourceImageID = "ferry.source_image_id"
	MetaSourceName    = "ferry.source_image"
	MetaBase          = "ferry.base_snapshot" // the last completed snapshot
	MetaCheckpoint    = "ferry.checkpoint"    // stream.Checkpoint, JSON
	MetaWriting       = "ferry.writing"       // writingState, JSON: head is being written
	// MetaReplication names the replication a replica was created for
	// (set with the other ownership keys when the image is created).
	MetaReplication = "ferry.replication_id"
	OwnerValue      = "ferry"
	// SnapshotPrefix names the snapshots Ferry takes (ferry-<transfer id>);
	// only those are ever removed by Ferry.
	SnapshotPrefix = "ferry-"
	// CinderBackupSnapshotPrefix starts the snapshots Cinder's Ceph
	// backup driver keeps on a backup's base image, one per backup
	// (backup.<backup id>.snap.<time>): copying a later backup, an
	// earlier one that both sides have is its incremental base.
	CinderBackupSnapshotPrefix = "backup."
)

// Modes of a transfer.
const (
	ModeAuto        = "auto"
	ModeFull        = "full"
	ModeIncremental = "incremental"
)

// Errors of a transfer. They are the bus's own (rpc's registry of error
// codes), so that errors.Is works on an answer from another agent.
var (
	ErrNotOwned       = rpc.ErrNotOwned
	ErrPoolNotAllowed = rpc.ErrPoolNotAllowed
	ErrNoBase         = rpc.ErrNoBase
	ErrNoSession      = rpc.ErrNoSession
	ErrDigestMismatch = rpc.ErrDigestMismatch
	ErrBadRequest     = rpc.ErrBadRequest
	// ErrStaleEpoch: a message of an older dispatch of the transfer than
	// the one the destination serves (re-dispatched since).
	ErrStaleEpoch = rpc.ErrStaleEpoch
	// ErrConflict: the destination holds something the transfer must not
	// touch (a snapshot of that name from another source snapshot, or one
	// Ferry did not take). Nothing was changed.
	ErrConflict = rpc.ErrDestConflict
)

// SnapRef names a source snapshot with its id: ids are never reused within
// an image, so a snapshot deleted and taken again under the same name is
// another snapshot.
type SnapRef struct {
	Name string `json:"name"`
	ID   uint64 `json:"id"`
}

// PrepareRequest is what the source tells the destination before sending.
type PrepareRequest struct {
	TransferID string `json:"transfer_id"`
	// Epoch is the transfer's dispatch epoch: a prepare older than the
	// one the destination has seen is refused, and finish and abort must
	// carry the epoch of the prepare they follow.
	Epoch     int64  `json:"epoch"`
	ProjectID string `json:"project_id,omitempty"`
	Mode      string `json:"mode"`
	// Pool and Image name the destination image.
	Pool  string `json:"pool"`
	Image string `json:"image"`
	// The source's identity: an existing destination image is only
	// written when it was created by Ferry from this very source.
	SourceFSID    string `json:"source_fsid"`
	SourceImageID string `json:"source_image_id"`
	SourceName    string `json:"source_name"`
	// SourceRegion, when set, is the region whose agent certificate the
	// data connections must present (the grant's source region).
	SourceRegion string `json:"source_region,omitempty"`
	// Geometry of the source snapshot.
	Size     uint64 `json:"size"`
	Order    uint64 `json:"order"`
	Features uint64 `json:"features"`
	// Snapshot is the name the destination ends with; SourceSnapID the
	// id of the source snapshot copied (what "already complete" and a
	// resume are matched on, never the name alone).
	Snapshot     string `json:"snapshot"`
	SourceSnapID uint64 `json:"source_snap_id"`
	// Bases are the source's older snapshots, newest first: the
	// destination picks the newest whose verified record says it holds
	// that very source snapshot as the incremental base.
	Bases     []SnapRef `json:"bases,omitempty"`
	ChunkSize uint64    `json:"chunk_size"`
	// Grant is ferry-api's signed transfer.start this prepare serves: a
	// destination agent reached over the bus checks the request against
	// it (the in-process Dest does not need one). Its signature's expiry
	// orders grants: a destination refuses one older than a copy it holds
	// of another transfer.
	Grant *rpc.Grant `json:"grant,omitempty"`
	// Ephemeral: the copy is handed over (to Cinder) once finished: the
	// destination ends without a snapshot and without base metadata, and
	// removes Ferry's older snapshots. Never incremental. Agents that
	// predate it ignore it; PrepareResponse.Ephemeral tells the source
	// that the destination will honour it.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// ReplicationID: the transfer is a cycle of that replication, and
	// the finish keeps exactly the Ferry snapshots named in Retain plus
	// the new one (never removing one with clone children). Both must
	// match the grant's. Agents that predate them keep only the new
	// snapshot.
	ReplicationID string   `json:"replication_id,omitempty"`
	Retain        []string `json:"retain,omitempty"`
	// SnapshotTime is when the source snapshot was taken (kept in the
	// destination's record: a query about a lost report answers with it).
	SnapshotTime time.Time `json:"snapshot_time,omitzero"`
}

// Validate checks the request's fields.
func (r *PrepareRequest) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(f, a...)) }
	switch {
	case r.TransferID == "" || len(r.TransferID) > stream.MaxIDLen:
		return bad("transfer id must have 1..%d bytes", stream.MaxIDLen)
	case !validName(r.Pool) || !validName(r.Image):
		return bad("destination %q/%q is not a pool and image name", r.Pool, r.Image)
	case !validName(r.Snapshot):
		return bad("snapshot name %q", r.Snapshot)
	case r.SourceFSID == "" || r.SourceImageID == "":
		return bad("source identity missing")
	case r.SourceSnapID == 0:
		return bad("source snapshot id missing (a source agent older than this destination?)")
	case r.Epoch < 0:
		return bad("epoch %d", r.Epoch)
	case r.Ephemeral && r.Mode == ModeIncremental:
		return bad("an ephemeral transfer is a full copy, not incremental")
	case r.Order < 12 || r.Order > 26:
		return bad("object order %d outside 12..26", r.Order)
	case r.ReplicationID != "" && r.Ephemeral:
		return bad("a replication cycle is never ephemeral")
	case r.ReplicationID == "" && len(r.Retain) > 0:
		return bad("retain without a replication")
	}
	for _, n := range r.Retain {
		if !validName(n) || !strings.HasPrefix(n, SnapshotPrefix) {
			return bad("retained snapshot %q is not a Ferry snapshot name", n)
		}
	}
	switch r.Mode {
	case ModeAuto, ModeFull, ModeIncremental:
	default:
		return bad("mode %q is not auto, full or incremental", r.Mode)
	}
	return nil
}

// sameAs reports whether o asks for the very copy r asks for (a repeated
// prepare): same transfer, epoch, destination, source snapshot and kind of
// copy.
func (r *PrepareRequest) sameAs(o *PrepareRequest) bool {
	return r.TransferID == o.TransferID && r.Epoch == o.Epoch && r.Pool == o.Pool && r.Image == o.Image &&
		r.SourceFSID == o.SourceFSID && r.SourceImageID == o.SourceImageID && r.Snapshot == o.Snapshot &&
		r.SourceSnapID == o.SourceSnapID && r.Size == o.Size && r.Mode == o.Mode && r.Ephemeral == o.Ephemeral &&
		r.ChunkSize == o.ChunkSize && r.ReplicationID == o.ReplicationID && slices.Equal(r.Retain, o.Retain)
}

// validName accepts RBD pool, image and snapshot names.
func validName(s string) bool {
	return s != "" && len(s) <= 255 && !strings.ContainsAny(s, "/@\x00")
}

// PrepareResponse is the destination's answer.
type PrepareResponse struct {
	// Endpoint is the destination's data port, ServerName the name its
	// certificate carries.
	Endpoint   string `json:"endpoint"`
	ServerName string `json:"server_name"`
	Ticket     string `json:"ticket"`
	ChunkSize  uint64 `json:"chunk_size"`
	// Checkpoint is where to resume (watermark 0 from the start).
	Checkpoint stream.Checkpoint `json:"checkpoint"`
	Resumed    bool              `json:"resumed"`
	// Base is the incremental base, empty for a full copy.
	Base    string `json:"base,omitempty"`
	Created bool   `json:"created"`
	// Ephemeral echoes the request's: the destination will finish
	// without a snapshot. False from an agent that predates ephemeral
	// transfers, which the source then refuses to send to.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// Done: the destination already holds this transfer's copy (a
	// redelivered or repeated transfer): nothing is to be sent, nothing
	// was changed; Digest is the recorded transfer digest.
	Done   bool   `json:"done,omitempty"`
	Digest string `json:"digest,omitempty"`
	// Mode is how the copy the destination holds was made (full or
	// incremental), when Done.
	Mode string `json:"mode,omitempty"`
	// Removed are the snapshots the finish of the copy the destination
	// holds removed, when Done (from its record).
	Removed []string `json:"removed_snapshots,omitempty"`
}

// FinishRequest asks the destination to seal a sent transfer. Pool and
// Image let an agent that holds no session answer a repeated finish from
// the image's records.
type FinishRequest struct {
	TransferID string     `json:"transfer_id"`
	Epoch      int64      `json:"epoch"`
	Pool       string     `json:"pool,omitempty"`
	Image      string     `json:"image,omitempty"`
	Digest     string     `json:"digest"`
	Grant      *rpc.Grant `json:"grant,omitempty"`
}

// FinishResponse is the destination's account of a sealed transfer.
type FinishResponse struct {
	Digest    string `json:"digest"`
	BytesDone uint64 `json:"bytes_done"`
	// Snapshot is the snapshot the destination ends with; empty for an
	// ephemeral transfer.
	Snapshot string   `json:"snapshot"`
	Removed  []string `json:"removed_snapshots,omitempty"`
}

// Connector gives the cluster connection for one operation and the
// function that releases it (rbd.Pool.Acquire behind a closure).
type Connector func(ctx context.Context) (*rbd.Cluster, func(), error)

// Fixed is a Connector that always returns c and never closes it.
func Fixed(c *rbd.Cluster) Connector {
	return func(context.Context) (*rbd.Cluster, func(), error) { return c, func() {}, nil }
}

// Preparer is the destination as the source sees it.
type Preparer interface {
	Prepare(ctx context.Context, req PrepareRequest) (PrepareResponse, error)
	Finish(ctx context.Context, req FinishRequest) (FinishResponse, error)
	Abort(ctx context.Context, req AbortRequest) error
}

// AbortRequest ends a transfer's session at the destination (the
// checkpoint stays for a resume); Epoch must be the session's.
type AbortRequest struct {
	TransferID string     `json:"transfer_id"`
	Epoch      int64      `json:"epoch"`
	Reason     string     `json:"reason"`
	Grant      *rpc.Grant `json:"grant,omitempty"`
}

func allowed(pools []string, pool string) error {
	if !slices.Contains(pools, pool) {
		return fmt.Errorf("%w: %q (allowed: %s)", ErrPoolNotAllowed, pool, strings.Join(pools, ", "))
	}
	return nil
}
