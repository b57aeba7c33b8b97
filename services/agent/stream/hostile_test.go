package stream

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// hostileSetup prepares a session whose destination image records writes.
func hostileSetup(t *testing.T, ts *testServer, id string, size int) (PrepareResponse, *memImage) {
	t.Helper()
	dst := newMemImage(size)
	prep, err := ts.srv.PrepareSession(context.Background(), PrepareRequest{
		TransferID: id, ImageName: "volumes/" + id, Image: dst, Checkpoints: &MemCheckpointStore{}, ChunkSize: 64 << 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	return prep, dst
}

func sendTo(ctx context.Context, t *testing.T, ts *testServer, cfg *tls.Config, id, ticket string, src []byte) (Result, error) {
	logger, _ := newTestLogger(t)
	return Send(ctx, SendRequest{
		Addr: ts.addr, TLSConfig: cfg, TransferID: id, Ticket: ticket,
		Source: &memSource{data: src}, Extents: []Extent{{Length: uint64(len(src))}}, ChunkSize: 64 << 10,
		Retry: fastRetry(), IOTimeout: 5 * time.Second, Logger: logger,
	})
}

func assertNoWrites(t *testing.T, dst *memImage) {
	t.Helper()
	if w, z, _ := dst.counts(); w != 0 || z != 0 {
		t.Fatalf("%d writes and %d zeroings landed", w, z)
	}
}

func waitSession(t *testing.T, prep PrepareResponse) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := prep.Session.Wait(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("session hangs")
	}
	return err
}

func TestRefusesForeignAndMissingClientCerts(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	src, _ := denseImage(31, 256<<10)
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"certificate from another CA", pki.otherClient},
		{"no client certificate", pki.noCertClient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prep, dst := hostileSetup(t, ts, "tls-"+strings.ReplaceAll(tc.name, " ", "-"), len(src))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			_, err := sendTo(ctx, t, ts, tc.cfg, prep.Session.TransferID(), prep.Ticket, src)
			if err == nil {
				t.Fatal("send succeeded")
			}
			if !isPermanent(err) || time.Since(start) > 5*time.Second {
				t.Fatalf("refusal should be final and fast: %v after %v", err, time.Since(start))
			}
			ts.log.waitFor(t, "tls handshake", 2*time.Second)
			assertNoWrites(t, dst)
		})
	}
}

