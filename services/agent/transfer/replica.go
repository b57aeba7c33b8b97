package transfer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
)

// Replications: a replica is a destination image a replication's cycles
// (transfers with a ReplicationID) write, one recorded snapshot per
// retained point. Here are the drill (a clone of a verified point) and the
// clean-up of a deleted replication on both sides. Every operation checks
// everything before it changes anything, and can run again.

// Metadata Ferry sets on a drill clone: the drill and the point it was
// cloned from (pool/image@snapshot#snapshot id), so that a repeated drill
// recognises its clone even once flattened.
const (
	MetaDrillID     = "ferry.drill_id"
	MetaDrillParent = "ferry.drill_parent"
	// metaTrashCleanup marks a trashed source image whose Ferry
	// snapshots a replication's clean-up is removing: a repeated
	// clean-up removes it from the trash even once the snapshots are gone.
	metaTrashCleanup = "ferry.trash_cleanup"
)

// DrillResult is the clone a drill made (or found).
type DrillResult struct {
	Size    uint64
	ImageID string
	// Created: this call made the clone (false: it existed).
	Created bool
	// Flattened: the clone has no parent any more.
	Flattened bool
}

func drillParent(pool, image, snap string, snapID uint64) string {
	return pool + "/" + image + "@" + snap + "#" + strconv.FormatUint(snapID, 10)
}

// Drill clones req.Snapshot of the replica req.Pool/req.Image, which must
// be a verified Ferry point of replication req.ReplicationID, to
// req.ClonePool/req.CloneName, protecting the snapshot first when needed.
// A clone of that very point already under that name is success.
func (d *Dest) Drill(ctx context.Context, req rpc.DrillRequest) (DrillResult, error) {
	if err := req.Validate(); err != nil {
		return DrillResult{}, err
	}
	for _, n := range []string{req.Pool, req.Image, req.Snapshot, req.ClonePool, req.CloneName} {
		if !validName(n) {
			return DrillResult{}, fmt.Errorf("%w: %q is not an RBD name", rpc.ErrInvalid, n)
		}
	}
	for _, p := range []string{req.Pool, req.ClonePool} {
		if err := allowed(d.cfg.Pools, p); err != nil {
			return DrillResult{}, err
		}
	}
	name := req.Pool + "/" + req.Image
	unlock := d.keys.lock("image:" + name)
	defer unlock()
	cluster, unref, err := d.cfg.Connect(ctx)
	if err != nil {
		return DrillResult{}, err
	}
	defer unref()
	snapID, err := d.verifiedPoint(ctx, cluster, req)
	if err != nil {
		return DrillResult{}, err
	}
	parent := drillParent(req.Pool, req.Image, req.Snapshot, snapID)
	if res, found, err := existingClone(ctx, cluster, req, snapID, parent); found || err != nil {
		return res, err
	}
	if err := protect(ctx, cluster, req.Pool, req.Image, req.Snapshot); err != nil {
		return DrillResult{}, err
	}
	err = cluster.Clone(ctx, req.Pool, req.Image, req.Snapshot, req.ClonePool, req.CloneName)
	if errors.Is(err, rbd.ErrExists) {
		// Made meanwhile (by another agent of the region)?
		if res, found, err := existingClone(ctx, cluster, req, snapID, parent); found || err != nil {
			return res, err
		}
	}
	if err != nil {
		return DrillResult{}, err
	}
	img, err := cluster.OpenImage(ctx, req.ClonePool, req.CloneName, "", false)
	if err != nil {
		return DrillResult{}, err
	}
	defer img.Close()
	for k, v := range map[string]string{MetaDrillID: req.DrillID, MetaDrillParent: parent} {
		if err := img.SetMetadata(k, v); err != nil {
			return DrillResult{}, err
		}
	}
	info, err := img.Info()
	if err != nil {
		return DrillResult{}, err
	}
	d.log.Info("drill clone created", "drill_id", req.DrillID, "replication_id", req.ReplicationID, "point", name+"@"+req.Snapshot,
		"clone", req.ClonePool+"/"+req.CloneName)
	return DrillResult{Size: info.Size, ImageID: info.ID, Created: true}, nil
}

