package stream

import (
	"fmt"
	"iter"
	"math"
)

// Chunk size bounds.
const (
	DefaultChunkSize = 4 << 20
	MinChunkSize     = 4 << 10
	MaxChunkSize     = 64 << 20
)

// ChunkSpec is one planned chunk: a range within one chunk-size-aligned block.
type ChunkSpec struct {
	Seq    uint64
	Offset uint64
	Length uint64
	Zero   bool
}

func checkChunkSize(cs uint64) error {
	if cs < MinChunkSize || cs > MaxChunkSize {
		return fmt.Errorf("stream: chunk size %d outside [%d, %d]", cs, MinChunkSize, MaxChunkSize)
	}
	return nil
}

// ExtentsOf adapts a slice to the iterator PlanChunks takes.
func ExtentsOf(extents []Extent) iter.Seq2[Extent, error] {
	return func(yield func(Extent, error) bool) {
		for _, e := range extents {
			if !yield(e, nil) {
				return
			}
		}
	}
}

// PlanChunks turns an ordered extent list into chunks of at most chunkSize
// bytes that never cross a chunkSize-aligned boundary, numbered 0..n-1 in
// offset order. Contiguous extents of the same kind within one aligned
// block are merged; zero-length extents are skipped. The plan depends only
// on the extents, the image size and the chunk size, so a resumed transfer
// numbers its chunks exactly as the first attempt did. Unsorted,
// overlapping or out-of-image extents yield ErrInvalidExtents.
func PlanChunks(extents iter.Seq2[Extent, error], imageSize, chunkSize uint64) iter.Seq2[ChunkSpec, error] {
	return func(yield func(ChunkSpec, error) bool) {
		if err := checkChunkSize(chunkSize); err != nil {
			yield(ChunkSpec{}, err)
			return
		}
		var (
			cur     ChunkSpec
			have    bool
			seq     uint64
			lastEnd uint64
		)
		emit := func() bool {
			cur.Seq = seq
			seq++
			return yield(cur, nil)
		}
		for e, err := range extents {
			if err != nil {
				yield(ChunkSpec{}, err)
				return
			}
			if e.Length == 0 {
				continue
			}
			end := e.Offset + e.Length
			switch {
			case end < e.Offset:
				yield(ChunkSpec{}, fmt.Errorf("%w: extent %d+%d overflows", ErrInvalidExtents, e.Offset, e.Length))
				return
			case end > imageSize:
				yield(ChunkSpec{}, fmt.Errorf("%w: extent %d+%d beyond image size %d", ErrInvalidExtents, e.Offset, e.Length, imageSize))
				return
			case e.Offset < lastEnd:
				yield(ChunkSpec{}, fmt.Errorf("%w: extent at %d overlaps or precedes the previous one ending at %d", ErrInvalidExtents, e.Offset, lastEnd))
				return
			}
			lastEnd = end
			for off := e.Offset; off < end; {
				blockEnd := uint64(math.MaxUint64)
				if start := off - off%chunkSize; start <= math.MaxUint64-chunkSize {
					blockEnd = start + chunkSize
				}
				pieceEnd := min(end, blockEnd)
				if have && cur.Offset+cur.Length == off && cur.Zero == e.Zero && cur.Offset/chunkSize == off/chunkSize {
					cur.Length += pieceEnd - off
				} else {
					if have && !emit() {
						return
					}
					cur, have = ChunkSpec{Offset: off, Length: pieceEnd - off, Zero: e.Zero}, true
				}
				off = pieceEnd
			}
		}
		if have {
			emit()
		}
	}
}