func TestSourceVerifiesDestinationName(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	cfg, err := ClientTLSConfig(pki.caFile, pki.cliCert, pki.cliKey, "someone-else.ferry.test")
	if err != nil {
		t.Fatal(err)
	}
	prep, dst := hostileSetup(t, ts, "wrong-name", 64<<10)
	_, err = sendTo(context.Background(), t, ts, cfg, "wrong-name", prep.Ticket, make([]byte, 64<<10))
	if err == nil || !isPermanent(err) {
		t.Fatalf("err = %v, want a permanent certificate error", err)
	}
	assertNoWrites(t, dst)
	// A destination trusted by another CA only is refused too.
	cfg, err = ClientTLSConfig(pki.otherCAFile, pki.cliCert, pki.cliKey, testServerName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = sendTo(context.Background(), t, ts, cfg, "wrong-name", prep.Ticket, make([]byte, 64<<10)); err == nil {
		t.Fatal("untrusted destination accepted")
	}
}

func TestRefusesBadTickets(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	src, _ := denseImage(32, 128<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("wrong ticket", func(t *testing.T) {
		prep, dst := hostileSetup(t, ts, "t-wrong", len(src))
		forged := strings.Repeat("A", len(prep.Ticket))
		_, err := sendTo(ctx, t, ts, pki.client, "t-wrong", forged, src)
		var re *RemoteError
		if !errors.As(err, &re) || !strings.Contains(re.Reason, ErrTicketInvalid.Error()) {
			t.Fatalf("err = %v", err)
		}
		assertNoWrites(t, dst)
		ts.log.waitFor(t, `transfer_id=t-wrong stream=`, time.Second)
		ts.log.waitFor(t, `peer="CN=ferry-agent RegionOne" reason="stream: invalid ticket"`, time.Second)
		// The real source is not locked out by the forger.
		if _, err := sendTo(ctx, t, ts, pki.client, "t-wrong", prep.Ticket, src); err != nil {
			t.Fatalf("legitimate send after a forged one: %v", err)
		}
	})
	t.Run("ticket of another transfer", func(t *testing.T) {
		_, dstA := hostileSetup(t, ts, "t-a", len(src))
		prepB, _ := hostileSetup(t, ts, "t-b", len(src))
		_, err := sendTo(ctx, t, ts, pki.client, "t-a", prepB.Ticket, src)
		if err == nil || !strings.Contains(err.Error(), ErrTicketInvalid.Error()) {
			t.Fatalf("err = %v", err)
		}
		assertNoWrites(t, dstA)
	})
	t.Run("reused after the session closed", func(t *testing.T) {
		prep, _ := hostileSetup(t, ts, "t-reuse", len(src))
		if _, err := sendTo(ctx, t, ts, pki.client, "t-reuse", prep.Ticket, src); err != nil {
			t.Fatal(err)
		}
		if err := waitSession(t, prep); err != nil {
			t.Fatal(err)
		}
		_, err := sendTo(ctx, t, ts, pki.client, "t-reuse", prep.Ticket, src)
		if err == nil || !strings.Contains(err.Error(), ErrNoSession.Error()) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		ts := startServer(t, pki, func(c *ServerConfig) { c.TicketTTL = 300 * time.Millisecond })
		prep, dst := hostileSetup(t, ts, "t-expired", len(src))
		if err := waitSession(t, prep); !errors.Is(err, ErrTicketExpired) {
			t.Fatalf("idle session ended with %v", err)
		}
		_, err := sendTo(ctx, t, ts, pki.client, "t-expired", prep.Ticket, src)
		if err == nil {
			t.Fatal("expired ticket accepted")
		}
		assertNoWrites(t, dst)
		ts.log.waitFor(t, "ticket expired", time.Second)
	})
}

func TestTicketStore(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	s := NewTicketStore(clock)
	tk, err := s.Issue("t1", "rbd/img", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if img, err := s.Validate(tk, "t1"); err != nil || img != "rbd/img" {
		t.Fatalf("valid ticket: %q %v", img, err)
	}
	tk2, _ := s.Issue("t2", "rbd/img2", time.Minute)
	for _, tc := range []struct {
		ticket, id string
		want       error
	}{
		{tk2, "t1", ErrTicketInvalid},
		{tk, "t2", ErrTicketInvalid},
		{"", "t1", ErrTicketInvalid},
		{"not base64 !!", "t1", ErrTicketInvalid},
		{tk[:10], "t1", ErrTicketInvalid},
		{tk, "t3", ErrNoSession},
	} {
		if _, err := s.Validate(tc.ticket, tc.id); !errors.Is(err, tc.want) {
			t.Errorf("Validate(%q, %q) = %v, want %v", tc.ticket, tc.id, err, tc.want)
		}
	}
	now = now.Add(50 * time.Second)
	s.Touch("t1") // renewed
	now = now.Add(50 * time.Second)
	if _, err := s.Validate(tk, "t1"); err != nil {
		t.Fatalf("renewed ticket: %v", err)
	}
	if _, err := s.Validate(tk2, "t2"); !errors.Is(err, ErrTicketExpired) {
		t.Fatalf("expired ticket: %v", err)
	}
	s.closeIssued("t1", tk2) // not t1's ticket: no effect
	if _, err := s.Validate(tk, "t1"); err != nil {
		t.Fatal(err)
	}
	s.Close("t1")
	if _, err := s.Validate(tk, "t1"); !errors.Is(err, ErrNoSession) {
		t.Fatalf("closed ticket: %v", err)
	}
	if _, err := s.Issue("", "x", time.Minute); err == nil {
		t.Fatal("empty transfer id accepted")
	}
	if _, err := s.Issue("x", "x", 0); err == nil {
		t.Fatal("zero ttl accepted")
	}
}

// handClient speaks the protocol by hand after a valid Hello.
type handClient struct {
	c  *tls.Conn
	bw *bufio.Writer
	fr *frameReader
	v  uint8 // the version negotiated
}

func (h *handClient) mustWrite(t testing.TB, f Frame) {
	t.Helper()
	if err := WriteFrameV(h.bw, h.v, f); err != nil {
		t.Fatal(err)
	}
}

// versions runs f for each protocol version, as a subtest.
func versions(t *testing.T, f func(t *testing.T, v int)) {
	for v := MinProtocolVersion; v <= ProtocolVersion; v++ {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { f(t, v) })
	}
}

// dialHand connects offering protocol versions up to maxVersion and sends
// a valid Hello in the version negotiated, which must be maxVersion.
func dialHand(t *testing.T, ts *testServer, pki *testPKI, maxVersion int, id, ticket string) *handClient {
	t.Helper()
	cfg := pki.client.Clone()
	cfg.NextProtos = offeredALPN(maxVersion)
	c := rawConn(t, ts.addr, cfg)
	v := alpnVersion(c.ConnectionState().NegotiatedProtocol)
	if int(v) != maxVersion {
		t.Fatalf("negotiated v%d, offered up to v%d", v, maxVersion)
	}
	h := &handClient{c: c, bw: bufio.NewWriter(c), fr: newFrameReader(c, 0), v: v}
	h.fr.version = v
	h.mustWrite(t, &Hello{TransferID: id, Ticket: ticket})
	if err := h.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	f, err := h.fr.next()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.(*HelloOK); !ok {
		t.Fatalf("got %#v", f)
	}
	return h
}

// expectError reads until an Error frame (or the connection ends).
func (h *handClient) expectError(t *testing.T, substr string) {
	t.Helper()
	for {
		f, err := h.fr.next()
		if err != nil {
			t.Fatalf("connection ended without an Error frame: %v", err)
		}
		if e, ok := f.(*ErrorFrame); ok {
			if !strings.Contains(e.Reason, substr) {
				t.Fatalf("reason %q, want %q", e.Reason, substr)
			}
			return
		}
	}
}

func dataChunk(seq, off uint64, data []byte) *Chunk {
	return &Chunk{Seq: seq, Offset: off, Length: uint64(len(data)), Kind: KindData,
		Digest: ChunkDigest(off, uint64(len(data)), KindData, data), Payload: data}
}

func TestRefusesHostileChunks(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	const size = 256 << 10
	payload := make([]byte, 4096)
	fillRandom(newRand(5), payload)
	cases := []struct {
		name  string
		frame func() *Chunk
		want  error
	}{
		{"beyond the image end", func() *Chunk { return dataChunk(0, size-100, payload) }, ErrInvalidChunk},
		{"far beyond the image end", func() *Chunk { return dataChunk(0, 1<<40, payload) }, ErrInvalidChunk},
		{"offset+length overflows", func() *Chunk {
			c := dataChunk(0, ^uint64(0)-10, payload)
			return c
		}, ErrInvalidChunk},
		{"zero length", func() *Chunk { return dataChunk(0, 0, nil) }, ErrInvalidChunk},
		{"bad digest", func() *Chunk {
			c := dataChunk(0, 0, payload)
			c.Digest[0] ^= 1
			return c
		}, ErrDigestMismatch},
		{"payload shorter than length", func() *Chunk {
			c := dataChunk(0, 0, payload)
			c.Length++
			return c
		}, ErrInvalidChunk},
		{"zero chunk with payload", func() *Chunk {
			c := dataChunk(0, 0, payload)
			c.Kind = KindZero
			return c
		}, ErrInvalidChunk},
		{"bad zstd", func() *Chunk {
			c := dataChunk(0, 0, payload)
			c.Compressed = true
			c.Payload = payload[:100]
			return c
		}, ErrInvalidChunk},
		{"seq far ahead", func() *Chunk { return dataChunk(1<<40, 0, payload) }, ErrInvalidChunk},
	}
	versions(t, func(t *testing.T, v int) {
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				id := fmt.Sprintf("hostile-v%d-%c", v, 'a'+i)
				prep, dst := hostileSetup(t, ts, id, size)
				h := dialHand(t, ts, pki, v, id, prep.Ticket)
				h.mustWrite(t, tc.frame())
				_ = h.bw.Flush()
				h.expectError(t, tc.want.Error())
				if err := waitSession(t, prep); !errors.Is(err, tc.want) {
					t.Fatalf("session ended with %v, want %v", err, tc.want)
				}
				assertNoWrites(t, dst)
				ts.log.waitFor(t, `msg="session failed" transfer_id=`+id+" image=volumes/"+id+" stream=0 reason=", time.Second)
			})
		}
	})
}

