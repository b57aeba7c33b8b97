package stream

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"

	"lukechampine.com/blake3"
)

// DigestPrefix prefixes the textual transfer digest.
const DigestPrefix = "blake3-sha256:"

// chunkHasher computes chunk digests reusing one BLAKE3 state. BLAKE3 runs
// at about 4.4 GB/s per core here against 1.9 GB/s for SHA-256 (with SHA-NI):
// every data byte is hashed once on each side, so the chunk hash is on the
// hot path of both agents.
type chunkHasher struct {
	h   hash.Hash
	hdr [17]byte
}

func newChunkHasher() *chunkHasher { return &chunkHasher{h: blake3.New(32, nil)} }

// digest is blake3-256(offset u64be ‖ length u64be ‖ kind u8 ‖ data); a zero
// chunk hashes no data, so its digest costs nothing however long it is.
func (c *chunkHasher) digest(offset, length uint64, kind ChunkKind, data []byte) (d [32]byte) {
	c.h.Reset()
	binary.BigEndian.PutUint64(c.hdr[0:8], offset)
	binary.BigEndian.PutUint64(c.hdr[8:16], length)
	c.hdr[16] = byte(kind)
	c.h.Write(c.hdr[:])
	if kind == KindData {
		c.h.Write(data)
	}
	c.h.Sum(d[:0])
	return d
}

// ChunkDigest is the digest of one chunk; data is ignored for KindZero.
func ChunkDigest(offset, length uint64, kind ChunkKind, data []byte) [32]byte {
	return newChunkHasher().digest(offset, length, kind, data)
}

// FormatDigest renders a raw transfer digest as "blake3-sha256:<hex>".
func FormatDigest(d [32]byte) string { return DigestPrefix + hex.EncodeToString(d[:]) }

// digestFolder computes the transfer digest, sha256 over the chunk digests in
// seq order, from digests that arrive in any order. It keeps the contiguous
// watermark (every seq below it folded) and holds at most maxPending
// out-of-order digests.
type digestFolder struct {
	mu         sync.Mutex
	h          hash.Hash
	next       uint64
	bytes      uint64 // sum of the lengths of the folded chunks
	pending    map[uint64]pendingDigest
	maxPending uint64
}

type pendingDigest struct {
	d      [32]byte
	length uint64
}

// newDigestFolder starts at watermark with the serialized sha256 state of
// the digests below it (nil state only with watermark 0).
func newDigestFolder(watermark, bytes uint64, state []byte, maxPending int) (*digestFolder, error) {
	h := sha256.New()
	if len(state) > 0 {
		u, ok := h.(encoding.BinaryUnmarshaler)
		if !ok {
			return nil, fmt.Errorf("%w: sha256 state cannot be restored", ErrCheckpoint)
		}
		if err := u.UnmarshalBinary(state); err != nil {
			return nil, fmt.Errorf("%w: digest state: %w", ErrCheckpoint, err)
		}
	} else if watermark != 0 {
		return nil, fmt.Errorf("%w: watermark %d without digest state", ErrCheckpoint, watermark)
	}
	return &digestFolder{
		h: h, next: watermark, bytes: bytes,
		pending:    make(map[uint64]pendingDigest),
		maxPending: uint64(max(maxPending, 1)),
	}, nil
}

// known reports whether seq is already recorded with the same digest (a
// resend: nothing to write). A different digest for a recorded seq, or a
// seq too far beyond the watermark to be held, is an error.
func (f *digestFolder) known(seq uint64, d [32]byte) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq < f.next {
		return true, nil
	}
	if seq-f.next >= f.maxPending {
		return false, fmt.Errorf("%w: seq %d is %d beyond the watermark %d (limit %d)", ErrInvalidChunk, seq, seq-f.next, f.next, f.maxPending)
	}
	if p, ok := f.pending[seq]; ok {
		if p.d != d {
			return false, fmt.Errorf("%w: seq %d resent with another digest", ErrDigestMismatch, seq)
		}
		return true, nil
	}
	return false, nil
}

// add records the digest of seq and folds every contiguous digest. It
// reports how many chunks were folded and the folded byte count after it.
func (f *digestFolder) add(seq, length uint64, d [32]byte) (int, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq < f.next {
		return 0, f.bytes, nil // a resend of a folded chunk
	}
	if p, ok := f.pending[seq]; ok {
		if p.d != d {
			return 0, f.bytes, fmt.Errorf("%w: seq %d resent with another digest", ErrDigestMismatch, seq)
		}
		return 0, f.bytes, nil
	}
	if seq-f.next >= f.maxPending {
		return 0, f.bytes, fmt.Errorf("%w: seq %d is %d beyond the watermark %d (limit %d)", ErrInvalidChunk, seq, seq-f.next, f.next, f.maxPending)
	}
	if seq != f.next {
		f.pending[seq] = pendingDigest{d: d, length: length}
		return 0, f.bytes, nil
	}
	f.h.Write(d[:])
	f.bytes += length
	f.next++
	n := 1
	for {
		p, ok := f.pending[f.next]
		if !ok {
			return n, f.bytes, nil
		}
		delete(f.pending, f.next)
		f.h.Write(p.d[:])
		f.bytes += p.length
		f.next++
		n++
	}
}

// snapshot returns the watermark, the folded byte count, the serialized
// digest state at the watermark and the number of held digests.
func (f *digestFolder) snapshot() (watermark, bytes uint64, state []byte, pending int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	state, err = f.h.(encoding.BinaryMarshaler).MarshalBinary()
	return f.next, f.bytes, state, len(f.pending), err
}

// sum is the transfer digest of the folded chunks.
func (f *digestFolder) sum() (d [32]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.h.Sum(d[:0])
	return d
}
