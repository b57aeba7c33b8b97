package stream

import (
	"math/bits"
	"sync"
)

// Chunk buffers come from power-of-two size classes (4 KiB to 128 MiB) so
// that read-ahead and receive buffers are reused across chunks and
// transfers instead of churning the heap.
const (
	minBufShift = 12
	maxBufShift = 27
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// getBuf returns a buffer of length n.
func getBuf(n int) []byte {
	c := bufClass(n)
	if c >= len(bufPools) {
		return make([]byte, n)
	}
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+minBufShift))
}

// putBuf gives b back; b must not be used afterwards.
func putBuf(b []byte) {
	c := cap(b)
	if c < 1<<minBufShift || c&(c-1) != 0 {
		return
	}
	if k := bits.Len(uint(c)) - 1 - minBufShift; k < len(bufPools) {
		b = b[:0]
		bufPools[k].Put(&b)
	}
}
