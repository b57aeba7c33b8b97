package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/stream"
	"github.com/ferry-project/ferry/services/agent/transfer"
)

// runner runs the transfers this agent is the source of: at most
// max_transfers at once, each with a cancel function, reporting status
// events to ferry.status.
type runner struct {
	// runJob runs one accepted transfer (run; tests put a fake here).
	runJob func(ctx context.Context, req rpc.TransferStart, grant *rpc.Grant)
	a      *Agent
	caster rpc.Caster
	caller rpc.Caller
	slots  chan struct{}

	mu      sync.Mutex
	running map[string]*runEntry
	// finished remembers the epochs of the runs that ended here lately
	// (bounded, oldest forgotten first): a start of one of them arriving
	// again (a redelivery after the run ended) is not run twice.
	finished      map[string]int64
	finishedOrder []string
	// cancelled are the transfers a transfer.cancel stopped (as opposed
	// to the agent shutting down, which must not report them cancelled:
	// they are handed to another agent and resume).
	cancelled map[string]bool
	wg        sync.WaitGroup
}

func newRunner(a *Agent, caster rpc.Caster, caller rpc.Caller) *runner {
	r := &runner{a: a, caster: caster, caller: caller,
		slots: make(chan struct{}, a.cfg.Agent.MaxTransfers), running: map[string]*runEntry{}, cancelled: map[string]bool{}, finished: map[string]int64{}}
	r.runJob = r.run
	return r
}

// runEntry is one running transfer: the epoch it runs and how to stop it.
type runEntry struct {
	epoch  int64
	cancel context.CancelFunc
}

// errBusy asks the transport to requeue a start: every slot is taken.
var errBusy = errors.New("agent busy: max_transfers running")

// errSuperseded asks the transport to requeue a start of a newer epoch of
// a transfer this agent still runs: the older run is being stopped.
var errSuperseded = errors.New("a newer epoch of a running transfer: stopping the older run first")

// start accepts a transfer, or refuses it for now when every slot is taken
// (the message goes back to the queue for another agent, or later). It
// returns at once: the transfer runs in its own goroutine, so the delivery
// is acknowledged long before RabbitMQ's consumer_timeout.
func (r *runner) start(ctx context.Context, req rpc.TransferStart, grant *rpc.Grant) error {
	if err := req.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	cur, dup := r.running[req.TransferID]
	ended, wasRun := r.finished[req.TransferID]
	r.mu.Unlock()
	if !dup && wasRun && req.Epoch <= ended {
		// This run (or an older one) ended here: a redelivered start.
		return nil
	}
	if dup {
		if req.Epoch <= cur.epoch {
			// A redelivery (or an older start) of a run going on.
			return nil
		}
		// Re-dispatched to this very agent while an older epoch still
		// runs (its reports are refused now): stop that run, without a
		// report, and take the start again once it has stopped.
		cur.cancel()
		return rpc.Temporary(fmt.Errorf("transfer %s epoch %d (running epoch %d): %w", req.TransferID, req.Epoch, cur.epoch, errSuperseded))
	}
	select {
	case r.slots <- struct{}{}:
	default:
		return rpc.Temporary(errBusy)
	}
	jctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	entry := &runEntry{epoch: req.Epoch, cancel: cancel}
	r.mu.Lock()
	r.running[req.TransferID] = entry
	r.mu.Unlock()
	r.report(ctx, rpc.StatusEvent{TransferID: req.TransferID, Event: rpc.EventAccepted, Epoch: req.Epoch})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { <-r.slots }()
		defer func() {
			r.mu.Lock()
			if r.running[req.TransferID] == entry {
				delete(r.running, req.TransferID)
			}
			r.remember(req.TransferID, req.Epoch)
			r.mu.Unlock()
			cancel()
		}()
		r.runJob(jctx, req, grant)
	}()
	return nil
}

