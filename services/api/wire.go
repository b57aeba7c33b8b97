package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/gin-gonic/gin"
	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/auth"
	"github.com/ferry-project/ferry/services/api/dispatch"
	"github.com/ferry-project/ferry/services/api/replicate"
	"github.com/ferry-project/ferry/services/internal/config"
)

// ServiceType is the catalog type of Ferry's endpoints.
const ServiceType = "volume-ferry"

// Wiring is what Run builds around the router: Keystone authentication,
// the policy, and the bus (outbox publisher, status consumer).
type Wiring struct {
	Validator auth.TokenValidator
	Policy    *auth.Policy
	Bus       interface {
		rpc.Caster
		rpc.Caller
		Consume(ctx context.Context, queue string, bindings []string, h rpc.Handler) error
	}
	// Signer signs the commands sent to agents (transfer.start,
	// transfer.cancel); every cast to an agent goes through it.
	Signer *rpc.Signer
	// StatusQueue is the queue of agent reports, bound to ferry.status;
	// empty means ferry.status (tests name one of their own).
	StatusQueue string
	// Cinder resolves volume sources and registers their copies; nil
	// when [cinder] volume_pools is empty.
	Cinder interface {
		CinderSources
		Registrar
	}
}

// loop is one of ferry-api's background loops.
type loop struct {
	name string
	run  func(context.Context) error
}

// Start installs the hooks on s and runs its background loops (outbox
// publisher, re-dispatcher, garbage collector, finalizer, status consumer)
// until ctx ends; a loop that fails is logged. Run runs them with the HTTP
// server under one errgroup instead.
func (s *Server) Start(ctx context.Context, w Wiring) {
	loops := s.wire(w)
	go func() {
		if err := runLoops(ctx, loops); err != nil && ctx.Err() == nil {
			s.log.Error("background loop stopped", "error", err)
		}
	}()
}

