package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/db/state"
	"github.com/ferry-project/ferry/rpc"
)

// StatusQueue is the queue ferry-api consumes agents' reports from, bound
// to rpc.StatusTarget.
const StatusQueue = string(rpc.StatusTarget)

// statusAttempts bounds how often a report is re-applied after losing a
// race with another change of the same transfer.
const statusAttempts = 4

// StatusHandler handles the queue ferry.status: agent.status reports become
// transitions of the transfer (see the mapping in the package
// documentation) and agent.heartbeat upserts the agent's service row.
//
// Reports are idempotent: a redelivered or late report whose change the
// transfer already went through (or past) is dropped, as is a report of an
// older epoch (the transfer was re-dispatched since) or of an unknown
// transfer; each drop is logged, none is retried or dead-lettered. Only
// database failures are returned (temporary: the message is requeued), and
// undecodable bodies (permanent: dead-lettered).
func StatusHandler(store *db.DB, log *slog.Logger, opts ...StatusOption) rpc.Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &statusHandler{db: store, log: log}
	for _, o := range opts {
		o(h)
	}
	var mux rpc.Mux
	mux.Handle(rpc.MethodAgentStatus, h.status)
	mux.Handle(rpc.MethodAgentHeartbeat, h.heartbeat)
	return mux.Serve
}

type statusHandler struct {
	db       *db.DB
	log      *slog.Logger
	caster   rpc.Caster
	finalize func()
	// onHeartbeat is called after each recorded heartbeat (a reconcile
	// kick).
	onHeartbeat func()
	// users are the broker users of each region's agents ([api]
	// agent_users): a report or heartbeat about a region must come from
	// its user. A region absent from it is not checked.
	users map[string]string
	// end builds the transfer.end notification (nil: none).
	end EndNotifier
}

// WithAgentUsers makes the handler accept a region's reports and
// heartbeats only from the broker user of its agents (rpc.SenderFrom: the
// broker verifies a message's user_id).
func WithAgentUsers(users map[string]string) StatusOption {
	return func(h *statusHandler) { h.users = users }
}

// errForged: a report that does not come from whom it must (dropped, never
// applied, never retried).
var errForged = errors.New("status report refused")

// fromRegion checks that a message about region came from the broker user
// of its agents.
func (h *statusHandler) fromRegion(ctx context.Context, region string) error {
	want, ok := h.users[region]
	if !ok {
		return nil
	}
	if got := rpc.SenderFrom(ctx); got != want {
		return fmt.Errorf("%w: a report about region %s sent by broker user %q, its agents are %q", errForged, region, got, want)
	}
	return nil
}

// authorize checks that ev comes from the agent and region t is assigned
// to: its source region (and broker user), and once an agent has taken it,
// that very agent.
func (h *statusHandler) authorize(ctx context.Context, ev *rpc.StatusEvent, t *db.Transfer) error {
	if ev.Region != t.SourceRegion {
		return fmt.Errorf("%w: from region %q, the transfer's source region is %s", errForged, ev.Region, t.SourceRegion)
	}
	if err := h.fromRegion(ctx, ev.Region); err != nil {
		return err
	}
	if t.Agent != nil && *t.Agent != ev.Host {
		return fmt.Errorf("%w: from agent %q, the transfer is held by %s", errForged, ev.Host, *t.Agent)
	}
	return nil
}

// StatusOption configures StatusHandler.
type StatusOption func(*statusHandler)

// EndNotifier builds the transfer.end notification of a transfer that just
// reached completed, error or cancelled (replicate.Notifier.TransferEnded).
// Every terminal transition ferry-api makes writes it with the transition
// (TransitionOpts.Outbox), so it is sent once, and only if the transition
// happened.
type EndNotifier func(*db.Transfer) (*db.OutboxMessage, error)

// For is the TransitionOpts.Outbox of a transition to status to: n for a
// terminal status, nil otherwise (or when n is nil).
func (n EndNotifier) For(to db.Status) func(*db.Transfer) (*db.OutboxMessage, error) {
	if n == nil || !db.IsTerminal(to) {
		return nil
	}
	return n
}

// WithEndNotifier makes the handler's terminal transitions carry the
// transfer.end notification n builds.
func WithEndNotifier(n EndNotifier) StatusOption { return func(h *statusHandler) { h.end = n } }

// WithCanceller makes the handler answer an agent that reports working on
// a transfer already cancelled (cancelled while queued, its start already
// published) with a transfer.cancel to that agent.
func WithCanceller(c rpc.Caster) StatusOption { return func(h *statusHandler) { h.caster = c } }

// WithFinalizer makes a completed copy of a Cinder volume or backup go to
// finalizing (registration at the destination) instead of completed, and
// calls kick to wake whoever finalizes.
func WithFinalizer(kick func()) StatusOption { return func(h *statusHandler) { h.finalize = kick } }

