package replicate

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/dispatch"
)

// Notification event types.
const (
	EventRPOBreached  = "replication.rpo_breached"
	EventRPORecovered = "replication.rpo_recovered"
	EventTransferEnd  = "transfer.end"
)

// Notifier builds OpenStack notifications (oslo.messaging v2 envelopes) as
// outbox rows, written in the transaction of the change they announce
// (db.SetNotifier) and published on Ferry's exchange with the routing key
// notifications.<priority>. It implements db.Notifier.
type Notifier struct {
	// Host names the publisher: publisher_id is volume-ferry.<Host>.
	Host string
	// Topic is [oslo_messaging_notifications] topics' (default
	// rpc.NotificationTopic).
	Topic string
}

// osloMessage is the inner message of an oslo.messaging v2 notification.
type osloMessage struct {
	MessageID   string `json:"message_id"`
	PublisherID string `json:"publisher_id"`
	EventType   string `json:"event_type"`
	Priority    string `json:"priority"`
	Payload     any    `json:"payload"`
	Timestamp   string `json:"timestamp"`
}

// osloEnvelope is what goes on the wire: the message as a JSON string.
type osloEnvelope struct {
	Version string `json:"oslo.version"`
	Message string `json:"oslo.message"`
}

// Notification is the outbox row of one notification. priority is INFO,
// WARN or ERROR (the routing key is its lower case).
func (n Notifier) Notification(eventType, priority string, payload any, at time.Time) (*db.OutboxMessage, error) {
	inner, err := json.Marshal(osloMessage{
		MessageID: uuid.NewString(), PublisherID: "volume-ferry." + n.Host, EventType: eventType,
		Priority: priority, Payload: payload,
		// oslo's str(utcnow()).
		Timestamp: at.UTC().Format("2006-01-02 15:04:05.000000"),
	})
	if err != nil {
		return nil, fmt.Errorf("notification %s: %w", eventType, err)
	}
	topic := n.Topic
	if topic == "" {
		topic = rpc.NotificationTopic
	}
	target := rpc.Target(topic + "." + strings.ToLower(priority))
	return dispatch.NewOutboxMessage("", target, rpc.MethodNotification, osloEnvelope{Version: "2.0", Message: string(inner)})
}

// TransferEnded is transfer.end, for a transfer that reached completed,
// error or cancelled.
func (n Notifier) TransferEnded(t *db.Transfer) (*db.OutboxMessage, error) {
	at := time.Now()
	if t.FinishedAt != nil {
		at = *t.FinishedAt
	}
	priority := "INFO"
	if t.Status == db.StatusError {
		priority = "ERROR"
	}
	return n.Notification(EventTransferEnd, priority, TransferPayload(t), at)
}

// RPOChanged is replication.rpo_breached (WARN) or
// replication.rpo_recovered (INFO).
func (n Notifier) RPOChanged(r *db.Replication, breached bool, at time.Time) (*db.OutboxMessage, error) {
	ev, priority := EventRPORecovered, "INFO"
	if breached {
		ev, priority = EventRPOBreached, "WARN"
	}
	return n.Notification(ev, priority, ReplicationPayload(r, at), at)
}

func timePtr(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := t.UTC().Format(time.RFC3339)
	return &s
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// TransferPayload is a transfer in a notification.
func TransferPayload(t *db.Transfer) map[string]any {
	return map[string]any{
		"transfer_id": t.ID, "name": t.Name, "project_id": t.ProjectID, "user_id": t.UserID,
		"status": string(t.Status), "mode": string(t.Mode), "replication_id": nonEmpty(t.ReplicationID),
		"source": map[string]any{"region": t.SourceRegion, "pool": t.SourcePool, "image": t.SourceImage,
			"snapshot": nonEmpty(t.SourceSnapshot), "volume_id": nonEmpty(t.SourceVolumeID), "backup_id": nonEmpty(t.SourceBackupID)},
		"destination": map[string]any{"region": t.DestRegion, "pool": t.DestPool, "image": t.DestImage,
			"snapshot": nonEmpty(t.DestSnapshot), "volume_id": nonEmpty(t.DestVolumeID), "backup_id": nonEmpty(t.DestBackupID)},
		"bytes_total": t.BytesTotal, "bytes_transferred": t.BytesTransferred, "digest": nonEmpty(t.Digest), "error": t.Error,
		"created_at": t.CreatedAt.UTC().Format(time.RFC3339), "started_at": timePtr(t.StartedAt), "finished_at": timePtr(t.FinishedAt),
	}
}

// ReplicationPayload is a replication in a notification, with its lag at
// `at`.
func ReplicationPayload(r *db.Replication, at time.Time) map[string]any {
	var lag *int64
	if r.LastSyncAt != nil {
		l := int64(at.Sub(*r.LastSyncAt) / time.Second)
		lag = &l
	}
	return map[string]any{
		"replication_id": r.ID, "name": r.Name, "project_id": r.ProjectID, "user_id": r.UserID, "status": string(r.Status),
		"source":      map[string]any{"region": r.SourceRegion, "pool": r.SourcePool, "image": r.SourceImage, "volume_id": nonEmpty(r.SourceVolumeID)},
		"destination": map[string]any{"region": r.DestRegion, "pool": r.DestPool, "image": r.DestImage},
		"rpo_seconds": r.RPOSeconds, "interval_seconds": r.IntervalSeconds, "lag_seconds": lag,
		"last_sync_at": timePtr(r.LastSyncAt), "last_transfer_id": nonEmpty(r.LastTransferID), "last_error": r.LastError,
	}
}
