package replicate

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/cinder"
	"github.com/ferry-project/ferry/services/api/dispatch"
)

// FailoverLease is the name of the database lease the failover-running
// process holds.
const FailoverLease = "replication-failover"

// PreservedPrefix names the image a divergent head is copied to when an
// old primary is demoted after an unplanned failover:
// ferry-preserved-<failover id>.
const PreservedPrefix = "ferry-preserved-"

// The failover steps, in the order each kind runs them (Failover.Step
// names the next one to run; each is idempotent, so a step interrupted
// after its effect is simply run again).
const (
	StepQuiesce    = "quiesce"     // the old primary volume read-only in Cinder
	StepFinalCycle = "final_cycle" // one more cycle while quiesced, until completed
	StepPromote    = "promote"     // the new primary's image promoted at the point
	StepRegister   = "register"    // failover: the promoted replica managed into Cinder
	StepReadWrite  = "readwrite"   // failback: the original volume read-write again
	StepUnmanage   = "unmanage"    // failback: the failed-over volume unmanaged (its image stays)
	StepDemote     = "demote"      // the old primary demoted at the point
	StepRename     = "rename"      // failback: the demoted image named ferry-replica-<id> again
	StepFlip       = "flip"        // the replication's direction swapped
	StepDone       = "done"
)

// FailoverCinder is what failovers need of Cinder (cinder.Service).
type FailoverCinder interface {
	VolumePool(region string) string
	RegisterVolume(ctx context.Context, r cinder.Registration) (string, error)
	SetReadOnly(ctx context.Context, region, project, id string, readOnly bool) error
	UnmanageVolume(ctx context.Context, region, project, id string) error
	MapVolumeType(srcRegion, srcType, dstRegion string) string
}

// Steps lists the steps of a failover of kind (failover or failback),
// planned or not, in order.
func Steps(kind db.FailoverKind, planned bool) []string {
	switch {
	case kind == db.FailoverKindFailback:
		return []string{StepQuiesce, StepFinalCycle, StepPromote, StepReadWrite, StepUnmanage, StepDemote, StepRename, StepFlip, StepDone}
	case planned:
		return []string{StepQuiesce, StepFinalCycle, StepPromote, StepRegister, StepDemote, StepFlip, StepDone}
	}
	// Unplanned: the flip comes before the demote, which waits for the
	// old primary's region to answer.
	return []string{StepPromote, StepRegister, StepFlip, StepDemote, StepDone}
}

// stepsOf lists failover f's steps: Steps, without the quiesce and the
// final cycle for a member of a group's planned failover or failback (its
// group quiesced every member and ran one final cycle for all: f.Point
// is the member's part of that group point).
func stepsOf(f *db.Failover) []string {
	steps := Steps(f.Kind, f.Planned)
	if f.GroupID != "" && f.Planned {
		steps = slices.DeleteFunc(slices.Clone(steps), func(s string) bool { return s == StepQuiesce || s == StepFinalCycle })
	}
	return steps
}

// FailoverRunner carries failovers and failbacks (Failover rows in
// running) step by step to done: Steps gives each kind's order, the row
// records the next step, and a step runs again after an interruption, so
// that a ferry-api killed in the middle resumes where it was. Until the
// new primary is promoted, a failure undoes the failover (the old primary
// read-write again, the replication back where it was); after it, a step
// is retried at every scan, its error on the row, until it succeeds.
// Only the holder of the lease "replication-failover" runs failovers.
type FailoverRunner struct {
	DB     *db.DB
	Caller rpc.Caller // signs (rpc.SigningCaller)
	Cinder FailoverCinder
	// Interval between scans (default 2 s; Kick scans at once).
	Interval time.Duration
	// CallTimeout bounds an agent call (default 10 min: a demote may copy
	// a divergent head aside).
	CallTimeout time.Duration
	Owner       string
	LeaseTTL    time.Duration
	Log         *slog.Logger

	once sync.Once
	kicker
	workers workers
	mu      sync.Mutex
	// retry: when a failover whose step failed is run again (doubling
	// from Interval up to a minute), and its failures in a row.
	retry map[string]retryState
}