// verifiedPoint checks that req.Snapshot is a point of req.ReplicationID
// on the replica: a snapshot whose sealed record verifies and names that
// replication. It returns the snapshot's id.
func (d *Dest) verifiedPoint(ctx context.Context, cluster *rbd.Cluster, req rpc.DrillRequest) (uint64, error) {
	name := req.Pool + "/" + req.Image
	img, err := cluster.OpenImage(ctx, req.Pool, req.Image, "", true)
	if errors.Is(err, rbd.ErrNotFound) {
		return 0, fmt.Errorf("%w: replica %s: %w", rpc.ErrNotFound, name, err)
	}
	if err != nil {
		return 0, err
	}
	defer img.Close()
	info, err := img.Info()
	if err != nil {
		return 0, err
	}
	md, err := img.Metadata()
	if err != nil {
		return 0, err
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return 0, err
	}
	if !slices.ContainsFunc(snaps, func(s rbd.Snapshot) bool { return s.Name == req.Snapshot }) {
		return 0, fmt.Errorf("%w: %s has no snapshot %s", rpc.ErrNotFound, name, req.Snapshot)
	}
	rec, ok := d.records(info.ID, md, snaps)[req.Snapshot]
	if !ok || rec.ReplicationID != req.ReplicationID || md[MetaReplication] != req.ReplicationID {
		return 0, fmt.Errorf("%w: %s@%s is not a verified point of replication %s", rpc.ErrConflict, name, req.Snapshot, req.ReplicationID)
	}
	return rec.SnapID, nil
}

// existingClone reports whether req.ClonePool/req.CloneName exists, and
// answers for it when it is a clone of that very point (its parent, or
// once flattened the drill metadata Ferry put on it); another image of
// that name is a conflict.
func existingClone(ctx context.Context, cluster *rbd.Cluster, req rpc.DrillRequest, snapID uint64, parent string) (DrillResult, bool, error) {
	img, err := cluster.OpenImage(ctx, req.ClonePool, req.CloneName, "", true)
	if errors.Is(err, rbd.ErrNotFound) {
		return DrillResult{}, false, nil
	}
	if err != nil {
		return DrillResult{}, true, err
	}
	defer img.Close()
	info, err := img.Info()
	if err != nil {
		return DrillResult{}, true, err
	}
	p, err := img.Parent()
	if err != nil {
		return DrillResult{}, true, err
	}
	md, err := img.Metadata()
	if err != nil {
		return DrillResult{}, true, err
	}
	res := DrillResult{Size: info.Size, ImageID: info.ID, Flattened: p == nil}
	switch {
	case p != nil && p.Pool == req.Pool && p.Image == req.Image && p.Snap == req.Snapshot && p.SnapID == snapID:
		return res, true, nil
	case p == nil && md[MetaDrillID] == req.DrillID && md[MetaDrillParent] == parent:
		return res, true, nil
	}
	return DrillResult{}, true, fmt.Errorf("%w: %s/%s exists and is not a clone of %s", rpc.ErrConflict, req.ClonePool, req.CloneName, parent)
}

// protect protects pool/image@snap unless it is.
func protect(ctx context.Context, cluster *rbd.Cluster, pool, image, snap string) error {
	img, err := cluster.OpenImage(ctx, pool, image, "", false)
	if err != nil {
		return err
	}
	defer img.Close()
	ok, err := img.SnapshotProtected(snap)
	if err != nil || ok {
		return err
	}
	if err := img.ProtectSnapshot(snap); err != nil && !errors.Is(err, rbd.ErrBusy) {
		// EBUSY: protected meanwhile.
		return err
	}
	return nil
}