func TestRefusesOversizedFrameWithoutAllocating(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	versions(t, func(t *testing.T, v int) { refuseOversized(t, ts, pki, v) })
}

func refuseOversized(t *testing.T, ts *testServer, pki *testPKI, v int) {
	id := fmt.Sprintf("oversized-v%d", v)
	prep, dst := hostileSetup(t, ts, id, 1<<20)
	h := dialHand(t, ts, pki, v, id, prep.Ticket)
	var hdr []byte
	hdr = appendHeaderV(hdr, h.v, FrameChunk, 0)
	binary.BigEndian.PutUint32(hdr[8:], 0xFFFFFFFF)
	_, _ = h.c.Write(hdr)
	h.expectError(t, ErrFrameTooLarge.Error())
	if err := waitSession(t, prep); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("session: %v", err)
	}
	assertNoWrites(t, dst)
}

func TestTruncatedStreamEndsSession(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, func(c *ServerConfig) {
		c.TicketTTL = 300 * time.Millisecond
		c.IdleTimeout = 300 * time.Millisecond
	})
	versions(t, func(t *testing.T, v int) { truncated(t, ts, pki, v) })
}

func truncated(t *testing.T, ts *testServer, pki *testPKI, v int) {
	payload := make([]byte, 8192)
	fillRandom(newRand(6), payload)
	frame := AppendFrameV(nil, uint8(v), dataChunk(0, 0, payload))
	sfx := fmt.Sprintf("-v%d", v)

	t.Run("closed mid-frame", func(t *testing.T) {
		prep, dst := hostileSetup(t, ts, "trunc-closed"+sfx, 1<<20)
		h := dialHand(t, ts, pki, v, "trunc-closed"+sfx, prep.Ticket)
		_, _ = h.c.Write(frame[:len(frame)/2])
		h.c.Close()
		if err := waitSession(t, prep); !errors.Is(err, ErrTicketExpired) {
			t.Fatalf("session: %v", err)
		}
		assertNoWrites(t, dst)
		ts.log.waitFor(t, "truncated", time.Second)
	})
	t.Run("stalled mid-frame", func(t *testing.T) {
		prep, dst := hostileSetup(t, ts, "trunc-stalled"+sfx, 1<<20)
		h := dialHand(t, ts, pki, v, "trunc-stalled"+sfx, prep.Ticket)
		_, _ = h.c.Write(frame[:len(frame)/2]) // and never the rest
		if err := waitSession(t, prep); !errors.Is(err, ErrTicketExpired) {
			t.Fatalf("session: %v", err)
		}
		assertNoWrites(t, dst)
		ts.log.waitFor(t, "i/o timeout", time.Second)
	})
	t.Run("done before all chunks", func(t *testing.T) {
		prep, dst := hostileSetup(t, ts, "trunc-done"+sfx, 1<<20)
		h := dialHand(t, ts, pki, v, "trunc-done"+sfx, prep.Ticket)
		h.mustWrite(t, &Done{TotalChunks: 3})
		_ = h.bw.Flush()
		h.expectError(t, ErrIncomplete.Error())
		if err := waitSession(t, prep); !errors.Is(err, ErrIncomplete) {
			t.Fatalf("session: %v", err)
		}
		assertNoWrites(t, dst)
	})
	t.Run("wrong transfer digest", func(t *testing.T) {
		prep, _ := hostileSetup(t, ts, "trunc-digest"+sfx, 1<<20)
		h := dialHand(t, ts, pki, v, "trunc-digest"+sfx, prep.Ticket)
		h.mustWrite(t, dataChunk(0, 0, payload))
		h.mustWrite(t, &Done{TotalChunks: 1, Digest: [32]byte{9}})
		_ = h.bw.Flush()
		h.expectError(t, ErrDigestMismatch.Error())
		if err := waitSession(t, prep); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("session: %v", err)
		}
	})
}

