package stream

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/klauspost/compress/zstd"
)

const fuzzMaxPayload = 64 << 10

// FuzzReadFrame: the decoder never panics, and what it accepts is canonical:
// re-encoding gives back the bytes it consumed.
func FuzzReadFrame(f *testing.F) {
	for _, fr := range sampleFrames() {
		f.Add(AppendFrame(nil, fr))
	}
	for _, fr := range sampleFramesV2() {
		f.Add(AppendFrameV(nil, 2, fr))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := &frameReader{r: bytes.NewReader(data), maxPayload: fuzzMaxPayload}
		fr, err := rd.next()
		if err != nil {
			return
		}
		enc := AppendFrameV(nil, rd.got, fr)
		if len(enc) > len(data) || !bytes.Equal(enc, data[:len(enc)]) {
			t.Fatalf("re-encoding differs:\n in  %x\n out %x", data, enc)
		}
		back, err := ReadFrame(bytes.NewReader(enc), fuzzMaxPayload)
		if err != nil || !reflect.DeepEqual(back, fr) {
			t.Fatalf("second decode: %#v, %v", back, err)
		}
	})
}

// FuzzChunkValidate: the destination's checks never panic, never decode
// more than the chunk size, and accept a chunk only if it lies inside the
// image, its data has exactly the declared length and its digest matches.
func FuzzChunkValidate(f *testing.F) {
	for _, s := range chunkSeeds() {
		f.Add(s.body, s.imageSize, s.chunkSize)
	}
	f.Fuzz(func(t *testing.T, body []byte, imageSize, chunkSize uint64) {
		chunkSize = MinChunkSize + chunkSize%(1<<20)
		fr, err := parseBody(1, FrameChunk, body)
		if err != nil {
			return
		}
		c := fr.(*Chunk)
		cc := newChunkChecker(imageSize, chunkSize)
		defer cc.close()
		data, err := cc.check(c)
		if err != nil {
			if !errors.Is(err, ErrInvalidChunk) && !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("unexpected error class: %v", err)
			}
			if uint64(cap(cc.buf)) > chunkSize {
				t.Fatalf("decode buffer of %d bytes for chunk size %d", cap(cc.buf), chunkSize)
			}
			return
		}
		end := c.Offset + c.Length
		switch {
		case c.Length == 0, c.Length > chunkSize, end < c.Offset, end > imageSize:
			t.Fatalf("accepted out-of-bounds chunk %d+%d (image %d, chunk %d)", c.Offset, c.Length, imageSize, chunkSize)
		case c.Kind == KindData && uint64(len(data)) != c.Length:
			t.Fatalf("accepted %d bytes for length %d", len(data), c.Length)
		case c.Kind == KindZero && data != nil:
			t.Fatal("zero chunk produced data")
		case ChunkDigest(c.Offset, c.Length, c.Kind, data) != c.Digest:
			t.Fatal("accepted a chunk whose digest does not match")
		}
	})
}

type chunkSeed struct {
	name                 string
	body                 []byte
	imageSize, chunkSize uint64
}

func chunkBody(c *Chunk) []byte { return AppendFrame(nil, c)[HeaderLen:] }

func chunkSeeds() []chunkSeed {
	data := bytes.Repeat([]byte("ferry chunk "), 400) // 4800 bytes
	enc, _ := zstd.NewWriter(nil, zstd.WithSingleSegment(true), zstd.WithEncoderConcurrency(1))
	defer enc.Close()
	comp := enc.EncodeAll(data, nil)
	valid := dataChunk(3, 8192, data)
	compressed := dataChunk(4, 16384, data)
	compressed.Compressed, compressed.Payload = true, comp
	zero := &Chunk{Seq: 5, Offset: 0, Length: 4096, Kind: KindZero, Digest: ChunkDigest(0, 4096, KindZero, nil)}
	beyond := dataChunk(0, 1<<20-100, data)
	overflow := dataChunk(0, ^uint64(0)-10, data)
	empty := dataChunk(0, 0, nil)
	tooLong := dataChunk(0, 0, bytes.Repeat(data, 4))
	mismatch := dataChunk(0, 0, data)
	mismatch.Length--
	badDigest := dataChunk(0, 0, data)
	badDigest.Digest[31] ^= 0xff
	lie := dataChunk(0, 0, data)
	lie.Compressed, lie.Payload, lie.Length = true, comp, 100
	bomb := dataChunk(0, 0, data)
	bomb.Compressed, bomb.Payload = true, enc.EncodeAll(make([]byte, 8<<20), nil)
	bomb.Length = 60000
	return []chunkSeed{
		{"valid", chunkBody(valid), 1 << 20, 64 << 10},
		{"compressed", chunkBody(compressed), 1 << 20, 64 << 10},
		{"zero", chunkBody(zero), 1 << 20, 64 << 10},
		{"beyond-end", chunkBody(beyond), 1 << 20, 64 << 10},
		{"overflow", chunkBody(overflow), ^uint64(0), 64 << 10},
		{"length-zero", chunkBody(empty), 1 << 20, 64 << 10},
		{"longer-than-chunk", chunkBody(tooLong), 1 << 20, 4096},
		{"payload-mismatch", chunkBody(mismatch), 1 << 20, 64 << 10},
		{"bad-digest", chunkBody(badDigest), 1 << 20, 64 << 10},
		{"decompressed-size-mismatch", chunkBody(lie), 1 << 20, 64 << 10},
		{"zstd-bomb", chunkBody(bomb), 1 << 20, 64 << 10},
	}
}

