package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
)

// Redispatcher is the one place where ferry-api decides that an agent no
// longer runs a transfer it was given, and what becomes of the transfer.
// Each sweep applies these rules:
//
//   - Agent down (no heartbeat for DownAfter): a transfer it held in
//     accepted, preparing or transferring goes back to queued (its epoch
//     grows, so the old agent's late reports are refused) with a new
//     transfer.start; the next agent resumes from the checkpoint in the
//     destination image, and the RBD exclusive lock keeps a partitioned old
//     agent from writing it again. A transfer past the copy (verifying)
//     cannot be resumed elsewhere and ends in error (retry is one request);
//     a cancelling one ends cancelled, since nothing runs it any more.
//   - Agent up, but it no longer runs a transfer (reconciliation): an agent
//     since 1.2 lists what it runs in every heartbeat, with a boot id. A
//     transfer it holds (same region and host) in accepted, preparing,
//     transferring or cancelling that is missing from its last two
//     heartbeats, both received after the transfer's last change
//     (updated_at, the store's clock), is not running: it is handled as if
//     the agent were down, at once. Two heartbeats, and received after the
//     change: a heartbeat composed before the agent took the transfer may
//     arrive after its "accepted" report (the API handles reports
//     concurrently), but the one after it lists the transfer (the agent
//     adds a transfer to its set before it reports accepted). A new boot
//     id means that everything the old process ran is gone: the old
//     boot's list no longer counts, so the new process's first heartbeat
//     settles the transfers not changed since the old one's last.
//   - A cancel no agent can act on: cancelling without an agent ends
//     cancelled.
//   - A start lost in queued (taken by an agent that died before it
//     reported, or dead-lettered): a transfer queued for QueuedAfter while
//     an agent of its region (up, enabled, since 1.2) had a free slot in its
//     last two heartbeats, and that no agent lists as running, gets a new
//     epoch and a new transfer.start (a requeue event queued → queued).
//     After MaxRepublish of these since its last retry it ends in error;
//     at most RepublishPerSweep are re-published per sweep.
//
// With a Prober, a transfer about to be re-dispatched or failed because
// its agent is gone is first looked for at the destination: a copy that
// completed (its terminal report lost) completes instead.
type Redispatcher struct {
	DB *db.DB
	// DownAfter is [api] agent_down_time: no heartbeat for this long
	// means the agent is down.
	DownAfter time.Duration
	// Interval between sweeps (default DownAfter/4); Kick sweeps sooner.
	Interval time.Duration
	// QueuedAfter is how long a transfer stays queued, while its region
	// has an agent with a free slot, before its start is re-published
	// (default 3 DownAfter).
	QueuedAfter time.Duration
	// MaxRepublish bounds the re-publications of one transfer's start
	// (default 3); RepublishPerSweep those of one sweep (default 10).
	MaxRepublish      int
	RepublishPerSweep int
	// Prober, when set, asks the destination about a transfer whose agent
	// is gone before it is re-dispatched (see DestinationProber).
	Prober DestinationProber
	// Finalize wakes the finalizer after a probe completed a Cinder copy
	// (may be nil).
	Finalize func()
	// Publish wakes the outbox publisher (may be nil).
	Publish func()
	// EndNotify builds the transfer.end notification of the transfers it
	// ends (may be nil).
	EndNotify EndNotifier
	Log       *slog.Logger

	once sync.Once
	kick chan struct{}
	// pageSize of heldTransfers (0: db.MaxListLimit; tests make it small).
	pageSize int
}

// Defaults of Redispatcher.
const (
	DefaultMaxRepublish      = 3
	DefaultRepublishPerSweep = 10
	// probeTimeout bounds one DestinationProber.Probe.
	probeTimeout = 10 * time.Second
	// kickGap is the shortest time between two kicked sweeps.
	kickGap = 500 * time.Millisecond
)

// Kick asks for a sweep now (e.g. after a heartbeat); it never blocks.
func (r *Redispatcher) Kick() {
	select {
	case r.kicks() <- struct{}{}:
	default:
	}
}

func (r *Redispatcher) kicks() chan struct{} {
	r.once.Do(func() { r.kick = make(chan struct{}, 1) })
	return r.kick
}

// Run sweeps until ctx ends: every Interval, and when kicked.
func (r *Redispatcher) Run(ctx context.Context) error {
	kicks := r.kicks()
	iv := r.Interval
	if iv <= 0 {
		iv = max(r.DownAfter/4, time.Second)
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		swept := time.Now()
		if _, err := r.Sweep(ctx); err != nil && ctx.Err() == nil {
			r.log().Warn("re-dispatch sweep failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-kicks:
			// Heartbeats kick often (every agent, every interval): one
			// sweep per kickGap at most.
			if wait := kickGap - time.Since(swept); wait > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(wait):
				}
			}
		}
	}
}

