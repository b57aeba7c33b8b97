package transfer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/agent/stream"
	"github.com/ferry-project/ferry/services/internal/pki"
)

// Job is one transfer as the source agent runs it.
type Job struct {
	TransferID string
	// Epoch is the dispatch epoch the destination fences on.
	Epoch int64
	// Grant is ferry-api's signed transfer.start, forwarded with every
	// request to the destination (nil in-process, and in the harness
	// without a signing key).
	Grant     *rpc.Grant
	ProjectID string
	Mode      string // auto (default), full, incremental
	Pool      string
	Image     string
	// Snapshot names an existing source snapshot to copy; empty: Ferry
	// takes ferry-<transfer id>.
	Snapshot  string
	DestPool  string // default Pool
	DestImage string // default Image
	// SourceRegion and DestRegion, when set, are checked in the data
	// connection's certificates (pki identity): the destination's must
	// name DestRegion, ours SourceRegion.
	SourceRegion, DestRegion string
	// Ephemeral: the copy is handed over (to Cinder) once finished, so it
	// is never the base of another transfer: a full copy (auto means
	// full, incremental is refused) after which no Ferry snapshot stays
	// on either side. A snapshot named in Snapshot is the user's and
	// stays.
	Ephemeral bool
	// ReplicationID and Retain: the transfer is a cycle of that
	// replication; the destination keeps the Ferry snapshots named in
	// Retain besides the new one (see PrepareRequest).
	ReplicationID string
	Retain        []string
	// BandwidthLimit, when positive, caps this transfer's bytes per
	// second (below Options.BandwidthLimit when that is lower).
	BandwidthLimit int64
}

// Options tune the data stream.
type Options struct {
	Streams int
	// ReadAhead is the chunks read ahead of the wire ([agent]
	// stream_read_ahead; 0: the stream default).
	ReadAhead      int
	ChunkSize      uint64
	Compression    stream.Compression
	BandwidthLimit int64
	// Congestion is the data connections' TCP congestion control
	// ([agent] tcp_congestion; see stream.SendRequest.Congestion).
	Congestion string
	// ClientTLS builds the client TLS config for a destination name.
	ClientTLS func(serverName string) (*tls.Config, error)
	Progress  func(stream.Progress)
	// Retry of dropped streams; zero values take the stream defaults.
	Retry stream.RetryPolicy
	// Sealer tags the source snapshots Ferry takes (the region's state
	// key): only tagged snapshots are ever removed. Required.
	Sealer *Sealer
}

// Result of a completed transfer.
type Result struct {
	Digest string
	Mode   string // full or incremental, as run
	Base   string
	// Snapshot is the snapshot both sides end with, the next incremental
	// base; empty for an ephemeral transfer, which leaves none.
	Snapshot string
	// SourceSnapshot is the source snapshot that was copied (for an
	// ephemeral transfer removed afterwards when Ferry took it).
	SourceSnapshot string
	Ephemeral      bool
	BytesTotal     uint64 // the image's size
	BytesDone      uint64
	Stream         stream.Result
	Resumed        bool
	Removed        []string // snapshots removed at the source
	// Unsettled: removing what the transfer superseded at the source
	// (its base, or an ephemeral copy's snapshot) failed (a stalled
	// cluster): Settle retries it.
	Unsettled bool
	// DestRemoved are old snapshots removed at the destination.
	DestRemoved []string
	// SnapshotTime is when the copied source snapshot was taken (RBD's
	// timestamp); zero when unknown.
	SnapshotTime time.Time
	// Phases are the seconds spent in each step up to the verified end:
	// snapshot, prepare, diff, send, finish.
	Phases map[string]float64
}

// Source is the source side of transfers on one agent.
type Source struct {
	connect Connector
	pools   []string
	opts    Options
	log     *slog.Logger
}

// NewSource reads from the allowed pools of the cluster connect reaches.
func NewSource(connect Connector, pools []string, opts Options, log *slog.Logger) *Source {
	return &Source{connect: connect, pools: pools, opts: opts, log: log}
}

// WithProgress returns a Source that reports progress to fn.
func (s *Source) WithProgress(fn func(stream.Progress)) *Source {
	c := *s
	c.opts.Progress = fn
	return &c
}

