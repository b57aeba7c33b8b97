package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/version"
)

// Liveness: what the agent tells ferry-api about itself, and the rule that
// keeps it honest under a stalled cluster or broker.
//
//   - The heartbeat loop never calls Ceph and takes no lock that a Ceph call
//     holds: it copies the running set under the runner's mutex (held only
//     to copy) and the last health probe result under the prober's (held
//     only to copy), and each cast is bounded by the heartbeat interval, so
//     a broker that does not confirm delays one heartbeat, not the loop,
//     and no stale heartbeat goes out late.
//   - The health probe runs in its own loop with its own timeout; the
//     heartbeat carries its last result and that result's age.

// newBootID is random per process start.
func newBootID() string { return rand.Text() }

// healthChecksThatMatter are the Ceph health checks that slow or stop
// transfers; HEALTH_ERR checks are always reported.
var healthChecksThatMatter = []string{
	"OSD_FULL", "OSD_NEARFULL", "OSD_BACKFILLFULL", "OSD_FAILSAFE_FULL",
	"POOL_FULL", "POOL_NEARFULL", "POOL_BACKFILLFULL",
	"SLOW_OPS", "OSD_DOWN", "OSD_HOST_DOWN", "OSD_ROOT_DOWN", "OSD_SLOW_PING_TIME_BACK", "OSD_SLOW_PING_TIME_FRONT",
	"PG_AVAILABILITY", "PG_DEGRADED", "OSDMAP_FLAGS", "MON_DOWN",
}

// maxHealthChecks bounds the checks a heartbeat carries.
const maxHealthChecks = 10

// healthProber probes the cluster's health every interval, each probe
// bounded by timeout, and keeps the last result for the heartbeats.
type healthProber struct {
	probe    func(ctx context.Context) (rbd.Health, error)
	interval time.Duration
	timeout  time.Duration
	now      func() time.Time
	log      *slog.Logger

	mu   sync.Mutex
	last *rpc.CephHealth // nil before the first probe
	at   time.Time       // when last was taken
}

// Run probes until ctx ends.
func (p *healthProber) Run(ctx context.Context) error {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		p.probeOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *healthProber) probeOnce(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	h, err := p.probe(pctx)
	if ctx.Err() != nil {
		return
	}
	res := toWire(h, err, p.timeout)
	p.mu.Lock()
	prev := p.last
	p.last, p.at = res, p.now()
	p.mu.Unlock()
	if prev == nil || prev.Status != res.Status || prev.Error != res.Error {
		level := slog.LevelInfo
		if res.Status != "HEALTH_OK" {
			level = slog.LevelWarn
		}
		p.log.Log(ctx, level, "ceph health", "status", res.Status, "checks", res.Checks, "error", res.Error)
	}
}

// toWire is a probe's result as a heartbeat carries it.
func toWire(h rbd.Health, err error, timeout time.Duration) *rpc.CephHealth {
	if err != nil {
		msg := err.Error()
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rbd.ErrTimeout) {
			msg = fmt.Sprintf("the cluster did not answer ceph health within %s (stalled monitors?): %v", timeout, err)
		}
		return &rpc.CephHealth{Error: msg}
	}
	out := &rpc.CephHealth{Status: h.Status}
	for _, c := range h.Checks {
		if c.Severity != "HEALTH_ERR" && !slices.Contains(healthChecksThatMatter, c.Code) {
			out.Others++
			continue
		}
		if len(out.Checks) == maxHealthChecks {
			out.Others++
			continue
		}
		msg := c.Message
		if len(msg) > 200 {
			msg = msg[:200]
		}
		out.Checks = append(out.Checks, rpc.HealthCheck{Code: c.Code, Severity: c.Severity, Message: msg})
	}
	return out
}

// snapshot is a copy of the last result with its age at now; nil before
// the first probe.
func (p *healthProber) snapshot(now time.Time) *rpc.CephHealth {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last == nil {
		return nil
	}
	c := *p.last
	c.Checks = slices.Clone(p.last.Checks)
	c.AgeSeconds = max(now.Sub(p.at).Seconds(), 0)
	return &c
}

// heartbeater composes and sends the heartbeats of one agent process.
type heartbeater struct {
	caster   rpc.Caster
	interval time.Duration
	host     string
	region   string
	endpoint string
	boot     string
	capacity int
	running  func() []string
	health   *healthProber
	log      *slog.Logger
	seq      uint64
}

// Run sends a heartbeat every interval until ctx ends.
func (h *heartbeater) Run(ctx context.Context) error {
	tick := time.NewTicker(h.interval)
	defer tick.Stop()
	for {
		h.send(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// compose builds the next heartbeat. Its time is taken before the running
// set is copied: a transfer accepted (and reported, with a later time)
// before that time is in the set unless it ended.
func (h *heartbeater) compose() rpc.Heartbeat {
	h.seq++
	now := time.Now().UTC()
	return rpc.Heartbeat{Binary: "ferry-agent", Host: h.host, Region: h.region, Version: version.Release,
		Time: now, DataEndpoint: h.endpoint, Running: h.running(),
		BootID: h.boot, Seq: h.seq, MaxTransfers: h.capacity, CephHealth: h.health.snapshot(now)}
}

func (h *heartbeater) send(ctx context.Context) {
	hb := h.compose()
	// One interval at most: a heartbeat that could not go out by the next
	// one is abandoned (not sent again on a new connection with an old
	// running set); ferry-api ignores one older than the last it has.
	cctx, cancel := context.WithTimeout(ctx, h.interval)
	defer cancel()
	if err := h.caster.Cast(cctx, rpc.StatusTarget, rpc.MethodAgentHeartbeat, hb); err != nil && ctx.Err() == nil {
		// Unroutable until ferry-api has declared its queue.
		level := slog.LevelWarn
		if errors.Is(err, rpc.ErrUnroutable) {
			level = slog.LevelDebug
		}
		h.log.Log(ctx, level, "heartbeat not sent", "seq", hb.Seq, "error", err)
	}
}
