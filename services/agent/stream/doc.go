// Package stream is Ferry's agent-to-agent data plane: the framing, digests,
// tickets, TLS setup and the send/receive engines that copy an RBD image
// (or the diff between two snapshots) from a source agent to a destination
// agent. It knows nothing of Ceph: it reads a SourceImage, writes a
// DestImage and keeps its resume point in a CheckpointStore, small
// interfaces that services/agent/rbd implements over librbd (tests use
// in-memory fakes).
//
// # One transfer
//
//  1. The destination agent calls Server.PrepareSession with the transfer
//     id, the opened image and its checkpoint store. It gets a ticket (32
//     random bytes, base64url) bound to that transfer and image, and the
//     resume checkpoint.
//  2. The source agent calls Send with the ticket, the checkpoint, the
//     source snapshot and its extent list (from DiffIterate). Send opens
//     Streams TLS 1.3 connections (mutual certificates from the deployment
//     CA, the destination's name verified, ALPN "ferry-stream/1"); each
//     presents the ticket in its first frame.
//  3. Chunks flow over the streams; the destination validates each one
//     completely before writing it, writes it, and acknowledges it.
//  4. Send sends Done (chunk count and transfer digest) on a final control
//     connection; the destination compares both with its own, flushes,
//     saves a complete checkpoint and answers DoneOK. The session ends and
//     its ticket dies. Session.Wait reports the outcome on the destination.
//
// # Chunks
//
// PlanChunks turns the ordered extents into chunks of at most chunk_size
// bytes (default 4 MiB ≈ an RBD object) that never cross a
// chunk_size-aligned boundary; contiguous extents of one kind within a
// block merge. Chunks are numbered seq = 0..n-1 in offset order. The plan
// depends only on the extents, the image size and the chunk size, so a
// resumed run numbers chunks exactly like the first. Extents marked Zero
// are sent as zero chunks without reading; data chunks that read as all
// zeros become zero chunks too. A zero chunk carries no payload and the
// destination applies it with WriteZeroes, so a range zeroed in an
// incremental really reads as zeros.
//
// # Digests
//
// chunk digest    = blake3-256(offset u64be ‖ length u64be ‖ kind u8 ‖ data)
// (no data for a zero chunk: its digest costs nothing whatever its length)
// transfer digest = sha256(chunk digest 0 ‖ chunk digest 1 ‖ … ‖ n-1),
// rendered "blake3-sha256:<hex>" (sha256 keeps a serializable state for
// checkpoints; BLAKE3 hashes the data at more than twice SHA-256's speed). The source computes it from what it read, the
// destination from what it verified and wrote, each folding digests in seq
// order as its contiguous watermark advances and holding out-of-order ones
// in a bounded map. Neither side reads the image a second time.
//
// # Wire format
//
// Every frame has a 12-byte header, integers big-endian:
//
//	magic "FRRY" [4] | version 1 [1] | type [1] | flags 0 [2] | body length [4]
//
// Bodies by type:
//
//	1 Hello     stream u32 | id-len u8 | transfer id | ticket-len u8 | ticket
//	2 HelloOK   chunk size u64 | destination watermark u64
//	3 Chunk     seq u64 | offset u64 | length u64 | kind u8 (1 data, 2 zero)
//	            | flags u8 (bit 0: zstd) | digest [32] | payload
//	4 Ack       seq u64
//	5 Done      total chunks u64 | transfer digest [32]
//	6 DoneOK    total chunks u64 | transfer digest [32] | bytes written u64
//	7 Error     reason-len u16 | reason (≤ 1000 bytes)
//
// A chunk body is at most 58 + chunk_size bytes, any other body at most
// 1024; the decoder (ReadFrame) checks the declared length against that
// before allocating, rejects unknown types, versions, flags and kinds, and
// requires each body to be consumed exactly. A zstd payload is one frame
// that must decode to exactly Length bytes; the decoder is bounded to the
// chunk size (window and output) and never writes past its buffer. The
// source sends a chunk compressed only when that makes it smaller.
//
// A connection is: TLS handshake, Hello → HelloOK (or Error), then Chunk
// frames, each answered by an Ack once written, in order per connection.
// The control connection sends Done and gets DoneOK or Error.
//
// # Tickets and refusals
//
// TicketStore keeps one ticket per transfer; Validate compares in constant
// time and refuses a ticket of another transfer, an expired one (no
// activity for TicketTTL) or one whose session has ended. A refused
// connection gets an Error frame and a log line (keys transfer_id, stream,
// reason) and does not disturb the session, so a forger cannot kill a
// transfer. A client without a CA-signed certificate is refused by TLS
// itself. A connection whose chunk fails validation (beyond the image end,
// offset+length overflow, zero length, longer than the chunk size, crossing
// a block boundary, payload or decompressed size mismatch, digest mismatch,
// seq too far ahead) or that breaks the protocol ends the whole session in
// error before anything of that chunk is written.
//
// # Failures, retries and resume
//
// A stream that drops (connection reset, I/O timeout, truncated frame) is
// a transport failure: the destination logs it and keeps the session; the
// source reconnects with exponential backoff, presents the ticket again and
// re-sends that stream's unacknowledged chunks (writes are idempotent; the
// destination skips chunks it already holds). If the source does not come
// back, the session ends with ErrTicketExpired once no connection is open
// and TicketTTL passed, so a truncated or stalled stream never hangs. Every
// connection has an idle timeout; the source also times out missing acks.
//
// The destination saves a Checkpoint through its CheckpointStore whenever
// the watermark moved and CheckpointInterval (1 s) passed or
// CheckpointBytes were folded: it captures the watermark W (every seq < W
// written) and the serialized sha256 state of the transfer digest, flushes
// the image, then saves. PrepareSession returns the checkpoint of the same
// transfer and chunk size; Send skips seq < W and restores the digest from
// the saved state (verified at Done: a wrong state cannot produce a
// matching digest). Re-sent data after a crash is bounded by the checkpoint
// lag plus the chunks in flight. A session replaced by a new
// PrepareSession, aborted or closed with the server saves a final
// checkpoint; a crash does not need to.
//
// # Resources
//
// The source holds Streams × Pipeline chunk buffers (twice that with zstd),
// the destination one frame buffer (and one decode buffer with zstd) per
// connection, plus at most MaxPending held digests per session; the source
// never dispatches a chunk more than Streams × Pipeline × 4 ahead of its
// oldest unacknowledged one. Memory does not depend on the image size.
// BandwidthLimit is one token bucket shared by all streams (bytes on the
// wire per second). Cancelling Send's context closes its connections and
// stops it within moments.
//
// Fencing between agents (one writer per destination image) and image
// ownership checks belong to the caller (services/agent with rbd locks).
package stream
