package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
)

// Failover and failback: promote makes a replication's image the primary
// at a retained point (the source of the reverse cycles), demote makes
// the other side's image a Ferry destination of it at that common point,
// copying a divergent head aside first; rename gives a demoted image its
// replica name back (failback: Cinder's volume-<X> once unmanaged). Each
// checks everything before it changes anything, and a repeat answers the
// same without changing anything again.

// Metadata of failover.
const (
	// MetaPrimary holds the sealed primaryMarker of a promoted image:
	// while it exists, no prepare writes the image and the destination
	// clean-up does not touch it.
	MetaPrimary = "ferry.primary"
	// MetaDemoted holds the sealed demotedRecord of a demoted image: a
	// repeated demote answers from it.
	MetaDemoted = "ferry.demoted"
	// MetaPreservedFrom (pool/image) and MetaPreservedFromID (its RBD id)
	// mark a divergent head's copy.
	MetaPreservedFrom   = "ferry.preserved_from"
	MetaPreservedFromID = "ferry.preserved_from_id"
	// PreserveSnapshotPrefix names the temporary snapshot of a head
	// being copied aside.
	PreserveSnapshotPrefix = "ferry-preserve-"
	kindPrimary            = "primary"
	kindDemoted            = "demoted"
)

// primaryMarker says an image is a replication's primary at Point.
type primaryMarker struct {
	ReplicationID string    `json:"replication_id"`
	Point         string    `json:"point"`
	SnapID        uint64    `json:"snap_id"`
	Time          time.Time `json:"time"`
	// RolledBack and Digest: what the promote answered (a repeat
	// answers the same).
	RolledBack bool   `json:"rolled_back,omitempty"`
	Digest     string `json:"digest,omitempty"`
}

// demotedRecord is what a demote did, for a repeat of it.
type demotedRecord struct {
	ReplicationID string          `json:"replication_id"`
	Point         string          `json:"point"`
	Peer          rpc.PeerImage   `json:"peer"`
	Reply         rpc.DemoteReply `json:"reply"`
}

// promoteView is what a promote found, read under the fence.
type promoteView struct {
	Owned       bool   // ferry.owner
	Replication string // ferry.replication_id
	Snap        *rbd.Snapshot
	Record      *snapRecord // the point's verified record
	Marker      *primaryMarker
}

// planPromote decides a promote (pure): answer from the marker (a
// repeat), or run; every refusal is here.
func planPromote(req rpc.PromoteRequest, v promoteView) (repeat bool, err error) {
	name := req.Pool + "/" + req.Image
	switch {
	case !v.Owned || v.Replication != req.ReplicationID:
		return false, fmt.Errorf("%w: %s is not Ferry's image of replication %s", rpc.ErrConflict, name, req.ReplicationID)
	case v.Snap == nil:
		return false, fmt.Errorf("%w: %s has no snapshot %s", rpc.ErrNotFound, name, req.Point)
	case v.Record == nil || v.Record.ReplicationID != req.ReplicationID:
		return false, fmt.Errorf("%w: %s@%s is not a verified point of replication %s", rpc.ErrConflict, name, req.Point, req.ReplicationID)
	}
	if m := v.Marker; m != nil {
		switch {
		case m.ReplicationID == req.ReplicationID && m.Point == req.Point && m.SnapID == v.Snap.ID:
			return true, nil
		case !req.Force:
			return false, fmt.Errorf("%w: %s is the primary of replication %s at %s already (force to promote another point)",
				rpc.ErrConflict, name, m.ReplicationID, m.Point)
		}
	}
	return false, nil
}