type retryState struct {
	at       time.Time
	failures int
}

func (r *FailoverRunner) init() {
	r.once.Do(func() {
		r.retry = map[string]retryState{}
		if r.Owner == "" {
			r.Owner = "ferry-api-" + uuid.NewString()
		}
		if r.Interval <= 0 {
			r.Interval = 2 * time.Second
		}
		if r.CallTimeout <= 0 {
			r.CallTimeout = 10 * time.Minute
		}
		if r.Log == nil {
			r.Log = slog.Default()
		}
	})
}

// Run scans until ctx ends, then waits for the failovers it started.
func (r *FailoverRunner) Run(ctx context.Context) error {
	if r.DB == nil {
		return errors.New("replicate: the failover runner needs a DB")
	}
	r.init()
	r.every(ctx, r.Interval, r.scan, func(ctx context.Context) {
		r.workers.wait()
		_ = r.DB.ReleaseLease(ctx, FailoverLease, r.Owner)
	})
	return nil
}

// holds takes or renews the lease "replication-failover": only its holder
// runs failover steps.
func (r *FailoverRunner) holds(ctx context.Context) bool {
	ttl := r.LeaseTTL
	if ttl <= 0 {
		ttl = max(3*r.Interval, 30*time.Second)
	}
	held, err := r.DB.AcquireLease(ctx, FailoverLease, r.Owner, ttl)
	if err != nil && ctx.Err() == nil {
		r.Log.Warn("failover lease", "error", err)
	}
	return err == nil && held
}

func (r *FailoverRunner) scan(ctx context.Context) {
	if !r.holds(ctx) {
		return
	}
	fos, err := r.DB.RunningFailovers(ctx, 0)
	if err != nil {
		if ctx.Err() == nil {
			r.Log.Warn("listing running failovers", "error", err)
		}
		return
	}
	for i := range fos {
		id := fos[i].ID
		r.workers.start(ctx, id, func() bool { return r.waiting(id) }, func(ctx context.Context) { r.Advance(ctx, id) })
	}
}

// errWait: the step cannot go on yet (a cycle still runs); the next scan
// runs it again.
var errWait = errors.New("waiting")

// Advance runs failover id's steps until it is done, must wait, or fails;
// it runs none unless it holds the lease.
func (r *FailoverRunner) Advance(ctx context.Context, id string) {
	r.init()
	for ctx.Err() == nil {
		f, err := r.DB.GetFailover(ctx, id, db.AllProjectsScope())
		if err != nil {
			r.Log.Warn("reading a failover", "failover_id", id, "error", err)
			return
		}
		if f.Status != db.FailoverRunning {
			return
		}
		// Each step under the lease, renewed: a process that lost it
		// (stalled past its TTL while another took over) stops here.
		if !r.holds(ctx) {
			return
		}
		log := r.Log.With("failover_id", f.ID, "replication_id", f.ReplicationID, "kind", f.Kind, "step", f.Step)
		next, err := r.run(ctx, f, log)
		switch {
		case errors.Is(err, errWait):
			return
		case err != nil && ctx.Err() != nil:
			return // stopping: the next holder of the lease resumes it
		case err != nil:
			r.failed(context.WithoutCancel(ctx), f, err, log)
			return
		}
		r.succeeded(f.ID)
		switch next {
		case "":
			return
		case stepRecorded:
			continue
		}
		fields := db.FailoverFields{Step: &next}
		if f.Error != nil {
			fields.Error = new(string) // the retried step succeeded
		}
		if _, err := r.DB.UpdateFailover(ctx, f.ID, fields, nil); err != nil {
			log.Warn("recording a failover step", "error", err)
			return
		}
		log.Info("failover step done", "next", next)
	}
}

