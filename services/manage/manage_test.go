package manage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeConf writes a config with a fresh SQLite database and transport.
func writeConf(t *testing.T, transport string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.conf")
	conf := fmt.Sprintf("[DEFAULT]\ntransport_url = %s\n[database]\nconnection = sqlite:///%s\n", transport, filepath.Join(dir, "ferry.sqlite"))
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Execute(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestDBSyncAndVersion(t *testing.T) {
	conf := writeConf(t, "rabbit://guest:guest@127.0.0.1:1/")
	code, out, _ := run(t, "--config-file", conf, "db", "version")
	if code != 0 || !strings.Contains(out, "current: none") {
		t.Fatalf("version before sync: %d %q", code, out)
	}
	for range 2 { // idempotent
		if code, out, errs := run(t, "--config-file", conf, "db", "sync"); code != 0 || !strings.Contains(out, "database schema at version") {
			t.Fatalf("db sync: %d %q %q", code, out, errs)
		}
	}
	code, out, _ = run(t, "--config-file", conf, "db", "version")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || strings.TrimPrefix(lines[0], "current: ") != strings.TrimPrefix(lines[1], "latest: ") {
		t.Errorf("version after sync: %d %q", code, out)
	}
}

// status fails on an outdated schema and on an unreachable broker, and says
// which check failed.
func TestStatusReportsEachCheck(t *testing.T) {
	conf := writeConf(t, "rabbit://guest:secret@127.0.0.1:1/")
	code, out, _ := run(t, "--config-file", conf, "status")
	if code == 0 || !strings.Contains(out, "database   FAILED") || !strings.Contains(out, "broker     FAILED") {
		t.Errorf("status on an empty database and closed broker: %d %q", code, out)
	}
	if strings.Contains(out, "secret") {
		t.Errorf("password printed: %q", out)
	}
	if code, _, _ := run(t, "--config-file", conf, "db", "sync"); code != 0 {
		t.Fatal("db sync failed")
	}
	code, out, _ = run(t, "--config-file", conf, "status")
	if code == 0 || !strings.Contains(out, "database   OK") || !strings.Contains(out, "broker     FAILED") {
		t.Errorf("status after sync: %d %q", code, out)
	}
}

func TestConfigSampleAndBadConfig(t *testing.T) {
	code, out, _ := run(t, "config", "sample")
	if code != 0 || !strings.Contains(out, "[keystone_authtoken]") {
		t.Errorf("config sample: %d", code)
	}
	bad := filepath.Join(t.TempDir(), "bad.conf")
	os.WriteFile(bad, []byte("[agent]\nstreams = 0\n"), 0o600)
	code, _, errs := run(t, "--config-file", bad, "db", "sync")
	if code != 1 || !strings.Contains(errs, "[agent] streams: 0 is below the minimum 1") {
		t.Errorf("bad config: %d %q", code, errs)
	}
	code, _, errs = run(t, "--config-file", filepath.Join(t.TempDir(), "missing.conf"), "status")
	if code != 1 || !strings.Contains(errs, "no such file") {
		t.Errorf("missing config: %d %q", code, errs)
	}
}