func (r *Redispatcher) log() *slog.Logger {
	if r.Log == nil {
		return slog.Default()
	}
	return r.Log
}

// Sweep applies the rules once; it returns how many transfers it moved
// (re-dispatched, ended or re-published).
func (r *Redispatcher) Sweep(ctx context.Context) (int, error) {
	svcs, err := r.DB.ListServices(ctx)
	if err != nil {
		return 0, err
	}
	now := r.DB.Now()
	moved := 0
	var errs []error
	add := func(n int, err error) {
		moved += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Every transfer an agent may hold, in one query (paged), by agent.
	held, err := r.heldTransfers(ctx)
	if err != nil {
		return 0, err
	}
	byAgent := map[[2]string][]db.Transfer{}
	var agentless []db.Transfer
	for _, t := range held {
		if t.Agent == nil || *t.Agent == "" {
			if t.Status == db.StatusCancelling {
				agentless = append(agentless, t)
			}
			continue
		}
		k := [2]string{t.SourceRegion, *t.Agent}
		byAgent[k] = append(byAgent[k], t)
	}
	for i := range svcs {
		s := &svcs[i]
		list := byAgent[[2]string{s.Region, s.Host}]
		if s.Binary != db.AgentBinary || len(list) == 0 {
			continue
		}
		if !db.ServiceIsUp(s, now, r.DownAfter) {
			add(r.sweepAgent(ctx, s, nil, list))
			continue
		}
		if reconcilable(s) {
			add(r.sweepAgent(ctx, s, s, list))
		}
	}
	add(r.sweepAgentless(ctx, agentless))
	add(r.sweepQueued(ctx, svcs, now))
	if moved > 0 && r.Publish != nil {
		r.Publish()
	}
	return moved, errors.Join(errs...)
}

// heldTransfers are the transfers in the statuses an agent holds them in
// (accepted … verifying, and cancelling), every page.
func (r *Redispatcher) heldTransfers(ctx context.Context) ([]db.Transfer, error) {
	var out []db.Transfer
	size := r.pageSize
	if size <= 0 {
		size = db.MaxListLimit
	}
	opts := db.ListOpts{Scope: db.AllProjectsScope(), Limit: size, SortKey: "id", SortDir: "asc",
		Statuses: []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusVerifying, db.StatusCancelling}}
	for {
		page, more, err := r.DB.ListTransfers(ctx, opts)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
		if !more || len(page) == 0 {
			return out, nil
		}
		opts.Marker = page[len(page)-1].ID
	}
}

// runningNow are the transfers agent s may run: those its last two
// heartbeats listed, but only the last one's when the boot changed (a new
// process runs nothing the old one did).
func runningNow(s *db.Service) []string {
	ids := s.RunningIDs()
	if s.PrevBootID == s.BootID {
		ids = append(ids, s.PrevRunningIDs()...)
	}
	return ids
}

// reconcilable: the agent's last two heartbeats both listed its running
// transfers (agents since 1.2).
func reconcilable(s *db.Service) bool {
	return s.BootID != "" && s.PrevBootID != "" && s.PrevHeartbeatAt != nil
}

// sweepAgent handles the transfers of agent s: all of them when it is
// down (live nil), those its heartbeats no longer list when it is up.
func (r *Redispatcher) sweepAgent(ctx context.Context, s *db.Service, live *db.Service, held []db.Transfer) (int, error) {
	statuses := []db.Status{db.StatusAccepted, db.StatusPreparing, db.StatusTransferring, db.StatusCancelling}
	if live == nil {
		// Not finalizing: the agents are done then; the API registers the
		// copy with Cinder, whatever became of the agent.
		statuses = append(statuses, db.StatusVerifying)
	}
	var list []db.Transfer
	for _, t := range held {
		if slices.Contains(statuses, t.Status) {
			list = append(list, t)
		}
	}
	var running []string
	if live != nil {
		running = runningNow(live)
	}
	moved := 0
	for i := range list {
		t := &list[i]
		var why string
		if live == nil {
			why = fmt.Sprintf("agent %s down (no heartbeat since %s)", s.Host, s.LastHeartbeatAt.Format(time.RFC3339))
		} else {
			if slices.Contains(running, t.ID) || !live.PrevHeartbeatAt.After(t.UpdatedAt) {
				continue // running, or not yet two heartbeats since its last change
			}
			why = fmt.Sprintf("agent %s no longer runs it (not in its heartbeats of %s and %s", s.Host,
				live.PrevHeartbeatAt.Format(time.RFC3339), live.LastHeartbeatAt.Format(time.RFC3339))
			if live.PrevBootID != live.BootID {
				why += "; the agent restarted"
			}
			why += ")"
		}
		ok, err := r.orphaned(ctx, t, why)
		if err != nil {
			return moved, err
		}
		if ok {
			moved++
		}
	}
	return moved, nil
}