// runLoops runs loops under one errgroup: the first to fail (or to stop
// before ctx ends) stops the others, and its error is returned.
func runLoops(ctx context.Context, loops []loop) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, l := range loops {
		g.Go(func() error {
			err := l.run(gctx)
			if err == nil && gctx.Err() == nil {
				err = errors.New("stopped")
			}
			if err != nil && gctx.Err() == nil {
				return fmt.Errorf("%s: %w", l.name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// wire installs the hooks on s and returns its background loops.
func (s *Server) wire(w Wiring) []loop {
	cfg, log := s.cfg, s.log
	// The one place where agent commands are signed.
	signed := rpc.SigningCaster{Caster: w.Bus, Signer: w.Signer}
	pub := &dispatch.Publisher{
		DB: s.db, Caster: signed, Owner: dispatch.DefaultOwner(),
		Interval: time.Duration(cfg.API.OutboxPollInterval) * time.Second, Log: log,
		Retention: time.Duration(cfg.API.OutboxRetention) * time.Hour,
	}
	// A start for a region whose agents have not run yet waits in its
	// queue instead of bouncing.
	if d, ok := w.Bus.(dispatch.QueueDeclarer); ok {
		pub.Declarer = d
	}
	// OpenStack notifications (transfer.end, replication.rpo_*),
	// published as they are: OpenStack's envelope, not Ferry's; none
	// unless [oslo_messaging_notifications] driver is messagingv2.
	var notifier *replicate.Notifier
	var endNotify dispatch.EndNotifier
	if cfg.Notifications.Enabled() {
		notifier = &replicate.Notifier{Host: cfg.Hostname(), Topic: cfg.Notifications.Topics[0]}
		endNotify = notifier.TransferEnded
	}
	if raw, ok := w.Bus.(rpc.RawPublisher); ok {
		pub.Raw = raw
	}
	redis := &dispatch.Redispatcher{DB: s.db, DownAfter: time.Duration(cfg.API.AgentDownTime) * time.Second, Publish: pub.Kick, Log: log,
		EndNotify: endNotify,
		// A transfer whose agent is gone may have completed: the
		// destination's agents are asked (signed) before it is re-run.
		Prober: dispatch.RPCProber{Caller: rpc.SigningCaller{Caller: w.Bus, Signer: w.Signer}}}
	jan := &dispatch.Janitor{DB: s.db, Grace: time.Duration(cfg.API.CleanupGrace) * time.Second, Publish: pub.Kick, Log: log}
	fin := &Finalizer{DB: s.db, Log: log, Owner: pub.Owner, EndNotify: endNotify}
	if w.Cinder != nil {
		fin.Cinder = w.Cinder
	}
	statusQueue := w.StatusQueue
	if statusQueue == "" {
		statusQueue = string(rpc.StatusTarget)
	}
	status := dispatch.StatusHandler(s.db, log, dispatch.WithCanceller(signed), dispatch.WithFinalizer(fin.Kick),
		dispatch.WithAgentUsers(cfg.API.AgentUsers), dispatch.WithHeartbeatKick(redis.Kick), dispatch.WithEndNotifier(endNotify))
	// Continuous replication: the scheduler, the drills and the metrics.
	sched := &replicate.Scheduler{DB: s.db, Notifier: notifier, Tick: secondsDur(cfg.API.ReplicationTick),
		CycleRetention: time.Duration(cfg.API.CycleRetention) * time.Hour, Owner: pub.Owner, Publish: pub.Kick, Log: log}
	drills := &replicate.DrillRunner{DB: s.db, Caller: rpc.SigningCaller{Caller: w.Bus, Signer: w.Signer},
		Flatten: cfg.API.DrillFlatten, Owner: pub.Owner, Log: log}
	// Failovers and failbacks.
	failovers := &replicate.FailoverRunner{DB: s.db, Caller: rpc.SigningCaller{Caller: w.Bus, Signer: w.Signer},
		Owner: pub.Owner, Log: log}
	// Consistency groups' cycles.
	groups := &replicate.GroupRunner{DB: s.db, Caller: rpc.SigningCaller{Caller: w.Bus, Signer: w.Signer},
		Owner: pub.Owner, Publish: pub.Kick, KickFailovers: failovers.Kick, Log: log}
	var failoverVolumes FailoverVolumes
	if w.Cinder != nil {
		drills.Cinder = w.Cinder
		if vc, ok := w.Cinder.(replicate.VolumeChecker); ok {
			sched.Volumes = vc
		}
		if fc, ok := w.Cinder.(replicate.FailoverCinder); ok {
			failovers.Cinder = fc
		}
		if fv, ok := w.Cinder.(FailoverVolumes); ok {
			failoverVolumes = fv
		}
		if gv, ok := w.Cinder.(replicate.GroupVolumes); ok {
			groups.Volumes = gv
		}
	}
	if s.metrics == nil {
		s.metrics = newMetrics()
	}
	// Once per registry (a server wired again keeps its collector).
	if err := s.metrics.reg.Register(&replicate.Collector{DB: s.db, Log: log}); err != nil {
		log.Debug("replication metrics already registered", "error", err)
	}
	loops := []loop{
		{"outbox publisher", pub.Run},
		{"re-dispatcher", redis.Run},
		{"garbage collector", jan.Run},
		{"finalizer", fin.Run},
		{"status consumer", func(ctx context.Context) error {
			return w.Bus.Consume(ctx, statusQueue, []string{string(rpc.StatusTarget)}, status)
		}},
		{"replication scheduler", sched.Run},
		{"drill runner", drills.Run},
		{"failover runner", failovers.Run},
		{"group runner", groups.Run},
	}
	s.hooks = Hooks{
		Authenticate: auth.Middleware(auth.NewCache(w.Validator, auth.CacheOptionsFrom(cfg.KeystoneAuthtoken)),
			withLogger(auth.OptionsFrom(cfg.KeystoneAuthtoken), log)),
		CallerOf: callerOf,
		Allowed: func(rule string, c *Caller, target map[string]string) bool {
			ac, _ := c.creds.(*auth.Context)
			return ac != nil && w.Policy.Enforce(rule, ac, target)
		},
		StartMessage: func(ctx context.Context, t *db.Transfer) (*db.OutboxMessage, error) {
			return dispatch.NewStartMessageWithRequestID(t, rpc.RequestIDFrom(ctx))
		},
		CancelMessage: func(ctx context.Context, t *db.Transfer) (*db.OutboxMessage, error) {
			return dispatch.NewCancelMessage(rpc.RequestIDFrom(ctx), t)
		},
		CleanupMessages: dispatch.CleanupMessages,
		Kick:            pub.Kick,
		EndMessage:      endNotify,
		KickScheduler:   sched.Kick,
		KickDrills:      drills.Kick,
		KickFailovers:   failovers.Kick,
		KickGroups:      groups.Kick,
		Failovers:       failoverVolumes,
	}
	if w.Cinder != nil {
		s.hooks.Cinder = w.Cinder
	}
	return loops
}

// withLogger completes the middleware's options with the logger and the
// API's error writer.
func withLogger(o auth.Options, log *slog.Logger) auth.Options {
	o.Logger, o.Fault = log, writeError
	return o
}

// callerOf turns the authenticated token into a Caller; the regions are
// those of the volume-ferry endpoints in the token's catalog.
func callerOf(c *gin.Context) *Caller {
	ac := auth.FromGin(c)
	if ac == nil {
		return nil
	}
	caller := &Caller{UserID: ac.UserID, ProjectID: ac.ProjectID, Roles: ac.Roles, creds: ac}
	if ac.Catalog != nil {
		for _, e := range ac.Catalog.Entries {
			if e.Type != ServiceType {
				continue
			}
			for _, ep := range e.Endpoints {
				r := ep.Region
				if r == "" {
					r = ep.RegionID
				}
				if r != "" && !slices.Contains(caller.Regions, r) {
					caller.Regions = append(caller.Regions, r)
				}
			}
		}
	}
	return caller
}

// policyFrom loads [api] policy_file (a missing file means the defaults).
func policyFrom(cfg *config.Config) (*auth.Policy, error) {
	p, err := auth.LoadPolicy(cfg.API.PolicyFile)
	if err != nil {
		return nil, fmt.Errorf("[api] policy_file: %w", err)
	}
	return p, nil
}
