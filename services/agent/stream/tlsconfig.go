package stream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/ferry-project/ferry/services/internal/pki"
)

// ServerTLSConfig builds the destination's config from PEM files: TLS 1.3
// only, and a client certificate signed by the CA in caFile is required.
func ServerTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	caPEM, certPEM, keyPEM, err := readPEMFiles(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return ServerTLSConfigPEM(caPEM, certPEM, keyPEM)
}

// ClientTLSConfig builds the source's config from PEM files: TLS 1.3 only,
// the destination's certificate must chain to caFile and name serverName,
// and the source presents its own certificate.
func ClientTLSConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	caPEM, certPEM, keyPEM, err := readPEMFiles(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return ClientTLSConfigPEM(caPEM, certPEM, keyPEM, serverName)
}

// ServerTLSConfigPEM is ServerTLSConfig from PEM bytes.
func ServerTLSConfigPEM(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	pool, cert, err := parsePEMs(caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		NextProtos:   offeredALPN(ProtocolVersion),
	}, nil
}

// ClientTLSConfigPEM is ClientTLSConfig from PEM bytes.
func ClientTLSConfigPEM(caPEM, certPEM, keyPEM []byte, serverName string) (*tls.Config, error) {
	if serverName == "" {
		return nil, errors.New("stream: client TLS config needs the destination's server name")
	}
	pool, cert, err := parsePEMs(caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
		NextProtos:   offeredALPN(ProtocolVersion),
	}, nil
}

// RequirePeer returns a copy of cfg whose handshake also requires the peer's
// certificate to name region (when not empty) and role (pki identity URIs):
// a source checks that it reaches an agent of the destination region.
func RequirePeer(cfg *tls.Config, region, role string) *tls.Config {
	c := cfg.Clone()
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%w: no peer certificate", pki.ErrIdentity)
		}
		return pki.CheckIdentity(cs.PeerCertificates[0], region, role)
	}
	return c
}

func readPEMFiles(caFile, certFile, keyFile string) (ca, cert, key []byte, err error) {
	if ca, err = os.ReadFile(caFile); err != nil {
		return nil, nil, nil, fmt.Errorf("stream: read CA: %w", err)
	}
	if cert, err = os.ReadFile(certFile); err != nil {
		return nil, nil, nil, fmt.Errorf("stream: read certificate: %w", err)
	}
	if key, err = os.ReadFile(keyFile); err != nil {
		return nil, nil, nil, fmt.Errorf("stream: read key: %w", err)
	}
	return ca, cert, key, nil
}

func parsePEMs(caPEM, certPEM, keyPEM []byte) (*x509.CertPool, tls.Certificate, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, tls.Certificate{}, errors.New("stream: no CA certificate found in PEM")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("stream: certificate/key pair: %w", err)
	}
	return pool, cert, nil
}