// orphaned moves a transfer that nothing runs any more: re-dispatched,
// cancelled, failed, or completed when the destination says the copy
// finished. It reports whether it moved the transfer (false: something
// else moved it first).
func (r *Redispatcher) orphaned(ctx context.Context, t *db.Transfer, why string) (bool, error) {
	log := r.log().With("transfer_id", t.ID, "agent", deref(t.Agent), "status", t.Status)
	if t.Status != db.StatusCancelling && r.Prober != nil {
		done, err := r.completeFromDestination(ctx, t, why, log)
		if done || err != nil {
			return done, err
		}
	}
	var to db.Status
	switch t.Status {
	case db.StatusAccepted, db.StatusPreparing, db.StatusTransferring:
		to = db.StatusQueued
	case db.StatusCancelling:
		to = db.StatusCancelled
	default:
		to = db.StatusError
	}
	opts := db.TransitionOpts{ExpectFrom: []db.Status{t.Status}, ExpectEpoch: t.Epoch, Message: why + ": re-dispatched"}
	switch to {
	case db.StatusQueued:
		// The new start goes in the same transaction as the move.
		opts.Outbox = func(nt *db.Transfer) (*db.OutboxMessage, error) { return NewStartMessage(nt) }
	case db.StatusCancelled:
		opts.Message, opts.Outbox = why+": cancelled", r.EndNotify.For(to)
	default:
		opts.Message, opts.Error, opts.Outbox = why, why, r.EndNotify.For(to)
	}
	nt, err := r.DB.TransitionTransfer(ctx, t.ID, to, opts)
	if errors.Is(err, db.ErrStaleEpoch) || errors.Is(err, db.ErrInvalidTransition) || errors.Is(err, db.ErrConflict) {
		return false, nil // another API process, or a report, got there first
	}
	if err != nil {
		return false, err
	}
	if to == db.StatusQueued {
		log.Warn("transfer re-dispatched: "+why, "epoch", nt.Epoch)
	} else {
		log.Warn("transfer ended: "+why, "to", to)
	}
	return true, nil
}

// sweepAgentless ends the cancels of transfers no agent holds.
func (r *Redispatcher) sweepAgentless(ctx context.Context, list []db.Transfer) (int, error) {
	moved := 0
	for i := range list {
		if t := &list[i]; t.Agent == nil || *t.Agent == "" {
			ok, err := r.orphaned(ctx, t, "no agent holds the transfer")
			if err != nil {
				return moved, err
			}
			if ok {
				moved++
			}
		}
	}
	return moved, nil
}

// sweepQueued re-publishes the starts of transfers left queued while their
// region had an agent with a free slot.
func (r *Redispatcher) sweepQueued(ctx context.Context, svcs []db.Service, now time.Time) (int, error) {
	after := r.QueuedAfter
	if after <= 0 {
		after = 3 * r.DownAfter
	}
	maxRepublish, perSweep := r.MaxRepublish, r.RepublishPerSweep
	if maxRepublish <= 0 {
		maxRepublish = DefaultMaxRepublish
	}
	if perSweep <= 0 {
		perSweep = DefaultRepublishPerSweep
	}
	// The regions with an agent free in its last two heartbeats, with the
	// latest older one of these (a transfer queued before it was not
	// taken although an agent was free), and every transfer any agent
	// runs.
	free := map[string]time.Time{}
	running := map[string]bool{}
	for i := range svcs {
		s := &svcs[i]
		if s.Binary != db.AgentBinary {
			continue
		}
		for _, id := range runningNow(s) {
			running[id] = true
		}
		if s.Disabled || !db.ServiceIsUp(s, now, r.DownAfter) || !reconcilable(s) || s.Capacity <= 0 ||
			len(s.RunningIDs()) >= s.Capacity || len(s.PrevRunningIDs()) >= s.Capacity {
			continue
		}
		if since, ok := free[s.Region]; !ok || s.PrevHeartbeatAt.After(since) {
			free[s.Region] = *s.PrevHeartbeatAt
		}
	}
	moved := 0
	var errs []error
	for _, region := range sortedKeys(free) {
		if moved >= perSweep {
			break
		}
		list, _, err := r.DB.ListTransfers(ctx, db.ListOpts{Scope: db.AllProjectsScope(), Status: db.StatusQueued,
			SourceRegion: region, SortKey: "updated_at", SortDir: "asc", Limit: perSweep})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i := range list {
			t := &list[i]
			// Queued for long enough, and an agent had a free slot all the
			// while (its older heartbeat is after the transfer's change).
			if moved >= perSweep || now.Sub(t.UpdatedAt) < after {
				break // sorted by updated_at: the rest are younger
			}
			if running[t.ID] || !free[region].After(t.UpdatedAt) {
				continue
			}
			ok, err := r.republish(ctx, t, region, after, maxRepublish)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if ok {
				moved++
			}
		}
	}
	return moved, errors.Join(errs...)
}

