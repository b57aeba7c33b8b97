package stream

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Wire constants. All integers are big-endian.
const (
	// ProtocolVersion is the highest version this package speaks and the
	// one it prefers; MinProtocolVersion is the oldest it still speaks (v1
	// stays for one release, so that agents can be upgraded one by one).
	ProtocolVersion    = 2
	MinProtocolVersion = 1
	// MaxAckRanges bounds the selective ranges of one v2 Acks frame.
	MaxAckRanges = 60
	// HeaderLen is the fixed frame header: magic[4] version[1] type[1]
	// flags[2] body-length[4].
	HeaderLen = 12
	// MaxControlBody bounds the body of every frame but Chunk.
	MaxControlBody = 1024
	// ChunkFixedLen is the fixed part of a Chunk body before its payload:
	// seq[8] offset[8] length[8] kind[1] flags[1] digest[32].
	ChunkFixedLen = 58
	// MaxIDLen bounds transfer ids and tickets in a Hello.
	MaxIDLen = 255
	// MaxReasonLen bounds the reason of an Error frame.
	MaxReasonLen = 1000
)

var frameMagic = [4]byte{'F', 'R', 'R', 'Y'}

// FrameType identifies a frame.
type FrameType uint8

// Frame types.
const (
	FrameHello   FrameType = 1 // source → destination, first frame of every connection
	FrameHelloOK FrameType = 2 // destination → source, handshake accepted
	FrameChunk   FrameType = 3 // source → destination
	FrameAck     FrameType = 4 // destination → source, after the chunk is written
	FrameDone    FrameType = 5 // source → destination, on the control connection
	FrameDoneOK  FrameType = 6 // destination → source, transfer committed
	FrameError   FrameType = 7 // either way, then the connection closes
	FrameAcks    FrameType = 8 // v2: destination → source, watermark, selective ranges and credit
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameHelloOK:
		return "hello-ok"
	case FrameChunk:
		return "chunk"
	case FrameAck:
		return "ack"
	case FrameDone:
		return "done"
	case FrameDoneOK:
		return "done-ok"
	case FrameError:
		return "error"
	case FrameAcks:
		return "acks"
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

// ChunkKind tells whether a chunk carries data or stands for zeros.
type ChunkKind uint8

// Chunk kinds.
const (
	KindData ChunkKind = 1
	KindZero ChunkKind = 2
)

const chunkFlagCompressed = 0x01

// Frame is one protocol frame: *Hello, *HelloOK, *Chunk, *Ack, *Acks,
// *Done, *DoneOK or *ErrorFrame.
type Frame interface {
	Type() FrameType
	// appendBody appends the body (without header) as version encodes it.
	appendBody(b []byte, version uint8) []byte
}

// Hello opens every connection: it names the transfer and presents the
// session's ticket. Stream is the sender's stream index (logs only).
type Hello struct {
	Stream     uint32
	TransferID string
	Ticket     string
}

// HelloOK accepts a connection; it repeats the session's chunk size and the
// destination's contiguous watermark. In v2 it also grants the credit
// window (Window: bytes of chunk frames the source may have unacknowledged
// in the whole session) and MaxAhead (how far beyond the watermark a seq
// may run: the out-of-order digests the destination holds). v1 carries
// neither; they decode as zero.
type HelloOK struct {
	ChunkSize uint64
	Watermark uint64
	Window    uint64
	MaxAhead  uint32
}

// Chunk is one range of the image. Zero chunks carry no payload. When
// Compressed is set the payload is one zstd frame that decodes to exactly
// Length bytes. Digest is ChunkDigest over the uncompressed data.
type Chunk struct {
	Seq        uint64
	Offset     uint64
	Length     uint64
	Kind       ChunkKind
	Compressed bool
	Digest     [32]byte
	Payload    []byte
}

// Ack tells the source that chunk Seq is written.
type Ack struct {
	Seq uint64
}

// Acks (v2) reports what the destination has written: every seq below
// Watermark, plus the half-open Ranges [start, end) above it (sorted,
// disjoint, not touching the watermark or each other), and renews the
// credit Window. It may come on any connection of the session and covers
// chunks sent on any of them.
type Acks struct {
	Watermark uint64
	Window    uint64
	Ranges    []SeqRange
}

// SeqRange is a half-open range of chunk sequence numbers.
type SeqRange struct{ Start, End uint64 }

// Done ends a transfer: the number of chunks and the transfer digest (raw
// sha256 over the ordered chunk digests).
type Done struct {
	TotalChunks uint64
	Digest      [32]byte
}

// DoneOK confirms a committed transfer with the destination's own figures.
type DoneOK struct {
	TotalChunks  uint64
	Digest       [32]byte
	BytesWritten uint64
}

// ErrorFrame carries a human-readable reason; the connection closes after it.
type ErrorFrame struct {
	Reason string
}

func (*Hello) Type() FrameType      { return FrameHello }
func (*HelloOK) Type() FrameType    { return FrameHelloOK }
func (*Chunk) Type() FrameType      { return FrameChunk }
func (*Ack) Type() FrameType        { return FrameAck }
func (*Acks) Type() FrameType       { return FrameAcks }
func (*Done) Type() FrameType       { return FrameDone }
func (*DoneOK) Type() FrameType     { return FrameDoneOK }
func (*ErrorFrame) Type() FrameType { return FrameError }

func (f *Hello) appendBody(b []byte, _ uint8) []byte {
	b = binary.BigEndian.AppendUint32(b, f.Stream)
	b = append(b, byte(len(f.TransferID)))
	b = append(b, f.TransferID...)
	b = append(b, byte(len(f.Ticket)))
	return append(b, f.Ticket...)
}

func (f *HelloOK) appendBody(b []byte, version uint8) []byte {
	b = binary.BigEndian.AppendUint64(b, f.ChunkSize)
	b = binary.BigEndian.AppendUint64(b, f.Watermark)
	if version >= 2 {
		b = binary.BigEndian.AppendUint64(b, f.Window)
		b = binary.BigEndian.AppendUint32(b, f.MaxAhead)
	}
	return b
}

func (f *Chunk) appendFixed(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, f.Seq)
	b = binary.BigEndian.AppendUint64(b, f.Offset)
	b = binary.BigEndian.AppendUint64(b, f.Length)
	b = append(b, byte(f.Kind))
	var flags byte
	if f.Compressed {
		flags |= chunkFlagCompressed
	}
	b = append(b, flags)
	return append(b, f.Digest[:]...)
}

