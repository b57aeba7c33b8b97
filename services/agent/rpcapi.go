package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/stream"
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
		return transfer.PrepareResponse{}, fromRemote(err)
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
	return rep, fromRemote(err)
}

// Abort implements transfer.Preparer.
func (r *RemoteDest) Abort(ctx context.Context, req transfer.AbortRequest) error {
	if r.host == "" {
		return transfer.ErrNoSession
	}
	return fromRemote(r.Caller.Call(ctx, rpc.AgentHostTarget(r.Region, r.host), MethodTransferAbort, req, nil))
}

// Error codes of the transfer errors that cross the bus.
var transferCodes = []struct {
	code string
	err  error
}{
	{"not_owned", transfer.ErrNotOwned},
	{"pool_not_allowed", transfer.ErrPoolNotAllowed},
	{"no_base", transfer.ErrNoBase},
	{"no_session", transfer.ErrNoSession},
	{"digest_mismatch", transfer.ErrDigestMismatch},
	{"bad_request", transfer.ErrBadRequest},
	{"checkpoint", stream.ErrCheckpoint},
	{"stale_epoch", transfer.ErrStaleEpoch},
	{"conflict", transfer.ErrConflict},
}

// toRemote gives a handler's error the code its caller maps back.
func toRemote(err error) error {
	if err == nil {
		return nil
	}
	for _, c := range transferCodes {
		if errors.Is(err, c.err) {
			return &rpc.RemoteError{Code: c.code, Message: err.Error()}
		}
	}
	return err
}

// fromRemote turns a RemoteError with a transfer code back into the
// sentinel, so that errors.Is works across processes.
func fromRemote(err error) error {
	var re *rpc.RemoteError
	if err == nil || !errors.As(err, &re) {
		return err
	}
	for _, c := range transferCodes {
		if re.Code == c.code {
			return fmt.Errorf("%w (%s)", c.err, re.Message)
		}
	}
	return err
}

// destHandlers are the destination side's methods.
func (a *Agent) destHandlers(mux *rpc.Mux) {
	mux.Handle(rpc.MethodTransferPrepare, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req transfer.PrepareRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		resp, err := a.Dest.Prepare(ctx, req)
		if err != nil {
			return nil, toRemote(err)
		}
		return PrepareReply{PrepareResponse: resp, Region: a.cfg.Agent.Region, Host: a.host}, nil
	})
	mux.Handle(rpc.MethodTransferFinish, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req transfer.FinishRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		resp, err := a.Dest.Finish(ctx, req)
		return resp, toRemote(err)
	})
	mux.Handle(MethodTransferAbort, func(ctx context.Context, env rpc.Envelope) (any, error) {
		var req transfer.AbortRequest
		if err := env.DecodeBody(&req); err != nil {
			return nil, err
		}
		return struct{}{}, toRemote(a.Dest.Abort(ctx, req))
	})
}
