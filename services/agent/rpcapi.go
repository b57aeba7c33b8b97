package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/transfer"
)

// MethodTransferAbort: source agent → destination agent holding a session
// (call): end the session, keep the checkpoint.
const MethodTransferAbort = "transfer.abort"

// PrepareReply is transfer.prepare's reply: the destination's answer and
// the agent that holds the session (finish and abort go to its own queue).
type PrepareReply struct {
	transfer.PrepareResponse
	Region string `json:"region"`
	Host   string `json:"host"`
}

// RemoteDest is a destination region's agents as a transfer.Preparer:
// prepare goes to the region's shared queue (any agent), finish and abort
// to the agent that prepared.
type RemoteDest struct {
	Caller rpc.Caller
	Region string
	host   string
}

// Prepare implements transfer.Preparer.
func (r *RemoteDest) Prepare(ctx context.Context, req transfer.PrepareRequest) (transfer.PrepareResponse, error) {
	var rep PrepareReply
	if err := r.Caller.Call(ctx, rpc.AgentTarget(r.Region), rpc.MethodTransferPrepare, req, &rep); err != nil {
		return transfer.PrepareResponse{}, err
	}
	if rep.Host == "" {
		return transfer.PrepareResponse{}, errors.New("transfer.prepare reply names no agent")
	}
	r.host = rep.Host
	return rep.PrepareResponse, nil
}

// Finish implements transfer.Preparer.
func (r *RemoteDest) Finish(ctx context.Context, req transfer.FinishRequest) (transfer.FinishResponse, error) {
	var rep transfer.FinishResponse
	if r.host == "" {
		return rep, transfer.ErrNoSession
	}
	err := r.Caller.Call(ctx, rpc.AgentHostTarget(r.Region, r.host), rpc.MethodTransferFinish, req, &rep)
	return rep, err
}

// Abort implements transfer.Preparer.
func (r *RemoteDest) Abort(ctx context.Context, req transfer.AbortRequest) error {
	if r.host == "" {
		return transfer.ErrNoSession
	}
	return r.Caller.Call(ctx, rpc.AgentHostTarget(r.Region, r.host), MethodTransferAbort, req, nil)
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
