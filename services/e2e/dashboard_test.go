//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// browser is a headless Chromium (Debian's) with a fresh profile, logged
// into the stack's dashboard as one user.
type browser struct {
	t    *testing.T
	ctx  context.Context
	base string
	arts string
}

func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "chromium", "chromium-browser"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("chromium is not installed (./tox-like-ci -e e2e installs it)")
	return ""
}

func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("FERRY_ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join(testenv.Get(t, "FERRY_STACK_DIR"), "artifacts", "dashboard")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1360, 820),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelC(); cancelA() })
	// Confirmation dialogs (Cancel, Retry) are accepted.
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for _, err := range dialogs {
			if err != nil {
				return
			}
			chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	return &browser{t: t, ctx: ctx, base: testenv.Get(t, "FERRY_API_URL") + "/dashboard", arts: artifactsDir(t)}
}

// do runs steps with a timeout, failing the test on error.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.shot("failure-" + strings.ReplaceAll(what, " ", "-"))
		b.t.Fatalf("%s: %v", what, err)
	}
}

func eval[T any](b *browser, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// waitJS polls a JavaScript predicate until it is true (a predicate that
// throws, as during a reload, is false).
func (b *browser) waitJS(what, js string, timeout time.Duration) {
	b.t.Helper()
	js = "(function(){ try { return !!(" + js + "); } catch (e) { return false; } })()"
	ctx, cancel := context.WithTimeout(b.ctx, timeout+5*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](js, chromedp.WithPollingTimeout(timeout), chromedp.WithPollingInterval(200*time.Millisecond))); err != nil {
		b.shot("failure-" + strings.ReplaceAll(what, " ", "-"))
		b.t.Fatalf("waiting for %s: %v", what, err)
	}
}

func (b *browser) shot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	path := filepath.Join(b.arts, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	b.t.Logf("screenshot: %s", path)
	return path
}

func (b *browser) fillLogin(user, password, project string) {
	b.t.Helper()
	b.do("login form",
		chromedp.Navigate(b.base+"/auth/login"),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
		chromedp.SendKeys(chromedp.CSS("#username"), user),
		chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.SendKeys(chromedp.CSS("#project"), project),
	)
}

// login logs in with the stack's password of user, into project.
func (b *browser) login(user, project string) {
	b.t.Helper()
	b.fillLogin(user, testenv.Get(b.t, strings.ToUpper(user)+"_PASSWORD"), project)
	b.do("log in as "+user,
		chromedp.Click(chromedp.CSS("#login-button")),
		chromedp.WaitVisible(chromedp.CSS("#transfers")),
	)
	if got := eval[string](b, `document.getElementById("user-name").textContent`); got != user {
		b.t.Fatalf("logged in as %q, want %q", got, user)
	}
}

// rowOf is the id of the table's row of the transfer named name ("" when
// absent).
func (b *browser) rowOf(name string) string {
	return eval[string](b, fmt.Sprintf(`(function(){ for (const a of document.querySelectorAll("#transfers a.tname")) { if (a.textContent.trim() === %q) return a.closest("tr").dataset.id; } return ""; })()`, name))
}

// cell is a property of an element of the transfer's table row, "" when
// absent (the table may be reloading).
func (b *browser) cell(id, sel, prop string) string {
	b.t.Helper()
	return eval[string](b, fmt.Sprintf(`(function(){ try { const e = document.querySelector('#transfers tr[data-id=%q] %s'); return String(e ? e.%s : ""); } catch (e) { return ""; } })()`, id, sel, prop))
}

func (b *browser) createTransfer(name, image string) {
	b.t.Helper()
	b.do("create "+name,
		chromedp.Navigate(b.base+"/project/transfers"),
		chromedp.Click(chromedp.CSS("#create-transfer")),
		chromedp.WaitVisible(chromedp.CSS("#create-form")),
		chromedp.SendKeys(chromedp.CSS("#name"), name),
		chromedp.SendKeys(chromedp.CSS("#description"), "created by the dashboard e2e test"),
		chromedp.SendKeys(chromedp.CSS("#pool"), "volumes"),
		chromedp.SendKeys(chromedp.CSS("#image"), image),
		chromedp.SetValue(chromedp.CSS("#mode"), "full"),
	)
}

