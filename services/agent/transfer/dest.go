package transfer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/stream"
)

// featuresKept are the RBD features a destination image may take from its
// source; others (journaling, data pools) are this cluster's business.
const featuresKept = 1<<0 | 1<<2 | 1<<3 | 1<<4 | 1<<5 // layering, exclusive-lock, object-map, fast-diff, deep-flatten

// featureExclusiveLock is the fence: Ferry turns it on for every image it
// writes, whatever the source's features.
const featureExclusiveLock = 1 << 2

// DestConfig configures the destination side of one agent.
type DestConfig struct {
	Connect Connector
	Server  *stream.Server
	// Pools is the allow-list.
	Pools []string
	// Endpoint is where sources reach the data port; ServerName the name
	// its certificate carries.
	Endpoint, ServerName string
	// Sealer seals the state kept in image metadata (the region's state
	// key). Required.
	Sealer *Sealer
	Log    *slog.Logger
	// FinishWait bounds how long a committed session keeps its image open
	// and locked waiting for the finish (default stream.DefaultTicketTTL).
	FinishWait time.Duration
}

// Dest is the destination side of transfers on one agent.
//
// A prepare reads the image under the fence (the RBD exclusive lock, taken
// before anything is read), decides with planPrepare (pure: every check and
// refusal) and only then writes: the writing state first, so that an
// interrupted prepare never leaves a resumable look, then the head's
// starting point (rollback to the base unless proven equal, zeros for a
// full copy), then the session. Finish records the verified digest before
// taking the snapshot, so an interrupted finish completes later instead of
// starting over. Prepares and finishes of one transfer, and prepares of one
// image, run one at a time.
type Dest struct {
	cfg  DestConfig
	log  *slog.Logger
	keys keyedMutex

	mu   sync.Mutex
	jobs map[string]*destJob
}

type destJob struct {
	id      string
	epoch   int64
	name    string // pool/image
	img     *rbd.Image
	imageID string
	unref   func() // releases the cluster connection
	locked  bool
	session *stream.Session
	w       writingState
	// req and resp are the prepare that opened the session and its
	// answer (a repeated prepare while its source streams gets the same).
	req  PrepareRequest
	resp PrepareResponse
	// finished is closed once the job's finish ran (or the job closed).
	finished chan struct{}
	release  sync.Once
}

// NewDest serves transfers into the allowed pools of the cluster
// cfg.Connect reaches, through cfg.Server.
func NewDest(cfg DestConfig) *Dest {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.FinishWait <= 0 {
		cfg.FinishWait = stream.DefaultTicketTTL
	}
	return &Dest{cfg: cfg, log: cfg.Log, jobs: map[string]*destJob{}}
}

