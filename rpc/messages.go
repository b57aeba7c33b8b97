package rpc

import (
	"fmt"
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
}