// stepRecorded: the step recorded the next one itself (the flip does, in
// its transaction).
const stepRecorded = "\x00recorded"

// run runs f's current step and returns the step after it.
func (r *FailoverRunner) run(ctx context.Context, f *db.Failover, log *slog.Logger) (string, error) {
	steps := stepsOf(f)
	next := func(step string) string {
		for i, s := range steps {
			if s == step && i+1 < len(steps) {
				return steps[i+1]
			}
		}
		return StepDone
	}
	step := f.Step
	if step == "" {
		step = steps[0]
	}
	rep, err := r.DB.GetReplication(ctx, f.ReplicationID, db.AllProjectsScope())
	if err != nil {
		return "", fmt.Errorf("replication %s: %w", f.ReplicationID, err)
	}
	switch step {
	case StepQuiesce:
		err = r.setReadOnly(ctx, f, f.FromRegion, f.FromVolumeID, true)
		if errors.Is(err, cinder.ErrInUse) && f.Force {
			// Cinder sets the flag on an available volume only; the
			// flag would not reach the attachment anyway. A head
			// written after the final point is preserved by the demote.
			log.Warn("the forced failover's volume is attached: not made read-only", "volume_id", f.FromVolumeID)
			err = nil
		}
	case StepFinalCycle:
		err = r.finalCycle(ctx, f, rep, log)
	case StepPromote:
		err = r.promote(ctx, f, log)
	case StepRegister:
		err = r.register(ctx, f, log)
	case StepReadWrite:
		if !f.OriginalReadOnly { // else it was read-only before the failover
			err = r.setReadOnly(ctx, f, f.ToRegion, f.ToVolumeID, false)
		}
		if err == nil {
			err = r.available(ctx, f, f.ToVolumeID, log)
		}
	case StepUnmanage:
		if f.FromVolumeID != "" && r.Cinder != nil {
			err = r.Cinder.UnmanageVolume(ctx, f.FromRegion, f.ProjectID, f.FromVolumeID)
		}
	case StepDemote:
		err = r.demote(ctx, f, log)
	case StepRename:
		err = r.rename(ctx, f, rep, log)
	case StepFlip:
		if err = r.flip(ctx, f, rep, next(StepFlip), log); err == nil {
			return stepRecorded, nil
		}
	case StepDone:
		err = r.finish(ctx, f, log)
		return "", err
	default:
		return "", fmt.Errorf("unknown failover step %q", step)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", step, err)
	}
	return next(step), nil
}

func (r *FailoverRunner) call(ctx context.Context, region, method string, body, reply any) error {
	if r.Caller == nil {
		return errors.New("failovers need the message bus in ferry-api")
	}
	cctx, cancel := context.WithTimeout(ctx, r.CallTimeout)
	defer cancel()
	return r.Caller.Call(cctx, rpc.AgentTarget(region), method, body, reply)
}

// setReadOnly sets or clears a volume's read-only flag (nothing for a
// replication of a raw image: it has no volume).
func (r *FailoverRunner) setReadOnly(ctx context.Context, f *db.Failover, region, volumeID string, ro bool) error {
	if volumeID == "" {
		return nil
	}
	if r.Cinder == nil {
		return errors.New("failovers of volumes need Cinder ([cinder] volume_pools)")
	}
	return r.Cinder.SetReadOnly(ctx, region, f.ProjectID, volumeID, ro)
}

