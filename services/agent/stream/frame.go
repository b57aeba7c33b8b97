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
	// ProtocolVersion is the only version this package speaks.
	ProtocolVersion = 1
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

// Frame is one protocol frame: *Hello, *HelloOK, *Chunk, *Ack, *Done,
// *DoneOK or *ErrorFrame.
type Frame interface {
	Type() FrameType
	// appendBody appends the encoded body (without header).
	appendBody(b []byte) []byte
}

// Hello opens every connection: it names the transfer and presents the
// session's ticket. Stream is the sender's stream index (logs only).
type Hello struct {
	Stream     uint32
	TransferID string
	Ticket     string
}

// HelloOK accepts a connection; it repeats the session's chunk size and the
// destination's contiguous watermark.
type HelloOK struct {
	ChunkSize uint64
	Watermark uint64
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
func (*Done) Type() FrameType       { return FrameDone }
func (*DoneOK) Type() FrameType     { return FrameDoneOK }
func (*ErrorFrame) Type() FrameType { return FrameError }

func (f *Hello) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, f.Stream)
	b = append(b, byte(len(f.TransferID)))
	b = append(b, f.TransferID...)
	b = append(b, byte(len(f.Ticket)))
	return append(b, f.Ticket...)
}

func (f *HelloOK) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, f.ChunkSize)
	return binary.BigEndian.AppendUint64(b, f.Watermark)
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

func (f *Chunk) appendBody(b []byte) []byte {
	return append(f.appendFixed(b), f.Payload...)
}

func (f *Ack) appendBody(b []byte) []byte { return binary.BigEndian.AppendUint64(b, f.Seq) }

func (f *Done) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, f.TotalChunks)
	return append(b, f.Digest[:]...)
}

func (f *DoneOK) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, f.TotalChunks)
	b = append(b, f.Digest[:]...)
	return binary.BigEndian.AppendUint64(b, f.BytesWritten)
}

func (f *ErrorFrame) appendBody(b []byte) []byte {
	r := f.Reason
	if len(r) > MaxReasonLen {
		r = r[:MaxReasonLen]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(r)))
	return append(b, r...)
}

func appendHeader(b []byte, t FrameType, bodyLen int) []byte {
	b = append(b, frameMagic[:]...)
	b = append(b, ProtocolVersion, byte(t), 0, 0)
	return binary.BigEndian.AppendUint32(b, uint32(bodyLen))
}

// AppendFrame appends the complete encoding of f to b.
func AppendFrame(b []byte, f Frame) []byte {
	start := len(b)
	b = appendHeader(b, f.Type(), 0)
	b = f.appendBody(b)
	binary.BigEndian.PutUint32(b[start+8:], uint32(len(b)-start-HeaderLen))
	return b
}

// WriteFrame writes f to w. A chunk's payload is written without copying it.
func WriteFrame(w io.Writer, f Frame) error {
	if err := checkEncodable(f); err != nil {
		return err
	}
	if c, ok := f.(*Chunk); ok {
		var scratch [HeaderLen + ChunkFixedLen]byte
		b := appendHeader(scratch[:0], FrameChunk, ChunkFixedLen+len(c.Payload))
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
	_, err := w.Write(AppendFrame(scratch[:0], f))
	return err
}

func checkEncodable(f Frame) error {
	switch f := f.(type) {
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

// ReadFrame reads one frame from r. maxPayload bounds a chunk's payload; every
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
// aliases it and is valid until the next call.
type frameReader struct {
	r          io.Reader
	maxPayload int
	reuse      bool
	buf        []byte
	hdr        [HeaderLen]byte
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
	if h[4] != ProtocolVersion {
		return nil, protoErrorf("unsupported protocol version %d", h[4])
	}
	t := FrameType(h[5])
	if h[6] != 0 || h[7] != 0 {
		return nil, protoErrorf("reserved header flags set")
	}
	bodyLen := uint64(binary.BigEndian.Uint32(h[8:12]))
	limit := uint64(MaxControlBody)
	switch t {
	case FrameChunk:
		limit = ChunkFixedLen + uint64(max(fr.maxPayload, 0))
	case FrameHello, FrameHelloOK, FrameAck, FrameDone, FrameDoneOK, FrameError:
	default:
		return nil, protoErrorf("unknown frame type %d", uint8(t))
	}
	if bodyLen > limit {
		return nil, fmt.Errorf("%w: %s body of %d bytes, limit %d", ErrFrameTooLarge, t, bodyLen, limit)
	}
	var body []byte
	if fr.reuse && uint64(cap(fr.buf)) >= bodyLen {
		body = fr.buf[:bodyLen]
	} else {
		body = make([]byte, bodyLen)
		if fr.reuse {
			fr.buf = body
		}
	}
	if n, err := io.ReadFull(fr.r, body); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: %s body cut after %d of %d bytes", ErrTruncated, t, n, bodyLen)
		}
		return nil, err
	}
	return parseBody(t, body)
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

func parseBody(t FrameType, body []byte) (Frame, error) {
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
		f = &HelloOK{ChunkSize: c.u64(), Watermark: c.u64()}
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
