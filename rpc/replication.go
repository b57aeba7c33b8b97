package rpc

import "context"

// Replication commands (since 1.3): ferry-api → a replication's agents.
// Both are signed agent commands (IsAgentCommand).
const (
	// MethodReplicationDrill: API → the destination region's agents (call
	// to agent.<region>): clone a retained point of a replica into a new
	// image that Cinder then manages (a DR drill). Idempotent: an existing
	// clone of that very parent snapshot is success.
	MethodReplicationDrill = "replication.drill"
	// MethodReplicationCleanup: API → the agents of a deleted
	// replication's source and destination regions (cast to
	// agent.<region>): remove Ferry's snapshots of the replication there,
	// and at the destination the replica unless it is kept.
	MethodReplicationCleanup = "replication.cleanup"
)

// DrillRequest is replication.drill's body. The agent protects
// Pool/Image@Snapshot if needed and clones it to ClonePool/CloneName; with
// Flatten the clone is flattened in the background (so that the point can
// be pruned later). A Snapshot that is not a verified Ferry point of that
// replica is refused (ErrNotFound or ErrConflict).
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

// DrillReply is replication.drill's reply.
type DrillReply struct {
	Size    uint64 `json:"size"`
	ImageID string `json:"image_id,omitempty"`
}

// Sides of a replication.cleanup.
const (
	CleanupSideSource      = "source"
	CleanupSideDestination = "destination"
)

// ReplicationCleanup is replication.cleanup's body. Source side: remove the
// tagged Ferry snapshots named in Snapshots from Pool/Image (or from the
// image in the RBD trash, then the trashed image too when no snapshot is
// left). Destination side: with RemoveImage, flatten any clone children
// (drill volumes stay valid), then remove every snapshot and the replica
// image (only one Ferry owns, made from that source); without it (the
// replica is kept), remove Ferry's snapshots and records and keep the
// image, whose head equals the newest point.
type ReplicationCleanup struct {
	ReplicationID string   `json:"replication_id"`
	Side          string   `json:"side"`
	Pool          string   `json:"pool"`
	Image         string   `json:"image"`
	Snapshots     []string `json:"snapshots,omitempty"`
	RemoveImage   bool     `json:"remove_image,omitempty"`
}

// MethodNotification marks an outbox row that is an OpenStack notification
// (an oslo.messaging v2 message, published as it is on the routing key
// notifications.<priority>), not a Ferry envelope. Since 1.3.
const MethodNotification = "oslo.notification"

// NotificationTopic is the topic of OpenStack notifications: they are
// published with the routing key <topic>.<priority> (notifications.info).
const NotificationTopic = "notifications"

// RawPublisher publishes a body as it is (no Ferry envelope), persistent,
// and returns once the broker confirmed it (the amqp Transport is one).
type RawPublisher interface {
	PublishRaw(ctx context.Context, target Target, body []byte) error
}
