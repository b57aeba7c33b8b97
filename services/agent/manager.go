package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/transfer"
)

// The agent's manager (nova's split: rpcapi.go is how others call an
// agent, this file is how the agent answers): the handlers of every method
// it serves, on its region's shared queue and on its own queue.

// handlers builds the agent's two muxes: shared (agent.<region>: starts,
// prepares, queries; any agent of the region) and own
// (agent.<region>.<host>: what must reach the agent that holds a transfer
// or a session: cancel, finish, abort).
func (a *Agent) handlers(r *runner) (shared, own *rpc.Mux) {
	shared, own = &rpc.Mux{}, &rpc.Mux{}
	a.destHandlers(shared)
	a.destHandlers(own)
	// Commands from ferry-api are signed: anything else is refused and
	// dead-lettered.
	shared.Handle(rpc.MethodTransferStart, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req rpc.TransferStart
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		if req.Source.Region != a.cfg.Agent.Region {
			err := fmt.Errorf("%w: a start of region %s reached region %s", rpc.ErrForbidden, req.Source.Region, a.cfg.Agent.Region)
			a.refusedCommand(env, err)
			return nil, err
		}
		return nil, r.start(ctx, req, rpc.GrantOf(env))
	}, a.refusedCommand))
	own.Handle(rpc.MethodTransferCancel, rpc.RequireSigned(a.verifier, func(_ context.Context, env rpc.Envelope) (any, error) {
		var req rpc.TransferCancel
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		r.cancel(req.TransferID, req.Epoch)
		return struct{}{}, nil
	}, a.refusedCommand))
	// ferry-api's garbage collector: a failed or cancelled transfer's
	// leftovers in this region. What cannot be removed now (an open
	// session, an image another agent fences) is logged and left.
	shared.Handle(rpc.MethodTransferCleanup, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req rpc.TransferCleanup
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		a.cleanup(ctx, req)
		return nil, nil
	}, a.refusedCommand))
	// A completion ferry-api learned from the destination: the clean-up
	// the source agent would have done after it (see Source.Settle).
	shared.Handle(rpc.MethodTransferSettle, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req rpc.TransferSettle
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		if req.Source.Region != a.cfg.Agent.Region {
			err := fmt.Errorf("%w: a settle of region %s reached region %s", rpc.ErrForbidden, req.Source.Region, a.cfg.Agent.Region)
			a.refusedCommand(env, err)
			return nil, err
		}
		job := transfer.Job{TransferID: req.TransferID, Pool: req.Source.Pool, Image: req.Source.Image,
			Snapshot: req.Source.Snapshot, Ephemeral: req.Ephemeral}
		removed, err := a.Source.Settle(ctx, job)
		log := a.log.With("transfer_id", req.TransferID, "image", req.Source.Pool+"/"+req.Source.Image)
		if err != nil {
			log.Warn("settle: the superseded source snapshots stay until the image's next transfer", "removed", removed, "error", err)
		} else if len(removed) > 0 {
			log.Info("settle: superseded source snapshots removed", "removed", removed)
		}
		return nil, nil
	}, a.refusedCommand))
	a.replicationHandlers(shared)
	return shared, own
}