// Promote makes req.Pool/req.Image, Ferry's image of replication
// req.ReplicationID, the primary at req.Point (a verified point of it):
// the head is rolled back to the point unless proven equal, the point is
// tagged as a source snapshot (the reverse cycles' base, which the source
// side may remove once superseded) and the primary marker is written.
func (d *Dest) Promote(ctx context.Context, req rpc.PromoteRequest) (rpc.PromoteReply, error) {
	if err := req.Validate(); err != nil {
		return rpc.PromoteReply{}, err
	}
	if err := allowed(d.cfg.Pools, req.Pool); err != nil {
		return rpc.PromoteReply{}, err
	}
	name := req.Pool + "/" + req.Image
	if req.Force {
		// An unplanned failover: the source is gone, and a session it
		// left open here would hold the replica until its ticket expires.
		// Its partial writes are rolled back below.
		d.endSessions(name, "superseded by a forced promote (unplanned failover)")
	}
	unlock := d.keys.lock("image:" + name)
	defer unlock()
	if d.imageBusy(name) {
		return rpc.PromoteReply{}, rpc.Temporary(fmt.Errorf("%w: %s has an open transfer session here", rpc.ErrConflict, name))
	}
	cluster, img, job, err := d.openFenced(ctx, req.Pool, req.Image)
	if err != nil {
		return rpc.PromoteReply{}, err
	}
	defer d.release(job)
	md, err := img.Metadata()
	if err != nil {
		return rpc.PromoteReply{}, err
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return rpc.PromoteReply{}, err
	}
	v := promoteView{Owned: md[MetaOwner] == OwnerValue, Replication: md[MetaReplication], Marker: d.marker(job.imageID, md)}
	for i := range snaps {
		if snaps[i].Name == req.Point {
			v.Snap = &snaps[i]
		}
	}
	if rec, ok := d.records(job.imageID, md, snaps)[req.Point]; ok {
		v.Record = &rec
	}
	repeat, err := planPromote(req, v)
	if err != nil {
		d.log.Warn("promote refused, image untouched", "replication_id", req.ReplicationID, "image", name, "point", req.Point, "error", err)
		return rpc.PromoteReply{}, err
	}
	reply := rpc.PromoteReply{FSID: cluster.FSID(), ImageID: job.imageID, Name: name, SnapID: v.Snap.ID, Size: v.Snap.Size, Digest: v.Record.Digest}
	if repeat {
		reply.RolledBack = v.Marker.RolledBack
		return reply, nil
	}
	// The head: back to the point unless proven equal (a cut cycle's
	// partial writes, or newer points than the one promoted).
	if reply.RolledBack, err = rollbackTo(ctx, img, *v.Snap); err != nil {
		return rpc.PromoteReply{}, err
	}
	for _, k := range []string{MetaWriting, MetaCheckpoint, MetaDemoted} {
		if err := img.RemoveMetadata(k); err != nil {
			return rpc.PromoteReply{}, err
		}
	}
	tag, err := d.cfg.Sealer.Seal(kindSourceSnap, job.imageID, sourceSnapTag{Snapshot: req.Point, SnapID: v.Snap.ID, TransferID: v.Record.TransferID})
	if err != nil {
		return rpc.PromoteReply{}, err
	}
	if err := img.SetMetadata(MetaSourceSnapPrefix+req.Point, tag); err != nil {
		return rpc.PromoteReply{}, err
	}
	m, err := d.cfg.Sealer.Seal(kindPrimary, job.imageID, primaryMarker{ReplicationID: req.ReplicationID, Point: req.Point, SnapID: v.Snap.ID,
		Time: time.Now().UTC(), RolledBack: reply.RolledBack, Digest: reply.Digest})
	if err != nil {
		return rpc.PromoteReply{}, err
	}
	if err := img.SetMetadata(MetaPrimary, m); err != nil {
		return rpc.PromoteReply{}, err
	}
	d.log.Info("promoted", "replication_id", req.ReplicationID, "image", name, "point", req.Point, "rolled_back", reply.RolledBack, "force", req.Force)
	return reply, nil
}

// endSessions ends the transfer sessions open here on image name (pool/image),
// each under its transfer's key, as an abort would.
func (d *Dest) endSessions(name, reason string) {
	d.mu.Lock()
	var jobs []*destJob
	for _, j := range d.jobs {
		if j.name == name {
			jobs = append(jobs, j)
		}
	}
	d.mu.Unlock()
	for _, j := range jobs {
		unlock := d.keys.lock("transfer:" + j.id)
		if d.job(j.id) == j {
			d.log.Warn("ending a transfer session", "transfer_id", j.id, "image", name, "reason", reason)
			d.closeJob(j, errors.New(reason))
		}
		unlock()
	}
}