// WithHeartbeatKick calls kick after each heartbeat of an agent that
// reports its running set (since 1.2) was recorded: the Redispatcher's
// Kick, so that a restarted agent's transfers are re-dispatched at once.
func WithHeartbeatKick(kick func()) StatusOption {
	return func(h *statusHandler) { h.onHeartbeat = kick }
}

// NeedsFinalizing reports whether a transfer's copy must be registered with
// Cinder before it is complete. A replication cycle's never is: its copy is
// the replica's new point, which stays Ferry's.
func NeedsFinalizing(t *db.Transfer) bool {
	return (t.SourceVolumeID != "" || t.SourceBackupID != "") && t.ReplicationID == ""
}

func (h *statusHandler) heartbeat(ctx context.Context, env rpc.Envelope) (any, error) {
	// Received now: taken before anything else, so that the
	// reconciliation (which compares it with the transfers' updated_at)
	// never counts a heartbeat as later than it arrived.
	received := h.db.Now()
	var hb rpc.Heartbeat
	if err := env.DecodeBody(&hb); err != nil {
		return nil, err
	}
	if err := h.fromRegion(ctx, hb.Region); err != nil {
		h.log.Warn("heartbeat dropped", "host", hb.Host, "region", hb.Region, "error", err)
		return nil, nil
	}
	rec := HeartbeatRecord(&hb, received)
	_, recorded, err := h.db.RecordHeartbeat(ctx, rec)
	if errors.Is(err, db.ErrInvalidArgument) {
		h.log.Warn("heartbeat dropped", "host", hb.Host, "region", hb.Region, "error", err)
		return nil, nil
	}
	if err != nil {
		return nil, rpc.Temporary(err)
	}
	if !recorded {
		h.log.Debug("stale heartbeat ignored", "host", hb.Host, "boot_id", hb.BootID, "seq", hb.Seq)
		return nil, nil
	}
	if h.onHeartbeat != nil && hb.BootID != "" {
		h.onHeartbeat()
	}
	return nil, nil
}

