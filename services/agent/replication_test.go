package agent

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/agent/transfer"
)

// A replication cycle's start carries its replication, retain list and
// bandwidth limit into the job; its completed report carries the source
// snapshot's time and the points the destination removed.
func TestReplicationStartAndReport(t *testing.T) {
	req := start("t3")
	req.ReplicationID, req.Retain, req.BandwidthLimit = "r1", []string{"ferry-t1", "ferry-t2"}, 1<<20
	job := jobOf(req)
	if job.ReplicationID != "r1" || strings.Join(job.Retain, ",") != "ferry-t1,ferry-t2" || job.BandwidthLimit != 1<<20 {
		t.Errorf("job %+v", job)
	}
	at := time.Date(2026, 12, 3, 12, 0, 0, 5, time.FixedZone("x", 3600))
	ev := completed(req, transfer.Result{Digest: "d", Snapshot: "ferry-t3", SnapshotTime: at, DestRemoved: []string{"ferry-t0"}})
	if ev.SnapshotTime == nil || !ev.SnapshotTime.Equal(at) || ev.SnapshotTime.Location() != time.UTC {
		t.Errorf("snapshot time %v, want %v in UTC", ev.SnapshotTime, at)
	}
	if strings.Join(ev.Removed, ",") != "ferry-t0" {
		t.Errorf("removed %v", ev.Removed)
	}
	if ev := completed(start("t4"), transfer.Result{Snapshot: "ferry-t4"}); ev.SnapshotTime != nil || ev.Removed != nil {
		t.Errorf("a report without a snapshot time or removals: %+v", ev)
	}
}

// A prepare must match its grant in the replication and the retain list
// (the destination removes the snapshots retain leaves out).
func TestPrepareMatchesGrant(t *testing.T) {
	st := start("t3")
	st.ReplicationID, st.Retain = "r1", []string{"ferry-t1"}
	ok := transfer.PrepareRequest{TransferID: "t3", Pool: st.Source.Pool, Image: st.Source.Image, SourceRegion: st.Source.Region,
		SourceName: st.Source.Pool + "/" + st.Source.Image, Mode: transfer.ModeAuto, ReplicationID: "r1", Retain: []string{"ferry-t1"}}
	if err := prepareMatches(&st, &ok); err != nil {
		t.Fatalf("the granted prepare: %v", err)
	}
	for name, mut := range map[string]func(*transfer.PrepareRequest){
		"another replication": func(r *transfer.PrepareRequest) { r.ReplicationID = "r2" },
		"no replication":      func(r *transfer.PrepareRequest) { r.ReplicationID, r.Retain = "", nil },
		"retain cut":          func(r *transfer.PrepareRequest) { r.Retain = nil },
		"retain widened":      func(r *transfer.PrepareRequest) { r.Retain = []string{"ferry-t1", "ferry-t0"} },
		"another image":       func(r *transfer.PrepareRequest) { r.Image = "other" },
	} {
		r := ok
		mut(&r)
		if err := prepareMatches(&st, &r); err == nil {
			t.Errorf("%s: matched the grant", name)
		}
	}
}

// Background work runs under Run's context, once per key, and Run waits
// for it once its context ends; nothing starts before open or after Run.
func TestBackgroundWork(t *testing.T) {
	var b background
	if b.Go("k", func(context.Context) {}) {
		t.Fatal("work started before the agent serves")
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.open(ctx)
	done := make(chan error)
	go func() { done <- b.Run(ctx) }()
	release := make(chan struct{})
	var ran, stopped atomic.Int32
	if !b.Go("k", func(ctx context.Context) {
		ran.Add(1)
		<-release
		<-ctx.Done()
		stopped.Add(1)
	}) {
		t.Fatal("work not started")
	}
	if b.Go("k", func(context.Context) { ran.Add(1) }) {
		t.Error("a second work of the same key started")
	}
	if !b.Go("other", func(context.Context) { ran.Add(1) }) {
		t.Error("work of another key not started")
	}
	close(release)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if ran.Load() != 2 || stopped.Load() != 1 {
		t.Errorf("ran %d, stopped %d", ran.Load(), stopped.Load())
	}
	if b.Go("late", func(context.Context) {}) {
		t.Error("work started after Run returned")
	}
}
