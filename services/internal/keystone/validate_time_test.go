package keystone

import (
	"testing"
	"time"
)

// Keystone writes an application credential's capped token expiry without a
// zone; an ordinary token's with one.
func TestParseKeystoneTime(t *testing.T) {
	want := time.Date(2026, 12, 3, 12, 19, 31, 969846000, time.UTC)
	for _, s := range []string{"2026-12-03T12:19:31.969846Z", "2026-12-03T12:19:31.969846", "2026-12-03T12:19:31.969846+00:00"} {
		if got, err := parseKeystoneTime(s); err != nil || !got.Equal(want) {
			t.Errorf("%q: %v %v", s, got, err)
		}
	}
	if got, err := parseKeystoneTime(""); err != nil || !got.IsZero() {
		t.Errorf("empty: %v %v", got, err)
	}
	if _, err := parseKeystoneTime("tomorrow"); err == nil {
		t.Error("garbage parsed")
	}
}