// TestWriteFuzzSeeds regenerates testdata/fuzz when FERRY_WRITE_FUZZ_SEEDS=1.
// The committed seeds run as ordinary tests with every `go test`.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("FERRY_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set FERRY_WRITE_FUZZ_SEEDS=1 to regenerate testdata/fuzz")
	}
	write := func(target, name string, lines ...string) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		content := "go test fuzz v1\n"
		for _, l := range lines {
			content += l + "\n"
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bs := func(b []byte) string { return fmt.Sprintf("[]byte(%q)", b) }
	for _, fr := range sampleFrames() {
		write("FuzzReadFrame", "valid-"+fr.Type().String()+fmt.Sprint(len(AppendFrame(nil, fr))), bs(AppendFrame(nil, fr)))
	}
	for _, fr := range sampleFramesV2() {
		write("FuzzReadFrame", "v2-"+fr.Type().String()+fmt.Sprint(len(AppendFrameV(nil, 2, fr))), bs(AppendFrameV(nil, 2, fr)))
	}
	unsorted := AppendFrameV(nil, 2, &Acks{Watermark: 5, Window: 1, Ranges: []SeqRange{{Start: 9, End: 12}}})
	unsorted[HeaderLen+18+7] = 4 // the range starts below the watermark
	write("FuzzReadFrame", "v2-acks-range-below-watermark", bs(unsorted))
	ackV2 := AppendFrame(nil, &Ack{Seq: 1})
	ackV2[4] = 2
	write("FuzzReadFrame", "v1-ack-as-v2", bs(ackV2))
	hello := AppendFrame(nil, &Hello{TransferID: "t", Ticket: "x"})
	oversized := appendHeader(nil, FrameChunk, 0)
	oversized[8], oversized[9], oversized[10], oversized[11] = 0xff, 0xff, 0xff, 0xff
	badLen := bytes.Clone(hello)
	badLen[HeaderLen+4] = 200 // transfer id length beyond the body
	write("FuzzReadFrame", "oversized-length", bs(oversized))
	write("FuzzReadFrame", "truncated-hello", bs(hello[:len(hello)-1]))
	write("FuzzReadFrame", "hello-bad-string-length", bs(badLen))
	write("FuzzReadFrame", "bad-magic", bs([]byte("GET / HTTP/1.1\r\n\r\n")))
	write("FuzzReadFrame", "empty", bs(nil))
	for _, s := range chunkSeeds() {
		write("FuzzChunkValidate", s.name, bs(s.body), fmt.Sprintf("uint64(%d)", s.imageSize), fmt.Sprintf("uint64(%d)", s.chunkSize))
	}
}

// The seeds exercise both outcomes: the first three are accepted, the rest
// are refused for their named reason.
func TestChunkSeedsBehave(t *testing.T) {
	accept := map[string]bool{"valid": true, "compressed": true, "zero": true}
	for _, s := range chunkSeeds() {
		fr, err := parseBody(1, FrameChunk, s.body)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		cc := newChunkChecker(s.imageSize, s.chunkSize)
		_, err = cc.check(fr.(*Chunk))
		cc.close()
		if (err == nil) != accept[s.name] {
			t.Errorf("%s: err = %v", s.name, err)
		}
	}
}
