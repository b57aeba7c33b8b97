package transfer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// The state Ferry keeps in a destination image's metadata (the writing
// state, the checkpoint, one record per snapshot Ferry took) decides what
// the next transfer may skip, resume or remove. Anyone who can write the
// pool can edit image-meta, so every such value is sealed: an HMAC-SHA256
// with the region's state key (shared by the region's agents, never by
// pool writers) over the kind of record, the image's id and the value. A
// value that does not verify is treated as absent: a full restart, never a
// stitched copy, and a snapshot whose record does not verify is never
// removed. The image id in the MAC keeps a valid record from being copied
// onto another image (or inherited by a clone).

// StateKeySize is the length of a region's state key.
const StateKeySize = 32

// ErrStateKey: the state key is malformed.
var ErrStateKey = errors.New("state key")

// Sealer seals and opens the values Ferry keeps in image metadata.
type Sealer struct{ key []byte }

// NewSealer returns a Sealer for key (StateKeySize bytes).
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != StateKeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrStateKey, len(key), StateKeySize)
	}
	return &Sealer{key: append([]byte(nil), key...)}, nil
}

type sealed struct {
	V   json.RawMessage `json:"v"`
	MAC string          `json:"mac"`
}

func (s *Sealer) mac(kind, imageID string, v []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	fmt.Fprintf(m, "ferry-state-1\x00%s\x00%s\x00", kind, imageID)
	m.Write(v)
	return m.Sum(nil)
}

// Seal encodes v for image imageID as a record of kind.
func (s *Sealer) Seal(kind, imageID string, v any) (string, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	out, err := json.Marshal(sealed{V: raw, MAC: hex.EncodeToString(s.mac(kind, imageID, raw))})
	return string(out), err
}

// errUnsealed: a value that is not sealed with this region's key for this
// image and kind.
var errUnsealed = errors.New("state does not verify")

// Open decodes into v what Seal made for the same kind and image; anything
// else is errUnsealed.
func (s *Sealer) Open(kind, imageID, text string, v any) error {
	var in sealed
	if err := json.Unmarshal([]byte(text), &in); err != nil || len(in.V) == 0 {
		return fmt.Errorf("%w: %s is not a sealed value", errUnsealed, kind)
	}
	got, err := hex.DecodeString(in.MAC)
	if err != nil || !hmac.Equal(got, s.mac(kind, imageID, in.V)) {
		return fmt.Errorf("%w: %s: bad MAC", errUnsealed, kind)
	}
	if err := json.Unmarshal(in.V, v); err != nil {
		return fmt.Errorf("%w: %s: %w", errUnsealed, kind, err)
	}
	return nil
}

// Record kinds and the metadata keys that hold them.
const (
	kindWriting    = "writing"
	kindCheckpoint = "checkpoint"
	kindSnapshot   = "snapshot"
	kindCompleted  = "completed"
	kindSourceSnap = "source-snapshot"
	kindDone       = "done"
	// MetaDonePrefix + transfer id holds a doneTag.
	MetaDonePrefix = "ferry.done."
	// MetaSnapRecordPrefix + snapshot name holds the snapRecord of a
	// destination snapshot Ferry took.
	MetaSnapRecordPrefix = "ferry.snap."
	// MetaCompleted holds the completedRecord of an ephemeral transfer
	// (which ends without a snapshot).
	MetaCompleted = "ferry.completed"
	// MetaSourceSnapPrefix + snapshot name tags a source snapshot Ferry
	// took (sourceSnapTag): only tagged snapshots are ever removed.
	MetaSourceSnapPrefix = "ferry.srcsnap."
)