// replicationHandlers serve ferry-api's replication commands (signed): a
// drill's clone of a retained point at the destination, the clean-up of a
// deleted replication on either side, failover's promote, demote and
// rename, and a consistency group cycle's snapshot at the source.
func (a *Agent) replicationHandlers(mux *rpc.Mux) {
	mux.Handle(rpc.MethodReplicationDrill, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req rpc.DrillRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		res, err := a.Dest.Drill(ctx, req)
		if err != nil {
			a.log.Warn("drill refused", "drill_id", req.DrillID, "replication_id", req.ReplicationID, "error", err)
			return nil, err
		}
		if req.Flatten && !res.Flattened {
			a.flattenLater(req, res.ImageID)
		}
		return rpc.DrillReply{Size: res.Size, ImageID: res.ImageID}, nil
	}, a.refusedCommand))
	mux.Handle(rpc.MethodReplicationCleanup, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req rpc.ReplicationCleanup
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		if err := req.Validate(); err != nil {
			return nil, err
		}
		return nil, a.cleanupReplication(ctx, req)
	}, a.refusedCommand))
	// Failover and failback: promote this region's image of a
	// replication to the primary at a point, or demote it to a
	// destination of the new primary. Both are idempotent.
	mux.Handle(rpc.MethodReplicationPromote, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req rpc.PromoteRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		rep, err := a.Dest.Promote(ctx, req)
		if err != nil {
			a.log.Warn("promote refused", "replication_id", req.ReplicationID, "image", req.Pool+"/"+req.Image, "point", req.Point, "error", err)
			return nil, err
		}
		return rep, nil
	}, a.refusedCommand))
	mux.Handle(rpc.MethodReplicationDemote, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req rpc.DemoteRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		rep, err := a.Dest.Demote(ctx, req)
		if err != nil {
			a.log.Warn("demote refused", "replication_id", req.ReplicationID, "image", req.Pool+"/"+req.Image, "point", req.Point, "error", err)
			return nil, err
		}
		return rep, nil
	}, a.refusedCommand))
	// Failback: the demoted image Cinder knew as volume-<X> gets its
	// replica name back. Idempotent too.
	mux.Handle(rpc.MethodReplicationRename, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req rpc.RenameRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		rep, err := a.Dest.Rename(ctx, req)
		if err != nil {
			a.log.Warn("rename refused", "replication_id", req.ReplicationID, "image", req.Pool+"/"+req.Image, "to", req.To, "error", err)
			return nil, err
		}
		return rep, nil
	}, a.refusedCommand))
	// A consistency group's cycle: one crash-consistent snapshot of all
	// its members here, before ferry-api inserts their transfers.
	// Idempotent.
	mux.Handle(rpc.MethodReplicationGroupSnapshot, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req rpc.GroupSnapshotRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		if err := req.Validate(); err != nil {
			return nil, err
		}
		rep, err := a.Source.GroupSnapshot(ctx, req)
		if err != nil {
			a.log.Warn("group snapshot refused", "group_id", req.GroupID, "cycle_id", req.CycleID, "members", len(req.Members), "error", err)
			return nil, err
		}
		return rep, nil
	}, a.refusedCommand))
}

// flattenLater flattens a drill's clone in the background (under the
// agent's loops: it stops with the agent; a repeated drill starts it
// again).
func (a *Agent) flattenLater(req rpc.DrillRequest, imageID string) {
	log := a.log.With("drill_id", req.DrillID, "clone", req.ClonePool+"/"+req.CloneName, "image_id", imageID)
	started := a.work.Go("flatten:"+req.ClonePool+"/"+imageID, func(ctx context.Context) {
		t := time.Now()
		if err := a.Dest.FlattenDrill(ctx, req.ClonePool, imageID); err != nil {
			log.Warn("flattening the drill clone failed; it keeps its parent point", "error", err)
			return
		}
		log.Info("drill clone flattened", "seconds", time.Since(t).Seconds())
	})
	if !started {
		log.Info("drill clone not flattened now (agent stopping, or a flatten of it runs)")
	}
}

// settleBackoff is the first wait of settleLater, doubled after each
// failure up to settleMaxWait, for settleFor in all.
var (
	settleBackoff = 2 * time.Second
	settleMaxWait = time.Minute
	settleFor     = 15 * time.Minute
)

// settleLater retries, in the background, the removal of what a completed
// transfer superseded at the source when it failed at the completion (a
// stalled cluster): Source.Settle, with backoff. If it never succeeds
// (or the agent stops), the image's next transfer removes it.
func (a *Agent) settleLater(job transfer.Job) {
	log := a.log.With("transfer_id", job.TransferID, "image", job.Pool+"/"+job.Image)
	started := a.work.Go("settle:"+job.TransferID, func(ctx context.Context) {
		wait := settleBackoff
		for end := time.Now().Add(settleFor); time.Now().Before(end); wait = min(2*wait, settleMaxWait) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			removed, err := a.Source.Settle(ctx, job)
			if err == nil {
				log.Info("superseded source snapshots removed after the completion", "removed", removed)
				return
			}
			log.Info("superseded source snapshots not removed yet", "error", err, "retry_in", min(2*wait, settleMaxWait))
		}
		log.Warn("superseded source snapshots left for the image's next transfer")
	})
	if !started {
		log.Info("superseded source snapshots left for the image's next transfer (agent stopping)")
	}
}

