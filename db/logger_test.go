package db

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestSlogLogger(t *testing.T) {
	tests := []struct {
		name      string
		threshold time.Duration
		wantSlow  bool
	}{
		{"every query is slow", time.Nanosecond, true},
		{"no query is slow", time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			d := openSynced(t, sqliteURL(t), WithLogger(l), WithSlowThreshold(tt.threshold))
			buf.Reset()
			_, err := d.GetTransfer(testCtx(t), "a-secret-looking-id", ProjectScope("p1"))
			wantErr(t, err, ErrNotFound)
			out := buf.String()
			if got := strings.Contains(out, "slow database query"); got != tt.wantSlow {
				t.Errorf("slow query logged = %v, want %v; log:\n%s", got, tt.wantSlow, out)
			}
			if strings.Contains(out, "a-secret-looking-id") {
				t.Errorf("bind values reached the log:\n%s", out)
			}
			if strings.Contains(out, "level=ERROR") {
				t.Errorf("an error was logged instead of returned:\n%s", out)
			}
		})
	}
}