// Prepare opens or creates the destination image, fences it, decides what
// to do (planPrepare) and, for a copy or a resume, opens a stream session.
// A transfer the destination already holds answers Done and changes
// nothing.
func (d *Dest) Prepare(ctx context.Context, req PrepareRequest) (PrepareResponse, error) {
	if err := req.Validate(); err != nil {
		return PrepareResponse{}, err
	}
	if err := allowed(d.cfg.Pools, req.Pool); err != nil {
		return PrepareResponse{}, err
	}
	if d.cfg.Sealer == nil {
		return PrepareResponse{}, errors.New("destination has no state key")
	}
	name := req.Pool + "/" + req.Image
	unlock := d.keys.lock("transfer:"+req.TransferID, "image:"+name)
	defer unlock()
	log := d.log.With("transfer_id", req.TransferID, "image", name, "epoch", req.Epoch)
	if old := d.job(req.TransferID); old != nil {
		if req.Epoch < old.epoch {
			return PrepareResponse{}, fmt.Errorf("%w: prepare of epoch %d, a session of epoch %d is open", ErrStaleEpoch, req.Epoch, old.epoch)
		}
		// The same prepare again while its source streams (a
		// redelivery): the open session is the answer; superseding it
		// would cut that source. With no source connected (it is gone),
		// a new session resumes from the saved checkpoint.
		if req.Epoch == old.epoch && old.req.sameAs(&req) && old.session.Streaming() {
			log.Info("repeated prepare: the open session answers")
			return old.resp, nil
		}
		d.closeJob(old, errors.New("superseded by a new prepare"))
	}

	cluster, unref, err := d.cfg.Connect(ctx)
	if err != nil {
		return PrepareResponse{}, err
	}
	img, created, err := d.openOrCreate(ctx, cluster, req)
	if err != nil {
		unref()
		return PrepareResponse{}, err
	}
	job := &destJob{id: req.TransferID, epoch: req.Epoch, name: name, img: img, unref: unref, finished: make(chan struct{})}
	fail := func(err error) (PrepareResponse, error) {
		d.release(job)
		return PrepareResponse{}, err
	}
	info, err := img.Info()
	if err != nil {
		return fail(err)
	}
	job.imageID = info.ID
	if err := d.fence(job, info); err != nil {
		return fail(err)
	}
	view, err := d.view(img, job.imageID, info, created, &req)
	if err != nil {
		return fail(err)
	}
	plan, err := planPrepare(&req, view)
	if err != nil {
		log.Warn("prepare refused, destination untouched", "error", err)
		return fail(err)
	}
	log = log.With("plan", plan.Kind.String(), "base", plan.Base)
	resp := PrepareResponse{Endpoint: d.cfg.Endpoint, ServerName: d.cfg.ServerName, Base: plan.Base, Created: created, Ephemeral: req.Ephemeral}
	switch plan.Kind {
	case planDone:
		removed := plan.Removed
		if more := d.finishRemoval(job, view, req); len(more) > 0 {
			removed = append(slices.Clip(removed), more...)
			log.Info("prepared: already complete; removed what its interrupted seal left", "removed", more)
		}
		d.release(job)
		log.Info("prepared: already complete", "digest", plan.Digest)
		resp.Done, resp.Digest, resp.Mode, resp.Base, resp.Removed = true, plan.Digest, plan.Mode, "", removed
		return resp, nil
	case planSeal:
		job.w = *view.Writing
		fin, err := d.seal(job)
		if err != nil {
			return fail(err)
		}
		d.release(job)
		log.Info("prepared: an interrupted finish completed", "digest", plan.Digest)
		resp.Done, resp.Digest, resp.Mode, resp.Base, resp.Removed = true, plan.Digest, modeOf(job.w.Base), "", fin.Removed
		return resp, nil
	case planResume:
		job.w = *view.Writing
		job.w.Epoch, job.w.Granted = req.Epoch, req.granted()
		job.w.ReplicationID, job.w.Retain, job.w.SourceSnapTime = req.ReplicationID, req.Retain, req.SnapshotTime
		if err := d.putWriting(job); err != nil {
			return fail(err)
		}
	case planCopy:
		job.w = writingState{TransferID: req.TransferID, Epoch: req.Epoch, Base: plan.Base, BaseID: plan.BaseID,
			Snapshot: req.Snapshot, SourceSnapID: req.SourceSnapID, Size: req.Size, Ephemeral: req.Ephemeral, Granted: req.granted(),
			ReplicationID: req.ReplicationID, Retain: req.Retain, SourceSnapTime: req.SnapshotTime}
		if err := d.startCopy(ctx, job, plan, req.Size); err != nil {
			return fail(err)
		}
	}
	pr, err := d.cfg.Server.PrepareSession(ctx, stream.PrepareRequest{
		TransferID:  req.TransferID,
		PeerRegion:  req.SourceRegion,
		ImageName:   name,
		Image:       &destImage{img: img, size: req.Size},
		Checkpoints: d.checkpoints(job),
		ChunkSize:   req.ChunkSize,
	})
	if err != nil {
		return fail(err)
	}
	job.session = pr.Session
	resp.Ticket, resp.ChunkSize, resp.Checkpoint, resp.Resumed = pr.Ticket, pr.ChunkSize, pr.Checkpoint, pr.Resumed
	job.req, job.resp = req, resp
	d.mu.Lock()
	d.jobs[req.TransferID] = job
	d.mu.Unlock()
	go d.watch(job)
	log.Info("prepared", "created", created, "resumed", pr.Resumed, "watermark", pr.Checkpoint.Watermark, "ephemeral", req.Ephemeral, "why", plan.Why)
	return resp, nil
}

