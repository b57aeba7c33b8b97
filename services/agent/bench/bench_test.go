//go:build bench

// Package bench measures Ferry's data plane against the ways operators move
// RBD images today, on the local stack's clusters: `./tox-like-ci -e bench`.
// Each case gets a fresh pair of clusters (memstore keeps data in RAM and
// never gives it back); each figure is the median of Runs runs, Ferry and
// its baselines interleaved in the same run. The wan case (wan_test.go)
// is one run over an emulated inter-region path, on the clusters as they
// are. Results go to
// .bench/results.json and a table on stdout.
package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/services/agent/agenttest"
	"github.com/ferry-project/ferry/services/agent/rbd"
)

// Runs per figure (the median is reported).
const Runs = 3

// Record is one line of results.json: a case against one baseline, or a
// figure without a baseline (Metric, Value, Unit).
type Record struct {
	Case              string  `json:"case"`
	FerrySeconds      float64 `json:"ferry_seconds,omitempty"`
	Baseline          string  `json:"baseline,omitempty"`
	BaselineSeconds   float64 `json:"baseline_seconds,omitempty"`
	Ratio             float64 `json:"ratio,omitempty"`
	BytesMoved        uint64  `json:"bytes_moved,omitempty"`
	AgentPeakRSSBytes int64   `json:"agent_peak_rss_bytes,omitempty"`
	Metric            string  `json:"metric,omitempty"`
	Value             float64 `json:"value,omitempty"`
	Unit              string  `json:"unit,omitempty"`
}

// stackEnv is $FERRY_STACK_DIR/stack.env, read again after each reset.
type stackEnv struct {
	dir  string
	vars map[string]string
}

func loadStack(t testing.TB) *stackEnv {
	t.Helper()
	dir := os.Getenv("FERRY_STACK_DIR")
	if dir == "" {
		t.Fatal("FERRY_STACK_DIR is not set: run ./tox-like-ci -e bench")
	}
	st := &stackEnv{dir: dir, vars: map[string]string{}}
	f, err := os.Open(filepath.Join(dir, "stack.env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			st.vars[k] = v
			// The agent harness reads the same variables from the
			// environment.
			os.Setenv(k, v)
		}
	}
	return st
}

func (s *stackEnv) conf(region string) string { return s.vars["CEPH_"+region+"_CONF"] }

func (s *stackEnv) cluster(ctx context.Context, region string) (*rbd.Cluster, error) {
	return rbd.Connect(ctx, rbd.Options{ConfFile: s.conf(region), User: s.vars["CEPH_USER"], Keyring: s.vars["CEPH_"+region+"_KEYRING"]})
}

// resetCeph replaces both clusters with fresh ones on backend.
func resetCeph(t testing.TB, backend string) *stackEnv {
	t.Helper()
	root := repoRoot(t)
	dir := os.Getenv("FERRY_STACK_DIR")
	run := func(args ...string) {
		cmd := exec.Command(filepath.Join(root, "devstack/stack.sh"), args...)
		cmd.Env = append(os.Environ(), "FERRY_STACK_COMPONENTS=ceph", "FERRY_STACK_OSD_BACKEND="+backend)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("stack.sh %v: %v\n%s", args, err, out)
		}
	}
	run("down")
	for _, r := range []string{"RegionOne", "RegionTwo"} {
		os.RemoveAll(filepath.Join(dir, r))
	}
	run("up")
	return loadStack(t)
}

