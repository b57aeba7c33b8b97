// Package logging sets up log/slog for Ferry's binaries from [DEFAULT] debug
// and log_file.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
)

// New returns a text logger writing to logFile (appending) or, when empty,
// to stderr, at DEBUG when debug is set and INFO otherwise. The returned
// closer closes the file.
func New(binary string, debug bool, logFile string) (*slog.Logger, io.Closer, error) {
	var w io.Writer = os.Stderr
	var c io.Closer = io.NopCloser(nil)
	if logFile != "" {
		f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("[DEFAULT] log_file: %w", err)
		}
		w, c = f, f
	}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	h := slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	return slog.New(h).With("binary", binary), c, nil
}
