//go:build functional || bench

// Package agenttest runs ferry-agent processes against the local stack for
// functional tests and benchmarks: certificates, configurations, a
// destination daemon, the `ferry-agent transfer` harness, kill -9.
package agenttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/ferry-project/ferry/rpc"
	ferryamqp "github.com/ferry-project/ferry/rpc/amqp"
	"github.com/ferry-project/ferry/services/agent"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// Two agents as processes, each in a region of its own name (so that no
// other agent on this machine consumes their queues), over the stack's two
// clusters and broker.
type Harness struct {
	t                testing.TB
	Bin, Dir         string
	SrcRegion        string
	DstRegion        string
	Pool             string
	SrcConf, DstConf string
	// Streams and ChunkSize go into every configuration written after
	// they are set (defaults 4 and 1M: small test images still span
	// several chunks).
	Streams   int
	ChunkSize string
	// SigningKey is the test's ferry-api signing key (harness grants).
	SigningKey string
	// Command, when set, makes the command that runs the agent binary
	// for the named agent (src, dst-a, …): e.g. Net.Command, to run it in
	// a network namespace.
	Command func(agent, bin string, args ...string) *exec.Cmd
}

// command is the command that runs the agent binary as agent.
func (h *Harness) command(agent string, args ...string) *exec.Cmd {
	if h.Command != nil {
		return h.Command(agent, h.Bin, args...)
	}
	return exec.Command(h.Bin, args...)
}

var buildOnce struct {
	sync.Once
	bin string
	err error
}

// agentBinary builds ferry-agent once per test binary.
func agentBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ferry-agent-bin")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.bin = filepath.Join(dir, "ferry-agent")
		out, err := exec.Command("go", "build", "-tags", "pacific", "-o", buildOnce.bin, "github.com/ferry-project/ferry/cmd/ferry-agent").CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build: %w: %s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.bin
}

