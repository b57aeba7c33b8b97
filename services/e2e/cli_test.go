//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/applicationcredentials"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"

	"github.com/ferry-project/ferry/services/internal/keystone"
	"github.com/ferry-project/ferry/services/internal/testenv"
)

var (
	ferryBinOnce sync.Once
	ferryBin     string
	ferryBinErr  error
)

// ferryCLI builds cmd/ferry from this checkout once per test binary.
func ferryCLI(t *testing.T) string {
	t.Helper()
	ferryBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ferry-cli-e2e")
		if err != nil {
			ferryBinErr = err
			return
		}
		ferryBin = filepath.Join(dir, "ferry")
		out, err := exec.Command("go", "build", "-o", ferryBin, "github.com/ferry-project/ferry/cmd/ferry").CombinedOutput()
		if err != nil {
			ferryBinErr = fmt.Errorf("go build ./cmd/ferry: %w: %s", err, out)
		}
	})
	if ferryBinErr != nil {
		t.Fatal(ferryBinErr)
	}
	return ferryBin
}

// cliEnv is an environment with only the OS_* variables given (plus PATH
// and HOME), so nothing of the test runner's own environment leaks in.
func cliEnv(vars map[string]string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

func openrcVars(t *testing.T, user string) map[string]string {
	get := testenv.Openrc(t, user)
	m := map[string]string{}
	for _, k := range []string{"OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME", "OS_USER_DOMAIN_NAME",
		"OS_PROJECT_DOMAIN_NAME", "OS_REGION_NAME", "OS_INTERFACE"} {
		if v := get(k); v != "" {
			m[k] = v
		}
	}
	return m
}

type cliResult struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, ferryCLI(t), args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("ferry %v: %v", args, err)
	}
	t.Logf("$ ferry %s  → exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// The ferry CLI completes a real transfer on the stack (clouds.yaml auth),
// its -f json is the API's object, and its errors are one clear line.
func TestCLITransfer(t *testing.T) {
	one, two := testenv.Get(t, "CEPH_REGIONONE_CONF"), testenv.Get(t, "CEPH_REGIONTWO_CONF")
	adminEnv := cliEnv(map[string]string{"OS_CLIENT_CONFIG_FILE": testenv.Get(t, "OS_CLIENT_CONFIG_FILE"), "OS_CLOUD": "admin"})
	image := fmt.Sprintf("e2e-cli-%d", time.Now().UnixNano())
	rbd(t, one, "create", "volumes/"+image, "--size", "96M")
	t.Cleanup(func() {
		for _, c := range []string{one, two} {
			exec.Command("rbd", "-c", c, "snap", "purge", "volumes/"+image).Run()
			exec.Command("rbd", "-c", c, "rm", "volumes/"+image).Run()
		}
	})
	rbd(t, one, "bench", "--io-type", "write", "--io-size", "1M", "--io-total", "48M", "--io-pattern", "rand", "volumes/"+image)

	r := runCLI(t, adminEnv, "transfer", "create", "--pool", "volumes", "--image", image, "--destination-region", "RegionTwo",
		"--name", image, "--description", "cli e2e", "--wait", "-f", "json")
	if r.code != 0 {
		t.Fatalf("create --wait: exit %d: %s", r.code, r.stderr)
	}
	var tr map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &tr); err != nil {
		t.Fatalf("-f json: %v: %q", err, r.stdout)
	}
	id, _ := tr["id"].(string)
	if tr["status"] != "completed" || tr["name"] != image || tr["source"].(map[string]any)["region"] != "RegionOne" {
		t.Fatalf("transfer: %v", tr)
	}
	if !strings.Contains(r.stderr, ": completed ") {
		t.Errorf("--wait printed no progress lines: %q", r.stderr)
	}
	snap := "volumes/" + image + "@ferry-" + id
	if a, b := testenv.ExportSHA(t, one, snap), testenv.ExportSHA(t, two, snap); a != b {
		t.Fatalf("%s differs between the regions: %s %s", snap, a, b)
	}

	// -f json of show is the API's object.
	api := &client{t: t, url: testenv.Get(t, "FERRY_API_URL"), token: token(t, "admin")}
	_, m := api.do("GET", "/v1/transfers/"+id, "")
	r = runCLI(t, adminEnv, "transfer", "show", image, "-f", "json")
	var shown map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &shown); err != nil || r.code != 0 {
		t.Fatalf("show: %d %v", r.code, err)
	}
	if a, b := mustMarshal(t, shown), mustMarshal(t, m["transfer"]); a != b {
		t.Errorf("ferry transfer show -f json differs from the API's object:\n%s\n%s", a, b)
	}
	if r := runCLI(t, adminEnv, "transfer", "show", id, "-c", "status", "-c", "digest", "-f", "value"); r.code != 0 ||
		r.stdout != "completed\n"+fmt.Sprint(tr["digest"])+"\n" {
		t.Errorf("-c status -c digest -f value: %q", r.stdout)
	}
	if r := runCLI(t, adminEnv, "transfer", "list", "--status", "completed", "-c", "id", "-f", "value"); !strings.Contains(r.stdout, id+"\n") {
		t.Errorf("list lacks %s", id)
	}
	if r := runCLI(t, adminEnv, "transfer", "events", id, "-c", "to_status", "-f", "value"); !strings.HasSuffix(r.stdout, "completed\n") {
		t.Errorf("events do not end in completed: %q", r.stdout)
	}
	if r := runCLI(t, adminEnv, "service", "list", "-f", "value", "-c", "region", "-c", "state"); !strings.Contains(r.stdout, "RegionOne up") ||
		!strings.Contains(r.stdout, "RegionTwo up") {
		t.Errorf("service list: %q", r.stdout)
	}

	// Errors: one line, non-zero exit.
	demo := openrcVars(t, "demo")
	wrong := openrcVars(t, "demo")
	wrong["OS_PASSWORD"] = "not-the-password"
	nowhere := openrcVars(t, "demo")
	nowhere["OS_REGION_NAME"] = "RegionNine"
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{demo, []string{"transfer", "show", id}, "ferry: Transfer " + id + " could not be found (HTTP 404)"},
		{demo, []string{"service", "list"}, "(HTTP 403)"},
		{openrcVars(t, "reader"), []string{"transfer", "create", "--pool", "volumes", "--image", image, "--destination-region", "RegionTwo"}, "(HTTP 403)"},
		{wrong, []string{"transfer", "list"}, "ferry: authentication failed: The request you have made requires authentication (HTTP 401)"},
		{nowhere, []string{"transfer", "list"}, `ferry: no volume-ferry endpoint in the catalog for region "RegionNine"`},
		{openrcVars(t, "admin"), []string{"transfer", "create", "--pool", "volumes", "--image", image, "--destination-region", "RegionNine"}, "(HTTP 400)"},
	} {
		r := runCLI(t, cliEnv(tc.env), tc.args...)
		if r.code == 0 || !strings.HasPrefix(r.stderr, "ferry: ") || !strings.Contains(r.stderr, tc.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("ferry %v: exit %d, stderr %q; want one line with %q", tc.args, r.code, r.stderr, tc.want)
		}
	}

	// Delete: only ended transfers; afterwards it is gone.
	if r := runCLI(t, adminEnv, "transfer", "delete", id); r.code != 0 {
		t.Fatalf("delete: %s", r.stderr)
	}
	if r := runCLI(t, adminEnv, "transfer", "show", id); r.code == 0 || !strings.Contains(r.stderr, "(HTTP 404)") {
		t.Errorf("show after delete: exit %d %q", r.code, r.stderr)
	}
}