// FlattenDrill flattens the drill clone of id imageID in pool (by id: Cinder
// may rename it meanwhile), when it still has the point it was cloned
// from as its parent. A flattened clone no longer holds the point, which
// the next cycle's retention may then remove.
func (d *Dest) FlattenDrill(ctx context.Context, pool, imageID string) error {
	cluster, unref, err := d.cfg.Connect(ctx)
	if err != nil {
		return err
	}
	defer unref()
	img, err := cluster.OpenImageByID(ctx, pool, imageID, "", false)
	if err != nil {
		return err
	}
	defer img.Close()
	md, err := img.Metadata()
	if err != nil {
		return err
	}
	p, err := img.Parent()
	if err != nil || p == nil {
		return err
	}
	if md[MetaDrillParent] != drillParent(p.Pool, p.Image, p.Snap, p.SnapID) {
		return fmt.Errorf("%w: image id %s in %s is not a drill clone of its parent", rpc.ErrConflict, imageID, pool)
	}
	return img.Flatten()
}

// ReplicaCleanupResult says what CleanupReplica did.
type ReplicaCleanupResult struct {
	// Removed are the snapshots removed, Flattened the clones (drill
	// volumes) flattened first.
	Removed   []string
	Flattened []string
	// ImageRemoved: the replica is gone (RemoveImage).
	ImageRemoved bool
	// RolledBack: the head was brought back to the newest point (an
	// unfinished cycle had written it) before the image was kept.
	RolledBack bool
}

// CleanupReplica removes a deleted replication's replica req.Pool/req.Image
// (req.RemoveImage) or, keeping the image, Ferry's snapshots and records
// of it, its head the newest point. Only an image Ferry created for
// req.ReplicationID is touched; the clones of its snapshots (drill
// volumes) are flattened first, so they stay valid. With RemoveImage, a
// snapshot Ferry did not take refuses the whole clean-up (nothing
// changed). A replica already gone is success.
func (d *Dest) CleanupReplica(ctx context.Context, req rpc.ReplicationCleanup) (ReplicaCleanupResult, error) {
	if err := req.Validate(); err != nil {
		return ReplicaCleanupResult{}, err
	}
	if err := allowed(d.cfg.Pools, req.Pool); err != nil {
		return ReplicaCleanupResult{}, err
	}
	name := req.Pool + "/" + req.Image
	unlock := d.keys.lock("image:" + name)
	defer unlock()
	if d.imageBusy(name) {
		return ReplicaCleanupResult{}, rpc.Temporary(fmt.Errorf("%w: %s has an open transfer session here", ErrConflict, name))
	}
	cluster, unref, err := d.cfg.Connect(ctx)
	if err != nil {
		return ReplicaCleanupResult{}, err
	}
	defer unref()
	img, err := cluster.OpenImage(ctx, req.Pool, req.Image, "", false)
	if errors.Is(err, rbd.ErrNotFound) {
		return ReplicaCleanupResult{}, nil
	}
	if err != nil {
		return ReplicaCleanupResult{}, err
	}
	job := &destJob{name: name, img: img, unref: func() {}}
	defer d.release(job)
	md, err := img.Metadata()
	if err != nil {
		return ReplicaCleanupResult{}, err
	}
	if md[MetaOwner] != OwnerValue || md[MetaReplication] != req.ReplicationID {
		return ReplicaCleanupResult{}, fmt.Errorf("%w: %s is not the replica of replication %s", ErrNotOwned, name, req.ReplicationID)
	}
	info, err := img.Info()
	if err != nil {
		return ReplicaCleanupResult{}, err
	}
	job.imageID = info.ID
	if err := d.fence(job, info); err != nil {
		return ReplicaCleanupResult{}, err
	}
	// Read again under the fence, and check everything first.
	if md, err = img.Metadata(); err != nil {
		return ReplicaCleanupResult{}, err
	}
	if _, ok := md[MetaPrimary]; ok {
		// Promoted (failed over): the image is the primary now, its
		// users' data; neither removed nor rolled back.
		return ReplicaCleanupResult{}, fmt.Errorf("%w: %s is the primary of replication %s: left in place", ErrConflict, name, req.ReplicationID)
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return ReplicaCleanupResult{}, err
	}
	recs := d.records(info.ID, md, snaps)
	var w writingState
	if s, ok := md[MetaWriting]; !ok || d.cfg.Sealer.Open(kindWriting, info.ID, s, &w) != nil || w.Verified == "" {
		w = writingState{}
	}
	ours, foreign := ferrySnapshots(snaps, recs, w.Snapshot)
	if req.RemoveImage && len(foreign) > 0 {
		return ReplicaCleanupResult{}, fmt.Errorf("%w: %s has snapshots Ferry did not take (%s): left in place", ErrConflict, name, strings.Join(foreign, ", "))
	}
	var res ReplicaCleanupResult
	if !req.RemoveImage {
		if res.RolledBack, err = d.headToNewest(ctx, img, snaps, recs); err != nil {
			return res, err
		}
	}
	for _, s := range ours {
		flattened, err := flattenChildren(ctx, cluster, img, s)
		res.Flattened = append(res.Flattened, flattened...)
		if err != nil {
			return res, err
		}
		gone, err := removeUnlessCloned(img, s)
		if err != nil {
			return res, err
		}
		if !gone {
			return res, rpc.Temporary(fmt.Errorf("%w: %s@%s got a clone meanwhile", ErrConflict, name, s))
		}
		res.Removed = append(res.Removed, s)
	}
	if req.RemoveImage {
		d.release(job)
		if err := cluster.RemoveImage(ctx, req.Pool, req.Image); err != nil && !errors.Is(err, rbd.ErrNotFound) {
			return res, err
		}
		res.ImageRemoved = true
		d.log.Info("replica removed", "replication_id", req.ReplicationID, "image", name, "snapshots", res.Removed, "flattened", res.Flattened)
		return res, nil
	}
	// Keep the image, as the user's: none of Ferry's state stays (Ferry
	// never writes it again).
	for k := range md {
		if strings.HasPrefix(k, "ferry.") {
			if err := img.RemoveMetadata(k); err != nil {
				return res, err
			}
		}
	}
	d.log.Info("replica kept, Ferry's snapshots and records removed", "replication_id", req.ReplicationID, "image", name,
		"snapshots", res.Removed, "flattened", res.Flattened, "rolled_back", res.RolledBack)
	return res, nil
}