func TestServerRefusesGarbageBeforeHello(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, func(c *ServerConfig) { c.HandshakeTimeout = 300 * time.Millisecond })
	c := rawConn(t, ts.addr, pki.client)
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if f, err := ReadFrame(c, 0); err == nil {
		if e, ok := f.(*ErrorFrame); !ok || !strings.Contains(e.Reason, "bad magic") {
			t.Fatalf("got %#v", f)
		}
	}
	// A client that never says Hello is cut off.
	c2 := rawConn(t, ts.addr, pki.client)
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := ReadFrame(c2, 0); err == nil || isTimeout(err) {
		t.Fatalf("silent client not disconnected: %v", err)
	}
	ts.log.waitFor(t, "no hello within the handshake timeout", time.Second)
}

func TestNewServerRequiresMutualTLS(t *testing.T) {
	pki := newTestPKI(t)
	weak := pki.server.Clone()
	weak.ClientAuth = tls.RequestClientCert
	if _, err := NewServer(ServerConfig{TLSConfig: weak}); err == nil {
		t.Fatal("server without client verification accepted")
	}
	old := pki.server.Clone()
	old.MinVersion = tls.VersionTLS12
	if _, err := NewServer(ServerConfig{TLSConfig: old}); err == nil {
		t.Fatal("TLS 1.2 server accepted")
	}
	if _, err := NewServer(ServerConfig{}); err == nil {
		t.Fatal("server without TLS accepted")
	}
	if pki.client.MinVersion != tls.VersionTLS13 || pki.client.ServerName != testServerName {
		t.Fatalf("client config: %+v", pki.client)
	}
}

