package pki

import (
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestStateKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "state.key")
	if err := WriteStateKey(p, false); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, p); m != 0o600 {
		t.Errorf("mode %v", m)
	}
	k1, err := LoadStateKey(p)
	if err != nil || len(k1) != StateKeySize {
		t.Fatalf("load: %d bytes, %v", len(k1), err)
	}
	if err := WriteStateKey(p, false); !errors.Is(err, ErrExists) {
		t.Errorf("overwrite without force: %v", err)
	}
	if err := WriteStateKey(p, true); err != nil {
		t.Fatal(err)
	}
	if k2, _ := LoadStateKey(p); string(k2) == string(k1) {
		t.Error("a new key equals the old one")
	}
	for name, content := range map[string]string{"short": "abcd\n", "not hex": "zz" + string(make([]byte, 62)) + "\n"} {
		bad := filepath.Join(t.TempDir(), name)
		os.WriteFile(bad, []byte(content), 0o600)
		if _, err := LoadStateKey(bad); err == nil {
			t.Errorf("%s key loaded", name)
		}
	}
}

func TestSigningKey(t *testing.T) {
	dir := t.TempDir()
	keyPath, pubPath, err := WriteSigningKey(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if mode(t, keyPath) != 0o600 {
		t.Error("private key readable by others")
	}
	priv, err := LoadSigningKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadVerifyKey(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	sig := ed25519.Sign(priv, []byte("m"))
	if !ed25519.Verify(pub, []byte("m"), sig) {
		t.Error("the pair does not verify")
	}
	if _, _, err := WriteSigningKey(dir, false); !errors.Is(err, ErrExists) {
		t.Errorf("overwrite without force: %v", err)
	}
	if _, err := LoadVerifyKey(keyPath); err == nil {
		t.Error("a private key loaded as the public key")
	}
	if _, err := LoadSigningKey(pubPath); err == nil {
		t.Error("a public key loaded as the private key")
	}
}