// openOrCreate opens the destination image for writing, creating it (with
// Ferry's ownership metadata and the exclusive-lock feature) when missing.
// An existing image must carry Ferry's ownership for this same source.
func (d *Dest) openOrCreate(ctx context.Context, cluster *rbd.Cluster, req PrepareRequest) (*rbd.Image, bool, error) {
	img, err := cluster.OpenImage(ctx, req.Pool, req.Image, "", false)
	if err == nil {
		md, err := img.Metadata()
		if err != nil {
			img.Close()
			return nil, false, err
		}
		if md[MetaOwner] != OwnerValue || md[MetaSourceFSID] != req.SourceFSID || md[MetaSourceImageID] != req.SourceImageID ||
			md[MetaReplication] != req.ReplicationID {
			img.Close()
			return nil, false, fmt.Errorf("%w: %s/%s", ErrNotOwned, req.Pool, req.Image)
		}
		return img, false, nil
	}
	if !errors.Is(err, rbd.ErrNotFound) {
		return nil, false, err
	}
	if req.Mode == ModeIncremental {
		return nil, false, fmt.Errorf("%w: destination %s/%s does not exist", ErrNoBase, req.Pool, req.Image)
	}
	spec := rbd.ImageSpec{Size: req.Size, Order: req.Order, Features: req.Features&featuresKept | featureExclusiveLock}
	if err := cluster.CreateImage(ctx, req.Pool, req.Image, spec); err != nil {
		return nil, false, err
	}
	img, err = cluster.OpenImage(ctx, req.Pool, req.Image, "", false)
	if err != nil {
		return nil, false, err
	}
	meta := map[string]string{
		MetaOwner: OwnerValue, MetaCreatedBy: req.TransferID, MetaProject: req.ProjectID,
		MetaSourceFSID: req.SourceFSID, MetaSourceImageID: req.SourceImageID, MetaSourceName: req.SourceName,
	}
	if req.ReplicationID != "" {
		meta[MetaReplication] = req.ReplicationID
	}
	for k, v := range meta {
		if err := img.SetMetadata(k, v); err != nil {
			img.Close()
			return nil, false, err
		}
	}
	return img, true, nil
}

// fence takes the image's exclusive lock, turning the feature on for an
// image that lacks it: while held, no other agent writes the image, so a
// partitioned old writer cannot interleave with this one.
func (d *Dest) fence(job *destJob, info rbd.Info) error {
	if info.Features&featureExclusiveLock == 0 {
		if err := job.img.EnableFeatures(featureExclusiveLock); err != nil {
			return fmt.Errorf("fencing %s: %w", job.name, err)
		}
	}
	if err := job.img.LockExclusive(); err != nil {
		return fmt.Errorf("fencing %s (another agent writes it?): %w", job.name, err)
	}
	job.locked = true
	return nil
}

// view reads what planPrepare needs; only sealed state that verifies for
// this image is kept.
func (d *Dest) view(img *rbd.Image, imageID string, info rbd.Info, created bool, req *PrepareRequest) (*destView, error) {
	md, err := img.Metadata()
	if err != nil {
		return nil, err
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return nil, err
	}
	v := &destView{Created: created, Size: info.Size, Snaps: snaps, Records: d.records(imageID, md, snaps)}
	if _, v.Primary = md[MetaPrimary]; v.Primary {
		if m := d.marker(imageID, md); m != nil {
			v.PrimaryPoint = m.Point
		}
	}
	var w writingState
	if s, ok := md[MetaWriting]; ok {
		if err := d.cfg.Sealer.Open(kindWriting, imageID, s, &w); err == nil {
			v.Writing = &w
		} else {
			d.log.Warn("writing state ignored", "image", req.Pool+"/"+req.Image, "error", err)
		}
	}
	var c completedRecord
	if s, ok := md[MetaCompleted]; ok && d.cfg.Sealer.Open(kindCompleted, imageID, s, &c) == nil {
		v.Completed = &c
		v.Granted, v.GrantedBy = c.Granted, c.TransferID
	}
	for _, r := range v.Records {
		if r.Granted.After(v.Granted) {
			v.Granted, v.GrantedBy = r.Granted, r.TransferID
		}
	}
	if s, ok := md[MetaCheckpoint]; ok && v.Writing != nil {
		v.Checkpoint = checkpointInvalid
		if _, err := openCheckpoint(d.cfg.Sealer, imageID, v.Writing, s); err == nil {
			v.Checkpoint = checkpointValid
		}
	}
	return v, nil
}

// records are the verified records of the snapshots that still exist with
// the recorded id.
func (d *Dest) records(imageID string, md map[string]string, snaps []rbd.Snapshot) map[string]snapRecord {
	return snapRecords(d.cfg.Sealer, imageID, md, snaps)
}

// snapRecords are the records in md that sealer verifies for image
// imageID, of the snapshots in snaps that still exist with the recorded id.
func snapRecords(sealer *Sealer, imageID string, md map[string]string, snaps []rbd.Snapshot) map[string]snapRecord {
	out := map[string]snapRecord{}
	for _, s := range snaps {
		text, ok := md[MetaSnapRecordPrefix+s.Name]
		if !ok {
			continue
		}
		var r snapRecord
		if sealer.Open(kindSnapshot, imageID, text, &r) == nil && r.Snapshot == s.Name && r.SnapID == s.ID {
			out[s.Name] = r
		}
	}
	return out
}