// failingImage fails writes after a number of them.
type failingImage struct {
	*memImage
	left int
}

func (f *failingImage) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.left--
	fail := f.left < 0
	f.mu.Unlock()
	if fail {
		return 0, errors.New("rbd: EIO")
	}
	return f.memImage.WriteAt(p, off)
}

type failingStore struct{ MemCheckpointStore }

func (*failingStore) SaveCheckpoint(context.Context, Checkpoint) error {
	return errors.New("image meta: EROFS")
}

// Destination-side failures end the transfer in error on both sides.
func TestDestinationFailuresEndTransfer(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	src, extents := denseImage(41, 4<<20)
	for _, tc := range []struct {
		name  string
		image DestImage
		store CheckpointStore
		want  string
	}{
		{"write error", &failingImage{memImage: newMemImage(len(src)), left: 5}, &MemCheckpointStore{}, "EIO"},
		{"checkpoint error", newMemImage(len(src)), &failingStore{}, "EROFS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "fail-" + strings.ReplaceAll(tc.name, " ", "-")
			prep, err := ts.srv.PrepareSession(context.Background(), PrepareRequest{
				TransferID: id, ImageName: "v/" + id, Image: tc.image, Checkpoints: tc.store, ChunkSize: 64 << 10,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			logger, _ := newTestLogger(t)
			_, err = Send(ctx, SendRequest{
				Addr: ts.addr, TLSConfig: pki.client, TransferID: id, Ticket: prep.Ticket,
				Source: &memSource{data: src}, Extents: extents, ChunkSize: 64 << 10,
				BandwidthLimit: 8 << 20, // long enough for a checkpoint to be due
				Retry:          fastRetry(), Logger: logger,
			})
			if err == nil {
				t.Fatal("send succeeded")
			}
			if serr := waitSession(t, prep); serr == nil || !strings.Contains(serr.Error(), tc.want) {
				t.Fatalf("session: %v", serr)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("the source was not told why: %v", err)
			}
		})
	}
}

// A source that would skip chunks the destination does not hold is
// stopped at the first connection.
func TestStaleResumePointRefused(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, nil)
	src, extents := denseImage(42, 1<<20)
	prep, _ := hostileSetup(t, ts, "stale", len(src))
	f, _ := newDigestFolder(0, 0, nil, 8)
	f.add(0, 1, [32]byte{})
	w, b, st, _, _ := f.snapshot()
	logger, _ := newTestLogger(t)
	_, err := Send(context.Background(), SendRequest{
		Addr: ts.addr, TLSConfig: pki.client, TransferID: "stale", Ticket: prep.Ticket,
		Source: &memSource{data: src}, Extents: extents, ChunkSize: 64 << 10, Retry: fastRetry(), Logger: logger,
		ResumeFrom: &Checkpoint{TransferID: "stale", ChunkSize: 64 << 10, Watermark: w, BytesDone: b, DigestState: st},
	})
	if !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("err = %v", err)
	}
}

