package transfers

import (
	"net/http"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
)

// Location is a transfer's source or destination. The server sends null
// for what does not apply; it reads as "".
type Location struct {
	Region   string `json:"region"`
	Pool     string `json:"pool"`
	Image    string `json:"image"`
	Snapshot string `json:"snapshot"`
	VolumeID string `json:"volume_id"`
	BackupID string `json:"backup_id"`
}

// Transfer is a copy of an RBD image between regions, as the API shows
// it (ARCHITECTURE §3).
type Transfer struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description"`
	ProjectID   string `json:"project_id"`
	UserID      string `json:"user_id"`
	// Status: queued, accepted, preparing, transferring, verifying,
	// finalizing, completed; error; cancelling, cancelled.
	Status string `json:"status"`
	// Mode: auto, full or incremental.
	Mode             string   `json:"mode"`
	Source           Location `json:"source"`
	Destination      Location `json:"destination"`
	BytesTotal       int64    `json:"bytes_total"`
	BytesTransferred int64    `json:"bytes_transferred"`
	// Progress is a percentage, 0 to 100.
	Progress           float64 `json:"progress"`
	RateBytesPerSecond int64   `json:"rate_bytes_per_second"`
	// ETASeconds is nil when the server cannot estimate it.
	ETASeconds *int64 `json:"eta_seconds"`
	// Digest is "<alg>:<hex>" once known, else "".
	Digest string `json:"digest"`
	// Error is why the transfer failed, else "".
	Error      string     `json:"error"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	// ReplicationID is the replication this transfer is a cycle of, else
	// "" (the server sends null; it omits the field below microversion
	// 1.1, ReplicationMicroversion: set sc.Microversion to see it).
	ReplicationID string `json:"replication_id"`
}

// Event is one entry of a transfer's history.
type Event struct {
	CreatedAt time.Time `json:"created_at"`
	// Kind is the event's kind (a state change, an error, a retry...).
	Kind       string `json:"kind"`
	FromStatus string `json:"from_status"`
	ToStatus   string `json:"to_status"`
	Message    string `json:"message"`
	// RequestID is the API request that caused the event, if any.
	RequestID string `json:"request_id"`
}

type commonResult struct {
	gophercloud.Result
}

// Extract returns the transfer of a Create or Get.
func (r commonResult) Extract() (*Transfer, error) {
	var s Transfer
	err := r.ExtractInto(&s)
	return &s, err
}

// ExtractInto decodes the "transfer" object into v.
func (r commonResult) ExtractInto(v any) error {
	return r.ExtractIntoStructPtr(v, "transfer")
}

// CreateResult is the result of Create; Extract returns the transfer.
type CreateResult struct {
	commonResult
}

// GetResult is the result of Get; Extract returns the transfer.
type GetResult struct {
	commonResult
}

// ActionResult is the result of Cancel or Retry; ExtractErr returns its
// error.
type ActionResult struct {
	gophercloud.ErrResult
}

// DeleteResult is the result of Delete; ExtractErr returns its error.
type DeleteResult struct {
	gophercloud.ErrResult
}

// EventsResult is the result of ListEvents; Extract returns the events.
type EventsResult struct {
	gophercloud.Result
}

// Extract returns the events, oldest first.
func (r EventsResult) Extract() ([]Event, error) {
	var s []Event
	err := r.ExtractIntoSlicePtr(&s, "events")
	return s, err
}

// TransferPage is one page of List.
type TransferPage struct {
	pagination.LinkedPageBase
}

// IsEmpty reports whether the page holds no transfer.
func (r TransferPage) IsEmpty() (bool, error) {
	if r.StatusCode == http.StatusNoContent {
		return true, nil
	}
	transfers, err := ExtractTransfers(r)
	return len(transfers) == 0, err
}

// NextPageURL is the href of the page's transfers_links rel=next, or ""
// on the last page.
func (r TransferPage) NextPageURL() (string, error) {
	var s struct {
		Links []gophercloud.Link `json:"transfers_links"`
	}
	if err := r.ExtractInto(&s); err != nil {
		return "", err
	}
	return gophercloud.ExtractNextURL(s.Links)
}

// ExtractTransfers returns the transfers of a page of List.
func ExtractTransfers(r pagination.Page) ([]Transfer, error) {
	var s []Transfer
	err := ExtractTransfersInto(r, &s)
	return s, err
}

// ExtractTransfersInto decodes the "transfers" of a page into v.
func ExtractTransfersInto(r pagination.Page, v any) error {
	return r.(TransferPage).ExtractIntoSlicePtr(v, "transfers")
}