// writingState marks a destination head that a transfer is writing: a
// resume must use the same base and source snapshot; another transfer
// must bring the head back to its base first. Verified is set once the
// data was verified and flushed, before the snapshot is taken: a Finish
// interrupted after it completes on the next prepare or finish.
type writingState struct {
	TransferID   string `json:"transfer_id"`
	Epoch        int64  `json:"epoch"`
	Base         string `json:"base,omitempty"`
	BaseID       uint64 `json:"base_id,omitempty"` // the destination snapshot's id
	Snapshot     string `json:"snapshot"`
	SourceSnapID uint64 `json:"source_snap_id"`
	Size         uint64 `json:"size"`
	Ephemeral    bool   `json:"ephemeral,omitempty"`
	Verified     string `json:"verified,omitempty"` // the transfer digest
	BytesDone    uint64 `json:"bytes_done,omitempty"`
	// ReplicationID and Retain: the seal of a replication cycle keeps
	// the Ferry snapshots named in Retain besides the new one.
	ReplicationID string   `json:"replication_id,omitempty"`
	Retain        []string `json:"retain,omitempty"`
	// SourceSnapTime: when the source snapshot was taken.
	SourceSnapTime time.Time `json:"source_snap_time,omitzero"`
	// Granted: see snapRecord.
	Granted time.Time `json:"granted,omitzero"`
}

// sameRun reports whether w is the state of the transfer req asks for: the
// same transfer, snapshot and source snapshot.
func (w *writingState) sameRun(req *PrepareRequest) bool {
	return w != nil && w.TransferID == req.TransferID && w.Snapshot == req.Snapshot &&
		w.SourceSnapID == req.SourceSnapID && w.Ephemeral == req.Ephemeral
}

// snapRecord is Ferry's record of a destination snapshot it took at the
// end of a verified transfer: the snapshot (by id, so a recreated snapshot
// of the same name is not Ferry's), the source snapshot it equals and the
// transfer digest.
type snapRecord struct {
	Snapshot     string `json:"snapshot"`
	SnapID       uint64 `json:"snap_id"`
	TransferID   string `json:"transfer_id"`
	SourceSnapID uint64 `json:"source_snap_id"`
	Digest       string `json:"digest"`
	// Mode (full or incremental) and BytesDone (the extents copied)
	// answer a query about a transfer whose report was lost.
	Mode      string `json:"mode,omitempty"`
	BytesDone uint64 `json:"bytes_done,omitempty"`
	// Granted is when ferry-api granted the transfer (its signed start's
	// expiry): a replayed grant older than a copy the destination holds
	// is refused.
	Granted time.Time `json:"granted,omitzero"`
	// ReplicationID: the snapshot is a point of that replication (only
	// such a verified point is ever cloned for its drills).
	ReplicationID string `json:"replication_id,omitempty"`
	// Removed are the older snapshots the seal removed, SourceSnapTime
	// when the source snapshot was taken: a repeated transfer, or a
	// query about a lost report, answers with them.
	Removed        []string  `json:"removed,omitempty"`
	SourceSnapTime time.Time `json:"source_snap_time,omitzero"`
}

// completedRecord is what an ephemeral transfer leaves instead of a
// snapshot: a redelivered prepare or finish of it answers from here.
type completedRecord struct {
	TransferID   string    `json:"transfer_id"`
	SourceSnapID uint64    `json:"source_snap_id"`
	Digest       string    `json:"digest"`
	BytesDone    uint64    `json:"bytes_done,omitempty"`
	Granted      time.Time `json:"granted,omitzero"`
}

// doneTag is left on a source image when Ferry removes the snapshot of a
// transfer that completed (an ephemeral copy's, or a base a newer transfer
// replaced): a replayed start of that transfer must not take it again.
// Tags older than doneTagLife are pruned (no grant lives that long).
type doneTag struct {
	TransferID string    `json:"transfer_id"`
	At         time.Time `json:"at"`
}

// doneTagLife bounds how long a doneTag is kept: longer than any signed
// command lives ([api] command_ttl is at most 7 days).
const doneTagLife = 8 * 24 * time.Hour

// sourceSnapTag marks a source snapshot that Ferry took, by id.
type sourceSnapTag struct {
	Snapshot   string `json:"snapshot"`
	SnapID     uint64 `json:"snap_id"`
	TransferID string `json:"transfer_id"`
	// Base is the snapshot the transfer that took this one was diffed
	// from (recorded once the destination chose it): when a later
	// transfer removes this snapshot as its superseded base, Base goes
	// too if it is still there, so a completion this agent never saw
	// (reported from the destination's state after a crash) leaves no
	// snapshot behind.
	Base string `json:"base,omitempty"`
}
