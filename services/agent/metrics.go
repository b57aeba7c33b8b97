package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferry-project/ferry/rpc"
)

// metrics are the agent's Prometheus metrics, on a registry of its own,
// served on [agent] metrics_listen when set.
type metrics struct {
	reg     *prometheus.Registry
	refused *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_agent_commands_refused_total",
			Help: "Commands refused because they are not signed by ferry-api, do not verify, expired, or do not match their grant, by method.",
		}, []string{"method"}),
	}
	m.reg.MustRegister(m.refused, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// refusedCommand logs and counts a command refused for its signature or
// grant; the transport dead-letters it (or answers the call with the error).
func (a *Agent) refusedCommand(env rpc.Envelope, err error) {
	a.metrics.refused.WithLabelValues(env.Method).Inc()
	a.log.Warn("command refused: not from ferry-api", "method", env.Method, "request_id", env.RequestID, "error", err)
}

// serveMetrics serves /metrics on addr until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	a.log.Info("metrics", "listen", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Log(ctx, slog.LevelError, "metrics listener stopped", "error", err)
		return err
	}
	return nil
}