func (f *Chunk) appendBody(b []byte, _ uint8) []byte {
	return append(f.appendFixed(b), f.Payload...)
}

func (f *Ack) appendBody(b []byte, _ uint8) []byte { return binary.BigEndian.AppendUint64(b, f.Seq) }

func (f *Acks) appendBody(b []byte, _ uint8) []byte {
	b = binary.BigEndian.AppendUint64(b, f.Watermark)
	b = binary.BigEndian.AppendUint64(b, f.Window)
	b = binary.BigEndian.AppendUint16(b, uint16(len(f.Ranges)))
	for _, r := range f.Ranges {
		b = binary.BigEndian.AppendUint64(b, r.Start)
		b = binary.BigEndian.AppendUint64(b, r.End)
	}
	return b
}

func (f *Done) appendBody(b []byte, _ uint8) []byte {
	b = binary.BigEndian.AppendUint64(b, f.TotalChunks)
	return append(b, f.Digest[:]...)
}

func (f *DoneOK) appendBody(b []byte, _ uint8) []byte {
	b = binary.BigEndian.AppendUint64(b, f.TotalChunks)
	b = append(b, f.Digest[:]...)
	return binary.BigEndian.AppendUint64(b, f.BytesWritten)
}

func (f *ErrorFrame) appendBody(b []byte, _ uint8) []byte {
	r := f.Reason
	if len(r) > MaxReasonLen {
		r = r[:MaxReasonLen]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(r)))
	return append(b, r...)
}

func appendHeader(b []byte, t FrameType, bodyLen int) []byte {
	return appendHeaderV(b, 1, t, bodyLen)
}

func appendHeaderV(b []byte, version uint8, t FrameType, bodyLen int) []byte {
	b = append(b, frameMagic[:]...)
	b = append(b, version, byte(t), 0, 0)
	return binary.BigEndian.AppendUint32(b, uint32(bodyLen))
}

// AppendFrame appends the complete v1 encoding of f to b.
func AppendFrame(b []byte, f Frame) []byte { return AppendFrameV(b, 1, f) }

// AppendFrameV appends the complete encoding of f in protocol version to b.
func AppendFrameV(b []byte, version uint8, f Frame) []byte {
	start := len(b)
	b = appendHeaderV(b, version, f.Type(), 0)
	b = f.appendBody(b, version)
	binary.BigEndian.PutUint32(b[start+8:], uint32(len(b)-start-HeaderLen))
	return b
}

// WriteFrame writes f to w in v1. A chunk's payload is written without
// copying it.
func WriteFrame(w io.Writer, f Frame) error { return WriteFrameV(w, 1, f) }

