//go:build functional

package api

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
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

func tokenOf(t *testing.T, ctx context.Context, user string) string {
	t.Helper()
	p, _, err := keystone.CredentialsFromEnv(testenv.Openrc(t, user)).Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return p.Token()
}

// ferry-api wired to the real Keystone and broker: tokens, the default
// policy, the outbox published to the source region's agents, and status
// reports applied from ferry.status.
func TestWiredAPI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := config.Defaults()
	k := &cfg.KeystoneAuthtoken
	k.AuthURL, k.Username, k.Password, k.ProjectName = testenv.Get(t, "OS_AUTH_URL"), testenv.Get(t, "FERRY_SERVICE_USER"),
		testenv.Get(t, "FERRY_SERVICE_PASSWORD"), testenv.Get(t, "FERRY_SERVICE_PROJECT")
	cfg.API.PolicyFile = filepath.Join(t.TempDir(), "absent.yaml")
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
	// An exchange and queues of the test's own: the stack's ferry-api and
	// agents use the default ones on the same broker.
	stamp := time.Now().UnixNano()
	opts := amqp.DefaultOptions()
	opts.Name = "ferry-api functional"
	opts.Exchange = fmt.Sprintf("ferry.test.%d", stamp)
	bus, err := amqp.New(ctx, testenv.Get(t, "TRANSPORT_URL"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close(context.Background())

	// A queue of the test's own bound to agent.RegionOne sees the starts.
	queue := fmt.Sprintf("ferry.test.api.%d", stamp)
	statusQueue := fmt.Sprintf("ferry.test.status.%d", stamp)
	starts := make(chan rpc.TransferStart, 4)
	cctx, ccancel := context.WithCancel(ctx)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	verifier := rpc.NewVerifier(pub)
	go bus.Consume(cctx, queue, []string{string(rpc.AgentTarget("RegionOne"))}, func(_ context.Context, env rpc.Envelope) (any, error) {
		// Every start reaches the agents signed by ferry-api's key.
		if err := verifier.VerifyEnvelope(env); err != nil {
			t.Errorf("start not signed: %v", err)
		}
		var st rpc.TransferStart
		if err := env.DecodeBody(&st); err == nil {
			starts <- st
		}
		return nil, nil
	})
	defer func() {
		ccancel()
		uris, _ := amqp.ParseTransportURL(testenv.Get(t, "TRANSPORT_URL"))
		if conn, err := amqp091.Dial(uris[0]); err == nil {
			if ch, err := conn.Channel(); err == nil {
				ch.QueueDelete(queue, false, false, false)
				ch.QueueDelete(statusQueue, false, false, false)
				ch.ExchangeDelete(opts.Exchange, false, false)
			}
			conn.Close()
		}
	}()

	s := &Server{cfg: cfg, log: slog.New(slog.DiscardHandler), db: store}
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	s.Start(sctx, Wiring{Validator: validator, Policy: auth.DefaultPolicy(), Bus: bus, StatusQueue: statusQueue,
		Signer: rpc.NewSigner(priv, time.Hour)})
	ts := httptest.NewServer(s.Router())
	defer ts.Close()

	do := func(token, method, path, body string) (int, string, http.Header) {
		req, _ := http.NewRequestWithContext(ctx, method, ts.URL+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("X-Auth-Token", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	admin, demo, reader := tokenOf(t, ctx, "admin"), tokenOf(t, ctx, "demo"), tokenOf(t, ctx, "reader")

	code, body, hdr := do("", "GET", "/v1/transfers", "")
	if code != 401 || !strings.Contains(hdr.Get("WWW-Authenticate"), `Keystone uri="`) || !strings.Contains(body, "unauthorized") {
		t.Errorf("no token: %d %s %v", code, body, hdr)
	}
	if code, body, _ := do("garbage", "GET", "/v1/transfers", ""); code != 401 {
		t.Errorf("bad token: %d %s", code, body)
	}
	if code, body, _ := do(demo, "POST", "/v1/transfers", imageBody); code != 403 {
		t.Errorf("member with an image source: %d %s", code, body)
	}
	if code, body, _ := do(reader, "POST", "/v1/transfers", imageBody); code != 403 {
		t.Errorf("reader creates: %d %s", code, body)
	}
	if code, body, _ := do(reader, "GET", "/v1/transfers", ""); code != 200 {
		t.Errorf("reader lists: %d %s", code, body)
	}
	code, body, _ = do(admin, "POST", "/v1/transfers", imageBody)
	if code != 202 {
		t.Fatalf("admin creates: %d %s", code, body)
	}
	var st rpc.TransferStart
	select {
	case st = <-starts:
	case <-time.After(20 * time.Second):
		t.Fatal("no transfer.start reached agent.RegionOne")
	}
	if !strings.Contains(body, st.TransferID) || st.Source.Pool != "volumes" || st.Destination.Region != "RegionTwo" || st.Epoch != 1 {
		t.Errorf("start %+v for %s", st, body)
	}
	// demo cannot see admin's transfer.
	if code, _, _ := do(demo, "GET", "/v1/transfers/"+st.TransferID, ""); code != 404 {
		t.Errorf("demo sees admin's transfer: %d", code)
	}
	// An agent's reports, through the broker.
	for _, ev := range []rpc.StatusEvent{
		{TransferID: st.TransferID, Event: rpc.EventAccepted, Epoch: 1, Region: "RegionOne", Host: "agent-x"},
		{TransferID: st.TransferID, Event: rpc.EventCompleted, Epoch: 1, Region: "RegionOne", Host: "agent-x", BytesDone: 100, BytesTotal: 100, Digest: "blake3-sha256:ab"},
	} {
		if err := bus.Cast(ctx, rpc.StatusTarget, rpc.MethodAgentStatus, ev); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body, _ = do(admin, "GET", "/v1/transfers/"+st.TransferID, "")
		if strings.Contains(body, `"status":"completed"`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code != 200 || !strings.Contains(body, `"status":"completed"`) || !strings.Contains(body, `"digest":"blake3-sha256:ab"`) {
		t.Errorf("after the reports: %d %s", code, body)
	}
}
