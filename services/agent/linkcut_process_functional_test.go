//go:build functional

package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/agent"
	"github.com/ferry-project/ferry/services/agent/agenttest"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// The link between the two regions' agents goes dark for 30 s in the
// middle of a 256 MiB transfer (every packet dropped silently in the
// test's own "wan" network namespace, as a cut fibre would), then comes
// back: the same transfer run goes on where it was, re-sends at most a
// window's worth, and the copy is byte-identical. Only the data port is
// cut; Ceph and the broker stay reachable.
func TestLinkCutResumes(t *testing.T) {
	const (
		size  = 256 << 20
		cut   = 30 * time.Second
		limit = 16 << 20 // bytes/s: the transfer takes 16 s uncut
	)
	started := time.Now()
	n := agenttest.NewNet(t, "src", "dst")
	h := agenttest.New(t)
	// The agents' certificates name their namespace addresses.
	for _, c := range []struct{ name, node, region string }{{"src", "src", h.SrcRegion}, {"dst-a", "dst", h.DstRegion}} {
		if _, _, err := pki.Issue(h.Dir, h.Dir, c.name, pki.IssueOptions{IPAddresses: []net.IP{n.Node(c.node).Addr}, Force: true,
			Region: c.region, Role: pki.RoleAgent}); err != nil {
			t.Fatal(err)
		}
	}
	h.Command = func(name, bin string, args ...string) *exec.Cmd {
		return n.Command(strings.SplitN(name, "-", 2)[0], bin, args...)
	}
	h.StartDest("dst-a", "data_listen = "+n.Node("dst").Addr.String()+":0")
	src := h.Config("src", h.SrcRegion, "REGIONONE", fmt.Sprintf("bandwidth_limit = %d", limit))
	name := fmt.Sprintf("linkcut-%d", time.Now().UnixNano())
	h.Image(name, size, true)

	cmd := n.Command("src", h.Bin, "transfer", "--config-file", src, "--dest-region", h.DstRegion, "--timeout", "100s",
		"--signing-key", h.SigningKey, "--pool", h.Pool, "--image", name, "--transfer-id", "lc-"+name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	// Mid-way: once the destination's checkpoint covers a quarter.
	at := waitCheckpoint(t, h, name, size/4, done)
	n.Cut()
	cutAt := time.Now()
	restored := false
	t.Cleanup(func() {
		if !restored {
			n.Restore()
		}
	})
	// What crossed the wan namespace into the destination during the cut
	// (past the first second, while the last frames in the veth drain).
	time.Sleep(time.Second)
	rx0, cp0 := n.RxBytes("dst"), checkpoint(t, h, name)
	select {
	case err := <-done:
		t.Fatalf("the transfer ended during the cut: %v: %s", err, stderr.String())
	case <-time.After(cut - time.Since(cutAt)):
	}
	rx1, cp1 := n.RxBytes("dst"), checkpoint(t, h, name)
	n.Restore()
	restored = true
	t.Logf("cut at checkpoint %d MiB for %v; during the cut the destination received %d bytes, its checkpoint went %d → %d MiB",
		at>>20, cut, rx1-rx0, cp0>>20, cp1>>20)
	// ARP and the like may cross; data may not.
	if rx1-rx0 > 64<<10 {
		t.Errorf("the cut let %d bytes through", rx1-rx0)
	}

	if err := <-done; err != nil {
		t.Fatalf("transfer after the cut: %v: %s", err, stderr.String())
	}
	var res agent.HarnessResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("result %q: %v", stdout.String(), err)
	}
	resumedAfter := time.Since(cutAt) - cut
	t.Logf("done in %.1f s (the link was back %.1f s before the end): sent %d bytes for %d (%d re-sent), %d reconnects",
		res.Seconds, resumedAfter.Seconds(), res.BytesSent, size, int64(res.BytesSent)-size, res.Reconnects)
	if res.BytesTotal != size || res.Mode != "full" {
		t.Errorf("result %+v", res)
	}
	// Not restarted from zero: at most the destination's window (64 MiB
	// by default) crosses twice.
	if resent := int64(res.BytesSent) - size; resent > 64<<20 {
		t.Errorf("re-sent %d MiB (sent %d of %d)", resent>>20, res.BytesSent>>20, size>>20)
	}
	h.Same(name, res.Snapshot)
	// The transfer is bounded by its --timeout (100 s: 16 s of data, the
	// 30 s cut, TCP's retransmission backoff across it); the whole test
	// takes under 2 minutes on an idle machine.
	t.Logf("test took %.1f s", time.Since(started).Seconds())
}

// checkpoint is the bytes the destination's checkpoint of name covers
// (sealed: {"v": <checkpoint>, "mac": …}; the test only reads it).
func checkpoint(t *testing.T, h *agenttest.Harness, name string) int64 {
	t.Helper()
	ctx := context.Background()
	c, err := rbd.Connect(ctx, rbd.Options{ConfFile: h.DstConf, User: testenv.Get(t, "CEPH_USER"), Keyring: testenv.Get(t, "CEPH_REGIONTWO_KEYRING")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img, err := c.OpenImage(ctx, h.Pool, name, "", true)
	if err != nil {
		return 0
	}
	md, _ := img.Metadata()
	img.Close()
	var cp struct {
		V struct {
			BytesDone int64 `json:"bytes_done"`
		} `json:"v"`
	}
	json.Unmarshal([]byte(md["ferry.checkpoint"]), &cp)
	return cp.V.BytesDone
}

// waitCheckpoint waits until the destination's checkpoint of name covers
// at least bytes, and returns what it covers.
func waitCheckpoint(t *testing.T, h *agenttest.Harness, name string, bytes int64, done <-chan error) int64 {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("the transfer ended before the cut: %v", err)
		default:
		}
		if b := checkpoint(t, h, name); b >= bytes {
			return b
		}
	}
	t.Fatalf("the checkpoint never covered %d MiB", bytes>>20)
	return 0
}
