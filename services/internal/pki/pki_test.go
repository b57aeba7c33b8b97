package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newCA creates a CA in a fresh temporary directory.
func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if _, _, err := InitCA(dir, CAOptions{}); err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	return dir
}

func parseCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no CERTIFICATE block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestInitCA(t *testing.T) {
	tests := []struct {
		name     string
		opts     CAOptions
		wantCN   string
		validity time.Duration
	}{
		{"defaults", CAOptions{}, DefaultCACommonName, DefaultCAValidity},
		{"custom", CAOptions{CommonName: "Test CA", Validity: 48 * time.Hour}, "Test CA", 48 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			start := time.Now()
			certPath, keyPath, err := InitCA(dir, tt.opts)
			if err != nil {
				t.Fatalf("InitCA: %v", err)
			}
			if certPath != filepath.Join(dir, "ca.crt") || keyPath != filepath.Join(dir, "ca.key") {
				t.Errorf("paths = %s, %s", certPath, keyPath)
			}
			if m := mode(t, dir); m != 0o700 {
				t.Errorf("directory mode = %v, want 0700", m)
			}
			if m := mode(t, keyPath); m != 0o600 {
				t.Errorf("key mode = %v, want 0600", m)
			}
			keyPEM, _ := os.ReadFile(keyPath)
			if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
				t.Errorf("key is not a PKCS#8 PEM block")
			}
			ca := parseCertFile(t, certPath)
			if !ca.IsCA || !ca.BasicConstraintsValid || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
				t.Errorf("basic constraints: IsCA=%v MaxPathLen=%d zero=%v", ca.IsCA, ca.MaxPathLen, ca.MaxPathLenZero)
			}
			if ca.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
				t.Errorf("key usage = %v", ca.KeyUsage)
			}
			if ca.PublicKeyAlgorithm != x509.ECDSA {
				t.Errorf("public key algorithm = %v", ca.PublicKeyAlgorithm)
			}
			if ca.Subject.CommonName != tt.wantCN {
				t.Errorf("CommonName = %q, want %q", ca.Subject.CommonName, tt.wantCN)
			}
			if len(ca.SubjectKeyId) == 0 {
				t.Error("no SubjectKeyId")
			}
			if ca.SerialNumber.Sign() <= 0 || ca.SerialNumber.BitLen() > 128 {
				t.Errorf("serial = %v", ca.SerialNumber)
			}
			if d := ca.NotAfter.Sub(start.Add(tt.validity)); d < -time.Minute || d > time.Minute {
				t.Errorf("NotAfter = %v, want about %v", ca.NotAfter, start.Add(tt.validity))
			}
			if err := ca.CheckSignatureFrom(ca); err != nil {
				t.Errorf("not self-signed: %v", err)
			}
		})
	}
}

func TestInitCARefusesOverwrite(t *testing.T) {
	dir := newCA(t)
	before, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	_, _, err := InitCA(dir, CAOptions{})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), filepath.Join(dir, CACertFile)) {
		t.Fatalf("second InitCA error = %v, want ErrExists naming ca.crt", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	if !bytes.Equal(before, after) {
		t.Fatal("CA certificate changed without Force")
	}

	// Only the key left over also blocks.
	os.Remove(filepath.Join(dir, CACertFile))
	if _, _, err := InitCA(dir, CAOptions{}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), CAKeyFile) {
		t.Fatalf("InitCA with a leftover key: %v, want ErrExists naming ca.key", err)
	}

	// Force replaces, and the key stays 0600 even if it had been loosened.
	os.Chmod(filepath.Join(dir, CAKeyFile), 0o644)
	if _, keyPath, err := InitCA(dir, CAOptions{Force: true}); err != nil {
		t.Fatalf("InitCA with Force: %v", err)
	} else if m := mode(t, keyPath); m != 0o600 {
		t.Errorf("key mode after Force = %v, want 0600", m)
	}
	after, _ = os.ReadFile(filepath.Join(dir, CACertFile))
	if bytes.Equal(before, after) {
		t.Fatal("CA certificate not replaced with Force")
	}
}

