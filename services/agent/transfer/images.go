package transfer

import (
	"context"
	"fmt"

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
// so that any agent of the region can resume. It is sealed and bound to
// its run (transfer, source snapshot id, base): one that does not verify
// is no checkpoint (the prepare starts that run over instead).
type metaCheckpoints struct {
	img     *rbd.Image
	sealer  *Sealer
	imageID string
	run     writingState
}

func (d *Dest) checkpoints(job *destJob) metaCheckpoints {
	return metaCheckpoints{img: job.img, sealer: d.cfg.Sealer, imageID: job.imageID, run: job.w}
}

// checkpointKind binds a checkpoint to its run.
func checkpointKind(w *writingState) string {
	return fmt.Sprintf("%s:%s:%d:%s:%d", kindCheckpoint, w.TransferID, w.SourceSnapID, w.Base, w.BaseID)
}

func openCheckpoint(s *Sealer, imageID string, w *writingState, text string) (stream.Checkpoint, error) {
	var cp stream.Checkpoint
	if err := s.Open(checkpointKind(w), imageID, text, &cp); err != nil {
		return stream.Checkpoint{}, err
	}
	return cp, nil
}

func (m metaCheckpoints) LoadCheckpoint(context.Context) (stream.Checkpoint, bool, error) {
	md, err := m.img.Metadata()
	if err != nil {
		return stream.Checkpoint{}, false, err
	}
	s, ok := md[MetaCheckpoint]
	if !ok {
		return stream.Checkpoint{}, false, nil
	}
	cp, err := openCheckpoint(m.sealer, m.imageID, &m.run, s)
	if err != nil {
		// Not this run's: starting over, never stitching.
		return stream.Checkpoint{}, false, nil //nolint:nilerr
	}
	return cp, true, nil
}

func (m metaCheckpoints) SaveCheckpoint(ctx context.Context, cp stream.Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s, err := m.sealer.Seal(checkpointKind(&m.run), m.imageID, cp)
	if err != nil {
		return err
	}
	return m.img.SetMetadata(MetaCheckpoint, s)
}
