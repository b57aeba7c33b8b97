package transfer

import (
	"fmt"
	"slices"
	"time"

	"github.com/ferry-project/ferry/services/agent/rbd"
)

// destView is what a prepare found at the destination, read under the
// fence: nothing in it is trusted unless it verified (see state.go).
type destView struct {
	// Created: the image did not exist and was made by this prepare.
	Created bool
	Size    uint64
	// Snaps are the image's snapshots, oldest first.
	Snaps []rbd.Snapshot
	// Writing is the verified writing state, nil when absent or forged.
	Writing *writingState
	// Records are the verified records of snapshots that still exist
	// with the recorded id, by name.
	Records map[string]snapRecord
	// Completed is the verified record of an ephemeral transfer.
	Completed *completedRecord
	// Checkpoint is the state of the checkpoint of Writing's run.
	Checkpoint checkpointState
	// Granted is the newest grant time of the copies the image holds
	// (records of other transfers), zero when unknown.
	Granted   time.Time
	GrantedBy string
	// Primary: the image carries a primary marker (promoted: the source
	// of its replication now), verified or not; PrimaryPoint is the
	// verified marker's point.
	Primary      bool
	PrimaryPoint string
}

type checkpointState int

const (
	checkpointNone    checkpointState = iota // none kept
	checkpointValid                          // sealed for this run
	checkpointInvalid                        // present but forged, damaged or another run's
)

func (v *destView) snapshot(name string) (rbd.Snapshot, bool) {
	for _, s := range v.Snaps {
		if s.Name == name {
			return s, true
		}
	}
	return rbd.Snapshot{}, false
}

type planKind int

const (
	// planCopy: a new run: bring the head to its starting point (Base, or
	// zeros), then copy.
	planCopy planKind = iota
	// planResume: the same run again: keep the head and the checkpoint.
	planResume
	// planDone: the destination already holds what the transfer asks for:
	// change nothing, answer with Digest.
	planDone
	// planSeal: the data was verified and flushed but the end (snapshot,
	// record) was interrupted: finish it, then answer with Digest.
	planSeal
)

func (k planKind) String() string {
	return [...]string{"copy", "resume", "done", "seal"}[k]
}

// destPlan is what a prepare will do. Every check happened in planPrepare;
// carrying the plan out only writes.
type destPlan struct {
	Kind planKind
	// Base is the incremental base (empty: a full copy); BaseID its
	// destination snapshot id.
	Base   string
	BaseID uint64
	// EnsureBase: roll the head back to Base unless it is proven equal.
	EnsureBase bool
	// ZeroHead: a full copy into an existing image: old data in the
	// holes must go.
	ZeroHead bool
	// Resize to the source's size.
	Resize bool
	// Digest (and Mode, when recorded) of a planDone or planSeal transfer.
	Digest string
	Mode   string
	// Removed: the snapshots the recorded finish of a planDone removed.
	Removed []string
	Why     string
}

