package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/rpc/amqp"

	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/stream"
	"github.com/ferry-project/ferry/services/agent/transfer"
	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/daemon"
	"github.com/ferry-project/ferry/services/internal/pki"
)

// Agent is one running ferry-agent.
type Agent struct {
	cfg    *config.Config
	log    *slog.Logger
	conns  *rbd.Pool
	server *stream.Server
	Dest   *transfer.Dest
	Source *transfer.Source
	ln     net.Listener
	host   string
	sealer *transfer.Sealer
	// verifier checks that commands come from ferry-api.
	verifier *rpc.Verifier
	metrics  *metrics
	// boot is random per process: ferry-api learns from a new one that
	// the transfers the previous process ran are gone.
	boot   string
	health *healthProber
	// work runs what outlives a command (a drill's flatten).
	work background
}

// New connects to the region's cluster, checks the pool allow-list and the
// certificates, and binds the data port.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Agent, error) {
	ag, err := newSource(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	a, t := cfg.Agent, cfg.TLS
	fail := func(err error) (*Agent, error) {
		ag.conns.Close()
		return nil, err
	}
	serverTLS, err := stream.ServerTLSConfig(t.CAFile, t.CertFile, t.KeyFile)
	if err != nil {
		return fail(fmt.Errorf("[tls]: %w", err))
	}
	ag.server, err = stream.NewServer(stream.ServerConfig{TLSConfig: serverTLS, Logger: ag.log,
		MaxSessions: a.MaxSessions, MaxConnections: a.MaxDataConnections, Window: uint64(a.StreamWindow), Writers: a.StreamWriters})
	if err != nil {
		return fail(err)
	}
	// Accepted data connections inherit the listener's congestion control.
	lc := net.ListenConfig{Control: stream.CongestionControl(a.TCPCongestion)}
	ag.ln, err = lc.Listen(context.Background(), "tcp", a.DataListen)
	if err != nil {
		return fail(fmt.Errorf("[agent] data_listen: %w", err))
	}
	endpoint, serverName := advertised(a.DataAdvertise, ag.ln.Addr().String(), ag.host)
	ag.Dest = transfer.NewDest(transfer.DestConfig{Connect: ag.connector(), Server: ag.server, Pools: a.Pools,
		Endpoint: endpoint, ServerName: serverName, Sealer: ag.sealer, Log: ag.log})
	ag.log.Info("data port", "listen", ag.ln.Addr().String(), "advertise", endpoint)
	return ag, nil
}

// newSource is an agent that can only send: cluster, pools, certificates.
func newSource(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Agent, error) {
	a, t := cfg.Agent, cfg.TLS
	log = log.With("region", a.Region, "host", cfg.Hostname())
	bundle, err := pki.LoadTLS(t.CAFile, t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("[tls]: %w", err)
	}
	// The certificate names this agent's region and role: other agents
	// check it against the transfers they serve.
	if err := pki.CheckIdentity(bundle.Leaf, a.Region, pki.RoleAgent); err != nil {
		return nil, fmt.Errorf("[tls] cert_file %s: %w (issue it with ferry-manage pki issue --region %s)", t.CertFile, err, a.Region)
	}
	comp, err := stream.ParseCompression(a.Compression)
	if err != nil {
		return nil, fmt.Errorf("[agent] compression: %w", err)
	}
	key, err := pki.LoadStateKey(a.StateKeyFile)
	if err != nil {
		return nil, fmt.Errorf("[agent] state_key_file: %w (ferry-manage pki state-key makes one; every agent of the region needs the same file)", err)
	}
	sealer, err := transfer.NewSealer(key)
	if err != nil {
		return nil, fmt.Errorf("[agent] state_key_file: %w", err)
	}
	pub, err := pki.LoadVerifyKey(a.CommandVerifyKeyFile)
	if err != nil {
		return nil, fmt.Errorf("[agent] command_verify_key_file: %w (signing.pub of ferry-manage pki signing-key)", err)
	}
	// One connection to the region's cluster, shared by every transfer
	// and closed after IdleConnection without one.
	ag := &Agent{cfg: cfg, log: log, conns: rbd.NewPool(IdleConnection), host: cfg.Hostname(), sealer: sealer,
		verifier: rpc.NewVerifier(pub), metrics: newMetrics(), boot: newBootID()}
	ag.health = ag.healthProber()
	cluster, release, err := ag.connector()(ctx)
	if err != nil {
		return nil, fmt.Errorf("[agent] ceph_conf %s: %w", a.CephConf, err)
	}
	defer release()
	for _, p := range a.Pools {
		if err := cluster.CheckPool(ctx, p); err != nil {
			release()
			ag.conns.Close()
			return nil, fmt.Errorf("[agent] pools: %w", err)
		}
	}
	log.Info("connected to ceph", "fsid", cluster.FSID(), "pools", a.Pools)
	ag.Source = transfer.NewSource(ag.connector(), a.Pools, transfer.Options{
		Streams:        a.Streams,
		ReadAhead:      a.StreamReadAhead,
		ChunkSize:      uint64(a.ChunkSize),
		Compression:    comp,
		BandwidthLimit: int64(a.BandwidthLimit),
		Congestion:     a.TCPCongestion,
		Sealer:         sealer,
		ClientTLS: func(name string) (*tls.Config, error) {
			return stream.ClientTLSConfig(t.CAFile, t.CertFile, t.KeyFile, name)
		},
	}, log)
	return ag, nil
}

