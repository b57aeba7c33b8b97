package manage

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/services/internal/pki"
)

func runPKI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var buf bytes.Buffer
	cmd := pkiCommand(&buf)
	cmd.SetArgs(args)
	cmd.SetOut(&buf)
	cmd.SetErr(&buf)
	cmd.SilenceUsage = true
	cmd.SilenceErrors = true
	err := cmd.Execute()
	return buf.String(), err
}

func TestPKICommand(t *testing.T) {
	base := t.TempDir()
	caDir := filepath.Join(base, "ca")
	outDir := filepath.Join(base, "agents")

	out, err := runPKI(t, "init", "--dir", caDir, "--common-name", "Test CA")
	if err != nil {
		t.Fatalf("pki init: %v", err)
	}
	caCert := filepath.Join(caDir, "ca.crt")
	if want := caCert + "\n" + filepath.Join(caDir, "ca.key") + "\n"; out != want {
		t.Errorf("pki init printed %q, want %q", out, want)
	}

	out, err = runPKI(t, "issue", "agent-one", "--dir", outDir, "--ca-dir", caDir,
		"--dns", "agent-one.local", "--dns", "localhost", "--ip", "127.0.0.1", "--validity-days", "30")
	if err != nil {
		t.Fatalf("pki issue: %v", err)
	}
	certPath := filepath.Join(outDir, "agent-one.crt")
	keyPath := filepath.Join(outDir, "agent-one.key")
	if want := certPath + "\n" + keyPath + "\n"; out != want {
		t.Errorf("pki issue printed %q, want %q", out, want)
	}
	b, err := pki.LoadTLS(caCert, certPath, keyPath)
	if err != nil {
		t.Fatalf("LoadTLS of issued files: %v", err)
	}
	if err := b.Leaf.VerifyHostname("agent-one.local"); err != nil {
		t.Error(err)
	}
	if err := b.Leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	if fi, err := os.Stat(keyPath); err != nil {
		t.Error(err)
	} else if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("key file mode = %v, want 0600", m)
	}

	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"init again", []string{"init", "--dir", caDir}, "--force"},
		{"issue again", []string{"issue", "agent-one", "--dir", outDir, "--ca-dir", caDir}, "--force"},
		{"issue without CA", []string{"issue", "agent", "--dir", outDir, "--ca-dir", filepath.Join(base, "none")}, "ferry-manage pki init"},
		{"bad IP", []string{"issue", "agent", "--dir", outDir, "--ca-dir", caDir, "--ip", "not-an-ip"}, "not an IP address"},
		{"no name", []string{"issue", "--dir", outDir, "--ca-dir", caDir}, "accepts 1 arg"},
		{"bad validity", []string{"issue", "agent", "--dir", outDir, "--ca-dir", caDir, "--validity-days", "0"}, "must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runPKI(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}

	if _, err := runPKI(t, "issue", "agent-one", "--dir", outDir, "--ca-dir", caDir, "--force"); err != nil {
		t.Fatalf("pki issue --force: %v", err)
	}
	if _, err := runPKI(t, "init", "--dir", caDir, "--force"); err != nil {
		t.Fatalf("pki init --force: %v", err)
	}
	// The certificate of the replaced CA no longer verifies.
	if _, err := pki.LoadTLS(caCert, certPath, keyPath); !errors.Is(err, pki.ErrUntrusted) {
		t.Errorf("LoadTLS after CA replacement = %v, want ErrUntrusted", err)
	}
}
