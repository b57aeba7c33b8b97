package rbd

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Health is the cluster's health as `ceph health` reports it.
type Health struct {
	// Status is HEALTH_OK, HEALTH_WARN or HEALTH_ERR.
	Status string
	// Checks are the failing health checks, most severe first, then by
	// code.
	Checks []HealthCheck
}

// HealthCheck is one failing health check (OSD_NEARFULL, SLOW_OPS, …).
type HealthCheck struct {
	Code     string
	Severity string // HEALTH_WARN or HEALTH_ERR
	Message  string // the check's summary, e.g. "1 nearfull osd(s)"
}

// Health asks the monitors for the cluster's health. The command is
// bounded by the connection's monitor timeout (Options.Timeout); ctx is
// honoured too: when it ends first, Health returns at once and the
// command finishes (or times out) on its own.
func (c *Cluster) Health(ctx context.Context) (Health, error) {
	if err := ctx.Err(); err != nil {
		return Health{}, err
	}
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Shared hold: Close waits for the command, so conn stays valid.
		c.mu.RLock()
		defer c.mu.RUnlock()
		if c.conn == nil {
			done <- result{err: ErrClosed}
			return
		}
		out, _, err := c.conn.MonCommand([]byte(`{"prefix":"health","format":"json"}`))
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return Health{}, translate(r.err, "ceph health")
		}
		return parseHealth(r.out)
	case <-ctx.Done():
		return Health{}, fmt.Errorf("ceph health: %w", ctx.Err())
	}
}

// parseHealth reads `ceph health --format json`.
func parseHealth(out []byte) (Health, error) {
	var raw struct {
		Status string `json:"status"`
		Checks map[string]struct {
			Severity string `json:"severity"`
			Summary  struct {
				Message string `json:"message"`
			} `json:"summary"`
			Muted bool `json:"muted"`
		} `json:"checks"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return Health{}, fmt.Errorf("ceph health: unreadable answer: %w", err)
	}
	if !strings.HasPrefix(raw.Status, "HEALTH_") {
		return Health{}, fmt.Errorf("ceph health: unexpected status %q", raw.Status)
	}
	h := Health{Status: raw.Status}
	for code, ch := range raw.Checks {
		if ch.Muted {
			continue
		}
		h.Checks = append(h.Checks, HealthCheck{Code: code, Severity: ch.Severity, Message: ch.Summary.Message})
	}
	slices.SortFunc(h.Checks, func(a, b HealthCheck) int {
		if d := severityRank(b.Severity) - severityRank(a.Severity); d != 0 {
			return d
		}
		return strings.Compare(a.Code, b.Code)
	})
	return h, nil
}

func severityRank(s string) int {
	switch s {
	case "HEALTH_ERR":
		return 2
	case "HEALTH_WARN":
		return 1
	}
	return 0
}
