// Package testenv gives functional and e2e tests the facts of the local
// stack. ./tox-like-ci exports $FERRY_STACK_DIR/stack.env into the test
// environment; a test run without it fails, it never skips.
package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Get returns the stack variable key or fails the test.
func Get(t testing.TB, key string) string {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		t.Fatalf("%s is not set: run the tests through ./tox-like-ci (it brings the stack up and exports %s/stack.env)", key, "$FERRY_STACK_DIR")
	}
	return v
}

// Openrc reads the `export OS_…=…` lines of $FERRY_STACK_DIR/openrc.<user>
// into a getenv function (for keystone.CredentialsFromEnv).
func Openrc(t testing.TB, user string) func(string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Get(t, "FERRY_STACK_DIR"), "openrc."+user))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for line := range strings.SplitSeq(string(b), "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "export ")
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "OS_") {
			vars[k] = strings.Trim(v, `"'`)
		}
	}
	if len(vars) == 0 {
		t.Fatalf("openrc.%s has no OS_ variables", user)
	}
	return func(k string) string { return vars[k] }
}

// ExportSHA is `rbd -c conf export spec - | sha256sum` with the cluster's
// admin credentials: the reference check of a copy, independent of Ferry.
func ExportSHA(t testing.TB, conf, spec string) string {
	t.Helper()
	cmd := exec.Command("rbd", "-c", conf, "--no-progress", "export", spec, "-")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, out); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("rbd export %s: %v: %s", spec, err, stderr.String())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Snapshots lists an image's snapshot names, oldest first, with `rbd -c
// conf snap ls`: what an operator, or Cinder's driver, sees.
func Snapshots(t testing.TB, conf, spec string) []string {
	t.Helper()
	out, err := exec.Command("rbd", "-c", conf, "snap", "ls", "--format", "json", spec).Output()
	if err != nil {
		t.Fatalf("rbd snap ls %s: %v", spec, err)
	}
	var snaps []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(out, &snaps); err != nil {
		t.Fatalf("rbd snap ls %s: %q: %v", spec, out, err)
	}
	names := []string{}
	for _, s := range snaps {
		names = append(names, s.Name)
	}
	return names
}
