//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// sourceAgents replaces the stack's RegionOne agent with two agents of
// the test's own, slowed down so that a transfer lasts long enough to be
// interrupted; the stack's agent is brought back at the end.
func sourceAgents(t *testing.T) map[string]*exec.Cmd {
	t.Helper()

	pidfile := filepath.Join(testenv.Get(t, "STACK_PID_DIR"), "ferry-agent-RegionOne.pid")
	if b, err := os.ReadFile(pidfile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	t.Cleanup(func() {
		root, _ := filepath.Abs("../..")
		cmd := exec.Command(filepath.Join(root, "devstack/stack.sh"), "up")
		cmd.Env = append(os.Environ(), "FERRY_STACK_COMPONENTS=ferry")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("bringing the stack's agent back: %v\n%s", err, out)
		}
	})
	base, err := os.ReadFile(testenv.Get(t, "FERRY_AGENT_REGIONONE_CONF"))
	if err != nil {
		t.Fatal(err)
	}
	agents := map[string]*exec.Cmd{}
	for i, host := range []string{"e2e-a", "e2e-b"} {
		port := 9793 + i
		conf := string(base)
		conf = regexp.MustCompile(`(?m)^host = .*$`).ReplaceAllString(conf, "host = "+host)
		conf = regexp.MustCompile(`(?m)^log_file = .*$`).ReplaceAllString(conf, "log_file = "+filepath.Join(t.TempDir(), host+".log"))
		conf = regexp.MustCompile(`(?m)^data_listen = .*$`).ReplaceAllString(conf, fmt.Sprintf("data_listen = 127.0.0.1:%d", port))
		conf = regexp.MustCompile(`(?m)^data_advertise = .*$`).ReplaceAllString(conf, fmt.Sprintf("data_advertise = localhost:%d", port))
		conf = strings.Replace(conf, "[agent]\n", "[agent]\nbandwidth_limit = 32M\n", 1)
		path := filepath.Join(t.TempDir(), host+".conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(filepath.Join(testenv.Get(t, "FERRY_BIN_DIR"), "ferry-agent"), "--config-file", path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
		})
		agents[host] = cmd
	}
	time.Sleep(2 * time.Second) // their queues bound
	return agents
}

// newImage makes a source image with size MiB of data.
func newImage(t *testing.T, prefix string, mib int) string {
	t.Helper()
	one, two := testenv.Get(t, "CEPH_REGIONONE_CONF"), testenv.Get(t, "CEPH_REGIONTWO_CONF")
	image := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
	rbd(t, one, "create", "volumes/"+image, "--size", fmt.Sprintf("%dM", mib))
	t.Cleanup(func() {
		for _, c := range []string{one, two} {
			exec.Command("rbd", "-c", c, "snap", "purge", "volumes/"+image).Run()
			exec.Command("rbd", "-c", c, "rm", "volumes/"+image).Run()
		}
	})
	rbd(t, one, "bench", "--io-type", "write", "--io-size", "4M", "--io-total", fmt.Sprintf("%dM", mib), "--io-pattern", "seq", "volumes/"+image)
	return image
}