func TestIssue(t *testing.T) {
	caDir := newCA(t)
	ca := parseCertFile(t, filepath.Join(caDir, CACertFile))
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	tests := []struct {
		name     string
		certName string
		opts     IssueOptions
		wantDNS  []string
		wantIPs  []string
		verifyAs string // host name to verify against
	}{
		{
			name: "name as DNS SAN", certName: "agent-one.example",
			wantDNS: []string{"agent-one.example"}, verifyAs: "agent-one.example",
		},
		{
			name: "name as IP SAN", certName: "192.0.2.7",
			wantIPs: []string{"192.0.2.7"}, verifyAs: "192.0.2.7",
		},
		{
			name: "explicit SANs", certName: "regionone",
			opts: IssueOptions{
				DNSNames:    []string{"agent1.region-one", "localhost"},
				IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
			},
			wantDNS:  []string{"agent1.region-one", "localhost"},
			wantIPs:  []string{"127.0.0.1", "::1"},
			verifyAs: "127.0.0.1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outDir := filepath.Join(t.TempDir(), "out")
			certPath, keyPath, err := Issue(caDir, outDir, tt.certName, tt.opts)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if certPath != filepath.Join(outDir, tt.certName+".crt") || keyPath != filepath.Join(outDir, tt.certName+".key") {
				t.Errorf("paths = %s, %s", certPath, keyPath)
			}
			if m := mode(t, keyPath); m != 0o600 {
				t.Errorf("key mode = %v, want 0600", m)
			}
			entries, _ := os.ReadDir(outDir)
			if len(entries) != 2 {
				t.Errorf("output directory holds %d files, want 2", len(entries))
			}
			c := parseCertFile(t, certPath)
			if c.Subject.CommonName != tt.certName {
				t.Errorf("CommonName = %q", c.Subject.CommonName)
			}
			if c.IsCA {
				t.Error("leaf is a CA")
			}
			if !equalStrings(c.DNSNames, tt.wantDNS) {
				t.Errorf("DNSNames = %v, want %v", c.DNSNames, tt.wantDNS)
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !equalStrings(ips, tt.wantIPs) {
				t.Errorf("IPAddresses = %v, want %v", ips, tt.wantIPs)
			}
			if !bytes.Equal(c.AuthorityKeyId, ca.SubjectKeyId) {
				t.Errorf("AuthorityKeyId = %x, want %x", c.AuthorityKeyId, ca.SubjectKeyId)
			}
			if c.NotAfter.After(ca.NotAfter) {
				t.Error("leaf outlives the CA")
			}
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := c.Verify(x509.VerifyOptions{
					Roots: roots, DNSName: tt.verifyAs, KeyUsages: []x509.ExtKeyUsage{usage},
				}); err != nil {
					t.Errorf("Verify for usage %v: %v", usage, err)
				}
			}
			if _, err := LoadTLS(filepath.Join(caDir, CACertFile), certPath, keyPath); err != nil {
				t.Errorf("LoadTLS: %v", err)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestIssueValidityClampedToCA(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	if _, _, err := InitCA(caDir, CAOptions{Validity: 30 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	certPath, _, err := Issue(caDir, t.TempDir(), "agent", IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca := parseCertFile(t, filepath.Join(caDir, CACertFile))
	if c := parseCertFile(t, certPath); !c.NotAfter.Equal(ca.NotAfter) {
		t.Errorf("NotAfter = %v, want the CA's %v", c.NotAfter, ca.NotAfter)
	}
}

func TestIssueErrors(t *testing.T) {
	caDir := newCA(t)
	existing := t.TempDir()
	if _, _, err := Issue(caDir, existing, "agent", IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		caDir   string
		outDir  string
		cert    string
		opts    IssueOptions
		wantErr error
		wantMsg string
	}{
		{name: "no CA", caDir: t.TempDir(), outDir: t.TempDir(), cert: "agent", wantErr: ErrNoCA, wantMsg: "ferry-manage pki init"},
		{name: "exists", caDir: caDir, outDir: existing, cert: "agent", wantErr: ErrExists, wantMsg: filepath.Join(existing, "agent.crt")},
		{name: "empty name", caDir: caDir, outDir: t.TempDir(), cert: "", wantMsg: "empty"},
		{name: "path in name", caDir: caDir, outDir: t.TempDir(), cert: "../agent", wantMsg: "invalid certificate name"},
		{name: "CA's own files", caDir: caDir, outDir: caDir, cert: "ca", wantMsg: "CA's own files"},
		{name: "negative validity", caDir: caDir, outDir: t.TempDir(), cert: "agent", opts: IssueOptions{Validity: -time.Hour}, wantMsg: "not positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Issue(tt.caDir, tt.outDir, tt.cert, tt.opts)
			if err == nil {
				t.Fatal("Issue succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error = %q, want it to mention %q", err, tt.wantMsg)
			}
		})
	}

	// Force replaces an existing certificate.
	before, _ := os.ReadFile(filepath.Join(existing, "agent.crt"))
	if _, _, err := Issue(caDir, existing, "agent", IssueOptions{Force: true}); err != nil {
		t.Fatalf("Issue with Force: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(existing, "agent.crt"))
	if bytes.Equal(before, after) {
		t.Error("certificate not replaced with Force")
	}
}

// issued is one agent's files.
type issued struct{ ca, cert, key string }

func issueAgent(t *testing.T, caDir, name string, opts IssueOptions) issued {
	t.Helper()
	cert, key, err := Issue(caDir, t.TempDir(), name, opts)
	if err != nil {
		t.Fatalf("Issue %s: %v", name, err)
	}
	return issued{filepath.Join(caDir, CACertFile), cert, key}
}

func TestLoadTLSErrors(t *testing.T) {
	caDir := newCA(t)
	otherCA := newCA(t)
	a := issueAgent(t, caDir, "agent-a", IssueOptions{})
	b := issueAgent(t, caDir, "agent-b", IssueOptions{})
	foreign := issueAgent(t, otherCA, "agent-a", IssueOptions{})

	dir := t.TempDir()
	notPEM := filepath.Join(dir, "garbage.pem")
	os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600)
	onlyKey := filepath.Join(dir, "only-key.pem") // PEM, but no certificate
	keyData, _ := os.ReadFile(a.key)
	os.WriteFile(onlyKey, keyData, 0o600)
	missing := filepath.Join(dir, "missing.pem")

	// Expired and not yet valid certificates: issue with a shifted clock from
	// a CA that covers those times.
	pastCA := filepath.Join(t.TempDir(), "ca")
	past := time.Now().Add(-2 * 365 * 24 * time.Hour)
	if _, _, err := initCA(pastCA, CAOptions{}, past); err != nil {
		t.Fatal(err)
	}
	expiredDir := t.TempDir()
	expCert, expKey, err := issue(pastCA, expiredDir, "old", IssueOptions{Validity: 24 * time.Hour}, past)
	if err != nil {
		t.Fatal(err)
	}
	futCert, futKey, err := issue(pastCA, expiredDir, "future", IssueOptions{}, time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	pastCAFile := filepath.Join(pastCA, CACertFile)

	tests := []struct {
		name          string
		ca, cert, key string
		wantErr       error
		wantMsg       string
	}{
		{name: "ok", ca: a.ca, cert: a.cert, key: a.key},
		{name: "missing CA", ca: missing, cert: a.cert, key: a.key, wantErr: os.ErrNotExist, wantMsg: missing},
		{name: "missing cert", ca: a.ca, cert: missing, key: a.key, wantErr: os.ErrNotExist, wantMsg: missing},
		{name: "missing key", ca: a.ca, cert: a.cert, key: missing, wantErr: os.ErrNotExist, wantMsg: missing},
		{name: "CA not PEM", ca: notPEM, cert: a.cert, key: a.key, wantErr: ErrNotPEM, wantMsg: notPEM},
		{name: "cert not PEM", ca: a.ca, cert: notPEM, key: a.key, wantErr: ErrNotPEM, wantMsg: notPEM},
		{name: "cert file holds a key", ca: a.ca, cert: onlyKey, key: a.key, wantErr: ErrNotPEM, wantMsg: "no CERTIFICATE block"},
		{name: "key not PEM", ca: a.ca, cert: a.cert, key: notPEM, wantErr: ErrNotPEM, wantMsg: notPEM},
		{name: "key file holds a cert", ca: a.ca, cert: a.cert, key: a.cert, wantErr: ErrNotPEM, wantMsg: "no PRIVATE KEY block"},
		{name: "key of another cert", ca: a.ca, cert: a.cert, key: b.key, wantErr: ErrKeyMismatch, wantMsg: b.key},
		{name: "other CA", ca: a.ca, cert: foreign.cert, key: foreign.key, wantErr: ErrUntrusted, wantMsg: "not signed by the CA"},
		{name: "expired", ca: pastCAFile, cert: expCert, key: expKey, wantErr: ErrExpired, wantMsg: expCert},
		{name: "not yet valid", ca: pastCAFile, cert: futCert, key: futKey, wantErr: ErrNotYetValid, wantMsg: futCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := LoadTLS(tt.ca, tt.cert, tt.key)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("LoadTLS: %v", err)
				}
				if b.Leaf == nil || b.Certificate.Leaf != b.Leaf || b.CAPool == nil || len(b.Certificate.Certificate) != 1 {
					t.Errorf("incomplete bundle: %+v", b)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error = %q, want it to mention %q", err, tt.wantMsg)
			}
		})
	}
}

func TestLoadTLSRejectsServerOnlyCert(t *testing.T) {
	// A certificate of the right CA but without ClientAuth is not an agent
	// certificate. Build one by hand with the CA's key.
	caDir := newCA(t)
	ca, caKey, err := loadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	a := issueAgent(t, caDir, "agent", IssueOptions{})
	leaf := parseCertFile(t, a.cert)
	leaf.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	keyPriv, err := readKey(a.key, "key")
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(nil, leaf, ca, keyPriv.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(a.cert, encodeCert(der), 0o644)
	if _, err := LoadTLS(a.ca, a.cert, a.key); !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), "client authentication") {
		t.Fatalf("LoadTLS = %v, want ErrUntrusted about client authentication", err)
	}
}

// handshake runs a TLS handshake over an in-memory connection and returns the
// server's and the client's errors.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	sc, cc := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	sc.SetDeadline(deadline)
	cc.SetDeadline(deadline)
	srv := tls.Server(sc, server)
	cli := tls.Client(cc, client)
	done := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		if err == nil {
			// TLS 1.3 clients finish before the server has checked their
			// certificate: exchange a byte so that a rejection reaches them.
			_, err = srv.Write([]byte{1})
		}
		srv.Close()
		done <- err
	}()
	clientErr = cli.Handshake()
	if clientErr == nil {
		buf := make([]byte, 1)
		_, clientErr = cli.Read(buf)
		if clientErr == nil {
			// Drain up to the server's close_notify: net.Pipe has no buffer,
			// so both sides sending theirs at once would block.
			_, clientErr = io.Copy(io.Discard, cli)
		}
	}
	cli.Close()
	serverErr = <-done
	if serverErr == nil && clientErr == nil {
		if v := cli.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Errorf("TLS version = %x, want TLS 1.3", v)
		}
		if peers := srv.ConnectionState().PeerCertificates; len(peers) == 0 {
			t.Error("server saw no client certificate")
		}
	}
	return serverErr, clientErr
}

func TestMutualTLSHandshake(t *testing.T) {
	caDir := newCA(t)
	otherCA := newCA(t)
	load := func(f issued) *Bundle {
		t.Helper()
		b, err := LoadTLS(f.ca, f.cert, f.key)
		if err != nil {
			t.Fatalf("LoadTLS: %v", err)
		}
		return b
	}
	server := load(issueAgent(t, caDir, "agent-one", IssueOptions{DNSNames: []string{"agent-one.local"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}))
	client := load(issueAgent(t, caDir, "agent-two", IssueOptions{}))
	foreign := load(issueAgent(t, otherCA, "agent-two", IssueOptions{}))
	foreignServer := load(issueAgent(t, otherCA, "agent-one", IssueOptions{DNSNames: []string{"agent-one.local"}}))

	noCert := client.ClientConfig("agent-one.local")
	noCert.Certificates = nil
	// Each side trusts the right CA but presents a certificate of another, so
	// that the rejection comes from the side under test.
	foreignClient := foreign.ClientConfig("agent-one.local")
	foreignClient.RootCAs = client.CAPool
	foreignSrv := foreignServer.ServerConfig()
	foreignSrv.ClientCAs = server.CAPool

	tests := []struct {
		name           string
		server, client *tls.Config
		wantServerErr  string // substring; "" for success
		wantClientErr  string
	}{
		{name: "same CA by DNS name", server: server.ServerConfig(), client: client.ClientConfig("agent-one.local")},
		{name: "same CA by IP", server: server.ServerConfig(), client: client.ClientConfig("127.0.0.1")},
		{name: "client from another CA", server: server.ServerConfig(), client: foreignClient,
			wantServerErr: "unknown authority", wantClientErr: "unknown certificate authority"},
		{name: "server from another CA", server: foreignSrv, client: client.ClientConfig("agent-one.local"),
			wantServerErr: "bad certificate", wantClientErr: "unknown authority"},
		{name: "client without certificate", server: server.ServerConfig(), client: noCert,
			wantServerErr: "didn't provide a certificate", wantClientErr: "certificate required"},
		{name: "wrong server name", server: server.ServerConfig(), client: client.ClientConfig("agent-three.local"),
			wantServerErr: "bad certificate", wantClientErr: "not agent-three.local"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverErr, clientErr := handshake(t, tt.server, tt.client)
			t.Logf("server: %v; client: %v", serverErr, clientErr)
			checkErr(t, "server", serverErr, tt.wantServerErr)
			checkErr(t, "client", clientErr, tt.wantClientErr)
		})
	}
}

func checkErr(t *testing.T, side string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s: unexpected error %v", side, err)
	case want != "" && err == nil:
		t.Errorf("%s: no error, want one mentioning %q", side, want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("%s: error %q, want one mentioning %q", side, err, want)
	}
}
