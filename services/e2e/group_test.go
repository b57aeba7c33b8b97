//go:build e2e

package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cephrbd "github.com/ferry-project/ferry/services/agent/rbd"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// counterWriter writes one increasing counter (from its first value) into
// the first block of each of its images in turn, as an application
// keeping an invariant across volumes would: step n writes n into image
// 0, then 1, then 2. A write
// the consistent snapshot's fence refuses (EROFS while it holds the
// locks) is retried. Any crash-consistent cut of its writes holds
// counters c0 >= c1 >= c2 >= c0-1.
type counterWriter struct {
	imgs  []*cephrbd.Image
	steps atomic.Uint64
	retry atomic.Uint64
	stop  chan struct{}
	done  sync.WaitGroup
	err   error
}

func startCounterWriter(t *testing.T, conf string, images []string, from uint64) *counterWriter {
	t.Helper()
	ctx := context.Background()
	c, err := cephrbd.Connect(ctx, cephrbd.Options{ConfFile: conf, User: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	w := &counterWriter{stop: make(chan struct{})}
	for _, name := range images {
		img, err := c.OpenImage(ctx, "volumes", name, "", false)
		if err != nil {
			t.Fatal(err)
		}
		w.imgs = append(w.imgs, img)
	}
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		// Its handles go with it: an image a writer keeps open is busy
		// for Ferry (a replica being removed, an image renamed).
		defer func() {
			for _, img := range w.imgs {
				img.Close()
			}
		}()
		buf := make([]byte, 4096)
		for n := from; ; n++ {
			select {
			case <-w.stop:
				return
			default:
			}
			binary.BigEndian.PutUint64(buf, n)
			for _, img := range w.imgs {
				for deadline := time.Now().Add(30 * time.Second); ; {
					_, err := img.WriteAt(buf, 0)
					if err == nil {
						break
					}
					if time.Now().After(deadline) {
						w.err = fmt.Errorf("step %d: a write refused for 30 s: %w", n, err)
						return
					}
					w.retry.Add(1)
					time.Sleep(2 * time.Millisecond)
				}
			}
			w.steps.Store(n)
			time.Sleep(3 * time.Millisecond)
		}
	}()
	return w
}

func (w *counterWriter) halt() error {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.done.Wait()
	return w.err
}

// readCounter reads the counter of pool/image@snap ("" for the head).
func readCounter(t *testing.T, c *cephrbd.Cluster, image, snap string) uint64 {
	t.Helper()
	img, err := c.OpenImage(context.Background(), "volumes", image, snap, true)
	if err != nil {
		t.Fatalf("open %s@%s: %v", image, snap, err)
	}
	defer img.Close()
	buf := make([]byte, 8)
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatalf("read %s@%s: %v", image, snap, err)
	}
	return binary.BigEndian.Uint64(buf)
}

// isCut: the counters of one group point are one moment of the writer.
func isCut(v []uint64) bool {
	for i := 1; i < len(v); i++ {
		if v[i] > v[i-1] {
			return false
		}
	}
	return v[0]-v[len(v)-1] <= 1
}

