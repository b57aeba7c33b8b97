package rpc

import (
	"fmt"
	"strings"
	"time"
)

// Bodies of the messages between ferry-api and the agents. Fields are only
// ever added (minor versions); receivers ignore the ones they do not know.

// Location is one side of a transfer.
type Location struct {
	Region   string `json:"region"`
	Pool     string `json:"pool,omitempty"`
	Image    string `json:"image,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
}

// TransferStart is transfer.start's body (API → source region's agents).
type TransferStart struct {
	TransferID  string   `json:"transfer_id"`
	ProjectID   string   `json:"project_id,omitempty"`
	Mode        string   `json:"mode,omitempty"`
	Source      Location `json:"source"`
	Destination Location `json:"destination"`
	// Epoch grows each time the transfer is (re-)dispatched; reports of
	// an older epoch are stale.
	Epoch int64 `json:"epoch"`
	// Ephemeral: the copy is handed over (to Cinder): once it completed,
	// no Ferry snapshot stays on either side, and the destination keeps
	// no base metadata. Such a transfer is always a full copy (mode
	// incremental is refused) and its completed event names no snapshot.
	// Since 1.1; older agents ignore it.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// ReplicationID names the replication this transfer is a cycle of
	// (since 1.3). With it, the destination keeps exactly the Ferry
	// snapshots named in Retain plus the new one, and removes its other
	// Ferry snapshots (never one that has clone children); without it,
	// the destination keeps only the new snapshot.
	ReplicationID string   `json:"replication_id,omitempty"`
	Retain        []string `json:"retain,omitempty"`
	// BandwidthLimit, when positive, caps this transfer's bytes per
	// second (the source takes the lower of it and its own [agent]
	// bandwidth_limit). Since 1.3.
	BandwidthLimit int64 `json:"bandwidth_limit,omitempty"`
}

// Validate checks what an agent needs to run the transfer.
func (t TransferStart) Validate() error {
	switch {
	case t.TransferID == "":
		return fmt.Errorf("%w: transfer.start without transfer_id", ErrInvalid)
	case t.Source.Region == "" || t.Source.Pool == "" || t.Source.Image == "":
		return fmt.Errorf("%w: transfer.start %s: source needs region, pool and image", ErrInvalid, t.TransferID)
	case t.Destination.Region == "":
		return fmt.Errorf("%w: transfer.start %s: destination needs a region", ErrInvalid, t.TransferID)
	}
	return nil
}

// TransferCancel is transfer.cancel's body. Epoch is the transfer's: an
// agent cancels only the run of that epoch (since 1.2; 0 from an older
// API cancels whatever runs).
type TransferCancel struct {
	TransferID string `json:"transfer_id"`
	Epoch      int64  `json:"epoch,omitempty"`
}

// Status events an agent reports about a transfer.
const (
	EventAccepted  = "accepted"
	EventProgress  = "progress"
	EventCompleted = "completed"
	EventError     = "error"
	EventCancelled = "cancelled"
)

// StatusEvent is agent.status's body (agent → ferry.status).
type StatusEvent struct {
	TransferID string    `json:"transfer_id"`
	Event      string    `json:"event"`
	Epoch      int64     `json:"epoch"`
	Region     string    `json:"region"`
	Host       string    `json:"host"`
	Time       time.Time `json:"time"`
	BytesDone  uint64    `json:"bytes_done,omitempty"`
	BytesTotal uint64    `json:"bytes_total,omitempty"`
	Rate       uint64    `json:"rate_bytes_per_second,omitempty"`
	Digest     string    `json:"digest,omitempty"`
	Mode       string    `json:"mode,omitempty"`
	Snapshot   string    `json:"snapshot,omitempty"`
	Error      string    `json:"error,omitempty"`
	// SnapshotTime is when the source snapshot of a completed transfer
	// was taken (RBD's timestamp); Removed are the destination snapshots
	// its finish removed. Since 1.3.
	SnapshotTime *time.Time `json:"snapshot_time,omitempty"`
	Removed      []string   `json:"removed,omitempty"`
}

// Heartbeat is agent.heartbeat's body.
type Heartbeat struct {
	Binary  string    `json:"binary"`
	Host    string    `json:"host"`
	Region  string    `json:"region"`
	Version string    `json:"version"`
	Time    time.Time `json:"time"`
	// DataEndpoint is where sources reach this agent's data port.
	DataEndpoint string   `json:"data_endpoint,omitempty"`
	Running      []string `json:"running,omitempty"`
	// BootID is random per agent process start: a new one means that
	// everything the previous process ran is gone. Since 1.2; with it,
	// Running is complete (the API reconciles the transfers it assigned
	// to this agent against it).
	BootID string `json:"boot_id,omitempty"`
	// Seq counts the heartbeats of one boot (1, 2, …): the API ignores
	// one older than the last it recorded (redelivered or overtaken).
	Seq uint64 `json:"seq,omitempty"`
	// MaxTransfers is the agent's max_transfers (0: unknown): with
	// Running it says whether the agent has a free slot.
	MaxTransfers int `json:"max_transfers,omitempty"`
	// CephHealth is the last result of the agent's cluster health probe
	// (nil before the first one). The probe runs on its own; the
	// heartbeat never waits for Ceph.
	CephHealth *CephHealth `json:"ceph_health,omitempty"`
}

// CephHealth is a region's cluster health as an agent last saw it.
type CephHealth struct {
	// Status is HEALTH_OK, HEALTH_WARN or HEALTH_ERR; empty when the
	// probe failed (Error says why: a stalled cluster times out).
	Status string `json:"status,omitempty"`
	// Checks are the health checks that matter to transfers (full and
	// nearfull OSDs and pools, slow ops, down OSDs, inactive PGs, pause
	// flags), most severe first.
	Checks []HealthCheck `json:"checks,omitempty"`
	// Others counts the checks left out of Checks.
	Others int    `json:"others,omitempty"`
	Error  string `json:"error,omitempty"`
	// AgeSeconds is how long before the heartbeat the probe ended (the
	// receiver dates it with its own clock).
	AgeSeconds float64 `json:"age_seconds"`
}

// HealthCheck is one Ceph health check.
type HealthCheck struct {
	Code     string `json:"code"`
	Severity string `json:"severity"`
	Message  string `json:"message,omitempty"`
}

// MethodTransferQuery: API → a destination region's agents (call to
// agent.<region>): does the destination image hold the snapshot a
// transfer ends with, with the digest it was verified with? The API asks
// when a transfer's terminal report may have been lost. Since 1.2.
const MethodTransferQuery = "transfer.query"

// TransferQuery is transfer.query's body.
type TransferQuery struct {
	TransferID string `json:"transfer_id"`
	Epoch      int64  `json:"epoch"`
	Pool       string `json:"pool"`
	Image      string `json:"image"`
	// Snapshot is the snapshot the transfer ends with; empty for an
	// ephemeral copy (then the image's completion marker is asked for).
	Snapshot string `json:"snapshot,omitempty"`
}

// TransferQueryReply is transfer.query's reply.
type TransferQueryReply struct {
	// Complete: the image holds Snapshot (or, when ephemeral, the copy
	// was verified) for this transfer.
	Complete bool `json:"complete"`
	// Exists: the image exists (a copy was at least prepared).
	Exists   bool   `json:"exists"`
	Snapshot string `json:"snapshot,omitempty"`
	Digest   string `json:"digest,omitempty"`
	Mode     string `json:"mode,omitempty"`
	// BytesDone is the copied size (the transfer's bytes_total).
	BytesDone uint64 `json:"bytes_done,omitempty"`
	// Removed are the destination snapshots the transfer's finish
	// removed, SnapshotTime when its source snapshot was taken: what its
	// completed event carries (since 1.3).
	Removed      []string   `json:"removed,omitempty"`
	SnapshotTime *time.Time `json:"snapshot_time,omitempty"`
}

// MethodTransferCleanup: API → the agents of a failed or cancelled
// transfer's source and destination regions (cast to agent.<region>):
// remove what it left there, and nothing else: the source snapshot Ferry
// took (tagged), the destination image when the transfer created it and
// nothing was ever completed into it, else its writing state. Sent by
// ferry-api's garbage collector after [api] cleanup_grace. Since 1.2.
const MethodTransferCleanup = "transfer.cleanup"

// TransferCleanup is transfer.cleanup's body.
type TransferCleanup struct {
	TransferID  string   `json:"transfer_id"`
	Epoch       int64    `json:"epoch"`
	Source      Location `json:"source"`
	Destination Location `json:"destination"`
}

// MethodTransferSettle: API → a completed transfer's source region's
// agents (cast to agent.<region>): the transfer completed (ferry-api
// learned it from the destination's state, so the source agent may never
// have seen its own completion): remove the source base its snapshot's
// tag records as superseded, and the chain below it, as the source does
// after a completion it sees; for an ephemeral copy, the transfer's own
// snapshot. Nothing else is touched: a kept copy's snapshot is the next
// base. Since 1.3.
const MethodTransferSettle = "transfer.settle"

// TransferSettle is transfer.settle's body. Source.Snapshot is the
// snapshot the transfer copied (ferry-<id>, the one Ferry took).
type TransferSettle struct {
	TransferID string   `json:"transfer_id"`
	Epoch      int64    `json:"epoch"`
	Source     Location `json:"source"`
	Ephemeral  bool     `json:"ephemeral,omitempty"`
}

// MethodReplicationDrill: API → a replication's destination region's
// agents (call to agent.<region>): clone a retained point of the replica
// (a drill, test failover). Since 1.3.
const MethodReplicationDrill = "replication.drill"

// DrillRequest is replication.drill's body: clone Pool/Image@Snapshot,
// which must be a verified Ferry point of replication ReplicationID, to
// ClonePool/CloneName (protecting the snapshot first when needed). An
// existing clone of that very snapshot under CloneName is success. With
// Flatten, the clone is flattened in the background afterwards.
type DrillRequest struct {
	DrillID       string `json:"drill_id"`
	ReplicationID string `json:"replication_id"`
	Pool          string `json:"pool"`
	Image         string `json:"image"`
	Snapshot      string `json:"snapshot"`
	ClonePool     string `json:"clone_pool"`
	CloneName     string `json:"clone_name"`
	Flatten       bool   `json:"flatten,omitempty"`
}

// Validate checks the request's fields.
func (r DrillRequest) Validate() error {
	for _, f := range [][2]string{{"drill_id", r.DrillID}, {"replication_id", r.ReplicationID}, {"pool", r.Pool},
		{"image", r.Image}, {"snapshot", r.Snapshot}, {"clone_pool", r.ClonePool}, {"clone_name", r.CloneName}} {
		if f[1] == "" {
			return fmt.Errorf("%w: replication.drill without %s", ErrInvalid, f[0])
		}
	}
	return nil
}

// DrillReply is replication.drill's reply: the clone's size and RBD id.
type DrillReply struct {
	Size    uint64 `json:"size"`
	ImageID string `json:"image_id"`
}

// MethodReplicationCleanup: API → the agents of a deleted replication's
// source and destination regions (cast to agent.<region>): remove Ferry's
// snapshots (and, on the destination with RemoveImage, the replica).
// Since 1.3.
const MethodReplicationCleanup = "replication.cleanup"

// Sides of a ReplicationCleanup.
const (
	CleanupSideSource      = "source"
	CleanupSideDestination = "destination"
)

// ReplicationCleanup is replication.cleanup's body.
//
// Side source: Pool/Image is the source image; the Ferry snapshots named
// in Snapshots (tagged by Ferry: others stay) are removed, and so are the
// points of ReplicationID the image received while it was the
// replication's destination (before a failover; Ferry's sealed records of
// them name the replication), on the image or, when Cinder moved it to the
// RBD trash, on the trashed image, which is then removed from the trash if
// it has no snapshot left.
//
// Side destination: Pool/Image is the replica (only an image Ferry created
// for ReplicationID is touched). RemoveImage: the clones of its snapshots
// (drill volumes) are flattened, then its snapshots and the image are
// removed. Otherwise (keep_replica) Ferry's snapshots and records go and
// the image stays, its head equal to the newest point.
type ReplicationCleanup struct {
	ReplicationID string   `json:"replication_id"`
	Side          string   `json:"side"`
	Pool          string   `json:"pool"`
	Image         string   `json:"image"`
	Snapshots     []string `json:"snapshots,omitempty"`
	RemoveImage   bool     `json:"remove_image,omitempty"`
}

// Validate checks the request's fields.
func (r ReplicationCleanup) Validate() error {
	switch {
	case r.ReplicationID == "" || r.Pool == "" || r.Image == "":
		return fmt.Errorf("%w: replication.cleanup needs replication_id, pool and image", ErrInvalid)
	case r.Side != CleanupSideSource && r.Side != CleanupSideDestination:
		return fmt.Errorf("%w: replication.cleanup side %q is not source or destination", ErrInvalid, r.Side)
	}
	return nil
}

// MethodReplicationPromote: API → a region's agents (call to
// agent.<region>): make that region's image of a replication the primary
// at a retained point (failover, failback). Since 1.3.
const MethodReplicationPromote = "replication.promote"

// MethodReplicationDemote: API → a region's agents (call to
// agent.<region>): make that region's image the destination of the new
// primary (PeerImage) at their common point, preserving a divergent head
// aside first when asked. Since 1.3.
const MethodReplicationDemote = "replication.demote"

// PromoteRequest is replication.promote's body: Pool/Image, Ferry's image
// of replication ReplicationID, becomes the primary at Point (a verified
// point of it), its head rolled back to Point when it differs. A repeat
// with the same Point answers the same; another Point while the image is
// primary is refused unless Force.
type PromoteRequest struct {
	ReplicationID string `json:"replication_id"`
	Pool          string `json:"pool"`
	Image         string `json:"image"`
	Point         string `json:"point"`
	Force         bool   `json:"force,omitempty"`
}

// Validate checks the request's fields.
func (r PromoteRequest) Validate() error {
	return requireNames("replication.promote", [][2]string{{"replication_id", r.ReplicationID}, {"pool", r.Pool},
		{"image", r.Image}, {"point", r.Point}})
}

// PromoteReply is replication.promote's reply: the promoted image's
// identity (FSID, RBD id, pool/image name), the snapshot id of Point on it
// (what the demoted side's record binds to), its size and recorded
// digest, and whether the head was rolled back to Point.
type PromoteReply struct {
	FSID       string `json:"fsid"`
	ImageID    string `json:"image_id"`
	Name       string `json:"name"`
	SnapID     uint64 `json:"snap_id"`
	Size       uint64 `json:"size"`
	Digest     string `json:"digest,omitempty"`
	RolledBack bool   `json:"rolled_back,omitempty"`
}

// PeerImage is the new primary as a demoted image records it: its source.
type PeerImage struct {
	FSID    string `json:"fsid"`
	ImageID string `json:"image_id"`
	Name    string `json:"name"`
	SnapID  uint64 `json:"snap_id"`
	Digest  string `json:"digest,omitempty"`
}

// DemoteRequest is replication.demote's body: Pool/Image, which holds
// Point (a Ferry snapshot of ReplicationID on it), becomes a Ferry
// destination of Peer, its head rolled back to Point. A head that differs
// from Point is refused unless PreserveAs names the image (in Pool) to
// copy it to first.
type DemoteRequest struct {
	ReplicationID string    `json:"replication_id"`
	Pool          string    `json:"pool"`
	Image         string    `json:"image"`
	Point         string    `json:"point"`
	Peer          PeerImage `json:"peer"`
	PreserveAs    string    `json:"preserve_as,omitempty"`
}

// Validate checks the request's fields.
func (r DemoteRequest) Validate() error {
	if err := requireNames("replication.demote", [][2]string{{"replication_id", r.ReplicationID}, {"pool", r.Pool},
		{"image", r.Image}, {"point", r.Point}, {"peer.fsid", r.Peer.FSID}, {"peer.image_id", r.Peer.ImageID}, {"peer.name", r.Peer.Name}}); err != nil {
		return err
	}
	switch {
	case r.Peer.SnapID == 0:
		return fmt.Errorf("%w: replication.demote without peer.snap_id", ErrInvalid)
	case r.PreserveAs != "" && (!rbdName(r.PreserveAs) || r.PreserveAs == r.Image):
		return fmt.Errorf("%w: replication.demote preserve_as %q is not another image's name", ErrInvalid, r.PreserveAs)
	}
	return nil
}

// DemoteReply is replication.demote's reply: the image the divergent head
// was copied to (empty: none) and its allocated bytes, whether the head
// was rolled back, and the snapshot id of Point on the demoted image.
type DemoteReply struct {
	Preserved      string `json:"preserved,omitempty"`
	PreservedBytes uint64 `json:"preserved_bytes,omitempty"`
	RolledBack     bool   `json:"rolled_back,omitempty"`
	SnapID         uint64 `json:"snap_id"`
}

// MethodReplicationRename: API → a region's agents (call to
// agent.<region>): give that region's image of a replication another name
// in its pool (failback: the demoted volume-<X> Cinder managed becomes
// ferry-replica-<id> again once unmanaged). Since 1.3.
const MethodReplicationRename = "replication.rename"

// RenameRequest is replication.rename's body: Pool/Image, Ferry's image of
// replication ReplicationID and not its primary, is renamed To (in Pool).
// A repeat (Image gone, To Ferry's image of ReplicationID) answers the
// same; To naming another image is refused.
type RenameRequest struct {
	ReplicationID string `json:"replication_id"`
	Pool          string `json:"pool"`
	Image         string `json:"image"`
	To            string `json:"to"`
}

// Validate checks the request's fields.
func (r RenameRequest) Validate() error {
	if err := requireNames("replication.rename", [][2]string{{"replication_id", r.ReplicationID}, {"pool", r.Pool},
		{"image", r.Image}, {"to", r.To}}); err != nil {
		return err
	}
	if r.To == r.Image {
		return fmt.Errorf("%w: replication.rename to %q, the image's own name", ErrInvalid, r.To)
	}
	return nil
}

// RenameReply is replication.rename's reply: the image's name now
// (pool/To).
type RenameReply struct {
	Name string `json:"name"`
}

// MethodReplicationGroupSnapshot: API → a consistency group's source
// region's agents (call to agent.<region>): take one crash-consistent
// snapshot of all the group's member images at one instant, each
// member's named ferry-<its transfer id>, before ferry-api inserts each
// member's transfer (an ordinary cycle that finds its snapshot taken).
// Since 1.3.
const MethodReplicationGroupSnapshot = "replication.group_snapshot"

// MaxGroupMembers bounds the members of a consistency group.
const MaxGroupMembers = 16

// GroupSnapshotRequest is replication.group_snapshot's body: cycle CycleID
// of group GroupID, one member per replication, each naming the
// transfer whose snapshot it takes and its source image. A repeat answers
// the same snapshots; a member whose transfer completed (its snapshot
// since superseded) is refused (conflict), as is a snapshot of that name
// that is not this cycle's.
type GroupSnapshotRequest struct {
	GroupID string                `json:"group_id"`
	CycleID string                `json:"cycle_id"`
	Members []GroupSnapshotMember `json:"members"`
}

// GroupSnapshotMember is one member of a group snapshot.
type GroupSnapshotMember struct {
	ReplicationID string `json:"replication_id"`
	TransferID    string `json:"transfer_id"`
	Pool          string `json:"pool"`
	Image         string `json:"image"`
}

// Validate checks the request's fields: 1 to MaxGroupMembers members, each
// complete, no image, transfer or replication twice.
func (r GroupSnapshotRequest) Validate() error {
	const method = "replication.group_snapshot"
	switch {
	case r.GroupID == "":
		return fmt.Errorf("%w: %s without group_id", ErrInvalid, method)
	case r.CycleID == "":
		return fmt.Errorf("%w: %s without cycle_id", ErrInvalid, method)
	case len(r.Members) == 0 || len(r.Members) > MaxGroupMembers:
		return fmt.Errorf("%w: %s with %d members (1 to %d)", ErrInvalid, method, len(r.Members), MaxGroupMembers)
	}
	seen := make(map[string]bool, 3*len(r.Members))
	for i, m := range r.Members {
		if err := requireNames(method, [][2]string{{"replication_id", m.ReplicationID}, {"transfer_id", m.TransferID},
			{"pool", m.Pool}, {"image", m.Image}}); err != nil {
			return fmt.Errorf("member %d: %w", i, err)
		}
		for _, k := range []string{"image " + m.Pool + "/" + m.Image, "transfer " + m.TransferID, "replication " + m.ReplicationID} {
			if seen[k] {
				return fmt.Errorf("%w: %s lists %s twice", ErrInvalid, method, k)
			}
			seen[k] = true
		}
	}
	return nil
}

// GroupSnapshotReply is replication.group_snapshot's reply: the snapshot
// of each member, in the order of the request's members.
type GroupSnapshotReply struct {
	Members []GroupSnapshotTaken `json:"members"`
}

// GroupSnapshotTaken is one member's snapshot: its name (ferry-<transfer
// id>) and RBD id, and when it was taken (nil when unknown).
type GroupSnapshotTaken struct {
	TransferID   string     `json:"transfer_id"`
	Snapshot     string     `json:"snapshot"`
	SnapID       uint64     `json:"snap_id"`
	SnapshotTime *time.Time `json:"snapshot_time,omitempty"`
}

// requireNames checks that each field is set and an RBD name (no '/', '@'
// or NUL; the peer's name is pool/image and only needs to be set).
func requireNames(method string, fields [][2]string) error {
	for _, f := range fields {
		switch {
		case f[1] == "":
			return fmt.Errorf("%w: %s without %s", ErrInvalid, method, f[0])
		case f[0] != "peer.name" && f[0] != "peer.fsid" && f[0] != "peer.image_id" && !rbdName(f[1]):
			return fmt.Errorf("%w: %s %s %q is not an RBD name", ErrInvalid, method, f[0], f[1])
		}
	}
	return nil
}

func rbdName(s string) bool {
	return s != "" && len(s) <= 255 && !strings.ContainsAny(s, "/@\x00")
}
