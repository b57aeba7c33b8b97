package stream

import "context"

// Extent is a byte range of the source snapshot, in the order DiffIterate
// reports them. Zero marks a range known to read as zeros (discarded or
// zeroed in an incremental, or a hole inside the diff): it is sent without
// reading and the destination zeroes it.
type Extent struct {
	Offset uint64
	Length uint64
	Zero   bool
}

// SourceImage is the snapshot being sent. ReadAt follows io.ReaderAt and must
// be safe for concurrent use.
type SourceImage interface {
	ReadAt(p []byte, off int64) (int, error)
	Size() uint64
}

// DestImage is the image being written. Methods must be safe for concurrent
// use on disjoint ranges. WriteZeroes must leave the range reading as zeros
// (an RBD discard with zeroing semantics or write_zeroes).
type DestImage interface {
	WriteAt(p []byte, off int64) (int, error)
	WriteZeroes(off, length uint64) error
	Flush() error
	Size() uint64
}

// CheckpointStore keeps the destination's resume point, in production in
// the destination image's metadata so that any agent can resume.
type CheckpointStore interface {
	// LoadCheckpoint returns the saved checkpoint; ok is false when none.
	LoadCheckpoint(ctx context.Context) (cp Checkpoint, ok bool, err error)
	SaveCheckpoint(ctx context.Context, cp Checkpoint) error
}
