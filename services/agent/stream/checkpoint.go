package stream

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// Checkpoint is the destination's resume point. Every chunk with
// seq < Watermark is written and flushed; DigestState is the serialized
// sha256 state (encoding.BinaryMarshaler) of the transfer digest over those
// chunks' digests, so the source can resume the digest without re-reading.
type Checkpoint struct {
	TransferID  string    `json:"transfer_id"`
	ChunkSize   uint64    `json:"chunk_size"`
	Watermark   uint64    `json:"watermark"`
	BytesDone   uint64    `json:"bytes_done"` // image bytes covered by seq < Watermark
	DigestState []byte    `json:"digest_state,omitempty"`
	Complete    bool      `json:"complete,omitempty"` // set by a successful commit
	UpdatedAt   time.Time `json:"updated_at"`
}

// Encode renders the checkpoint as a compact string for image metadata.
func (c Checkpoint) Encode() (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("stream: encode checkpoint: %w", err)
	}
	return string(b), nil
}

// DecodeCheckpoint parses what Encode produced.
func DecodeCheckpoint(s string) (Checkpoint, error) {
	var c Checkpoint
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	return c, nil
}

// usableFor checks that the checkpoint belongs to this transfer and chunk
// size and that its digest state restores.
func (c Checkpoint) usableFor(transferID string, chunkSize uint64) error {
	switch {
	case c.TransferID != transferID:
		return fmt.Errorf("%w: it belongs to transfer %q", ErrCheckpoint, c.TransferID)
	case c.ChunkSize != chunkSize:
		return fmt.Errorf("%w: chunk size %d, transfer uses %d", ErrCheckpoint, c.ChunkSize, chunkSize)
	}
	_, err := newDigestFolder(c.Watermark, c.BytesDone, c.DigestState, 1)
	return err
}

// MemCheckpointStore is an in-memory CheckpointStore for tests and harnesses.
type MemCheckpointStore struct {
	mu    sync.Mutex
	cp    Checkpoint
	ok    bool
	saves int
}

// LoadCheckpoint implements CheckpointStore.
func (m *MemCheckpointStore) LoadCheckpoint(ctx context.Context) (Checkpoint, bool, error) {
	if err := ctx.Err(); err != nil {
		return Checkpoint{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := m.cp
	cp.DigestState = append([]byte(nil), m.cp.DigestState...)
	return cp, m.ok, nil
}

// SaveCheckpoint implements CheckpointStore.
func (m *MemCheckpointStore) SaveCheckpoint(ctx context.Context, cp Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cp.DigestState = append([]byte(nil), cp.DigestState...)
	m.cp, m.ok = cp, true
	m.saves++
	return nil
}

// Saves reports how many checkpoints were saved.
func (m *MemCheckpointStore) Saves() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.saves
}