// cleanupReplication removes a deleted replication's leftovers in this
// region. What cannot be removed for now (an open session, a stalled
// cluster) is retried (the message is requeued); what must not be
// removed (not Ferry's) is logged and left.
func (a *Agent) cleanupReplication(ctx context.Context, req rpc.ReplicationCleanup) error {
	log := a.log.With("replication_id", req.ReplicationID, "side", req.Side, "image", req.Pool+"/"+req.Image)
	var err error
	switch req.Side {
	case rpc.CleanupSideSource:
		var res transfer.SourceCleanupResult
		res, err = a.Source.CleanupReplication(ctx, req.ReplicationID, req.Pool, req.Image, req.Snapshots)
		log.Info("replication clean-up at the source", "removed", res.Removed, "trashed", res.Trashed, "trash_removed", res.TrashRemoved)
	case rpc.CleanupSideDestination:
		var res transfer.ReplicaCleanupResult
		res, err = a.Dest.CleanupReplica(ctx, req)
		log.Info("replication clean-up at the destination", "remove_image", req.RemoveImage, "removed", res.Removed,
			"flattened", res.Flattened, "image_removed", res.ImageRemoved, "rolled_back", res.RolledBack)
	}
	switch {
	case err == nil:
		return nil
	case rpc.IsTemporary(err), errors.Is(err, rbd.ErrTimeout), errors.Is(err, rbd.ErrBusy):
		// Busy: the image is open (a cancelled cycle's session closing).
		log.Warn("replication clean-up postponed", "error", err)
		return rpc.Temporary(err)
	}
	log.Warn("replication clean-up: what remains is left in place", "error", err)
	return nil
}

// background runs work that outlives the command that started it (a
// drill's flatten) under the agent's loops: Go starts it with Run's
// context, at most one per key; Run, once its context ends, waits for it.
type background struct {
	mu      sync.Mutex
	ctx     context.Context
	running map[string]bool
	wg      sync.WaitGroup
}

// open accepts work under ctx from now on (Serve calls it before it
// consumes commands).
func (b *background) open(ctx context.Context) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ctx, b.running = ctx, map[string]bool{}
}

// Run accepts work until ctx ends (open(ctx) if not yet), then waits for
// the work to stop.
func (b *background) Run(ctx context.Context) error {
	b.mu.Lock()
	if b.ctx == nil {
		b.ctx, b.running = ctx, map[string]bool{}
	}
	b.mu.Unlock()
	<-ctx.Done()
	b.mu.Lock()
	b.ctx = nil
	b.mu.Unlock()
	b.wg.Wait()
	return nil
}

// Go runs fn unless work of key runs or Run is not running.
func (b *background) Go(key string, fn func(ctx context.Context)) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ctx == nil || b.running[key] {
		return false
	}
	b.running[key] = true
	b.wg.Add(1)
	ctx := b.ctx
	go func() {
		defer b.wg.Done()
		defer func() {
			b.mu.Lock()
			delete(b.running, key)
			b.mu.Unlock()
		}()
		fn(ctx)
	}()
	return true
}

// cleanup removes a transfer's leftovers in this agent's region.
func (a *Agent) cleanup(ctx context.Context, req rpc.TransferCleanup) {
	region := a.cfg.Agent.Region
	log := a.log.With("transfer_id", req.TransferID)
	if req.Source.Region == region {
		job := transfer.Job{TransferID: req.TransferID, Pool: req.Source.Pool, Image: req.Source.Image, Snapshot: req.Source.Snapshot}
		if snap, err := a.Source.Discard(ctx, job); err != nil {
			log.Warn("clean-up: the source snapshot stays", "error", err)
		} else if snap != "" {
			log.Info("clean-up: source snapshot removed", "snapshot", snap)
		}
	}
	if req.Destination.Region == region {
		pool, image := destinationOf(&rpc.TransferStart{Source: req.Source, Destination: req.Destination})
		if res, err := a.Dest.Cleanup(ctx, req.TransferID, pool, image); err != nil {
			log.Warn("clean-up: the destination is left as it is", "image", pool+"/"+image, "error", err)
		} else {
			log.Info("clean-up: destination", "image", pool+"/"+image, "image_removed", res.ImageRemoved, "state_removed", res.StateRemoved)
		}
	}
}

