package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/cinder"
)

// DrillLease is the name of the database lease the drill-running process
// holds.
const DrillLease = "replication-drills"

// DrillRegistrar makes a drill's clone a Cinder volume (cinder.Service).
type DrillRegistrar interface {
	VolumePool(region string) string
	RegisterVolume(ctx context.Context, r cinder.Registration) (string, error)
}

// DrillRunner carries DR drills in creating to available (or error): it
// asks the destination region's agents (replication.drill, a signed call)
// to clone the point into ferry-drill-<drill id> in the region's Cinder
// volume pool (flattened in the background when Flatten), then registers
// the clone with Cinder as a volume of the replication's project
// (manage-existing, with the drill's ledger as the finalizer's: an
// interrupted registration is resumed, not made twice), waits until it is
// available, and records the time to available (the drill's RTO).
// Replication continues meanwhile. Only the holder of the lease
// "replication-drills" runs drills.
type DrillRunner struct {
	DB     *db.DB
	Caller rpc.Caller // signs (rpc.SigningCaller)
	Cinder DrillRegistrar
	// Flatten is [api] drill_flatten.
	Flatten bool
	// Interval between scans (default 10 s; Kick scans at once).
	Interval time.Duration
	// CallTimeout bounds the agent's clone (default 2 min).
	CallTimeout time.Duration
	Owner       string
	LeaseTTL    time.Duration
	Log         *slog.Logger

	once sync.Once
	kicker
	workers workers
}

func (r *DrillRunner) init() {
	r.once.Do(func() {
		if r.Owner == "" {
			r.Owner = "ferry-api-" + uuid.NewString()
		}
		if r.Interval <= 0 {
			r.Interval = 10 * time.Second
		}
		if r.CallTimeout <= 0 {
			r.CallTimeout = 2 * time.Minute
		}
		if r.Log == nil {
			r.Log = slog.Default()
		}
	})
}

// Run scans until ctx ends, then waits for the drills it started.
func (r *DrillRunner) Run(ctx context.Context) error {
	if r.DB == nil {
		return errors.New("replicate: the drill runner needs a DB")
	}
	r.init()
	r.every(ctx, r.Interval, r.scan, func(ctx context.Context) {
		r.workers.wait()
		_ = r.DB.ReleaseLease(ctx, DrillLease, r.Owner)
	})
	return nil
}

func (r *DrillRunner) scan(ctx context.Context) {
	ttl := r.LeaseTTL
	if ttl <= 0 {
		ttl = 3 * r.Interval
	}
	held, err := r.DB.AcquireLease(ctx, DrillLease, r.Owner, ttl)
	if err != nil || !held {
		if err != nil && ctx.Err() == nil {
			r.Log.Warn("drill lease", "error", err)
		}
		return
	}
	drills, err := r.DB.PendingDrills(ctx, 0)
	if err != nil {
		if ctx.Err() == nil {
			r.Log.Warn("listing pending drills", "error", err)
		}
		return
	}
	for i := range drills {
		d := drills[i]
		r.workers.start(ctx, d.ID, nil, func(ctx context.Context) { r.RunDrill(ctx, &d) })
	}
}

// RunDrill carries one drill to available or error.
func (r *DrillRunner) RunDrill(ctx context.Context, d *db.Drill) {
	r.init()
	log := r.Log.With("drill_id", d.ID, "replication_id", d.ReplicationID, "point", d.Point)
	volumeID, err := r.drill(ctx, d, log)
	bctx := context.WithoutCancel(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return // stopping: the next holder of the lease resumes it
		}
		msg := err.Error()
		log.Error("drill failed", "error", err)
		st := db.DrillError
		if _, uerr := r.DB.UpdateDrill(bctx, d.ID, db.DrillFields{Status: &st, Error: &msg}); uerr != nil {
			log.Warn("recording a failed drill", "error", uerr)
			return
		}
		r.event(bctx, d, db.RepEventDrillFailed, fmt.Sprintf("drill %s of point %s failed: %s", d.ID, d.Point, msg), log)
		return
	}
	st, done := db.DrillAvailable, time.Time{}
	nd, err := r.DB.UpdateDrill(bctx, d.ID, db.DrillFields{Status: &st, VolumeID: &volumeID, RegisterStartedAt: &done})
	if err != nil {
		log.Warn("recording an available drill", "error", err)
		return
	}
	rto, _ := nd.RTO()
	log.Info("drill available", "volume_id", volumeID, "rto", rto)
	r.event(bctx, d, db.RepEventDrillAvailable, fmt.Sprintf("drill %s of point %s: volume %s available after %.1f s", d.ID, d.Point, volumeID, rto.Seconds()), log)
}

