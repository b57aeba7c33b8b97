package db

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// newGormLogger returns gorm's logger: silent without l, else slow queries
// and gorm's own warnings go to l. Query errors are not logged here: the
// store returns them, and the caller logs once where it handles them.
func newGormLogger(l *slog.Logger, slow time.Duration) logger.Interface {
	if l == nil {
		return logger.Discard
	}
	return &slogLogger{log: l, level: logger.Warn, slow: slow}
}

type slogLogger struct {
	log   *slog.Logger
	level logger.LogLevel
	slow  time.Duration
}

var _ logger.Interface = (*slogLogger)(nil)

func (s *slogLogger) LogMode(level logger.LogLevel) logger.Interface {
	c := *s
	c.level = level
	return &c
}

func (s *slogLogger) Info(ctx context.Context, msg string, args ...any) {
	if s.level >= logger.Info {
		s.log.InfoContext(ctx, fmt.Sprintf(msg, args...))
	}
}

func (s *slogLogger) Warn(ctx context.Context, msg string, args ...any) {
	if s.level >= logger.Warn {
		s.log.WarnContext(ctx, fmt.Sprintf(msg, args...))
	}
}

func (s *slogLogger) Error(ctx context.Context, msg string, args ...any) {
	if s.level >= logger.Error {
		s.log.ErrorContext(ctx, fmt.Sprintf(msg, args...))
	}
}

func (s *slogLogger) Trace(ctx context.Context, begin time.Time, fc func() (string, int64), err error) {
	if s.level < logger.Warn || s.slow <= 0 {
		return
	}
	if err != nil && !errors.Is(err, gorm.ErrRecordNotFound) {
		return // returned to the caller
	}
	if elapsed := time.Since(begin); elapsed > s.slow {
		query, rows := fc()
		s.log.WarnContext(ctx, "slow database query", "elapsed", elapsed, "rows", rows, "sql", query)
	}
}

// ParamsFilter keeps bind values out of logged SQL.
func (s *slogLogger) ParamsFilter(_ context.Context, query string, _ ...any) (string, []any) {
	return query, nil
}