// Run copies job's image to the destination behind dest. Running it again
// after a failure resumes from the destination's checkpoint.
func (s *Source) Run(ctx context.Context, job Job, dest Preparer) (Result, error) {
	if job.Mode == "" {
		job.Mode = ModeAuto
	}
	if job.Ephemeral {
		// An ephemeral copy is never a base: there is none to start from.
		switch job.Mode {
		case ModeIncremental:
			return Result{}, fmt.Errorf("%w: transfer %s is ephemeral (handed over, no snapshot kept): it can only be a full copy, not incremental", ErrBadRequest, job.TransferID)
		case ModeAuto:
			job.Mode = ModeFull
		}
	}
	if job.DestPool == "" {
		job.DestPool = job.Pool
	}
	if job.DestImage == "" {
		job.DestImage = job.Image
	}
	if err := allowed(s.pools, job.Pool); err != nil {
		return Result{}, err
	}
	log := s.log.With("transfer_id", job.TransferID, "image", job.Pool+"/"+job.Image)
	cluster, release, err := s.connect(ctx)
	if err != nil {
		return Result{}, err
	}
	defer release()
	phases := map[string]float64{}
	mark := time.Now()
	phase := func(name string) {
		now := time.Now()
		phases[name] = now.Sub(mark).Seconds()
		mark = now
	}
	if s.opts.Sealer == nil {
		return Result{}, errors.New("source has no state key")
	}
	snap, err := s.ensureSnapshot(ctx, cluster, job)
	if err != nil {
		return Result{}, err
	}
	img, err := cluster.OpenImage(ctx, job.Pool, job.Image, snap, true)
	if err != nil {
		return Result{}, err
	}
	closeImg := sync.OnceValue(img.Close)
	defer closeImg()
	info, err := img.Info()
	if err != nil {
		return Result{}, err
	}
	all, err := img.Snapshots()
	if err != nil {
		return Result{}, err
	}
	// Bases: Ferry's snapshots older than this one (or, for a Cinder
	// backup, the chain's older backups), newest first, with their ids.
	var bases []SnapRef
	var snapID uint64
	for i := len(all) - 1; i >= 0; i-- {
		n := all[i].Name
		if n == snap {
			snapID = all[i].ID
			continue
		}
		if strings.HasPrefix(n, SnapshotPrefix) ||
			strings.HasPrefix(snap, CinderBackupSnapshotPrefix) && strings.HasPrefix(n, CinderBackupSnapshotPrefix) {
			bases = append(bases, SnapRef{Name: n, ID: all[i].ID})
		}
	}
	if snapID == 0 {
		return Result{}, fmt.Errorf("source snapshot %s/%s@%s: %w", job.Pool, job.Image, snap, rbd.ErrNotFound)
	}
	snapTime, err := img.SnapshotTime(snapID)
	if err != nil {
		log.Warn("the source snapshot's time is unknown", "snapshot", snap, "error", err)
	}
	chunk := s.opts.ChunkSize
	if chunk == 0 {
		chunk = stream.DefaultChunkSize
	}
	phase("snapshot")
	prep, err := dest.Prepare(ctx, PrepareRequest{
		TransferID: job.TransferID, Epoch: job.Epoch, ProjectID: job.ProjectID, Mode: job.Mode,
		Pool: job.DestPool, Image: job.DestImage,
		SourceFSID: cluster.FSID(), SourceImageID: info.ID, SourceName: job.Pool + "/" + job.Image, SourceRegion: job.SourceRegion,
		Size: info.Size, Order: info.Order, Features: info.Features,
		Snapshot: snap, SourceSnapID: snapID, Bases: bases, ChunkSize: chunk, Ephemeral: job.Ephemeral, Grant: job.Grant,
		ReplicationID: job.ReplicationID, Retain: job.Retain, SnapshotTime: snapTime,
	})
	if err != nil {
		return Result{}, fmt.Errorf("prepare at the destination: %w", err)
	}
	if job.Ephemeral && !prep.Ephemeral {
		// An older destination agent: it would keep its snapshot and base.
		err := fmt.Errorf("%w: the destination agent does not support ephemeral transfers (upgrade it)", ErrBadRequest)
		s.abort(dest, job, err)
		return Result{}, err
	}
	if prep.Done {
		// The destination already holds this copy (a repeated transfer):
		// nothing to send, nothing changed there.
		log.Info("already complete at the destination", "digest", prep.Digest, "snapshot", snap)
		res := Result{Digest: prep.Digest, Mode: prep.Mode, Snapshot: snap, SourceSnapshot: snap, BytesTotal: info.Size, Ephemeral: job.Ephemeral,
			Phases: phases, SnapshotTime: snapTime, DestRemoved: prep.Removed}
		// The run that copied it may have ended before its clean-up (an
		// answer lost, an agent killed): its base, recorded in the
		// snapshot's tag, is superseded now.
		return s.afterVerified(ctx, cluster, job, res, s.recordedBase(ctx, cluster, job, snap), closeImg, log), nil
	}
	if prep.Base != "" && !slices.ContainsFunc(bases, func(b SnapRef) bool { return b.Name == prep.Base }) {
		err := fmt.Errorf("destination chose base %q, which the source does not have", prep.Base)
		s.abort(dest, job, err)
		return Result{}, err
	}
	mode := ModeFull
	if prep.Base != "" {
		mode = ModeIncremental
		if job.Snapshot == "" {
			if err := s.recordBase(ctx, cluster, job, snap, prep.Base); err != nil {
				// Only the clean-up of a missed completion depends on it.
				log.Warn("recording the base in the snapshot's tag", "base", prep.Base, "error", err)
			}
		}
	}
	log = log.With("mode", mode, "base", prep.Base, "snapshot", snap)

	phase("prepare")
	extents, err := s.extents(ctx, img, prep.Base)
	if err != nil {
		s.abort(dest, job, err)
		return Result{}, err
	}
	tlsCfg, err := s.opts.ClientTLS(prep.ServerName)
	if err != nil {
		s.abort(dest, job, err)
		return Result{}, err
	}
	if job.DestRegion != "" {
		tlsCfg = stream.RequirePeer(tlsCfg, job.DestRegion, pki.RoleAgent)
	}
	var resume *stream.Checkpoint
	if prep.Checkpoint.Watermark > 0 {
		resume = &prep.Checkpoint
	}
	log.Info("sending", "extents", len(extents), "size", info.Size, "resume_watermark", prep.Checkpoint.Watermark)
	phase("diff")
	sres, err := stream.Send(ctx, stream.SendRequest{
		Addr: prep.Endpoint, TLSConfig: tlsCfg,
		TransferID: job.TransferID, Ticket: prep.Ticket,
		Source: &sourceImage{img: img, size: info.Size}, Extents: extents,
		ChunkSize: prep.ChunkSize, Streams: s.opts.Streams, ReadAhead: s.opts.ReadAhead, Compression: s.opts.Compression,
		BandwidthLimit: EffectiveLimit(s.opts.BandwidthLimit, job.BandwidthLimit), ResumeFrom: resume, Retry: s.opts.Retry,
		Congestion: s.opts.Congestion,
		Progress:   s.opts.Progress, Logger: log,
	})
	if err != nil {
		s.abort(dest, job, err)
		return Result{}, fmt.Errorf("sending: %w", err)
	}
	phase("send")
	fin, err := dest.Finish(ctx, FinishRequest{TransferID: job.TransferID, Epoch: job.Epoch,
		Pool: job.DestPool, Image: job.DestImage, Digest: sres.Digest, Grant: job.Grant})
	if err != nil {
		return Result{}, fmt.Errorf("finishing at the destination: %w", err)
	}
	if fin.Digest != "" && fin.Digest != sres.Digest {
		return Result{}, fmt.Errorf("%w: sent %s, destination finished %s", ErrDigestMismatch, sres.Digest, fin.Digest)
	}
	res := Result{
		Digest: sres.Digest, Mode: mode, Base: prep.Base, Snapshot: snap, SourceSnapshot: snap, BytesTotal: info.Size,
		BytesDone: sres.BytesDone, Stream: sres, Resumed: prep.Resumed, DestRemoved: fin.Removed,
		Ephemeral: job.Ephemeral, SnapshotTime: snapTime,
	}
	phase("finish")
	res.Phases = phases
	log.Info("completed", "digest", sres.Digest, "bytes_sent", sres.BytesSent, "duration", sres.Duration.Round(time.Millisecond), "ephemeral", job.Ephemeral)
	return s.afterVerified(ctx, cluster, job, res, prep.Base, closeImg, log), nil
}

