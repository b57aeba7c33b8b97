package agent

import (
	"context"
	"fmt"

	"github.com/ferry-project/ferry/rpc"
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
	return shared, own
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
			}
			return nil
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
		return rpc.TransferQueryReply{Exists: res.Exists, Complete: res.Complete, Snapshot: res.Snapshot,
			Digest: res.Digest, Mode: res.Mode, BytesDone: res.BytesDone}, nil
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