// A consistency group of 3 volumes written by a counter writer while its
// cycles run: every group point at the destination holds one moment of
// the writer in all 3 members (checked on the replicas, by point), members
// answer only to the group, a drill of the group gives one volume per
// member holding the point, and deleting the group removes its replicas.
func TestReplicationGroup(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	url := testenv.Get(t, "FERRY_API_URL")
	one, two := testenv.Get(t, "CEPH_REGIONONE_CONF"), testenv.Get(t, "CEPH_REGIONTWO_CONF")
	demo := &client{t: t, url: url, token: token(t, "demo")}
	admin := &client{t: t, url: url, token: token(t, "admin")}
	alt := &client{t: t, url: url, token: token(t, "alt")}
	reader := &client{t: t, url: url, token: token(t, "reader")}

	var vols, images []string
	for range 3 {
		v := oscVolume(t, "demo", "RegionOne", 1)
		vols = append(vols, v)
		images = append(images, "volume-"+v)
	}
	w := startCounterWriter(t, one, images, 1)
	defer w.halt()

	body := fmt.Sprintf(`{"replication_group": {"name": "e2e-group", "source": {"region": "RegionOne", "volume_ids": [%q, %q, %q]},
		"destination": {"region": "RegionTwo"}, "interval_seconds": 3, "rpo_seconds": 30, "retention": {"keep_last": 4}}}`, vols[0], vols[1], vols[2])
	if code, m := reader.do("POST", "/v1/replication-groups", body); code != 403 {
		t.Errorf("a reader creates a group: %d %v", code, m)
	}
	code, m := demo.do("POST", "/v1/replication-groups", body)
	if code != 202 {
		t.Fatalf("create group: %d %v", code, m)
	}
	g := m["replication_group"].(map[string]any)
	id := g["id"].(string)
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			admin.do("DELETE", "/v1/replication-groups/"+id, "")
		}
	})
	replica := map[string]string{} // replication id → replica image
	var order []string             // member replication ids in the writer's order
	for _, x := range g["members"].([]any) {
		mv := x.(map[string]any)
		replica[mv["replication_id"].(string)] = mv["destination"].(map[string]any)["image"].(string)
	}
	for _, v := range vols {
		for _, x := range g["members"].([]any) {
			mv := x.(map[string]any)
			if mv["volume_id"] == v {
				order = append(order, mv["replication_id"].(string))
			}
		}
	}
	if len(order) != 3 {
		t.Fatalf("members %v", g["members"])
	}
	if code, _ := alt.do("GET", "/v1/replication-groups/"+id, ""); code != 404 {
		t.Errorf("alt shows demo's group: %d", code)
	}
	if code, _ := alt.do("POST", "/v1/replication-groups/"+id+"/action", `{"sync": null}`); code != 404 {
		t.Errorf("alt syncs demo's group: %d", code)
	}
	if code, m := demo.do("POST", "/v1/replications/"+order[0]+"/action", `{"pause": null}`); code != 409 {
		t.Errorf("pausing a member alone: %d %v", code, m)
	}

	// Group points while the writer runs: each one a cut of the writer.
	dst, err := cephrbd.Connect(context.Background(), cephrbd.Options{ConfFile: two, User: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	checked := map[string]bool{}
	equal := 0
	deadline := time.Now().Add(6 * time.Minute)
	for len(checked) < 8 && time.Now().Before(deadline) {
		_, m := demo.do("GET", "/v1/replication-groups/"+id+"/points", "")
		for _, x := range m["points"].([]any) {
			p := x.(map[string]any)
			name := p["name"].(string)
			if checked[name] {
				continue
			}
			parts := map[string]string{}
			for _, y := range p["members"].([]any) {
				pm := y.(map[string]any)
				parts[pm["replication_id"].(string)] = pm["point"].(string)
			}
			var v []uint64
			for _, rid := range order {
				v = append(v, readCounter(t, dst, replica[rid], parts[rid]))
			}
			if !isCut(v) {
				t.Errorf("group point %s: counters %v (volumes in writer order) are not one moment of the writer", name, v)
			}
			if v[0] == v[2] {
				equal++
			}
			checked[name] = true
		}
		time.Sleep(time.Second)
	}
	if err := w.halt(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if len(checked) < 8 {
		t.Fatalf("%d group points in 6 min, want 8 (group %v)", len(checked), groupShow(t, demo, id))
	}
	gv := groupShow(t, demo, id)
	t.Logf("group: %d points checked (%d with all counters equal, the rest mid-step); writer: %d steps, %d writes refused by the fence and retried; cycles %v, lag %v s",
		len(checked), equal, w.steps.Load(), w.retry.Load(), gv["cycles"], gv["lag_seconds"])
	if gv["rpo_breached"] != false || gv["status"] != "active" {
		t.Errorf("group after the points: %v", gv)
	}

	// A drill of the newest point: one available volume per member, each
	// with the point's counter.
	_, m = demo.do("GET", "/v1/replication-groups/"+id+"/points", "")
	newest := m["points"].([]any)[0].(map[string]any)
	want := map[string]uint64{}
	for _, y := range newest["members"].([]any) {
		pm := y.(map[string]any)
		rid := pm["replication_id"].(string)
		want[rid] = readCounter(t, dst, replica[rid], pm["point"].(string))
	}
	code, m = demo.do("POST", "/v1/replication-groups/"+id+"/action", fmt.Sprintf(`{"drill": {"point": %q, "name": "e2e-group-drill"}}`, newest["name"]))
	if code != 202 || len(m["drills"].([]any)) != 3 {
		t.Fatalf("group drill: %d %v", code, m)
	}
	var ids []string
	for _, x := range m["drills"].([]any) {
		ids = append(ids, x.(map[string]any)["id"].(string))
	}
	var drills []map[string]any
	for end := time.Now().Add(3 * time.Minute); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		_, m := demo.do("GET", "/v1/replication-groups/"+id+"/drills", "")
		drills = drills[:0]
		pending := 0
		for _, x := range m["drills"].([]any) {
			d := x.(map[string]any)
			if slices.Contains(ids, d["id"].(string)) {
				drills = append(drills, d)
				if d["status"] == "creating" {
					pending++
				}
			}
		}
		if len(drills) == 3 && pending == 0 {
			break
		}
	}
	var rtos []any
	for _, d := range drills {
		vid, _ := d["volume_id"].(string)
		if vid != "" {
			t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", vid) })
		}
		if d["status"] != "available" {
			t.Errorf("member drill %v", d)
			continue
		}
		rtos = append(rtos, d["rto_seconds"])
		if got := readCounter(t, dst, "volume-"+vid, ""); got != want[d["replication_id"].(string)] {
			t.Errorf("drill volume %s holds counter %d, its point %d", vid, got, want[d["replication_id"].(string)])
		}
	}
	t.Logf("group drill: 3 volumes, times to available %v s", rtos)

	// Planned failover of the group: 3 available volumes in RegionTwo with
	// the writer's last counter, the sources read-only.
	src, err := cephrbd.Connect(context.Background(), cephrbd.Options{ConfFile: one, User: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	last := readCounter(t, src, images[0], "")
	for _, img := range images[1:] {
		if c := readCounter(t, src, img, ""); c != last {
			t.Fatalf("the stopped writer left counters %d and %d", last, c)
		}
	}
	if code, _ := alt.do("POST", "/v1/replication-groups/"+id+"/action", `{"failover": null}`); code != 404 {
		t.Errorf("alt fails over demo's group: %d", code)
	}
	if code, _ := reader.do("POST", "/v1/replication-groups/"+id+"/action", `{"failover": null}`); code != 403 {
		t.Errorf("demo's reader fails over the group: %d", code)
	}
	if code, m := demo.do("POST", "/v1/replication-groups/"+id+"/action", `{"failover": null}`); code != 202 {
		t.Fatalf("group failover: %d %v", code, m)
	}
	if code, m := demo.do("POST", "/v1/replication-groups/"+id+"/action", `{"failover": null}`); code != 409 {
		t.Errorf("a second group failover: %d %v", code, m)
	}
	gv = waitGroup(t, demo, id, "failed over", 4*time.Minute, func(g map[string]any) bool { return g["status"] != "failing_over" })
	fo, _ := gv["failover"].(map[string]any)
	if gv["status"] != "failed_over" || fo == nil || fo["status"] != "done" || gv["source"].(map[string]any)["region"] != "RegionTwo" {
		t.Fatalf("after the group failover: %v", gv)
	}
	newVols := map[string]string{} // replication id → volume in RegionTwo
	for rid := range replica {
		code, m := demo.do("GET", "/v1/replications/"+rid, "")
		r := m["replication"].(map[string]any)
		nv, _ := r["source"].(map[string]any)["volume_id"].(string)
		if code != 200 || r["status"] != "failed_over" || nv == "" {
			t.Fatalf("member %s after the group failover: %d %v", rid, code, m)
		}
		newVols[rid] = nv
		t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", nv) })
		if st := mustOSC(t, "demo", "RegionTwo", "volume", "show", nv, "-f", "value", "-c", "status"); st != "available" {
			t.Errorf("failed-over volume %s is %s", nv, st)
		}
		if c := readCounter(t, dst, "volume-"+nv, ""); c != last {
			t.Errorf("failed-over volume %s holds counter %d, the sources %d", nv, c, last)
		}
	}
	for _, v := range vols {
		if !readOnly(volumeShow(t, "demo", "RegionOne", v)) {
			t.Errorf("source volume %s is not read-only after the group failover", v)
		}
	}
	t.Logf("group failover: RTO %v s, 3 volumes in RegionTwo with counter %d", fo["rto_seconds"], last)

	// RegionTwo is primary: a step of the writer there, then the group's
	// failback: the original volumes hold it, read-write again.
	w2 := startCounterWriter(t, two, func() []string {
		var out []string
		for _, rid := range order {
			out = append(out, "volume-"+newVols[rid])
		}
		return out
	}(), last+1)
	time.Sleep(500 * time.Millisecond)
	if err := w2.halt(); err != nil {
		t.Fatal(err)
	}
	back := readCounter(t, dst, "volume-"+newVols[order[0]], "")
	if code, m := demo.do("POST", "/v1/replication-groups/"+id+"/action", `{"failback": null}`); code != 202 {
		t.Fatalf("group failback: %d %v", code, m)
	}
	gv = waitGroup(t, demo, id, "failed back", 4*time.Minute, func(g map[string]any) bool { return g["status"] != "failing_back" })
	fb, _ := gv["failover"].(map[string]any)
	if gv["status"] != "active" || fb == nil || fb["status"] != "done" || gv["source"].(map[string]any)["region"] != "RegionOne" {
		t.Fatalf("after the group failback: %v", gv)
	}
	for i, img := range images {
		if c := readCounter(t, src, img, ""); c != back {
			t.Errorf("original volume %s holds counter %d after the failback, RegionTwo's %d", vols[i], c, back)
		}
		if readOnly(volumeShow(t, "demo", "RegionOne", vols[i])) {
			t.Errorf("original volume %s is read-only after the failback", vols[i])
		}
	}
	t.Logf("group failback: RTO %v s, %d writer steps in RegionTwo came back", fb["rto_seconds"], back-last)

	// Deleting the group removes its members and their replicas.
	if code, m := demo.do("DELETE", "/v1/replication-groups/"+id, ""); code != 202 {
		t.Fatalf("delete group: %d %v", code, m)
	}
	deleted = true
	for end := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		code, _ := demo.do("GET", "/v1/replication-groups/"+id, "")
		if code == 404 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("group %s still there 2 min after its delete", id)
		}
	}
	for rid, img := range replica {
		if code, _ := demo.do("GET", "/v1/replications/"+rid, ""); code != 404 {
			t.Errorf("member %s after the group's delete: %d", rid, code)
		}
		for end := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
			if exec.Command("rbd", "-c", two, "info", "volumes/"+img).Run() != nil {
				break
			}
			if time.Now().After(end) {
				t.Errorf("replica %s still there after the group's delete", img)
				break
			}
		}
	}
	// A member cycle the delete cancelled may have taken its snapshot
	// after the members' clean-up: ferry-api's garbage collector removes
	// it after [api] cleanup_grace (20 s on the stack).
	for _, img := range images {
		for end := time.Now().Add(90 * time.Second); ; time.Sleep(2 * time.Second) {
			snaps := testenv.Snapshots(t, one, "volumes/"+img)
			if len(snaps) == 0 {
				break
			}
			if time.Now().After(end) {
				t.Errorf("source volumes/%s keeps snapshots %v 90 s after the group's delete", img, snaps)
				break
			}
		}
	}
}

func groupShow(t *testing.T, c *client, id string) map[string]any {
	t.Helper()
	code, m := c.do("GET", "/v1/replication-groups/"+id, "")
	if code != 200 {
		t.Fatalf("show group %s: %d %v", id, code, m)
	}
	return m["replication_group"].(map[string]any)
}

// waitGroup polls group id until cond holds.
func waitGroup(t *testing.T, c *client, id, what string, timeout time.Duration, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	var last map[string]any
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		last = groupShow(t, c, id)
		if cond(last) {
			return last
		}
	}
	t.Fatalf("group %s: %s did not happen in %s; last %v", id, what, timeout, last)
	return nil
}