// EffectiveLimit is the bandwidth limit of a transfer: the lower of the
// agent's and the transfer's, each when positive (0: unlimited).
func EffectiveLimit(agent, transfer int64) int64 {
	switch {
	case agent <= 0:
		return max(transfer, 0)
	case transfer <= 0:
		return agent
	}
	return min(agent, transfer)
}

// afterVerified removes the source snapshots a verified transfer no longer
// needs. For an ephemeral copy nothing is a base: the snapshot Ferry took
// goes, a snapshot the user named stays. Otherwise the new snapshot is the
// next base for this destination and the base it replaces goes; only that
// one: other ferry-* snapshots may be the bases (or the running copies) of
// transfers to other destinations. A failure here leaves only space behind
// (logged), never a wrong copy.
func (s *Source) afterVerified(ctx context.Context, cluster *rbd.Cluster, job Job, res Result, base string, closeImg func() error, log *slog.Logger) Result {
	if job.Ephemeral {
		res.Snapshot = ""
		if job.Snapshot == "" {
			closeImg() // no handle left on the snapshot being removed
			s.markDone(ctx, cluster, job, job.TransferID, log)
			if err := s.removeSnapshot(ctx, cluster, job, res.SourceSnapshot); err != nil {
				log.Warn("removing the ephemeral transfer's source snapshot", "error", err)
				res.Unsettled = true
			} else {
				res.Removed = []string{res.SourceSnapshot}
			}
		}
		return res
	}
	if base == "" || base == res.Snapshot {
		return res
	}
	var removed []string
	var err error
	if supersededRemovalFails != nil {
		err = supersededRemovalFails(job)
	}
	if err == nil {
		removed, err = s.removeSuperseded(ctx, cluster, job, base, log)
	}
	if err != nil {
		log.Warn("removing the old source base", "base", base, "removed", removed, "error", err)
		res.Unsettled = true
	}
	if len(removed) > 1 {
		log.Info("removed older bases left by completions this agent did not see", "removed", removed[1:])
	}
	res.Removed = removed
	return res
}