// startCopy carries out a planCopy: the new run's writing state first (an
// older run of another transfer can no longer resume onto what follows),
// then the head's starting point.
func (d *Dest) startCopy(ctx context.Context, job *destJob, plan destPlan, size uint64) error {
	if err := job.img.RemoveMetadata(MetaCheckpoint); err != nil {
		return err
	}
	if err := d.putWriting(job); err != nil {
		return err
	}
	if plan.EnsureBase {
		equal, err := headEquals(ctx, job.img, plan.Base)
		if err != nil {
			return err
		}
		if !equal {
			d.log.Info("head differs from the base: rolling back", "transfer_id", job.id, "image", job.name, "base", plan.Base)
			if err := job.img.RollbackToSnapshot(plan.Base); err != nil {
				return err
			}
		}
	}
	if plan.Resize || plan.EnsureBase {
		cur, err := job.img.Size()
		if err != nil {
			return err
		}
		if cur != size {
			if err := job.img.Resize(size); err != nil {
				return err
			}
		}
	}
	if plan.ZeroHead {
		// A full copy sends only allocated extents: old data in the
		// holes must go.
		return job.img.WriteZeroes(0, size)
	}
	return nil
}

// headEquals proves the head equal to snapshot base: same size and no
// extent changed since (a whole-object diff may report more than changed,
// never less).
func headEquals(ctx context.Context, img *rbd.Image, base string) (bool, error) {
	snaps, err := img.Snapshots()
	if err != nil {
		return false, err
	}
	size, err := img.Size()
	if err != nil {
		return false, err
	}
	for _, s := range snaps {
		if s.Name == base && s.Size != size {
			return false, nil
		}
	}
	changed := false
	errFound := errors.New("changed")
	err = img.Diff(ctx, base, true, func(uint64, uint64, bool) error {
		changed = true
		return errFound
	})
	if err != nil && !errors.Is(err, errFound) {
		return false, err
	}
	return !changed, nil
}

func (d *Dest) putWriting(job *destJob) error {
	s, err := d.cfg.Sealer.Seal(kindWriting, job.imageID, job.w)
	if err != nil {
		return err
	}
	return job.img.SetMetadata(MetaWriting, s)
}

// Finish seals a transfer whose data the source has sent and the session
// verified: the verified digest is recorded, then the snapshot is taken
// and recorded, older Ferry snapshots go and the lock is released. An
// ephemeral transfer ends without a snapshot and without base metadata
// (its image is handed over, never a base). A finish of a transfer this
// agent holds no session for answers from the image's records when the
// transfer is complete there.
func (d *Dest) Finish(ctx context.Context, req FinishRequest) (FinishResponse, error) {
	unlock := d.keys.lock("transfer:" + req.TransferID)
	defer unlock()
	job := d.job(req.TransferID)
	if job == nil {
		return d.finishedBefore(ctx, req)
	}
	if req.Epoch != job.epoch {
		return FinishResponse{}, fmt.Errorf("%w: finish of epoch %d, the session is of epoch %d", ErrStaleEpoch, req.Epoch, job.epoch)
	}
	res, err := d.awaitCommit(ctx, job)
	if err != nil {
		if ctx.Err() == nil {
			d.closeJob(job, err)
		}
		return FinishResponse{}, fmt.Errorf("destination session: %w", err)
	}
	if res.Digest != req.Digest {
		d.closeJob(job, ErrDigestMismatch)
		return FinishResponse{}, fmt.Errorf("%w: source %s, destination %s", ErrDigestMismatch, req.Digest, res.Digest)
	}
	if err := job.img.Flush(); err != nil {
		return FinishResponse{}, err
	}
	job.w.Verified, job.w.BytesDone = res.Digest, res.BytesDone
	if err := d.putWriting(job); err != nil {
		return FinishResponse{}, err
	}
	fin, err := d.seal(job)
	if err != nil {
		return FinishResponse{}, err
	}
	d.closeJob(job, nil)
	d.log.Info("finished", "transfer_id", req.TransferID, "image", job.name, "snapshot", fin.Snapshot, "ephemeral", job.w.Ephemeral, "digest", res.Digest)
	return fin, nil
}

// finishCommitGrace is how long a finish waits for its session's commit
// while no source is connected to it.
var finishCommitGrace = 20 * time.Second

// errNoCommit: the session a finish found has not seen the stream's commit.
var errNoCommit = errors.New("the session has not received the stream's commit (this agent restarted after the source's commit, and a repeated prepare opened a new session): the transfer is retried and resumes where the data stands")

