package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeFailoverSteps are the steps the fake runs a failover through, one
// per GET of it; a replication named "doomed" fails at final_cycle.
var fakeFailoverSteps = []string{"quiesce", "final_cycle", "promote", "register", "demote", "flip"}

// startFailover is the fake API's failover and failback actions: the
// checks of services/api (force with a point, the status), then a
// running failover.
func (fr *fakeReplications) startFailover(w http.ResponseWriter, rp map[string]any, req map[string]json.RawMessage, reply func(int, any)) {
	kind, from, to := "failover", []string{"active", "paused"}, "failing_over"
	if req["failback"] != nil {
		kind, from, to = "failback", []string{"failed_over"}, "failing_back"
	}
	var arg struct {
		Point string `json:"point"`
		Force bool   `json:"force"`
	}
	_ = json.Unmarshal(req[kind], &arg)
	id, status := rp["id"].(string), rp["status"].(string)
	switch {
	case arg.Point != "" && !arg.Force:
		fault(w, 400, "badRequest", `An unplanned failover (to point "`+arg.Point+`") does not contact the source region: it needs "force": true.`)
		return
	case !slices.Contains(from, status):
		fault(w, 409, "conflictingRequest", "Replication "+id+" is "+status+": a "+kind+" needs it "+strings.Join(from, " or ")+".")
		return
	}
	if fr.failovers == nil {
		fr.failovers = map[string][]map[string]any{}
	}
	src, _ := rp["source"].(map[string]any)
	dst, _ := rp["destination"].(map[string]any)
	fo := map[string]any{
		"id": fmt.Sprintf("f0000000-0000-0000-0000-%012d", len(fr.failovers[id])+1), "replication_id": id, "kind": kind,
		"planned": arg.Point == "", "force": arg.Force, "point": nil, "status": "running", "step": "",
		"from": src, "to": dst, "final_transfer_id": nil, "preserved_image": nil, "preserved_bytes": 0,
		"requested_at": "2026-12-03T11:00:00.000000Z", "available_at": nil, "finished_at": nil, "rto_seconds": nil,
		"error": nil, "user_id": "u1",
	}
	if arg.Point != "" {
		fo["point"] = arg.Point
	}
	fr.failovers[id] = append([]map[string]any{fo}, fr.failovers[id]...)
	rp["status"] = to
	reply(202, map[string]any{"failover": fo})
}

// serveFailovers lists a replication's failovers, or shows one (rest is
// its id), moving it one step on.
func (fr *fakeReplications) serveFailovers(w http.ResponseWriter, id string, rest []string, reply func(int, any)) {
	fos := fr.failovers[id]
	if len(rest) == 0 {
		if fos == nil {
			fos = []map[string]any{}
		}
		reply(200, map[string]any{"failovers": fos})
		return
	}
	i := slices.IndexFunc(fos, func(f map[string]any) bool { return f["id"] == rest[0] })
	if i < 0 {
		fault(w, 404, "itemNotFound", "Failover "+rest[0]+" of replication "+id+" could not be found.")
		return
	}
	fo, rp := fos[i], fr.items[id]
	if fo["status"] == "running" {
		at := slices.Index(fakeFailoverSteps, fo["step"].(string)) + 1
		switch {
		case rp["name"] == "doomed" && fo["step"] == "final_cycle":
			fo["status"], fo["error"], fo["finished_at"] = "error", "final cycle failed: source unreachable", "2026-12-03T11:00:30.000000Z"
			rp["status"] = map[string]string{"failover": "active", "failback": "failed_over"}[fo["kind"].(string)]
		case at == len(fakeFailoverSteps):
			fo["status"], fo["step"], fo["rto_seconds"] = "done", "done", 42.25
			fo["available_at"], fo["finished_at"] = "2026-12-03T11:00:42.250000Z", "2026-12-03T11:01:00.000000Z"
			to := map[string]any{}
			for k, v := range fo["to"].(map[string]any) {
				to[k] = v
			}
			to["volume_id"] = "vol-new"
			fo["to"] = to
			rp["status"] = map[string]string{"failover": "failed_over", "failback": "active"}[fo["kind"].(string)]
		default:
			fo["step"] = fakeFailoverSteps[at]
		}
	}
	reply(200, map[string]any{"failover": fo})
}