// ensureSnapshot returns the snapshot to copy, taking ferry-<id> if needed.
// A snapshot named by a pattern (path.Match: a Cinder backup's snapshot is
// backup.<backup id>.snap.<time>, and only the image knows the time) must
// match exactly one snapshot of the image.
func (s *Source) ensureSnapshot(ctx context.Context, cluster *rbd.Cluster, job Job) (string, error) {
	if strings.ContainsAny(job.Snapshot, "*?[") {
		img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", true)
		if err != nil {
			return "", fmt.Errorf("source image: %w", err)
		}
		defer img.Close()
		snaps, err := img.Snapshots()
		if err != nil {
			return "", err
		}
		var found []string
		for _, sn := range snaps {
			if ok, err := path.Match(job.Snapshot, sn.Name); err != nil {
				return "", fmt.Errorf("%w: snapshot pattern %q: %w", ErrBadRequest, job.Snapshot, err)
			} else if ok {
				found = append(found, sn.Name)
			}
		}
		switch len(found) {
		case 0:
			return "", fmt.Errorf("%w: no snapshot of %s/%s matches %q", rbd.ErrNotFound, job.Pool, job.Image, job.Snapshot)
		case 1:
			return found[0], nil
		}
		return "", fmt.Errorf("%w: snapshots %s of %s/%s all match %q", ErrBadRequest, strings.Join(found, ", "), job.Pool, job.Image, job.Snapshot)
	}
	if job.Snapshot != "" {
		img, err := cluster.OpenImage(ctx, job.Pool, job.Image, job.Snapshot, true)
		if err != nil {
			return "", fmt.Errorf("source snapshot: %w", err)
		}
		return job.Snapshot, img.Close()
	}
	snap := SnapshotPrefix + job.TransferID
	img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", false)
	if err != nil {
		return "", fmt.Errorf("source image: %w", err)
	}
	defer img.Close()
	if done, err := s.done(img, job.TransferID); err != nil {
		return "", err
	} else if done {
		// A replayed start of a transfer that completed (its snapshot
		// was removed since): taking it again would copy the image as
		// it is now under the old transfer's name.
		return "", fmt.Errorf("%w: transfer %s completed here before; its start is not run again", ErrConflict, job.TransferID)
	}
	if beforeSourceSnapshot != nil {
		beforeSourceSnapshot(job)
	}
	if err := img.CreateSnapshot(snap); err != nil {
		if errors.Is(err, rbd.ErrExists) {
			// A repeated start: the snapshot of the first (tagged then,
			// or not Ferry's and never removed).
			return snap, nil
		}
		return "", err
	}
	// The transfer may have been superseded between the check above and
	// the snapshot: its successor leaves the doneTag before it removes
	// the old snapshot, so a snapshot made after that removal sees the
	// tag now. A replay then leaves nothing behind.
	if done, err := s.done(img, job.TransferID); err != nil || done {
		if rerr := img.RemoveSnapshot(snap); rerr != nil {
			s.log.Warn("removing the snapshot a replayed start took", "snapshot", snap, "error", rerr)
		}
		if err != nil {
			return "", err
		}
		return "", fmt.Errorf("%w: transfer %s completed here before; its start is not run again", ErrConflict, job.TransferID)
	}
	if err := s.tag(img, job, snap); err != nil {
		return "", err
	}
	return snap, nil
}

