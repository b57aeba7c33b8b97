//go:build functional

package agent_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/agent/agenttest"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// Only ferry-api commands: a destination agent refuses a prepare with no
// grant, a grant signed by another key, and an unsigned transfer.start
// cast on its region's queue; each refusal is logged and counted, and
// nothing is created in the destination cluster. The same transfer with
// ferry-api's grant goes through.
func TestForgedCommandsRefused(t *testing.T) {
	h := agenttest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	h.StartDest("dst-a", "metrics_listen = "+metricsAddr)
	src := h.Config("src", h.SrcRegion, "REGIONONE")
	name := fmt.Sprintf("forged-%d", time.Now().UnixNano())
	h.Image(name, 4<<20, true)
	spec := h.Pool + "/" + name

	key := h.SigningKey
	other := t.TempDir()
	if _, _, err := pki.WriteSigningKey(other, false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, key string }{
		{"no grant", ""},
		{"another key", filepath.Join(other, pki.SigningKeyFile)},
	} {
		h.SigningKey = tc.key
		_, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", "fg-"+name)
		if err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("%s: %v, want a forbidden prepare", tc.name, err)
		}
		if out, err := exec.Command("rbd", "-c", h.DstConf, "info", spec).CombinedOutput(); err == nil {
			t.Fatalf("%s: the destination image was created: %s", tc.name, out)
		}
	}
	h.SigningKey = key

	// An unsigned start on the destination region's queue.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bus, err := amqp.New(ctx, testenv.Get(t, "TRANSPORT_URL"), amqp.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close(context.Background())
	start := rpc.TransferStart{TransferID: "unsigned-" + name, Epoch: 1,
		Source: rpc.Location{Region: h.DstRegion, Pool: h.Pool, Image: name}, Destination: rpc.Location{Region: h.SrcRegion}}
	if err := bus.Cast(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodTransferStart, start); err != nil {
		t.Fatal(err)
	}
	refused := func() int {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		n := 0
		for _, m := range regexp.MustCompile(`ferry_agent_commands_refused_total\{method="[^"]+"\} (\d+)`).FindAllStringSubmatch(string(b), -1) {
			var v int
			fmt.Sscan(m[1], &v)
			n += v
		}
		return n
	}
	// An unsigned query is refused too (answered with forbidden).
	var rep rpc.TransferQueryReply
	if err := bus.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodTransferQuery,
		rpc.TransferQuery{TransferID: "fg-" + name, Pool: h.Pool, Image: name}, &rep); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("unsigned query: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for refused() < 4 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := refused(); n != 4 {
		t.Errorf("refused commands counted: %d, want 4 (two prepares, one start, one query)", n)
	}
	logs, _ := os.ReadFile(filepath.Join(h.Dir, "dst-a.log"))
	if c := strings.Count(string(logs), "command refused"); c != 4 {
		t.Errorf("%d refusals logged, want 4", c)
	}
	if out, err := exec.Command("rbd", "-c", h.SrcConf, "snap", "ls", spec).CombinedOutput(); err != nil || strings.Contains(string(out), "unsigned") {
		t.Errorf("the unsigned start ran: %s %v", out, err)
	}

	// With ferry-api's grant it goes through.
	res, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", "fg-"+name)
	if err != nil {
		t.Fatal(err)
	}
	h.Same(name, res.Snapshot)
	// ferry-api's signed query finds the completed copy.
	key2, err := pki.LoadSigningKey(h.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	signed := rpc.SigningCaller{Caller: bus, Signer: rpc.NewSigner(key2, time.Minute)}
	if err := signed.Call(ctx, rpc.AgentTarget(h.DstRegion), rpc.MethodTransferQuery,
		rpc.TransferQuery{TransferID: "fg-" + name, Pool: h.Pool, Image: name}, &rep); err != nil ||
		!rep.Complete || rep.Digest != res.Digest || rep.Snapshot != res.Snapshot {
		t.Errorf("signed query: %+v %v (transfer %+v)", rep, err, res)
	}
}