func (r *runner) run(ctx context.Context, req rpc.TransferStart, grant *rpc.Grant) {
	log := r.a.log.With("transfer_id", req.TransferID, "request_id", rpc.RequestIDFrom(ctx))
	dest := &RemoteDest{Caller: r.caller, Region: req.Destination.Region}
	src := r.a.Source.WithProgress(func(p stream.Progress) {
		r.report(ctx, rpc.StatusEvent{TransferID: req.TransferID, Event: rpc.EventProgress, Epoch: req.Epoch,
			BytesDone: p.BytesDone, BytesTotal: p.BytesTotal, Rate: uint64(p.BytesPerSecond)})
	})
	job := jobOf(req)
	job.Grant = grant
	res, err := src.Run(ctx, job, dest)
	// A report must go out even when the job's context was cancelled.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err != nil {
		ev := rpc.StatusEvent{TransferID: req.TransferID, Event: rpc.EventError, Epoch: req.Epoch, Error: err.Error()}
		if errors.Is(err, context.Canceled) {
			r.mu.Lock()
			byUser := r.cancelled[req.TransferID]
			delete(r.cancelled, req.TransferID)
			r.mu.Unlock()
			if !byUser {
				log.Info("transfer interrupted by the agent stopping; it resumes where it is dispatched next")
				return
			}
			ev.Event, ev.Error = rpc.EventCancelled, "cancelled"
		}
		log.Warn("transfer failed", "error", err)
		if job.Ephemeral {
			// A Cinder volume's copy: Ferry's snapshot on the user's
			// volume would keep Cinder from deleting it. A retry takes a
			// new one (and starts over).
			if removed, derr := r.a.Source.Discard(rctx, job); derr != nil {
				log.Warn("the failed transfer's source snapshot stays", "error", derr)
			} else if removed != "" {
				log.Info("source snapshot of the failed transfer removed", "snapshot", removed)
			}
		}
		r.report(rctx, ev)
		return
	}
	r.report(rctx, completed(req, res))
	if res.Unsettled {
		r.a.settleLater(job)
	}
}

// jobOf is the transfer a transfer.start asks for.
func jobOf(req rpc.TransferStart) transfer.Job {
	return transfer.Job{
		TransferID: req.TransferID, Epoch: req.Epoch, ProjectID: req.ProjectID, Mode: req.Mode,
		Pool: req.Source.Pool, Image: req.Source.Image, Snapshot: req.Source.Snapshot,
		DestPool: req.Destination.Pool, DestImage: req.Destination.Image,
		SourceRegion: req.Source.Region, DestRegion: req.Destination.Region,
		Ephemeral:     req.Ephemeral,
		ReplicationID: req.ReplicationID, Retain: req.Retain, BandwidthLimit: req.BandwidthLimit,
	}
}

// completed is the report of a finished transfer. Snapshot is the
// destination's snapshot (ferry-api records it as the next base): none
// for an ephemeral transfer, which leaves no snapshot on either side.
// SnapshotTime is when the source snapshot was taken, Removed the
// destination snapshots the finish removed (a replication's pruned
// points).
func completed(req rpc.TransferStart, res transfer.Result) rpc.StatusEvent {
	ev := rpc.StatusEvent{
		TransferID: req.TransferID, Event: rpc.EventCompleted, Epoch: req.Epoch,
		BytesDone: res.BytesDone, BytesTotal: res.BytesTotal, Digest: res.Digest,
		Mode: res.Mode, Snapshot: res.Snapshot, Removed: res.DestRemoved,
	}
	if !res.SnapshotTime.IsZero() {
		t := res.SnapshotTime.UTC()
		ev.SnapshotTime = &t
	}
	if req.Ephemeral || res.Ephemeral {
		ev.Snapshot = ""
	}
	return ev
}

// cancel stops a running transfer of epoch (0: any); false when this agent
// does not run it, or runs another epoch of it.
func (r *runner) cancel(transferID string, epoch int64) bool {
	r.mu.Lock()
	e, ok := r.running[transferID]
	ok = ok && (epoch == 0 || e.epoch == epoch)
	if ok {
		r.cancelled[transferID] = true
	}
	r.mu.Unlock()
	if ok {
		e.cancel()
	}
	return ok
}

// report casts a status event; a failure is logged (the API also learns
// the outcome from the next event or from the agent being down).
func (r *runner) report(ctx context.Context, ev rpc.StatusEvent) {
	ev.Region, ev.Host = r.a.cfg.Agent.Region, r.a.host
	ev.Time = time.Now().UTC()
	if err := r.caster.Cast(ctx, rpc.StatusTarget, rpc.MethodAgentStatus, ev); err != nil {
		r.a.log.Warn("status report not sent", "transfer_id", ev.TransferID, "event", ev.Event, "error", err)
	}
}

// wait waits for the running transfers to stop (after their contexts were
// cancelled).
func (r *runner) stopAll() {
	r.mu.Lock()
	for _, e := range r.running {
		e.cancel()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// maxFinished bounds the runs a runner remembers.
const maxFinished = 4096

// remember records that transferID's run of epoch ended; r.mu is held.
func (r *runner) remember(transferID string, epoch int64) {
	if _, ok := r.finished[transferID]; !ok {
		r.finishedOrder = append(r.finishedOrder, transferID)
	}
	r.finished[transferID] = max(r.finished[transferID], epoch)
	if len(r.finishedOrder) > maxFinished {
		delete(r.finished, r.finishedOrder[0])
		r.finishedOrder = r.finishedOrder[1:]
	}
}

// runningIDs lists the transfers running now, sorted. It holds the mutex
// only to copy (never across a Ceph or broker call): the heartbeat calls it.
func (r *runner) runningIDs() []string {
	r.mu.Lock()
	ids := make([]string, 0, len(r.running))
	for id := range r.running {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	slices.Sort(ids)
	return ids
}