// supersededRemovalFails, when set (tests), fails afterVerified's removal
// of the superseded base with the error it returns (as a stalled cluster
// would), before anything is removed.
var supersededRemovalFails func(Job) error

// beforeSourceSnapshot, when set (tests), runs between ensureSnapshot's
// check for a doneTag and its snapshot.
var beforeSourceSnapshot func(Job)

// tag records in the source image's metadata that Ferry took snapshot name
// (by id): only tagged snapshots are ever removed by Ferry.
func (s *Source) tag(img *rbd.Image, job Job, name string) error {
	info, err := img.Info()
	if err != nil {
		return err
	}
	id, err := snapshotID(img, name)
	if err != nil {
		return err
	}
	v, err := s.opts.Sealer.Seal(kindSourceSnap, info.ID, sourceSnapTag{Snapshot: name, SnapID: id, TransferID: job.TransferID})
	if err != nil {
		return err
	}
	return img.SetMetadata(MetaSourceSnapPrefix+name, v)
}

// markDone leaves a doneTag for transfer tid on the source image (and
// prunes tags older than doneTagLife): its snapshot is about to go, and a
// replayed start of it must not take one again. A failure is logged: the
// destination's grant order still refuses such a replay's prepare.
func (s *Source) markDone(ctx context.Context, cluster *rbd.Cluster, job Job, tid string, log *slog.Logger) {
	err := func() error {
		img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", false)
		if err != nil {
			return err
		}
		defer img.Close()
		info, err := img.Info()
		if err != nil {
			return err
		}
		md, err := img.Metadata()
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		for k, v := range md {
			var t doneTag
			if strings.HasPrefix(k, MetaDonePrefix) && (s.opts.Sealer.Open(kindDone, info.ID, v, &t) != nil || now.Sub(t.At) > doneTagLife) {
				if err := img.RemoveMetadata(k); err != nil {
					return err
				}
			}
		}
		v, err := s.opts.Sealer.Seal(kindDone, info.ID, doneTag{TransferID: tid, At: now})
		if err != nil {
			return err
		}
		return img.SetMetadata(MetaDonePrefix+tid, v)
	}()
	if err != nil {
		log.Warn("the completed transfer's tag was not left on the source", "completed_transfer", tid, "error", err)
	}
}

// done reports whether the source image carries a valid doneTag of tid.
func (s *Source) done(img *rbd.Image, tid string) (bool, error) {
	md, err := img.Metadata()
	if err != nil {
		return false, err
	}
	text, ok := md[MetaDonePrefix+tid]
	if !ok {
		return false, nil
	}
	info, err := img.Info()
	if err != nil {
		return false, err
	}
	var t doneTag
	return s.opts.Sealer.Open(kindDone, info.ID, text, &t) == nil && t.TransferID == tid, nil
}

// tagged reports whether Ferry took the source snapshot name (its tag
// verifies and names the snapshot's id).
func (s *Source) tagged(img *rbd.Image, name string) (bool, error) {
	_, ok, err := s.tagOf(img, name)
	return ok, err
}

