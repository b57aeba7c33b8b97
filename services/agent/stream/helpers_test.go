package stream

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testServerName = "dest.ferry.test"

// testPKI is a throwaway deployment CA with a destination and a source
// certificate, plus a source certificate from another CA.
type testPKI struct {
	dir                         string
	server, client, otherClient *tls.Config
	noCertClient                *tls.Config
	caFile, srvCert, srvKey     string
	cliCert, cliKey             string
	otherCert, otherKey         string
	otherCAFile                 string
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) issue(t testing.TB, cn string, serial int64, server bool, uris ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{cn}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca := newTestCA(t, "ferry test CA")
	other := newTestCA(t, "another CA")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := &testPKI{dir: dir}
	p.caFile = write("ca.pem", ca.pem)
	p.otherCAFile = write("other-ca.pem", other.pem)
	sc, sk := ca.issue(t, testServerName, 2, true, "urn:ferry:region:RegionTwo", "urn:ferry:role:agent")
	p.srvCert, p.srvKey = write("server.pem", sc), write("server-key.pem", sk)
	cc, ck := ca.issue(t, "ferry-agent RegionOne", 3, false, "urn:ferry:region:RegionOne", "urn:ferry:role:agent")
	p.cliCert, p.cliKey = write("client.pem", cc), write("client-key.pem", ck)
	oc, ok := other.issue(t, "intruder", 4, false)
	p.otherCert, p.otherKey = write("other.pem", oc), write("other-key.pem", ok)

	var err error
	if p.server, err = ServerTLSConfig(p.caFile, p.srvCert, p.srvKey); err != nil {
		t.Fatal(err)
	}
	if p.client, err = ClientTLSConfig(p.caFile, p.cliCert, p.cliKey, testServerName); err != nil {
		t.Fatal(err)
	}
	// The intruder trusts our CA for the server but holds a foreign cert.
	if p.otherClient, err = ClientTLSConfig(p.caFile, p.otherCert, p.otherKey, testServerName); err != nil {
		t.Fatal(err)
	}
	p.noCertClient = p.client.Clone()
	p.noCertClient.Certificates = nil
	return p
}

// memImage is an in-memory DestImage that records what is written.
type memImage struct {
	mu      sync.Mutex
	data    []byte
	writes  int
	zeroes  int
	flushes int
	written uint64
	onWrite func(off, n uint64)
}

func newMemImage(size int) *memImage { return &memImage{data: make([]byte, size)} }

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		m.mu.Unlock()
		panic("memImage: write beyond the image") // the server must never do this
	}
	copy(m.data[off:], p)
	m.writes++
	m.written += uint64(len(p))
	hook := m.onWrite
	m.mu.Unlock()
	if hook != nil {
		hook(uint64(off), uint64(len(p)))
	}
	return len(p), nil
}

func (m *memImage) WriteZeroes(off, length uint64) error {
	m.mu.Lock()
	if off+length > uint64(len(m.data)) || off+length < off {
		m.mu.Unlock()
		panic("memImage: zeroes beyond the image")
	}
	clear(m.data[off : off+length])
	m.zeroes++
	m.written += length
	hook := m.onWrite
	m.mu.Unlock()
	if hook != nil {
		hook(off, length)
	}
	return nil
}

func (m *memImage) Flush() error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}

func (m *memImage) Size() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return uint64(len(m.data))
}

func (m *memImage) setHook(f func(off, n uint64)) {
	m.mu.Lock()
	m.onWrite = f
	m.mu.Unlock()
}

func (m *memImage) counts() (writes, zeroes int, written uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writes, m.zeroes, m.written
}

func (m *memImage) snapshot() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.data)
}

// memSource is an in-memory SourceImage.
type memSource struct{ data []byte }

func (s *memSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(s.data)) {
		return 0, io.EOF
	}
	n := copy(p, s.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s *memSource) Size() uint64 { return uint64(len(s.data)) }

// freezableStore drops saves once frozen, like an agent killed with -9.
type freezableStore struct {
	MemCheckpointStore
	frozen atomic.Bool
}

