package transfer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
)

// Consistency groups: a group cycle takes one crash-consistent snapshot of
// all the group's member images at one instant, each member's named
// ferry-<its transfer id> and tagged as the snapshot Ferry took for that
// transfer; ferry-api then inserts each member's transfer, an ordinary
// cycle whose ensureSnapshot finds its snapshot taken. From there on
// (bases, their removal once superseded, Settle, Discard, doneTags) a
// member's snapshot is any transfer's.

// GroupSnapshot takes the snapshots of group cycle req
// (rpc.MethodReplicationGroupSnapshot) with rbd.Cluster.SnapshotConsistent
// and tags each as Ferry's snapshot of its member's transfer (a tag that
// is there already, perhaps with the base a run recorded since, is kept).
// The answer is in the order of req.Members. A repeat answers the same
// snapshots. Refused with nothing changed (rpc.ErrConflict): a member
// whose transfer completed here before (its doneTag: its snapshot was
// superseded, and taking it again would copy the image as it is now under
// the old transfer's name), a member holding a snapshot of that name that
// is not of this group cycle, a set Ferry had tagged that lost some of
// its snapshots since (retaking it would replace snapshots the members'
// transfers may have copied), and an image without the exclusive-lock
// feature. A missing image is rpc.ErrNotFound.
func (s *Source) GroupSnapshot(ctx context.Context, req rpc.GroupSnapshotRequest) (rpc.GroupSnapshotReply, error) {
	if err := req.Validate(); err != nil {
		return rpc.GroupSnapshotReply{}, err
	}
	for _, m := range req.Members {
		if err := allowed(s.pools, m.Pool); err != nil {
			return rpc.GroupSnapshotReply{}, err
		}
	}
	if s.opts.Sealer == nil {
		return rpc.GroupSnapshotReply{}, errors.New("source has no state key")
	}
	cluster, release, err := s.connect(ctx)
	if err != nil {
		return rpc.GroupSnapshotReply{}, err
	}
	defer release()
	snaps := make([]rbd.ImageSnap, len(req.Members))
	for i, m := range req.Members {
		snaps[i] = rbd.ImageSnap{Image: rbd.ImageRef{Pool: m.Pool, Name: m.Image}, Snap: SnapshotPrefix + m.TransferID}
	}
	// Checked on the images as SnapshotConsistent judges the set: a
	// successor leaves its doneTag before it removes a member's snapshot,
	// so a set found partial because of it is refused here.
	check := func(imgs []*rbd.Image) error {
		var tagged, missing []string
		for i, img := range imgs {
			m := req.Members[i]
			if done, err := s.done(img, m.TransferID); err != nil {
				return err
			} else if done {
				return fmt.Errorf("%w: transfer %s of %s completed here before; the group snapshot of cycle %s is not taken again",
					rpc.ErrConflict, m.TransferID, snaps[i].Image, req.CycleID)
			}
			if _, err := snapshotID(img, snaps[i].Snap); errors.Is(err, rbd.ErrNotFound) {
				missing = append(missing, snaps[i].String())
				continue
			} else if err != nil {
				return err
			}
			if ok, err := s.tagged(img, snaps[i].Snap); err != nil {
				return err
			} else if ok {
				tagged = append(tagged, snaps[i].String())
			}
		}
		if len(tagged) > 0 && len(missing) > 0 {
			return fmt.Errorf("%w: the group snapshot of cycle %s was taken (%v) and lost %v since: not retaken",
				rpc.ErrConflict, req.CycleID, tagged, missing)
		}
		return nil
	}
	taken, err := cluster.SnapshotConsistent(ctx, snaps, check)
	switch {
	case errors.Is(err, rbd.ErrExists), errors.Is(err, rbd.ErrUnsupported):
		return rpc.GroupSnapshotReply{}, fmt.Errorf("%w: %w", rpc.ErrConflict, err)
	case errors.Is(err, rbd.ErrNotFound):
		return rpc.GroupSnapshotReply{}, fmt.Errorf("%w: %w", rpc.ErrNotFound, err)
	case err != nil:
		return rpc.GroupSnapshotReply{}, err
	}
	reply := rpc.GroupSnapshotReply{Members: make([]rpc.GroupSnapshotTaken, len(req.Members))}
	for i, m := range req.Members {
		at, err := s.tagGroupMember(ctx, cluster, Job{TransferID: m.TransferID, ReplicationID: m.ReplicationID, Pool: m.Pool, Image: m.Image}, taken[i])
		if err != nil {
			return rpc.GroupSnapshotReply{}, fmt.Errorf("tagging %s: %w", snaps[i], err)
		}
		reply.Members[i] = rpc.GroupSnapshotTaken{TransferID: m.TransferID, Snapshot: taken[i].Name, SnapID: taken[i].ID, SnapshotTime: at}
	}
	s.log.Info("group snapshot taken", "group_id", req.GroupID, "cycle_id", req.CycleID, "members", len(req.Members))
	return reply, nil
}

// tagGroupMember tags job's image's snapshot snap (of a group snapshot) as
// Ferry's snapshot of job's transfer unless its tag is there, and returns
// when it was taken (nil when unknown).
func (s *Source) tagGroupMember(ctx context.Context, cluster *rbd.Cluster, job Job, snap rbd.Snapshot) (*time.Time, error) {
	img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", false)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	if id, err := snapshotID(img, snap.Name); err != nil {
		return nil, err
	} else if id != snap.ID {
		return nil, fmt.Errorf("%w: %s@%s was taken again meanwhile (id %d, not %d)", rpc.ErrConflict, img, snap.Name, id, snap.ID)
	}
	if tag, ok, err := s.tagOf(img, snap.Name); err != nil {
		return nil, err
	} else if !ok || tag.TransferID != job.TransferID {
		if err := s.tag(img, job, snap.Name); err != nil {
			return nil, err
		}
	}
	at, err := img.SnapshotTime(snap.ID)
	if err != nil {
		s.log.Warn("the group snapshot's time is unknown", "transfer_id", job.TransferID, "snapshot", job.Pool+"/"+job.Image+"@"+snap.Name, "error", err)
		return nil, nil
	}
	return &at, nil
}