// destHandlers are the destination side's methods. Each request must
// carry ferry-api's signed transfer.start (its grant) and match it: the
// transfer and epoch, this region as the destination, the pool and image,
// the project, the source and the kind of copy. A request that does not is
// refused (logged, counted, answered with rpc.ErrForbidden).
func (a *Agent) destHandlers(mux *rpc.Mux) {
	mux.Handle(rpc.MethodTransferPrepare, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req transfer.PrepareRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		if err := a.checkGrant(env, req.Grant, req.TransferID, req.Epoch, func(st *rpc.TransferStart) error {
			return prepareMatches(st, &req)
		}); err != nil {
			return nil, err
		}
		resp, err := a.Dest.Prepare(ctx, req)
		if err != nil {
			return nil, err
		}
		return PrepareReply{PrepareResponse: resp, Region: a.cfg.Agent.Region, Host: a.host}, nil
	})
	mux.Handle(rpc.MethodTransferFinish, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req transfer.FinishRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		if err := a.checkGrant(env, req.Grant, req.TransferID, req.Epoch, func(st *rpc.TransferStart) error {
			if pool, image := destinationOf(st); req.Pool != pool || req.Image != image {
				return fmt.Errorf("destination %s/%s, granted %s/%s", req.Pool, req.Image, pool, image)
			}
			return nil
		}); err != nil {
			return nil, err
		}
		return a.Dest.Finish(ctx, req)
	})
	// ferry-api asks whether a transfer's copy completed here (its
	// report may have been lost): signed, read-only.
	mux.Handle(rpc.MethodTransferQuery, rpc.RequireSigned(a.verifier, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var q rpc.TransferQuery
		if err := env.DecodeBody(&q); err != nil {
			return nil, err
		}
		res, err := a.Dest.Query(ctx, q.TransferID, q.Pool, q.Image)
		if err != nil {
			return nil, err
		}
		rep := rpc.TransferQueryReply{Exists: res.Exists, Complete: res.Complete, Snapshot: res.Snapshot,
			Digest: res.Digest, Mode: res.Mode, BytesDone: res.BytesDone, Removed: res.Removed}
		if !res.SnapshotTime.IsZero() {
			t := res.SnapshotTime.UTC()
			rep.SnapshotTime = &t
		}
		return rep, nil
	}, a.refusedCommand))
	mux.Handle(MethodTransferAbort, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req transfer.AbortRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		if err := a.checkGrant(env, req.Grant, req.TransferID, req.Epoch, nil); err != nil {
			return nil, err
		}
		return struct{}{}, a.Dest.Abort(ctx, req)
	})
}

// prepareMatches checks a prepare against the start it claims (its
// grant): every field the destination acts on must be the granted one.
func prepareMatches(st *rpc.TransferStart, req *transfer.PrepareRequest) error {
	pool, image := destinationOf(st)
	switch {
	case pool != req.Pool || image != req.Image:
		return fmt.Errorf("destination %s/%s, granted %s/%s", req.Pool, req.Image, pool, image)
	case st.ProjectID != req.ProjectID:
		return fmt.Errorf("project %q, granted %q", req.ProjectID, st.ProjectID)
	case st.Source.Region != req.SourceRegion:
		return fmt.Errorf("source region %q, granted %q", req.SourceRegion, st.Source.Region)
	case st.Source.Pool+"/"+st.Source.Image != req.SourceName:
		return fmt.Errorf("source %s, granted %s/%s", req.SourceName, st.Source.Pool, st.Source.Image)
	case st.Ephemeral != req.Ephemeral:
		return fmt.Errorf("ephemeral %v, granted %v", req.Ephemeral, st.Ephemeral)
	case st.Mode != "" && st.Mode != transfer.ModeAuto && st.Mode != req.Mode:
		return fmt.Errorf("mode %s, granted %s", req.Mode, st.Mode)
	case st.ReplicationID != req.ReplicationID:
		return fmt.Errorf("replication %q, granted %q", req.ReplicationID, st.ReplicationID)
	case !slices.Equal(st.Retain, req.Retain):
		return fmt.Errorf("retain %v, granted %v", req.Retain, st.Retain)
	}
	return nil
}

// destinationOf is the pool and image a start copies into (the source's
// names when the destination leaves them out).
func destinationOf(st *rpc.TransferStart) (pool, image string) {
	pool, image = st.Destination.Pool, st.Destination.Image
	if pool == "" {
		pool = st.Source.Pool
	}
	if image == "" {
		image = st.Source.Image
	}
	return pool, image
}

// checkGrant verifies g (ferry-api's signed transfer.start) and that it
// grants this region the transfer and epoch of the request, and whatever
// match checks.
func (a *Agent) checkGrant(env rpc.Envelope, g *rpc.Grant, transferID string, epoch int64, match func(*rpc.TransferStart) error) error {
	var st rpc.TransferStart
	err := a.verifier.VerifyGrant(g, rpc.MethodTransferStart, &st)
	if err == nil {
		switch {
		case st.TransferID != transferID || st.Epoch != epoch:
			err = fmt.Errorf("transfer %s epoch %d, granted %s epoch %d", transferID, epoch, st.TransferID, st.Epoch)
		case st.Destination.Region != a.cfg.Agent.Region:
			err = fmt.Errorf("granted to region %s, this is %s", st.Destination.Region, a.cfg.Agent.Region)
		case match != nil:
			err = match(&st)
		}
		if err != nil {
			err = fmt.Errorf("%w: %s does not match its grant: %w", rpc.ErrForbidden, env.Method, err)
		}
	}
	if err != nil {
		a.refusedCommand(env, err)
	}
	return err
}
