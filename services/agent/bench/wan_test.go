//go:build bench

package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/agent"
	"github.com/ferry-project/ferry/services/agent/agenttest"
	"github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/pki"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// The WAN section: two agents in network namespaces of the bench's own,
// a "wan" namespace between them that rate-limits (htb on both ends of
// each veth) and delays every packet (the TUN delay line,
// delayline_test.go), and only the agents' data addresses routed through
// it (Ceph and the broker stay on 127.0.0.1, see agenttest.Net). The path
// is calibrated with ping and iperf3 (-P1, -P4); then Ferry and the seed's
// pipes (rbd export | socat, rbd export-diff | socat, importing on the far
// side) cross the same path.
//
// FERRY_BENCH_WAN_RATE (tc rate, default 1gbit) and FERRY_BENCH_WAN_RTT_MS
// (default 50) choose the link; FERRY_BENCH_WAN_CALIBRATE_ONLY=1 stops
// after ping and iperf3. The case uses the stack's clusters as they are
// and removes the images it makes.

// wanPath is the bench's network.
type wanPath struct {
	n        *agenttest.Net
	rate     string
	rttMS    int
	src, dst net.IP
	// delayPid is the delay line's process (its CPU is the path's cost).
	delayPid int
}

func newWANPath(t *testing.T, rate string, rttMS int) *wanPath {
	n := agenttest.NewNet(t, "src", "dst")
	w := &wanPath{n: n, rate: rate, rttMS: rttMS, src: n.Node("src").Addr, dst: n.Node("dst").Addr}
	// The delay line: half the round trip each way.
	dl := exec.Command("ip", "netns", "exec", n.Wan, os.Args[0], "-test.run=^TestDelayLineHelper$", "-test.v")
	dl.Env = append(os.Environ(), "FERRY_DELAYLINE_DEV=dly", fmt.Sprintf("FERRY_DELAYLINE_MS=%d", rttMS/2))
	out, err := dl.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var dlErr bytes.Buffer
	dl.Stderr = &dlErr
	if err := dl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dl.Process.Kill(); dl.Wait() })
	w.delayPid = dl.Process.Pid
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if sc.Text() == "ready" && !ok {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("delay line: %s", dlErr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("delay line not ready after 30 s")
	}
	n.InWan("ip", "link", "set", "dly", "up")
	n.InWan("ip", "rule", "add", "pref", "10", "iif", "dly", "lookup", "200")
	for _, name := range []string{"src", "dst"} {
		nd := n.Node(name)
		n.InWan("ip", "route", "add", nd.Addr.String()+"/32", "dev", "dly")
		n.InWan("ip", "route", "add", nd.Addr.String()+"/32", "dev", nd.WanDev, "table", "200")
		// htb on both ends of the node's link.
		shape := func(in func(string, ...string), dev string) {
			in("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
			in("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate, "ceil", rate)
		}
		shape(n.InWan, nd.WanDev)
		shape(func(c string, a ...string) { n.In(name, c, a...) }, nd.Dev)
	}
	return w
}

// ping is the path's round trip (avg ms).
func (w *wanPath) ping(t *testing.T) float64 {
	out, err := w.n.Command("src", "ping", "-q", "-c", "20", "-i", "0.2", w.dst.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ping: %v: %s", err, out)
	}
	m := regexp.MustCompile(`= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("ping: %s", out)
	}
	avg, _ := strconv.ParseFloat(m[2], 64)
	return avg
}

// iperf is iperf3's received rate (bytes/s) with p parallel streams.
func (w *wanPath) iperf(t *testing.T, p int) float64 {
	srv := w.n.Command("dst", "iperf3", "-s", "-1", "-B", w.dst.String(), "-p", "5201")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var out []byte
	var err error
	for range 50 {
		time.Sleep(200 * time.Millisecond)
		out, err = w.n.Command("src", "iperf3", "-c", w.dst.String(), "-p", "5201", "-t", "10", "-O", "2", "-P", strconv.Itoa(p), "-J").Output()
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("iperf3 -P%d: %v: %s", p, err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("iperf3: %v: %s", err, out)
	}
	t.Logf("iperf3 -P%d: %.1f Mbit/s, %d retransmits", p, r.End.SumReceived.BitsPerSecond/1e6, r.End.SumSent.Retransmits)
	return r.End.SumReceived.BitsPerSecond / 8
}

// ssSampler runs `ss -tin` in the source namespace every second against
// the destination address while a case runs.
type ssSampler struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples []string
}

func (w *wanPath) sampleSS() *ssSampler {
	s := &ssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tk.C:
			}
			out, _ := w.n.Command("src", "ss", "-tin", "dst", w.dst.String()).Output()
			s.mu.Lock()
			s.samples = append(s.samples, time.Now().Format("15:04:05")+"\n"+string(out))
			s.mu.Unlock()
		}
	}()
	return s
}

var (
	limitedRe = regexp.MustCompile(`(busy|rwnd_limited|sndbuf_limited):\d+ms(?:\(([\d.]+)%\))?`)
	cwndRe    = regexp.MustCompile(`\bcwnd:(\d+)`)
)

// ssFigures attribute a case's stalls: the share of busy time the
// connections were limited by the receiver's window and by the send
// buffer (tcp_info's chronos, averaged over the connections of the last
// sample), the share of connection samples whose last delivery-rate
// sample was app-limited (Ferry had nothing ready to send), and the mean
// congestion window (packets); busy time limited by none of these was
// limited by cwnd.
//
// busy is the connections' mean busy time (ms, tcp_info's busy chrono:
// data queued or in flight); the rest of the send phase they had nothing
// to send, i.e. were limited by the application.
type ssFigures struct {
	rwnd, sndbuf, app, cwnd, busy float64
}

// finish stops the sampler, writes its samples to file and returns its
// figures.
func (s *ssSampler) finish(t *testing.T, file string) ssFigures {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	os.WriteFile(file, []byte(strings.Join(s.samples, "\n")), 0o644)
	var f ssFigures
	var conns, app, cwnd float64
	last := false
	for i := len(s.samples) - 1; i >= 0; i-- {
		var r, b, n, busy float64
		for _, line := range strings.Split(s.samples[i], "\n") {
			if !strings.Contains(line, "busy:") {
				continue
			}
			n++
			if strings.Contains(line, " app_limited") {
				app++
			}
			if m := cwndRe.FindStringSubmatch(line); m != nil {
				v, _ := strconv.ParseFloat(m[1], 64)
				cwnd += v
			}
			for _, m := range limitedRe.FindAllStringSubmatch(line, -1) {
				v, _ := strconv.ParseFloat(m[2], 64)
				switch m[1] {
				case "busy":
					v, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(m[0], "busy:"), "ms"), 64)
					busy += v
				case "rwnd_limited":
					r += v
				case "sndbuf_limited":
					b += v
				}
			}
		}
		conns += n
		if n > 0 && !last {
			last = true
			f.rwnd, f.sndbuf, f.busy = r/n, b/n, busy/n
		}
	}
	if conns > 0 {
		f.app, f.cwnd = app/conns, cwnd/conns
	}
	if len(s.samples) > 2 {
		t.Logf("ss -tin, mid-run sample:\n%s", s.samples[len(s.samples)/2])
	}
	return f
}

// cpuSeconds is a process's user+system CPU time.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100 // USER_HZ
}

// wanTransfer runs `ferry-agent transfer` in the source namespace and
// returns its result and CPU seconds.
func wanTransfer(t *testing.T, h *agenttest.Harness, w *wanPath, conf string, args ...string) (agent.HarnessResult, float64) {
	cmd := w.n.Command("src", h.Bin, append([]string{"transfer", "--config-file", conf, "--dest-region", h.DstRegion, "--timeout", "20m",
		"--signing-key", h.SigningKey}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("transfer: %v: %s", err, stderr.String())
	}
	var res agent.HarnessResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("result %q: %v", stdout.String(), err)
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return res, cpu.Seconds()
}

// wanPipe runs sender | socat in the source namespace into socat |
// receiver in the destination namespace, and times it.
func wanPipe(t *testing.T, w *wanPath, sender, receiver string) time.Duration {
	port := 15201
	recv := w.n.Command("dst", "bash", "-o", "pipefail", "-c",
		fmt.Sprintf("socat -u TCP-LISTEN:%d,bind=%s,reuseaddr - | %s", port, w.dst, receiver))
	var rerr bytes.Buffer
	recv.Stdout, recv.Stderr = &rerr, &rerr
	recv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(-recv.Process.Pid, syscall.SIGKILL)
	for range 100 {
		out, _ := w.n.Command("dst", "ss", "-ltn", "sport", "= :"+strconv.Itoa(port)).Output()
		if strings.Contains(string(out), strconv.Itoa(port)) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	start := time.Now()
	send := w.n.Command("src", "bash", "-o", "pipefail", "-c", fmt.Sprintf("%s | socat -u - TCP:%s:%d", sender, w.dst, port))
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("pipe sender: %v: %s", err, out)
	}
	if err := recv.Wait(); err != nil {
		t.Fatalf("pipe receiver: %v: %s", err, rerr.String())
	}
	return time.Since(start)
}

func benchWAN(t *testing.T, col *collector) {
	rate := os.Getenv("FERRY_BENCH_WAN_RATE")
	if rate == "" {
		rate = "1gbit"
	}
	rttMS := 50
	if v := os.Getenv("FERRY_BENCH_WAN_RTT_MS"); v != "" {
		rttMS, _ = strconv.Atoi(v)
	}
	// The stack's clusters as they are (a WAN case needs no fresh ones:
	// it removes what it makes).
	st := loadStack(t)
	ctx := context.Background()
	pool := st.vars["CEPH_POOL"]
	c1, c2 := st.conf("REGIONONE"), st.conf("REGIONTWO")
	w := newWANPath(t, rate, rttMS)
	name := "wan-" + fmt.Sprint(time.Now().Unix())
	caseName := fmt.Sprintf("wan_%s_%dms", rate, rttMS)

	rtt := w.ping(t)
	p1, p4 := w.iperf(t, 1), w.iperf(t, 4)
	ceiling := max(p1, p4)
	t.Logf("path %s, %d ms: ping %.1f ms, iperf3 -P1 %.1f Mbit/s, -P4 %.1f Mbit/s", rate, rttMS, rtt, p1*8/1e6, p4*8/1e6)
	col.add(Record{Case: caseName, Metric: "ping_rtt", Value: rtt, Unit: "ms"})
	col.add(Record{Case: caseName, Metric: "iperf3_p1", Value: p1 * 8 / 1e6, Unit: "Mbit/s"})
	col.add(Record{Case: caseName, Metric: "iperf3_p4", Value: p4 * 8 / 1e6, Unit: "Mbit/s"})
	if os.Getenv("FERRY_BENCH_WAN_CALIBRATE_ONLY") != "" {
		return
	}

	// Agents in the namespaces, their certificates naming the addresses.
	h := agenttest.New(t)
	h.Streams, h.ChunkSize = 4, "4M" // the shipped defaults
	for _, c := range []struct{ name, node, region string }{{"src", "src", h.SrcRegion}, {"dst-a", "dst", h.DstRegion}} {
		if _, _, err := pki.Issue(h.Dir, h.Dir, c.name, pki.IssueOptions{IPAddresses: []net.IP{w.n.Node(c.node).Addr}, Force: true,
			Region: c.region, Role: pki.RoleAgent}); err != nil {
			t.Fatal(err)
		}
	}
	h.Command = func(agent, bin string, args ...string) *exec.Cmd {
		return w.n.Command(strings.SplitN(agent, "-", 2)[0], bin, args...)
	}
	dst := h.StartDest("dst-a", "data_listen = "+w.dst.String()+":0")
	srcConf := h.Config("src", h.SrcRegion, "REGIONONE")
	dstPid := dst.Process.Pid

	src, err := st.cluster(ctx, "REGIONONE")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	const size = 1 << 30
	if err := src.CreateImage(ctx, pool, name, rbd.ImageSpec{Size: size, Order: 22}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rmImage(c1, pool+"/"+name)
		for _, n := range []string{name, name + "-pipe"} {
			rmImage(c2, pool+"/"+n)
		}
	})
	if err := fill(ctx, src, pool, name, dense(size)); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(repoRoot(t), ".bench")
	os.MkdirAll(dir, 0o755)

	run := func(sub string, args ...string) agent.HarnessResult {
		ss := w.sampleSS()
		dcpu, lcpu := cpuSeconds(dstPid), cpuSeconds(w.delayPid)
		res, scpu := wanTransfer(t, h, w, srcConf, args...)
		dcpu, lcpu = cpuSeconds(dstPid)-dcpu, cpuSeconds(w.delayPid)-lcpu
		ssf := ss.finish(t, filepath.Join(dir, "wan-ss-"+sub+".txt"))
		send := res.Phases["send"]
		fill := 0.0
		if send > 0 {
			fill = float64(res.BytesSent) / send / ceiling
		}
		gib := float64(res.BytesSent) / (1 << 30)
		drss := agenttest.PeakRSS(dstPid)
		t.Logf("%s: %.2f s (send %.2f s), %d MiB sent, link fill %.0f%%, CPU-s/GiB source %.2f destination %.2f (delay line %.2f), peak RSS source %d MiB destination %d MiB, ss: rwnd_limited %.1f%% sndbuf_limited %.1f%% of busy time, app_limited in %.0f%% of samples, mean cwnd %.0f, busy %.0f%% of the send phase, phases %v",
			sub, res.Seconds, send, res.BytesSent>>20, fill*100, scpu/gib, dcpu/gib, lcpu/gib, res.PeakRSSBytes>>20, drss>>20, ssf.rwnd, ssf.sndbuf, ssf.app*100, ssf.cwnd, ssf.busy/10/max(send, 1e-9), res.Phases)
		cn := caseName + "_" + sub
		col.add(Record{Case: cn, Metric: "link_fill", Value: fill, Unit: "send-phase bytes/s ÷ iperf3 ceiling"})
		col.add(Record{Case: cn, Metric: "source_cpu_per_gib", Value: scpu / gib, Unit: "CPU-s/GiB"})
		col.add(Record{Case: cn, Metric: "dest_cpu_per_gib", Value: dcpu / gib, Unit: "CPU-s/GiB"})
		col.add(Record{Case: cn, Metric: "delay_line_cpu_per_gib", Value: lcpu / gib, Unit: "CPU-s/GiB"})
		col.add(Record{Case: cn, Metric: "source_peak_rss", Value: float64(res.PeakRSSBytes), Unit: "bytes"})
		col.add(Record{Case: cn, Metric: "dest_peak_rss", Value: float64(drss), Unit: "bytes"})
		col.add(Record{Case: cn, Metric: "ss_rwnd_limited", Value: ssf.rwnd, Unit: "% of busy time"})
		col.add(Record{Case: cn, Metric: "ss_sndbuf_limited", Value: ssf.sndbuf, Unit: "% of busy time"})
		col.add(Record{Case: cn, Metric: "ss_app_limited", Value: ssf.app, Unit: "share of connection samples"})
		col.add(Record{Case: cn, Metric: "ss_mean_cwnd", Value: ssf.cwnd, Unit: "packets"})
		if send > 0 {
			col.add(Record{Case: cn, Metric: "ss_busy_share", Value: ssf.busy / 1000 / send, Unit: "connection busy time ÷ send phase (the rest: nothing to send)"})
		}
		if res.PeakRSSBytes > 256<<20 || drss > 256<<20 {
			t.Errorf("%s: agent peak RSS above 256 MiB (source %d MiB, destination %d MiB)", sub, res.PeakRSSBytes>>20, drss>>20)
		}
		return res
	}

	// Dense 1 GiB: Ferry's full copy, then the pipe.
	res := run("dense_1g", "--pool", pool, "--image", name, "--transfer-id", name+"-0", "--mode", "full")
	snap(t, c1, pool+"/"+name+"@pipe-0")
	pipe := wanPipe(t, w, fmt.Sprintf("rbd -c %s --no-progress export %s/%s@pipe-0 -", c1, pool, name),
		fmt.Sprintf("rbd -c %s --no-progress import - %s/%s-pipe", c2, pool, name))
	snap(t, c2, pool+"/"+name+"-pipe@pipe-0")
	t.Logf("dense 1 GiB: ferry %.2f s, rbd export | socat %.2f s (%.0f%% of the ceiling)", res.Seconds, pipe.Seconds(), size/pipe.Seconds()/ceiling*100)
	col.compare(caseName+"_dense_1g", []float64{res.Seconds}, res.BytesSent, res.PeakRSSBytes, map[string][]float64{"rbd_pipe_socat": {pipe.Seconds()}})
	col.add(Record{Case: caseName + "_dense_1g", Metric: "pipe_link_fill", Value: size / pipe.Seconds() / ceiling, Unit: "bytes/s ÷ iperf3 ceiling"})

	// An incremental of 1,024 random 64 KiB writes.
	var writes [][2]uint64
	for range 1024 {
		var b [4]byte
		rand.Read(b[:])
		off := (uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])) % (size / (64 << 10))
		writes = append(writes, [2]uint64{off * (64 << 10), 64 << 10})
	}
	if err := fill(ctx, src, pool, name, writes); err != nil {
		t.Fatal(err)
	}
	// Both sides charged for their own source snapshot.
	start := time.Now()
	snap(t, c1, pool+"/"+name+"@pipe-1")
	pipeSnap := time.Since(start)
	res = run("incremental_64m", "--pool", pool, "--image", name, "--transfer-id", name+"-1", "--mode", "incremental")
	pipe = wanPipe(t, w, fmt.Sprintf("rbd -c %s --no-progress export-diff --from-snap pipe-0 %s/%s@pipe-1 -", c1, pool, name),
		fmt.Sprintf("rbd -c %s --no-progress import-diff - %s/%s-pipe", c2, pool, name))
	pipe += pipeSnap
	t.Logf("incremental: ferry %.2f s, rbd export-diff | socat %.2f s", res.Seconds, pipe.Seconds())
	col.compare(caseName+"_incremental_64m", []float64{res.Seconds}, res.BytesSent, res.PeakRSSBytes, map[string][]float64{"rbd_diff_pipe_socat": {pipe.Seconds()}})
	col.add(Record{Case: caseName + "_incremental_64m", Metric: "pipe_link_fill", Value: float64(len(writes)<<16) / pipe.Seconds() / ceiling, Unit: "bytes/s ÷ iperf3 ceiling"})
	// The copies are byte-identical.
	a := testenv.ExportSHA(t, c1, pool+"/"+name+"@pipe-1")
	if b := testenv.ExportSHA(t, c2, pool+"/"+name+"-pipe@pipe-1"); a != b {
		t.Errorf("the diff pipe's copy differs")
	}
	if b := testenv.ExportSHA(t, c2, pool+"/"+name+"@"+res.Snapshot); testenv.ExportSHA(t, c1, pool+"/"+name+"@"+res.Snapshot) != b {
		t.Errorf("Ferry's copy differs")
	}
}
