// Package pki creates and loads the certificates of the agents' mutual TLS
// data streams: a small private CA (ECDSA P-256) and one certificate per agent
// that is valid both as a server (its own data port) and as a client (the data
// ports of other agents).
//
// Files are PEM: certificates as CERTIFICATE blocks, private keys as PKCS#8
// PRIVATE KEY blocks written with mode 0600. The paths correspond to the
// [tls] ca_file, cert_file and key_file options.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside a CA directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Defaults applied when the options leave a field empty.
const (
	DefaultCACommonName = "Ferry CA"
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultValidity     = 365 * 24 * time.Hour
)

// clockSkew backdates NotBefore so that a certificate is usable at once on a
// host whose clock is slightly behind the issuer's.
const clockSkew = 5 * time.Minute

// Sentinel errors; the returned errors wrap them and name the file involved.
var (
	// ErrExists: a file would be overwritten and Force was not set.
	ErrExists = errors.New("already exists")
	// ErrNoCA: the CA directory has no CA certificate or key.
	ErrNoCA = errors.New("no CA")
	// ErrNotPEM: a file does not hold the expected PEM block.
	ErrNotPEM = errors.New("no PEM data")
	// ErrKeyMismatch: a private key is not the key of its certificate.
	ErrKeyMismatch = errors.New("private key does not match certificate")
	// ErrUntrusted: a certificate is not signed by the CA, or not for the
	// usages an agent needs.
	ErrUntrusted = errors.New("certificate not trusted")
	// ErrExpired: a certificate's NotAfter has passed.
	ErrExpired = errors.New("certificate expired")
	// ErrNotYetValid: a certificate's NotBefore is still ahead.
	ErrNotYetValid = errors.New("certificate not yet valid")
)

// CAOptions configures InitCA.
type CAOptions struct {
	// CommonName of the CA; DefaultCACommonName when empty.
	CommonName string
	// Validity of the CA certificate; DefaultCAValidity when zero.
	Validity time.Duration
	// Force replaces an existing CA certificate and key.
	Force bool
}

// IssueOptions configures Issue.
type IssueOptions struct {
	// DNSNames and IPAddresses become the subject alternative names. When both
	// are empty the certificate name is used: as an IP address SAN if it
	// parses as one, else as a DNS name SAN.
	DNSNames    []string
	IPAddresses []net.IP
	// Validity of the certificate; DefaultValidity when zero. NotAfter never
	// goes beyond the CA's NotAfter.
	Validity time.Duration
	// Force replaces an existing certificate and key of the same name.
	Force bool
	// Region and Role name the agent's identity (URI SANs
	// urn:ferry:region:<region> and urn:ferry:role:<role>): the other end
	// of a data stream checks them against the transfer it serves.
	Region string
	Role   string
}

// InitCA creates a CA in dir (created with mode 0700 if missing) and returns
// the paths of its certificate and key. It refuses to replace an existing CA
// unless opts.Force is set.
func InitCA(dir string, opts CAOptions) (certPath, keyPath string, err error) {
	return initCA(dir, opts, time.Now())
}