// finalCycle starts the failover's final cycle once the running one ended
// and waits until it completed; its point is the failover's.
func (r *FailoverRunner) finalCycle(ctx context.Context, f *db.Failover, rep *db.Replication, log *slog.Logger) error {
	id := f.FinalTransferID
	if id == "" {
		points, err := r.DB.ListPoints(ctx, rep.ID)
		if err != nil {
			return err
		}
		drills, err := r.DB.ListDrills(ctx, rep.ID)
		if err != nil {
			return err
		}
		t := CycleTransfer(rep, points, Pinned(drills), r.DB.Now())
		st, err := r.DB.StartFinalCycle(ctx, f.ID, t, dispatch.NewStartMessage)
		if errors.Is(err, db.ErrConflict) {
			return errWait // the last cycle still runs
		}
		if err != nil {
			return err
		}
		id = st.ID
		log.Info("final cycle started", "transfer_id", id)
	}
	t, err := r.DB.GetTransfer(ctx, id, db.AllProjectsScope())
	if err != nil {
		return err
	}
	switch {
	case t.Status == db.StatusCompleted:
		point := SnapshotPrefix + t.ID
		_, err := r.DB.UpdateFailover(ctx, f.ID, db.FailoverFields{Point: &point}, nil)
		return err
	case db.IsTerminal(t.Status):
		msg := "no error recorded"
		if t.Error != nil {
			msg = *t.Error
		}
		return fmt.Errorf("the final cycle %s ended %s: %s", t.ID, t.Status, msg)
	}
	return errWait
}

// promote makes the new primary's image the primary at the point.
func (r *FailoverRunner) promote(ctx context.Context, f *db.Failover, log *slog.Logger) error {
	if f.Point == "" {
		return errors.New("no point to promote")
	}
	var reply rpc.PromoteReply
	err := r.call(ctx, f.ToRegion, rpc.MethodReplicationPromote, rpc.PromoteRequest{
		ReplicationID: f.ReplicationID, Pool: f.ToPool, Image: f.ToImage, Point: f.Point, Force: !f.Planned,
	}, &reply)
	if err != nil {
		return fmt.Errorf("promoting %s/%s at %s in %s: %w", f.ToPool, f.ToImage, f.Point, f.ToRegion, err)
	}
	b, err := json.Marshal(reply)
	if err != nil {
		return err
	}
	peer := string(b)
	_, err = r.DB.UpdateFailover(ctx, f.ID, db.FailoverFields{Peer: &peer}, nil)
	log.Info("promoted", "image", reply.Name, "rolled_back", reply.RolledBack)
	return err
}

func peerOf(f *db.Failover) (rpc.PromoteReply, error) {
	var p rpc.PromoteReply
	if err := json.Unmarshal([]byte(f.Peer), &p); err != nil || p.ImageID == "" {
		return p, fmt.Errorf("failover %s has no promoted image recorded (%v)", f.ID, err)
	}
	return p, nil
}

// register makes the promoted replica a Cinder volume of the project with
// the old primary's name, description, metadata, bootable flag and
// (mapped) type; Cinder renames its image volume-<id>.
func (r *FailoverRunner) register(ctx context.Context, f *db.Failover, log *slog.Logger) error {
	if r.Cinder == nil {
		return errors.New("failovers need Cinder ([cinder] volume_pools)")
	}
	peer, err := peerOf(f)
	if err != nil {
		return err
	}
	var spec cinder.VolumeSpec
	if f.Spec != "" {
		if err := json.Unmarshal([]byte(f.Spec), &spec); err != nil {
			return fmt.Errorf("failover %s's volume spec: %w", f.ID, err)
		}
	}
	const gib = 1 << 30
	spec.Kind, spec.ProjectID = "volume", f.ProjectID
	spec.SizeGiB = int((peer.Size + gib - 1) / gib)
	if spec.Name == "" {
		spec.Name = "failover of replication " + f.ReplicationID
	}
	id, err := r.Cinder.RegisterVolume(ctx, cinder.Registration{
		TransferID: f.ID, Region: f.ToRegion, Image: f.ToImage, Spec: spec, KeepImage: true,
		VolumeType:       r.Cinder.MapVolumeType(f.FromRegion, spec.VolumeType, f.ToRegion),
		ExistingVolumeID: f.ToVolumeID, AttemptedAt: derefTime(f.RegisterStartedAt),
		Attempting: func(ctx context.Context, at time.Time) error {
			_, err := r.DB.UpdateFailover(ctx, f.ID, db.FailoverFields{RegisterStartedAt: &at}, nil)
			return err
		},
		Created: func(ctx context.Context, volumeID string) error {
			_, err := r.DB.UpdateFailover(ctx, f.ID, db.FailoverFields{ToVolumeID: &volumeID}, nil)
			return err
		},
	})
	if err != nil {
		return err
	}
	f.ToVolumeID = id
	return r.available(ctx, f, id, log)
}

