package stream

import (
	"crypto/sha256"
	"hash/crc32"
	"testing"
)

// BenchmarkChunkDigest compares the chunk digest (BLAKE3-256) with the
// candidates for replacing it now that TLS authenticates the wire:
// SHA-256 and CRC32C (xxh3 is not a dependency of the module). Sizes are
// a full 4 MiB chunk and a 4 KiB incremental write. Compare the MB/s of
// one run: the machine may be shared.
func BenchmarkChunkDigest(b *testing.B) {
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	for _, size := range []int{4 << 20, 4 << 10} {
		data := make([]byte, size)
		fillRandom(newRand(2), data)
		name := "4MiB"
		if size < 1<<20 {
			name = "4KiB"
		}
		b.Run(name+"/blake3", func(b *testing.B) {
			h := newChunkHasher()
			b.SetBytes(int64(size))
			for range b.N {
				h.digest(0, uint64(size), KindData, data)
			}
		})
		b.Run(name+"/sha256", func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				sha256.Sum256(data)
			}
		})
		b.Run(name+"/crc32c", func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				crc32.Checksum(data, castagnoli)
			}
		})
	}
}
