//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/quotasets"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// osc runs the openstack CLI as user (clouds.yaml) in region.
func osc(t *testing.T, user, region string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("openstack", append([]string{"--os-cloud", user, "--os-region-name", region}, args...)...)
	cmd.Env = append(cinderDebianEnv(), "OS_CLIENT_CONFIG_FILE="+testenv.Get(t, "OS_CLIENT_CONFIG_FILE"))
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), fmt.Errorf("openstack %v: %w: %s", args, err, ee.Stderr)
	}
	return string(out), err
}

func mustOSC(t *testing.T, user, region string, args ...string) string {
	t.Helper()
	out, err := osc(t, user, region, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// oscVolume creates a volume as user in region with the openstack CLI and
// waits until it is available; it is deleted when the test ends.
func oscVolume(t *testing.T, user, region string, sizeGiB int) string {
	t.Helper()
	name := fmt.Sprintf("e2e-vol-%d", time.Now().UnixNano())
	id := mustOSC(t, user, region, "volume", "create", "--size", fmt.Sprint(sizeGiB), "--description", "moved by ferry e2e",
		"--property", "purpose=e2e", name, "-f", "value", "-c", "id")
	t.Cleanup(func() { osc(t, "admin", region, "volume", "delete", "--force", id) })
	ctx := context.Background()
	c := cinderClient(t, ctx, user, region)
	cinderWait(t, "volume "+id, "available", 2*time.Minute, cinderVolumeStatus(ctx, c, id))
	return id
}

// A Cinder volume moved by the ferry CLI to another region: it becomes an
// available volume of demo's project there with the same size, name and
// data, and neither side keeps a Ferry snapshot.
func TestVolumeMove(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	one, two := testenv.Get(t, "CEPH_REGIONONE_CONF"), testenv.Get(t, "CEPH_REGIONTWO_CONF")
	id := oscVolume(t, "demo", "RegionOne", 1)
	// No Nova to attach it: write into its image with the stack's admin key.
	rbd(t, one, "bench", "--io-type", "write", "--io-size", "1M", "--io-total", "24M", "--io-pattern", "rand", "volumes/volume-"+id)
	srcSHA := testenv.ExportSHA(t, one, "volumes/volume-"+id)

	demo := cliEnv(openrcVars(t, "demo"))
	r := runCLI(t, demo, "transfer", "create", "--volume", id, "--destination-region", "RegionTwo", "--name", "e2e-volume", "--wait", "-f", "json")
	if r.code != 0 {
		t.Fatalf("ferry transfer create --volume --wait: exit %d: %s", r.code, r.stderr)
	}
	var tr map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &tr); err != nil {
		t.Fatal(err)
	}
	dst := tr["destination"].(map[string]any)
	newID, _ := dst["volume_id"].(string)
	if tr["status"] != "completed" || newID == "" || tr["source"].(map[string]any)["volume_id"] != id {
		t.Fatalf("transfer: %v", tr)
	}
	t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", newID) })
	if r := runCLI(t, demo, "transfer", "events", tr["id"].(string), "-c", "to_status", "-f", "value"); !strings.Contains(r.stdout, "finalizing\ncompleted") {
		t.Errorf("the transfer did not pass through finalizing: %q", r.stdout)
	}

	// The openstack CLI, as demo, in RegionTwo: available, same size, name, properties.
	var shown map[string]any
	if err := json.Unmarshal([]byte(mustOSC(t, "demo", "RegionTwo", "volume", "show", newID, "-f", "json")), &shown); err != nil {
		t.Fatal(err)
	}
	if shown["status"] != "available" || shown["size"] != float64(1) || shown["description"] != "moved by ferry e2e" {
		t.Errorf("volume %s in RegionTwo: %v", newID, shown)
	}
	if props := fmt.Sprint(shown["properties"]); !strings.Contains(props, "purpose") || !strings.Contains(props, "ferry_transfer_id") {
		t.Errorf("properties not carried over: %s", props)
	}
	demoProject := mustOSC(t, "admin", "RegionOne", "project", "show", "demo", "-f", "value", "-c", "id")
	if owner := mustOSC(t, "admin", "RegionTwo", "volume", "show", newID, "-f", "value", "-c", "os-vol-tenant-attr:tenant_id"); owner != demoProject {
		t.Errorf("volume %s belongs to %s, want demo's project %s", newID, owner, demoProject)
	}
	if got := testenv.ExportSHA(t, two, "volumes/volume-"+newID); got != srcSHA {
		t.Errorf("data differs: source %s, destination %s", srcSHA, got)
	}
	if s := testenv.Snapshots(t, one, "volumes/volume-"+id); len(s) != 0 {
		t.Errorf("source volume keeps snapshots %v", s)
	}
	if s := testenv.Snapshots(t, two, "volumes/volume-"+newID); len(s) != 0 {
		t.Errorf("destination volume keeps snapshots %v", s)
	}
	// The grant Ferry took on demo's project for the registration is gone.
	if out := mustOSC(t, "admin", "RegionOne", "role", "assignment", "list", "--project", "demo", "--user", "ferry", "-f", "value"); out != "" {
		t.Errorf("the service user still has roles on demo's project: %s", out)
	}
	// Cinder can delete the source volume: no Ferry snapshot in the way.
	mustOSC(t, "demo", "RegionOne", "volume", "delete", id)
	ctx := context.Background()
	c1 := cinderClient(t, ctx, "demo", "RegionOne")
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := volumes.Get(ctx, c1, id).Extract()
		if cinderGone(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("source volume %s not deleted: %v", id, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if out, err := exec.Command("rbd", "-c", one, "info", "volumes/volume-"+id).CombinedOutput(); err == nil {
		t.Errorf("image volume-%s survived the volume's deletion: %s", id, out)
	}
	if out, _ := exec.Command("rbd", "-c", one, "trash", "ls", "volumes").CombinedOutput(); strings.Contains(string(out), "volume-"+id) {
		t.Errorf("image volume-%s went to the trash, not away: %s", id, out)
	}
}

// Refusals of volume sources, each a clear 4xx; and a transfer whose
// caller's token is revoked right after the request still completes.
func TestVolumeRefusalsAndRevokedToken(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	url := testenv.Get(t, "FERRY_API_URL")
	id := oscVolume(t, "demo", "RegionOne", 1)
	body := func(vol string) string {
		return `{"transfer": {"source": {"region": "RegionOne", "volume_id": "` + vol + `"}, "destination": {"region": "RegionTwo"}}}`
	}
	alt := &client{t: t, url: url, token: token(t, "alt")}
	if code, m := alt.do("POST", "/v1/transfers", body(id)); code != 404 || !strings.Contains(fmt.Sprint(m), "could not be found") {
		t.Errorf("alt moving demo's volume: %d %v", code, m)
	}
	demo := &client{t: t, url: url, token: token(t, "demo")}
	if code, m := demo.do("POST", "/v1/transfers", body(uuid.NewString())); code != 404 {
		t.Errorf("a missing volume: %d %v", code, m)
	}
	mustOSC(t, "admin", "RegionOne", "volume", "set", "--state", "error", id)
	if code, m := demo.do("POST", "/v1/transfers", body(id)); code != 400 || !strings.Contains(fmt.Sprint(m), "is error") {
		t.Errorf("a volume in error: %d %v", code, m)
	}
	mustOSC(t, "admin", "RegionOne", "volume", "set", "--state", "available", id)

	// The caller's token dies right after the request: the transfer, its
	// registration included, does not need it.
	tok := token(t, "demo")
	caller := &client{t: t, url: url, token: tok}
	code, m := caller.do("POST", "/v1/transfers", body(id))
	if code != 202 {
		t.Fatalf("create: %d %v", code, m)
	}
	tid := m["transfer"].(map[string]any)["id"].(string)
	req, _ := http.NewRequest("DELETE", testenv.Get(t, "OS_AUTH_URL")+"/auth/tokens", nil)
	req.Header.Set("X-Auth-Token", tok)
	req.Header.Set("X-Subject-Token", tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("revoking the token: %v %v", err, resp)
	}
	resp.Body.Close()
	// Keystone no longer knows it (ferry-api may still hold it in its
	// validation cache for [keystone_authtoken] token_cache_time, as
	// keystonemiddleware does).
	admin := &client{t: t, url: url, token: token(t, "admin")}
	req, _ = http.NewRequest("GET", testenv.Get(t, "OS_AUTH_URL")+"/auth/tokens", nil)
	req.Header.Set("X-Auth-Token", admin.token)
	req.Header.Set("X-Subject-Token", tok)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 404 {
		t.Fatalf("the revoked token is still valid in Keystone: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
	tr := admin.wait(tid)
	newID, _ := tr["destination"].(map[string]any)["volume_id"].(string)
	if tr["status"] != "completed" || newID == "" {
		t.Fatalf("transfer after the token's revocation: %v", tr)
	}
	t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", newID) })
	if out := mustOSC(t, "demo", "RegionTwo", "volume", "show", newID, "-f", "value", "-c", "status"); out != "available" {
		t.Errorf("volume %s: %s", newID, out)
	}

	// An admin moves demo's volume: the transfer is the admin's, the new
	// volume demo's.
	code, m = admin.do("POST", "/v1/transfers", body(id))
	if code != 202 {
		t.Fatalf("admin's create: %d %v", code, m)
	}
	tr = admin.wait(m["transfer"].(map[string]any)["id"].(string))
	adminID, _ := tr["destination"].(map[string]any)["volume_id"].(string)
	if tr["status"] != "completed" || adminID == "" {
		t.Fatalf("admin's transfer: %v", tr)
	}
	t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", adminID) })
	demoProject := mustOSC(t, "admin", "RegionOne", "project", "show", "demo", "-f", "value", "-c", "id")
	if owner := mustOSC(t, "admin", "RegionTwo", "volume", "show", adminID, "-f", "value", "-c", "os-vol-tenant-attr:tenant_id"); owner != demoProject {
		t.Errorf("the volume an admin moved belongs to %s, want demo's project %s", owner, demoProject)
	}
	if tr["project_id"] == demoProject {
		t.Errorf("the admin's transfer is in demo's project")
	}
}

// killAPI kills the stack's ferry-api (-9).
func killAPI(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.Get(t, "STACK_PID_DIR"), "ferry-api.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// restartAPI brings the stack's ferry-api back (stack.sh up, ferry only).
func restartAPI(t *testing.T) {
	t.Helper()
	root, _ := filepath.Abs("../..")
	cmd := exec.Command(filepath.Join(root, "devstack/stack.sh"), "up")
	cmd.Env = append(os.Environ(), "FERRY_STACK_COMPONENTS=ferry")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restarting ferry-api: %v\n%s", err, out)
	}
}

// ferry-api killed (-9) while it registers a copy with Cinder: after it
// restarts, the registration resumes; there is exactly one new volume and
// no grant is left on demo's project.
func TestVolumeFinalizeSurvivesAPIKill(t *testing.T) {
	if os.Getenv("FERRY_STACK_CINDER") == "0" {
		t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
	}
	url := testenv.Get(t, "FERRY_API_URL")
	id := oscVolume(t, "demo", "RegionOne", 1)
	demo := &client{t: t, url: url, token: token(t, "demo")}
	code, m := demo.do("POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionOne", "volume_id": "`+id+`"}, "destination": {"region": "RegionTwo"}}}`)
	if code != 202 {
		t.Fatalf("create: %d %v", code, m)
	}
	tid := m["transfer"].(map[string]any)["id"].(string)
	killed := false
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		code, m := demo.do("GET", "/v1/transfers/"+tid, "")
		if code != 200 {
			t.Fatalf("show: %d %v", code, m)
		}
		st := m["transfer"].(map[string]any)["status"]
		if st == "finalizing" {
			killAPI(t)
			killed = true
			break
		}
		if st == "completed" || st == "error" || st == "cancelled" {
			break
		}
	}
	if !killed {
		restartAPI(t)
		t.Fatal("the transfer was never seen finalizing: nothing was interrupted")
	}
	t.Logf("ferry-api killed while transfer %s was finalizing", tid)
	time.Sleep(500 * time.Millisecond)
	restartAPI(t)
	admin := &client{t: t, url: url, token: token(t, "admin")}
	tr := admin.wait(tid)
	newID, _ := tr["destination"].(map[string]any)["volume_id"].(string)
	if tr["status"] != "completed" || newID == "" {
		t.Fatalf("after the restart: %v", tr)
	}
	t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", newID) })
	ctx := context.Background()
	pages, err := volumes.List(cinderClient(t, ctx, "demo", "RegionTwo"), volumes.ListOpts{Metadata: map[string]string{"ferry_transfer_id": tid}}).AllPages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := volumes.ExtractVolumes(pages)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, v := range vs {
		if v.Metadata["ferry_transfer_id"] == tid {
			ids = append(ids, v.ID)
		}
	}
	if len(ids) != 1 || ids[0] != newID {
		t.Errorf("volumes of transfer %s in RegionTwo: %v, want only %s", tid, ids, newID)
	}
	if out := mustOSC(t, "admin", "RegionOne", "role", "assignment", "list", "--project", "demo", "--user", "ferry", "-f", "value"); out != "" {
		t.Errorf("the service user still has roles on demo's project: %s", out)
	}
}

// The owner's Cinder quota in the destination region is checked before the
// copy: with demo's gigabytes quota in RegionTwo at 0, moving demo's volume
// is refused with 413 and nothing is copied or created.
func TestVolumeCinderQuota(t *testing.T) {
	vol := oscVolume(t, "demo", "RegionOne", 1)
	demoProject := mustOSC(t, "admin", "RegionOne", "project", "show", "demo", "-f", "value", "-c", "id")
	ctx := context.Background()
	admin := cinderClient(t, ctx, "admin", "RegionTwo")
	q, err := quotasets.Get(ctx, admin, demoProject).Extract()
	if err != nil {
		t.Fatal(err)
	}
	old := q.Gigabytes
	t.Cleanup(func() {
		if _, err := quotasets.Update(ctx, admin, demoProject, quotasets.UpdateOpts{Gigabytes: &old}).Extract(); err != nil {
			t.Errorf("restoring demo's quota in RegionTwo: %v", err)
		}
	})
	zero := 0
	if _, err := quotasets.Update(ctx, admin, demoProject, quotasets.UpdateOpts{Gigabytes: &zero}).Extract(); err != nil {
		t.Fatal(err)
	}
	demo := &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "demo")}
	count := func() int {
		t.Helper()
		code, m := demo.do("GET", "/v1/transfers?limit=1000", "")
		if code != 200 {
			t.Fatalf("list: %d %v", code, m)
		}
		return len(m["transfers"].([]any))
	}
	before := count()
	code, m := demo.do("POST", "/v1/transfers", `{"transfer": {"source": {"region": "RegionOne", "volume_id": "`+vol+`"}, "destination": {"region": "RegionTwo"}}}`)
	ol, _ := m["overLimit"].(map[string]any)
	if code != 413 || ol == nil || !strings.Contains(fmt.Sprint(ol["message"]), "Cinder quota exceeded") {
		t.Fatalf("a volume over the destination's Cinder quota: %d %v", code, m)
	}
	if after := count(); after != before {
		t.Errorf("demo had %d transfers, %d after the refusal", before, after)
	}
	if s := testenv.Snapshots(t, testenv.Get(t, "CEPH_REGIONONE_CONF"), "volumes/volume-"+vol); len(s) != 0 {
		t.Errorf("the refused transfer took snapshots %v", s)
	}
	t.Logf("refused: %v", ol["message"])
}