// New prepares certificates in a temporary directory and picks region
// names of its own.
func New(t testing.TB) *Harness {
	suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1e9)
	h := &Harness{t: t, Bin: agentBinary(t), Dir: t.TempDir(),
		SrcRegion: "TestOne" + suffix, DstRegion: "TestTwo" + suffix, Pool: testenv.Get(t, "CEPH_POOL"),
		SrcConf: testenv.Get(t, "CEPH_REGIONONE_CONF"), DstConf: testenv.Get(t, "CEPH_REGIONTWO_CONF"),
		Streams: 4, ChunkSize: "1M"}
	// The regions are the test's own: their queues go with it (cleanups
	// run last-in first-out, so after the agents are stopped).
	t.Cleanup(h.deleteQueues)
	// ferry-api owns the topology (agents only check it): declare it as
	// ferry-api would.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := ferryamqp.New(ctx, testenv.Get(t, "TRANSPORT_URL"), ferryamqp.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	tr.Close(ctx)
	if _, _, err := pki.InitCA(h.Dir, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	// ferry-api's signing key: the agents verify with its public half,
	// the harness signs its grants with it (as ferry-api would).
	if _, _, err := pki.WriteSigningKey(h.Dir, false); err != nil {
		t.Fatal(err)
	}
	h.SigningKey = filepath.Join(h.Dir, pki.SigningKeyFile)
	// One state key per region.
	for _, r := range []string{"src", "dst"} {
		if err := pki.WriteStateKey(filepath.Join(h.Dir, r+"-state.key"), false); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"src", "dst-a", "dst-b"} {
		region := h.DstRegion
		if n == "src" {
			region = h.SrcRegion
		}
		if _, _, err := pki.Issue(h.Dir, h.Dir, n, pki.IssueOptions{DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			Region: region, Role: pki.RoleAgent}); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// Config writes an agent configuration; extra lines go into [agent].
func (h *Harness) Config(name, region, clusterKey string, extra ...string) string {
	h.t.Helper()
	conf := fmt.Sprintf(`[DEFAULT]
transport_url = %s
host = %s
log_file = %s

[agent]
region = %s
data_listen = 127.0.0.1:0
ceph_conf = %s
ceph_user = %s
ceph_keyring = %s
pools = %s
streams = %d
chunk_size = %s
heartbeat_interval = 1
state_key_file = %s
command_verify_key_file = %s
%s

[tls]
ca_file = %s
cert_file = %s
key_file = %s
`, testenv.Get(h.t, "TRANSPORT_URL"), name, filepath.Join(h.Dir, name+".log"), region,
		testenv.Get(h.t, "CEPH_"+clusterKey+"_CONF"), testenv.Get(h.t, "CEPH_USER"), testenv.Get(h.t, "CEPH_"+clusterKey+"_KEYRING"),
		h.Pool, h.Streams, h.ChunkSize, filepath.Join(h.Dir, strings.SplitN(name, "-", 2)[0]+"-state.key"), filepath.Join(h.Dir, pki.SigningPubKeyFile), strings.Join(extra, "\n"),
		filepath.Join(h.Dir, "ca.crt"), filepath.Join(h.Dir, name+".crt"), filepath.Join(h.Dir, name+".key"))
	path := filepath.Join(h.Dir, name+".conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return path
}

// StartDest starts a destination agent daemon and waits until its queues
// exist.
func (h *Harness) StartDest(name string, extra ...string) *exec.Cmd {
	h.t.Helper()
	return h.Start(name, h.DstRegion, "REGIONTWO", extra...)
}

// Start starts an agent daemon of region on the cluster of clusterKey
// (REGIONONE, REGIONTWO) and waits until its queues exist.
func (h *Harness) Start(name, region, clusterKey string, extra ...string) *exec.Cmd {
	h.t.Helper()
	conf := h.Config(name, region, clusterKey, extra...)
	cmd := h.command(name, "--config-file", conf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	h.waitQueue(string(rpc.AgentHostTarget(region, name)), func() string {
		b, _ := os.ReadFile(filepath.Join(h.Dir, name+".log"))
		return stderr.String() + string(b)
	})
	return cmd
}

// waitQueue waits until queue is declared on the broker (the agent
// consumes it).
func (h *Harness) waitQueue(queue string, logs func() string) {
	h.t.Helper()
	uris, err := ferryamqp.ParseTransportURL(testenv.Get(h.t, "TRANSPORT_URL"))
	if err != nil {
		h.t.Fatal(err)
	}
	conn, err := amqp091.Dial(uris[0])
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ch, err := conn.Channel()
		if err != nil {
			h.t.Fatal(err)
		}
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err == nil && q.Consumers > 0 {
			ch.Close()
			return
		}
		if err == nil {
			ch.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.t.Fatalf("queue %s not consumed after 30 s; agent output:\n%s", queue, logs())
}

// transfer runs `ferry-agent transfer` (the source) to completion.
func (h *Harness) Transfer(conf string, args ...string) (agent.HarnessResult, error) {
	h.t.Helper()
	cmd := h.command(strings.TrimSuffix(filepath.Base(conf), ".conf"), append([]string{"transfer", "--config-file", conf, "--dest-region", h.DstRegion, "--timeout", "3m",
		"--signing-key", h.SigningKey}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return agent.HarnessResult{}, fmt.Errorf("%w: %s", err, stderr.String())
	}
	var res agent.HarnessResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return res, fmt.Errorf("result %q: %w", stdout.String(), err)
	}
	return res, nil
}

func (h *Harness) Image(name string, size int64, fill bool) {
	h.t.Helper()
	ctx := context.Background()
	c, err := rbd.Connect(ctx, rbd.Options{ConfFile: h.SrcConf, User: testenv.Get(h.t, "CEPH_USER"), Keyring: testenv.Get(h.t, "CEPH_REGIONONE_KEYRING")})
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateImage(ctx, h.Pool, name, rbd.ImageSpec{Size: uint64(size), Order: 22}); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() {
		for _, conf := range []string{h.SrcConf, h.DstConf} {
			exec.Command("rbd", "-c", conf, "snap", "purge", h.Pool+"/"+name).Run()
			exec.Command("rbd", "-c", conf, "rm", h.Pool+"/"+name).Run()
		}
	})
	img, err := c.OpenImage(ctx, h.Pool, name, "", false)
	if err != nil {
		h.t.Fatal(err)
	}
	defer img.Close()
	step := int64(8 << 20)
	if !fill {
		step = 64 << 20
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += step {
		n := min(int64(len(buf)), size-off)
		if fill {
			n = min(step, size-off)
		}
		for w := int64(0); w < n; w += int64(len(buf)) {
			rand.Read(buf)
			if _, err := img.WriteAt(buf[:min(int64(len(buf)), n-w)], off+w); err != nil {
				h.t.Fatal(err)
			}
		}
	}
}

func (h *Harness) Same(name, snap string) {
	h.t.Helper()
	a := testenv.ExportSHA(h.t, h.SrcConf, h.Pool+"/"+name+"@"+snap)
	b := testenv.ExportSHA(h.t, h.DstConf, h.Pool+"/"+name+"@"+snap)
	if a != b {
		h.t.Fatalf("%s@%s: source %s, destination %s", name, snap, a, b)
	}
}

// KillWhenHalfway kills cmd's process group with SIGKILL once the destination
// image's checkpoint covers a third of size, and returns the bytes that
// checkpoint covered.
func (h *Harness) KillWhenHalfway(cmd *exec.Cmd, name string, size int64) int64 {
	h.t.Helper()
	ctx := context.Background()
	c, err := rbd.Connect(ctx, rbd.Options{ConfFile: h.DstConf, User: testenv.Get(h.t, "CEPH_USER"), Keyring: testenv.Get(h.t, "CEPH_REGIONTWO_KEYRING")})
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		img, err := c.OpenImage(ctx, h.Pool, name, "", true)
		if err == nil {
			md, _ := img.Metadata()
			img.Close()
			// Sealed: {"v": <checkpoint>, "mac": …}; the test only reads it.
			var cp struct {
				V struct {
					BytesDone int64 `json:"bytes_done"`
				} `json:"v"`
			}
			if json.Unmarshal([]byte(md["ferry.checkpoint"]), &cp) == nil && cp.V.BytesDone >= size/3 {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				h.t.Logf("killed pid %d at checkpoint %d MiB of %d", cmd.Process.Pid, cp.V.BytesDone>>20, size>>20)
				return cp.V.BytesDone
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatal("the transfer never got a third of the way")
	return 0
}

// PeakRSS is a process's peak resident set (VmHWM) in bytes, or -1.
func PeakRSS(pid int) int64 { return agent.PeakRSS(pid) }

// deleteQueues removes the broker queues of the test's regions.
func (h *Harness) deleteQueues() {
	uris, err := ferryamqp.ParseTransportURL(testenv.Get(h.t, "TRANSPORT_URL"))
	if err != nil {
		return
	}
	conn, err := amqp091.Dial(uris[0])
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	for _, q := range []rpc.Target{
		rpc.AgentTarget(h.SrcRegion), rpc.AgentTarget(h.DstRegion),
		rpc.AgentHostTarget(h.DstRegion, "dst-a"), rpc.AgentHostTarget(h.DstRegion, "dst-b"),
		rpc.AgentHostTarget(h.SrcRegion, "src"),
	} {
		if _, err := ch.QueueDelete(string(q), false, false, false); err != nil {
			// A missing queue closes the channel: open another.
			if ch, err = conn.Channel(); err != nil {
				return
			}
		}
	}
}