// An application credential authenticates the CLI like the openstack CLI.
func TestCLIApplicationCredential(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, _, err := keystone.CredentialsFromEnv(testenv.Openrc(t, "demo")).Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	idc, err := openstack.NewIdentityV3(p, gophercloud.EndpointOpts{Region: "RegionOne", Availability: gophercloud.AvailabilityPublic})
	if err != nil {
		t.Fatal(err)
	}
	res, ok := p.GetAuthResult().(tokens.CreateResult)
	if !ok {
		t.Fatalf("auth result is %T", p.GetAuthResult())
	}
	user, err := res.ExtractUser()
	if err != nil {
		t.Fatal(err)
	}
	userID := user.ID
	ac, err := applicationcredentials.Create(ctx, idc, userID, applicationcredentials.CreateOpts{
		Name: fmt.Sprintf("ferry-e2e-%d", time.Now().UnixNano()), ExpiresAt: ptrTime(time.Now().Add(time.Hour)),
	}).Extract()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { applicationcredentials.Delete(context.Background(), idc, userID, ac.ID) })
	demo := openrcVars(t, "demo")
	env := cliEnv(map[string]string{"OS_AUTH_URL": demo["OS_AUTH_URL"], "OS_AUTH_TYPE": "v3applicationcredential",
		"OS_APPLICATION_CREDENTIAL_ID": ac.ID, "OS_APPLICATION_CREDENTIAL_SECRET": ac.Secret, "OS_REGION_NAME": "RegionOne"})
	if r := runCLI(t, env, "transfer", "list", "-f", "json"); r.code != 0 || !strings.HasPrefix(r.stdout, "[") {
		t.Errorf("transfer list with an application credential: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	env = cliEnv(map[string]string{"OS_AUTH_URL": demo["OS_AUTH_URL"], "OS_APPLICATION_CREDENTIAL_ID": ac.ID,
		"OS_APPLICATION_CREDENTIAL_SECRET": "wrong", "OS_REGION_NAME": "RegionOne"})
	if r := runCLI(t, env, "transfer", "list"); r.code == 0 || !strings.Contains(r.stderr, "(HTTP 401)") {
		t.Errorf("a wrong secret: exit %d %q", r.code, r.stderr)
	}
}

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func ptrTime(t time.Time) *time.Time { return &t }

