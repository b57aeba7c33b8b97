//go:build e2e

package e2e

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	cephrbd "github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// writeChunks writes random bytes into pool/image of the cluster of conf
// (as client.admin), size bytes at each offset: the test's own writes, so
// that it knows exactly which bytes changed.
func writeChunks(t *testing.T, conf, pool, image string, offsets []uint64, size int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := cephrbd.Connect(ctx, cephrbd.Options{ConfFile: conf, User: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img, err := c.OpenImage(ctx, pool, image, "", false)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, size)
	for _, off := range offsets {
		crand.Read(buf)
		if _, err := img.WriteAt(buf, int64(off)); err != nil {
			t.Fatalf("writing %s/%s at %d: %v", pool, image, off, err)
		}
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
}

// replication is what the e2e tests read of a replication's view.
type replication struct {
	c  *client
	id string
}

func (r *replication) show() map[string]any {
	r.c.t.Helper()
	code, m := r.c.do("GET", "/v1/replications/"+r.id, "")
	if code != 200 {
		r.c.t.Fatalf("show replication %s: %d %v", r.id, code, m)
	}
	return m["replication"].(map[string]any)
}

func (r *replication) action(body string) (int, map[string]any) {
	r.c.t.Helper()
	return r.c.do("POST", "/v1/replications/"+r.id+"/action", body)
}

func (r *replication) mustAction(body string, want int) map[string]any {
	r.c.t.Helper()
	code, m := r.action(body)
	if code != want {
		r.c.t.Fatalf("action %s on %s: %d %v", body, r.id, code, m)
	}
	return m
}

// point is one retained point as the API lists it.
type point struct {
	Name      string
	CreatedAt time.Time
	Digest    string
	Bytes     int64
}

func (r *replication) points() []point {
	r.c.t.Helper()
	code, m := r.c.do("GET", "/v1/replications/"+r.id+"/points", "")
	if code != 200 {
		r.c.t.Fatalf("points of %s: %d %v", r.id, code, m)
	}
	var ps []point
	for _, x := range m["points"].([]any) {
		p := x.(map[string]any)
		at, err := time.Parse(time.RFC3339Nano, p["created_at"].(string))
		if err != nil {
			r.c.t.Fatalf("point created_at %v: %v", p["created_at"], err)
		}
		b, _ := p["bytes"].(float64)
		d, _ := p["digest"].(string)
		ps = append(ps, point{Name: p["name"].(string), CreatedAt: at, Digest: d, Bytes: int64(b)})
	}
	return ps
}

// waitFor polls the replication until cond holds.
func (r *replication) waitFor(what string, timeout time.Duration, cond func(map[string]any) bool) map[string]any {
	r.c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last map[string]any
	for time.Now().Before(deadline) {
		last = r.show()
		if cond(last) {
			return last
		}
		time.Sleep(250 * time.Millisecond)
	}
	r.c.t.Fatalf("replication %s: %s did not happen in %s; last %v", r.id, what, timeout, last)
	return nil
}

// quiesce pauses the replication and waits until its last cycle ended.
func (r *replication) quiesce() {
	r.c.t.Helper()
	r.mustAction(`{"pause": null}`, 202)
	r.waitFor("paused", 30*time.Second, func(v map[string]any) bool { return v["status"] == "paused" })
	if last, _ := r.show()["last_transfer_id"].(string); last != "" {
		r.c.wait(last)
	}
}

// nextPoint resumes the replication, asks for a cycle and waits for a
// point taken after since.
func (r *replication) nextPoint(since time.Time) point {
	r.c.t.Helper()
	r.mustAction(`{"resume": null}`, 202)
	return r.pointAfter(since)
}

// num reads a JSON number field.
func num(v map[string]any, k string) float64 {
	f, _ := v[k].(float64)
	return f
}

// stopAgent stops the stack's agent of region (SIGTERM) and returns a
// function that brings it back.
func stopAgent(t *testing.T, region string) func() {
	t.Helper()
	pidfile := filepath.Join(testenv.Get(t, "STACK_PID_DIR"), "ferry-agent-"+region+".pid")
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	started := false
	start := func() {
		if started {
			return
		}
		started = true
		root, _ := filepath.Abs("../..")
		cmd := exec.Command(filepath.Join(root, "devstack/stack.sh"), "up")
		cmd.Env = append(os.Environ(), "FERRY_STACK_COMPONENTS=ferry")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("bringing the stack's %s agent back: %v\n%s", region, err, out)
		}
	}
	t.Cleanup(start)
	return start
}

// metric reads one sample of ferry-api's /metrics (as admin).
func metric(t *testing.T, admin *client, name, label string) (float64, bool) {
	t.Helper()
	req, _ := http.NewRequest("GET", admin.url+"/metrics", nil)
	req.Header.Set("X-Auth-Token", admin.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{[^}]*` + regexp.QuoteMeta(label) + `[^}]*\} (\S+)$`)
	m := re.FindStringSubmatch(string(b))
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

// A Cinder volume of demo replicated to RegionTwo every few seconds:
// every retained point equals the source at that point, retention keeps
// the newest keep_last, each cycle moves about what was written, a
// stopped destination agent breaches the RPO (and the metric says so)
// until it is back, a drill gives an available volume with the point's
// data while replication goes on, the source's growth reaches the
// replica, other projects see nothing and a reader cannot create one;
// deleting the replication removes its snapshots and the replica.
func TestReplication(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	url := testenv.Get(t, "FERRY_API_URL")
	one, two := testenv.Get(t, "CEPH_REGIONONE_CONF"), testenv.Get(t, "CEPH_REGIONTWO_CONF")
	demo := &client{t: t, url: url, token: token(t, "demo")}
	admin := &client{t: t, url: url, token: token(t, "admin")}
	reader := &client{t: t, url: url, token: token(t, "reader")}
	alt := &client{t: t, url: url, token: token(t, "alt")}

	vol := oscVolume(t, "demo", "RegionOne", 1)
	src := "volumes/volume-" + vol
	// The first 64 MiB hold data before replication starts: the rounds
	// rewrite 64 KiB pieces of it. (A write into a hole is reported by
	// RBD's diff from the object's start, as rbd export-diff does too.)
	const region, piece = 64 << 20, 64 << 10
	var fill []uint64
	for off := uint64(0); off < region; off += 4 << 20 {
		fill = append(fill, off)
	}
	writeChunks(t, one, "volumes", "volume-"+vol, fill, 4<<20)
	const keepLast = 3
	body := fmt.Sprintf(`{"replication": {"name": "e2e-repl", "description": "e2e", "source": {"region": "RegionOne", "volume_id": %q},
		"destination": {"region": "RegionTwo"}, "interval_seconds": 3, "rpo_seconds": 15,
		"retention": {"keep_last": %d, "keep_hourly": 0, "keep_daily": 0}}}`, vol, keepLast)

	if code, m := reader.do("POST", "/v1/replications", body); code != 403 {
		t.Fatalf("reader creates a replication: %d %v", code, m)
	}
	code, m := demo.do("POST", "/v1/replications", body)
	if code != 202 {
		t.Fatalf("create: %d %v", code, m)
	}
	rv := m["replication"].(map[string]any)
	r := &replication{c: demo, id: rv["id"].(string)}
	replica := fmt.Sprintf("%s/%s", rv["destination"].(map[string]any)["pool"], rv["destination"].(map[string]any)["image"])
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			admin.do("DELETE", "/v1/replications/"+r.id, "")
		}
	})
	if code, m := demo.do("POST", "/v1/replications", body); code != 409 {
		t.Errorf("a second replication of the same volume: %d %v", code, m)
	}

	// Tenancy: alt sees nothing of it, the reader of demo's project does.
	if code, _ := alt.do("GET", "/v1/replications/"+r.id, ""); code != 404 {
		t.Errorf("alt shows demo's replication: %d", code)
	}
	if _, m := alt.do("GET", "/v1/replications", ""); strings.Contains(fmt.Sprint(m), r.id) {
		t.Errorf("alt lists demo's replication: %v", m)
	}
	if code, _ := alt.do("POST", "/v1/replications/"+r.id+"/action", `{"sync": null}`); code != 404 {
		t.Errorf("alt syncs demo's replication: %d", code)
	}
	if code, _ := reader.do("GET", "/v1/replications/"+r.id, ""); code != 200 {
		t.Errorf("demo's reader cannot show the replication: %d", code)
	}
	if code, _ := reader.do("POST", "/v1/replications/"+r.id+"/action", `{"pause": null}`); code != 403 {
		t.Errorf("reader pauses: %d", code)
	}

	// The first cycle is full.
	first := r.waitFor("a first point", 2*time.Minute, func(v map[string]any) bool { return num(v, "points_count") >= 1 })
	if first["last_sync_at"] == nil || first["status"] != "active" {
		t.Fatalf("after the first cycle: %v", first)
	}

	// Several rounds: quiesce, write distinct data, record the source's
	// sha256, resume; every point taken after that holds that data.
	type round struct {
		from time.Time
		sha  string
	}
	var rounds []round
	const writeMiB = 4
	for i := range 4 {
		r.quiesce()
		// writeMiB of distinct 64 KiB pieces at random places of the region.
		var offs []uint64
		for _, k := range rand.Perm(region / piece)[:writeMiB<<20/piece] {
			offs = append(offs, uint64(k)*piece)
		}
		writeChunks(t, one, "volumes", "volume-"+vol, offs, piece)
		sha := testenv.ExportSHA(t, one, src)
		from := time.Now()
		rounds = append(rounds, round{from: from, sha: sha})
		p := r.nextPoint(from)
		// The point's bytes are its cycle's: what was written (adjacent
		// pieces merge, so never more), far from the 1 GiB volume.
		got := float64(p.Bytes)
		if v := r.show(); v["last_transfer_id"] != nil && num(v, "bytes_last_cycle") != got && num(v, "points_count") > 0 {
			t.Logf("round %d: bytes_last_cycle %.0f (a later idle cycle), point %.0f", i, num(v, "bytes_last_cycle"), got)
		}
		if got < 0.95*writeMiB*(1<<20) || got > 1.05*writeMiB*(1<<20) {
			t.Errorf("round %d: the cycle moved %.0f bytes for %d MiB written", i, got, writeMiB)
		}
		t.Logf("round %d: wrote %d MiB, the cycle moved %.0f bytes (%.3fx)", i, writeMiB, got, got/(writeMiB<<20))
	}
	// Idle cycles go on; wait for a few more points, then check every
	// retained point against the round it belongs to.
	time.Sleep(8 * time.Second)
	r.quiesce()
	pts := r.points()
	if len(pts) != keepLast {
		t.Errorf("%d points retained, keep_last is %d: %v", len(pts), keepLast, pts)
	}
	snaps := testenv.Snapshots(t, two, replica)
	for _, p := range pts {
		var want string
		for _, rd := range rounds {
			if p.CreatedAt.After(rd.from) {
				want = rd.sha
			}
		}
		if want == "" {
			t.Errorf("point %s at %s is older than every round", p.Name, p.CreatedAt)
			continue
		}
		if got := testenv.ExportSHA(t, two, replica+"@"+p.Name); got != want {
			t.Errorf("point %s (%s): replica sha256 %s, source at that point %s", p.Name, p.CreatedAt, got, want)
		}
		if !slices.Contains(snaps, p.Name) {
			t.Errorf("point %s is not a snapshot of the replica (%v)", p.Name, snaps)
		}
	}
	if len(snaps) != len(pts) {
		t.Errorf("the replica has snapshots %v, the API lists %d points", snaps, len(pts))
	}
	if s := testenv.Snapshots(t, one, src); len(s) > 1 {
		t.Errorf("the source keeps more than the next incremental's base: %v", s)
	}
	// Cycles are transfers, listed with their replication.
	if _, m := demo.do("GET", "/v1/transfers?replication_id="+r.id, ""); len(m["transfers"].([]any)) < 5 {
		t.Errorf("cycle transfers listed: %v", m)
	}

	// A drill of the newest point while replication goes on.
	r.mustAction(`{"resume": null}`, 202)
	newest := pts[0]
	for _, p := range pts {
		if p.CreatedAt.After(newest.CreatedAt) {
			newest = p
		}
	}
	syncedBefore := r.show()["last_sync_at"]
	dm := r.mustAction(fmt.Sprintf(`{"drill": {"point": %q, "name": "e2e-drill"}}`, newest.Name), 202)
	drillID := dm["drill"].(map[string]any)["id"].(string)
	var drill map[string]any
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		_, m := demo.do("GET", "/v1/replications/"+r.id+"/drills", "")
		for _, x := range m["drills"].([]any) {
			if d := x.(map[string]any); d["id"] == drillID {
				drill = d
			}
		}
		if drill != nil && drill["status"] != "creating" {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if drill == nil || drill["status"] != "available" {
		t.Fatalf("drill: %v", drill)
	}
	drillVol := drill["volume_id"].(string)
	t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", drillVol) })
	if st := mustOSC(t, "demo", "RegionTwo", "volume", "show", drillVol, "-f", "value", "-c", "status"); st != "available" {
		t.Errorf("drill volume %s is %s", drillVol, st)
	}
	var wantSHA string
	for _, rd := range rounds {
		if newest.CreatedAt.After(rd.from) {
			wantSHA = rd.sha
		}
	}
	if got := testenv.ExportSHA(t, two, "volumes/volume-"+drillVol); got != wantSHA {
		t.Errorf("drill volume data %s, point %s holds %s", got, newest.Name, wantSHA)
	}
	t.Logf("drill: time to available %v s", drill["rto_seconds"])
	r.waitFor("a cycle after the drill", time.Minute, func(v map[string]any) bool {
		return v["last_sync_at"] != syncedBefore && v["last_sync_at"] != nil
	})

	// The source grows: the next cycle grows the replica.
	mustOSC(t, "demo", "RegionOne", "volume", "set", "--size", "2", vol)
	grown := time.Now()
	r.waitFor("a point after the extension", 2*time.Minute, func(v map[string]any) bool {
		at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(v["last_sync_at"]))
		return err == nil && at.After(grown)
	})
	if out, err := exec.Command("rbd", "-c", two, "info", "--format", "json", replica).Output(); err != nil || !strings.Contains(string(out), `"size":2147483648`) {
		t.Errorf("the replica did not grow to 2 GiB: %v %s", err, out)
	}

	// Steady state on a 5 s interval: the lag stays within the RPO (it
	// saws between the cycle's duration and interval + duration).
	if code, m := demo.do("PUT", "/v1/replications/"+r.id, `{"replication": {"interval_seconds": 5}}`); code != 200 {
		t.Fatalf("update interval: %d %v", code, m)
	}
	var lags []float64
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		lags = append(lags, num(r.show(), "lag_seconds"))
	}
	slices.Sort(lags)
	sum := 0.0
	for _, l := range lags {
		sum += l
	}
	t.Logf("steady state, interval 5 s: lag mean %.1f s, median %.0f s, max %.0f s over %d samples", sum/float64(len(lags)), lags[len(lags)/2], lags[len(lags)-1], len(lags))
	if lags[len(lags)-1] > 15 {
		t.Errorf("the lag reached %.0f s at steady state (rpo 15 s)", lags[len(lags)-1])
	}

	// RPO: the destination's agent stops; the lag passes the RPO, the
	// metric shows it; once it is back, the lag comes down.
	start := stopAgent(t, "RegionTwo")
	v := r.waitFor("an RPO breach", 90*time.Second, func(v map[string]any) bool {
		return v["rpo_breached"] == true && num(v, "lag_seconds") > num(v, "rpo_seconds")
	})
	t.Logf("breached: lag %.0f s, rpo %.0f s", num(v, "lag_seconds"), num(v, "rpo_seconds"))
	if got, ok := metric(t, admin, "ferry_replication_rpo_breached", `replication_id="`+r.id+`"`); !ok || got != 1 {
		t.Errorf("ferry_replication_rpo_breached for %s: %v %v", r.id, got, ok)
	}
	if got, ok := metric(t, admin, "ferry_replication_lag_seconds", `replication_id="`+r.id+`"`); !ok || got <= num(v, "rpo_seconds") {
		t.Errorf("ferry_replication_lag_seconds for %s: %v %v", r.id, got, ok)
	}
	start()
	v = r.waitFor("recovery from the breach", 2*time.Minute, func(v map[string]any) bool {
		return v["rpo_breached"] == false && num(v, "lag_seconds") < num(v, "rpo_seconds")
	})
	t.Logf("recovered: lag %.0f s", num(v, "lag_seconds"))
	if _, m := demo.do("GET", "/v1/replications/"+r.id+"/events", ""); !strings.Contains(fmt.Sprint(m), "rpo_breached") {
		t.Errorf("no rpo_breached event: %v", m)
	}

	// Delete: Ferry's snapshots go on both sides, and the replica.
	r.quiesce()
	if code, m := demo.do("DELETE", "/v1/replications/"+r.id, ""); code != 202 {
		t.Fatalf("delete: %d %v", code, m)
	}
	deleted = true
	deadline = time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		code, _ := demo.do("GET", "/v1/replications/"+r.id, "")
		gone := exec.Command("rbd", "-c", two, "info", replica).Run() != nil
		if code == 404 && gone && len(testenv.Snapshots(t, one, src)) == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("after delete: replica present=%v, source snapshots %v", exec.Command("rbd", "-c", two, "info", replica).Run() == nil, testenv.Snapshots(t, one, src))
}

// The source volume deleted in Cinder: Cinder's delete succeeds (Ferry's
// snapshot does not block it), the replication goes to error with a
// message saying so, and the replica is kept.
func TestReplicationSourceDeleted(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	url := testenv.Get(t, "FERRY_API_URL")
	two := testenv.Get(t, "CEPH_REGIONTWO_CONF")
	demo := &client{t: t, url: url, token: token(t, "demo")}
	vol := oscVolume(t, "demo", "RegionOne", 1)
	code, m := demo.do("POST", "/v1/replications", fmt.Sprintf(`{"replication": {"name": "e2e-gone", "source": {"region": "RegionOne", "volume_id": %q},
		"destination": {"region": "RegionTwo"}, "interval_seconds": 3, "rpo_seconds": 60, "retention": {"keep_last": 2}}}`, vol))
	if code != 202 {
		t.Fatalf("create: %d %v", code, m)
	}
	rv := m["replication"].(map[string]any)
	r := &replication{c: demo, id: rv["id"].(string)}
	replica := fmt.Sprintf("%s/%s", rv["destination"].(map[string]any)["pool"], rv["destination"].(map[string]any)["image"])
	t.Cleanup(func() {
		demo.do("DELETE", "/v1/replications/"+r.id, "")
		// keep_replica is not set: the replica goes with it.
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) && exec.Command("rbd", "-c", two, "info", replica).Run() == nil {
			time.Sleep(500 * time.Millisecond)
		}
	})
	r.waitFor("a first point", 2*time.Minute, func(v map[string]any) bool { return num(v, "points_count") >= 1 })

	mustOSC(t, "demo", "RegionOne", "volume", "delete", vol)
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if _, err := osc(t, "admin", "RegionOne", "volume", "show", vol, "-f", "value", "-c", "status"); err != nil {
			break // gone
		}
		time.Sleep(time.Second)
	}
	if st, err := osc(t, "admin", "RegionOne", "volume", "show", vol, "-f", "value", "-c", "status"); err == nil {
		t.Fatalf("Cinder did not delete the replicated volume: it is %s", strings.TrimSpace(st))
	}
	v := r.waitFor("error after the source's deletion", time.Minute, func(v map[string]any) bool { return v["status"] == "error" })
	if msg := fmt.Sprint(v["last_error"]); !strings.Contains(msg, vol) || !strings.Contains(strings.ToLower(msg), "deleted") {
		t.Errorf("last_error does not say the source volume was deleted: %q", msg)
	}
	if err := exec.Command("rbd", "-c", two, "info", replica).Run(); err != nil {
		t.Errorf("the replica %s was not kept: %v", replica, err)
	}

	// Deleting the replication removes the replica, and Ferry's snapshot
	// from the image Cinder moved to the RBD trash (then that image).
	if code, m := demo.do("DELETE", "/v1/replications/"+r.id, ""); code != 202 {
		t.Fatalf("delete: %d %v", code, m)
	}
	one := testenv.Get(t, "CEPH_REGIONONE_CONF")
	deadline = time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		trash, _ := exec.Command("rbd", "-c", one, "trash", "ls", "volumes").Output()
		if exec.Command("rbd", "-c", two, "info", replica).Run() != nil && !strings.Contains(string(trash), "volume-"+vol) {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	trash, _ := exec.Command("rbd", "-c", one, "trash", "ls", "volumes").Output()
	t.Errorf("after delete: replica present=%v, RegionOne trash %s", exec.Command("rbd", "-c", two, "info", replica).Run() == nil, trash)
}

// The ferry CLI drives a replication of demo's volume on the stack:
// create, show (lag against the RPO), points, a drill of the newest point
// by "latest", pause and resume, set, events, and delete; reader and alt
// are refused with one clear line.
func TestCLIReplication(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	two := testenv.Get(t, "CEPH_REGIONTWO_CONF")
	cloud := func(user string) []string {
		return cliEnv(map[string]string{"OS_CLIENT_CONFIG_FILE": testenv.Get(t, "OS_CLIENT_CONFIG_FILE"), "OS_CLOUD": user})
	}
	demo := cloud("demo")
	vol := oscVolume(t, "demo", "RegionOne", 1)
	name := fmt.Sprintf("e2e-cli-repl-%d", time.Now().UnixNano())

	if r := runCLI(t, cloud("reader"), "replication", "create", "--volume", vol, "--destination-region", "RegionTwo",
		"--interval", "3", "--rpo", "1m", "--name", name); r.code == 0 || !strings.Contains(r.stderr, "HTTP 403") {
		t.Errorf("reader creates a replication: exit %d %q", r.code, r.stderr)
	}
	r := runCLI(t, demo, "replication", "create", "--volume", vol, "--destination-region", "RegionTwo",
		"--interval", "3", "--rpo", "1m", "--keep-last", "2", "--name", name, "-f", "json")
	if r.code != 0 {
		t.Fatalf("replication create: exit %d: %s", r.code, r.stderr)
	}
	var created map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &created); err != nil {
		t.Fatal(err)
	}
	id := created["id"].(string)
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			runCLI(t, demo, "replication", "delete", id)
		}
	})
	if created["interval_seconds"] != float64(3) || created["rpo_seconds"] != float64(60) {
		t.Errorf("created: %v", created)
	}
	// Two points, then show by name.
	deadline := time.Now().Add(2 * time.Minute)
	var shown map[string]any
	for time.Now().Before(deadline) {
		r = runCLI(t, demo, "replication", "show", name, "-f", "json")
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &shown) == nil && num(shown, "points_count") >= 2 {
			break
		}
		time.Sleep(time.Second)
	}
	if num(shown, "points_count") < 2 {
		t.Fatalf("replication show: no two points: %v", shown)
	}
	if r = runCLI(t, demo, "replication", "show", name); r.code != 0 || !strings.Contains(r.stdout, "RPO 1m0s") {
		t.Errorf("replication show (table) does not give the lag against the RPO: %q", r.stdout)
	}
	if r = runCLI(t, demo, "replication", "points", name, "-f", "value", "-c", "name"); r.code != 0 || strings.Count(r.stdout, "ferry-") < 2 {
		t.Errorf("replication points: %q", r.stdout)
	}
	if r = runCLI(t, cloud("alt"), "replication", "show", id); r.code == 0 || !strings.Contains(r.stderr, "HTTP 404") {
		t.Errorf("alt shows demo's replication: exit %d %q", r.code, r.stderr)
	}

	// A drill of the newest point: a volume of demo's project in RegionTwo.
	r = runCLI(t, demo, "replication", "drill", name, "latest", "--name", name+"-drill", "-f", "json")
	if r.code != 0 {
		t.Fatalf("replication drill: exit %d: %s", r.code, r.stderr)
	}
	var drill map[string]any
	deadline = time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		r = runCLI(t, demo, "replication", "drills", name, "-f", "json")
		var ds []map[string]any
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &ds) == nil && len(ds) == 1 && ds[0]["status"] != "creating" {
			drill = ds[0]
			break
		}
		time.Sleep(time.Second)
	}
	if drill == nil || drill["status"] != "available" {
		t.Fatalf("drill: %v", drill)
	}
	drillVol := drill["volume_id"].(string)
	t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", drillVol) })
	if st := mustOSC(t, "demo", "RegionTwo", "volume", "show", drillVol, "-f", "value", "-c", "status"); st != "available" {
		t.Errorf("drill volume %s is %s", drillVol, st)
	}

	// Pause, set, resume, events.
	if r = runCLI(t, demo, "replication", "pause", name); r.code != 0 {
		t.Errorf("pause: %s", r.stderr)
	}
	if r = runCLI(t, demo, "replication", "set", name, "--rpo", "2m", "--keep-last", "3"); r.code != 0 {
		t.Errorf("set: %s", r.stderr)
	}
	r = runCLI(t, demo, "replication", "show", name, "-f", "json", "-c", "status", "-c", "rpo_seconds", "-c", "retention")
	if !strings.Contains(r.stdout, `"paused"`) || !strings.Contains(r.stdout, "120") || !strings.Contains(r.stdout, `"keep_last": 3`) {
		t.Errorf("after pause and set: %s", r.stdout)
	}
	if r = runCLI(t, demo, "replication", "resume", name); r.code != 0 {
		t.Errorf("resume: %s", r.stderr)
	}
	if r = runCLI(t, demo, "replication", "events", name, "-f", "value", "-c", "kind"); !strings.Contains(r.stdout, "paused") || !strings.Contains(r.stdout, "drill") {
		t.Errorf("events: %q", r.stdout)
	}
	if r = runCLI(t, demo, "transfer", "list", "--replication", id, "-f", "value", "-c", "id"); r.code != 0 || strings.Count(r.stdout, "\n") < 2 {
		t.Errorf("transfer list --replication: %q", r.stdout)
	}

	// Failover and failback with --wait: each ends done, with its RTO.
	var fo map[string]any
	r = runCLI(t, demo, "replication", "failover", name, "--wait", "-f", "json")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &fo) != nil || fo["status"] != "done" || !strings.Contains(r.stderr, "RTO") {
		t.Fatalf("replication failover --wait: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if to, _ := fo["to"].(map[string]any); to == nil || to["volume_id"] == nil {
		t.Fatalf("the failover has no new volume: %v", fo)
	} else {
		newVol := to["volume_id"].(string)
		t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", newVol) })
	}
	if r = runCLI(t, demo, "replication", "show", name, "-f", "value", "-c", "status"); strings.TrimSpace(r.stdout) != "failed_over" {
		t.Errorf("after the failover: %q %q", r.stdout, r.stderr)
	}
	if r = runCLI(t, cloud("alt"), "replication", "failback", id); r.code == 0 || !strings.Contains(r.stderr, "HTTP 404") {
		t.Errorf("alt fails back demo's replication: exit %d %q", r.code, r.stderr)
	}
	r = runCLI(t, demo, "replication", "failback", name, "--wait", "-f", "json")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &fo) != nil || fo["status"] != "done" || fo["kind"] != "failback" {
		t.Fatalf("replication failback --wait: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r = runCLI(t, demo, "replication", "failovers", name, "-f", "value", "-c", "kind"); r.code != 0 ||
		!strings.Contains(r.stdout, "failover") || !strings.Contains(r.stdout, "failback") {
		t.Errorf("replication failovers: %q %q", r.stdout, r.stderr)
	}

	// Delete: the replica goes.
	replica := fmt.Sprintf("%s/%s", shown["destination"].(map[string]any)["pool"], shown["destination"].(map[string]any)["image"])
	if r = runCLI(t, demo, "replication", "delete", name); r.code != 0 {
		t.Fatalf("delete: %s", r.stderr)
	}
	deleted = true
	deadline = time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if exec.Command("rbd", "-c", two, "info", replica).Run() != nil && runCLI(t, demo, "replication", "show", id).code != 0 {
			return
		}
		time.Sleep(time.Second)
	}
	t.Errorf("the replica %s or the replication stayed after delete", replica)
}