// advertised is where sources reach this agent and the name its
// certificate must carry: data_advertise, else the listening address with
// a wildcard host replaced by the hostname.
func advertised(advertise, listening, hostname string) (endpoint, serverName string) {
	if advertise != "" {
		host, _, _ := net.SplitHostPort(advertise)
		return advertise, host
	}
	host, port, _ := net.SplitHostPort(listening)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = hostname
	}
	return net.JoinHostPort(host, port), host
}

// Serve runs the data port and consumes the region's and this agent's
// queues on bus until ctx ends.
func (a *Agent) Serve(ctx context.Context, bus Bus) error {
	r := newRunner(a, bus, bus)
	defer r.stopAll()
	shared, own := a.handlers(r)
	region := a.cfg.Agent.Region
	// The background loops: one failing stops them all.
	g, gctx := errgroup.WithContext(ctx)
	a.work.open(gctx)
	g.Go(func() error { return a.server.Serve(gctx, a.ln) })
	if addr := a.cfg.Agent.MetricsListen; addr != "" {
		g.Go(func() error { return a.serveMetrics(gctx, addr) })
	}
	g.Go(func() error {
		t := string(rpc.AgentTarget(region))
		return bus.Consume(gctx, t, []string{t}, shared.Serve)
	})
	g.Go(func() error {
		t := string(rpc.AgentHostTarget(region, a.host))
		return bus.Consume(gctx, t, []string{t}, own.Serve)
	})
	g.Go(func() error { return a.heartbeater(bus, r).Run(gctx) })
	g.Go(func() error { return a.health.Run(gctx) })
	g.Go(func() error { return a.work.Run(gctx) })
	if err := g.Wait(); err != nil && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
		return err
	}
	return nil
}

// Bus is what the agent needs of the message bus.
type Bus interface {
	rpc.Caster
	rpc.Caller
	Consume(ctx context.Context, queue string, bindings []string, h rpc.Handler) error
}

// heartbeater is the agent's heartbeat loop (see liveness.go).
func (a *Agent) heartbeater(bus rpc.Caster, r *runner) *heartbeater {
	return &heartbeater{caster: bus, interval: time.Duration(a.cfg.Agent.HeartbeatInterval) * time.Second,
		host: a.host, region: a.cfg.Agent.Region, endpoint: a.Dest.Endpoint(), boot: a.boot,
		capacity: a.cfg.Agent.MaxTransfers, running: r.runningIDs, health: a.health, log: a.log}
}