// ferrySnapshots splits an image's snapshots into Ferry's (a verified
// record, or the verified snapshot of an interrupted finish) and the
// others.
func ferrySnapshots(snaps []rbd.Snapshot, recs map[string]snapRecord, sealing string) (ours, foreign []string) {
	for _, s := range snaps {
		if _, ok := recs[s.Name]; ok || (sealing != "" && s.Name == sealing) {
			ours = append(ours, s.Name)
		} else {
			foreign = append(foreign, s.Name)
		}
	}
	return ours, foreign
}

// newestPoint is the recorded snapshot taken last (highest id), "" for none.
func newestPoint(snaps []rbd.Snapshot, recs map[string]snapRecord) (rbd.Snapshot, bool) {
	var best rbd.Snapshot
	found := false
	for _, s := range snaps {
		if _, ok := recs[s.Name]; ok && (!found || s.ID > best.ID) {
			best, found = s, true
		}
	}
	return best, found
}

// headToNewest rolls the head back to the newest point unless it is
// proven equal (an unfinished cycle may have written it).
func (d *Dest) headToNewest(ctx context.Context, img *rbd.Image, snaps []rbd.Snapshot, recs map[string]snapRecord) (bool, error) {
	p, ok := newestPoint(snaps, recs)
	if !ok {
		return false, nil
	}
	equal, err := headEquals(ctx, img, p.Name)
	if err != nil || equal {
		return false, err
	}
	if err := img.RollbackToSnapshot(p.Name); err != nil {
		return false, err
	}
	if size, err := img.Size(); err != nil {
		return true, err
	} else if size != p.Size {
		return true, img.Resize(p.Size)
	}
	return true, nil
}

// flattenChildren flattens every clone of img@snap (those in the trash
// too, by id), so that the snapshot can go while the clones stay valid.
func flattenChildren(ctx context.Context, cluster *rbd.Cluster, img *rbd.Image, snap string) ([]string, error) {
	children, err := img.SnapshotChildren(snap)
	if err != nil {
		return nil, err
	}
	var done []string
	for _, c := range children {
		child, err := cluster.OpenImageByID(ctx, c.Pool, c.ID, "", false)
		if err != nil {
			return done, err
		}
		err = child.Flatten()
		child.Close()
		if err != nil {
			return done, err
		}
		done = append(done, c.Pool+"/"+c.Image)
	}
	return done, nil
}