// available records the new primary volume available: the RTO.
func (r *FailoverRunner) available(ctx context.Context, f *db.Failover, volumeID string, log *slog.Logger) error {
	if f.AvailableAt != nil {
		return nil
	}
	now := r.DB.Now()
	rto := now.Sub(f.RequestedAt)
	verb := "failover"
	if f.Kind == db.FailoverKindFailback {
		verb = "failback"
	}
	_, err := r.DB.UpdateFailover(ctx, f.ID, db.FailoverFields{AvailableAt: &now}, &db.ReplicationEventInput{
		Kind:    db.RepEventFailoverAvailable,
		Message: fmt.Sprintf("%s %s: volume %s available in %s after %.1f s (RTO)", verb, f.ID, volumeID, f.ToRegion, rto.Seconds()),
	})
	log.Info("new primary available", "volume_id", volumeID, "rto", rto)
	return err
}

// demote makes the old primary the destination of the new one at the
// point; a head written after the point is copied aside first, to
// ferry-preserved-<failover id>, named in an event.
func (r *FailoverRunner) demote(ctx context.Context, f *db.Failover, log *slog.Logger) error {
	peer, err := peerOf(f)
	if err != nil {
		return err
	}
	name := peer.Name
	if f.Kind == db.FailoverKindFailover && f.ToVolumeID != "" {
		name = f.ToPool + "/" + cinder.VolumeImage(f.ToVolumeID) // Cinder renamed it
	}
	var reply rpc.DemoteReply
	err = r.call(ctx, f.FromRegion, rpc.MethodReplicationDemote, rpc.DemoteRequest{
		ReplicationID: f.ReplicationID, Pool: f.FromPool, Image: f.FromImage, Point: f.Point,
		Peer:       rpc.PeerImage{FSID: peer.FSID, ImageID: peer.ImageID, Name: name, SnapID: peer.SnapID, Digest: peer.Digest},
		PreserveAs: PreservedPrefix + f.ID,
	}, &reply)
	if err != nil {
		return fmt.Errorf("demoting %s/%s at %s in %s: %w", f.FromPool, f.FromImage, f.Point, f.FromRegion, err)
	}
	if reply.Preserved == "" || f.Preserved != "" {
		return nil
	}
	preserved, n := reply.Preserved, int64(reply.PreservedBytes)
	_, err = r.DB.UpdateFailover(ctx, f.ID, db.FailoverFields{Preserved: &preserved, PreservedBytes: &n}, &db.ReplicationEventInput{
		Kind: db.RepEventPreserved,
		Message: fmt.Sprintf("what was written to %s/%s in %s after point %s is preserved as %s/%s (%d bytes allocated); Ferry never deletes it",
			f.FromPool, f.FromImage, f.FromRegion, f.Point, f.FromPool, preserved, n),
	})
	log.Warn("divergent head preserved", "image", f.FromPool+"/"+preserved, "bytes", n)
	return err
}