// The dashboard in a real browser against the stack's ferry-api, Keystone
// and agents: logins (bad, reader, member, admin, another project),
// create, live progress to completion, cancel, detail, services.
func TestDashboard(t *testing.T) {
	start := time.Now()
	api := testenv.Get(t, "FERRY_API_URL")
	admin := &client{t: t, url: api, token: token(t, "admin")}
	shots := map[string]string{}

	// Login page and a bad password.
	t.Run("BadLogin", func(t *testing.T) {
		b := newBrowser(t)
		b.fillLogin("demo", "not-the-password", "demo")
		shots["login"] = b.shot("login")
		b.do("bad login", chromedp.Click(chromedp.CSS("#login-button")), chromedp.WaitVisible(chromedp.CSS("#login-error")))
		if msg := eval[string](b, `document.getElementById("login-error").textContent`); msg != "Invalid credentials." {
			t.Errorf("bad login says %q", msg)
		}
		b.shot("login-error")
	})

	// A reader of demo sees the table but no Create button and no actions.
	t.Run("Reader", func(t *testing.T) {
		b := newBrowser(t)
		b.login("reader", "demo")
		if n := eval[int](b, `document.querySelectorAll("#create-transfer, #transfers form").length`); n != 0 {
			t.Errorf("the reader sees %d write controls", n)
		}
		if n := eval[int](b, `document.querySelectorAll("#nav-services").length`); n != 0 {
			t.Error("the reader sees the admin services link")
		}
	})

	// A member of demo may not name a raw image (transfer:create:image_source
	// is admin-only by default): the API's 403 message shows, the form is
	// kept.
	t.Run("MemberImageSourceRefused", func(t *testing.T) {
		b := newBrowser(t)
		b.login("demo", "demo")
		b.createTransfer("demo-refused", "no-such-image")
		b.do("submit", chromedp.Click(chromedp.CSS("#create-submit")), chromedp.WaitVisible(chromedp.CSS("#form-error")))
		msg := eval[string](b, `document.getElementById("form-error").textContent`)
		if !strings.Contains(msg, "Policy doesn't allow transfer:create") {
			t.Errorf("form error %q", msg)
		}
		if v := eval[string](b, `document.getElementById("image").value`); v != "no-such-image" {
			t.Errorf("the form was not kept: image %q", v)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	// A member of demo moves a Cinder volume of demo's from the form; it
	// completes in the table and shows the new volume.
	var demoID string
	t.Run("MemberMovesVolume", func(t *testing.T) {
		if os.Getenv("FERRY_STACK_CINDER") == "0" {
			t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
		}
		vol := oscVolume(t, "demo", "RegionOne", 1)
		name := fmt.Sprintf("dash-volume-%d", time.Now().Unix())
		b := newBrowser(t)
		b.login("demo", "demo")
		b.do("create "+name,
			chromedp.Navigate(b.base+"/project/transfers"),
			chromedp.Click(chromedp.CSS("#create-transfer")),
			chromedp.WaitVisible(chromedp.CSS("#create-form")),
			chromedp.SendKeys(chromedp.CSS("#name"), name),
			chromedp.SendKeys(chromedp.CSS("#volume_id"), vol),
			chromedp.Click(chromedp.CSS("#create-submit")),
			chromedp.WaitVisible(chromedp.CSS("#transfers")),
		)
		if demoID = b.rowOf(name); demoID == "" {
			t.Fatalf("%s is not in the table: %s", name, eval[string](b, `(document.querySelector(".alert-error")||{}).textContent||""`))
		}
		demoAPI := &client{t: t, url: api, token: token(t, "demo")}
		tr := demoAPI.wait(demoID)
		newVol, _ := tr["destination"].(map[string]any)["volume_id"].(string)
		if tr["status"] != "completed" || newVol == "" {
			t.Fatalf("%s: %v", name, tr)
		}
		t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", newVol) })
		b.waitJS("the table shows "+name+" completed",
			fmt.Sprintf(`(document.querySelector('#transfers tr[data-id=%q] [data-f=status]')||{}).textContent === "completed"`, demoID), time.Minute)
		b.do("detail of "+name, chromedp.Navigate(b.base+"/project/transfers/"+demoID), chromedp.WaitVisible(chromedp.CSS(".info")))
		if html := eval[string](b, `document.body.innerHTML`); !strings.Contains(html, newVol) || !strings.Contains(html, vol) {
			t.Errorf("the detail page names neither the source volume %s nor the new one %s", vol, newVol)
		}
		shots["detail-volume"] = b.shot("detail-volume")
	})

	// Admin: one transfer to completion, one cancelled while it runs. The
	// RegionOne agents are slowed to 32 MiB/s so that the second runs for
	// seconds.
	sourceAgents(t)
	small, big := newImage(t, "e2e-dash", 96), newImage(t, "e2e-dash-big", 320)
	suffix := fmt.Sprint(time.Now().Unix())
	done, cancelled := "dash-complete-"+suffix, "dash-cancel-"+suffix
	var doneID, cancelID string
	t.Cleanup(func() {
		for _, id := range []string{doneID, cancelID} {
			if id == "" {
				continue
			}
			admin.wait(id)
			if code, _ := admin.do("DELETE", "/v1/transfers/"+id, ""); code != 204 {
				t.Errorf("delete transfer %s: %d", id, code)
			}
		}
	})
	b := newBrowser(t)
	b.login("admin", "admin")

	b.createTransfer(done, small)
	shots["create"] = b.shot("create-form")
	t0 := time.Now()
	b.do("submit", chromedp.Click(chromedp.CSS("#create-submit")), chromedp.WaitVisible(chromedp.CSS("#transfers")))
	if msg := eval[string](b, `(document.querySelector(".alert-success")||{}).textContent||""`); !strings.Contains(msg, "Transfer created: "+done) {
		t.Errorf("success message %q", msg)
	}
	if doneID = b.rowOf(done); doneID == "" {
		t.Fatalf("%s is not in the table", done)
	}
	// The page is not reloaded: the script moves the bar. Seen partway?
	partway := false
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		st := b.cell(doneID, "[data-f=status]", "textContent")
		w := b.cell(doneID, ".progress .bar", "style.width")
		if w != "" && w != "0%" && w != "100%" {
			partway = true
		}
		if st == "completed" && w == "100%" {
			break
		}
		if st == "error" || st == "cancelled" {
			t.Fatalf("%s ended %s", done, st)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if st := b.cell(doneID, "[data-f=status]", "textContent"); st != "completed" {
		t.Fatalf("%s: %s after 3 minutes", done, st)
	}
	if pct := b.cell(doneID, "[data-f=progress_text]", "textContent"); pct != "100%" {
		t.Errorf("completed transfer shows %s", pct)
	}
	t.Logf("%s completed in the table %.1f s after submit (progress seen partway: %v)", done, time.Since(t0).Seconds(), partway)

	// The big one: cancel it from the table while it transfers.
	b.createTransfer(cancelled, big)
	b.do("submit", chromedp.Click(chromedp.CSS("#create-submit")), chromedp.WaitVisible(chromedp.CSS("#transfers")))
	if cancelID = b.rowOf(cancelled); cancelID == "" {
		t.Fatalf("%s is not in the table", cancelled)
	}
	row := fmt.Sprintf(`document.querySelector('#transfers tr[data-id=%q]')`, cancelID)
	// Under way: the script shows it transferring, with a partial bar or,
	// while the API does not know the total yet, the bytes moved.
	var seen []string
	deadline = time.Now().Add(90 * time.Second)
	for {
		st, w, pt := b.cell(cancelID, "[data-f=status]", "textContent"), b.cell(cancelID, ".progress .bar", "style.width"), b.cell(cancelID, "[data-f=progress_text]", "textContent")
		_, m := admin.do("GET", "/v1/transfers/"+cancelID, "")
		tr, _ := m["transfer"].(map[string]any)
		obs := fmt.Sprintf("%s %s %s (API %v %v/%v)", st, w, pt, tr["status"], tr["bytes_transferred"], tr["bytes_total"])
		if len(seen) == 0 || seen[len(seen)-1] != obs {
			seen = append(seen, obs)
		}
		if st == "transferring" && ((w != "" && w != "0%") || (pt != "" && pt != "0%")) {
			break
		}
		if st == "completed" || st == "error" || st == "cancelled" || time.Now().After(deadline) {
			b.shot("failure-big-transfer")
			t.Fatalf("%s never seen transferring in the table: %v", cancelled, seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s in the table: %v", cancelled, seen)
	t.Logf("%s: rate %q, ETA %q", cancelled, b.cell(cancelID, "[data-f=rate]", "textContent"), b.cell(cancelID, "[data-f=eta]", "textContent"))
	time.Sleep(1200 * time.Millisecond) // the bars' CSS transition ends
	shots["table"] = b.shot("transfers")
	b.do("cancel", chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-id=%q] form[data-show=can_cancel] button`, cancelID))), chromedp.WaitVisible(chromedp.CSS(".alert-success")))
	if msg := eval[string](b, `document.querySelector(".alert-success").textContent`); !strings.Contains(msg, "Cancel requested for transfer: "+cancelled) {
		t.Errorf("cancel message %q", msg)
	}
	b.waitJS("cancelled", row+`.querySelector("[data-f=status]").textContent === "cancelled"`, 60*time.Second)
	if n := eval[int](b, row+`.querySelectorAll("form:not([hidden])").length`); n != 0 {
		t.Errorf("a cancelled transfer still offers %d actions", n)
	}
	shots["table-after-cancel"] = b.shot("transfers-after-cancel")

	// Detail page of the completed one: fields and its events.
	b.do("detail",
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-id=%q] a.tname`, doneID))),
		chromedp.WaitVisible(chromedp.CSS("#events")),
	)
	if n := eval[int](b, `document.querySelectorAll("#events tbody tr").length`); n < 3 {
		t.Errorf("the detail page shows %d events", n)
	}
	if d := eval[string](b, `document.querySelector("[data-f=digest]").textContent`); !strings.Contains(d, ":") {
		t.Errorf("digest %q", d)
	}
	shots["detail"] = b.shot("detail")

	// Admin → Ferry services.
	b.do("services", chromedp.Click(chromedp.CSS("#nav-services")), chromedp.WaitVisible(chromedp.CSS("#services")))
	if txt := eval[string](b, `document.getElementById("services").textContent`); !strings.Contains(txt, "RegionOne") || !strings.Contains(txt, "ferry-agent") {
		t.Errorf("services table: %s", txt)
	}
	shots["services"] = b.shot("services")

	// Another project's member sees none of it.
	t.Run("OtherProject", func(t *testing.T) {
		alt := newBrowser(t)
		alt.login("alt", "alt")
		html := eval[string](alt, `document.getElementById("transfers").outerHTML`)
		for _, id := range []string{doneID, cancelID, demoID} {
			if id != "" && strings.Contains(html, id) {
				t.Errorf("alt sees another project's transfer %s", id)
			}
		}
		alt.do("detail of another project's transfer", chromedp.Navigate(alt.base+"/project/transfers/"+doneID), chromedp.WaitVisible(chromedp.CSS(".alert-error")))
		if msg := eval[string](alt, `document.querySelector(".alert-error").textContent`); !strings.Contains(msg, "could not be found") {
			t.Errorf("alt opening admin's transfer: %q", msg)
		}
	})
	// A member of demo sees a replication with its lag against the RPO and
	// its points, and drills the newest point from the detail page.
	t.Run("MemberReplicationDrill", func(t *testing.T) {
		if os.Getenv("FERRY_STACK_CINDER") == "0" {
			t.Skip("FERRY_STACK_CINDER=0: the stack runs without Cinder")
		}
		demo := &client{t: t, url: api, token: token(t, "demo")}
		vol := oscVolume(t, "demo", "RegionOne", 1)
		name := fmt.Sprintf("dash-repl-%d", time.Now().Unix())
		code, m := demo.do("POST", "/v1/replications", fmt.Sprintf(`{"replication": {"name": %q, "source": {"region": "RegionOne", "volume_id": %q},
			"destination": {"region": "RegionTwo"}, "interval_seconds": 600, "rpo_seconds": 900, "retention": {"keep_last": 2}}}`, name, vol))
		if code != 202 {
			t.Fatalf("create replication: %d %v", code, m)
		}
		r := &replication{c: demo, id: m["replication"].(map[string]any)["id"].(string)}
		t.Cleanup(func() { demo.do("DELETE", "/v1/replications/"+r.id, "") })
		r.waitFor("a first point", 2*time.Minute, func(v map[string]any) bool { return num(v, "points_count") >= 1 })
		point := r.points()[0].Name

		b := newBrowser(t)
		b.login("demo", "demo")
		b.do("replications", chromedp.Navigate(b.base+"/project/replications"), chromedp.WaitVisible(chromedp.CSS(`#replications tr[data-id="`+r.id+`"]`)))
		row := eval[string](b, `document.querySelector('#replications tr[data-id="`+r.id+`"]').textContent`)
		if !strings.Contains(row, name) || !strings.Contains(row, "RPO") {
			t.Errorf("replications row: %q", row)
		}
		shots["replications"] = b.shot("replications")
		b.do("replication detail", chromedp.Navigate(b.base+"/project/replications/"+r.id), chromedp.WaitVisible(chromedp.CSS("#points")))
		if pts := eval[string](b, `document.getElementById("points").textContent`); !strings.Contains(pts, point) {
			t.Errorf("the points table lacks %s: %q", point, pts)
		}
		b.do("drill "+point,
			chromedp.SendKeys(chromedp.CSS(`#points input[name="drill_name"]`), name+"-drill"),
			chromedp.Click(chromedp.CSS(`#points .drill-form button`)),
			chromedp.WaitVisible(chromedp.CSS("#drills")))
		var drill map[string]any
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) && (drill == nil || drill["status"] == "creating") {
			time.Sleep(time.Second)
			_, dm := demo.do("GET", "/v1/replications/"+r.id+"/drills", "")
			if ds, _ := dm["drills"].([]any); len(ds) == 1 {
				drill = ds[0].(map[string]any)
			}
		}
		if drill == nil || drill["status"] != "available" || drill["name"] != name+"-drill" || drill["point"] != point {
			t.Fatalf("the dashboard's drill: %v", drill)
		}
		vid := drill["volume_id"].(string)
		t.Cleanup(func() { osc(t, "admin", "RegionTwo", "volume", "delete", "--force", vid) })
		b.do("detail after the drill", chromedp.Navigate(b.base+"/project/replications/"+r.id), chromedp.WaitVisible(chromedp.CSS("#drills")))
		if txt := eval[string](b, `document.getElementById("drills").textContent`); !strings.Contains(txt, vid) || !strings.Contains(txt, "available") {
			t.Errorf("drills table: %q", txt)
		}
		shots["replication"] = b.shot("replication")
	})
	t.Logf("dashboard browser test: %.1f s; screenshots: %v", time.Since(start).Seconds(), shots)
}
