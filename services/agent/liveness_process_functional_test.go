//go:build functional

package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	ferryamqp "github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/agent/agenttest"
	"github.com/ferry-project/ferry/services/api/dispatch"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/testenv"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The source agent process is killed mid-transfer and started again at
// once (same host, new boot): ferry-api's dispatcher (in this process,
// with agent_down_time 60 s) re-dispatches the transfer on the restarted
// agent's first heartbeats, the agent resumes it from the destination's
// checkpoint, and the copy is byte-identical. The agent's heartbeats
// carry its cluster's health to the service row.
func TestProcessAgentRestartRedispatched(t *testing.T) {
	h := agenttest.New(t)
	h.StartDest("dst-a")
	src := h.Config("src", h.SrcRegion, "REGIONONE", "bandwidth_limit = 24M", "health_interval = 5")
	name := fmt.Sprintf("restart-%d", time.Now().UnixNano())
	const size = 96 << 20
	h.Image(name, size, true)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := db.Open(ctx, "sqlite:///"+filepath.Join(t.TempDir(), "api.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	opts := ferryamqp.DefaultOptions()
	opts.Name, opts.Logger = "restart-test", log
	tp, err := ferryamqp.New(ctx, testenv.Get(t, "TRANSPORT_URL"), opts)
	if err != nil {
		t.Fatal(err)
	}
	statusQueue := "ferry.status.restart-test-" + h.SrcRegion
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer ccancel()
		_ = tp.Close(cctx)
		deleteQueue(t, statusQueue)
	})
	cctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	// ferry-api signs what it sends to agents; the test's publisher too.
	key, err := pki.LoadSigningKey(h.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	signed := rpc.SigningCaster{Caster: tp, Signer: rpc.NewSigner(key, time.Hour)}
	p := &dispatch.Publisher{DB: d, Caster: signed, Owner: "restart-test", Interval: 200 * time.Millisecond, Declarer: tp, Log: log}
	r := &dispatch.Redispatcher{DB: d, DownAfter: time.Minute, Interval: time.Hour, Publish: p.Kick, Log: log}
	if err := tp.DeclareQueue(ctx, statusQueue, []string{string(rpc.StatusTarget)}); err != nil {
		t.Fatal(err)
	}
	wg.Add(3)
	go func() { defer wg.Done(); _ = p.Run(cctx) }()
	go func() { defer wg.Done(); _ = r.Run(cctx) }()
	go func() {
		defer wg.Done()
		_ = tp.Consume(cctx, statusQueue, []string{string(rpc.StatusTarget)}, dispatch.StatusHandler(d, log, dispatch.WithHeartbeatKick(r.Kick)))
	}()

	startSource := func() *exec.Cmd {
		cmd := exec.Command(h.Bin, "--config-file", src)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
		return cmd
	}
	service := func() *db.Service {
		svcs, err := d.ListServices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range svcs {
			if svcs[i].Host == "src" && svcs[i].Region == h.SrcRegion {
				return &svcs[i]
			}
		}
		return nil
	}
	until := func(what string, timeout time.Duration, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(timeout); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	get := func(id string) *db.Transfer {
		tr, err := d.GetTransfer(ctx, id, db.AllProjectsScope())
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}

	first := startSource()
	until("the source agent's heartbeat", 30*time.Second, func() bool { s := service(); return s != nil && s.BootID != "" })
	boot := service().BootID

	tr := &db.Transfer{ProjectID: "p1", UserID: "u1", SourceRegion: h.SrcRegion, SourcePool: h.Pool, SourceImage: name,
		DestRegion: h.DstRegion, DestPool: h.Pool, DestImage: name, Mode: db.ModeFull}
	msg, err := dispatch.NewStartMessage(tr)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateTransfer(ctx, tr, msg); err != nil {
		t.Fatal(err)
	}
	p.Kick()
	h.KillWhenHalfway(first, name, size)
	killed := time.Now()
	startSource()
	until("the transfer re-dispatched", 50*time.Second, func() bool { return get(tr.ID).Epoch >= 2 })
	took := time.Since(killed)
	if took > 20*time.Second {
		t.Errorf("re-dispatched %v after the restart, want well before agent_down_time (%v)", took, r.DownAfter)
	}
	if s := service(); s.BootID == boot {
		t.Errorf("the restarted agent kept boot id %s", boot)
	}
	until("completed", 90*time.Second, func() bool {
		st := get(tr.ID).Status
		if st == db.StatusError || st == db.StatusCancelled {
			t.Fatalf("transfer ended %s: %v", st, *get(tr.ID).Error)
		}
		return st == db.StatusCompleted
	})
	got := get(tr.ID)
	h.Same(name, got.DestSnapshot)
	evs, err := d.ListEvents(ctx, tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	var requeue string
	for _, ev := range evs {
		if ev.Kind == db.EventRequeue {
			requeue = ev.Message
		}
	}
	if !strings.Contains(requeue, "no longer runs it") {
		t.Errorf("requeue event %q; events %+v", requeue, evs)
	}
	until("a ceph health probe in the service row", 15*time.Second, func() bool {
		hl := service().Health()
		return hl != nil && strings.HasPrefix(hl.Status, "HEALTH_")
	})
	t.Logf("re-dispatched %.1f s after the kill and restart (%s); completed at epoch %d; health %s",
		took.Seconds(), requeue, got.Epoch, service().Health().Status)
}

func deleteQueue(t *testing.T, q string) {
	uris, err := ferryamqp.ParseTransportURL(testenv.Get(t, "TRANSPORT_URL"))
	if err != nil {
		t.Error(err)
		return
	}
	conn, err := amqp091.Dial(uris[0])
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	if _, err := ch.QueueDelete(q, false, false, false); err != nil {
		t.Errorf("delete queue %s: %v", q, err)
	}
}
