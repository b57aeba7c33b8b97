//go:build e2e && bench

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// TestAPIBench measures the stack's ferry-api: authenticated GET of one
// transfer with a warm token cache from 50 concurrent clients, and the
// time from POST to the first report of data moving (transferring). The
// figures are appended to .bench/results.json as metric records.
func TestAPIBench(t *testing.T) {
	url := testenv.Get(t, "FERRY_API_URL")
	admin := &client{t: t, url: url, token: token(t, "admin")}
	image := newImage(t, "apibench", 64)
	body := `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "` + image + `"}, "destination": {"region": "RegionTwo"}}}`

	// POST → transferring (the first data on its way), median of 5.
	var firstByte []float64
	var id string
	for range 5 {
		start := time.Now()
		code, m := admin.do("POST", "/v1/transfers", body)
		if code != 202 {
			t.Fatalf("create: %d %v", code, m)
		}
		id = m["transfer"].(map[string]any)["id"].(string)
		for {
			_, m := admin.do("GET", "/v1/transfers/"+id, "")
			st := m["transfer"].(map[string]any)["status"]
			if st == "transferring" || st == "verifying" || st == "completed" {
				firstByte = append(firstByte, float64(time.Since(start).Milliseconds()))
				break
			}
			if st == "error" || time.Since(start) > time.Minute {
				t.Fatalf("transfer %s: %v", id, m)
			}
			time.Sleep(5 * time.Millisecond)
		}
		admin.wait(id)
	}

	// 50 clients GET the same transfer for 10 s (the token is cached after
	// the first request).
	const clients, dur = 50, 10 * time.Second
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var mu sync.Mutex
	var lat []time.Duration
	failures := 0
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			var mine []time.Duration
			bad := 0
			for time.Since(start) < dur {
				req, _ := http.NewRequest("GET", url+"/v1/transfers/"+id, nil)
				req.Header.Set("X-Auth-Token", admin.token)
				t0 := time.Now()
				resp, err := hc.Do(req)
				if err != nil {
					bad++
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					bad++
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			failures += bad
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
	if failures > 0 {
		t.Errorf("%d failed requests", failures)
	}
	slices.Sort(lat)
	rps := float64(len(lat)) / elapsed.Seconds()
	p99 := lat[len(lat)*99/100]
	slices.Sort(firstByte)
	share := cpu.Seconds() / elapsed.Seconds() / 2 // of the machine's 2 cores
	t.Logf("GET: %d requests in %s: %.0f req/s, p50 %s, p99 %s; load generator CPU %.0f%% of the machine; POST→transferring p50 %.0f ms",
		len(lat), elapsed.Round(time.Millisecond), rps, lat[len(lat)/2], p99, share*100, firstByte[len(firstByte)/2])

	records := []map[string]any{
		{"case": "api", "metric": "api_get_rps", "value": rps, "unit": "requests/s"},
		{"case": "api", "metric": "api_get_p99_ms", "value": float64(p99.Microseconds()) / 1000, "unit": "ms"},
		{"case": "api", "metric": "post_to_first_byte_p50_ms", "value": firstByte[len(firstByte)/2], "unit": "ms"},
		{"case": "api", "metric": "load_generator_cpu_share", "value": share, "unit": "fraction of 2 cores"},
	}
	appendResults(t, records)
}

// appendResults adds records to .bench/results.json (written by the data
// plane's benchmark earlier in the same bench run).
func appendResults(t *testing.T, records []map[string]any) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, ".bench", "results.json")
	var all []map[string]any
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &all); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	all = append(all, records...)
	b, _ := json.MarshalIndent(all, "", "  ")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, r := range records {
		fmt.Printf("%-16s %-28s %v %v\n", r["case"], r["metric"], r["value"], r["unit"])
	}
}