// tagOf returns snapshot name's verified Ferry tag; ok is false when the
// snapshot is absent or its tag is missing, forged or of another snapshot.
func (s *Source) tagOf(img *rbd.Image, name string) (tag sourceSnapTag, ok bool, err error) {
	info, err := img.Info()
	if err != nil {
		return tag, false, err
	}
	md, err := img.Metadata()
	if err != nil {
		return tag, false, err
	}
	text, found := md[MetaSourceSnapPrefix+name]
	if !found {
		return tag, false, nil
	}
	id, err := snapshotID(img, name)
	if errors.Is(err, rbd.ErrNotFound) {
		return tag, false, nil
	}
	if err != nil {
		return tag, false, err
	}
	if s.opts.Sealer.Open(kindSourceSnap, info.ID, text, &tag) != nil {
		return sourceSnapTag{}, false, nil
	}
	return tag, tag.Snapshot == name && tag.SnapID == id, nil
}

// recordBase re-seals the tag of snapshot snap (Ferry's, taken for this
// transfer) with the base the destination chose (see sourceSnapTag.Base).
func (s *Source) recordBase(ctx context.Context, cluster *rbd.Cluster, job Job, snap, base string) error {
	img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", false)
	if err != nil {
		return err
	}
	defer img.Close()
	tag, ok, err := s.tagOf(img, snap)
	if err != nil || !ok || tag.Base == base {
		return err
	}
	info, err := img.Info()
	if err != nil {
		return err
	}
	tag.Base = base
	v, err := s.opts.Sealer.Seal(kindSourceSnap, info.ID, tag)
	if err != nil {
		return err
	}
	return img.SetMetadata(MetaSourceSnapPrefix+snap, v)
}

// recordedBase is the base recorded in snapshot snap's tag ("" when none
// or when it cannot be read: then nothing more is removed).
func (s *Source) recordedBase(ctx context.Context, cluster *rbd.Cluster, job Job, snap string) string {
	img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", true)
	if err != nil {
		return ""
	}
	defer img.Close()
	tag, ok, err := s.tagOf(img, snap)
	if err != nil || !ok {
		return ""
	}
	return tag.Base
}

// maxBaseChain bounds how far back removeSuperseded follows recorded bases.
const maxBaseChain = 16

// removeSuperseded removes base, the snapshot a verified transfer was
// diffed from, and then the chain of bases recorded below it that are
// still there (each tagged by Ferry; see sourceSnapTag.Base). It returns
// the snapshots removed.
func (s *Source) removeSuperseded(ctx context.Context, cluster *rbd.Cluster, job Job, base string, log *slog.Logger) ([]string, error) {
	img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", false)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	var removed []string
	for name, i := base, 0; name != "" && i < maxBaseChain; i++ {
		tag, ok, err := s.tagOf(img, name)
		if err != nil {
			return removed, err
		}
		if !ok && i > 0 {
			break // gone already, or not Ferry's: the chain ends here
		}
		if tid, isOurs := strings.CutPrefix(name, SnapshotPrefix); isOurs {
			s.markDone(ctx, cluster, job, tid, log)
		}
		if err := s.removeTagged(img, name); err != nil {
			return removed, err
		}
		removed = append(removed, name)
		name = tag.Base
	}
	return removed, nil
}

