//go:build e2e

package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// kill -9 of the source agent mid-transfer and an immediate restart (same
// host, new process): the API re-dispatches on the new process's
// heartbeats, well before agent_down_time (15 s on the stack), without
// calling the agent down; the copy completes byte-identical; the service
// list shows the agents' cluster health.
func TestAgentRestartedRedispatched(t *testing.T) {
	agents := sourceAgents(t)
	admin := &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "admin")}
	image := newImage(t, "e2e-restart", 256)
	code, m := admin.do("POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "`+image+`"}, "destination": {"region": "RegionTwo"}}}`)
	if code != 202 {
		t.Fatalf("create: %d %v", code, m)
	}
	id := m["transfer"].(map[string]any)["id"].(string)
	victim := admin.holder(id)
	cmd, ok := agents[victim]
	if !ok {
		t.Fatalf("transfer accepted by %q, not one of the test's agents", victim)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
	again := exec.Command(cmd.Path, cmd.Args[1:]...)
	again.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := again.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-again.Process.Pid, syscall.SIGKILL); again.Wait() })
	restarted := time.Now()
	var requeue string
	for requeue == "" {
		if time.Since(restarted) > 15*time.Second {
			t.Fatalf("not re-dispatched within agent_down_time of the restart")
		}
		_, ev := admin.do("GET", "/v1/transfers/"+id+"/events", "")
		for _, e := range ev["events"].([]any) {
			if msg := fmt.Sprint(e.(map[string]any)["message"]); strings.Contains(msg, "re-dispatched") {
				requeue = msg
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(restarted)
	if !strings.Contains(requeue, "no longer runs it") {
		t.Errorf("re-dispatched for another reason: %q", requeue)
	}
	if tr := admin.wait(id); tr["status"] != "completed" {
		t.Fatalf("after the restart: %v", tr)
	}
	snap := "volumes/" + image + "@ferry-" + id
	if a, b := testenv.ExportSHA(t, testenv.Get(t, "CEPH_REGIONONE_CONF"), snap), testenv.ExportSHA(t, testenv.Get(t, "CEPH_REGIONTWO_CONF"), snap); a != b {
		t.Fatalf("%s differs after the re-dispatch", snap)
	}
	_, svcs := admin.do("GET", "/v1/services", "")
	seen := 0
	for _, s := range svcs["services"].([]any) {
		s := s.(map[string]any)
		if s["host"] != victim || s["region"] != "RegionOne" {
			continue
		}
		seen++
		h, _ := s["ceph_health"].(map[string]any)
		if h == nil || !strings.HasPrefix(fmt.Sprint(h["status"]), "HEALTH_") || s["running_transfers"] == nil {
			t.Errorf("service %s: health %v running %v", victim, h, s["running_transfers"])
		}
	}
	if seen != 1 {
		t.Errorf("%d service rows for %s", seen, victim)
	}
	t.Logf("re-dispatched %.1f s after the restart: %s", took.Seconds(), requeue)
}
