package pki

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Two more kinds of key, besides the certificates:
//
//   - The region's state key (StateKeySize random bytes, hex on one line,
//     mode 0600): every agent of a region holds the same file ([agent]
//     state_key_file). It seals what Ferry keeps in RBD image metadata.
//   - The command signing key pair (Ed25519): ferry-api holds the private
//     key ([api] command_signing_key_file) and signs every agent-bound
//     command; agents hold only the public key ([agent]
//     command_verify_key_file).

// StateKeySize is the length of a state key in bytes.
const StateKeySize = 32

// File names that `ferry-manage pki` writes by default.
const (
	StateKeyFile      = "state.key"
	SigningKeyFile    = "signing.key"
	SigningPubKeyFile = "signing.pub"
)

// WriteStateKey writes a new random state key to path (refused when the
// file exists, unless force).
func WriteStateKey(path string, force bool) error {
	key := make([]byte, StateKeySize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return writeFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600, force)
}

// LoadStateKey reads a state key file.
func LoadStateKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != StateKeySize {
		return nil, fmt.Errorf("%s: not a state key (%d hex-encoded random bytes on one line)", path, StateKeySize)
	}
	return key, nil
}

// WriteSigningKey writes a new Ed25519 key pair as SigningKeyFile (PKCS#8,
// 0600) and SigningPubKeyFile (PKIX, 0644) in dir.
func WriteSigningKey(dir string, force bool) (keyPath, pubPath string, err error) {
	keyPath, pubPath = filepath.Join(dir, SigningKeyFile), filepath.Join(dir, SigningPubKeyFile)
	if !force {
		if err := refuseExisting("signing key", keyPath, pubPath); err != nil {
			return "", "", err
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	if err := writeFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600, true); err != nil {
		return "", "", err
	}
	if err := writeFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644, true); err != nil {
		return "", "", err
	}
	return keyPath, pubPath, nil
}

// LoadSigningKey reads an Ed25519 private key (PKCS#8 PEM).
func LoadSigningKey(path string) (ed25519.PrivateKey, error) {
	block, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an Ed25519 key", path)
	}
	return priv, nil
}

// LoadVerifyKey reads an Ed25519 public key (PKIX PEM).
func LoadVerifyKey(path string) (ed25519.PublicKey, error) {
	block, err := readPEM(path, "PUBLIC KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an Ed25519 public key", path)
	}
	return pub, nil
}

func readPEM(path, typ string) (*pem.Block, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != typ {
		return nil, fmt.Errorf("%s: %w (want a %s block)", path, ErrNotPEM, typ)
	}
	return block, nil
}