// imageBusy reports whether a session of this agent writes image name.
func (d *Dest) imageBusy(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, j := range d.jobs {
		if j.name == name {
			return true
		}
	}
	return false
}

// SourceCleanupResult says what CleanupReplication removed at the source.
type SourceCleanupResult struct {
	Removed []string
	// Trashed: the image was found in the RBD trash (Cinder deleted the
	// volume); TrashRemoved: it was removed from there, no snapshot left.
	Trashed, TrashRemoved bool
}

// CleanupReplication removes a deleted replication's snapshots at the
// source pool/image: those named in snapshots that Ferry took (tagged),
// then the image's former points of the replication (see
// removeFormerPoints: an image that was its destination before a failover
// made it the source keeps the points it received then, which ferry-api
// does not name); others stay. When the image is not there but in the RBD
// trash (Cinder's RBD driver moves a volume with snapshots there when it
// deletes it), the snapshots go from the trashed image, and the image from
// the trash once no snapshot is left (unless its deferment has not ended:
// then the trash's own purge removes it later).
func (s *Source) CleanupReplication(ctx context.Context, replicationID, pool, image string, snapshots []string) (SourceCleanupResult, error) {
	if err := allowed(s.pools, pool); err != nil {
		return SourceCleanupResult{}, err
	}
	for _, n := range snapshots {
		if !strings.HasPrefix(n, SnapshotPrefix) || !validName(n) {
			return SourceCleanupResult{}, fmt.Errorf("%w: %q is not a Ferry snapshot name", rpc.ErrInvalid, n)
		}
	}
	if s.opts.Sealer == nil {
		return SourceCleanupResult{}, errors.New("source has no state key")
	}
	cluster, release, err := s.connect(ctx)
	if err != nil {
		return SourceCleanupResult{}, err
	}
	defer release()
	var res SourceCleanupResult
	img, err := cluster.OpenImage(ctx, pool, image, "", false)
	switch {
	case err == nil:
		defer img.Close()
		res.Removed, err = s.removeAllTagged(img, snapshots)
		former, ferr := s.removeFormerPoints(img, replicationID)
		res.Removed = append(res.Removed, former...)
		return res, errors.Join(err, ferr)
	case !errors.Is(err, rbd.ErrNotFound):
		return res, err
	}
	trashed, err := cluster.TrashLookup(ctx, pool, image)
	if err != nil {
		return res, err
	}
	var errs []error
	for _, t := range trashed {
		res.Trashed = true
		removed, empty, err := s.cleanTrashed(ctx, cluster, replicationID, pool, t.ID, snapshots)
		res.Removed = append(res.Removed, removed...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !empty {
			continue
		}
		if err := cluster.TrashRemove(ctx, pool, t.ID); errors.Is(err, rbd.ErrPermission) {
			s.log.Info("trashed source image kept until its deferment ends", "image", pool+"/"+image, "id", t.ID, "until", t.DeferredUntil)
		} else if err != nil && !errors.Is(err, rbd.ErrNotFound) {
			errs = append(errs, err)
		} else {
			res.TrashRemoved = true
		}
	}
	return res, errors.Join(errs...)
}

// cleanTrashed removes the named tagged snapshots of the trashed image id,
// and its former points of the replication (removeFormerPoints); empty
// reports that the image has no snapshot left and is one whose Ferry
// snapshots a clean-up removed (now or in an earlier, interrupted run).
func (s *Source) cleanTrashed(ctx context.Context, cluster *rbd.Cluster, replicationID, pool, id string, names []string) (removed []string, empty bool, err error) {
	img, err := cluster.OpenImageByID(ctx, pool, id, "", false)
	if err != nil {
		return nil, false, err
	}
	defer img.Close()
	md, err := img.Metadata()
	if err != nil {
		return nil, false, err
	}
	marked := md[metaTrashCleanup] != ""
	var mine []string
	for _, n := range names {
		if ok, err := s.tagged(img, n); err != nil {
			return nil, false, err
		} else if ok {
			mine = append(mine, n)
		}
	}
	former, err := s.formerPoints(img, replicationID)
	if err != nil {
		return nil, false, err
	}
	if len(mine)+len(former) > 0 && !marked {
		if err := img.SetMetadata(metaTrashCleanup, replicationID); err != nil {
			return nil, false, err
		}
		marked = true
	}
	removed, err = s.removeAllTagged(img, mine)
	more, ferr := s.removeFormerPoints(img, replicationID)
	removed = append(removed, more...)
	if err := errors.Join(err, ferr); err != nil {
		return removed, false, err
	}
	left, err := img.Snapshots()
	if err != nil {
		return removed, false, err
	}
	return removed, marked && len(left) == 0, nil
}

// removeAllTagged removes each named snapshot Ferry took (a missing one
// is skipped, an untagged one stays and is reported).
func (s *Source) removeAllTagged(img *rbd.Image, names []string) ([]string, error) {
	var removed []string
	var errs []error
	for _, n := range names {
		if _, err := snapshotID(img, n); errors.Is(err, rbd.ErrNotFound) {
			if err := forgetSourceSnapshot(img, n); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := s.removeTagged(img, n); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, n)
	}
	return removed, errors.Join(errs...)
}

// formerPoints are the snapshots of img that Ferry recorded as points of
// replication replicationID while img was its destination (before a
// failover made it the source): a sealed snapRecord that verifies with
// this region's key for img, names the replication and the snapshot's id.
func (s *Source) formerPoints(img *rbd.Image, replicationID string) ([]string, error) {
	info, err := img.Info()
	if err != nil {
		return nil, err
	}
	md, err := img.Metadata()
	if err != nil {
		return nil, err
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return nil, err
	}
	recs := snapRecords(s.opts.Sealer, info.ID, md, snaps)
	var points []string
	for _, sn := range snaps {
		if r, ok := recs[sn.Name]; ok && r.ReplicationID == replicationID {
			points = append(points, sn.Name)
		}
	}
	return points, nil
}

// removeFormerPoints removes img's former points of replicationID
// (formerPoints), unprotected first when protected, then the records (and
// source tags) of that replication whose snapshot is gone: those removed
// here, by the named clean-up or by an earlier run. A point with clone
// children (a drill's clone, made while img was the destination) stays
// with its record and is logged: a later clean-up removes it once the
// clone is flattened or gone. A snapshot without such a record (the
// user's) or with another replication's is never touched. It returns the
// snapshots removed.
func (s *Source) removeFormerPoints(img *rbd.Image, replicationID string) ([]string, error) {
	points, err := s.formerPoints(img, replicationID)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, n := range points {
		gone, err := removeUnlessCloned(img, n)
		switch {
		case err != nil:
			errs = append(errs, err)
		case gone:
			removed = append(removed, n)
		default:
			s.log.Info("former point kept: it has clone children", "replication_id", replicationID, "image", img.String(), "snapshot", n)
		}
	}
	if err := s.forgetFormerRecords(img, replicationID); err != nil {
		errs = append(errs, err)
	}
	if len(removed) > 0 {
		s.log.Info("former points of the replication removed", "replication_id", replicationID, "image", img.String(), "snapshots", removed)
	}
	return removed, errors.Join(errs...)
}

// forgetFormerRecords removes img's records of replicationID's points
// whose snapshot is gone, with the source tags of those names.
func (s *Source) forgetFormerRecords(img *rbd.Image, replicationID string) error {
	info, err := img.Info()
	if err != nil {
		return err
	}
	md, err := img.Metadata()
	if err != nil {
		return err
	}
	snaps, err := img.Snapshots()
	if err != nil {
		return err
	}
	var errs []error
	for k, text := range md {
		name, ok := strings.CutPrefix(k, MetaSnapRecordPrefix)
		if !ok || slices.ContainsFunc(snaps, func(sn rbd.Snapshot) bool { return sn.Name == name }) {
			continue
		}
		var r snapRecord
		if s.opts.Sealer.Open(kindSnapshot, info.ID, text, &r) != nil || r.Snapshot != name || r.ReplicationID != replicationID {
			continue
		}
		if err := errors.Join(img.RemoveMetadata(k), forgetSourceSnapshot(img, name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
