//go:build functional

package agent_test

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/agent/agenttest"
)

// One transfer between two agent processes over the bus and mutual TLS,
// then an incremental.
func TestTwoAgentProcesses(t *testing.T) {
	h := agenttest.New(t)
	h.StartDest("dst-a")
	src := h.Config("src", h.SrcRegion, "REGIONONE")
	name := fmt.Sprintf("proc-%d", time.Now().UnixNano())
	h.Image(name, 24<<20+4096, true)
	res, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", "p1-"+name)
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != "full" || res.BytesTotal != 24<<20+4096 || !strings.HasPrefix(res.Digest, "blake3-sha256:") {
		t.Errorf("result %+v", res)
	}
	h.Same(name, res.Snapshot)
	res, err = h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", "p2-"+name, "--mode", "incremental")
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != "incremental" || res.BytesSent != 0 {
		t.Errorf("unchanged incremental %+v", res)
	}
	h.Same(name, res.Snapshot)
}

// kill -9 of the source mid-transfer: the same transfer run again resumes
// from the destination's checkpoint and ends byte-identical.
func TestKillSourceResumes(t *testing.T) {
	h := agenttest.New(t)
	h.StartDest("dst-a")
	src := h.Config("src", h.SrcRegion, "REGIONONE", "bandwidth_limit = 24M")
	name := fmt.Sprintf("killsrc-%d", time.Now().UnixNano())
	const size = 128 << 20
	h.Image(name, size, true)
	id := "ks-" + name
	cmd := exec.Command(h.Bin, "transfer", "--config-file", src, "--dest-region", h.DstRegion, "--pool", h.Pool, "--image", name, "--transfer-id", id, "--signing-key", h.SigningKey)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	atKill := h.KillWhenHalfway(cmd, name, size)
	cmd.Wait()

	src = h.Config("src", h.SrcRegion, "REGIONONE") // full speed now
	res, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", id, "--signing-key", h.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.Skipped == 0 {
		t.Errorf("did not resume: %+v", res)
	}
	h.Same(name, res.Snapshot)
	// Everything the checkpoint seen at the kill covered must not cross
	// again, but for the checkpoint lag: under 10% of it.
	resent := int64(res.BytesSent) - (size - atKill)
	t.Logf("resumed run sent %d MiB of %d MiB (%d KiB of the %d MiB written before the kill)", res.BytesSent>>20, size>>20, max(resent, 0)>>10, atKill>>20)
	if resent > atKill/10 {
		t.Errorf("re-sent %d bytes of %d already written (> 10%%)", resent, atKill)
	}
}

// kill -9 of the destination agent mid-transfer: another agent of the
// region takes over (fencing: the dead one's lock is broken), and the
// transfer resumes.
func TestKillDestinationResumes(t *testing.T) {
	h := agenttest.New(t)
	dst := h.StartDest("dst-a")
	src := h.Config("src", h.SrcRegion, "REGIONONE", "bandwidth_limit = 24M")
	name := fmt.Sprintf("killdst-%d", time.Now().UnixNano())
	const size = 128 << 20
	h.Image(name, size, true)
	id := "kd-" + name
	cmd := exec.Command(h.Bin, "transfer", "--config-file", src, "--dest-region", h.DstRegion, "--pool", h.Pool, "--image", name, "--transfer-id", id, "--signing-key", h.SigningKey)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	atKill := h.KillWhenHalfway(dst, name, size)
	// The source cannot finish without its destination; it would retry
	// for a while: stop it (the operator, or the API, runs it again).
	time.Sleep(500 * time.Millisecond)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	if err := cmd.Wait(); err == nil {
		t.Fatal("the source finished without its destination")
	}
	h.StartDest("dst-b")
	src = h.Config("src", h.SrcRegion, "REGIONONE")
	res, err := h.Transfer(src, "--pool", h.Pool, "--image", name, "--transfer-id", id, "--signing-key", h.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.Skipped == 0 {
		t.Errorf("did not resume: %+v", res)
	}
	if resent := int64(res.BytesSent) - (size - atKill); resent > atKill/10 {
		t.Errorf("re-sent %d bytes of %d already written (> 10%%)", resent, atKill)
	}
	h.Same(name, res.Snapshot)
}
