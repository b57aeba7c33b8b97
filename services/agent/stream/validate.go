package stream

import (
	"fmt"
	"math"

	"github.com/klauspost/compress/zstd"
)

// validateChunk checks a chunk against the session before anything is
// decoded or written: non-zero length, no more than chunkSize, inside one
// aligned block, no overflow, inside the image, and a payload consistent
// with kind and compression.
func validateChunk(c *Chunk, imageSize, chunkSize uint64) error {
	end := c.Offset + c.Length
	switch {
	case c.Length == 0:
		return fmt.Errorf("%w: seq %d has length 0", ErrInvalidChunk, c.Seq)
	case c.Length > chunkSize:
		return fmt.Errorf("%w: seq %d length %d exceeds chunk size %d", ErrInvalidChunk, c.Seq, c.Length, chunkSize)
	case end < c.Offset || end > math.MaxInt64:
		return fmt.Errorf("%w: seq %d offset %d + length %d overflows", ErrInvalidChunk, c.Seq, c.Offset, c.Length)
	case end > imageSize:
		return fmt.Errorf("%w: seq %d range [%d, %d) beyond image end %d", ErrInvalidChunk, c.Seq, c.Offset, end, imageSize)
	case c.Offset/chunkSize != (end-1)/chunkSize:
		return fmt.Errorf("%w: seq %d range [%d, %d) crosses a %d-byte boundary", ErrInvalidChunk, c.Seq, c.Offset, end, chunkSize)
	}
	switch c.Kind {
	case KindZero:
		if len(c.Payload) != 0 || c.Compressed {
			return fmt.Errorf("%w: zero chunk seq %d carries a payload", ErrInvalidChunk, c.Seq)
		}
	case KindData:
		if c.Compressed {
			if len(c.Payload) == 0 || uint64(len(c.Payload)) > c.Length {
				return fmt.Errorf("%w: seq %d compressed payload of %d bytes for length %d", ErrInvalidChunk, c.Seq, len(c.Payload), c.Length)
			}
		} else if uint64(len(c.Payload)) != c.Length {
			return fmt.Errorf("%w: seq %d payload of %d bytes, length says %d", ErrInvalidChunk, c.Seq, len(c.Payload), c.Length)
		}
	default:
		return fmt.Errorf("%w: seq %d has unknown kind %d", ErrInvalidChunk, c.Seq, c.Kind)
	}
	return nil
}

// newBoundedDecoder returns a zstd decoder that refuses to produce more than
// chunkSize bytes or to use a window larger than that; with DecodeAll's cap
// limit it also never writes past the destination buffer's capacity.
func newBoundedDecoder(chunkSize uint64) (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(chunkSize),
		zstd.WithDecoderMaxWindow(max(chunkSize, zstd.MinWindowSize)),
		zstd.WithDecodeAllCapLimit(true),
	)
}

// chunkChecker validates, decodes and verifies chunks for one connection.
// The decoder and buffer are created on first use and reused.
type chunkChecker struct {
	imageSize, chunkSize uint64
	hasher               *chunkHasher
	dec                  *zstd.Decoder
	buf                  []byte
}

func newChunkChecker(imageSize, chunkSize uint64) *chunkChecker {
	return &chunkChecker{imageSize: imageSize, chunkSize: chunkSize, hasher: newChunkHasher()}
}

func (cc *chunkChecker) close() {
	if cc.dec != nil {
		cc.dec.Close()
	}
}

// check validates c and returns the bytes to write (nil for a zero chunk).
// Nothing is returned unless bounds, decompressed length and digest all
// check out. The returned slice may alias c.Payload or the checker's buffer.
func (cc *chunkChecker) check(c *Chunk) ([]byte, error) {
	if err := validateChunk(c, cc.imageSize, cc.chunkSize); err != nil {
		return nil, err
	}
	data := c.Payload
	if c.Kind == KindData && c.Compressed {
		if cc.dec == nil {
			dec, err := newBoundedDecoder(cc.chunkSize)
			if err != nil {
				return nil, fmt.Errorf("stream: zstd decoder: %w", err)
			}
			cc.dec = dec
		}
		if uint64(cap(cc.buf)) < c.Length {
			cc.buf = make([]byte, 0, cc.chunkSize)
		}
		out, err := cc.dec.DecodeAll(c.Payload, cc.buf[:0:c.Length])
		if err != nil {
			return nil, fmt.Errorf("%w: seq %d decompress: %w", ErrInvalidChunk, c.Seq, err)
		}
		if uint64(len(out)) != c.Length {
			return nil, fmt.Errorf("%w: seq %d decompressed to %d bytes, length says %d", ErrInvalidChunk, c.Seq, len(out), c.Length)
		}
		data = out
	}
	if got := cc.hasher.digest(c.Offset, c.Length, c.Kind, data); got != c.Digest {
		return nil, fmt.Errorf("%w: seq %d at offset %d", ErrDigestMismatch, c.Seq, c.Offset)
	}
	if c.Kind == KindZero {
		return nil, nil
	}
	return data, nil
}
