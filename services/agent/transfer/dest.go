package transfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/stream"
)

// featuresKept are the RBD features a destination image may take from its
// source; others (journaling, data pools) are this cluster's business.
const featuresKept = 1<<0 | 1<<2 | 1<<3 | 1<<4 | 1<<5 // layering, exclusive-lock, object-map, fast-diff, deep-flatten

const featureExclusiveLock = 1 << 2

// Dest is the destination side of transfers on one agent.
type Dest struct {
	connect    Connector
	server     *stream.Server
	pools      []string
	endpoint   string
	serverName string
	log        *slog.Logger

	mu   sync.Mutex
	jobs map[string]*destJob
}

type destJob struct {
	img      *rbd.Image
	unref    func() // releases the cluster connection
	locked   bool
	session  *stream.Session
	snapshot string
	name     string
	// ephemeral: finish without a snapshot or base (PrepareRequest).
	ephemeral bool
}

// NewDest serves transfers into the allowed pools of the cluster connect
// reaches, through server, whose data port sources reach at endpoint
// (certificate name serverName).
func NewDest(connect Connector, server *stream.Server, pools []string, endpoint, serverName string, log *slog.Logger) *Dest {
	return &Dest{connect: connect, server: server, pools: pools, endpoint: endpoint, serverName: serverName,
		log: log, jobs: map[string]*destJob{}}
}

// Prepare opens or creates the destination image, fences it, decides the
// base and opens a stream session for the transfer.
func (d *Dest) Prepare(ctx context.Context, req PrepareRequest) (PrepareResponse, error) {
	if err := req.Validate(); err != nil {
		return PrepareResponse{}, err
	}
	if err := allowed(d.pools, req.Pool); err != nil {
		return PrepareResponse{}, err
	}
	log := d.log.With("transfer_id", req.TransferID, "image", req.Pool+"/"+req.Image)
	d.closeJob(req.TransferID, errors.New("superseded by a new prepare"))

	cluster, unref, err := d.connect(ctx)
	if err != nil {
		return PrepareResponse{}, err
	}
	img, created, err := d.openOrCreate(ctx, cluster, req)
	if err != nil {
		unref()
		return PrepareResponse{}, err
	}
	job := &destJob{img: img, unref: unref, snapshot: req.Snapshot, name: req.Pool + "/" + req.Image, ephemeral: req.Ephemeral}
	fail := func(err error) (PrepareResponse, error) {
		d.release(job)
		return PrepareResponse{}, err
	}
	info, err := img.Info()
	if err != nil {
		return fail(err)
	}
	// Fencing: one writer at a time. Another agent holding the lock makes
	// this prepare fail instead of writing alongside it.
	if info.Features&featureExclusiveLock != 0 {
		if err := img.LockExclusive(); err != nil {
			return fail(fmt.Errorf("fencing %s: %w", job.name, err))
		}
		job.locked = true
	}
	md, err := img.Metadata()
	if err != nil {
		return fail(err)
	}
	snaps, err := snapshotNames(img)
	if err != nil {
		return fail(err)
	}

	base, resumed := "", false
	if w, ok := decodeWriting(md[MetaWriting]); ok && w.TransferID == req.TransferID && w.Snapshot == req.Snapshot {
		// The same transfer again: same base, so chunks number the same.
		base, resumed = w.Base, true
	} else {
		if req.Mode != ModeFull && !req.Ephemeral {
			base = chooseBase(req.Candidates, snaps)
		}
		if base == "" && req.Mode == ModeIncremental {
			return fail(fmt.Errorf("%w: the destination has none of the source's snapshots %v", ErrNoBase, req.Candidates))
		}
		if err := d.cleanHead(img, created, base, info.Size, md); err != nil {
			return fail(err)
		}
		if err := img.RemoveMetadata(MetaCheckpoint); err != nil {
			return fail(err)
		}
	}
	if slices.Contains(snaps, req.Snapshot) && !resumed {
		return fail(fmt.Errorf("%w: destination already has snapshot %q", stream.ErrCheckpoint, req.Snapshot))
	}
	if info.Size != req.Size {
		if err := img.Resize(req.Size); err != nil {
			return fail(err)
		}
	}
	ws, _ := json.Marshal(writingState{TransferID: req.TransferID, Base: base, Snapshot: req.Snapshot, Size: req.Size})
	if err := img.SetMetadata(MetaWriting, string(ws)); err != nil {
		return fail(err)
	}
	pr, err := d.server.PrepareSession(ctx, stream.PrepareRequest{
		TransferID:  req.TransferID,
		ImageName:   job.name,
		Image:       &destImage{img: img, size: req.Size},
		Checkpoints: metaCheckpoints{img: img},
		ChunkSize:   req.ChunkSize,
	})
	if err != nil {
		return fail(err)
	}
	job.session = pr.Session
	d.mu.Lock()
	d.jobs[req.TransferID] = job
	d.mu.Unlock()
	log.Info("prepared", "base", base, "created", created, "resumed", pr.Resumed, "watermark", pr.Checkpoint.Watermark, "ephemeral", req.Ephemeral)
	return PrepareResponse{
		Endpoint: d.endpoint, ServerName: d.serverName, Ticket: pr.Ticket, ChunkSize: pr.ChunkSize,
		Checkpoint: pr.Checkpoint, Resumed: pr.Resumed, Base: base, Created: created, Ephemeral: req.Ephemeral,
	}, nil
}