// WriteFrameV writes f to w in protocol version.
func WriteFrameV(w io.Writer, version uint8, f Frame) error {
	if err := checkEncodable(version, f); err != nil {
		return err
	}
	if c, ok := f.(*Chunk); ok {
		var scratch [HeaderLen + ChunkFixedLen]byte
		b := appendHeaderV(scratch[:0], version, FrameChunk, ChunkFixedLen+len(c.Payload))
		b = c.appendFixed(b)
		if _, err := w.Write(b); err != nil {
			return err
		}
		if len(c.Payload) > 0 {
			if _, err := w.Write(c.Payload); err != nil {
				return err
			}
		}
		return nil
	}
	var scratch [128]byte
	_, err := w.Write(AppendFrameV(scratch[:0], version, f))
	return err
}

func checkEncodable(version uint8, f Frame) error {
	if !knownType(version, f.Type()) {
		return protoErrorf("%s frame does not exist in v%d", f.Type(), version)
	}
	switch f := f.(type) {
	case *Acks:
		if len(f.Ranges) > MaxAckRanges {
			return protoErrorf("acks with %d ranges", len(f.Ranges))
		}
	case *Hello:
		if len(f.TransferID) > MaxIDLen || len(f.Ticket) > MaxIDLen {
			return protoErrorf("hello field longer than %d bytes", MaxIDLen)
		}
	case *Chunk:
		if uint64(len(f.Payload)) > 1<<32-1-ChunkFixedLen {
			return fmt.Errorf("%w: payload of %d bytes", ErrFrameTooLarge, len(f.Payload))
		}
	}
	return nil
}

// knownType tells whether frame type t exists in version.
func knownType(version uint8, t FrameType) bool {
	switch t {
	case FrameHello, FrameHelloOK, FrameChunk, FrameDone, FrameDoneOK, FrameError:
		return version >= MinProtocolVersion && version <= ProtocolVersion
	case FrameAck:
		return version == 1
	case FrameAcks:
		return version == 2
	}
	return false
}

// ReadFrame reads one frame of any supported version from r. maxPayload bounds a chunk's payload; every
// other frame is bounded by MaxControlBody. The declared length is checked
// against these bounds before anything is allocated, so ReadFrame allocates
// at most maxPayload+ChunkFixedLen bytes for the body. It never panics on any
// input. A clean end of stream before a header is io.EOF; an end inside a
// frame is ErrTruncated.
func ReadFrame(r io.Reader, maxPayload int) (Frame, error) {
	fr := frameReader{r: r, maxPayload: maxPayload}
	return fr.next()
}

// frameReader reads frames reusing one body buffer: a Chunk's Payload
// aliases it and is valid until the next call. With alloc set, each chunk
// body is allocated by it instead (the caller owns it). version 0 accepts
// any supported version and records the last one read in got; otherwise a
// frame of another version is a protocol error.
type frameReader struct {
	r          io.Reader
	maxPayload int
	reuse      bool
	buf        []byte
	hdr        [HeaderLen]byte
	version    uint8
	got        uint8
	alloc      func(n int) []byte
	// allocated is the body alloc gave the last chunk.
	allocated []byte
}

func newFrameReader(r io.Reader, maxPayload int) *frameReader {
	if _, ok := r.(*bufio.Reader); !ok {
		r = bufio.NewReaderSize(r, 64<<10)
	}
	return &frameReader{r: r, maxPayload: maxPayload, reuse: true}
}

func (fr *frameReader) next() (Frame, error) {
	if n, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: header cut after %d bytes", ErrTruncated, n)
		}
		return nil, err
	}
	h := fr.hdr
	if [4]byte(h[0:4]) != frameMagic {
		return nil, protoErrorf("bad magic %q", h[0:4])
	}
	v := h[4]
	t := FrameType(h[5])
	// An Error frame is read in any supported version: a peer refuses in
	// v1 before it understood the version.
	if v < MinProtocolVersion || v > ProtocolVersion || (fr.version != 0 && v != fr.version && t != FrameError) {
		return nil, protoErrorf("unsupported protocol version %d", v)
	}
	fr.got = v
	if h[6] != 0 || h[7] != 0 {
		return nil, protoErrorf("reserved header flags set")
	}
	bodyLen := uint64(binary.BigEndian.Uint32(h[8:12]))
	limit := uint64(MaxControlBody)
	switch t {
	case FrameChunk:
		limit = ChunkFixedLen + uint64(max(fr.maxPayload, 0))
	default:
		if !knownType(v, t) {
			return nil, protoErrorf("unknown frame type %d in v%d", uint8(t), v)
		}
	}
	if bodyLen > limit {
		return nil, fmt.Errorf("%w: %s body of %d bytes, limit %d", ErrFrameTooLarge, t, bodyLen, limit)
	}
	var body []byte
	if t == FrameChunk && fr.alloc != nil {
		body = fr.alloc(int(bodyLen))
		fr.allocated = body
	} else if fr.reuse && uint64(cap(fr.buf)) >= bodyLen {
		body = fr.buf[:bodyLen]
	} else {
		body = make([]byte, bodyLen)
		if fr.reuse {
			fr.buf = body
		}
	}
	if n, err := io.ReadFull(fr.r, body); err != nil {
		if t == FrameChunk && fr.alloc != nil {
			putBuf(body)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: %s body cut after %d of %d bytes", ErrTruncated, t, n, bodyLen)
		}
		return nil, err
	}
	return parseBody(v, t, body)
}

