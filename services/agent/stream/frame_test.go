package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func sampleFrames() []Frame {
	payload := []byte("hello chunk payload")
	return []Frame{
		&Hello{Stream: 3, TransferID: "6f1c2a4e-transfer", Ticket: "dGlja2V0"},
		&HelloOK{ChunkSize: 4 << 20, Watermark: 17},
		&Chunk{Seq: 5, Offset: 4 << 20, Length: uint64(len(payload)), Kind: KindData,
			Digest: ChunkDigest(4<<20, uint64(len(payload)), KindData, payload), Payload: payload},
		&Chunk{Seq: 6, Offset: 8 << 20, Length: 4 << 20, Kind: KindZero, Digest: ChunkDigest(8<<20, 4<<20, KindZero, nil), Payload: []byte{}},
		&Ack{Seq: 42},
		&Done{TotalChunks: 9, Digest: [32]byte{1, 2, 3}},
		&DoneOK{TotalChunks: 9, Digest: [32]byte{4}, BytesWritten: 1 << 30},
		&ErrorFrame{Reason: "stream: invalid ticket"},
	}
}

// sampleFramesV2 are the frames whose v2 encoding differs from v1's or
// that exist in v2 only.
func sampleFramesV2() []Frame {
	return []Frame{
		&HelloOK{ChunkSize: 4 << 20, Watermark: 17, Window: 64 << 20, MaxAhead: 4096},
		&Acks{Watermark: 9, Window: 64 << 20},
		&Acks{Watermark: 9, Window: 1 << 20, Ranges: []SeqRange{{Start: 11, End: 12}, {Start: 14, End: 40}}},
	}
}

// v2 frames round-trip in v2; the frames of the other version are refused.
func TestFrameRoundTripV2(t *testing.T) {
	for _, f := range append(sampleFramesV2(), sampleFrames()...) {
		enc := AppendFrameV(nil, 2, f)
		if _, ok := f.(*Ack); ok {
			if _, err := ReadFrame(bytes.NewReader(enc), 1<<20); !errors.Is(err, ErrProtocol) {
				t.Fatalf("a v1 ack in v2: %v", err)
			}
			continue
		}
		var buf bytes.Buffer
		if err := WriteFrameV(&buf, 2, f); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), enc) {
			t.Fatalf("%s: WriteFrameV and AppendFrameV differ", f.Type())
		}
		fr := &frameReader{r: &buf, maxPayload: 1 << 20, version: 2}
		got, err := fr.next()
		if err != nil || !reflect.DeepEqual(got, f) {
			t.Fatalf("%s: got %#v, %v", f.Type(), got, err)
		}
	}
	if err := WriteFrameV(io.Discard, 1, &Acks{Watermark: 1, Window: 1}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("acks written in v1: %v", err)
	}
	// A reader bound to v2 refuses v1 frames but an Error frame.
	fr := &frameReader{r: bytes.NewReader(AppendFrame(nil, &Done{TotalChunks: 1})), version: 2}
	if _, err := fr.next(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("v1 done read by a v2 reader: %v", err)
	}
	fr = &frameReader{r: bytes.NewReader(AppendFrame(nil, &ErrorFrame{Reason: "no"})), version: 2}
	if f, err := fr.next(); err != nil || f.(*ErrorFrame).Reason != "no" {
		t.Fatalf("v1 error read by a v2 reader: %v", err)
	}
	bad := []*Acks{
		{Watermark: 5, Window: 1, Ranges: []SeqRange{{Start: 5, End: 6}}},                        // touches the watermark
		{Watermark: 5, Window: 1, Ranges: []SeqRange{{Start: 7, End: 7}}},                        // empty
		{Watermark: 5, Window: 1, Ranges: []SeqRange{{Start: 9, End: 12}, {Start: 12, End: 14}}}, // touching
		{Watermark: 5, Window: 1, Ranges: []SeqRange{{Start: 9, End: 12}, {Start: 7, End: 8}}},   // unsorted
	}
	for _, a := range bad {
		if _, err := ReadFrame(bytes.NewReader(AppendFrameV(nil, 2, a)), 0); !errors.Is(err, ErrProtocol) {
			t.Errorf("%+v accepted: %v", a, err)
		}
	}
	many := &Acks{Watermark: 0, Window: 1}
	for i := range MaxAckRanges + 1 {
		many.Ranges = append(many.Ranges, SeqRange{Start: uint64(2*i + 1), End: uint64(2*i + 2)})
	}
	if err := WriteFrameV(io.Discard, 2, many); !errors.Is(err, ErrProtocol) {
		t.Fatalf("%d ranges written: %v", len(many.Ranges), err)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for _, f := range sampleFrames() {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), AppendFrame(nil, f)) {
			t.Fatalf("%s: WriteFrame and AppendFrame differ", f.Type())
		}
		got, err := ReadFrame(&buf, 1<<20)
		if err != nil {
			t.Fatalf("%s: %v", f.Type(), err)
		}
		if !reflect.DeepEqual(got, f) {
			t.Fatalf("round trip: got %#v want %#v", got, f)
		}
		if _, err := ReadFrame(&buf, 1<<20); err != io.EOF {
			t.Fatalf("after the last frame: %v, want io.EOF", err)
		}
	}
}

