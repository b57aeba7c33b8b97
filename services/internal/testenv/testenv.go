// Package testenv gives functional and e2e tests the facts of the local
// stack. ./tox-like-ci exports $FERRY_STACK_DIR/stack.env into the test
// environment; a test run without it fails, it never skips.
package testenv

import (
	"os"
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