func (f *freezableStore) SaveCheckpoint(ctx context.Context, cp Checkpoint) error {
	if f.frozen.Load() {
		return nil
	}
	return f.MemCheckpointStore.SaveCheckpoint(ctx, cp)
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) waitFor(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(b.String(), substr) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("log never contained %q; log:\n%s", substr, b.String())
}

func newTestLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	lb := &logBuffer{}
	var w io.Writer = lb
	if testing.Verbose() {
		w = io.MultiWriter(lb, testWriter{t})
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testServer runs a Server on a loopback listener.
type testServer struct {
	srv    *Server
	addr   string
	log    *logBuffer
	cancel context.CancelFunc
	done   chan struct{}
}

func fastServerConfig(pki *testPKI, logger *slog.Logger) ServerConfig {
	return ServerConfig{
		TLSConfig:          pki.server,
		Logger:             logger,
		TicketTTL:          5 * time.Second,
		HandshakeTimeout:   2 * time.Second,
		IdleTimeout:        3 * time.Second,
		CheckpointInterval: 50 * time.Millisecond,
		CheckpointBytes:    2 << 20,
	}
}

func startServer(t testing.TB, pki *testPKI, mutate func(*ServerConfig)) *testServer {
	t.Helper()
	logger, lb := newTestLogger(t)
	cfg := fastServerConfig(pki, logger)
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: srv, addr: ln.Addr().String(), log: lb, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ts.done)
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(ts.stop)
	return ts
}

// stop kills the listener and connections (sessions survive, as after a
// crash they would be gone but nothing else notices), then closes sessions.
func (ts *testServer) kill() {
	ts.cancel()
	<-ts.done
}

func (ts *testServer) stop() {
	ts.kill()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = ts.srv.Close(ctx)
}

// testImage builds a source image and its extents: random data, zero runs
// inside data extents, explicit zero extents and (if holes) unlisted holes.
func testImage(seed uint64, size int, chunk uint64, holes bool) ([]byte, []Extent) {
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	data := make([]byte, size)
	var extents []Extent
	for off := 0; off < size; {
		n := min(size-off, 1+rng.IntN(int(min(3*chunk, uint64(max(size/16, 1))))))
		switch k := rng.IntN(10); {
		case k < 5: // data
			fillRandom(rng, data[off:off+n])
			extents = append(extents, Extent{Offset: uint64(off), Length: uint64(n)})
		case k < 7: // a zero run the source must discover
			extents = append(extents, Extent{Offset: uint64(off), Length: uint64(n)})
		case k < 9 || !holes: // a range known to be zero
			extents = append(extents, Extent{Offset: uint64(off), Length: uint64(n), Zero: true})
		default: // a hole: not in the diff at all
		}
		off += n
	}
	return data, extents
}

func fillRandom(rng *mrand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64() | 1 // never an all-zero word
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32()) | 1
	}
}

// expectedDigest computes the transfer digest independently of Send.
func expectedDigest(t testing.TB, data []byte, extents []Extent, cs uint64) string {
	t.Helper()
	h := sha256.New()
	for spec, err := range PlanChunks(ExtentsOf(extents), uint64(len(data)), cs) {
		if err != nil {
			t.Fatal(err)
		}
		kind, d := KindZero, []byte(nil)
		if !spec.Zero {
			d = data[spec.Offset : spec.Offset+spec.Length]
			if !bytes.Equal(d, make([]byte, len(d))) {
				kind = KindData
			}
		}
		cd := ChunkDigest(spec.Offset, spec.Length, kind, d)
		h.Write(cd[:])
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return FormatDigest(sum)
}

func fastRetry() RetryPolicy {
	return RetryPolicy{MaxAttempts: 6, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
}

// rawConn opens a TLS connection and optionally sends a Hello, for tests
// that speak the protocol by hand.
func rawConn(t testing.TB, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

func newRand(seed uint64) *mrand.Rand { return mrand.New(mrand.NewPCG(seed, ^seed)) }
