package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// Bundle is what an agent needs for its mutual TLS data streams: the CA that
// both sides trust and the agent's own certificate and key.
type Bundle struct {
	// CAPool holds the CA certificates of the CA file.
	CAPool *x509.CertPool
	// Certificate is the agent's certificate chain and private key.
	Certificate tls.Certificate
	// Leaf is the agent's parsed certificate (also Certificate.Leaf).
	Leaf *x509.Certificate
}

// LoadTLS reads the CA certificate(s), the agent certificate (optionally
// followed by intermediates) and its private key from PEM files, and checks
// that the key matches the certificate, that the certificate is currently
// valid and that it chains to the CA for both server and client
// authentication.
func LoadTLS(caFile, certFile, keyFile string) (*Bundle, error) {
	return loadTLS(caFile, certFile, keyFile, time.Now())
}

func loadTLS(caFile, certFile, keyFile string, now time.Time) (*Bundle, error) {
	cas, err := readCerts(caFile, "CA certificate")
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	chain, err := readCerts(certFile, "certificate")
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	key, err := readKey(keyFile, "private key")
	if err != nil {
		return nil, err
	}
	if err := matchKey(leaf, key); err != nil {
		return nil, fmt.Errorf("pki: %w: key %s, certificate %s", err, keyFile, certFile)
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("pki: %w: %s is valid from %s", ErrNotYetValid, certFile, leaf.NotBefore.Format(time.RFC3339))
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("pki: %w: %s expired on %s", ErrExpired, certFile, leaf.NotAfter.Format(time.RFC3339))
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots:         pool,
			Intermediates: inter,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{usage},
		})
		if err != nil {
			return nil, verifyError(err, certFile, caFile, usage)
		}
	}
	tc := tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return &Bundle{CAPool: pool, Certificate: tc, Leaf: leaf}, nil
}

// ServerConfig is the TLS configuration of an agent's data port: TLS 1.3
// only, and the peer must present a certificate signed by the CA.
func (b *Bundle) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.Certificate},
		ClientCAs:    b.CAPool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// ClientConfig is the TLS configuration for connecting to the data port of
// the agent reachable as serverName (a DNS name or IP address in its
// certificate): TLS 1.3 only, presenting this agent's certificate.
func (b *Bundle) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.Certificate},
		RootCAs:      b.CAPool,
		ServerName:   serverName,
	}
}

func verifyError(err error, certFile, caFile string, usage x509.ExtKeyUsage) error {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) {
		switch inv.Reason {
		case x509.Expired:
			return fmt.Errorf("pki: %w: %s or its issuer is outside its validity period (%w)", ErrExpired, certFile, err)
		case x509.IncompatibleUsage:
			name := "server"
			if usage == x509.ExtKeyUsageClientAuth {
				name = "client"
			}
			return fmt.Errorf("pki: %w: %s is not valid for TLS %s authentication (%w)", ErrUntrusted, certFile, name, err)
		}
	}
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return fmt.Errorf("pki: %w: %s is not signed by the CA in %s", ErrUntrusted, certFile, caFile)
	}
	return fmt.Errorf("pki: %w: %s does not verify against the CA in %s (%w)", ErrUntrusted, certFile, caFile, err)
}

// readCerts returns the certificates of the PEM file path, at least one.
func readCerts(path, what string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: read %s: %w", what, err)
	}
	var certs []*x509.Certificate
	found := false
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		found = true
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: parse %s %s: %w", what, path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		if found {
			return nil, fmt.Errorf("pki: %w: %s %s has no CERTIFICATE block", ErrNotPEM, what, path)
		}
		return nil, fmt.Errorf("pki: %w: %s %s is not a PEM file", ErrNotPEM, what, path)
	}
	return certs, nil
}

// readKey returns the private key of the PEM file path: PKCS#8 (PRIVATE KEY),
// SEC 1 (EC PRIVATE KEY) or PKCS#1 (RSA PRIVATE KEY).
func readKey(path, what string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: read %s: %w", what, err)
	}
	found := false
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		found = true
		var key any
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pki: parse %s %s: %w", what, path, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("pki: %s %s: unsupported key type %T", what, path, key)
		}
		return signer, nil
	}
	if found {
		return nil, fmt.Errorf("pki: %w: %s %s has no PRIVATE KEY block", ErrNotPEM, what, path)
	}
	return nil, fmt.Errorf("pki: %w: %s %s is not a PEM file", ErrNotPEM, what, path)
}

func matchKey(cert *x509.Certificate, key crypto.Signer) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return ErrKeyMismatch
	}
	return nil
}