// awaitCommit waits for job's session to end, as its finish must. The
// source calls finish only once a session acknowledged its stream's
// commit; a session that is not committed and has no source connected
// is not the one that did (the agent restarted since, and a repeated
// prepare opened this one): after finishCommitGrace it is errNoCommit
// rather than a wait without end.
func (d *Dest) awaitCommit(ctx context.Context, job *destJob) (stream.CommitResult, error) {
	for {
		wctx, cancel := context.WithTimeout(ctx, finishCommitGrace)
		res, err := job.session.Wait(wctx)
		cancel()
		switch {
		case err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded):
			return res, err
		case !job.session.Streaming():
			return stream.CommitResult{}, errNoCommit
		}
	}
}

// seal ends a verified run (job.w.Verified set and recorded): the snapshot
// and its record, or for an ephemeral transfer the completed record; then
// the writing state and checkpoint go, and Ferry's older snapshots.
// Every step can run again after an interruption.
func (d *Dest) seal(job *destJob) (FinishResponse, error) {
	w, img := job.w, job.img
	fin := FinishResponse{Digest: w.Verified, BytesDone: w.BytesDone}
	var rec snapRecord
	drop := []string{MetaWriting, MetaCheckpoint}
	if w.Ephemeral {
		s, err := d.cfg.Sealer.Seal(kindCompleted, job.imageID, completedRecord{TransferID: w.TransferID, SourceSnapID: w.SourceSnapID, Digest: w.Verified, BytesDone: w.BytesDone, Granted: w.Granted})
		if err != nil {
			return fin, err
		}
		if err := img.SetMetadata(MetaCompleted, s); err != nil {
			return fin, err
		}
		drop = append(drop, MetaBase)
	} else {
		id, err := snapshotID(img, w.Snapshot)
		if errors.Is(err, rbd.ErrNotFound) {
			if err := img.CreateSnapshot(w.Snapshot); err != nil && !errors.Is(err, rbd.ErrExists) {
				return fin, err
			}
			id, err = snapshotID(img, w.Snapshot)
		}
		if err != nil {
			return fin, err
		}
		rec = snapRecord{Snapshot: w.Snapshot, SnapID: id,
			TransferID: w.TransferID, SourceSnapID: w.SourceSnapID, Digest: w.Verified, Mode: modeOf(w.Base), BytesDone: w.BytesDone, Granted: w.Granted,
			ReplicationID: w.ReplicationID, SourceSnapTime: w.SourceSnapTime}
		if err := d.putRecord(job, rec); err != nil {
			return fin, err
		}
		if err := img.SetMetadata(MetaBase, w.Snapshot); err != nil {
			return fin, err
		}
		fin.Snapshot = w.Snapshot
	}
	for _, k := range drop {
		if err := img.RemoveMetadata(k); err != nil {
			return fin, err
		}
	}
	keep := []string{fin.Snapshot}
	if w.ReplicationID != "" {
		keep = append(keep, w.Retain...)
	}
	removed, err := d.removeOldSnapshots(job, keep)
	if err != nil {
		// The copy is complete; a leftover snapshot is only space.
		d.log.Warn("removing old snapshots", "transfer_id", job.id, "image", job.name, "error", err)
	}
	fin.Removed = removed
	if len(removed) > 0 && !w.Ephemeral {
		// Recorded with the point: a repeated transfer, or ferry-api's
		// query about a lost report, answers with what went.
		rec.Removed = removed
		if err := d.putRecord(job, rec); err != nil {
			d.log.Warn("recording the removed snapshots", "transfer_id", job.id, "image", job.name, "error", err)
		}
	}
	return fin, nil
}

// finishRemoval runs the last step of a seal that was interrupted after
// the record was written (an agent killed there): when the request's
// snapshot is the newest one Ferry recorded on the image, the other Ferry
// snapshots go as the seal would have removed them (Retain kept for a
// replication cycle). A prepare of an older transfer removes nothing.
func (d *Dest) finishRemoval(job *destJob, view *destView, req PrepareRequest) []string {
	rec, ok := view.Records[req.Snapshot]
	if req.Ephemeral || !ok {
		return nil
	}
	for _, r := range view.Records {
		if r.SnapID > rec.SnapID {
			return nil
		}
	}
	keep := []string{req.Snapshot}
	if req.ReplicationID != "" {
		keep = append(keep, req.Retain...)
	}
	removed, err := d.removeOldSnapshots(job, keep)
	if err != nil {
		d.log.Warn("removing old snapshots", "transfer_id", job.id, "image", job.name, "error", err)
	}
	return removed
}

// putRecord seals rec as the record of its snapshot.
func (d *Dest) putRecord(job *destJob, rec snapRecord) error {
	s, err := d.cfg.Sealer.Seal(kindSnapshot, job.imageID, rec)
	if err != nil {
		return err
	}
	return job.img.SetMetadata(MetaSnapRecordPrefix+rec.Snapshot, s)
}

