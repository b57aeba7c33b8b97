package api

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/services/api/cinder"
	"github.com/ferry-project/ferry/services/api/dispatch"
)

// Registrar registers copied images with Cinder (cinder.Service).
type Registrar interface {
	RegisterVolume(ctx context.Context, r cinder.Registration) (string, error)
	RegisterBackup(ctx context.Context, r cinder.BackupRegistration) (string, error)
}

// Finalizer takes transfers in finalizing (the agents copied and verified
// the data) through their registration with Cinder to completed, or to
// error with a message that says what was left where. It scans on a kick
// (the status consumer's) and every Interval, so a finalization that a
// stopped API left is resumed by the next: the volume that an interrupted
// attempt created is in destination.volume_id and is waited for, not
// managed twice; one whose manage-existing went unanswered is in
// register_started_at, and the volume it made is found by what no user can
// set (creator and creation time), never by metadata.
//
// Of several ferry-api processes only the holder of the database lease
// "finalizer" finalizes (Owner names this process), so registrations, and
// the temporary grants they take, never run in two processes at once; when
// the holder stops renewing, another takes over within LeaseTTL.
type Finalizer struct {
	DB       *db.DB
	Cinder   Registrar // nil: Cinder is not configured
	Log      *slog.Logger
	Interval time.Duration
	// Owner names this process in the lease; LeaseTTL is how long the
	// lease outlives its last renewal (default 3 × Interval).
	Owner    string
	LeaseTTL time.Duration
	// EndNotify builds the transfer.end notification of the transfers it
	// ends (may be nil).
	EndNotify dispatch.EndNotifier

	once    sync.Once
	kick    chan struct{}
	mu      sync.Mutex
	running map[string]bool
	wg      sync.WaitGroup
}

func (f *Finalizer) init() {
	f.once.Do(func() {
		if f.Owner == "" {
			f.Owner = "ferry-api-" + uuid.NewString()
		}
		f.kick = make(chan struct{}, 1)
		f.running = map[string]bool{}
		if f.Interval <= 0 {
			f.Interval = 10 * time.Second
		}
		if f.Log == nil {
			f.Log = slog.Default()
		}
	})
}

