//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-project/ferry/rpc/amqp/amqptest"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

// rewrite sets option lines of an INI text (every occurrence of key).
func rewrite(conf string, kv map[string]string) string {
	for k, v := range kv {
		conf = regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(k)+` = .*$`).ReplaceAllString(conf, k+" = "+v)
	}
	return conf
}

func startDaemon(t *testing.T, bin, conf string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(testenv.Get(t, "FERRY_BIN_DIR"), bin), "--config-file", conf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
}

// A broker stopped and started while transfers are requested: the API
// keeps accepting them (outbox), none is lost and none runs twice. A
// ferry-api and two agents of the test's own use a private RabbitMQ node.
func TestBrokerOutage(t *testing.T) {
	b := amqptest.StartBroker(t)
	dir := t.TempDir()
	ports := amqptest.FreePorts(t, 3)
	apiConf, err := os.ReadFile(testenv.Get(t, "FERRY_API_CONF"))
	if err != nil {
		t.Fatal(err)
	}
	api := filepath.Join(dir, "api.conf")
	os.WriteFile(api, []byte(rewrite(string(apiConf), map[string]string{
		"transport_url": b.URL, "log_file": filepath.Join(dir, "api.log"),
		"connection": "sqlite:///" + filepath.Join(dir, "ferry.sqlite"), "bind_port": fmt.Sprint(ports[0]),
		// The private broker's only user is guest, for every region.
		"agent_users": "RegionOne:guest,RegionTwo:guest",
	})), 0o600)
	if out, err := exec.Command(filepath.Join(testenv.Get(t, "FERRY_BIN_DIR"), "ferry-manage"), "--config-file", api, "db", "sync").CombinedOutput(); err != nil {
		t.Fatalf("db sync: %v %s", err, out)
	}
	startDaemon(t, "ferry-api", api)
	for i, r := range []string{"REGIONONE", "REGIONTWO"} {
		base, err := os.ReadFile(testenv.Get(t, "FERRY_AGENT_"+r+"_CONF"))
		if err != nil {
			t.Fatal(err)
		}
		conf := filepath.Join(dir, r+".conf")
		os.WriteFile(conf, []byte(rewrite(string(base), map[string]string{
			"transport_url": b.URL, "host": "outage-" + strings.ToLower(r), "log_file": filepath.Join(dir, r+".log"),
			"data_listen": fmt.Sprintf("127.0.0.1:%d", ports[1+i]), "data_advertise": fmt.Sprintf("localhost:%d", ports[1+i]),
		})), 0o600)
		startDaemon(t, "ferry-agent", conf)
	}
	admin := &client{t: t, url: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), token: token(t, "admin")}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(admin.url + "/healthcheck")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("private ferry-api not up: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Both agents heartbeating through the private broker.
	for {
		code, m := admin.do("GET", "/v1/services", "")
		if code == 200 && strings.Count(fmt.Sprint(m), "state:up") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("private agents not up: %d %v", code, m)
		}
		time.Sleep(300 * time.Millisecond)
	}

	image := newImage(t, "e2e-outage", 32)
	b.Stop()
	var ids []string
	for i := range 3 {
		code, m := admin.do("POST", "/v1/transfers", fmt.Sprintf(`{"transfer": {"name": "outage-%d", "source": {"region": "RegionOne", "pool": "volumes", "image": "%s"}, "destination": {"region": "RegionTwo", "image": "%s-%d"}}}`, i, image, image, i))
		if code != http.StatusAccepted {
			t.Fatalf("create during the outage: %d %v", code, m)
		}
		ids = append(ids, m["transfer"].(map[string]any)["id"].(string))
	}
	t.Cleanup(func() {
		for i := range 3 {
			c := testenv.Get(t, "CEPH_REGIONTWO_CONF")
			exec.Command("rbd", "-c", c, "snap", "purge", fmt.Sprintf("volumes/%s-%d", image, i)).Run()
			exec.Command("rbd", "-c", c, "rm", fmt.Sprintf("volumes/%s-%d", image, i)).Run()
		}
	})
	// A fourth, cancelled while surely queued (nothing can take it): it
	// must stay cancelled once its start reaches an agent after all.
	code, m := admin.do("POST", "/v1/transfers", fmt.Sprintf(`{"transfer": {"name": "outage-cancelled", "source": {"region": "RegionOne", "pool": "volumes", "image": "%s"}, "destination": {"region": "RegionTwo", "image": "%s-c"}}}`, image, image))
	if code != http.StatusAccepted {
		t.Fatalf("create: %d %v", code, m)
	}
	cancelled := m["transfer"].(map[string]any)["id"].(string)
	t.Cleanup(func() {
		c := testenv.Get(t, "CEPH_REGIONTWO_CONF")
		exec.Command("rbd", "-c", c, "snap", "purge", "volumes/"+image+"-c").Run()
		exec.Command("rbd", "-c", c, "rm", "volumes/"+image+"-c").Run()
	})
	if code, m := admin.do("POST", "/v1/transfers/"+cancelled+"/action", `{"cancel": null}`); code != 202 {
		t.Fatalf("cancel of a queued transfer: %d %v", code, m)
	}
	time.Sleep(3 * time.Second)
	for _, id := range ids {
		if _, m := admin.do("GET", "/v1/transfers/"+id, ""); m["transfer"].(map[string]any)["status"] != "queued" {
			t.Errorf("transfer %s moved while the broker was down: %v", id, m)
		}
	}
	b.Start()
	for i, id := range ids {
		tr := admin.wait(id)
		if tr["status"] != "completed" {
			t.Errorf("transfer %s after the outage: %v", id, tr)
			continue
		}
		_, ev := admin.do("GET", "/v1/transfers/"+id+"/events", "")
		if n := strings.Count(fmt.Sprint(ev), "to_status:accepted"); n != 1 {
			t.Errorf("transfer %s accepted %d times", id, n)
		}
		a := testenv.ExportSHA(t, testenv.Get(t, "CEPH_REGIONONE_CONF"), "volumes/"+image+"@ferry-"+id)
		d := testenv.ExportSHA(t, testenv.Get(t, "CEPH_REGIONTWO_CONF"), fmt.Sprintf("volumes/%s-%d@ferry-%s", image, i, id))
		if a != d {
			t.Errorf("transfer %s: checksums differ", id)
		}
	}
	if tr := admin.wait(cancelled); tr["status"] != "cancelled" {
		t.Errorf("the transfer cancelled while queued: %v", tr)
	}
	time.Sleep(2 * time.Second) // an agent that took its start anyway is told to stop
	if _, m := admin.do("GET", "/v1/transfers/"+cancelled, ""); m["transfer"].(map[string]any)["status"] != "cancelled" {
		t.Errorf("the cancelled transfer changed: %v", m)
	}
	if out, _ := exec.Command("rbd", "-c", testenv.Get(t, "CEPH_REGIONTWO_CONF"), "snap", "ls", "volumes/"+image+"-c").CombinedOutput(); strings.Contains(string(out), "ferry-"+cancelled) {
		t.Errorf("the cancelled transfer left a complete-looking copy:\n%s", out)
	}
}