func repoRoot(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// fill writes random data into pool/name: everything, or the given
// extents, from parallel workers.
func fill(ctx context.Context, c *rbd.Cluster, pool, name string, extents [][2]uint64) error {
	img, err := c.OpenImage(ctx, pool, name, "", false)
	if err != nil {
		return err
	}
	defer img.Close()
	work := make(chan [2]uint64)
	g, gctx := errgroup.WithContext(ctx)
	for range 8 {
		g.Go(func() error {
			buf := make([]byte, 4<<20)
			for e := range work {
				for off := e[0]; off < e[0]+e[1]; off += uint64(len(buf)) {
					n := min(uint64(len(buf)), e[0]+e[1]-off)
					rand.Read(buf[:n])
					if _, err := img.WriteAt(buf[:n], int64(off)); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(work)
		for _, e := range extents {
			select {
			case work <- e:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return err
	}
	return img.Flush()
}

func dense(size uint64) [][2]uint64 {
	var out [][2]uint64
	for off := uint64(0); off < size; off += 16 << 20 {
		out = append(out, [2]uint64{off, min(16<<20, size-off)})
	}
	return out
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func snap(t testing.TB, conf, spec string) {
	t.Helper()
	if out, err := exec.Command("rbd", "-c", conf, "snap", "create", spec).CombinedOutput(); err != nil {
		t.Fatalf("snap create %s: %v %s", spec, err, out)
	}
}

func rmImage(conf, spec string) {
	exec.Command("rbd", "-c", conf, "snap", "purge", spec).Run()
	exec.Command("rbd", "-c", conf, "rm", "--no-progress", spec).Run()
}

// collector gathers records and timings.
type collector struct {
	mu      sync.Mutex
	records []Record
}

func (c *collector) add(r Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.records = append(c.records, r)
}

// compare adds one record per baseline for a case.
func (c *collector) compare(name string, ferry []float64, moved uint64, rss int64, baselines map[string][]float64) {
	f := median(ferry)
	keys := make([]string, 0, len(baselines))
	for k := range baselines {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b := median(baselines[k])
		c.add(Record{Case: name, FerrySeconds: f, Baseline: k, BaselineSeconds: b, Ratio: f / b, BytesMoved: moved, AgentPeakRSSBytes: rss})
	}
}

func (c *collector) write(t testing.TB) {
	t.Helper()
	dir := filepath.Join(repoRoot(t), ".bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	records := c.records
	// A run of some cases (FERRY_BENCH_CASES) adds its records to the
	// file's.
	if os.Getenv("FERRY_BENCH_CASES") != "" {
		var old []Record
		if b, err := os.ReadFile(filepath.Join(dir, "results.json")); err == nil && json.Unmarshal(b, &old) == nil {
			records = append(old, records...)
		}
	}
	b, err := json.MarshalIndent(records, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("\n%-16s %-16s %9s %9s %7s %12s %12s\n", "case", "baseline", "ferry_s", "base_s", "ratio", "bytes_moved", "peak_rss_MiB")
	for _, r := range c.records {
		if r.Metric != "" {
			fmt.Printf("%-16s %-16s %v %s\n", r.Case, r.Metric, r.Value, r.Unit)
			continue
		}
		fmt.Printf("%-16s %-16s %9.3f %9.3f %7.3f %12d %12.1f\n", r.Case, r.Baseline, r.FerrySeconds, r.BaselineSeconds, r.Ratio, r.BytesMoved, float64(r.AgentPeakRSSBytes)/(1<<20))
	}
}

// agents starts a destination agent daemon and returns the harness and
// the source's configuration.
func agents(t *testing.T) (*agenttest.Harness, string, func() int64) {
	h := agenttest.New(t)
	// The shipped defaults ([agent] streams and chunk_size), unless the
	// environment asks otherwise.
	h.Streams, h.ChunkSize = 4, "4M"
	if v := os.Getenv("FERRY_BENCH_STREAMS"); v != "" {
		fmt.Sscan(v, &h.Streams)
	}
	if v := os.Getenv("FERRY_BENCH_CHUNK_SIZE"); v != "" {
		h.ChunkSize = v
	}
	dst := h.StartDest("dst-a")
	src := h.Config("src", h.SrcRegion, "REGIONONE")
	return h, src, func() int64 { return agenttest.PeakRSS(dst.Process.Pid) }
}

func TestBench(t *testing.T) {
	var col collector
	defer col.write(t)
	// FERRY_BENCH_CASES=a,b runs only those cases.
	want := func(c string) bool {
		v := os.Getenv("FERRY_BENCH_CASES")
		return v == "" || slices.Contains(strings.Split(v, ","), c)
	}
	// Leave fresh memstore clusters for whatever runs next, when a case
	// made its own (the wan case uses the stack's clusters as they are).
	defer func() {
		for _, c := range []string{"full_dense_1g", "full_sparse_4g", "incremental_64m", "full_dense_4g"} {
			if want(c) {
				resetCeph(t, "memstore")
				return
			}
		}
	}()
	cases := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"full_dense_1g", func(t *testing.T) { benchDense(t, &col, "full_dense_1g", 1<<30, "memstore", true) }},
		{"full_sparse_4g", func(t *testing.T) { benchSparse(t, &col) }},
		{"incremental_64m", func(t *testing.T) { benchIncremental(t, &col) }},
		{"wan", func(t *testing.T) { benchWAN(t, &col) }},
		{"full_dense_4g", func(t *testing.T) { benchDense(t, &col, "full_dense_4g", 4<<30, "bluestore", false) }},
	}
	for _, c := range cases {
		if want(c.name) {
			t.Run(c.name, c.fn)
		}
	}
}

func benchDense(t *testing.T, col *collector, name string, size uint64, backend string, baselines bool) {
	st := resetCeph(t, backend)
	ctx := context.Background()
	src, err := st.cluster(ctx, "REGIONONE")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	pool := st.vars["CEPH_POOL"]
	if err := src.CreateImage(ctx, pool, "bench", rbd.ImageSpec{Size: size, Order: 22}); err != nil {
		t.Fatal(err)
	}
	if err := fill(ctx, src, pool, "bench", dense(size)); err != nil {
		t.Fatal(err)
	}
	snap(t, st.conf("REGIONONE"), pool+"/bench@base")
	h, srcConf, dstRSS := agents(t)
	tmp := t.TempDir()
	var ferry []float64
	var moved uint64
	var rss int64
	base := map[string][]float64{}
	runs := Runs
	if !baselines {
		runs = 1
	}
	for i := range runs {
		res, err := h.Transfer(srcConf, "--pool", pool, "--image", "bench", "--snapshot", "base",
			"--dest-image", fmt.Sprintf("ferry-%d", i), "--mode", "full")
		if err != nil {
			t.Fatal(err)
		}
		ferry = append(ferry, res.Seconds)
		t.Logf("ferry run %d: %.3f s, phases %v", i, res.Seconds, res.Phases)
		moved = res.BytesSent
		rss = max(rss, res.PeakRSSBytes, dstRSS())
		rmImage(st.conf("REGIONTWO"), fmt.Sprintf("%s/ferry-%d", pool, i))
		if !baselines {
			continue
		}
		d, err := rbdPipe(ctx, st, pool, "bench@base", fmt.Sprintf("pipe-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		base["rbd_pipe"] = append(base["rbd_pipe"], d.Seconds())
		rmImage(st.conf("REGIONTWO"), fmt.Sprintf("%s/pipe-%d", pool, i))
		d, err = rbdImportFile(ctx, st, tmp, pool, "bench@base", fmt.Sprintf("file-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		base["rbd_import_file"] = append(base["rbd_import_file"], d.Seconds())
		rmImage(st.conf("REGIONTWO"), fmt.Sprintf("%s/file-%d", pool, i))
		d, _, err = inprocessCopy(ctx, st, pool, "bench", "base", fmt.Sprintf("inproc-%d", i), false)
		if err != nil {
			t.Fatal(err)
		}
		base["inprocess_copy"] = append(base["inprocess_copy"], d.Seconds())
		rmImage(st.conf("REGIONTWO"), fmt.Sprintf("%s/inproc-%d", pool, i))
	}
	if baselines {
		col.compare(name, ferry, moved, rss, base)
	} else {
		col.add(Record{Case: name, FerrySeconds: median(ferry), BytesMoved: moved, AgentPeakRSSBytes: rss})
	}
	col.add(Record{Case: name, Metric: "agent_peak_rss", Value: float64(rss), Unit: "bytes"})
}

func benchSparse(t *testing.T, col *collector) {
	st := resetCeph(t, "memstore")
	ctx := context.Background()
	src, err := st.cluster(ctx, "REGIONONE")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	pool := st.vars["CEPH_POOL"]
	const size = 4 << 30
	if err := src.CreateImage(ctx, pool, "sparse", rbd.ImageSpec{Size: size, Order: 22}); err != nil {
		t.Fatal(err)
	}
	// 128 MiB in 512 extents of 256 KiB, spread over the 4 GiB.
	var extents [][2]uint64
	for i := range uint64(512) {
		extents = append(extents, [2]uint64{i * (size / 512), 256 << 10})
	}
	if err := fill(ctx, src, pool, "sparse", extents); err != nil {
		t.Fatal(err)
	}
	snap(t, st.conf("REGIONONE"), pool+"/sparse@base")
	h, srcConf, dstRSS := agents(t)
	var ferry []float64
	var moved uint64
	var rss int64
	base := map[string][]float64{}
	for i := range Runs {
		res, err := h.Transfer(srcConf, "--pool", pool, "--image", "sparse", "--snapshot", "base",
			"--dest-image", fmt.Sprintf("ferry-%d", i), "--mode", "full")
		if err != nil {
			t.Fatal(err)
		}
		ferry = append(ferry, res.Seconds)
		t.Logf("ferry run %d: %.3f s, phases %v", i, res.Seconds, res.Phases)
		moved = res.BytesSent
		rss = max(rss, res.PeakRSSBytes, dstRSS())
		rmImage(st.conf("REGIONTWO"), fmt.Sprintf("%s/ferry-%d", pool, i))
		d, _, err := inprocessCopy(ctx, st, pool, "sparse", "base", fmt.Sprintf("alloc-%d", i), true)
		if err != nil {
			t.Fatal(err)
		}
		base["allocated_only"] = append(base["allocated_only"], d.Seconds())
		rmImage(st.conf("REGIONTWO"), fmt.Sprintf("%s/alloc-%d", pool, i))
		p, err := rbdPipe(ctx, st, pool, "sparse@base", fmt.Sprintf("pipe-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		base["rbd_pipe"] = append(base["rbd_pipe"], p.Seconds())
		rmImage(st.conf("REGIONTWO"), fmt.Sprintf("%s/pipe-%d", pool, i))
	}
	col.compare("full_sparse_4g", ferry, moved, rss, base)
}

func benchIncremental(t *testing.T, col *collector) {
	st := resetCeph(t, "memstore")
	ctx := context.Background()
	src, err := st.cluster(ctx, "REGIONONE")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	pool := st.vars["CEPH_POOL"]
	const size = 1 << 30
	if err := src.CreateImage(ctx, pool, "inc", rbd.ImageSpec{Size: size, Order: 22}); err != nil {
		t.Fatal(err)
	}
	if err := fill(ctx, src, pool, "inc", dense(size)); err != nil {
		t.Fatal(err)
	}
	h, srcConf, dstRSS := agents(t)
	// The first copies: Ferry's full copy (its snapshot is the next base),
	// and the pipe's, with a snapshot of the same name on both sides.
	if _, err := h.Transfer(srcConf, "--pool", pool, "--image", "inc", "--transfer-id", "inc-0", "--mode", "full"); err != nil {
		t.Fatal(err)
	}
	snap(t, st.conf("REGIONONE"), pool+"/inc@pipe-0")
	if _, err := rbdPipe(ctx, st, pool, "inc@pipe-0", "inc-pipe"); err != nil {
		t.Fatal(err)
	}
	snap(t, st.conf("REGIONTWO"), pool+"/inc-pipe@pipe-0")

	var ferry []float64
	var moved uint64
	var rss int64
	base := map[string][]float64{}
	for i := 1; i <= Runs; i++ {
		// 64 MiB of random 64 KiB writes.
		var writes [][2]uint64
		for range 1024 {
			var b [8]byte
			rand.Read(b[:])
			off := (uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])) % (size / (64 << 10))
			writes = append(writes, [2]uint64{off * (64 << 10), 64 << 10})
		}
		if err := fill(ctx, src, pool, "inc", writes); err != nil {
			t.Fatal(err)
		}
		snap(t, st.conf("REGIONONE"), fmt.Sprintf("%s/inc@pipe-%d", pool, i))
		res, err := h.Transfer(srcConf, "--pool", pool, "--image", "inc", "--transfer-id", fmt.Sprintf("inc-%d", i), "--mode", "incremental")
		if err != nil {
			t.Fatal(err)
		}
		ferry = append(ferry, res.Seconds)
		t.Logf("ferry run %d: %.3f s, phases %v", i, res.Seconds, res.Phases)
		moved = res.BytesSent
		rss = max(rss, res.PeakRSSBytes, dstRSS())
		d, err := rbdDiffPipe(ctx, st, pool, "inc", fmt.Sprintf("pipe-%d", i-1), fmt.Sprintf("pipe-%d", i), "inc-pipe")
		if err != nil {
			t.Fatal(err)
		}
		base["rbd_diff_pipe"] = append(base["rbd_diff_pipe"], d.Seconds())
	}
	col.compare("incremental_64m", ferry, moved, rss, base)
}