func (r *Redispatcher) republish(ctx context.Context, t *db.Transfer, region string, after time.Duration, maxRepublish int) (bool, error) {
	log := r.log().With("transfer_id", t.ID, "region", region)
	n, err := r.DB.CountRepublishes(ctx, t.ID)
	if err != nil {
		return false, err
	}
	why := fmt.Sprintf("no agent of %s accepted the transfer within %s although one had a free slot", region, after)
	var nt *db.Transfer
	if n >= maxRepublish {
		msg := fmt.Sprintf("%s, after %d re-published starts: its start is lost or refused (see the agents' logs and the dead-letter queue)", why, n)
		nt, err = r.DB.TransitionTransfer(ctx, t.ID, db.StatusError, db.TransitionOpts{
			ExpectFrom: []db.Status{db.StatusQueued}, ExpectEpoch: t.Epoch, Message: msg, Error: msg, Outbox: r.EndNotify.For(db.StatusError)})
	} else {
		nt, err = r.DB.RepublishStart(ctx, t.ID, t.Epoch, fmt.Sprintf("%s: start re-published (%d of %d)", why, n+1, maxRepublish),
			func(nt *db.Transfer) (*db.OutboxMessage, error) { return NewStartMessage(nt) })
	}
	if errors.Is(err, db.ErrStaleEpoch) || errors.Is(err, db.ErrInvalidTransition) || errors.Is(err, db.ErrConflict) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if nt.Status == db.StatusError {
		log.Warn("transfer ended: its start was never accepted", "republished", n)
	} else {
		log.Warn("start of a transfer left queued re-published", "epoch", nt.Epoch, "republished", n+1)
	}
	return true, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// completeFromDestination asks the Prober whether t's copy completed at
// the destination; if so it applies a completion as the agent's lost
// report would have (done true).
func (r *Redispatcher) completeFromDestination(ctx context.Context, t *db.Transfer, why string, log *slog.Logger) (bool, error) {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	st, err := r.Prober.Probe(pctx, t)
	cancel()
	if err != nil {
		log.Info("destination not asked about the transfer's copy", "error", err)
		return false, nil
	}
	if !st.Complete {
		return false, nil
	}
	note := fmt.Sprintf("%s, but the destination %s holds the completed copy (snapshot %q, digest %s): its report was lost", why, t.DestRegion, st.Snapshot, st.Digest)
	if err := r.DB.RecordEvent(ctx, t.ID, db.EventNote, note, ""); err != nil {
		return false, err
	}
	h := &statusHandler{db: r.DB, log: log, finalize: r.Finalize, end: r.EndNotify}
	ev := &rpc.StatusEvent{TransferID: t.ID, Event: rpc.EventCompleted, Epoch: t.Epoch, Region: t.DestRegion,
		BytesDone: st.BytesDone, BytesTotal: st.BytesDone, Digest: st.Digest, Mode: st.Mode, Snapshot: st.Snapshot,
		Removed: st.Removed, SnapshotTime: st.SnapshotTime}
	for range statusAttempts {
		cur, err := r.DB.GetTransfer(ctx, t.ID, db.AllProjectsScope())
		if err != nil {
			return false, err
		}
		if cur.Epoch != t.Epoch {
			return false, nil
		}
		a := applier{h: h, t: cur, ev: ev}
		err = a.complete(ctx, log)
		if err == nil {
			log.Warn("transfer completed from its destination's state: "+why, "digest", st.Digest)
			r.settle(ctx, cur, log)
			return true, nil
		}
		if !errors.Is(err, db.ErrConflict) && !errors.Is(err, db.ErrInvalidTransition) {
			return false, err
		}
	}
	return false, nil
}

// settle casts transfer.settle to t's source region: its agent did not see
// the completion, so the source base t superseded (or an ephemeral copy's
// snapshot) is still there. A settle that is not sent is no harm: the
// image's next transfer removes the bases left by completions its agent
// did not see.
func (r *Redispatcher) settle(ctx context.Context, t *db.Transfer, log *slog.Logger) {
	m, err := NewSettleMessage(t)
	if err == nil {
		err = r.DB.EnqueueOutbox(ctx, m)
	}
	if err != nil {
		log.Warn("settle of the source not sent: its superseded snapshot stays until the image's next transfer", "error", err)
		return
	}
	if r.Publish != nil {
		r.Publish()
	}
}
