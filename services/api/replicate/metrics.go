package replicate

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-project/ferry/db"
)

// Collector exports the replications' state to Prometheus, read from the
// database at each scrape (db.ReplicationStats), so that every ferry-api
// process reports the same values whichever schedules.
type Collector struct {
	DB  *db.DB
	Log *slog.Logger
	// Timeout bounds the database read of one scrape (default 10 s).
	Timeout time.Duration
}

var (
	lagDesc = prometheus.NewDesc("ferry_replication_lag_seconds",
		"Seconds since the newest point the replica holds was taken at the source (absent before the first point).",
		[]string{"replication_id", "project_id"}, nil)
	breachedDesc = prometheus.NewDesc("ferry_replication_rpo_breached",
		"1 when the replication's lag exceeds its RPO (or it has no point yet an RPO after its creation), else 0.",
		[]string{"replication_id", "project_id"}, nil)
	cyclesDesc = prometheus.NewDesc("ferry_replication_cycles_total",
		"Replication cycles, by result: completed, failed (error or cancelled) and skipped (the previous cycle still ran), over the live replications.",
		[]string{"result"}, nil)
	bytesDesc = prometheus.NewDesc("ferry_replication_cycle_bytes",
		"Bytes the replication's last completed cycle copied.",
		[]string{"replication_id", "project_id"}, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{lagDesc, breachedDesc, cyclesDesc, bytesDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rs, err := c.DB.ReplicationStats(ctx)
	if err != nil {
		if c.Log != nil {
			c.Log.Warn("replication metrics", "error", err)
		}
		ch <- prometheus.NewInvalidMetric(lagDesc, err)
		return
	}
	now := c.DB.Now()
	var completed, failed, skipped int64
	for i := range rs {
		r := &rs[i]
		lag, ok, breached := Lag(r, now)
		if ok {
			ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, lag.Seconds(), r.ID, r.ProjectID)
		}
		b := 0.0
		if breached {
			b = 1
		}
		ch <- prometheus.MustNewConstMetric(breachedDesc, prometheus.GaugeValue, b, r.ID, r.ProjectID)
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.GaugeValue, float64(r.BytesLastCycle), r.ID, r.ProjectID)
		completed += r.CyclesCompleted
		failed += r.CyclesFailed
		skipped += r.CyclesSkipped
	}
	for _, v := range []struct {
		result string
		n      int64
	}{{"completed", completed}, {"failed", failed}, {"skipped", skipped}} {
		ch <- prometheus.MustNewConstMetric(cyclesDesc, prometheus.CounterValue, float64(v.n), v.result)
	}
}