// Kick asks for a scan now.
func (f *Finalizer) Kick() {
	f.init()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Run scans until ctx ends, then waits for the finalizations it started.
func (f *Finalizer) Run(ctx context.Context) error {
	f.init()
	defer f.wg.Wait()
	t := time.NewTicker(f.Interval)
	defer t.Stop()
	for {
		f.scan(ctx)
		select {
		case <-ctx.Done():
			// Let another process take over at once, once ours are done.
			f.wg.Wait()
			_ = f.DB.ReleaseLease(context.WithoutCancel(ctx), FinalizerLease, f.Owner)
			return ctx.Err()
		case <-t.C:
		case <-f.kick:
		}
	}
}

// FinalizerLease is the name of the lease the finalizing process holds.
const FinalizerLease = "finalizer"

func (f *Finalizer) scan(ctx context.Context) {
	ttl := f.LeaseTTL
	if ttl <= 0 {
		ttl = 3 * f.Interval
	}
	held, err := f.DB.AcquireLease(ctx, FinalizerLease, f.Owner, ttl)
	if err != nil || !held {
		if err != nil && ctx.Err() == nil {
			f.Log.Warn("finalizer lease", "error", err)
		}
		return
	}
	ts, _, err := f.DB.ListTransfers(ctx, db.ListOpts{Scope: db.AllProjectsScope(), Status: db.StatusFinalizing, Limit: db.MaxListLimit, SortDir: "asc"})
	if err != nil {
		if ctx.Err() == nil {
			f.Log.Warn("listing transfers to finalize", "error", err)
		}
		return
	}
	for i := range ts {
		t := ts[i]
		f.mu.Lock()
		busy := f.running[t.ID]
		f.running[t.ID] = true
		f.mu.Unlock()
		if busy {
			continue
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() {
				f.mu.Lock()
				delete(f.running, t.ID)
				f.mu.Unlock()
			}()
			f.finalize(ctx, &t)
		}()
	}
}

// finalize registers one transfer's copy and ends the transfer.
func (f *Finalizer) finalize(ctx context.Context, t *db.Transfer) {
	log := f.Log.With("transfer_id", t.ID)
	done := func(to db.Status, msg, errMsg string, fields db.TransferFields) {
		_, err := f.DB.TransitionTransfer(context.WithoutCancel(ctx), t.ID, to, db.TransitionOpts{
			Message: msg, Error: errMsg, ExpectFrom: []db.Status{db.StatusFinalizing}, ExpectEpoch: t.Epoch, Fields: fields,
			Outbox: f.EndNotify.For(to),
		})
		if err != nil {
			log.Warn("ending a finalization", "status", to, "error", err)
		}
	}
	switch {
	case t.SourceVolumeID == "" && t.SourceBackupID == "", t.ReplicationID != "":
		// A replication cycle's copy is the replica's point: Ferry's.
		done(db.StatusCompleted, "nothing to register", "", db.TransferFields{})
		return
	case f.Cinder == nil:
		done(db.StatusError, "", "Cinder is not configured in ferry-api ([cinder]): the copy cannot be registered; it is in region "+
			t.DestRegion+", pool "+t.DestPool+", image "+t.DestImage, db.TransferFields{})
		return
	}
	register, onError := f.registerBackup, db.TransferFields{}
	if t.SourceVolumeID != "" {
		// The volume record of a failed attempt was deleted.
		empty, never := "", time.Time{}
		register, onError = f.registerVolume, db.TransferFields{DestVolumeID: &empty, RegisterStartedAt: &never}
	}
	msg, fields, err := register(ctx, t, log)
	if err != nil {
		if ctx.Err() != nil {
			return // stopping: the next holder of the lease resumes it
		}
		log.Error("registration failed", "error", err)
		done(db.StatusError, "", err.Error(), onError)
		return
	}
	done(db.StatusCompleted, msg, "", fields)
}

// registerVolume manages the copy as a Cinder volume of the owner's
// project; it returns the completion's message and fields.
func (f *Finalizer) registerVolume(ctx context.Context, t *db.Transfer, log *slog.Logger) (string, db.TransferFields, error) {
	spec, err := cinder.ParseVolumeSpec(deref(t.CinderSpec))
	if err != nil {
		return "", db.TransferFields{}, err
	}
	log.Info("registering the copy with Cinder", "region", t.DestRegion, "image", t.DestImage, "project_id", spec.ProjectID)
	id, err := f.Cinder.RegisterVolume(ctx, cinder.Registration{
		TransferID: t.ID, Region: t.DestRegion, Image: t.DestImage, Spec: spec,
		// Ferry's own ledger, never the volume's (user-settable) metadata:
		// the id Cinder answered, or when a request went unanswered.
		ExistingVolumeID: t.DestVolumeID, AttemptedAt: derefTime(t.RegisterStartedAt),
		Attempting: func(ctx context.Context, at time.Time) error {
			return f.DB.UpdateFields(ctx, t.ID, db.StatusFinalizing, db.TransferFields{RegisterStartedAt: &at})
		},
		Created: func(ctx context.Context, volumeID string) error {
			return f.DB.UpdateFields(ctx, t.ID, db.StatusFinalizing, db.TransferFields{DestVolumeID: &volumeID})
		},
	})
	if err != nil {
		return "", db.TransferFields{}, err
	}
	// Cinder's RBD driver renamed the image volume-<id> when it managed it.
	image, done := "volume-"+id, time.Time{}
	return fmt.Sprintf("registered as Cinder volume %s of project %s in %s (image %s)", id, spec.ProjectID, t.DestRegion, image),
		db.TransferFields{DestVolumeID: &id, DestImage: &image, RegisterStartedAt: &done}, nil
}

// registerBackup imports the copied backup's record for the owner's
// project; it returns the completion's message and fields.
func (f *Finalizer) registerBackup(ctx context.Context, t *db.Transfer, log *slog.Logger) (string, db.TransferFields, error) {
	spec, err := cinder.ParseBackupSpec(deref(t.CinderSpec))
	if err != nil {
		return "", db.TransferFields{}, err
	}
	log.Info("registering the copied backup with Cinder", "region", t.DestRegion, "backup_id", spec.ID, "project_id", spec.ProjectID)
	id, err := f.Cinder.RegisterBackup(ctx, cinder.BackupRegistration{
		TransferID: t.ID, Region: t.DestRegion, Pool: t.DestPool, Image: t.DestImage, Spec: spec, Existing: t.DestBackupID != "",
		Created: func(ctx context.Context, backupID string) error {
			return f.DB.UpdateFields(ctx, t.ID, db.StatusFinalizing, db.TransferFields{DestBackupID: &backupID})
		},
	})
	if err != nil {
		return "", db.TransferFields{}, err
	}
	return fmt.Sprintf("registered as Cinder backup %s of project %s in %s", id, spec.ProjectID, t.DestRegion),
		db.TransferFields{DestBackupID: &id}, nil
}

func derefTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