// rename gives the demoted image (the failed-over volume's, unmanaged)
// its replica name back.
func (r *FailoverRunner) rename(ctx context.Context, f *db.Failover, rep *db.Replication, log *slog.Logger) error {
	to := db.ReplicaImagePrefix + rep.ID
	if f.FromImage == to {
		return nil
	}
	req := rpc.RenameRequest{ReplicationID: f.ReplicationID, Pool: f.FromPool, Image: f.FromImage, To: to}
	var reply rpc.RenameReply
	err := r.call(ctx, f.FromRegion, rpc.MethodReplicationRename, req, &reply)
	if errors.Is(err, rpc.ErrConflict) && !rpc.IsTemporary(err) {
		// The name is taken while the image still has its own (a repeat
		// answers without conflict): by a stale replica, which a cycle of
		// the old direction made after an unplanned failover renamed the
		// real one. It holds a copy of the old primary's data, which the
		// old primary keeps (its divergent head preserved): Ferry's own
		// leftover, removed unless it is a primary or not Ferry's.
		var res struct{}
		if cerr := r.call(ctx, f.FromRegion, rpc.MethodReplicationCleanup, rpc.ReplicationCleanup{
			ReplicationID: f.ReplicationID, Side: rpc.CleanupSideDestination, Pool: f.FromPool, Image: to, RemoveImage: true,
		}, &res); cerr != nil {
			return fmt.Errorf("renaming %s/%s to %s in %s: %w; the stale %s was not removed: %w", f.FromPool, f.FromImage, to, f.FromRegion, err, to, cerr)
		}
		log.Warn("a stale replica held the replica's name: removed", "image", f.FromPool+"/"+to)
		err = r.call(ctx, f.FromRegion, rpc.MethodReplicationRename, req, &reply)
	}
	if err != nil {
		return fmt.Errorf("renaming %s/%s to %s in %s: %w", f.FromPool, f.FromImage, to, f.FromRegion, err)
	}
	log.Info("replica renamed", "from", f.FromImage, "to", to)
	return nil
}

// flip swaps the replication's direction: the new primary is its source.
func (r *FailoverRunner) flip(ctx context.Context, f *db.Failover, rep *db.Replication, next string, log *slog.Logger) error {
	in := db.Flip{KeepPoint: f.Point, Finish: f.Planned || f.Kind == db.FailoverKindFailback, Step: next}
	var kind db.ReplicationEventKind
	var msg string
	rto := "unknown"
	if f.AvailableAt != nil {
		rto = fmt.Sprintf("%.1f s", f.AvailableAt.Sub(f.RequestedAt).Seconds())
	}
	if f.Kind == db.FailoverKindFailback {
		in.To = db.ReplicationActive
		in.Source = db.FlipSide{Region: f.ToRegion, Pool: f.ToPool, Image: f.ToImage, VolumeID: f.ToVolumeID}
		in.Dest = db.FlipSide{Region: f.FromRegion, Pool: f.FromPool, Image: db.ReplicaImagePrefix + rep.ID}
		kind, msg = db.RepEventFailedBack, fmt.Sprintf("failed back (failback %s, RTO %s): volume %s in %s is the source again", f.ID, rto, f.ToVolumeID, f.ToRegion)
	} else {
		if f.ToVolumeID == "" {
			return errors.New("the promoted replica has no volume recorded")
		}
		in.To = db.ReplicationFailedOver
		in.Source = db.FlipSide{Region: f.ToRegion, Pool: f.ToPool, Image: cinder.VolumeImage(f.ToVolumeID), VolumeID: f.ToVolumeID}
		in.Dest = db.FlipSide{Region: f.FromRegion, Pool: f.FromPool, Image: f.FromImage, VolumeID: f.FromVolumeID}
		kind, msg = db.RepEventFailedOver, fmt.Sprintf("failed over (failover %s, RTO %s): volume %s in %s is the source", f.ID, rto, f.ToVolumeID, f.ToRegion)
		if !f.Planned {
			msg += "; the old primary is demoted once its region answers"
		}
	}
	if !f.Planned && rep.LastTransferID != "" {
		// The cycle the old primary's region was running (or had queued)
		// when it went: superseded. It cannot write the promoted image
		// (a primary refuses every prepare); cancelled, it no longer
		// holds back the cycles of the new direction.
		if _, err := dispatch.CancelRunning(ctx, r.DB, rep.LastTransferID, "superseded by failover "+f.ID, f.RequestID, nil); err != nil {
			log.Warn("the old direction's cycle was not cancelled", "transfer_id", rep.LastTransferID, "error", err)
		}
	}
	if _, err := r.DB.FlipReplication(ctx, f.ID, in, db.ReplicationEventInput{Kind: kind, Message: msg}); err != nil {
		return err
	}
	log.Info("replication flipped", "status", in.To, "source", in.Source.Region+"/"+in.Source.Pool+"/"+in.Source.Image)
	return nil
}