// planPrepare decides what a prepare does with the destination as found.
// It is pure: every refusal comes from here, before anything is written.
func planPrepare(req *PrepareRequest, v *destView) (destPlan, error) {
	// A promoted image is written by its users, never by a transfer.
	if v.Primary {
		return destPlan{}, fmt.Errorf("%w: the image is the primary of its replication (promoted at %q); Ferry does not write it",
			ErrConflict, v.PrimaryPoint)
	}
	// A grant older than a copy of another transfer the destination holds
	// is a replay of a superseded transfer: nothing to do.
	if g := req.granted(); !g.IsZero() && g.Before(v.Granted) && v.GrantedBy != req.TransferID {
		return destPlan{}, fmt.Errorf("%w: transfer %s was granted before transfer %s, whose copy the destination holds", ErrStaleEpoch, req.TransferID, v.GrantedBy)
	}
	w := v.Writing
	if w != nil && w.TransferID == req.TransferID && req.Epoch < w.Epoch {
		return destPlan{}, fmt.Errorf("%w: prepare of epoch %d, the destination is at epoch %d", ErrStaleEpoch, req.Epoch, w.Epoch)
	}
	resize := v.Size != req.Size

	// An ephemeral copy is handed over (to Cinder) once complete: the
	// image is no longer Ferry's to write, whatever its metadata says.
	if c := v.Completed; c != nil && c.TransferID != req.TransferID {
		return destPlan{}, fmt.Errorf("%w: the image was handed over by transfer %s; Ferry no longer writes it", ErrConflict, c.TransferID)
	}

	// Already complete?
	if req.Ephemeral {
		if c := v.Completed; c != nil && c.TransferID == req.TransferID {
			if c.SourceSnapID != req.SourceSnapID {
				return destPlan{}, fmt.Errorf("%w: transfer %s completed into this image from source snapshot id %d, not %d",
					ErrConflict, req.TransferID, c.SourceSnapID, req.SourceSnapID)
			}
			return destPlan{Kind: planDone, Digest: c.Digest, Mode: ModeFull, Why: "already complete"}, nil
		}
	} else if rec, ok := v.Records[req.Snapshot]; ok {
		if rec.SourceSnapID != req.SourceSnapID {
			return destPlan{}, fmt.Errorf("%w: destination snapshot %q holds source snapshot id %d, this transfer copies id %d",
				ErrConflict, req.Snapshot, rec.SourceSnapID, req.SourceSnapID)
		}
		return destPlan{Kind: planDone, Digest: rec.Digest, Mode: rec.Mode, Removed: rec.Removed, Why: "already complete"}, nil
	}
	verified := w.sameRun(req) && w.Verified != "" && !resize
	if _, exists := v.snapshot(req.Snapshot); exists && !req.Ephemeral {
		if verified {
			// Taken after the data verified; only its record is missing.
			return destPlan{Kind: planSeal, Digest: w.Verified, Why: "verified, snapshot taken, record missing"}, nil
		}
		return destPlan{}, fmt.Errorf("%w: destination already has a snapshot %q that Ferry did not record", ErrConflict, req.Snapshot)
	}
	if verified {
		return destPlan{Kind: planSeal, Digest: w.Verified, Why: "verified, end interrupted"}, nil
	}

	// The same run again: resume unless its base is gone or its
	// checkpoint does not verify (then the whole run starts over).
	if w.sameRun(req) && !resize && v.Checkpoint != checkpointInvalid && modeFits(req.Mode, w.Base) {
		if w.Base == "" {
			return destPlan{Kind: planResume, Why: "same run"}, nil
		}
		if s, ok := v.snapshot(w.Base); ok && s.ID == w.BaseID {
			if _, ok := v.Records[w.Base]; ok {
				return destPlan{Kind: planResume, Base: w.Base, BaseID: w.BaseID, Why: "same run"}, nil
			}
		}
	}

	p := destPlan{Kind: planCopy, Resize: resize, Why: "new run"}
	if w.sameRun(req) {
		p.Why = "same run, starting over"
	}
	if !req.Ephemeral && req.Mode != ModeFull {
		p.Base, p.BaseID = chooseBase(req.Bases, v)
	}
	switch {
	case p.Base != "":
		p.EnsureBase = !v.Created
	case req.Mode == ModeIncremental:
		return destPlan{}, fmt.Errorf("%w: the destination holds none of the source's snapshots %v", ErrNoBase, refNames(req.Bases))
	default:
		p.ZeroHead = !v.Created
	}
	return p, nil
}

func modeFits(mode, base string) bool {
	switch mode {
	case ModeFull:
		return base == ""
	case ModeIncremental:
		return base != ""
	}
	return true
}

// chooseBase picks the newest of the source's snapshots that the
// destination holds as a verified record of that very source snapshot.
func chooseBase(bases []SnapRef, v *destView) (string, uint64) {
	for _, b := range bases {
		rec, ok := v.Records[b.Name]
		if ok && rec.SourceSnapID == b.ID {
			return b.Name, rec.SnapID
		}
	}
	return "", 0
}

func refNames(refs []SnapRef) []string {
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		out = append(out, r.Name)
	}
	return slices.Clip(out)
}

// granted is when ferry-api granted req (its grant's expiry), zero without
// a grant.
func (r *PrepareRequest) granted() time.Time {
	if r.Grant == nil || r.Grant.Signature == nil {
		return time.Time{}
	}
	return r.Grant.Signature.Expires
}
