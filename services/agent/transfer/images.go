package transfer

import (
	"context"
	"errors"

	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/stream"
)

// sourceImage adapts an RBD snapshot to stream.SourceImage.
type sourceImage struct {
	img  *rbd.Image
	size uint64
}

func (s *sourceImage) ReadAt(p []byte, off int64) (int, error) { return s.img.ReadAt(p, off) }
func (s *sourceImage) Size() uint64                            { return s.size }

// destImage adapts an RBD image to stream.DestImage.
type destImage struct {
	img  *rbd.Image
	size uint64
}

func (d *destImage) WriteAt(p []byte, off int64) (int, error) { return d.img.WriteAt(p, off) }
func (d *destImage) WriteZeroes(off, length uint64) error     { return d.img.WriteZeroes(off, length) }
func (d *destImage) Flush() error                             { return d.img.Flush() }
func (d *destImage) Size() uint64                             { return d.size }

// metaCheckpoints keeps the checkpoint in the destination image's metadata,
// so that any agent of the region can resume.
type metaCheckpoints struct{ img *rbd.Image }

func (m metaCheckpoints) LoadCheckpoint(context.Context) (stream.Checkpoint, bool, error) {
	md, err := m.img.Metadata()
	if err != nil {
		return stream.Checkpoint{}, false, err
	}
	s, ok := md[MetaCheckpoint]
	if !ok {
		return stream.Checkpoint{}, false, nil
	}
	cp, err := stream.DecodeCheckpoint(s)
	if err != nil {
		// A damaged checkpoint means starting over, not failing forever.
		return stream.Checkpoint{}, false, nil //nolint:nilerr
	}
	return cp, true, nil
}

func (m metaCheckpoints) SaveCheckpoint(ctx context.Context, cp stream.Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s, err := cp.Encode()
	if err != nil {
		return err
	}
	return m.img.SetMetadata(MetaCheckpoint, s)
}

// snapshotNames lists an image's snapshots, oldest first.
func snapshotNames(img *rbd.Image) ([]string, error) {
	snaps, err := img.Snapshots()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(snaps))
	for _, s := range snaps {
		names = append(names, s.Name)
	}
	return names, nil
}

// removeOldSnapshots removes Ferry's snapshots other than keep (all of
// them when keep is empty); they are no longer needed as a base.
// Snapshots Ferry did not name are left alone.
func removeOldSnapshots(img *rbd.Image, keep string) ([]string, error) {
	names, err := snapshotNames(img)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, n := range names {
		if n == keep || len(n) <= len(SnapshotPrefix) || n[:len(SnapshotPrefix)] != SnapshotPrefix {
			continue
		}
		if err := img.RemoveSnapshot(n); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, n)
	}
	return removed, errors.Join(errs...)
}