func TestReadFrameRejects(t *testing.T) {
	good := AppendFrame(nil, &Ack{Seq: 1})
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	chunk := AppendFrame(nil, &Chunk{Seq: 1, Length: 3, Kind: KindData, Payload: []byte("abc")})
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"bad magic", mod(func(b []byte) []byte { b[0] = 'X'; return b }), ErrProtocol},
		{"bad version", mod(func(b []byte) []byte { b[4] = 3; return b }), ErrProtocol},
		{"v1 ack in v2", mod(func(b []byte) []byte { b[4] = 2; return b }), ErrProtocol},
		{"unknown type", mod(func(b []byte) []byte { b[5] = 99; return b }), ErrProtocol},
		{"reserved flags", mod(func(b []byte) []byte { b[7] = 1; return b }), ErrProtocol},
		{"short body", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 4); return b[:16] }), ErrProtocol},
		{"trailing bytes", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 9); return append(b, 0) }), ErrProtocol},
		{"truncated header", good[:5], ErrTruncated},
		{"truncated body", good[:len(good)-1], ErrTruncated},
		{"control frame too large", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], MaxControlBody+1); return b }), ErrFrameTooLarge},
		{"chunk beyond max payload", chunk, ErrFrameTooLarge},
		{"unknown chunk kind", func() []byte { b := bytes.Clone(chunk); b[HeaderLen+24] = 7; return b }(), ErrProtocol},
		{"unknown chunk flags", func() []byte { b := bytes.Clone(chunk); b[HeaderLen+25] = 2; return b }(), ErrProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			max := 1 << 20
			if tc.name == "chunk beyond max payload" {
				max = 2
			}
			if _, err := ReadFrame(bytes.NewReader(tc.in), max); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// A header that declares a 4 GiB body is refused from the header alone.
func TestReadFrameOversizedAllocatesNothing(t *testing.T) {
	hdr := appendHeader(nil, FrameChunk, 0)
	binary.BigEndian.PutUint32(hdr[8:], 0xFFFFFFFF)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 100 {
		if _, err := ReadFrame(bytes.NewReader(hdr), 4<<20); !errors.Is(err, ErrFrameTooLarge) {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / 100; per > 4096 {
		t.Fatalf("%d bytes allocated per oversized frame", per)
	}
}

func TestPlanChunks(t *testing.T) {
	const cs = 4096
	type spec = ChunkSpec
	cases := []struct {
		name    string
		size    uint64
		extents []Extent
		want    []spec
		wantErr bool
	}{
		{"empty", 0, nil, nil, false},
		{"split at aligned boundaries", 3 * cs, []Extent{{Offset: 100, Length: 2*cs + 50}},
			[]spec{{0, 100, cs - 100, false}, {1, cs, cs, false}, {2, 2 * cs, 150, false}}, false},
		{"contiguous extents merge within a block", 2 * cs, []Extent{{0, 10, false}, {10, 20, false}, {30, cs, false}},
			[]spec{{0, 0, cs, false}, {1, cs, 30, false}}, false},
		{"kinds do not merge", cs, []Extent{{0, 10, false}, {10, 10, true}, {20, 10, true}},
			[]spec{{0, 0, 10, false}, {1, 10, 20, true}}, false},
		{"gaps do not merge", cs, []Extent{{0, 10, false}, {11, 10, false}},
			[]spec{{0, 0, 10, false}, {1, 11, 10, false}}, false},
		{"zero length skipped", cs, []Extent{{0, 0, false}, {5, 1, false}}, []spec{{0, 5, 1, false}}, false},
		{"ragged end", cs + 1, []Extent{{0, cs + 1, false}}, []spec{{0, 0, cs, false}, {1, cs, 1, false}}, false},
		{"overlap", cs, []Extent{{0, 10, false}, {5, 10, false}}, nil, true},
		{"unsorted", cs, []Extent{{100, 10, false}, {0, 10, false}}, nil, true},
		{"beyond size", cs, []Extent{{0, cs + 1, false}}, nil, true},
		{"overflow", ^uint64(0), []Extent{{^uint64(0) - 1, 10, false}}, nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []spec
			var err error
			for s, e := range PlanChunks(ExtentsOf(tc.extents), tc.size, cs) {
				if e != nil {
					err = e
					break
				}
				got = append(got, s)
			}
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidExtents) {
					t.Fatalf("err = %v, want ErrInvalidExtents", err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
		})
	}
	if _, err := firstErr(PlanChunks(ExtentsOf(nil), 0, 100)); err == nil {
		t.Fatal("tiny chunk size accepted")
	}
}

func firstErr[T any](seq func(func(T, error) bool)) (T, error) {
	var zero T
	for v, err := range seq {
		if err != nil {
			return v, err
		}
	}
	return zero, nil
}

func TestDigestFolderOrderAndResume(t *testing.T) {
	digests := make([][32]byte, 50)
	for i := range digests {
		digests[i] = ChunkDigest(uint64(i)*10, 10, KindData, []byte{byte(i)})
	}
	inOrder, _ := newDigestFolder(0, 0, nil, 64)
	for i, d := range digests {
		inOrder.add(uint64(i), 10, d)
	}
	want := inOrder.sum()

	shuffled, _ := newDigestFolder(0, 0, nil, 64)
	for _, i := range newRand(3).Perm(len(digests)) {
		if _, _, err := shuffled.add(uint64(i), 10, digests[i]); err != nil {
			t.Fatal(err)
		}
	}
	if shuffled.sum() != want {
		t.Fatal("order of arrival changed the digest")
	}

	half, _ := newDigestFolder(0, 0, nil, 64)
	for i := range 20 {
		half.add(uint64(i), 10, digests[i])
	}
	w, b, state, _, _ := half.snapshot()
	resumed, err := newDigestFolder(w, b, state, 64)
	if err != nil {
		t.Fatal(err)
	}
	for i := 20; i < len(digests); i++ {
		resumed.add(uint64(i), 10, digests[i])
	}
	if resumed.sum() != want {
		t.Fatal("resumed digest differs")
	}
	if _, wb, _, _, _ := resumed.snapshot(); wb != 500 {
		t.Fatalf("folded bytes %d", wb)
	}

	small, _ := newDigestFolder(0, 0, nil, 4)
	if _, _, err := small.add(4, 1, digests[4]); !errors.Is(err, ErrInvalidChunk) {
		t.Fatalf("beyond the pending bound: %v", err)
	}
	small.add(2, 1, digests[2])
	if _, _, err := small.add(2, 1, digests[3]); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("conflicting resend: %v", err)
	}
	if known, err := small.known(2, digests[2]); !known || err != nil {
		t.Fatalf("identical resend: %v %v", known, err)
	}
}

func TestChunkCheckerZstdBounds(t *testing.T) {
	const cs = 64 << 10
	data := bytes.Repeat([]byte("ferry "), 5000) // 30000 bytes, compressible
	enc, _ := zstd.NewWriter(nil, zstd.WithSingleSegment(true))
	comp := enc.EncodeAll(data, nil)
	mk := func(length uint64, payload []byte) *Chunk {
		return &Chunk{Seq: 0, Offset: 0, Length: length, Kind: KindData, Compressed: true,
			Digest: ChunkDigest(0, length, KindData, data), Payload: payload}
	}
	cc := newChunkChecker(1<<20, cs)
	defer cc.close()
	if out, err := cc.check(mk(uint64(len(data)), comp)); err != nil || !bytes.Equal(out, data) {
		t.Fatalf("valid compressed chunk: %v", err)
	}
	// Declared shorter than what the frame decodes to: refused, bounded.
	if _, err := cc.check(mk(1000, comp)); !errors.Is(err, ErrInvalidChunk) {
		t.Fatalf("short declaration: %v", err)
	}
	// Declared longer: decodes short, refused.
	if _, err := cc.check(mk(uint64(len(data))+5, comp)); !errors.Is(err, ErrInvalidChunk) {
		t.Fatalf("long declaration: %v", err)
	}
	// A bomb: 64 MiB of zeros compress to a few KiB; the chunk says 60000.
	bomb := enc.EncodeAll(make([]byte, 64<<20), nil)
	if _, err := cc.check(mk(60000, bomb)); !errors.Is(err, ErrInvalidChunk) {
		t.Fatalf("bomb: %v", err)
	}
	if cap(cc.buf) > cs {
		t.Fatalf("decoder buffer grew to %d", cap(cc.buf))
	}
}