// cursor decodes a body; any short read sets bad.
type cursor struct {
	b   []byte
	bad bool
}

func (c *cursor) take(n int) []byte {
	if c.bad || n < 0 || len(c.b) < n {
		c.bad = true
		return nil
	}
	v := c.b[:n]
	c.b = c.b[n:]
	return v
}

func (c *cursor) u8() uint8 {
	if v := c.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (c *cursor) u16() uint16 {
	if v := c.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (c *cursor) u32() uint32 {
	if v := c.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (c *cursor) u64() uint64 {
	if v := c.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (c *cursor) digest() (d [32]byte) {
	if v := c.take(32); v != nil {
		copy(d[:], v)
	}
	return d
}

func (c *cursor) str(n int) string {
	return string(c.take(n))
}

func parseBody(version uint8, t FrameType, body []byte) (Frame, error) {
	c := &cursor{b: body}
	var f Frame
	switch t {
	case FrameHello:
		h := &Hello{Stream: c.u32()}
		h.TransferID = c.str(int(c.u8()))
		h.Ticket = c.str(int(c.u8()))
		if !c.bad && (h.TransferID == "" || !utf8.ValidString(h.TransferID)) {
			return nil, protoErrorf("hello: empty or non-UTF-8 transfer id")
		}
		f = h
	case FrameHelloOK:
		h := &HelloOK{ChunkSize: c.u64(), Watermark: c.u64()}
		if version >= 2 {
			h.Window, h.MaxAhead = c.u64(), c.u32()
		}
		f = h
	case FrameChunk:
		ch := &Chunk{Seq: c.u64(), Offset: c.u64(), Length: c.u64(), Kind: ChunkKind(c.u8())}
		flags := c.u8()
		ch.Digest = c.digest()
		if c.bad {
			break
		}
		if flags&^chunkFlagCompressed != 0 {
			return nil, protoErrorf("chunk: unknown flags %#x", flags)
		}
		ch.Compressed = flags&chunkFlagCompressed != 0
		if ch.Kind != KindData && ch.Kind != KindZero {
			return nil, protoErrorf("chunk: unknown kind %d", ch.Kind)
		}
		ch.Payload = c.b
		c.b = nil
		f = ch
	case FrameAck:
		f = &Ack{Seq: c.u64()}
	case FrameAcks:
		a := &Acks{Watermark: c.u64(), Window: c.u64()}
		n := int(c.u16())
		if n > MaxAckRanges {
			return nil, protoErrorf("acks with %d ranges", n)
		}
		prev := a.Watermark
		for i := 0; i < n && !c.bad; i++ {
			r := SeqRange{Start: c.u64(), End: c.u64()}
			if c.bad {
				break
			}
			if r.Start <= prev || r.End <= r.Start {
				return nil, protoErrorf("acks: range [%d, %d) not sorted above %d", r.Start, r.End, prev)
			}
			prev = r.End
			a.Ranges = append(a.Ranges, r)
		}
		f = a
	case FrameDone:
		f = &Done{TotalChunks: c.u64(), Digest: c.digest()}
	case FrameDoneOK:
		f = &DoneOK{TotalChunks: c.u64(), Digest: c.digest(), BytesWritten: c.u64()}
	case FrameError:
		n := int(c.u16())
		if n > MaxReasonLen {
			return nil, protoErrorf("error reason of %d bytes", n)
		}
		f = &ErrorFrame{Reason: c.str(n)}
	}
	if c.bad {
		return nil, protoErrorf("%s body too short (%d bytes)", t, len(body))
	}
	if len(c.b) != 0 {
		return nil, protoErrorf("%s body has %d trailing bytes", t, len(c.b))
	}
	return f, nil
}