// openOrCreate opens the destination image for writing, creating it (with
// Ferry's ownership metadata) when missing. An existing image must carry
// Ferry's ownership for this same source.
func (d *Dest) openOrCreate(ctx context.Context, cluster *rbd.Cluster, req PrepareRequest) (*rbd.Image, bool, error) {
	img, err := cluster.OpenImage(ctx, req.Pool, req.Image, "", false)
	if err == nil {
		md, err := img.Metadata()
		if err != nil {
			img.Close()
			return nil, false, err
		}
		if md[MetaOwner] != OwnerValue || md[MetaSourceFSID] != req.SourceFSID || md[MetaSourceImageID] != req.SourceImageID {
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
	spec := rbd.ImageSpec{Size: req.Size, Order: req.Order, Features: req.Features & featuresKept}
	if err := cluster.CreateImage(ctx, req.Pool, req.Image, spec); err != nil {
		return nil, false, err
	}
	img, err = cluster.OpenImage(ctx, req.Pool, req.Image, "", false)
	if err != nil {
		return nil, false, err
	}
	for k, v := range map[string]string{
		MetaOwner: OwnerValue, MetaCreatedBy: req.TransferID, MetaProject: req.ProjectID,
		MetaSourceFSID: req.SourceFSID, MetaSourceImageID: req.SourceImageID, MetaSourceName: req.SourceName,
	} {
		if err := img.SetMetadata(k, v); err != nil {
			img.Close()
			return nil, false, err
		}
	}
	return img, true, nil
}

// cleanHead makes the head a correct starting point: equal to base for an
// incremental, all zeros for a full copy into an existing image.
func (d *Dest) cleanHead(img *rbd.Image, created bool, base string, size uint64, md map[string]string) error {
	switch {
	case created:
		return nil
	case base != "":
		// Written by another (unfinished) transfer since base: go back.
		if _, dirty := decodeWriting(md[MetaWriting]); dirty {
			return img.RollbackToSnapshot(base)
		}
		return nil
	default:
		// A full copy sends only allocated extents: old data in the
		// holes must go.
		return img.WriteZeroes(0, size)
	}
}

// Finish seals a transfer whose data the source has sent and the session
// verified: snapshot, metadata, old snapshots removed, lock released. An
// ephemeral transfer ends without a snapshot and without base metadata
// (its image is handed over, never a base): Ferry's snapshots all go,
// its ownership metadata stays.
func (d *Dest) Finish(ctx context.Context, req FinishRequest) (FinishResponse, error) {
	d.mu.Lock()
	job, ok := d.jobs[req.TransferID]
	d.mu.Unlock()
	if !ok {
		return FinishResponse{}, fmt.Errorf("%w: %s", ErrNoSession, req.TransferID)
	}
	res, err := job.session.Wait(ctx)
	if err != nil {
		d.closeJob(req.TransferID, err)
		return FinishResponse{}, fmt.Errorf("destination session: %w", err)
	}
	if res.Digest != req.Digest {
		d.closeJob(req.TransferID, ErrDigestMismatch)
		return FinishResponse{}, fmt.Errorf("%w: source %s, destination %s", ErrDigestMismatch, req.Digest, res.Digest)
	}
	img := job.img
	if err := img.Flush(); err != nil {
		return FinishResponse{}, err
	}
	snapshot, drop := job.snapshot, []string{MetaWriting, MetaCheckpoint}
	if job.ephemeral {
		// A base left by an earlier transfer into this image goes too.
		snapshot, drop = "", append(drop, MetaBase)
	} else {
		if err := img.CreateSnapshot(snapshot); err != nil && !errors.Is(err, rbd.ErrExists) {
			return FinishResponse{}, err
		}
		if err := img.SetMetadata(MetaBase, snapshot); err != nil {
			return FinishResponse{}, err
		}
	}
	for _, k := range drop {
		if err := img.RemoveMetadata(k); err != nil {
			return FinishResponse{}, err
		}
	}
	removed, err := removeOldSnapshots(img, snapshot)
	if err != nil {
		// The copy is complete; a leftover snapshot is only space.
		d.log.Warn("removing old snapshots", "transfer_id", req.TransferID, "image", job.name, "error", err)
	}
	d.mu.Lock()
	delete(d.jobs, req.TransferID)
	d.mu.Unlock()
	d.release(job)
	d.log.Info("finished", "transfer_id", req.TransferID, "image", job.name, "snapshot", snapshot, "ephemeral", job.ephemeral, "digest", res.Digest)
	return FinishResponse{Digest: res.Digest, BytesDone: res.BytesDone, Snapshot: snapshot, Removed: removed}, nil
}

// Abort ends a transfer's session on this agent; the image keeps its
// checkpoint for a later retry.
func (d *Dest) Abort(_ context.Context, transferID, reason string) error {
	if !d.closeJob(transferID, errors.New(reason)) {
		return fmt.Errorf("%w: %s", ErrNoSession, transferID)
	}
	return nil
}

// Close aborts every open session.
func (d *Dest) Close() {
	d.mu.Lock()
	ids := make([]string, 0, len(d.jobs))
	for id := range d.jobs {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	for _, id := range ids {
		d.closeJob(id, errors.New("agent stopping"))
	}
}

func (d *Dest) closeJob(transferID string, reason error) bool {
	d.mu.Lock()
	job, ok := d.jobs[transferID]
	delete(d.jobs, transferID)
	d.mu.Unlock()
	if !ok {
		return false
	}
	if job.session != nil {
		job.session.Abort(reason)
		<-job.session.Done()
	}
	d.release(job)
	return true
}

func (d *Dest) release(job *destJob) {
	if job.locked {
		if err := job.img.ReleaseLock(); err != nil {
			d.log.Warn("releasing lock", "image", job.name, "error", err)
		}
		job.locked = false
	}
	if err := job.img.Close(); err != nil {
		d.log.Warn("closing image", "image", job.name, "error", err)
	}
	job.unref()
}

// Endpoint is where sources reach this destination's data port.
func (d *Dest) Endpoint() string { return d.endpoint }