// extents lists what to send: the diff from base, or every allocated
// extent (parent data included) for a full copy. Exact extents always:
// whole-object listing is cheaper only to list, and then reads and sends
// whole 4 MiB objects for a few KiB written in each (measured: a 4 GiB
// image with 512 scattered 256 KiB extents sent 512 MiB instead of 128).
func (s *Source) extents(ctx context.Context, img *rbd.Image, base string) ([]stream.Extent, error) {
	var out []stream.Extent
	err := img.Diff(ctx, base, false, func(off, length uint64, exists bool) error {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.Offset+last.Length == off && last.Zero == !exists {
				last.Length += length
				return nil
			}
		}
		out = append(out, stream.Extent{Offset: off, Length: length, Zero: !exists})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if base == "" {
		// A full copy into a zeroed image: holes need nothing.
		out = slices.DeleteFunc(out, func(e stream.Extent) bool { return e.Zero })
	}
	return out, nil
}

// Discard removes the source snapshot Ferry took for job (ferry-<id>, when
// job names none), if Ferry's tag says it took it: what a failed or
// cancelled transfer leaves. It returns the snapshot removed ("" for
// none).
func (s *Source) Discard(ctx context.Context, job Job) (string, error) {
	if job.Snapshot != "" {
		return "", nil // the user's
	}
	if err := allowed(s.pools, job.Pool); err != nil {
		return "", err
	}
	cluster, release, err := s.connect(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	name := SnapshotPrefix + job.TransferID
	img, err := cluster.OpenImage(ctx, job.Pool, job.Image, name, true)
	if errors.Is(err, rbd.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	img.Close()
	if err := s.removeSnapshot(ctx, cluster, job, name); err != nil {
		return "", err
	}
	return name, nil
}

// Settle does at the source what a completion of job the source agent did
// not see would have done (rpc.MethodTransferSettle): the superseded base
// recorded in the tag of the transfer's snapshot goes, with the chain below
// it; for an ephemeral copy the transfer's snapshot itself goes. Only
// snapshots Ferry took and tagged are touched; a repeat finds them gone.
// It returns the snapshots removed.
func (s *Source) Settle(ctx context.Context, job Job) ([]string, error) {
	name := SnapshotPrefix + job.TransferID
	if job.Snapshot != "" && job.Snapshot != name {
		return nil, nil // the user's snapshot: never a base Ferry records
	}
	if err := allowed(s.pools, job.Pool); err != nil {
		return nil, err
	}
	if s.opts.Sealer == nil {
		return nil, errors.New("source has no state key")
	}
	cluster, release, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	log := s.log.With("transfer_id", job.TransferID, "image", job.Pool+"/"+job.Image)
	if job.Ephemeral {
		img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", false)
		if errors.Is(err, rbd.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		defer img.Close()
		if _, err := snapshotID(img, name); errors.Is(err, rbd.ErrNotFound) {
			return nil, nil
		}
		s.markDone(ctx, cluster, job, job.TransferID, log)
		if err := s.removeTagged(img, name); err != nil {
			return nil, err
		}
		return []string{name}, nil
	}
	// Unlike recordedBase, every failure to read is an error here: the
	// caller retries (a stalled cluster), it must not take "nothing to
	// do" for an answer.
	img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", true)
	if errors.Is(err, rbd.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	tag, ok, err := s.tagOf(img, name)
	if err == nil && ok && tag.Base != "" {
		_, err = snapshotID(img, tag.Base)
		if errors.Is(err, rbd.ErrNotFound) {
			ok, err = false, nil // removed already (with the chain below it)
		}
	}
	img.Close()
	if err != nil || !ok || tag.Base == "" {
		return nil, err
	}
	return s.removeSuperseded(ctx, cluster, job, tag.Base, log)
}

// removeSnapshot removes a source snapshot Ferry took (tagged), with its
// tag; one already gone is no error, one Ferry did not take stays
// (ErrNotOwned).
func (s *Source) removeSnapshot(ctx context.Context, cluster *rbd.Cluster, job Job, name string) error {
	img, err := cluster.OpenImage(ctx, job.Pool, job.Image, "", false)
	if err != nil {
		return err
	}
	defer img.Close()
	return s.removeTagged(img, name)
}

// removeTagged removes snapshot name of img when Ferry's tag says Ferry
// took it, with the tag (see removeSnapshot).
func (s *Source) removeTagged(img *rbd.Image, name string) error {
	ours, err := s.tagged(img, name)
	if err != nil {
		return err
	}
	if !ours {
		if _, err := snapshotID(img, name); errors.Is(err, rbd.ErrNotFound) {
			return forgetSourceSnapshot(img, name)
		}
		return fmt.Errorf("%w: snapshot %s@%s has no Ferry tag: left in place", ErrNotOwned, img, name)
	}
	if err := img.RemoveSnapshot(name); err != nil && !errors.Is(err, rbd.ErrNotFound) {
		return err
	}
	return forgetSourceSnapshot(img, name)
}

// forgetSourceSnapshot removes what img's metadata says of its snapshot
// name once that is gone: Ferry's tag, and the marker of a group
// snapshot it was part of.
func forgetSourceSnapshot(img *rbd.Image, name string) error {
	return errors.Join(img.RemoveMetadata(MetaSourceSnapPrefix+name), img.RemoveMetadata(rbd.ConsistentKey(name)))
}

func (s *Source) abort(dest Preparer, job Job, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := dest.Abort(ctx, AbortRequest{TransferID: job.TransferID, Epoch: job.Epoch, Reason: cause.Error(), Grant: job.Grant})
	if err != nil && !errors.Is(err, ErrNoSession) {
		s.log.Warn("aborting at the destination", "transfer_id", job.TransferID, "error", err)
	}
}