func (r *DrillRunner) event(ctx context.Context, d *db.Drill, kind db.ReplicationEventKind, msg string, log *slog.Logger) {
	if err := r.DB.RecordReplicationEvent(ctx, db.ReplicationEvent{ReplicationID: d.ReplicationID, Kind: kind, Message: msg}); err != nil {
		log.Warn("recording a drill event", "error", err)
	}
}

// drill clones the point and registers the clone; it returns the volume.
func (r *DrillRunner) drill(ctx context.Context, d *db.Drill, log *slog.Logger) (string, error) {
	rep, err := r.DB.GetReplication(ctx, d.ReplicationID, db.AllProjectsScope())
	if err != nil {
		return "", fmt.Errorf("replication %s: %w", d.ReplicationID, err)
	}
	if r.Cinder == nil || r.Caller == nil {
		return "", errors.New("drills need Cinder ([cinder] volume_pools) and the message bus in ferry-api")
	}
	pool := r.Cinder.VolumePool(rep.DestRegion)
	if pool == "" {
		return "", fmt.Errorf("region %s has no Cinder volume pool in Ferry's [cinder] volume_pools: the drill's clone cannot become a volume", rep.DestRegion)
	}
	var reply rpc.DrillReply
	if d.VolumeID == "" && d.RegisterStartedAt == nil {
		// Not registered yet: the clone (idempotent: an existing clone
		// of that point is success).
		cctx, cancel := context.WithTimeout(ctx, r.CallTimeout)
		err := r.Caller.Call(cctx, rpc.AgentTarget(rep.DestRegion), rpc.MethodReplicationDrill, rpc.DrillRequest{
			DrillID: d.ID, ReplicationID: rep.ID, Pool: rep.DestPool, Image: rep.DestImage, Snapshot: d.Point,
			ClonePool: pool, CloneName: d.Image, Flatten: r.Flatten,
		}, &reply)
		cancel()
		if err != nil {
			return "", fmt.Errorf("cloning point %s of %s/%s in %s: %w", d.Point, rep.DestPool, rep.DestImage, rep.DestRegion, err)
		}
		log.Info("drill clone made", "pool", pool, "image", d.Image, "size", reply.Size)
	}
	const gib = 1 << 30
	name := d.Name
	if name == "" {
		name = "drill " + d.ID
	}
	return r.Cinder.RegisterVolume(ctx, cinder.Registration{
		TransferID: d.ID, Region: rep.DestRegion, Image: d.Image,
		Spec: cinder.VolumeSpec{Kind: "volume", ID: rep.SourceVolumeID, Name: name,
			Description: fmt.Sprintf("Ferry DR drill %s: point %s of replication %s", d.ID, d.Point, rep.ID),
			SizeGiB:     int((reply.Size + gib - 1) / gib), ProjectID: rep.ProjectID},
		ExistingVolumeID: d.VolumeID, AttemptedAt: derefTime(d.RegisterStartedAt),
		Attempting: func(ctx context.Context, at time.Time) error {
			_, err := r.DB.UpdateDrill(ctx, d.ID, db.DrillFields{RegisterStartedAt: &at})
			return err
		},
		Created: func(ctx context.Context, volumeID string) error {
			_, err := r.DB.UpdateDrill(ctx, d.ID, db.DrillFields{VolumeID: &volumeID})
			return err
		},
	})
}

func derefTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}