// HeartbeatRecord is what the database keeps of a heartbeat received at
// received (the store's clock): the probe's time is received minus the
// result's age, so the agent's clock never matters.
func HeartbeatRecord(hb *rpc.Heartbeat, received time.Time) db.Heartbeat {
	binary := hb.Binary
	if binary == "" {
		binary = db.AgentBinary
	}
	rec := db.Heartbeat{Binary: binary, Host: hb.Host, Region: hb.Region, Version: hb.Version,
		BootID: hb.BootID, Seq: int64(min(hb.Seq, 1<<62)), Running: hb.Running, Capacity: max(hb.MaxTransfers, 0),
		ReceivedAt: received}
	if c := hb.CephHealth; c != nil {
		age := time.Duration(min(max(c.AgeSeconds, 0), 86400*365) * float64(time.Second))
		h := &db.ServiceHealth{Status: c.Status, Others: c.Others, Error: truncate(c.Error, 1024), CheckedAt: received.Add(-age)}
		for _, ch := range c.Checks[:min(len(c.Checks), 32)] {
			h.Checks = append(h.Checks, db.HealthCheck{Code: truncate(ch.Code, 64), Severity: truncate(ch.Severity, 32), Message: truncate(ch.Message, 256)})
		}
		rec.Health = h
	}
	return rec
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

func (h *statusHandler) status(ctx context.Context, env rpc.Envelope) (any, error) {
	var ev rpc.StatusEvent
	if err := env.DecodeBody(&ev); err != nil {
		return nil, err
	}
	log := h.log.With("transfer_id", ev.TransferID, "event", ev.Event, "epoch", ev.Epoch,
		"region", ev.Region, "host", ev.Host, "request_id", env.RequestID)
	if ev.TransferID == "" || ev.Epoch <= 0 {
		log.Warn("status report dropped: no transfer id or epoch")
		return nil, nil
	}
	var err error
	for range statusAttempts {
		err = h.apply(ctx, &ev, requestID(env.RequestID), log)
		if !errors.Is(err, db.ErrConflict) && !errors.Is(err, db.ErrInvalidTransition) {
			break
		}
		// Another change of the transfer won the race: read it again.
	}
	switch {
	case err == nil:
		return nil, nil
	case errors.Is(err, db.ErrStaleEpoch):
		log.Info("stale status report dropped", "reason", err)
		return nil, nil
	case errors.Is(err, errForged):
		log.Warn("status report refused: not from the transfer's agent", "reason", err)
		return nil, nil
	case errors.Is(err, db.ErrNotFound):
		log.Warn("status report for an unknown transfer dropped")
		return nil, nil
	case errors.Is(err, db.ErrInvalidArgument), errors.Is(err, db.ErrConflict), errors.Is(err, db.ErrInvalidTransition):
		log.Warn("status report dropped", "error", err)
		return nil, nil
	}
	return nil, rpc.Temporary(fmt.Errorf("dispatch: status %s of %s: %w", ev.Event, ev.TransferID, err))
}

func requestID(id string) string {
	if len(id) > db.MaxRequestIDLength {
		return ""
	}
	return id
}

// apply applies one report to the transfer as it is now. ErrConflict or
// ErrInvalidTransition mean the transfer changed under it (try again).
func (h *statusHandler) apply(ctx context.Context, ev *rpc.StatusEvent, reqID string, log *slog.Logger) error {
	t, err := h.db.GetTransfer(ctx, ev.TransferID, db.AllProjectsScope())
	if err != nil {
		return err
	}
	if t.Epoch != ev.Epoch {
		return fmt.Errorf("%w: report for epoch %d, transfer is at epoch %d", db.ErrStaleEpoch, ev.Epoch, t.Epoch)
	}
	if err := h.authorize(ctx, ev, t); err != nil {
		return err
	}
	if h.caster != nil && ev.Host != "" && (ev.Event == rpc.EventAccepted || ev.Event == rpc.EventProgress) &&
		(t.Status == db.StatusCancelled || t.Status == db.StatusCancelling) {
		target := rpc.AgentHostTarget(ev.Region, ev.Host)
		if err := h.caster.Cast(ctx, target, rpc.MethodTransferCancel, rpc.TransferCancel{TransferID: t.ID, Epoch: t.Epoch}); err != nil {
			log.Warn("cancel of a transfer an agent runs after its cancellation not sent", "agent", ev.Host, "error", err)
		} else {
			log.Info("agent runs a cancelled transfer: cancel sent", "agent", ev.Host)
		}
	}
	a := applier{h: h, t: t, ev: ev, reqID: reqID}
	switch ev.Event {
	case rpc.EventAccepted:
		return a.advance(ctx, db.StatusAccepted, log)
	case rpc.EventProgress:
		if err := a.advance(ctx, db.StatusTransferring, log); err != nil {
			return err
		}
		if !db.IsActive(a.t.Status) {
			log.Debug("progress of an inactive transfer dropped", "status", a.t.Status)
			return nil
		}
		err := h.db.UpdateProgress(ctx, ev.TransferID, clamp(ev.BytesDone), clamp(ev.BytesTotal), clamp(ev.Rate))
		if errors.Is(err, db.ErrConflict) {
			// It left the active statuses meanwhile: the progress is moot.
			log.Debug("progress of a transfer that stopped dropped", "error", err)
			return nil
		}
		return err
	case rpc.EventCompleted:
		return a.complete(ctx, log)
	case rpc.EventError:
		return a.fail(ctx, log)
	case rpc.EventCancelled:
		return a.cancelled(ctx, log)
	}
	log.Warn("status report of an unknown event dropped")
	return nil
}

func clamp(v uint64) int64 {
	const maxInt64 = 1<<63 - 1
	if v > maxInt64 {
		return maxInt64
	}
	return int64(v)
}

// applier moves one transfer; t is kept current after every step.
type applier struct {
	h     *statusHandler
	t     *db.Transfer
	ev    *rpc.StatusEvent
	reqID string
}

// step makes one transition from the status t was read in.
func (a *applier) step(ctx context.Context, to db.Status, msg string, f db.TransferFields, errMsg string) error {
	if a.ev.Host != "" && a.t.Agent == nil {
		host := a.ev.Host
		f.Agent = &host
	}
	opts := db.TransitionOpts{
		Message: msg, Error: errMsg, RequestID: a.reqID,
		ExpectFrom: []db.Status{a.t.Status}, ExpectEpoch: a.ev.Epoch, Fields: f,
	}
	if to == db.StatusCompleted && a.t.ReplicationID != "" && a.ev.Event == rpc.EventCompleted {
		// The replication's new point: when its source snapshot was
		// taken, and the older points the destination removed.
		opts.Cycle = &db.CycleOutcome{Removed: a.ev.Removed, Size: clamp(a.ev.BytesTotal)} // the report's total: the image's size
		if a.ev.SnapshotTime != nil {
			opts.Cycle.SnapshotAt = a.ev.SnapshotTime.UTC()
		}
	}
	opts.Outbox = a.h.end.For(to)
	t, err := a.h.db.TransitionTransfer(ctx, a.t.ID, to, opts)
	if err != nil {
		return err
	}
	a.t = t
	return nil
}

func (a *applier) agent() string {
	if a.ev.Host != "" {
		return "agent " + a.ev.Host
	}
	return "agent"
}

// advance walks the happy path up to target; a transfer already there or
// past it (or off the path: error, cancelling, cancelled) is left alone.
func (a *applier) advance(ctx context.Context, target db.Status, log *slog.Logger) error {
	tr := state.Rank(target)
	for {
		cur := state.Rank(a.t.Status)
		if cur < 0 || cur >= tr {
			if a.t.Status != target {
				log.Debug("report already applied or overtaken", "status", a.t.Status, "target", target)
			}
			return nil
		}
		next := state.HappyPath()[cur+1]
		msg := fmt.Sprintf("%s reported %s", a.agent(), a.ev.Event)
		if next == db.StatusAccepted {
			msg = a.agent() + " accepted the transfer"
		}
		if err := a.step(ctx, next, msg, db.TransferFields{}, ""); err != nil {
			return err
		}
	}
}

func (a *applier) complete(ctx context.Context, log *slog.Logger) error {
	f := db.TransferFields{}
	// bytes_total is what the transfer copies (the allocated or changed
	// extents), as the progress reports said, not the image's size (the
	// report's BytesTotal): a finished transfer copied all it had to.
	done := clamp(a.ev.BytesDone)
	if a.ev.BytesDone > 0 || a.ev.BytesTotal > 0 {
		f.BytesTransferred = &done
		f.BytesTotal = &done
	}
	if a.ev.Digest != "" {
		d := a.ev.Digest
		f.Digest = &d
	}
	var still int64 // the copy is over: no rate any more
	f.RateBytesPerSecond = &still
	if m := db.Mode(a.ev.Mode); m == db.ModeFull || m == db.ModeIncremental {
		f.Mode = &m
	}
	if a.ev.Snapshot != "" {
		s := a.ev.Snapshot
		f.DestSnapshot = &s
		if a.t.SourceSnapshot == "" || strings.ContainsAny(a.t.SourceSnapshot, "*?[") {
			f.SourceSnapshot = &s // the one Ferry took, or the one a pattern named
		}
	}
	switch a.t.Status {
	case db.StatusCompleted:
		log.Debug("completion already applied")
		return nil
	case db.StatusCancelling:
		// The agent finished before the cancel reached it.
		return a.step(ctx, db.StatusCancelled, a.agent()+" completed the copy before the cancel reached it", f, "")
	case db.StatusError, db.StatusCancelled:
		log.Info("completion of a finished transfer dropped", "status", a.t.Status)
		return nil
	}
	if err := a.advance(ctx, db.StatusVerifying, log); err != nil {
		return err
	}
	if a.t.Status != db.StatusVerifying && a.t.Status != db.StatusFinalizing {
		return nil
	}
	msg := a.agent() + " completed the transfer"
	if a.ev.Digest != "" {
		msg += " (" + a.ev.Digest + ")"
	}
	if a.t.Status == db.StatusVerifying && NeedsFinalizing(a.t) && a.h.finalize != nil {
		msg = strings.Replace(msg, "completed the transfer", "completed the copy", 1) + "; registering it with Cinder"
		if err := a.step(ctx, db.StatusFinalizing, msg, f, ""); err != nil {
			return err
		}
		a.h.finalize()
		return nil
	}
	if a.t.Status == db.StatusFinalizing && NeedsFinalizing(a.t) && a.h.finalize != nil {
		log.Debug("completion already applied: finalizing")
		return nil
	}
	return a.step(ctx, db.StatusCompleted, msg, f, "")
}

func (a *applier) fail(ctx context.Context, log *slog.Logger) error {
	if db.IsTerminal(a.t.Status) {
		log.Debug("error of a finished transfer dropped", "status", a.t.Status)
		return nil
	}
	e := a.ev.Error
	if e == "" {
		e = "the agent reported an error without a message"
	}
	return a.step(ctx, db.StatusError, e, db.TransferFields{}, e)
}

func (a *applier) cancelled(ctx context.Context, log *slog.Logger) error {
	msg := a.agent() + " cancelled the transfer"
	switch {
	case a.t.Status == db.StatusCancelled || db.IsTerminal(a.t.Status):
		log.Debug("cancellation of a finished transfer dropped", "status", a.t.Status)
		return nil
	case db.CanTransition(a.t.Status, db.StatusCancelled):
		return a.step(ctx, db.StatusCancelled, msg, db.TransferFields{}, "")
	case db.CanTransition(a.t.Status, db.StatusCancelling):
		if err := a.step(ctx, db.StatusCancelling, msg, db.TransferFields{}, ""); err != nil {
			return err
		}
		return a.step(ctx, db.StatusCancelled, msg, db.TransferFields{}, "")
	}
	// finalizing cannot be cancelled: the agent's word is an error then.
	return a.step(ctx, db.StatusError, msg+" while finalizing", db.TransferFields{}, "cancelled by the agent while finalizing")
}
