//go:build functional

package api

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/api/auth"
	"github.com/ferry-project/ferry/services/internal/config"
	"github.com/ferry-project/ferry/services/internal/keystone"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// ferry-api wired to the real Keystone and broker runs a replication: the
// scheduler's signed cycle start reaches the source region's agents with
// the replication's fields, the agent's completion (through ferry.status)
// makes a point, the RPO breach that follows is published as an OpenStack
// notification (oslo.messaging v2, as it is, on notifications.warn), and
// /metrics reports the lag and the breach.
func TestWiredReplication(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := config.Defaults()
	k := &cfg.KeystoneAuthtoken
	k.AuthURL, k.Username, k.Password, k.ProjectName = testenv.Get(t, "OS_AUTH_URL"), testenv.Get(t, "FERRY_SERVICE_USER"),
		testenv.Get(t, "FERRY_SERVICE_PASSWORD"), testenv.Get(t, "FERRY_SERVICE_PROJECT")
	cfg.API.PolicyFile = filepath.Join(t.TempDir(), "absent.yaml")
	cfg.API.ReplicationTick, cfg.API.ReplicationMinInterval = 1, 2
	cfg.Notifications.Driver = "messagingv2"
	store, err := db.Open(ctx, "sqlite:///"+filepath.Join(t.TempDir(), "ferry.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := store.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	validator, err := keystone.NewValidator(ctx, cfg.KeystoneAuthtoken)
	if err != nil {
		t.Fatal(err)
	}
	// An exchange and queues of the test's own.
	stamp := time.Now().UnixNano()
	opts := amqp.DefaultOptions()
	opts.Name = "ferry-api functional"
	opts.Exchange = fmt.Sprintf("ferry.test.%d", stamp)
	bus, err := amqp.New(ctx, testenv.Get(t, "TRANSPORT_URL"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close(context.Background())
	queue := fmt.Sprintf("ferry.test.api.%d", stamp)
	statusQueue := fmt.Sprintf("ferry.test.status.%d", stamp)
	notifQueue := fmt.Sprintf("ferry.test.notifications.%d", stamp)

	uris, err := amqp.ParseTransportURL(testenv.Get(t, "TRANSPORT_URL"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := amqp091.Dial(uris[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.DeclareQueue(ctx, notifQueue, []string{"notifications.warn", "notifications.info"}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, q := range []string{queue, statusQueue, notifQueue} {
			ch.QueueDelete(q, false, false, false)
		}
		ch.ExchangeDelete(opts.Exchange, false, false)
	}()
	notes, err := ch.Consume(notifQueue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}

	starts := make(chan rpc.TransferStart, 16)
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	verifier := rpc.NewVerifier(pub)
	go bus.Consume(cctx, queue, []string{string(rpc.AgentTarget("RegionOne"))}, func(_ context.Context, env rpc.Envelope) (any, error) {
		if err := verifier.VerifyEnvelope(env); err != nil {
			t.Errorf("start not signed: %v", err)
		}
		var st rpc.TransferStart
		if err := env.DecodeBody(&st); err == nil {
			starts <- st
		}
		return nil, nil
	})

	s := &Server{cfg: cfg, log: slog.New(slog.DiscardHandler), db: store}
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	s.Start(sctx, Wiring{Validator: validator, Policy: auth.DefaultPolicy(), Bus: bus, StatusQueue: statusQueue,
		Signer: rpc.NewSigner(priv, time.Hour)})
	ts := httptest.NewServer(s.Router())
	defer ts.Close()
	do := func(token, method, path, body string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, method, ts.URL+path, strings.NewReader(body))
		req.Header.Set("X-Auth-Token", token)
		req.Header.Set("OpenStack-API-Version", "volume-ferry 1.1") // replications are since 1.1
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	admin, demo, reader := tokenOf(t, ctx, "admin"), tokenOf(t, ctx, "demo"), tokenOf(t, ctx, "reader")

	body := `{"replication": {"name": "functional", "source": {"region": "RegionOne", "pool": "volumes", "image": "img-` + fmt.Sprint(stamp) + `"},
		"destination": {"region": "RegionTwo"}, "interval_seconds": 2, "rpo_seconds": 3, "retention": {"keep_last": 2}, "bandwidth_limit": 4096}}`
	if code, b := do(reader, "POST", "/v1/replications", body); code != 403 {
		t.Errorf("a reader creates: %d %s", code, b)
	}
	if code, b := do(demo, "POST", "/v1/replications", body); code != 403 {
		t.Errorf("a member names an image: %d %s", code, b)
	}
	code, b := do(admin, "POST", "/v1/replications", body)
	if code != 202 {
		t.Fatalf("admin creates: %d %s", code, b)
	}
	var created struct {
		Replication ReplicationView `json:"replication"`
	}
	if err := json.Unmarshal([]byte(b), &created); err != nil {
		t.Fatal(err)
	}
	id := created.Replication.ID
	var st rpc.TransferStart
	select {
	case st = <-starts:
	case <-time.After(20 * time.Second):
		t.Fatal("no cycle start reached agent.RegionOne")
	}
	if st.ReplicationID != id || st.BandwidthLimit != 4096 || st.Ephemeral || st.Mode != "auto" ||
		st.Destination.Image != db.ReplicaImagePrefix+id || st.Destination.Pool != "volumes" {
		t.Fatalf("cycle start %+v", st)
	}
	if code, b := do(demo, "GET", "/v1/replications/"+id, ""); code != 404 {
		t.Errorf("demo sees admin's replication: %d %s", code, b)
	}
	// The agent's reports, through the broker.
	snapAt := time.Now().UTC().Add(-time.Second).Truncate(time.Microsecond)
	for _, ev := range []rpc.StatusEvent{
		{TransferID: st.TransferID, Event: rpc.EventAccepted, Epoch: 1, Region: "RegionOne", Host: "agent-x"},
		{TransferID: st.TransferID, Event: rpc.EventCompleted, Epoch: 1, Region: "RegionOne", Host: "agent-x", BytesDone: 8192,
			Digest: "blake3-sha256:ab", Mode: "full", Snapshot: "ferry-" + st.TransferID, SnapshotTime: &snapAt},
	} {
		if err := bus.Cast(ctx, rpc.StatusTarget, rpc.MethodAgentStatus, ev); err != nil {
			t.Fatal(err)
		}
	}
	var view ReplicationView
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, b := do(admin, "GET", "/v1/replications/"+id, "")
		var m struct {
			Replication ReplicationView `json:"replication"`
		}
		_ = json.Unmarshal([]byte(b), &m)
		view = m.Replication
		if view.PointsCount == 1 || time.Now().After(deadline) {
			break
		}
	}
	if view.PointsCount != 1 || view.LastSyncAt == nil || *view.LastSyncAt != isoTime(snapAt) || view.BytesLastCycle != 8192 || view.Cycles.Completed != 1 {
		t.Fatalf("after the completion: %+v", view)
	}
	code, b = do(admin, "GET", "/v1/replications/"+id+"/points", "")
	if code != 200 || !strings.Contains(b, `"name":"ferry-`+st.TransferID+`"`) {
		t.Errorf("points: %d %s", code, b)
	}
	// The cycle's end is announced (transfer.end), and, with no more
	// completions, the lag passing the RPO of 3 s (replication.rpo_breached).
	type note struct {
		key         string
		EventType   string         `json:"event_type"`
		Priority    string         `json:"priority"`
		PublisherID string         `json:"publisher_id"`
		Payload     map[string]any `json:"payload"`
	}
	var ended, breached *note
	for timeout := time.After(30 * time.Second); breached == nil; {
		select {
		case d := <-notes:
			var env map[string]string
			if err := json.Unmarshal(d.Body, &env); err != nil || env["oslo.version"] != "2.0" {
				t.Fatalf("notification %s: %v", d.Body, err)
			}
			n := &note{key: d.RoutingKey}
			if err := json.Unmarshal([]byte(env["oslo.message"]), n); err != nil {
				t.Fatal(err)
			}
			switch n.EventType {
			case "transfer.end":
				if n.Payload["transfer_id"] == st.TransferID {
					ended = n
				}
			case "replication.rpo_breached":
				breached = n
			}
		case <-timeout:
			t.Fatalf("no replication.rpo_breached notification (transfer.end: %+v)", ended)
		}
	}
	if breached.key != "notifications.warn" || breached.Priority != "WARN" || breached.Payload["replication_id"] != id ||
		!strings.HasPrefix(breached.PublisherID, "volume-ferry.") {
		t.Errorf("rpo_breached on %s: %+v", breached.key, breached)
	}
	if ended == nil || ended.key != "notifications.info" || ended.Payload["status"] != "completed" || ended.Payload["replication_id"] != id {
		t.Errorf("transfer.end of the cycle: %+v", ended)
	}
	code, b = do(admin, "GET", "/v1/replications/"+id, "")
	if code != 200 || !strings.Contains(b, `"rpo_breached":true`) {
		t.Errorf("after the breach: %d %s", code, b)
	}
	code, b = do(admin, "GET", "/metrics", "")
	for _, want := range []string{
		`ferry_replication_rpo_breached{project_id="` + created.Replication.ProjectID + `",replication_id="` + id + `"} 1`,
		`ferry_replication_lag_seconds{project_id="` + created.Replication.ProjectID + `",replication_id="` + id + `"}`,
		`ferry_replication_cycles_total{result="completed"} 1`,
		`ferry_replication_cycle_bytes{project_id="` + created.Replication.ProjectID + `",replication_id="` + id + `"} 8192`,
	} {
		if code != 200 || !strings.Contains(b, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Deleting it sends the clean-up to both regions' agents.
	if code, b := do(admin, "DELETE", "/v1/replications/"+id, ""); code != 202 {
		t.Errorf("delete: %d %s", code, b)
	}
}