// On a terminal --wait redraws one line: a bar, bytes, rate and ETA (run
// under script(1) for a pseudo-terminal; the RegionOne agents are slowed so
// that the transfer lasts seconds).
func TestCLIWaitOnATerminal(t *testing.T) {
	if _, err := exec.LookPath("script"); err != nil {
		t.Fatalf("script(1) (util-linux) is needed: %v", err)
	}
	sourceAgents(t)
	image := newImage(t, "e2e-cli-tty", 160)
	cmdline := fmt.Sprintf("%s transfer create --pool volumes --image %s --destination-region RegionTwo --wait --poll-interval 200ms -f value -c status",
		ferryCLI(t), image)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "script", "-qfec", cmdline, "/dev/null")
	cmd.Env = cliEnv(map[string]string{"OS_CLIENT_CONFIG_FILE": testenv.Get(t, "OS_CLIENT_CONFIG_FILE"), "OS_CLOUD": "admin", "TERM": "xterm"})
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ferry --wait on a terminal: %v\n%q", err, out)
	}
	s := string(out)
	frames := strings.Split(s, "\r")
	var bar, rate, eta bool
	for _, f := range frames {
		bar = bar || regexp.MustCompile(`^transferring \[#*\.*\] +\d+\.\d%`).MatchString(f)
		rate = rate || strings.Contains(f, "MiB/s")
		eta = eta || strings.Contains(f, "ETA ")
	}
	if !bar || !rate || !eta || !strings.HasSuffix(strings.TrimSpace(s), "completed") {
		t.Errorf("terminal output (bar %v, rate %v, ETA %v):\n%q", bar, rate, eta, s)
	}
	t.Logf("%d frames; one of them: %q", len(frames), frames[len(frames)/2])
}
