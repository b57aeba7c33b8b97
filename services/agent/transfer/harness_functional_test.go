//go:build functional

package transfer

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/stream"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// harness is one source agent (RegionOne) and one destination agent
// (RegionTwo) in this process, each with its own cluster connection, the
// destination serving a real TLS data port on loopback.
type harness struct {
	t          *testing.T
	pool       string
	src, dst   *rbd.Cluster
	srcConf    string
	dstConf    string
	dest       *Dest
	source     *Source
	clientTLS  func(string) (*tls.Config, error)
	serverAddr string
	// Each region's state key.
	srcSealer, dstSealer *Sealer
	// dir holds the test CA and the agents' certificates.
	dir string
}

func testSealer(t *testing.T) *Sealer {
	t.Helper()
	key := make([]byte, StateKeySize)
	rand.Read(key)
	s, err := NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// snapRef is the source snapshot name of image with its id.
func snapRef(t *testing.T, img *rbd.Image, name string) SnapRef {
	t.Helper()
	id, err := snapshotID(img, name)
	if err != nil {
		t.Fatal(err)
	}
	return SnapRef{Name: name, ID: id}
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := &harness{t: t, pool: testenv.Get(t, "CEPH_POOL"),
		srcConf: testenv.Get(t, "CEPH_REGIONONE_CONF"), dstConf: testenv.Get(t, "CEPH_REGIONTWO_CONF")}
	h.src = connect(t, "REGIONONE")
	h.dst = connect(t, "REGIONTWO")

	dir := t.TempDir()
	h.dir = dir
	if _, _, err := pki.InitCA(dir, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"agent-one", "agent-two"} {
		if _, _, err := pki.Issue(dir, dir, name, pki.IssueOptions{DNSNames: []string{name, "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
			t.Fatal(err)
		}
	}
	ca := filepath.Join(dir, "ca.crt")
	serverTLS, err := stream.ServerTLSConfig(ca, filepath.Join(dir, "agent-two.crt"), filepath.Join(dir, "agent-two.key"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	server, err := stream.NewServer(stream.ServerConfig{TLSConfig: serverTLS, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go server.Serve(ctx, ln)
	t.Cleanup(func() { server.Close(context.Background()) })
	h.serverAddr = ln.Addr().String()
	h.dstSealer, h.srcSealer = testSealer(t), testSealer(t)
	h.dest = NewDest(DestConfig{Connect: Fixed(h.dst), Server: server, Pools: []string{h.pool},
		Endpoint: h.serverAddr, ServerName: "agent-two", Sealer: h.dstSealer, Log: log})
	t.Cleanup(h.dest.Close)
	h.clientTLS = func(name string) (*tls.Config, error) {
		return stream.ClientTLSConfig(ca, filepath.Join(dir, "agent-one.crt"), filepath.Join(dir, "agent-one.key"), name)
	}
	if opts.Streams == 0 {
		opts.Streams = 4
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = 1 << 20
	}
	opts.ClientTLS = h.clientTLS
	opts.Sealer = h.srcSealer
	h.source = NewSource(Fixed(h.src), []string{h.pool}, opts, log)
	return h
}

// cutter interrupts runs: a harness made with newCutHarness reports its
// progress here, and cut runs a job until at bytes were copied, then
// cancels it (as an agent stopping would).
type cutter struct {
	at     atomic.Uint64
	cancel atomic.Pointer[context.CancelFunc]
	done   atomic.Uint64
}

func (c *cutter) progress(p stream.Progress) {
	c.done.Store(p.BytesDone)
	if f := c.cancel.Load(); f != nil && p.BytesDone >= c.at.Load() {
		(*f)()
	}
}

// newCutHarness is a harness limited to limit bytes/s (so that a cut
// lands mid-copy) whose runs can be cut.
func newCutHarness(t *testing.T, limit int64) (*harness, *cutter) {
	c := &cutter{}
	return newHarness(t, Options{BandwidthLimit: limit, Progress: c.progress}), c
}

// cut runs job and cancels it once at bytes were copied; it fails the test
// if the run succeeds, and returns the bytes copied when it was cut.
func (h *harness) cut(c *cutter, job Job, at uint64) uint64 {
	h.t.Helper()
	ctx, cancel := context.WithCancel(ctxT(h.t))
	defer cancel()
	c.at.Store(at)
	c.cancel.Store(&cancel)
	_, err := h.source.Run(ctx, job, h.dest)
	c.cancel.Store(nil)
	if err == nil {
		h.t.Fatal("the interrupted run succeeded")
	}
	return c.done.Load()
}

func connect(t *testing.T, region string) *rbd.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := rbd.Connect(ctx, rbd.Options{
		ConfFile: testenv.Get(t, "CEPH_"+region+"_CONF"),
		User:     testenv.Get(t, "CEPH_USER"),
		Keyring:  testenv.Get(t, "CEPH_"+region+"_KEYRING"),
		Timeout:  15 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// newImage creates a source image that is removed (with its snapshots, in
// both clusters) at the end of the test.
func (h *harness) newImage(name string, size uint64) *rbd.Image {
	h.t.Helper()
	ctx := context.Background()
	if err := h.src.CreateImage(ctx, h.pool, name, rbd.ImageSpec{Size: size, Order: 22}); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() {
		for _, conf := range []string{h.srcConf, h.dstConf} {
			exec.Command("rbd", "-c", conf, "snap", "purge", h.pool+"/"+name).Run()
			exec.Command("rbd", "-c", conf, "rm", h.pool+"/"+name).Run()
		}
	})
	img, err := h.src.OpenImage(ctx, h.pool, name, "", false)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { img.Close() })
	return img
}

func writeRandom(t *testing.T, img *rbd.Image, off, length int64) {
	t.Helper()
	buf := make([]byte, length)
	rand.Read(buf)
	if _, err := img.WriteAt(buf, off); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
}

// sameImage fails unless source and destination snapshots are identical.
func (h *harness) sameImage(name, snap string) {
	h.t.Helper()
	a := testenv.ExportSHA(h.t, h.srcConf, h.pool+"/"+name+"@"+snap)
	b := testenv.ExportSHA(h.t, h.dstConf, h.pool+"/"+name+"@"+snap)
	if a != b {
		h.t.Fatalf("%s@%s differs: source sha256 %s, destination %s", name, snap, a, b)
	}
}

func snapshotsOf(t *testing.T, c *rbd.Cluster, pool, name string) []string {
	t.Helper()
	img, err := c.OpenImage(context.Background(), pool, name, "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	snaps, err := img.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(snaps))
	for _, s := range snaps {
		names = append(names, s.Name)
	}
	return names
}

func metadataOf(t *testing.T, c *rbd.Cluster, pool, name string) map[string]string {
	t.Helper()
	img, err := c.OpenImage(context.Background(), pool, name, "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	md, err := img.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func uniq(prefix string) string { return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()) }