// openFenced opens pool/image for writing and takes the fence; the job
// releases both.
func (d *Dest) openFenced(ctx context.Context, pool, image string) (*rbd.Cluster, *rbd.Image, *destJob, error) {
	if d.cfg.Sealer == nil {
		return nil, nil, nil, errors.New("destination has no state key")
	}
	cluster, unref, err := d.cfg.Connect(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	img, err := cluster.OpenImage(ctx, pool, image, "", false)
	if errors.Is(err, rbd.ErrNotFound) {
		unref()
		return nil, nil, nil, fmt.Errorf("%w: image %s/%s: %w", rpc.ErrNotFound, pool, image, err)
	}
	if err != nil {
		unref()
		return nil, nil, nil, err
	}
	job := &destJob{name: pool + "/" + image, img: img, unref: unref}
	info, err := img.Info()
	if err != nil {
		d.release(job)
		return nil, nil, nil, err
	}
	job.imageID = info.ID
	if err := d.fence(job, info); err != nil {
		d.release(job)
		return nil, nil, nil, err
	}
	return cluster, img, job, nil
}

// marker is the image's verified primary marker, nil for none.
func (d *Dest) marker(imageID string, md map[string]string) *primaryMarker {
	s, ok := md[MetaPrimary]
	if !ok {
		return nil
	}
	var m primaryMarker
	if d.cfg.Sealer.Open(kindPrimary, imageID, s, &m) != nil {
		return nil
	}
	return &m
}

// rollbackTo brings the head back to snap (and its size) unless it is
// proven equal; it reports whether it rolled back.
func rollbackTo(ctx context.Context, img *rbd.Image, snap rbd.Snapshot) (bool, error) {
	equal, err := headEquals(ctx, img, snap.Name)
	if err != nil || equal {
		return false, err
	}
	if err := img.RollbackToSnapshot(snap.Name); err != nil {
		return false, err
	}
	if size, err := img.Size(); err != nil {
		return true, err
	} else if size != snap.Size {
		return true, img.Resize(snap.Size)
	}
	return true, nil
}

// copyState is what PreserveAs names.
type copyState int

const (
	copyNone    copyState = iota // no such image
	copyOurs                     // Ferry's copy of this image's head
	copyForeign                  // another image
)

// demoteView is what a demote found, read under the fence.
type demoteView struct {
	Replication string // ferry.replication_id
	Snap        *rbd.Snapshot
	// Tagged: Point is a source snapshot Ferry took (tag verified).
	Tagged bool
	Record *snapRecord
	Marker *primaryMarker
	// Demoted is the verified record of an earlier demote.
	Demoted   *demotedRecord
	HeadEqual bool
	Copy      copyState
}

// demotePlan is what a demote does.
type demotePlan struct {
	// Answer: a repeat of a demote that completed.
	Answer *rpc.DemoteReply
	// Preserve: copy the head aside (Reuse: the copy exists already).
	Preserve, Reuse bool
	// Rollback: the head differs from the point.
	Rollback bool
}

// planDemote decides a demote (pure): every refusal is here.
func planDemote(req rpc.DemoteRequest, v demoteView) (demotePlan, error) {
	name := req.Pool + "/" + req.Image
	if r := v.Demoted; r != nil && r.ReplicationID == req.ReplicationID && r.Point == req.Point && r.Peer == req.Peer {
		reply := r.Reply
		return demotePlan{Answer: &reply}, nil
	}
	switch {
	case v.Snap == nil:
		return demotePlan{}, fmt.Errorf("%w: %s has no snapshot %s", rpc.ErrNotFound, name, req.Point)
	case !v.Tagged && (v.Record == nil || v.Record.ReplicationID != req.ReplicationID || v.Replication != req.ReplicationID):
		return demotePlan{}, fmt.Errorf("%w: %s@%s is neither a source snapshot Ferry took nor a verified point of replication %s",
			rpc.ErrConflict, name, req.Point, req.ReplicationID)
	case v.Replication != "" && v.Replication != req.ReplicationID:
		return demotePlan{}, fmt.Errorf("%w: %s is Ferry's image of replication %s, not %s", rpc.ErrConflict, name, v.Replication, req.ReplicationID)
	}
	if m := v.Marker; m != nil && (m.ReplicationID != req.ReplicationID ||
		m.Point != req.Point && !(v.Tagged && v.Snap.ID > m.SnapID)) {
		// A primary at another point: demoted only to a point it took
		// since, as the source of the reverse cycles (a failback).
		return demotePlan{}, fmt.Errorf("%w: %s is the primary of replication %s at %s", rpc.ErrConflict, name, m.ReplicationID, m.Point)
	}
	if v.Copy == copyForeign {
		return demotePlan{}, fmt.Errorf("%w: %s/%s exists and is not Ferry's copy of %s", rpc.ErrConflict, req.Pool, req.PreserveAs, name)
	}
	p := demotePlan{Rollback: !v.HeadEqual, Reuse: v.Copy == copyOurs}
	if p.Rollback {
		if req.PreserveAs == "" {
			return demotePlan{}, fmt.Errorf("%w: the head of %s differs from %s (written after it): name an image to preserve it as",
				rpc.ErrConflict, name, req.Point)
		}
		p.Preserve = true
	}
	return p, nil
}

// Demote makes req.Pool/req.Image a Ferry destination of req.Peer (the new
// primary) at req.Point, their common point: a divergent head is copied
// to req.PreserveAs first (refused without it), then the head is rolled
// back to the point and the image adopted: the peer as its source, the
// point's sealed record bound to the peer's snapshot id, the point as
// the base, the primary marker removed.
func (d *Dest) Demote(ctx context.Context, req rpc.DemoteRequest) (rpc.DemoteReply, error) {
	if err := req.Validate(); err != nil {
		return rpc.DemoteReply{}, err
	}
	if err := allowed(d.cfg.Pools, req.Pool); err != nil {
		return rpc.DemoteReply{}, err
	}
	name := req.Pool + "/" + req.Image
	unlock := d.keys.lock("image:" + name)
	defer unlock()
	if d.imageBusy(name) {
		return rpc.DemoteReply{}, rpc.Temporary(fmt.Errorf("%w: %s has an open transfer session here", rpc.ErrConflict, name))
	}
	cluster, img, job, err := d.openFenced(ctx, req.Pool, req.Image)
	if err != nil {
		return rpc.DemoteReply{}, err
	}
	defer d.release(job)
	md, err := img.Metadata()
	if err != nil {
		return rpc.DemoteReply{}, err
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return rpc.DemoteReply{}, err
	}
	v := demoteView{Replication: md[MetaReplication], Marker: d.marker(job.imageID, md)}
	var dr demotedRecord
	if s, ok := md[MetaDemoted]; ok && d.cfg.Sealer.Open(kindDemoted, job.imageID, s, &dr) == nil {
		v.Demoted = &dr
	}
	for i := range snaps {
		if snaps[i].Name == req.Point {
			v.Snap = &snaps[i]
		}
	}
	if rec, ok := d.records(job.imageID, md, snaps)[req.Point]; ok {
		v.Record = &rec
	}
	if v.Snap != nil {
		var t sourceSnapTag
		s, ok := md[MetaSourceSnapPrefix+req.Point]
		v.Tagged = ok && d.cfg.Sealer.Open(kindSourceSnap, job.imageID, s, &t) == nil && t.Snapshot == req.Point && t.SnapID == v.Snap.ID
		if v.HeadEqual, err = headEquals(ctx, img, req.Point); err != nil {
			return rpc.DemoteReply{}, err
		}
	}
	var copyImg *rbd.Image
	if req.PreserveAs != "" {
		copyImg, v.Copy, err = d.preservedCopy(ctx, cluster, req, job.imageID)
		if err != nil {
			return rpc.DemoteReply{}, err
		}
		if copyImg != nil {
			defer copyImg.Close()
		}
	}
	plan, err := planDemote(req, v)
	if err != nil {
		d.log.Warn("demote refused, image untouched", "replication_id", req.ReplicationID, "image", name, "point", req.Point, "error", err)
		return rpc.DemoteReply{}, err
	}
	if plan.Answer != nil {
		return *plan.Answer, nil
	}
	log := d.log.With("replication_id", req.ReplicationID, "image", name, "point", req.Point)
	reply := rpc.DemoteReply{SnapID: v.Snap.ID}
	if plan.Preserve {
		if reply.PreservedBytes, err = d.preserve(ctx, cluster, img, job.imageID, req, copyImg); err != nil {
			return rpc.DemoteReply{}, fmt.Errorf("preserving the head of %s as %s (the image is untouched): %w", name, req.PreserveAs, err)
		}
		reply.Preserved = req.PreserveAs
		log.Info("divergent head preserved", "preserved_as", req.Pool+"/"+req.PreserveAs, "bytes", reply.PreservedBytes)
	} else if plan.Reuse {
		// An interrupted demote preserved the head and rolled back.
		reply.Preserved = req.PreserveAs
		if reply.PreservedBytes, err = allocated(ctx, copyImg); err != nil {
			return rpc.DemoteReply{}, err
		}
	}
	if plan.Rollback {
		if reply.RolledBack, err = rollbackTo(ctx, img, *v.Snap); err != nil {
			return rpc.DemoteReply{}, err
		}
	}
	if err := d.adopt(img, job.imageID, req, *v.Snap, reply); err != nil {
		return rpc.DemoteReply{}, err
	}
	log.Info("demoted: a destination of the peer", "peer", req.Peer.Name, "rolled_back", reply.RolledBack, "preserved", reply.Preserved)
	return reply, nil
}

// adopt makes img a Ferry destination of req.Peer at snap (see Demote).
func (d *Dest) adopt(img *rbd.Image, imageID string, req rpc.DemoteRequest, snap rbd.Snapshot, reply rpc.DemoteReply) error {
	for _, k := range []string{MetaWriting, MetaCheckpoint, MetaCompleted} {
		if err := img.RemoveMetadata(k); err != nil {
			return err
		}
	}
	for _, kv := range [][2]string{{MetaOwner, OwnerValue}, {MetaSourceFSID, req.Peer.FSID}, {MetaSourceImageID, req.Peer.ImageID},
		{MetaSourceName, req.Peer.Name}, {MetaReplication, req.ReplicationID}} {
		if err := img.SetMetadata(kv[0], kv[1]); err != nil {
			return err
		}
	}
	rec, err := d.cfg.Sealer.Seal(kindSnapshot, imageID, snapRecord{Snapshot: req.Point, SnapID: snap.ID, TransferID: "demote:" + req.ReplicationID,
		SourceSnapID: req.Peer.SnapID, Digest: req.Peer.Digest, Mode: ModeIncremental, ReplicationID: req.ReplicationID})
	if err != nil {
		return err
	}
	if err := img.SetMetadata(MetaSnapRecordPrefix+req.Point, rec); err != nil {
		return err
	}
	if err := img.SetMetadata(MetaBase, req.Point); err != nil {
		return err
	}
	if err := img.RemoveMetadata(MetaPrimary); err != nil {
		return err
	}
	done, err := d.cfg.Sealer.Seal(kindDemoted, imageID, demotedRecord{ReplicationID: req.ReplicationID, Point: req.Point, Peer: req.Peer, Reply: reply})
	if err != nil {
		return err
	}
	return img.SetMetadata(MetaDemoted, done)
}

// renameImage is one name of a rename as found: nil for no image there.
type renameImage struct {
	Owned       bool   // ferry.owner
	Replication string // ferry.replication_id
	Primary     bool   // a ferry.primary marker, verified or not
}

// renameView is what a rename found, read with Image fenced.
type renameView struct {
	From, To *renameImage // req.Image, req.To
}

// planRename decides a rename (pure): answer (a repeat: Image gone, To
// Ferry's image of the replication) or rename; every refusal is here.
func planRename(req rpc.RenameRequest, v renameView) (repeat bool, err error) {
	from, to := req.Pool+"/"+req.Image, req.Pool+"/"+req.To
	ours := func(i *renameImage) bool { return i.Owned && i.Replication == req.ReplicationID }
	switch {
	case v.To != nil && !ours(v.To):
		return false, fmt.Errorf("%w: %s exists and is not Ferry's image of replication %s", rpc.ErrConflict, to, req.ReplicationID)
	case v.From == nil && v.To != nil:
		return true, nil
	case v.From == nil:
		return false, fmt.Errorf("%w: neither %s nor %s exists", rpc.ErrNotFound, from, to)
	case v.To != nil:
		return false, fmt.Errorf("%w: %s exists already (an image of replication %s too), %s is not renamed onto it",
			rpc.ErrConflict, to, req.ReplicationID, from)
	case !ours(v.From):
		return false, fmt.Errorf("%w: %s is not Ferry's image of replication %s", rpc.ErrConflict, from, req.ReplicationID)
	case v.From.Primary:
		return false, fmt.Errorf("%w: %s is the primary of a replication (demote it first)", rpc.ErrConflict, from)
	}
	return false, nil
}

// renameImageOf is what a rename needs of an image's metadata.
func renameImageOf(md map[string]string) *renameImage {
	_, primary := md[MetaPrimary]
	return &renameImage{Owned: md[MetaOwner] == OwnerValue, Replication: md[MetaReplication], Primary: primary}
}

// Rename renames req.Pool/req.Image, Ferry's image of replication
// req.ReplicationID and not a primary (a demoted one, as failback leaves
// it), to req.To in the same pool, fenced meanwhile. The image keeps its
// RBD id, snapshots and sealed records (bound to the id, not the name).
// A repeat (Image gone, To Ferry's image of the replication) answers the
// same; To naming any other image is refused, as are an image with an
// open transfer session here and a foreign one.
func (d *Dest) Rename(ctx context.Context, req rpc.RenameRequest) (rpc.RenameReply, error) {
	if err := req.Validate(); err != nil {
		return rpc.RenameReply{}, err
	}
	if err := allowed(d.cfg.Pools, req.Pool); err != nil {
		return rpc.RenameReply{}, err
	}
	from, to := req.Pool+"/"+req.Image, req.Pool+"/"+req.To
	// Both names, in one order whatever the direction (no deadlock
	// between two renames); a prepare creating To waits.
	keys := []string{"image:" + from, "image:" + to}
	slices.Sort(keys)
	unlock := d.keys.lock(keys...)
	defer unlock()
	for _, name := range []string{from, to} {
		if d.imageBusy(name) {
			return rpc.RenameReply{}, rpc.Temporary(fmt.Errorf("%w: %s has an open transfer session here", rpc.ErrConflict, name))
		}
	}
	cluster, unref, err := d.cfg.Connect(ctx)
	if err != nil {
		return rpc.RenameReply{}, err
	}
	defer unref()
	var v renameView
	_, img, job, err := d.openFenced(ctx, req.Pool, req.Image)
	switch {
	case errors.Is(err, rpc.ErrNotFound):
	case err != nil:
		return rpc.RenameReply{}, err
	default:
		defer d.release(job)
		md, err := img.Metadata()
		if err != nil {
			return rpc.RenameReply{}, err
		}
		v.From = renameImageOf(md)
	}
	if v.To, err = d.renameTarget(ctx, cluster, req.Pool, req.To); err != nil {
		return rpc.RenameReply{}, err
	}
	repeat, err := planRename(req, v)
	if err != nil {
		d.log.Warn("rename refused, images untouched", "replication_id", req.ReplicationID, "image", from, "to", to, "error", err)
		return rpc.RenameReply{}, err
	}
	reply := rpc.RenameReply{Name: to}
	if repeat {
		return reply, nil
	}
	if err := cluster.RenameImage(ctx, req.Pool, req.Image, req.To); err != nil {
		if errors.Is(err, rbd.ErrExists) {
			// Created meanwhile by another process.
			return rpc.RenameReply{}, fmt.Errorf("%w: %w", rpc.ErrConflict, err)
		}
		return rpc.RenameReply{}, err
	}
	d.log.Info("renamed", "replication_id", req.ReplicationID, "image", from, "to", to, "image_id", job.imageID)
	return reply, nil
}

// renameTarget reads pool/name for a rename: nil when there is no such
// image.
func (d *Dest) renameTarget(ctx context.Context, cluster *rbd.Cluster, pool, name string) (*renameImage, error) {
	img, err := cluster.OpenImage(ctx, pool, name, "", true)
	if errors.Is(err, rbd.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer img.Close()
	md, err := img.Metadata()
	if err != nil {
		return nil, err
	}
	return renameImageOf(md), nil
}

// preservedCopy opens req.PreserveAs when it exists: Ferry's copy of this
// image's head (copyOurs, returned open), or another image (copyForeign).
func (d *Dest) preservedCopy(ctx context.Context, cluster *rbd.Cluster, req rpc.DemoteRequest, imageID string) (*rbd.Image, copyState, error) {
	c, err := cluster.OpenImage(ctx, req.Pool, req.PreserveAs, "", false)
	if errors.Is(err, rbd.ErrNotFound) {
		return nil, copyNone, nil
	}
	if err != nil {
		return nil, copyNone, err
	}
	md, err := c.Metadata()
	if err != nil {
		c.Close()
		return nil, copyNone, err
	}
	if md[MetaOwner] != OwnerValue || md[MetaPreservedFrom] != req.Pool+"/"+req.Image || md[MetaPreservedFromID] != imageID ||
		md[MetaReplication] != req.ReplicationID {
		c.Close()
		return nil, copyForeign, nil
	}
	return c, copyOurs, nil
}

// preserveSnapshot is the temporary snapshot of a head copied to
// preserveAs.
func preserveSnapshot(preserveAs string) string {
	sum := sha256.Sum256([]byte(preserveAs))
	return PreserveSnapshotPrefix + hex.EncodeToString(sum[:6])
}

// preserve copies img's head to req.PreserveAs (or finishes an existing
// copy): a temporary snapshot of the head, cloned, the clone marked as
// Ferry's and flattened, then verified against the head (size and
// sha256), and the snapshot removed. img is fenced: its head does not
// change meanwhile. It returns the copy's allocated bytes.
func (d *Dest) preserve(ctx context.Context, cluster *rbd.Cluster, img *rbd.Image, imageID string, req rpc.DemoteRequest, copyImg *rbd.Image) (uint64, error) {
	tmp := preserveSnapshot(req.PreserveAs)
	if copyImg == nil {
		// A leftover temporary snapshot (an interrupted run) may hold an
		// older head: taken again.
		if _, err := removeUnlessCloned(img, tmp); err != nil {
			return 0, err
		}
		if err := img.CreateSnapshot(tmp); err != nil {
			return 0, err
		}
		if err := protect(ctx, cluster, req.Pool, req.Image, tmp); err != nil {
			return 0, err
		}
		if err := cluster.Clone(ctx, req.Pool, req.Image, tmp, req.Pool, req.PreserveAs); err != nil {
			return 0, err
		}
		c, err := cluster.OpenImage(ctx, req.Pool, req.PreserveAs, "", false)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		for _, kv := range [][2]string{{MetaOwner, OwnerValue}, {MetaPreservedFrom, req.Pool + "/" + req.Image},
			{MetaPreservedFromID, imageID}, {MetaReplication, req.ReplicationID}} {
			if err := c.SetMetadata(kv[0], kv[1]); err != nil {
				return 0, err
			}
		}
		copyImg = c
	}
	if err := copyImg.Flatten(); err != nil {
		return 0, err
	}
	if err := sameContent(ctx, img, copyImg); err != nil {
		return 0, err
	}
	if _, err := removeUnlessCloned(img, tmp); err != nil {
		return 0, err
	}
	return allocated(ctx, copyImg)
}

// errCopyDiffers: a preserved copy is not equal to the head.
var errCopyDiffers = fmt.Errorf("%w: the preserved copy differs from the head", rpc.ErrConflict)

// sameContent fails unless a and b have the same size and sha256.
func sameContent(ctx context.Context, a, b *rbd.Image) error {
	sa, err := a.Size()
	if err != nil {
		return err
	}
	sb, err := b.Size()
	if err != nil {
		return err
	}
	if sa != sb {
		return fmt.Errorf("%w: %d bytes, head %d", errCopyDiffers, sb, sa)
	}
	da, err := contentDigest(ctx, a, sa)
	if err != nil {
		return err
	}
	db, err := contentDigest(ctx, b, sb)
	if err != nil {
		return err
	}
	if da != db {
		return fmt.Errorf("%w: sha256 %s, head %s", errCopyDiffers, db, da)
	}
	return nil
}

// contentDigest is the sha256 of img's size bytes.
func contentDigest(ctx context.Context, img *rbd.Image, size uint64) (string, error) {
	h := sha256.New()
	buf := make([]byte, 4<<20)
	for off := uint64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n := min(uint64(len(buf)), size-off)
		if _, err := img.ReadAt(buf[:n], int64(off)); err != nil {
			return "", err
		}
		h.Write(buf[:n])
		off += n
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// allocated is the sum of img's allocated extents.
func allocated(ctx context.Context, img *rbd.Image) (uint64, error) {
	var n uint64
	err := img.Diff(ctx, "", false, func(_, length uint64, exists bool) error {
		if exists {
			n += length
		}
		return nil
	})
	return n, err
}
