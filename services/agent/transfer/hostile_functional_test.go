//go:build functional

package transfer

import (
	"bufio"
	"crypto/tls"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/agent/stream"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// Hostile input against a real destination session on a real cluster: a
// chunk beyond the image's end, a bad digest, and a wrong ticket are
// refused before any write, and the destination image is unchanged.
func TestHostileChunksNeverReachTheImage(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	name := uniq("xfer-hostile")
	img := h.newImage(name, 8<<20)
	writeRandom(t, img, 0, 8<<20)
	// A completed transfer: the destination image exists with data.
	r, err := h.source.Run(ctx, Job{TransferID: "h1-" + name, Pool: h.pool, Image: name}, h.dest)
	if err != nil {
		t.Fatal(err)
	}
	before := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name)
	info, err := img.Info()
	if err != nil {
		t.Fatal(err)
	}

	prepareOn := func(id, image, mode string) PrepareResponse {
		t.Helper()
		resp, err := h.dest.Prepare(ctx, PrepareRequest{
			TransferID: id, Mode: mode, Pool: h.pool, Image: image,
			SourceFSID: h.src.FSID(), SourceImageID: info.ID, SourceName: h.pool + "/" + name,
			Size: info.Size, Order: info.Order, Features: info.Features,
			Snapshot: "ferry-" + id, SourceSnapID: 1 << 40, Bases: []SnapRef{snapRef(t, img, r.Snapshot)}, ChunkSize: 1 << 20,
		})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	prepare := func(id string) PrepareResponse { return prepareOn(id, name, ModeIncremental) }
	// send opens a verified connection, says hello and sends one chunk;
	// it returns the first frame the destination answers with.
	send := func(id, ticket string, c *stream.Chunk) stream.Frame {
		t.Helper()
		cfg, err := h.clientTLS("agent-two")
		if err != nil {
			t.Fatal(err)
		}
		conn, err := tls.Dial("tcp", h.serverAddr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(conn)
		if err := stream.WriteFrame(conn, &stream.Hello{TransferID: id, Ticket: ticket}); err != nil {
			t.Fatal(err)
		}
		f, err := stream.ReadFrame(br, 1<<21)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := f.(*stream.HelloOK); !ok {
			return f
		}
		if err := stream.WriteFrame(conn, c); err != nil {
			t.Fatal(err)
		}
		f, err = stream.ReadFrame(br, 1<<21)
		if err != nil {
			return &stream.ErrorFrame{Reason: err.Error()}
		}
		return f
	}
	data := make([]byte, 4096)
	for i := range data {
		data[i] = 0xee
	}
	cases := []struct {
		name  string
		chunk func() *stream.Chunk
	}{
		{"beyond the end", func() *stream.Chunk {
			off := info.Size // one block past the end
			return &stream.Chunk{Seq: 0, Offset: off, Length: 4096, Kind: stream.KindData,
				Digest: stream.ChunkDigest(off, 4096, stream.KindData, data), Payload: data}
		}},
		{"bad digest", func() *stream.Chunk {
			return &stream.Chunk{Seq: 0, Offset: 0, Length: 4096, Kind: stream.KindData,
				Digest: stream.ChunkDigest(0, 4096, stream.KindData, make([]byte, 4096)), Payload: data}
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := "hx" + string(rune('a'+i)) + "-" + name
			resp := prepare(id)
			f := send(id, resp.Ticket, tc.chunk())
			if _, ok := f.(*stream.ErrorFrame); !ok {
				t.Errorf("answer %T %+v, want an error", f, f)
			}
			// The session ended in error: finishing it fails.
			if _, err := h.dest.Finish(ctx, FinishRequest{TransferID: id, Pool: h.pool, Image: name, Digest: "sha256:00"}); err == nil {
				t.Error("a session that received a hostile chunk finished")
			}
		})
	}
	t.Run("wrong ticket", func(t *testing.T) {
		id := "hw-" + name
		prepare(id)
		// Another transfer's ticket, on another image (a second session on
		// the same image is refused by the fencing lock).
		other := prepareOn("hw2-"+name, name+"-other", ModeFull)
		t.Cleanup(func() {
			exec.Command("rbd", "-c", h.dstConf, "snap", "purge", h.pool+"/"+name+"-other").Run()
			exec.Command("rbd", "-c", h.dstConf, "rm", h.pool+"/"+name+"-other").Run()
		})
		f := send(id, other.Ticket, &stream.Chunk{Offset: 0, Length: 4096, Kind: stream.KindData,
			Digest: stream.ChunkDigest(0, 4096, stream.KindData, data), Payload: data})
		if _, ok := f.(*stream.ErrorFrame); !ok {
			t.Errorf("answer %T, want an error", f)
		}
		h.dest.Abort(ctx, AbortRequest{TransferID: "hw2-" + name, Reason: "test over"})
		h.dest.Abort(ctx, AbortRequest{TransferID: id, Reason: "test over"})
	})
	// Refused without a client certificate from the deployment's CA.
	t.Run("no client certificate", func(t *testing.T) {
		conn, err := tls.Dial("tcp", h.serverAddr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // the test is the attacker
		if err == nil {
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			err = stream.WriteFrame(conn, &stream.Hello{TransferID: "x", Ticket: "y"})
			if err == nil {
				_, err = stream.ReadFrame(bufio.NewReader(conn), 1024)
			}
			conn.Close()
		}
		if err == nil {
			t.Error("a client without a certificate was served")
		}
	})
	if after := testenv.ExportSHA(t, h.dstConf, h.pool+"/"+name); after != before {
		t.Error("hostile input changed the destination image")
	}
}

// Fencing: while one session writes a destination image, another prepare
// of that image (another agent after a partition, or another transfer) is
// refused by the RBD exclusive lock; once the first ends, it proceeds.
func TestOneWriterAtATime(t *testing.T) {
	h := newHarness(t, Options{})
	ctx := ctxT(t)
	name := uniq("xfer-fence")
	img := h.newImage(name, 4<<20)
	writeRandom(t, img, 0, 4096)
	info, err := img.Info()
	if err != nil {
		t.Fatal(err)
	}
	req := func(id string) PrepareRequest {
		return PrepareRequest{TransferID: id, Mode: ModeFull, Pool: h.pool, Image: name,
			SourceFSID: h.src.FSID(), SourceImageID: info.ID, SourceName: h.pool + "/" + name,
			Size: info.Size, Order: info.Order, Features: info.Features, Snapshot: "ferry-" + id, SourceSnapID: 1 << 40, ChunkSize: 1 << 20}
	}
	if _, err := h.dest.Prepare(ctx, req("f1-"+name)); err != nil {
		t.Fatal(err)
	}
	// A second destination agent of the region, with its own connection.
	other := NewDest(DestConfig{Connect: Fixed(connect(t, "REGIONTWO")), Pools: []string{h.pool}, Endpoint: "x:1", ServerName: "x", Sealer: h.dstSealer, Log: h.dest.log})
	if _, err := other.Prepare(ctx, req("f2-"+name)); err == nil || !strings.Contains(err.Error(), "fencing") {
		t.Fatalf("second writer: %v, want a fencing error", err)
	}
	if err := h.dest.Abort(ctx, AbortRequest{TransferID: "f1-" + name, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.dest.Prepare(ctx, req("f3-"+name)); err != nil {
		t.Fatalf("after the first writer ended: %v", err)
	}
	h.dest.Abort(ctx, AbortRequest{TransferID: "f3-" + name, Reason: "test"})
}