// healthProber probes the region's cluster every health_interval, each
// probe bounded by ceph_op_timeout (and at most 20 s).
func (a *Agent) healthProber() *healthProber {
	timeout, interval := 20*time.Second, 30*time.Second
	if s := a.cfg.Agent.CephOpTimeout; s > 0 {
		timeout = min(time.Duration(s)*time.Second, timeout)
	}
	if s := a.cfg.Agent.HealthInterval; s > 0 {
		interval = time.Duration(s) * time.Second
	}
	connect := a.connector()
	return &healthProber{
		interval: interval, timeout: timeout, now: time.Now, log: a.log,
		probe: func(ctx context.Context) (rbd.Health, error) {
			c, release, err := connect(ctx)
			if err != nil {
				return rbd.Health{}, err
			}
			defer release()
			// A blocklisted connection fails every operation, yet the
			// monitors still answer it: an OSD is asked, and such a
			// connection is replaced for the next operations.
			if len(a.cfg.Agent.Pools) > 0 {
				if err := c.CheckBlocklisted(ctx, a.cfg.Agent.Pools[0]); errors.Is(err, rbd.ErrBlocklisted) {
					a.log.Warn("the cluster connection was blocklisted: replaced", "error", err)
					a.conns.Reset(a.connOptions())
				}
			}
			return c.Health(ctx)
		},
	}
}

// Close stops sessions and releases the cluster.
func (a *Agent) Close(ctx context.Context) {
	if a.Dest != nil {
		a.Dest.Close()
	}
	if a.server != nil {
		if err := a.server.Close(ctx); err != nil {
			a.log.Warn("closing the data port", "error", err)
		}
	}
	if a.ln != nil {
		a.ln.Close()
	}
	a.conns.Close()
}

// IdleConnection is how long an unused cluster connection stays open.
const IdleConnection = 5 * time.Minute

// connector acquires the region's cluster connection from the pool.
func (a *Agent) connector() transfer.Connector {
	o := a.connOptions()
	return func(ctx context.Context) (*rbd.Cluster, func(), error) { return a.conns.Acquire(ctx, o) }
}

// connOptions are the region's cluster connection's options.
func (a *Agent) connOptions() rbd.Options {
	return rbd.Options{ConfFile: a.cfg.Agent.CephConf, User: a.cfg.Agent.CephUser, Keyring: a.cfg.Agent.CephKeyring,
		Timeout: time.Duration(a.cfg.Agent.CephOpTimeout) * time.Second}
}

// Run is ferry-agent's body.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	applyMemoryLimit(cfg.Agent, log)
	a, err := New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close(context.WithoutCancel(ctx))
	opts := amqp.DefaultOptions()
	opts.Name, opts.Logger = "ferry-agent "+a.host, log
	opts.Passive = true // ferry-api owns the topology
	bus, err := amqp.New(ctx, cfg.Default.TransportURL, opts)
	if err != nil {
		return fmt.Errorf("[DEFAULT] transport_url: %w", err)
	}
	defer bus.Close(context.WithoutCancel(ctx))
	return a.Serve(ctx, bus)
}

// Main is ferry-agent's main: flags, configuration, logging, signals.
// `ferry-agent transfer …` runs one transfer from this region instead of
// the daemon (the data-plane harness).
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "transfer" {
		return transferMain(args[1:], stdout, stderr)
	}
	return daemon.Main("ferry-agent", "Ferry's region agent: reads and writes RBD images in this region's Ceph cluster and streams them to other regions' agents over mutual TLS.",
		args, stderr, (*config.Config).ForAgent, Run)
}

// applyMemoryLimit sets the Go heap's soft limit from [agent] memory_limit,
// unless GOMEMLIMIT (the runtime's own setting) is given.
func applyMemoryLimit(a config.Agent, log *slog.Logger) {
	if a.MemoryLimit <= 0 || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(int64(a.MemoryLimit))
	log.Debug("go heap soft limit", "memory_limit", int64(a.MemoryLimit))
}