func snapshotID(img *rbd.Image, name string) (uint64, error) {
	snaps, err := img.Snapshots()
	if err != nil {
		return 0, err
	}
	for _, s := range snaps {
		if s.Name == name {
			return s.ID, nil
		}
	}
	return 0, fmt.Errorf("snapshot %s@%s: %w", img, name, rbd.ErrNotFound)
}

// removeOldSnapshots removes the snapshots Ferry recorded other than
// those named in keep (all of them when keep names none), with their
// records. A snapshot without a verified record (not Ferry's, or recreated
// under Ferry's name) stays, and so does one with clone children (a drill
// depends on it: it goes in a later seal once the clone was flattened or
// removed); a protected one is unprotected first.
func (d *Dest) removeOldSnapshots(job *destJob, keep []string) ([]string, error) {
	md, err := job.img.Metadata()
	if err != nil {
		return nil, err
	}
	snaps, err := job.img.Snapshots()
	if err != nil {
		return nil, err
	}
	recs := d.records(job.imageID, md, snaps)
	var removed []string
	var errs []error
	for _, s := range snaps {
		if _, ours := recs[s.Name]; !ours || slices.Contains(keep, s.Name) {
			continue
		}
		gone, err := removeUnlessCloned(job.img, s.Name)
		switch {
		case err != nil:
			errs = append(errs, err)
		case gone:
			removed = append(removed, s.Name)
		default:
			d.log.Info("snapshot kept: it has clone children", "transfer_id", job.id, "image", job.name, "snapshot", s.Name)
		}
	}
	// Records of snapshots that are gone (removed above or by others).
	present := map[string]bool{}
	for _, s := range snaps {
		present[s.Name] = !contains(removed, s.Name)
	}
	for k := range md {
		name, ok := strings.CutPrefix(k, MetaSnapRecordPrefix)
		if ok && !present[name] {
			if err := job.img.RemoveMetadata(k); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// removeUnlessCloned removes snapshot name of img unless it has clone
// children (then false, nil), unprotecting it first when protected. One
// already gone counts as removed.
func removeUnlessCloned(img *rbd.Image, name string) (bool, error) {
	children, err := img.SnapshotChildren(name)
	if errors.Is(err, rbd.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if len(children) > 0 {
		return false, nil
	}
	protected, err := img.SnapshotProtected(name)
	if err != nil {
		return false, err
	}
	if protected {
		if err := img.UnprotectSnapshot(name); err != nil {
			return false, err
		}
	}
	if err := img.RemoveSnapshot(name); err != nil && !errors.Is(err, rbd.ErrNotFound) {
		return false, err
	}
	return true, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func modeOf(base string) string {
	if base == "" {
		return ModeFull
	}
	return ModeIncremental
}

// QueryResult is what the destination holds of a transfer.
type QueryResult struct {
	// Exists: the image exists.
	Exists bool
	// Complete: the image holds the transfer's verified end (its recorded
	// snapshot, or for an ephemeral copy its completed record).
	Complete  bool
	Snapshot  string
	Digest    string
	Mode      string
	BytesDone uint64
	// Removed are the snapshots the transfer's finish removed, and
	// SnapshotTime when its source snapshot was taken (zero: unknown).
	Removed      []string
	SnapshotTime time.Time
}

// Query reports, read-only and without the fence, whether pool/image holds
// transferID's verified end: what ferry-api asks when a transfer's
// terminal report may have been lost.
func (d *Dest) Query(ctx context.Context, transferID, pool, image string) (QueryResult, error) {
	if err := allowed(d.cfg.Pools, pool); err != nil {
		return QueryResult{}, err
	}
	cluster, unref, err := d.cfg.Connect(ctx)
	if err != nil {
		return QueryResult{}, err
	}
	defer unref()
	img, err := cluster.OpenImage(ctx, pool, image, "", true)
	if errors.Is(err, rbd.ErrNotFound) {
		return QueryResult{}, nil
	}
	if err != nil {
		return QueryResult{}, err
	}
	defer img.Close()
	info, err := img.Info()
	if err != nil {
		return QueryResult{}, err
	}
	md, err := img.Metadata()
	if err != nil {
		return QueryResult{}, err
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return QueryResult{}, err
	}
	res := QueryResult{Exists: true}
	for _, r := range d.records(info.ID, md, snaps) {
		if r.TransferID == transferID {
			return QueryResult{Exists: true, Complete: true, Snapshot: r.Snapshot, Digest: r.Digest, Mode: r.Mode, BytesDone: r.BytesDone,
				Removed: r.Removed, SnapshotTime: r.SourceSnapTime}, nil
		}
	}
	var c completedRecord
	if s, ok := md[MetaCompleted]; ok && d.cfg.Sealer.Open(kindCompleted, info.ID, s, &c) == nil && c.TransferID == transferID {
		return QueryResult{Exists: true, Complete: true, Digest: c.Digest, Mode: ModeFull, BytesDone: c.BytesDone}, nil
	}
	return res, nil
}

// CleanupResult says what Cleanup removed.
type CleanupResult struct {
	// ImageRemoved: the image was the transfer's own, never completed,
	// and is gone.
	ImageRemoved bool
	// StateRemoved: the transfer's writing state and checkpoint were
	// removed from an image that holds other transfers' copies (the next
	// transfer brings the head back to its base).
	StateRemoved bool
}

// Cleanup removes what a failed, cancelled or deleted transfer left at the
// destination, and nothing else: the image itself only when this very
// transfer created it and nothing was ever completed into it (no snapshot
// record, no completed record); otherwise only its writing state and
// checkpoint, when they are its own. Everything is checked under the
// fence, and an open session of the transfer is never cleaned under.
func (d *Dest) Cleanup(ctx context.Context, transferID, pool, image string) (CleanupResult, error) {
	if err := allowed(d.cfg.Pools, pool); err != nil {
		return CleanupResult{}, err
	}
	name := pool + "/" + image
	unlock := d.keys.lock("transfer:"+transferID, "image:"+name)
	defer unlock()
	if d.job(transferID) != nil {
		return CleanupResult{}, fmt.Errorf("%w: transfer %s has an open session here", ErrConflict, transferID)
	}
	cluster, unref, err := d.cfg.Connect(ctx)
	if err != nil {
		return CleanupResult{}, err
	}
	defer unref()
	img, err := cluster.OpenImage(ctx, pool, image, "", false)
	if errors.Is(err, rbd.ErrNotFound) {
		return CleanupResult{}, nil
	}
	if err != nil {
		return CleanupResult{}, err
	}
	job := &destJob{id: transferID, name: name, img: img, unref: func() {}}
	defer d.release(job)
	md, err := img.Metadata()
	if err != nil {
		return CleanupResult{}, err
	}
	if md[MetaOwner] != OwnerValue {
		return CleanupResult{}, fmt.Errorf("%w: %s", ErrNotOwned, name)
	}
	if _, ok := md[MetaPrimary]; ok {
		return CleanupResult{}, fmt.Errorf("%w: %s is the primary of its replication: left in place", ErrConflict, name)
	}
	info, err := img.Info()
	if err != nil {
		return CleanupResult{}, err
	}
	job.imageID = info.ID
	if err := d.fence(job, info); err != nil {
		return CleanupResult{}, err
	}
	// Read again under the fence.
	if md, err = img.Metadata(); err != nil {
		return CleanupResult{}, err
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return CleanupResult{}, err
	}
	var c completedRecord
	completed := false
	if s, ok := md[MetaCompleted]; ok && d.cfg.Sealer.Open(kindCompleted, info.ID, s, &c) == nil {
		completed = true
	}
	if md[MetaCreatedBy] == transferID && len(d.records(info.ID, md, snaps)) == 0 && !completed {
		if len(snaps) > 0 {
			return CleanupResult{}, fmt.Errorf("%w: %s has snapshots Ferry did not record: left in place", ErrConflict, name)
		}
		d.release(job)
		if err := cluster.RemoveImage(ctx, pool, image); err != nil && !errors.Is(err, rbd.ErrNotFound) {
			return CleanupResult{}, err
		}
		d.log.Info("removed the image of a transfer that never completed", "transfer_id", transferID, "image", name)
		return CleanupResult{ImageRemoved: true}, nil
	}
	var w writingState
	if s, ok := md[MetaWriting]; ok && d.cfg.Sealer.Open(kindWriting, info.ID, s, &w) == nil && w.TransferID == transferID && w.Verified == "" {
		for _, k := range []string{MetaCheckpoint, MetaWriting} {
			if err := img.RemoveMetadata(k); err != nil {
				return CleanupResult{}, err
			}
		}
		d.log.Info("removed the state of a transfer that never completed", "transfer_id", transferID, "image", name)
		return CleanupResult{StateRemoved: true}, nil
	}
	return CleanupResult{}, nil
}

// finishedBefore answers a finish that finds no session: the transfer's
// copy is complete in the image (a repeated finish), or there is none.
func (d *Dest) finishedBefore(ctx context.Context, req FinishRequest) (FinishResponse, error) {
	noSession := fmt.Errorf("%w: %s", ErrNoSession, req.TransferID)
	if req.Pool == "" || req.Image == "" {
		return FinishResponse{}, noSession
	}
	q, err := d.Query(ctx, req.TransferID, req.Pool, req.Image)
	if errors.Is(err, ErrPoolNotAllowed) {
		return FinishResponse{}, noSession
	}
	if err != nil {
		return FinishResponse{}, err
	}
	if !q.Complete || q.Digest != req.Digest {
		return FinishResponse{}, noSession
	}
	return FinishResponse{Digest: q.Digest, Snapshot: q.Snapshot, BytesDone: q.BytesDone, Removed: q.Removed}, nil
}

// Abort ends a transfer's session on this agent; the image keeps its
// checkpoint for a later retry. Only the session's epoch may abort it.
func (d *Dest) Abort(_ context.Context, req AbortRequest) error {
	unlock := d.keys.lock("transfer:" + req.TransferID)
	defer unlock()
	job := d.job(req.TransferID)
	if job == nil {
		return fmt.Errorf("%w: %s", ErrNoSession, req.TransferID)
	}
	if req.Epoch != job.epoch {
		return fmt.Errorf("%w: abort of epoch %d, the session is of epoch %d", ErrStaleEpoch, req.Epoch, job.epoch)
	}
	d.closeJob(job, errors.New(req.Reason))
	return nil
}

// Close aborts every open session.
func (d *Dest) Close() {
	d.mu.Lock()
	jobs := make([]*destJob, 0, len(d.jobs))
	for _, j := range d.jobs {
		jobs = append(jobs, j)
	}
	d.mu.Unlock()
	for _, j := range jobs {
		d.closeJob(j, errors.New("agent stopping"))
	}
}

// Sessions is the number of open destination jobs.
func (d *Dest) Sessions() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.jobs)
}

func (d *Dest) job(transferID string) *destJob {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.jobs[transferID]
}

// watch releases a job whose session ended without a commit (expired,
// failed, aborted), or that was committed but never finished within
// FinishWait: its image, lock and cluster connection are not held forever.
func (d *Dest) watch(job *destJob) {
	<-job.session.Done()
	if _, err := job.session.Wait(context.Background()); err == nil {
		t := time.NewTimer(d.cfg.FinishWait)
		defer t.Stop()
		select {
		case <-job.finished:
			return
		case <-t.C:
		}
	}
	unlock := d.keys.lock("transfer:" + job.id)
	defer unlock()
	if d.job(job.id) == job {
		d.log.Info("releasing the session's image", "transfer_id", job.id, "image", job.name)
		d.closeJob(job, errors.New("session ended"))
	}
}

// closeJob ends job's session (if still open) and releases it; the caller
// holds the transfer's key.
func (d *Dest) closeJob(job *destJob, reason error) {
	d.mu.Lock()
	if d.jobs[job.id] == job {
		delete(d.jobs, job.id)
	}
	d.mu.Unlock()
	if job.session != nil {
		if reason != nil {
			job.session.Abort(reason)
		}
		<-job.session.Done()
	}
	d.release(job)
}

func (d *Dest) release(job *destJob) {
	job.release.Do(func() {
		if job.finished != nil {
			close(job.finished)
		}
		if job.locked {
			if err := job.img.ReleaseLock(); err != nil {
				d.log.Warn("releasing lock", "image", job.name, "error", err)
			}
		}
		if err := job.img.Close(); err != nil {
			d.log.Warn("closing image", "image", job.name, "error", err)
		}
		job.unref()
	})
}

// Endpoint is where sources reach this destination's data port.
func (d *Dest) Endpoint() string { return d.cfg.Endpoint }

// keyedMutex serialises work per key (a transfer, an image).
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int
}

// lock takes the keys in the order given (callers always name a transfer
// before an image) and returns the function that releases them all.
func (k *keyedMutex) lock(keys ...string) func() {
	held := make([]*keyLock, 0, len(keys))
	for _, key := range keys {
		k.mu.Lock()
		if k.locks == nil {
			k.locks = map[string]*keyLock{}
		}
		l := k.locks[key]
		if l == nil {
			l = &keyLock{}
			k.locks[key] = l
		}
		l.refs++
		k.mu.Unlock()
		l.mu.Lock()
		held = append(held, l)
	}
	return func() {
		for i := len(held) - 1; i >= 0; i-- {
			l := held[i]
			l.mu.Unlock()
			k.mu.Lock()
			l.refs--
			if l.refs == 0 {
				for key, v := range k.locks {
					if v == l {
						delete(k.locks, key)
						break
					}
				}
			}
			k.mu.Unlock()
		}
	}
}
