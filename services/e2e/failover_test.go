//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// failovers lists a replication's failovers, newest first.
func (r *replication) failovers() []map[string]any {
	r.c.t.Helper()
	code, m := r.c.do("GET", "/v1/replications/"+r.id+"/failovers", "")
	if code != 200 {
		r.c.t.Fatalf("failovers of %s: %d %v", r.id, code, m)
	}
	var out []map[string]any
	for _, x := range m["failovers"].([]any) {
		out = append(out, x.(map[string]any))
	}
	return out
}

// failover waits until failover id of r is done and returns it.
func (r *replication) waitFailover(id string, timeout time.Duration) map[string]any {
	r.c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last map[string]any
	for time.Now().Before(deadline) {
		for _, f := range r.failovers() {
			if f["id"] == id {
				last = f
			}
		}
		switch {
		case last == nil:
			r.c.t.Fatalf("failover %s is not listed", id)
		case last["status"] == "done":
			return last
		case last["status"] == "error":
			r.c.t.Fatalf("failover %s failed: %v", id, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
	r.c.t.Fatalf("failover %s not done after %s: %v", id, timeout, last)
	return nil
}

// volumeShow is `openstack volume show` of id in region as user (nil when
// it does not exist).
func volumeShow(t *testing.T, user, region, id string) map[string]any {
	t.Helper()
	out, err := osc(t, user, region, "volume", "show", id, "-f", "json")
	if err != nil {
		if strings.Contains(err.Error(), "No volume with a name or ID") || strings.Contains(err.Error(), "could not be found") {
			return nil
		}
		t.Fatalf("volume show %s in %s: %v", id, region, err)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("volume show %s: %v: %s", id, err, out)
	}
	return v
}

// readOnly reads a volume's read-only flag as the openstack CLI shows it
// (Cinder's admin metadata readonly, among its properties).
func readOnly(v map[string]any) bool {
	p, _ := v["properties"].(map[string]any)
	return strings.EqualFold(fmt.Sprint(p["readonly"]), "true")
}

// pointAfter asks for a cycle and waits for a point taken after since.
func (r *replication) pointAfter(since time.Time) point {
	r.c.t.Helper()
	r.mustAction(`{"sync": null}`, 202)
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		for _, p := range r.points() {
			if p.CreatedAt.After(since) {
				return p
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	r.c.t.Fatalf("replication %s: no point after %s; %v", r.id, since, r.show())
	return point{}
}

// failoverSetup makes a volume of demo in RegionOne with data in its
// first 32 MiB, replicates it to RegionTwo every 3 s and waits for a
// first point; write writes mib MiB of distinct 64 KiB pieces into those
// 32 MiB of an image of a region (as client.admin).
func failoverSetup(t *testing.T, demo, admin *client, name string) (r *replication, vol string, write func(conf, image string, mib int)) {
	t.Helper()
	one := testenv.Get(t, "CEPH_REGIONONE_CONF")
	vol = oscVolume(t, "demo", "RegionOne", 1)
	const region, piece = 32 << 20, 64 << 10
	var fill []uint64
	for off := uint64(0); off < region; off += 4 << 20 {
		fill = append(fill, off)
	}
	writeChunks(t, one, "volumes", "volume-"+vol, fill, 4<<20)
	body := fmt.Sprintf(`{"replication": {"name": %q, "source": {"region": "RegionOne", "volume_id": %q},
		"destination": {"region": "RegionTwo"}, "interval_seconds": 3, "rpo_seconds": 30,
		"retention": {"keep_last": 3, "keep_hourly": 0, "keep_daily": 0}}}`, name, vol)
	code, m := demo.do("POST", "/v1/replications", body)
	if code != 202 {
		t.Fatalf("create: %d %v", code, m)
	}
	r = &replication{c: demo, id: m["replication"].(map[string]any)["id"].(string)}
	t.Cleanup(func() { admin.do("DELETE", "/v1/replications/"+r.id, "") })
	r.waitFor("a first point", 2*time.Minute, func(v map[string]any) bool { return num(v, "points_count") >= 1 })
	write = func(conf, image string, mib int) {
		var offs []uint64
		for _, k := range rand.Perm(region / piece)[:mib<<20/piece] {
			offs = append(offs, uint64(k)*piece)
		}
		writeChunks(t, conf, "volumes", image, offs, piece)
	}
	return r, vol, write
}

// The planned round trip: demo's volume replicated to RegionTwo, data
// written, then a planned failover: the RegionTwo volume is available,
// carries the source's name and equals the source at the final point, the
// source is read-only; data written in RegionTwo, then a failback: the
// original RegionOne volume (the same id) equals RegionTwo's data and is
// read-write, the RegionTwo volume is unmanaged (its image the replica
// again), replication goes on in the original direction; each way moves
// about what was written since, not the volume. Alt, and demo's reader,
// cannot fail it over; a second failover while one runs gets 409.
func TestFailoverPlannedRoundTrip(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	url := testenv.Get(t, "FERRY_API_URL")
	one, two := testenv.Get(t, "CEPH_REGIONONE_CONF"), testenv.Get(t, "CEPH_REGIONTWO_CONF")
	demo := &client{t: t, url: url, token: token(t, "demo")}
	admin := &client{t: t, url: url, token: token(t, "admin")}
	reader := &client{t: t, url: url, token: token(t, "reader")}
	alt := &client{t: t, url: url, token: token(t, "alt")}

	r, vol, write := failoverSetup(t, demo, admin, "e2e-failover")
	write(one, "volume-"+vol, 2)

	if code, _ := alt.do("POST", "/v1/replications/"+r.id+"/action", `{"failover": {}}`); code != 404 {
		t.Errorf("alt fails over demo's replication: %d", code)
	}
	if code, _ := reader.do("POST", "/v1/replications/"+r.id+"/action", `{"failover": {}}`); code != 403 {
		t.Errorf("demo's reader fails over: %d", code)
	}
	if code, m := r.action(`{"failover": {"point": "latest"}}`); code != 400 {
		t.Errorf("an unplanned failover without force: %d %v", code, m)
	}
	m := r.mustAction(`{"failover": {}}`, 202)
	fo := m["failover"].(map[string]any)
	if code, m := r.action(`{"failover": {}}`); code != 409 {
		t.Errorf("a second failover while one runs: %d %v", code, m)
	}
	done := r.waitFailover(fo["id"].(string), 3*time.Minute)
	rto, _ := done["rto_seconds"].(float64)
	newVol, _ := done["to"].(map[string]any)["volume_id"].(string)
	if rto <= 0 || newVol == "" {
		t.Fatalf("failover done without an RTO or a volume: %v", done)
	}
	v := r.show()
	if v["status"] != "failed_over" || v["source"].(map[string]any)["region"] != "RegionTwo" {
		t.Fatalf("after the failover the replication is %v", v)
	}
	srcSHA := testenv.ExportSHA(t, one, "volumes/volume-"+vol)
	if got := testenv.ExportSHA(t, two, "volumes/volume-"+newVol); got != srcSHA {
		t.Errorf("the failed-over volume %s's data (sha256 %s) is not the source's (%s)", newVol, got, srcSHA)
	}
	nv := volumeShow(t, "demo", "RegionTwo", newVol)
	if nv == nil || nv["status"] != "available" {
		t.Fatalf("the failed-over volume %s in RegionTwo: %v", newVol, nv)
	}
	t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", newVol) })
	ov := volumeShow(t, "demo", "RegionOne", vol)
	if nv["name"] != ov["name"] || nv["description"] != ov["description"] {
		t.Errorf("the failed-over volume is %q (%q), the source %q (%q)", nv["name"], nv["description"], ov["name"], ov["description"])
	}
	if !readOnly(ov) {
		t.Errorf("the source volume is not read-only after the failover: %v", ov)
	}
	t.Logf("planned failover: RTO %.2f s, volume %s in RegionTwo", rto, newVol)

	// RegionTwo is primary: written there, replicated back.
	written := 3 << 20
	write(two, "volume-"+newVol, 3)
	m = r.mustAction(`{"failback": null}`, 202)
	fb := m["failover"].(map[string]any)
	// ferry-api killed in the middle of it: the next one finishes it.
	var killedAt any
	for deadline := time.Now().Add(time.Minute); killedAt == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, f := range r.failovers() {
			if f["id"] == fb["id"] && f["status"] == "running" && f["final_transfer_id"] != nil {
				killAPI(t)
				killedAt = f["step"]
			}
		}
	}
	if killedAt == nil {
		t.Fatal("the failback was never seen past its final cycle's start: nothing was interrupted")
	}
	time.Sleep(500 * time.Millisecond)
	restartAPI(t)
	t.Logf("ferry-api killed during the failback, at its step %v, and restarted", killedAt)
	back := r.waitFailover(fb["id"].(string), 3*time.Minute)
	brto, _ := back["rto_seconds"].(float64)
	v = r.show()
	if v["status"] != "active" || v["source"].(map[string]any)["region"] != "RegionOne" || v["source"].(map[string]any)["volume_id"] != vol {
		t.Fatalf("after the failback the replication is %v", v)
	}
	twoSHA := testenv.ExportSHA(t, two, "volumes/"+v["destination"].(map[string]any)["image"].(string))
	if got := testenv.ExportSHA(t, one, "volumes/volume-"+vol); got != twoSHA {
		t.Errorf("after the failback volume %s's data (sha256 %s) is not RegionTwo's (%s)", vol, got, twoSHA)
	}
	if ov := volumeShow(t, "demo", "RegionOne", vol); readOnly(ov) || ov["status"] != "available" {
		t.Errorf("the original volume after the failback: %v", ov)
	}
	if nv := volumeShow(t, "admin", "RegionTwo", newVol); nv != nil {
		t.Errorf("the failed-over volume is still in RegionTwo's Cinder after the failback: %v", nv)
	}
	// What crossed back: the failback's final cycle and the reverse
	// cycles before it.
	var moved float64
	code, tm := demo.do("GET", "/v1/transfers?replication_id="+r.id+"&limit=100", "")
	if code != 200 {
		t.Fatalf("cycles: %d %v", code, tm)
	}
	for _, x := range tm["transfers"].([]any) {
		tr := x.(map[string]any)
		if tr["source"].(map[string]any)["region"] == "RegionTwo" {
			moved += num(tr, "bytes_transferred")
		}
	}
	if moved < 0.95*float64(written) || moved > 1.5*float64(written) {
		t.Errorf("the failback moved %.0f bytes for %d written in RegionTwo", moved, written)
	}
	t.Logf("failback: RTO %.2f s, moved %.0f bytes for %d written (%.3fx)", brto, moved, written, moved/float64(written))
	// Replication goes on in the original direction.
	p := r.pointAfter(time.Now())
	t.Logf("a point after the failback: %s", p.Name)
}

// The unplanned failover and its way back: RegionOne's agent stopped, a
// forced failover to the latest point (RegionTwo's volume available with
// that point's data, without RegionOne's agent); data written into the
// RegionOne image behind Ferry's back; the agent back: the divergent head
// is preserved as the named image with exactly that data, the image rolled
// back to the common point, and replication runs the other way; the
// failback then leaves RegionOne's volume with RegionTwo's data.
func TestFailoverUnplanned(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	url := testenv.Get(t, "FERRY_API_URL")
	one, two := testenv.Get(t, "CEPH_REGIONONE_CONF"), testenv.Get(t, "CEPH_REGIONTWO_CONF")
	demo := &client{t: t, url: url, token: token(t, "demo")}
	admin := &client{t: t, url: url, token: token(t, "admin")}

	r, vol, write := failoverSetup(t, demo, admin, "e2e-unplanned")
	write(one, "volume-"+vol, 1)
	r.pointAfter(time.Now())
	pointSHA := testenv.ExportSHA(t, one, "volumes/volume-"+vol) // no write since: every later point holds it

	start := stopAgent(t, "RegionOne")
	m := r.mustAction(`{"failover": {"point": "latest", "force": true}}`, 202)
	fo := m["failover"].(map[string]any)
	id := fo["id"].(string)
	v := r.waitFor("failed over", 3*time.Minute, func(v map[string]any) bool { return v["status"] == "failed_over" })
	if v["source"].(map[string]any)["region"] != "RegionTwo" {
		t.Fatalf("after the unplanned failover: %v", v)
	}
	var f map[string]any
	for _, x := range r.failovers() {
		if x["id"] == id {
			f = x
		}
	}
	rto, _ := f["rto_seconds"].(float64)
	newVol, _ := f["to"].(map[string]any)["volume_id"].(string)
	if f["status"] != "running" || f["step"] != "demote" || rto <= 0 || newVol == "" {
		t.Fatalf("the failover while RegionOne's agent is down: %v", f)
	}
	t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", newVol) })
	if nv := volumeShow(t, "demo", "RegionTwo", newVol); nv == nil || nv["status"] != "available" {
		t.Fatalf("the failed-over volume: %v", nv)
	}
	if got := testenv.ExportSHA(t, two, "volumes/volume-"+newVol); got != pointSHA {
		t.Errorf("the failed-over volume's data (sha256 %s) is not the latest point's (%s)", got, pointSHA)
	}
	t.Logf("unplanned failover: RTO %.2f s, volume %s in RegionTwo", rto, newVol)

	// Behind Ferry's back, while "down".
	write(one, "volume-"+vol, 1)
	divergent := testenv.ExportSHA(t, one, "volumes/volume-"+vol)
	start()
	done := r.waitFailover(id, 4*time.Minute)
	preserved, _ := done["preserved_image"].(string)
	if preserved == "" {
		t.Fatalf("the divergent head was not preserved: %v", done)
	}
	t.Cleanup(func() { exec.Command("rbd", "-c", one, "rm", "--no-progress", "volumes/"+preserved).Run() })
	if got := testenv.ExportSHA(t, one, "volumes/"+preserved); got != divergent {
		t.Errorf("the preserved image %s's data (sha256 %s) is not what was written in RegionOne (%s)", preserved, got, divergent)
	}
	code, em := demo.do("GET", "/v1/replications/"+r.id+"/events", "")
	if code != 200 || !strings.Contains(fmt.Sprint(em), preserved) {
		t.Errorf("no event names the preserved image %s: %d %v", preserved, code, em)
	}
	// Replication runs the other way, incrementally from the common point.
	write(two, "volume-"+newVol, 2)
	r.pointAfter(time.Now())
	m = r.mustAction(`{"failback": null}`, 202)
	back := r.waitFailover(m["failover"].(map[string]any)["id"].(string), 3*time.Minute)
	v = r.show()
	if v["status"] != "active" || v["source"].(map[string]any)["volume_id"] != vol {
		t.Fatalf("after the failback: %v", v)
	}
	twoSHA := testenv.ExportSHA(t, two, "volumes/"+v["destination"].(map[string]any)["image"].(string))
	if got := testenv.ExportSHA(t, one, "volumes/volume-"+vol); got != twoSHA || got == divergent {
		t.Errorf("after the failback volume %s's data (sha256 %s) is not RegionTwo's (%s)", vol, got, twoSHA)
	}
	var moved float64
	_, tm := demo.do("GET", "/v1/transfers?replication_id="+r.id+"&limit=100", "")
	for _, x := range tm["transfers"].([]any) {
		tr := x.(map[string]any)
		if tr["source"].(map[string]any)["region"] == "RegionTwo" {
			moved += num(tr, "bytes_transferred")
		}
	}
	brto, _ := back["rto_seconds"].(float64)
	t.Logf("failback after the unplanned failover: RTO %.2f s; RegionTwo → RegionOne moved %.0f bytes for %d written there; %s preserved",
		brto, moved, 2<<20, preserved)
	if moved > 3*(2<<20) {
		t.Errorf("the way back moved %.0f bytes for 2 MiB written: not incremental", moved)
	}
}
