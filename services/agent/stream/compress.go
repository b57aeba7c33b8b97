package stream

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Compression selects the chunk payload encoding.
type Compression uint8

// Compressions.
const (
	CompressionNone Compression = iota
	CompressionZstd
)

// ParseCompression parses the configuration value "none" (or "") or "zstd".
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "", "none":
		return CompressionNone, nil
	case "zstd":
		return CompressionZstd, nil
	}
	return 0, fmt.Errorf("stream: unknown compression %q (want none or zstd)", s)
}

func (c Compression) String() string {
	if c == CompressionZstd {
		return "zstd"
	}
	return "none"
}

// newChunkEncoder is a zstd encoder for one read-ahead worker: fastest
// level, single segment, a window that holds one chunk.
func newChunkEncoder(chunkSize uint64) (*zstd.Encoder, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(encoderWindow(chunkSize)),
		zstd.WithLowerEncoderMem(true),
		zstd.WithSingleSegment(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return enc, nil
}

// compressChunk encodes data into a pooled buffer and returns it when it is
// smaller than data; otherwise it returns nil (the chunk goes uncompressed).
func compressChunk(enc *zstd.Encoder, data []byte) []byte {
	out := getBuf(enc.MaxEncodedSize(len(data)))
	comp := enc.EncodeAll(data, out[:0])
	if len(comp) >= len(data) || cap(comp) != cap(out) {
		putBuf(out)
		return nil
	}
	// The bound rounds up to a size class twice the chunk's: keep the
	// payload in a buffer of its own size until it is acknowledged.
	fit := getBuf(len(comp))
	copy(fit, comp)
	putBuf(out)
	return fit
}

// encoderWindow is the smallest power-of-two zstd window holding a chunk.
func encoderWindow(chunkSize uint64) int {
	w := zstd.MinWindowSize
	for uint64(w) < chunkSize && w < zstd.MaxWindowSize {
		w <<= 1
	}
	return w
}