func TestReplicationFailoverAndFailbackSendTheAPIBody(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addReplication(map[string]any{"name": "db"})
	fc.addReplication(map[string]any{"name": "dr"})
	code, out, errOut := run(t, fc.env(), "replication", "failover", "db", "-f", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var fo map[string]any
	if err := json.Unmarshal([]byte(out), &fo); err != nil || fo["kind"] != "failover" || fo["status"] != "running" || fo["planned"] != true {
		t.Errorf("failover: %v %s", err, out)
	}
	if !strings.HasPrefix(out, "{\n  \"id\":") || strings.Index(out, `"from"`) > strings.Index(out, `"to"`) ||
		strings.Index(out, `"preserved_image"`) > strings.Index(out, `"rto_seconds"`) {
		t.Errorf("keys out of order:\n%s", out)
	}
	// db is failing over: a second failover is refused by the API.
	code, _, errOut = run(t, fc.env(), "replication", "failover", "db")
	if code == 0 || !strings.Contains(errOut, "Replication "+replID(1)+" is failing_over: a failover needs it active or paused (HTTP 409)") {
		t.Errorf("second failover: %d %q", code, errOut)
	}
	// An unplanned failover needs --force; refused before the API.
	n := len(fc.repl.actions)
	code, _, errOut = run(t, fc.env(), "replication", "failover", "dr", "--point", "latest")
	if code == 0 || !strings.Contains(errOut, "--point makes an unplanned failover") || !strings.Contains(errOut, "it needs --force") {
		t.Errorf("--point without --force: %d %q", code, errOut)
	}
	if len(fc.repl.actions) != n {
		t.Errorf("a failover without --force reached the API: %q", fc.repl.actions[n:])
	}
	if code, _, e := run(t, fc.env(), "replication", "failover", "dr", "--point", "latest", "--force"); code != 0 {
		t.Fatal(e)
	}
	// A failback of one that is not failed over: the API's 409.
	fc.addReplication(map[string]any{"name": "back", "status": "failed_over"})
	code, _, errOut = run(t, fc.env(), "replication", "failback", "db")
	if code == 0 || !strings.Contains(errOut, "a failback needs it failed_over (HTTP 409)") {
		t.Errorf("failback of a failing-over one: %d %q", code, errOut)
	}
	if code, _, e := run(t, fc.env(), "replication", "failback", "back"); code != 0 {
		t.Fatal(e)
	}
	fc.addReplication(map[string]any{"name": "back2", "status": "failed_over"})
	if code, _, e := run(t, fc.env(), "replication", "failback", replID(4), "--force"); code != 0 {
		t.Fatal(e)
	}
	want := []string{
		replID(1) + ` {"failover":{}}`,
		replID(1) + ` {"failover":{}}`,
		replID(2) + ` {"failover":{"force":true,"point":"latest"}}`,
		replID(1) + ` {"failback":null}`,
		replID(3) + ` {"failback":null}`,
		replID(4) + ` {"failback":{"force":true}}`,
	}
	if !slices.Equal(fc.repl.actions, want) {
		t.Errorf("actions\n%q\nwant\n%q", fc.repl.actions, want)
	}
	if code, _, e := run(t, fc.env(), "replication", "failover", "ghost"); code == 0 || !strings.Contains(e, "Replication ghost could not be found (HTTP 404)") {
		t.Errorf("unknown replication: %d %q", code, e)
	}
}

// --wait tells each step, prints the failover once done and its RTO; a
// failover in error is a failure.
func TestReplicationFailoverWait(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addReplication(map[string]any{"name": "db"})
	code, out, errOut := run(t, fc.env(), "replication", "failover", "db", "--force", "--wait", "--poll-interval", "10ms",
		"-f", "value", "-c", "status", "-c", "rto_seconds")
	if code != 0 || out != "done\n42.25\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, want := range []string{"failover f0000000-0000-0000-0000-000000000001: running (step quiesce)\n", ": running (step final_cycle)\n", ": running (step flip)\n",
		": done (RTO 42.25s)\n", "failover f0000000-0000-0000-0000-000000000001 done: RTO 42.25s (volume vol-new in RegionTwo)\n"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if n := strings.Count(errOut, "(step quiesce)"); n != 1 {
		t.Errorf("step quiesce told %d times:\n%s", n, errOut)
	}
	if st := fc.repl.items[replID(1)]["status"]; st != "failed_over" {
		t.Fatalf("status after the failover: %v", st)
	}
	code, out, errOut = run(t, fc.env(), "replication", "failback", "db", "--wait", "--poll-interval", "10ms", "-f", "json")
	var fb map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &fb) != nil || fb["kind"] != "failback" || fb["status"] != "done" || fb["rto_seconds"] != 42.25 {
		t.Errorf("failback --wait: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if !strings.Contains(errOut, "failback f0000000-0000-0000-0000-000000000002 done: RTO 42.25s") {
		t.Errorf("failback's RTO not told:\n%s", errOut)
	}
	fc.addReplication(map[string]any{"name": "doomed"})
	code, out, errOut = run(t, fc.env(), "replication", "failover", "doomed", "--wait", "--poll-interval", "10ms", "-f", "value", "-c", "status")
	if code == 0 || out != "error\n" ||
		!strings.Contains(errOut, "ferry: failover f0000000-0000-0000-0000-000000000001 ended in error at step final_cycle: final cycle failed: source unreachable\n") {
		t.Errorf("a failover in error: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if strings.Contains(errOut, "RTO") {
		t.Errorf("a failover in error has an RTO:\n%s", errOut)
	}
}

func TestReplicationFailoversAndFailoverShow(t *testing.T) {
	fc := newFakeCloud(t)
	fc.addReplication(map[string]any{"name": "db"})
	if code, out, e := run(t, fc.env(), "replication", "failovers", "db", "-f", "json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("empty list: %d %q %q", code, out, e)
	}
	if code, _, e := run(t, fc.env(), "replication", "failover", "db", "--wait", "--poll-interval", "10ms"); code != 0 {
		t.Fatal(e)
	}
	if code, _, e := run(t, fc.env(), "replication", "failback", "db"); code != 0 {
		t.Fatal(e)
	}
	code, out, errOut := run(t, fc.env(), "replication", "failovers", "db")
	if code != 0 {
		t.Fatal(errOut)
	}
	for _, h := range []string{"| id ", "| kind ", "| planned ", "| point ", "| status ", "| step ", "| requested_at ", "| rto_seconds ", "42.25", "failback", "running"} {
		if !strings.Contains(out, h) {
			t.Errorf("failovers table lacks %q:\n%s", h, out)
		}
	}
	if strings.Contains(out, "| from ") || strings.Contains(out, "preserved_image") {
		t.Errorf("failovers table has more than the default columns:\n%s", out)
	}
	_, out, _ = run(t, fc.env(), "replication", "failovers", replID(1), "-f", "value", "-c", "kind", "-c", "status")
	if out != "failback running\nfailover done\n" {
		t.Errorf("newest first: %q", out)
	}
	fid := "f0000000-0000-0000-0000-000000000001"
	code, out, errOut = run(t, fc.env(), "replication", "failover-show", "db", fid)
	if code != 0 {
		t.Fatal(errOut)
	}
	for field, want := range map[string]string{
		"kind": "failover", "status": "done", "rto_seconds": "42.25", "preserved_image": "None", "step": "done",
		"from": "region='RegionOne', pool='volumes', image='volume-vol-1', volume_id='vol-1'",
		"to":   "region='RegionTwo', pool='volumes', image='ferry-replica-" + replID(1) + "', volume_id='vol-new'",
	} {
		if got := tableValue(out, field); got != want {
			t.Errorf("failover-show %s = %q, want %q", field, got, want)
		}
	}
	code, _, errOut = run(t, fc.env(), "replication", "failover-show", "db", "nope")
	if code == 0 || errOut != "ferry: Failover nope of replication "+replID(1)+" could not be found (HTTP 404) (Request-ID: req-test)\n" {
		t.Errorf("unknown failover: %d %q", code, errOut)
	}
}

func TestPollStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := poll(ctx, time.Hour, func() (bool, error) {
		calls++
		cancel()
		return false, nil
	})
	if !errors.Is(err, errStopped) || calls != 1 {
		t.Errorf("cancelled: %v after %d calls", err, calls)
	}
	// A check failing because the context ended is a stop too.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := poll(ctx, time.Hour, func() (bool, error) { return false, ctx.Err() }); !errors.Is(err, errStopped) {
		t.Errorf("check failed after the end: %v", err)
	}
	boom := errors.New("boom")
	if err := poll(context.Background(), time.Millisecond, func() (bool, error) { return false, boom }); err != boom {
		t.Errorf("check failed: %v", err)
	}
	calls = 0
	if err := poll(context.Background(), time.Millisecond, func() (bool, error) { calls++; return calls == 3, nil }); err != nil || calls != 3 {
		t.Errorf("done on the third call: %v after %d", err, calls)
	}
}
