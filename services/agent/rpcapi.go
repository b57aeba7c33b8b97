package agent

import (
	"context"
	"errors"

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