func initCA(dir string, opts CAOptions, now time.Time) (string, string, error) {
	if dir == "" {
		return "", "", errors.New("pki: CA directory not set")
	}
	cn := opts.CommonName
	if cn == "" {
		cn = DefaultCACommonName
	}
	validity := opts.Validity
	if validity == 0 {
		validity = DefaultCAValidity
	}
	if validity < 0 {
		return "", "", fmt.Errorf("pki: CA validity %v is not positive", validity)
	}
	certPath := filepath.Join(dir, CACertFile)
	keyPath := filepath.Join(dir, CAKeyFile)
	if !opts.Force {
		if err := refuseExisting("CA", certPath, keyPath); err != nil {
			return "", "", err
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return "", "", err
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-clockSkew).UTC(),
		NotAfter:              now.Add(validity).UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return "", "", fmt.Errorf("pki: create CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("pki: create CA directory: %w", err)
	}
	if err := writeFile(keyPath, keyPEM, 0o600, opts.Force); err != nil {
		return "", "", err
	}
	if err := writeFile(certPath, encodeCert(der), 0o644, opts.Force); err != nil {
		if !opts.Force {
			os.Remove(keyPath) // ours: created exclusively above
		}
		return "", "", err
	}
	return certPath, keyPath, nil
}

// Issue creates the certificate of agent name, signed by the CA in caDir, and
// writes it as <name>.crt and <name>.key into outDir (created with mode 0700
// if missing). The certificate's CommonName is name and it is valid for both
// server and client authentication. It refuses to replace existing files
// unless opts.Force is set.
func Issue(caDir, outDir, name string, opts IssueOptions) (certPath, keyPath string, err error) {
	return issue(caDir, outDir, name, opts, time.Now())
}

func issue(caDir, outDir, name string, opts IssueOptions, now time.Time) (string, string, error) {
	if err := checkName(name); err != nil {
		return "", "", err
	}
	if outDir == "" {
		return "", "", errors.New("pki: output directory not set")
	}
	validity := opts.Validity
	if validity == 0 {
		validity = DefaultValidity
	}
	if validity < 0 {
		return "", "", fmt.Errorf("pki: validity %v is not positive", validity)
	}
	certPath := filepath.Join(outDir, name+".crt")
	keyPath := filepath.Join(outDir, name+".key")
	caCertPath := filepath.Join(caDir, CACertFile)
	caKeyPath := filepath.Join(caDir, CAKeyFile)
	if samePath(certPath, caCertPath) || samePath(keyPath, caKeyPath) {
		return "", "", fmt.Errorf("pki: certificate name %q would replace the CA's own files in %s", name, caDir)
	}

	ca, caKey, err := loadCA(caDir)
	if err != nil {
		return "", "", err
	}
	if now.After(ca.NotAfter) {
		return "", "", fmt.Errorf("pki: %w: CA certificate %s expired on %s", ErrExpired, caCertPath, ca.NotAfter.Format(time.RFC3339))
	}
	notBefore := now.Add(-clockSkew)
	if notBefore.Before(ca.NotBefore) {
		notBefore = ca.NotBefore
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	if !notAfter.After(notBefore) {
		return "", "", fmt.Errorf("pki: %w: CA certificate %s is valid only from %s", ErrNotYetValid, caCertPath, ca.NotBefore.Format(time.RFC3339))
	}

	if !opts.Force {
		if err := refuseExisting("certificate", certPath, keyPath); err != nil {
			return "", "", err
		}
	}

	dnsNames := append([]string(nil), opts.DNSNames...)
	ips := append([]net.IP(nil), opts.IPAddresses...)
	for _, d := range dnsNames {
		if d == "" || strings.ContainsAny(d, " /\\") {
			return "", "", fmt.Errorf("pki: invalid DNS name %q", d)
		}
	}
	for _, ip := range ips {
		if ip.To16() == nil {
			return "", "", fmt.Errorf("pki: invalid IP address %v", ip)
		}
	}
	if len(dnsNames) == 0 && len(ips) == 0 {
		if ip := net.ParseIP(name); ip != nil {
			ips = []net.IP{ip}
		} else {
			dnsNames = []string{name}
		}
	}

	uris, err := identityURIs(opts.Region, opts.Role)
	if err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("pki: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return "", "", err
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return "", "", err
	}
	akid := ca.SubjectKeyId
	if len(akid) == 0 {
		if akid, err = subjectKeyID(ca.PublicKey); err != nil {
			return "", "", err
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             notBefore.UTC(),
		NotAfter:              notAfter.UTC(),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              dnsNames,
		IPAddresses:           ips,
		URIs:                  uris,
		SubjectKeyId:          skid,
		AuthorityKeyId:        akid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return "", "", fmt.Errorf("pki: create certificate %q: %w", name, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return "", "", fmt.Errorf("pki: create output directory: %w", err)
	}
	if err := writeFile(keyPath, keyPEM, 0o600, opts.Force); err != nil {
		return "", "", err
	}
	if err := writeFile(certPath, encodeCert(der), 0o644, opts.Force); err != nil {
		if !opts.Force {
			os.Remove(keyPath) // ours: created exclusively above
		}
		return "", "", err
	}
	return certPath, keyPath, nil
}

// loadCA reads the CA certificate and key of caDir and checks that they form
// a usable CA.
func loadCA(caDir string) (*x509.Certificate, crypto.Signer, error) {
	certPath := filepath.Join(caDir, CACertFile)
	keyPath := filepath.Join(caDir, CAKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("pki: %w in %s (%s is missing); run `ferry-manage pki init --dir %s` first", ErrNoCA, caDir, p, caDir)
		}
	}
	certs, err := readCerts(certPath, "CA certificate")
	if err != nil {
		return nil, nil, err
	}
	ca := certs[0]
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("pki: %s is not a CA certificate", certPath)
	}
	key, err := readKey(keyPath, "CA key")
	if err != nil {
		return nil, nil, err
	}
	if err := matchKey(ca, key); err != nil {
		return nil, nil, fmt.Errorf("pki: %w: CA key %s, CA certificate %s", err, keyPath, certPath)
	}
	return ca, key, nil
}

// checkName accepts names usable both as a file name and as a CommonName.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("pki: certificate name is empty")
	case name == "." || name == ".." || strings.HasPrefix(name, "."):
		return fmt.Errorf("pki: invalid certificate name %q: must not start with a dot", name)
	case strings.ContainsAny(name, "/\\ \t\r\n\x00"):
		return fmt.Errorf("pki: invalid certificate name %q: no slashes or spaces allowed", name)
	}
	return nil
}

func samePath(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	if err1 != nil || err2 != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	return aa == bb
}

// refuseExisting returns an ErrExists error naming the first of paths that
// exists.
func refuseExisting(what string, paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("pki: %s file %s %w; refusing to overwrite it without force", what, p, ErrExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("pki: %w", err)
		}
	}
	return nil
}

// writeFile writes data to path with mode perm. Without force the file must
// not exist (O_EXCL); with force the data goes to a temporary file in the same
// directory that is renamed over path, so the mode is perm even when the old
// file had another.
func writeFile(path string, data []byte, perm os.FileMode, force bool) error {
	if !force {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("pki: file %s %w; refusing to overwrite it without force", path, ErrExists)
		}
		if err != nil {
			return fmt.Errorf("pki: %w", err)
		}
		if err := writeClose(f, data, perm); err != nil {
			os.Remove(path)
			return err
		}
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmp := f.Name()
	if err := writeClose(f, data, perm); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

func writeClose(f *os.File, data []byte, perm os.FileMode) error {
	// Chmod explicitly: OpenFile's mode is filtered by the umask.
	err := f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", f.Name(), err)
	}
	return nil
}

func randomSerial() (*big.Int, error) {
	// 128 random bits; positive as DER INTEGERs must be.
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("pki: generate serial number: %w", err)
	}
	if serial.Sign() == 0 {
		serial.SetInt64(1)
	}
	return serial, nil
}

// subjectKeyID derives a key identifier from the subjectPublicKey bits: the
// leftmost 160 bits of their SHA-256 (RFC 7093, section 2, method 1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("pki: marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("pki: parse public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