// Identities: the destination serves a session only to an agent
// certificate of the transfer's source region; the source talks only to an
// agent certificate of the destination region. Nothing is written
// otherwise.
func TestPeerIdentities(t *testing.T) {
	pki := newTestPKI(t) // client: RegionOne agent, server: RegionTwo agent
	ts := startServer(t, pki, nil)
	src, _ := denseImage(7, 128<<10)
	prepare := func(id, peer string) (PrepareResponse, *memImage) {
		t.Helper()
		dst := newMemImage(len(src))
		prep, err := ts.srv.PrepareSession(context.Background(), PrepareRequest{TransferID: id, PeerRegion: peer,
			ImageName: "volumes/" + id, Image: dst, Checkpoints: &MemCheckpointStore{}, ChunkSize: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		return prep, dst
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	prep, dst := prepare("id-wrong-source", "RegionThree")
	if _, err := sendTo(ctx, t, ts, pki.client, "id-wrong-source", prep.Ticket, src); err == nil {
		t.Error("a RegionOne agent was served a session of RegionThree's")
	}
	assertNoWrites(t, dst)

	prep, dst = prepare("id-wrong-dest", "RegionOne")
	if _, err := sendTo(ctx, t, ts, RequirePeer(pki.client, "RegionThree", "agent"), "id-wrong-dest", prep.Ticket, src); err == nil {
		t.Error("the source sent to an agent of another region than the destination's")
	}
	assertNoWrites(t, dst)

	prep, _ = prepare("id-right", "RegionOne")
	if _, err := sendTo(ctx, t, ts, RequirePeer(pki.client, "RegionTwo", "agent"), "id-right", prep.Ticket, src); err != nil {
		t.Errorf("matching identities: %v", err)
	}
}

// Caps: a prepare beyond MaxSessions is refused (the prepare of an open
// session's transfer still replaces it); a connection beyond
// MaxConnections is closed before its handshake, and the ones within are
// served.
func TestServerCaps(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, pki, func(c *ServerConfig) { c.MaxSessions = 2; c.MaxConnections = 2 })
	for _, id := range []string{"cap-a", "cap-b"} {
		hostileSetup(t, ts, id, 64<<10)
	}
	_, err := ts.srv.PrepareSession(context.Background(), PrepareRequest{
		TransferID: "cap-c", ImageName: "volumes/cap-c", Image: newMemImage(64 << 10), Checkpoints: &MemCheckpointStore{}, ChunkSize: 64 << 10,
	})
	if !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("third session: %v, want ErrTooManySessions", err)
	}
	hostileSetup(t, ts, "cap-a", 64<<10) // a new prepare of an open one

	// Two idle TLS connections hold both slots; a third is closed.
	var held []*tls.Conn
	for range 2 {
		c, err := tls.Dial("tcp", ts.addr, pki.client)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond)
	c, err := tls.Dial("tcp", ts.addr, pki.client)
	if err == nil {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Error("a connection beyond MaxConnections was served")
	}
	ts.log.waitFor(t, "connections already served", 2*time.Second)
	for _, c := range held {
		c.Close()
	}
}