// finish ends a failover whose flip left it running (unplanned: the old
// primary demoted since).
func (r *FailoverRunner) finish(ctx context.Context, f *db.Failover, log *slog.Logger) error {
	err := r.DB.FinishFailover(ctx, f.ID, db.FailoverDone, "", "", db.ReplicationEventInput{
		Kind: db.RepEventFailedOver, Message: fmt.Sprintf("failover %s complete: the old primary %s/%s in %s is the destination now",
			f.ID, f.FromPool, f.FromImage, f.FromRegion),
	})
	if err == nil {
		log.Info("failover complete")
	}
	return err
}

// failed handles a step's error: before the new primary is promoted the
// failover is undone; after it, the step is retried at the next scans.
func (r *FailoverRunner) failed(ctx context.Context, f *db.Failover, err error, log *slog.Logger) {
	steps := stepsOf(f)
	at := slices.Index(steps, cmp.Or(f.Step, steps[0]))
	promote := slices.Index(steps, StepPromote)
	definite := !rpc.IsTemporary(err) && (errors.Is(err, rpc.ErrConflict) || errors.Is(err, rpc.ErrNotFound) ||
		errors.Is(err, rpc.ErrInvalid) || errors.Is(err, rpc.ErrForbidden))
	if at > promote || at == promote && !definite {
		log.Warn("failover step failed; retried", "error", err)
		msg := err.Error()
		if _, uerr := r.DB.UpdateFailover(ctx, f.ID, db.FailoverFields{Error: &msg}, nil); uerr != nil {
			log.Warn("recording a failover step's error", "error", uerr)
		}
		r.backoff(f.ID)
		return
	}
	r.succeeded(f.ID)
	log.Error("failover undone", "error", err)
	// The quiesce ran (this failover's, or its group's for a member).
	if (at > 0 || f.Step != "" || f.GroupID != "") && (f.Kind == db.FailoverKindFailback || !f.OriginalReadOnly) {
		if uerr := r.setReadOnly(ctx, f, f.FromRegion, f.FromVolumeID, false); uerr != nil {
			log.Warn("the old primary volume stays read-only", "volume_id", f.FromVolumeID, "error", uerr)
		}
	}
	back := db.ReplicationActive
	if f.Kind == db.FailoverKindFailback {
		back = db.ReplicationFailedOver
	}
	if ferr := r.DB.FinishFailover(ctx, f.ID, db.FailoverError, err.Error(), back, db.ReplicationEventInput{
		Kind: db.RepEventFailoverFailed, Message: fmt.Sprintf("%s %s failed and was undone: %v", f.Kind, f.ID, err),
	}); ferr != nil {
		log.Warn("recording a failed failover", "error", ferr)
	}
}

// waiting reports whether failover id waits for its backoff.
func (r *FailoverRunner) waiting(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Now().Before(r.retry[id].at)
}

// backoff delays failover id's next run after a failed step.
func (r *FailoverRunner) backoff(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.retry[id]
	st.failures++
	d := r.Interval << min(st.failures-1, 5)
	st.at = time.Now().Add(min(d, time.Minute))
	r.retry[id] = st
}

// succeeded forgets failover id's failures.
func (r *FailoverRunner) succeeded(id string) {
	r.mu.Lock()
	delete(r.retry, id)
	r.mu.Unlock()
}