// holder waits until the transfer is transferring and returns the agent
// that accepted it (from its events).
func (c *client) holder(id string) string {
	c.t.Helper()
	re := regexp.MustCompile(`agent (\S+) accepted`)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		_, m := c.do("GET", "/v1/transfers/"+id, "")
		st := m["transfer"].(map[string]any)["status"]
		if st == "transferring" {
			_, ev := c.do("GET", "/v1/transfers/"+id+"/events", "")
			if mm := re.FindStringSubmatch(fmt.Sprint(ev)); mm != nil {
				return mm[1]
			}
		}
		if st == "completed" || st == "error" {
			c.t.Fatalf("transfer ended %s before it could be interrupted", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatal("transfer never reached transferring")
	return ""
}

// kill -9 of the source agent mid-transfer while a second agent of the
// region runs: the API notices the missing heartbeats, re-dispatches, the
// other agent resumes, and the copy is byte-identical.
func TestAgentKilledMidTransfer(t *testing.T) {
	agents := sourceAgents(t)
	admin := &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "admin")}
	image := newImage(t, "e2e-kill", 256)
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
	start := time.Now()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	tr := admin.wait(id)
	if tr["status"] != "completed" {
		t.Fatalf("after the kill: %v", tr)
	}
	_, ev := admin.do("GET", "/v1/transfers/"+id+"/events", "")
	if !strings.Contains(fmt.Sprint(ev), "re-dispatched") {
		t.Errorf("no re-dispatch in the events: %v", ev)
	}
	snap := "volumes/" + image + "@ferry-" + id
	if a, b := testenv.ExportSHA(t, testenv.Get(t, "CEPH_REGIONONE_CONF"), snap), testenv.ExportSHA(t, testenv.Get(t, "CEPH_REGIONTWO_CONF"), snap); a != b {
		t.Fatalf("%s differs after the re-dispatch", snap)
	}
	t.Logf("killed %s; completed by the other agent %.1f s later", victim, time.Since(start).Seconds())
}

// Cancel of a running transfer stops it within seconds and leaves no
// snapshot at the destination; cancel right after creation (queued or
// just accepted) ends cancelled too.
func TestCancel(t *testing.T) {
	sourceAgents(t)
	admin := &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "admin")}
	image := newImage(t, "e2e-cancel", 256)
	body := `{"transfer": {"source": {"region": "RegionOne", "pool": "volumes", "image": "` + image + `"}, "destination": {"region": "RegionTwo"}}}`
	_, m := admin.do("POST", "/v1/transfers", body)
	id := m["transfer"].(map[string]any)["id"].(string)
	admin.holder(id)
	start := time.Now()
	if code, m := admin.do("POST", "/v1/transfers/"+id+"/action", `{"cancel": null}`); code != 202 {
		t.Fatalf("cancel: %d %v", code, m)
	}
	tr := admin.wait(id)
	if tr["status"] != "cancelled" {
		t.Fatalf("after cancel: %v", tr)
	}
	took := time.Since(start)
	if took > 10*time.Second {
		t.Errorf("cancel took %s", took)
	}
	if out, err := exec.Command("rbd", "-c", testenv.Get(t, "CEPH_REGIONTWO_CONF"), "snap", "ls", "volumes/"+image).CombinedOutput(); err == nil && strings.Contains(string(out), "ferry-"+id) {
		t.Errorf("a cancelled transfer left its snapshot at the destination:\n%s", out)
	}
	t.Logf("running transfer cancelled in %.1f s", took.Seconds())

	// The garbage collector ([api] cleanup_grace, 20 s on the stack)
	// removes what the cancelled transfer left: the snapshot Ferry took
	// on the source, and the destination image it created and never
	// completed.
	gcStart := time.Now()
	for {
		src, _ := exec.Command("rbd", "-c", testenv.Get(t, "CEPH_REGIONONE_CONF"), "snap", "ls", "volumes/"+image).CombinedOutput()
		_, dstErr := exec.Command("rbd", "-c", testenv.Get(t, "CEPH_REGIONTWO_CONF"), "info", "volumes/"+image).CombinedOutput()
		if !strings.Contains(string(src), "ferry-"+id) && dstErr != nil {
			t.Logf("leftovers of the cancelled transfer removed %.1f s after the cancel", time.Since(gcStart).Seconds()+took.Seconds())
			break
		}
		if time.Since(gcStart) > 90*time.Second {
			t.Fatalf("the cancelled transfer's leftovers are still there after 90 s: source snapshots:\n%s destination image present: %v", src, dstErr == nil)
		}
		time.Sleep(time.Second)
	}

	_, m = admin.do("POST", "/v1/transfers", body)
	id2 := m["transfer"].(map[string]any)["id"].(string)
	if code, m := admin.do("POST", "/v1/transfers/"+id2+"/action", `{"cancel": null}`); code != 202 {
		t.Fatalf("cancel at once: %d %v", code, m)
	}
	if tr := admin.wait(id2); tr["status"] != "cancelled" {
		t.Errorf("cancelled at once: %v", tr)
	}
}
