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
//     id, the opened image and its checkpoint store. It flushes the image
//     once (librbd switches from writethrough to writeback at the first
//     flush), and gets a ticket (32 random bytes, base64url) bound to that
//     transfer and image, and the resume checkpoint.
//  2. The source agent calls Send with the ticket, the checkpoint, the
//     source snapshot and its extent list (from DiffIterate). Send opens
//     Streams TLS 1.3 connections (mutual certificates from the deployment
//     CA, the destination's name verified, the protocol version negotiated
//     by ALPN, see Versions); each presents the ticket in its first frame.
//  3. Chunks flow over the connections; the destination validates each
//     one completely before writing it, writes it, and acknowledges it.
//  4. Send sends Done (chunk count and transfer digest) on a final control
//     connection; the destination compares both with its own, flushes,
//     saves a complete checkpoint and answers DoneOK. The session ends and
//     its ticket dies. Session.Wait reports the outcome on the destination.
//
// The code follows these sections: send.go (Send, the plan), window.go
// (credit, acks and the ready queue), conn.go (connections, versions,
// buffering, commit), worker.go (the read-ahead pool and the connection
// workers), retry.go, compress.go, digest.go; frame.go (wire format);
// server.go, session.go and writer.go (the destination).
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
// checkpoints; BLAKE3 hashes the data at more than twice SHA-256's speed).
// The source computes it from what it read, the destination from what it
// verified and wrote, each folding digests in seq order as its contiguous
// watermark advances and holding out-of-order ones in a bounded map.
// Neither side reads the image a second time. Both versions use the same
// digests and checkpoints.
//
// # Versions
//
// The source offers the ALPN names "ferry-stream/2" and "ferry-stream/1";
// the destination picks the first of its own list the source offered, so
// the negotiated version is the highest both speak (a v1 agent offers and
// accepts "ferry-stream/1" only; no ALPN at all means v1). The Hello's
// header carries the version the source speaks on the connection: the
// negotiated one (as Send does) or an older one, never a newer one. Every
// later frame of the connection carries that version, and a frame of
// another version is a protocol error (but an Error frame, readable in any
// version, since a refusal may precede the Hello). v2 is
// the default; v1 is spoken for one release so that agents can be
// upgraded one at a time (SendRequest.MaxVersion and
// ServerConfig.MaxVersion pin v1).
//
// # Wire format
//
// Every frame has a 12-byte header, integers big-endian:
//
//	magic "FRRY" [4] | version 1 or 2 [1] | type [1] | flags 0 [2] | body length [4]
//
// Bodies by type:
//
//	1 Hello     stream u32 | id-len u8 | transfer id | ticket-len u8 | ticket
//	2 HelloOK   chunk size u64 | destination watermark u64
//	            v2 adds: window u64 | max ahead u32
//	3 Chunk     seq u64 | offset u64 | length u64 | kind u8 (1 data, 2 zero)
//	            | flags u8 (bit 0: zstd) | digest [32] | payload
//	4 Ack       seq u64 (v1 only)
//	5 Done      total chunks u64 | transfer digest [32]
//	6 DoneOK    total chunks u64 | transfer digest [32] | bytes written u64
//	7 Error     reason-len u16 | reason (≤ 1000 bytes)
//	8 Acks      watermark u64 | window u64 | n u16 (≤ 60)
//	            | n × (start u64 | end u64) (v2 only)
//
// A chunk body is at most 58 + chunk_size bytes, any other body at most
// 1024; the decoder (ReadFrame) checks the declared length against that
// before allocating, rejects unknown types (for the version), versions,
// flags and kinds, Acks ranges that are empty, unsorted, touching or not
// above the watermark, and requires each body to be consumed exactly. A
// zstd payload is one frame that must decode to exactly Length bytes; the
// decoder is bounded to the chunk size (window and output) and never
// writes past its buffer. The source sends a chunk compressed only when
// that makes it smaller.
//
// v1: a connection is TLS handshake, Hello → HelloOK (or Error), then Chunk
// frames, each answered by an Ack once written, in order per connection.
//
// v2: HelloOK grants the credit: window is the bytes of chunk frames
// (header and body) the source may have sent and not had acknowledged, in
// the whole session, across its connections (one chunk alone may exceed
// it); max ahead bounds seq − watermark of anything sent (the out-of-order
// digests the destination holds). Chunks then flow on every connection
// with no per-connection order or limit. Acks reports the destination's
// written set: every seq below watermark, plus up to 60 ranges [start,
// end) above it (the lowest ones; later Acks repeat what did not fit), and
// renews the window. Acks are cumulative and idempotent, are batched (one
// frame covers every chunk written since the last one), and go out on the
// connection that carried the chunk or, if it is gone, on any connection
// of the session: they acknowledge chunks of any connection.
//
// The control connection sends Done and gets DoneOK or Error (in v2 it may
// see Acks first).
//
// # Send
//
// Send plans the chunks (in seq order, never more than max ahead beyond
// the acknowledged watermark), hands them to a read-ahead pool of
// ReadAhead workers (default 16) that read, zero-check, hash and compress
// them into pooled buffers and queue them ready. The bytes read but not
// yet acknowledged are budgeted (ReadAhead × ChunkSize plus the credit): a
// worker waits for budget before it reads.
//
// # Window and acks
//
// The window holds the ready queue, ordered by seq, and the chunks in
// flight with their connection. A connection's writer takes the lowest
// ready chunk when its socket has drained (its previous write returned)
// and the credit allows it (v2), or while it has fewer than Pipeline
// unacknowledged chunks (v1); it flushes only when it would wait, so small
// chunks share TLS records and system calls. An ack releases the chunk's
// credit and buffer wherever it is; acks for seqs not planned yet are
// remembered and the chunk is dropped when read. When a connection drops,
// its unacknowledged chunks go back to the ready queue, where any open
// connection takes them (at the front, being the lowest).
//
// # Connections
//
// Under each TLS connection a buffering conn reads the socket in 256 KiB
// pieces and, on the source, gathers the TLS records of a write into a few
// large socket writes (flushed after each write TLS was given), so a 4 MiB
// chunk takes 16 system calls instead of 256. The destination reads the
// same way.
//
// # Destination
//
// A v2 connection's reader reads each chunk into a pooled buffer and
// claims it: a chunk already written is acknowledged again, one being
// written is dropped (its ack follows), and a source whose unacknowledged
// chunks exceed twice its credit plus one chunk breaks the protocol. Claimed chunks go to
// the session's pool of Writers (default 16) that each verify
// (chunkChecker: bounds, decompression, digest) and write one chunk, fold
// its digest and kick the acks. Done waits for the writers to drain
// before it commits. v1 connections verify, write and ack in turn, as v1
// did.
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
// A connection that drops (connection reset, I/O timeout, truncated frame)
// is a transport failure: the destination logs it and keeps the session;
// its chunks go back to the source's ready queue for the other
// connections, and the source reconnects it with exponential backoff
// (retry.go: at most MaxAttempts failures in a row without an ack of one
// of its chunks), presenting the ticket again. Writes are idempotent and
// the destination skips chunks it already holds. If the source does not
// come back, the session ends with ErrTicketExpired once no connection is
// open and TicketTTL passed, so a truncated or stalled stream never hangs.
// Every connection has an idle timeout; the source also fails a
// connection whose oldest chunk waited IOTimeout for its ack.
//
// The destination saves a Checkpoint through its CheckpointStore whenever
// the watermark moved and CheckpointInterval (5 s) passed or
// CheckpointBytes (1 GiB) were folded: it captures the watermark W (every
// seq < W written) and the serialized sha256 state of the transfer
// digest, flushes the image, then saves. PrepareSession returns the
// checkpoint of the same transfer and chunk size; Send skips seq < W and
// restores the digest from the saved state (verified at Done: a wrong
// state cannot produce a matching digest). Re-sent data after a crash is
// bounded by the checkpoint lag plus the window. A session replaced by a
// new PrepareSession, aborted or closed with the server saves a final
// checkpoint; a crash does not need to.
//
// # Resources
//
// The source holds at most the window in flight plus ReadAhead ×
// ChunkSize read ahead (with the defaults 64 + 64 MiB), and one zstd
// encoder per read-ahead worker. The destination holds, per session, what
// the credit lets in (the window; beyond twice that plus a chunk is
// refused), one frame being read per connection, one zstd decoder (and
// decode buffer) per writer, and at most MaxPending held digests. Memory does not depend on the image size.
// BandwidthLimit is one token bucket shared by all streams (bytes on the
// wire per second). Cancelling Send's context closes its connections and
// stops it within moments.
//
// Fencing between agents (one writer per destination image) and image
// ownership checks belong to the caller (services/agent with rbd locks).
package stream
